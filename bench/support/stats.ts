// Order statistics and number formats shared by the benchmarks' printed lines (other tooling parses the
// BENCH lines, so a format lives here once).

/** The element at rank floor(q·n) of an ascending array (clamped to the last); NaN when empty. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** Sorts in place, ascending, and returns the same array. */
export function sortAscending(xs: number[]): number[] {
  return xs.sort((a, b) => a - b);
}

/** The upper median (element floor(n/2) in ascending order) of an unsorted array, left unchanged; NaN when empty. */
export function median(xs: readonly number[]): number {
  return quantile(sortAscending([...xs]), 0.5);
}

/** Milliseconds with µs resolution, as every latency figure is printed. */
export const formatMs = (ms: number): string => ms.toFixed(3);

/** A rate or count rounded to a whole number with thousands separators: 123,456. */
export const formatCount = (x: number): string => Math.round(x).toLocaleString('en');
