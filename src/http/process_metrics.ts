// The standard process and Node.js series of prom-client (`collectDefaultMetrics`), with the same names and units,
// written here so that existing dashboards and alerts for Node services work on /metrics without a dependency.
// They describe the process, not a node: several in-process nodes (src/library) share one collector.
import { readdirSync } from 'node:fs';
import { constants, monitorEventLoopDelay, PerformanceObserver, type IntervalHistogram, type PerformanceEntry } from 'node:perf_hooks';

/** prom-client's GC buckets (seconds): a scavenge is well under 1 ms, a full mark-compact of a big heap seconds. */
const gcBucketsSeconds = [0.001, 0.01, 0.1, 1, 2, 5] as const;
/** monitorEventLoopDelay's sampling period; prom-client uses 10 ms too. */
const eventLoopResolutionMs = 10;

const gcKinds: Readonly<Record<number, string>> = {
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

interface GcSeries {
  readonly counts: number[];
  count: number;
  sum: number;
}

class ProcessCollector {
  private readonly loop: IntervalHistogram = monitorEventLoopDelay({ resolution: eventLoopResolutionMs });
  private readonly gc = new Map<string, GcSeries>();
  private readonly observer: PerformanceObserver;

  constructor() {
    this.loop.enable();
    this.observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) this.observeGc(e);
    });
    this.observer.observe({ entryTypes: ['gc'] });
  }

  private observeGc(e: PerformanceEntry): void {
    // Node 16+ puts the GC kind in `detail` (the top-level `kind` is deprecated); the type does not declare it.
    const detail = (e as PerformanceEntry & { detail?: { kind?: number } }).detail;
    const kind = gcKinds[detail?.kind ?? -1] ?? 'unknown';
    let s = this.gc.get(kind);
    if (s === undefined) this.gc.set(kind, (s = { counts: gcBucketsSeconds.map(() => 0), count: 0, sum: 0 }));
    const seconds = e.duration / 1000;
    s.count++;
    s.sum += seconds;
    gcBucketsSeconds.forEach((b, i) => { if (seconds <= b) s.counts[i]!++; });
  }

  render(): string {
    const out: string[] = [];
    const gauge = (name: string, help: string, value: number, type = 'gauge'): void => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${value}`);
    };
    const cpu = process.cpuUsage();
    const mem = process.memoryUsage();
    gauge('process_cpu_user_seconds_total', 'Total user CPU time spent in seconds.', cpu.user / 1e6, 'counter');
    gauge('process_cpu_system_seconds_total', 'Total system CPU time spent in seconds.', cpu.system / 1e6, 'counter');
    gauge('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds.', (cpu.user + cpu.system) / 1e6, 'counter');
    gauge('process_start_time_seconds', 'Start time of the process since unix epoch in seconds.', Math.round(Date.now() / 1000 - process.uptime()));
    gauge('process_resident_memory_bytes', 'Resident memory size in bytes.', mem.rss);
    const fds = openFds();
    if (fds !== undefined) gauge('process_open_fds', 'Number of open file descriptors.', fds);
    // The delay histogram is in nanoseconds and restarts at every scrape, as prom-client does: each scrape reports
    // the event loop since the previous one. Before the first sample (percentile 0) there is nothing to report.
    const h = this.loop;
    const s = (ns: number): number => (Number.isFinite(ns) ? ns / 1e9 : 0);
    gauge('nodejs_eventloop_lag_seconds', 'Lag of event loop in seconds (mean delay since the last scrape).', s(h.mean));
    gauge('nodejs_eventloop_lag_min_seconds', 'The minimum recorded event loop delay.', h.count > 0 ? s(h.min) : 0);
    gauge('nodejs_eventloop_lag_max_seconds', 'The maximum recorded event loop delay.', s(h.max));
    gauge('nodejs_eventloop_lag_p50_seconds', 'The 50th percentile of the recorded event loop delays.', s(h.percentile(50)));
    gauge('nodejs_eventloop_lag_p99_seconds', 'The 99th percentile of the recorded event loop delays.', s(h.percentile(99)));
    h.reset();
    gauge('nodejs_heap_size_total_bytes', 'Process heap size from Node.js in bytes.', mem.heapTotal);
    gauge('nodejs_heap_size_used_bytes', 'Process heap size used from Node.js in bytes.', mem.heapUsed);
    gauge('nodejs_external_memory_bytes', 'Node.js external memory size in bytes.', mem.external);
    out.push('# HELP nodejs_gc_duration_seconds Garbage collection duration by kind, one of major, minor, incremental or weakcb.',
      '# TYPE nodejs_gc_duration_seconds histogram');
    for (const [kind, g] of [...this.gc].sort(([a], [b]) => (a < b ? -1 : 1))) {
      gcBucketsSeconds.forEach((b, i) => out.push(`nodejs_gc_duration_seconds_bucket{le="${b}",kind="${kind}"} ${g.counts[i]}`));
      out.push(`nodejs_gc_duration_seconds_bucket{le="+Inf",kind="${kind}"} ${g.count}`,
        `nodejs_gc_duration_seconds_sum{kind="${kind}"} ${g.sum}`, `nodejs_gc_duration_seconds_count{kind="${kind}"} ${g.count}`);
    }
    return `${out.join('\n')}\n`;
  }
}

/** Open descriptors from /proc/self/fd (Linux); undefined elsewhere, and the series is left out as prom-client does. */
function openFds(): number | undefined {
  try {
    // The listing itself holds one descriptor open on the directory, which is not the process's.
    return readdirSync('/proc/self/fd').length - 1;
  } catch {
    return undefined;
  }
}

let collector: ProcessCollector | undefined;

/** Starts measuring event-loop delay and GC (idempotent): called when the HTTP port opens, so the first scrape has data. */
export function startProcessMetrics(): void {
  collector ??= new ProcessCollector();
}

/** The process_* and nodejs_* series in Prometheus text format. */
export function processMetricsText(): string {
  startProcessMetrics();
  return collector!.render();
}
