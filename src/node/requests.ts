// The node's pending requests: KV writes waiting to be applied here and linearizable reads waiting for their
// ReadIndex (Raft thesis §6.4), under one bound. Split out of node.ts (issue 17) so the request path is tested
// without a cluster: time, Raft's propose/readIndex and the node's health come in as functions. The Ready driver
// tells this module what Raft said (an entry of ours applied, a read index arrived, a new leader); the node's tick
// asks it to retry and expire.
import type { Histogram } from './metrics.js';
import { NodeError, NodeErrorCode } from './errors.js';
import type { Health } from './health.js';

/** Writes and linearizable readers that may wait at once on one node (one bound for both, issue 17). */
export const waitingMaxDefault = 10_000;
/** A submitted write or ReadIndex request not answered within this is asked again (the route or leader may have lost it). */
export const resubmitAfterMs = 1000;

export interface PendingRequestsOptions {
  /** The node's server name, for error messages. */
  readonly serverName: string;
  /** This process's boot number: a read's context carries it, so a read index meant for an earlier process is ignored. */
  readonly boot: number;
  /** How long a write or linearizable read may wait for a leader and its apply. */
  readonly timeoutMs: number;
  /** Default waitingMaxDefault. */
  readonly waitingMax?: number;
  /** A monotonic clock in ms (performance.now in the node). */
  readonly now: () => number;
  /**
   * Hands a write to Raft; false when there is no leader to take it or Raft refused it (a later retry asks again).
   * The node wraps the command in its session envelope (origin, boot, seq), so a re-submitted copy applies once.
   */
  readonly propose: (seq: number, command: Uint8Array) => boolean;
  /** Asks Raft for a read index carrying `context`; false when there is no leader or Raft refused. */
  readonly readIndex: (context: Uint8Array) => boolean;
  /** The node's health now: a timed-out request says why (no quorum, catching up, …). */
  readonly health: () => Health;
  /** Undefined while the node serves; otherwise the error every new request fails with (see stoppedError). */
  readonly stopped: () => NodeError | undefined;
  readonly metrics: { readonly proposalSeconds: Histogram; proposalsFailed: number };
}

interface PendingWrite<R> {
  readonly seq: number;
  readonly command: Uint8Array;
  readonly started: number;
  readonly deadline: number;
  submitted: boolean;
  submittedAt: number;
  resolve(r: R): void;
  reject(e: Error): void;
}

/**
 * One ReadIndex request and every read that waits on it (etcd's linearizable read loop): reads that arrive while
 * another request is in flight gather in the next one, sent when the in-flight one learns its index. So a node
 * serving thousands of linearizable reads sends one ReadIndex per round trip to the leader, not one per read,
 * and a read never joins a request sent before it arrived (that index could predate a write it must see).
 */
interface PendingRead {
  readonly key: number;
  readonly deadline: number;
  submittedAt: number;
  /** 0 until the leader answered; then the commit index this node must apply before the readers are served. */
  index: number;
  readonly waiters: { resolve(): void; reject(e: Error): void }[];
}

/** What a ReadState of raft/ carries that this module reads. */
export interface ReadIndexAnswer {
  readonly context: Uint8Array;
  readonly index: number;
}

/** The error of a request made to a node that is stopping, or whose Ready loop stopped on `fatal`. */
export function stoppedError(serverName: string, fatal: Error | undefined): NodeError {
  return fatal
    ? new NodeError(NodeErrorCode.stopped, `node ${serverName} stopped replicating: ${fatal.message}`, false)
    : new NodeError(NodeErrorCode.stopped, `node ${serverName} is stopping`, false);
}

/** A read's context: the boot number, then the batch key (both uint32, big-endian). */
function readContext(boot: number, key: number): Uint8Array {
  const ctx = new Uint8Array(8);
  const dv = new DataView(ctx.buffer);
  dv.setUint32(0, boot);
  dv.setUint32(4, key);
  return ctx;
}

