// Prometheus text exposition (format 0.0.4) for the few series a node exports. Histograms use fixed
// buckets in seconds, wide enough for an fsync on a slow disk and a proposal during an election.
const bucketsSeconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export class Histogram {
  readonly counts = new Array<number>(bucketsSeconds.length).fill(0);
  count = 0;
  sum = 0;
  /** Recent samples for quantiles in /raftz (bounded ring). */
  private readonly recent: number[] = [];

  observe(seconds: number): void {
    this.count++;
    this.sum += seconds;
    for (let i = 0; i < bucketsSeconds.length; i++) if (seconds <= bucketsSeconds[i]!) this.counts[i]!++;
    if (this.recent.length >= 1024) this.recent.shift();
    this.recent.push(seconds);
  }

  quantile(q: number): number | null {
    if (this.recent.length === 0) return null;
    const s = [...this.recent].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  }

  render(name: string, help: string): string {
    const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
    bucketsSeconds.forEach((b, i) => lines.push(`${name}_bucket{le="${b}"} ${this.counts[i]}`));
    lines.push(`${name}_bucket{le="+Inf"} ${this.count}`, `${name}_sum ${this.sum}`, `${name}_count ${this.count}`);
    return lines.join('\n');
  }
}

export type Sample = readonly [name: string, type: 'counter' | 'gauge', help: string, value: number, labels?: Readonly<Record<string, string>>];

function labelText(labels: Readonly<Record<string, string>> | undefined): string {
  if (!labels) return '';
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

/** Renders samples (grouped by name, HELP/TYPE once each) followed by histograms. */
export function renderMetrics(samples: readonly Sample[], histograms: readonly (readonly [string, string, Histogram])[]): string {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const [name, type, help, value, labels] of samples) {
    if (!seen.has(name)) {
      seen.add(name);
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    }
    out.push(`${name}${labelText(labels)} ${value}`);
  }
  for (const [name, help, h] of histograms) out.push(h.render(name, help));
  return `${out.join('\n')}\n`;
}
