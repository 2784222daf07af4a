// The standard process and Node.js series of prom-client (`collectDefaultMetrics`), with the same names and units,
// written here so that existing dashboards and alerts for Node services work on /metrics without a dependency.
// They describe the process, not a node: several in-process nodes (src/library) share one collector.
import { readdirSync } from 'node:fs';
import { constants, createHistogram, monitorEventLoopDelay, PerformanceObserver, type IntervalHistogram, type PerformanceEntry, type RecordableHistogram } from 'node:perf_hooks';

/** prom-client's GC buckets (seconds): a scavenge is well under 1 ms, a full mark-compact of a big heap seconds. */
const gcBucketsSeconds = [0.001, 0.01, 0.1, 1, 2, 5] as const;
/** The event-loop delay sampling period (monitorEventLoopDelay's for the nodejs_* gauges, LoopDelay's timer); prom-client uses 10 ms too. */
const eventLoopResolutionMs = 10;
/**
 * Buckets (seconds) of the cumulative event-loop delay histogram: from a busy loop's ordinary lag up to a stall that
 * costs a Raft election (1-2 s).
 */
const loopBucketsSeconds = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2] as const;
/** A delay (or GC pause) over this is a stall on the write path (issue 14: none over 20 ms in a benchmark run). */
export const stallThresholdMs = 20;

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
  maxSeconds: number;
  /** Pauses longer than stallThresholdMs. */
  over: number;
}

/** What /varz shows of the event loop since the process started (all delays in ms). */
export interface EventLoopVarz {
  readonly resolution_ms: number;
  readonly samples: number;
  readonly mean_ms: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
  readonly p999_ms: number;
  readonly max_ms: number;
  /** Samples whose delay exceeded stall_threshold_ms: each one is a turn of the loop that held everything up. */
  readonly stalls_over_20ms: number;
  readonly stall_threshold_ms: number;
}

/** What /varz shows of garbage collection since the process started. */
export interface GcVarz {
  readonly count: number;
  readonly pause_total_ms: number;
  readonly pause_max_ms: number;
  readonly pauses_over_20ms: number;
  readonly by_kind: Readonly<Record<string, { count: number; pause_total_ms: number; pause_max_ms: number }>>;
}

const ms3 = (ms: number): number => Math.round(ms * 1000) / 1000;

/**
 * The event-loop delay since start, sampled by a timer of our own: every `resolution` ms (unref'd) the time since the
 * previous firing, less the resolution, is the delay, recorded into a cumulative histogram (percentiles and max for
 * /varz), fixed buckets (the Prometheus histogram) and the stall count. Not monitorEventLoopDelay's histogram: reading
 * it since the last read needs reset(), and reset() also forgets the time of its last sample, so a stall that
 * follows a read is never recorded — exactly when a test (or an operator's scrape) looks for one. ~100 cheap
 * callbacks a second.
 */
class LoopDelay {
  private readonly total: RecordableHistogram = createHistogram();
  /** Cumulative count of samples at or below loopBucketsSeconds[i]. */
  readonly counts = loopBucketsSeconds.map(() => 0);
  count = 0;
  sumSeconds = 0;
  stalls = 0;
  private last = performance.now();

  constructor() {
    // Unref'd: measuring never keeps a process alive.
    setInterval(() => {
      const now = performance.now();
      this.observe(Math.max(1, Math.round((now - this.last - eventLoopResolutionMs) * 1e6)));
      this.last = now;
    }, eventLoopResolutionMs).unref();
  }

  private observe(delayNs: number): void {
    this.total.record(delayNs);
    const seconds = delayNs / 1e9;
    this.count++;
    this.sumSeconds += seconds;
    for (let i = 0; i < loopBucketsSeconds.length; i++) if (seconds <= loopBucketsSeconds[i]!) this.counts[i]!++;
    if (delayNs > stallThresholdMs * 1e6) this.stalls++;
  }