export class PendingRequests<R> {
  private readonly opts: PendingRequestsOptions;
  private readonly waitingMax: number;
  /** Write sequence numbers and read batch keys, one counter (uint32, wraps; a session window is far smaller). */
  private seq = 0;
  private readonly writes = new Map<number, PendingWrite<R>>();
  private readonly reads = new Map<number, PendingRead>();
  /** The batch new reads join: not sent yet (a request is in flight, or no leader to send it to). */
  private openRead: PendingRead | undefined;
  private readers = 0;

  constructor(opts: PendingRequestsOptions) {
    this.opts = opts;
    this.waitingMax = opts.waitingMax ?? waitingMaxDefault;
  }

  /** Writes handed in and not yet applied here, expired or failed. */
  get writesWaiting(): number {
    return this.writes.size;
  }

  /** Linearizable readers waiting for their read index or its apply. */
  get readersWaiting(): number {
    return this.readers;
  }

  /** Replicates a command; resolves with its result once applied on this node (see writeApplied). */
  submitWrite(command: Uint8Array): Promise<R> {
    const stopped = this.opts.stopped();
    if (stopped) return Promise.reject(stopped);
    const full = this.overloaded('');
    if (full) return Promise.reject(full);
    return new Promise<R>((resolve, reject) => {
      const seq = this.nextSeq();
      const now = this.opts.now();
      const w: PendingWrite<R> = {
        seq, command, started: now, deadline: now + this.opts.timeoutMs, submitted: false, submittedAt: 0, resolve, reject,
      };
      this.writes.set(seq, w);
      this.proposeWrite(w);
    });
  }

  /** Resolves once a read index the leader confirmed after this call is applied here (ReadIndex, thesis §6.4). */
  submitRead(): Promise<void> {
    const stopped = this.opts.stopped();
    if (stopped) return Promise.reject(stopped);
    const full = this.overloaded(', or read stale');
    if (full) return Promise.reject(full);
    return new Promise<void>((resolve, reject) => {
      let r = this.openRead;
      if (r === undefined) {
        const key = this.nextSeq();
        r = this.openRead = { key, deadline: this.opts.now() + this.opts.timeoutMs, submittedAt: 0, index: 0, waiters: [] };
        this.reads.set(key, r);
      }
      r.waiters.push({ resolve, reject });
      this.readers++;
      // After the current callback: every read it carries joins the same request.
      if (r.waiters.length === 1) queueMicrotask(() => this.sendOpenRead());
    });
  }

  /** An entry this process proposed as `seq` was applied with `result` (the Ready driver checked origin and boot). */
  writeApplied(seq: number, result: R): void {
    const w = this.writes.get(seq);
    if (!w) return; // expired, or failed at stop: its caller has its answer already
    this.writes.delete(seq);
    this.opts.metrics.proposalSeconds.observe((this.opts.now() - w.started) / 1000);
    w.resolve(result);
  }

  /**
   * Raft's answers to ReadIndex requests (Ready.readStates): each batch of ours learns the index it waits for,
   * and the batch gathered meanwhile is sent (one request in flight at a time).
   */
  readIndexesArrived(states: readonly ReadIndexAnswer[]): void {
    for (const rs of states) {
      if (rs.context.length !== 8) continue;
      const dv = new DataView(rs.context.buffer, rs.context.byteOffset, 8);
      if (dv.getUint32(0) !== this.opts.boot) continue;
      const r = this.reads.get(dv.getUint32(4));
      if (r && r.index === 0) r.index = Math.max(1, rs.index);
    }
    if (states.length > 0) this.sendOpenRead();
  }

  /**
   * A new leader: a write submitted to the old one may be lost with it, so every waiting write is proposed again
   * on the next tick (retryWaiting); copies apply once (sessions.ts).
   */
  leaderChanged(): void {
    for (const w of this.writes.values()) w.submittedAt = 0;
  }

