// The idle collector (issue 20 item 1): one full garbage collection when a node has gone quiet after enough churn.
//
// Why: V8 collects when allocation asks it to, never on a clock. A node that stops writing keeps the garbage of its
// last burst (dead request buffers, replaced log chunks, parsed messages): 60-90 MiB at 200k keys, measured by
// bench/memory.ts as RSS quiet 212-220 MiB against 151-153 MiB after a forced GC, and nothing collects it until
// traffic resumes. Dead ArrayBuffers are the larger half, and V8 frees their backing stores only in a full (mark-
// compact) GC, so the glibc pages under them (MALLOC_MMAP_THRESHOLD_=131072: blocks of 128 KiB and more are mmapped
// and unmapped on free) stay resident. Go's runtime has the same problem and solves it with a forced GC every two
// minutes (runtime.forcegcperiod) and a scavenger that returns pages; V8 has neither, and Node 20 exposes no idle
// notification or memory-pressure call (v8.setHeapSnapshotNearHeapLimit, --max-semi-space-size and the like do not
// collect). So the node asks for the collection itself, when it costs nothing:
//   - only after the write path has been quiet for `quietMs` (no client message and no applied Raft entry): the GC
//     pauses the event loop (tens of ms at 200k keys, ~100-250 ms at 1M; measured and logged as pause_ms), and a
//     pause in a quiet moment delays no write, while one inside a burst would add itself to that burst's tail;
//   - only when at least `minGarbageBytes` may be freed (heap used + external grew that much since the last full
//     collection we ran): a quiet node with nothing to free is never paused, and a node that writes a little all day
//     is paused once per `minGarbageBytes` of churn at most, which V8 would have spent on its own sooner or later.
// The quiet window is short (default 1 s) because the garbage is there from the moment the burst ends, and a
// Raft heartbeat neither counts as activity nor suffers from a pause below the election timeout (1 s by default).
// The function comes from `--expose-gc` set at run time and read through a fresh vm context (the flag only takes
// effect for contexts created after it), then unset again so the process' own globals never gain a `gc`; a process
// started with --expose-gc already has it on globalThis.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Logger } from '../log.js';
import { renderMetrics } from './metrics.js';

/** Quiet window before an idle collection, default of --idle-gc (ms); 0 turns the collector off. */
export const defaultIdleGcQuietMs = 1000;
/** Growth of heap used + external since the last idle collection below which a quiet node is not paused. */
export const defaultIdleGcMinGarbageBytes = 32 * 1024 * 1024;

export interface IdleCollectorOptions {
  /** How long the write path must have been quiet (activity() unchanged) before a collection; > 0. */
  readonly quietMs: number;
  /** A counter any write moves (client messages in + applied Raft index); compared, never interpreted. */
  readonly activity: () => number;
  readonly logger: Logger;
  readonly minGarbageBytes?: number;
  /** How often activity is sampled; default a quarter of quietMs, at most 250 ms. */
  readonly checkMs?: number;
  /** V8 heap used and external (ArrayBuffer) bytes; default process.memoryUsage(). Tests give fixed figures. */
  readonly memory?: () => { readonly heapUsed: number; readonly external: number };
  /** Runs one full GC; default V8's gc() (see fullGc). Tests count calls instead. */
  readonly collect?: () => void;
  /** Monotonic ms; default performance.now(). */
  readonly now?: () => number;
}

export interface IdleCollectorStats {
  collections: number;
  pauseSecondsTotal: number;
  lastPauseSeconds: number;
  /** Heap used + external before the collection minus after it, summed. */
  freedBytesTotal: number;
}

let v8Gc: (() => void) | undefined;

/** V8's full-GC function, obtained once (see the file comment). */
export function fullGc(): () => void {
  if (v8Gc !== undefined) return v8Gc;
  const own = (globalThis as { gc?: unknown }).gc;
  if (typeof own === 'function') {
    v8Gc = own as () => void;
    return v8Gc;
  }
  setFlagsFromString('--expose-gc');
  try {
    v8Gc = runInNewContext('gc') as () => void;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
  return v8Gc;
}

export class IdleCollector {
  readonly stats: IdleCollectorStats = { collections: 0, pauseSecondsTotal: 0, lastPauseSeconds: 0, freedBytesTotal: 0 };
  private readonly minGarbageBytes: number;
  private readonly memory: () => { readonly heapUsed: number; readonly external: number };
  private readonly now: () => number;
  private readonly collect: () => void;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private lastActivity: number;
  private quietSince: number;
  /** Heap used + external right after the last collection (or at start): growth over it is the garbage estimate. */
  private baseline: number;

  constructor(private readonly o: IdleCollectorOptions) {
    if (!(o.quietMs > 0)) throw new RangeError(`idle collector quietMs must be > 0 (got ${o.quietMs}); leave the collector unstarted to turn it off`);
    this.minGarbageBytes = o.minGarbageBytes ?? defaultIdleGcMinGarbageBytes;
    this.memory = o.memory ?? (() => process.memoryUsage());
    this.now = o.now ?? (() => performance.now());
    this.collect = o.collect ?? fullGc();
    this.log = o.logger.child({ component: 'idle-gc' });
    this.lastActivity = o.activity();
    this.quietSince = this.now();
    this.baseline = this.liveEstimate();
  }

  start(): void {
    if (this.timer !== undefined) return;
    const checkMs = this.o.checkMs ?? Math.max(10, Math.min(250, Math.floor(this.o.quietMs / 4)));
    this.timer = setInterval(() => this.check(), checkMs);
    // The collector never keeps a process alive that has nothing else to do.
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One sample: notes activity, and collects when quiet long enough with enough garbage. True when it collected. */
  check(): boolean {
    const activity = this.o.activity();
    const t = this.now();
    if (activity !== this.lastActivity) {
      this.lastActivity = activity;
      this.quietSince = t;
      return false;
    }
    if (t - this.quietSince < this.o.quietMs) return false;
    const before = this.liveEstimate();
    if (before - this.baseline < this.minGarbageBytes) return false;
    const t0 = performance.now();
    this.collect();
    const pauseMs = performance.now() - t0;
    const after = this.liveEstimate();
    this.baseline = after;
    this.stats.collections++;
    this.stats.lastPauseSeconds = pauseMs / 1000;
    this.stats.pauseSecondsTotal += pauseMs / 1000;
    this.stats.freedBytesTotal += Math.max(0, before - after);
    const mib = (bytes: number): number => Math.round(bytes / 104857.6) / 10;
    this.log.debug({ pause_ms: Math.round(pauseMs * 10) / 10, freed_mib: mib(before - after), live_mib: mib(after) }, 'idle: ran a full GC');
    return true;
  }

  metricsText(): string {
    return renderMetrics([
      ['membershipd_idle_gc_total', 'counter', 'Full GCs the node ran after its write path went quiet (--idle-gc)', this.stats.collections],
      ['membershipd_idle_gc_pause_seconds_total', 'counter', 'Event-loop time those GCs took', this.stats.pauseSecondsTotal],
      ['membershipd_idle_gc_last_pause_seconds', 'gauge', 'Event-loop time the last idle GC took', this.stats.lastPauseSeconds],
      ['membershipd_idle_gc_freed_bytes_total', 'counter', 'V8 heap used + external bytes those GCs freed', this.stats.freedBytesTotal],
    ], []);
  }

  private liveEstimate(): number {
    const m = this.memory();
    return m.heapUsed + m.external;
  }
}
