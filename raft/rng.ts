// Randomness is injected so that one seed replays a whole cluster run (CONVENTIONS §1, §7).
// Raft only needs it for randomized election timeouts (Raft paper §5.2).

export interface Rng {
  /** A uniformly distributed integer in [0, n). */
  int(n: number): number;
}

/**
 * mulberry32: a small, fast 32-bit generator with good enough statistics for timeouts and fault
 * schedules. Not cryptographic. The same seed always yields the same sequence.
 */
export function seededRng(seed: number): Rng & { next(): number } {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n) };
}