  /** Serves the readers whose read index this node has applied. */
  serveReads(applied: number): void {
    for (const r of this.reads.values()) {
      if (r.index > 0 && applied >= r.index) this.settleRead(r);
    }
  }

  /** On each tick: asks again for what is not submitted, or submitted and unanswered for resubmitAfterMs. */
  retryWaiting(): void {
    // A forwarded proposal (or a ReadIndex request) may be lost with a route or a leader; asking again
    // is safe: reads are idempotent and a write's copies are applied once (sessions.ts).
    const now = this.opts.now();
    for (const w of this.writes.values()) if (!w.submitted || now - w.submittedAt > resubmitAfterMs) this.proposeWrite(w);
    for (const r of this.reads.values()) if (r !== this.openRead && r.index === 0 && now - r.submittedAt > resubmitAfterMs) this.askReadIndex(r);
    this.sendOpenRead();
  }

  /** On each tick: fails what waited past its deadline, with the node's health as the reason. */
  expire(): void {
    const now = this.opts.now();
    const { serverName, timeoutMs } = this.opts;
    for (const w of this.writes.values()) {
      if (now < w.deadline) continue;
      this.writes.delete(w.seq);
      this.opts.metrics.proposalsFailed++;
      const h = this.opts.health();
      w.reject(w.submitted
        ? new NodeError(NodeErrorCode.timeout, `write not applied within ${timeoutMs} ms on ${serverName} (outcome unknown: it may still commit; retry if the command is idempotent)${h.status === 'ok' ? '' : `: ${h.reason}`}`, true)
        : new NodeError(NodeErrorCode.noLeader, `no leader within ${timeoutMs} ms on ${serverName}: ${h.status === 'ok' ? 'election in progress' : h.reason}; retry`, true));
    }
    for (const r of this.reads.values()) {
      if (now < r.deadline) continue;
      const h = this.opts.health();
      this.settleRead(r, new NodeError(r.index === 0 ? NodeErrorCode.noLeader : NodeErrorCode.timeout, `linearizable read not served within ${timeoutMs} ms on ${serverName}${h.status === 'ok' ? '' : `: ${h.reason}`}; retry, or read stale`, true));
    }
  }

  /** Fails every waiting write and read with `e` (the node stops, or its Ready loop did). */
  failAll(e: Error): void {
    for (const w of this.writes.values()) w.reject(e);
    this.writes.clear();
    for (const r of [...this.reads.values()]) this.settleRead(r, e);
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  /** The overloaded error when writes and readers together are at waitingMax. */
  private overloaded(remedy: string): NodeError | undefined {
    if (this.writes.size + this.readers < this.waitingMax) return undefined;
    return new NodeError(
      NodeErrorCode.overloaded,
      `${this.writes.size} writes and ${this.readers} linearizable reads are already waiting on ${this.opts.serverName} (at most ${this.waitingMax}); retry later${remedy}`,
      true,
    );
  }

  private proposeWrite(w: PendingWrite<R>): void {
    if (!this.opts.propose(w.seq, w.command)) return;
    w.submitted = true;
    w.submittedAt = this.opts.now();
  }

  private askReadIndex(r: PendingRead): void {
    if (this.opts.readIndex(readContext(this.opts.boot, r.key))) r.submittedAt = this.opts.now();
  }

  /** Sends the open batch unless a request is in flight (its answer sends it: see readIndexesArrived). */
  private sendOpenRead(): void {
    const r = this.openRead;
    if (r === undefined) return;
    for (const other of this.reads.values()) if (other !== r && other.submittedAt !== 0 && other.index === 0) return;
    this.askReadIndex(r);
    if (r.submittedAt !== 0) this.openRead = undefined;
  }

  private settleRead(r: PendingRead, err?: Error): void {
    this.reads.delete(r.key);
    if (this.openRead === r) this.openRead = undefined;
    this.readers -= r.waiters.length;
    for (const w of r.waiters) if (err === undefined) w.resolve(); else w.reject(err);
  }
}