  varz(): EventLoopVarz {
    const t = this.total;
    const has = t.count > 0;
    const ms = (ns: number): number => (has ? ms3(ns / 1e6) : 0);
    return {
      resolution_ms: eventLoopResolutionMs, samples: t.count, mean_ms: ms(t.mean), p50_ms: ms(t.percentile(50)),
      p99_ms: ms(t.percentile(99)), p999_ms: ms(t.percentile(99.9)), max_ms: ms(t.max),
      stalls_over_20ms: this.stalls, stall_threshold_ms: stallThresholdMs,
    };
  }
}

class ProcessCollector {
  private readonly loop: IntervalHistogram = monitorEventLoopDelay({ resolution: eventLoopResolutionMs });
  private readonly gc = new Map<string, GcSeries>();
  private readonly observer: PerformanceObserver;
  readonly delay = new LoopDelay();

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
    if (s === undefined) this.gc.set(kind, (s = { counts: gcBucketsSeconds.map(() => 0), count: 0, sum: 0, maxSeconds: 0, over: 0 }));
    const seconds = e.duration / 1000;
    s.count++;
    s.sum += seconds;
    if (seconds > s.maxSeconds) s.maxSeconds = seconds;
    if (e.duration > stallThresholdMs) s.over++;
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
    this.renderStalls(out);
    return `${out.join('\n')}\n`;
  }

  /** The cumulative event-loop delay histogram, stall and long-GC counters (membershipd's own, since start). */
  private renderStalls(out: string[]): void {
    const d = this.delay;
    const name = 'membershipd_eventloop_delay_seconds';
    out.push(`# HELP ${name} Event-loop delay since start (a timer every ${eventLoopResolutionMs} ms).`, `# TYPE ${name} histogram`);
    loopBucketsSeconds.forEach((b, i) => out.push(`${name}_bucket{le="${b}"} ${d.counts[i]}`));
    out.push(`${name}_bucket{le="+Inf"} ${d.count}`, `${name}_sum ${d.sumSeconds}`, `${name}_count ${d.count}`);
    const counter = (n: string, help: string, value: number): void => {
      out.push(`# HELP ${n} ${help}`, `# TYPE ${n} counter`, `${n} ${value}`);
    };
    counter('membershipd_eventloop_stalls_total', `Event-loop delay samples over ${stallThresholdMs} ms since start.`, d.stalls);
    counter('membershipd_gc_long_pauses_total', `Garbage collection pauses over ${stallThresholdMs} ms since start.`,
      [...this.gc.values()].reduce((sum, g) => sum + g.over, 0));
    out.push('# HELP membershipd_gc_pause_max_seconds Longest garbage collection pause since start.', '# TYPE membershipd_gc_pause_max_seconds gauge',
      `membershipd_gc_pause_max_seconds ${Math.max(0, ...[...this.gc.values()].map((g) => g.maxSeconds))}`);
  }

  gcVarz(): GcVarz {
    const byKind: Record<string, { count: number; pause_total_ms: number; pause_max_ms: number }> = {};
    let count = 0;
    let total = 0;
    let max = 0;
    let over = 0;
    for (const [kind, g] of this.gc) {
      byKind[kind] = { count: g.count, pause_total_ms: ms3(g.sum * 1000), pause_max_ms: ms3(g.maxSeconds * 1000) };
      count += g.count;
      total += g.sum;
      max = Math.max(max, g.maxSeconds);
      over += g.over;
    }
    return { count, pause_total_ms: ms3(total * 1000), pause_max_ms: ms3(max * 1000), pauses_over_20ms: over, by_kind: byKind };
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

/** Event-loop delay and GC pauses since the process started, for /varz. */
export function processVarz(): { event_loop_delay: EventLoopVarz; gc: GcVarz } {
  startProcessMetrics();
  return { event_loop_delay: collector!.delay.varz(), gc: collector!.gcVarz() };
}

/** The process_* and nodejs_* series in Prometheus text format. */
export function processMetricsText(): string {
  startProcessMetrics();
  return collector!.render();
}
