// The node's KV through Raft (issue 17: apart from node.ts; ClusterNode.kv): writes proposed in this node's session
// envelope and resolved when this node applies them, linearizable reads (ReadIndex, Raft thesis §6.4), watches of
// a bucket, the KV quota, and the KvBackend src/kv uses. The waiting requests themselves live in requests.ts; this
// module hands them to Raft and takes back what the Ready driver reports (a write applied, read indexes, a
// snapshot installed). Raft and the node's state are injected, so test/unit/node_requests.test.ts drives it with
// a scripted Raft.
import type { ReadState } from '../../raft/index.js';
import { encodeKvCommand, quotaRefusal, type KvCommand, type KvEntry, type KvListener, type KvResult, type KvStateMachine } from '../../store/index.js';
import type { Logger } from '../log.js';
import type { NodeError } from './errors.js';
import type { Health } from './health.js';
import type { RaftKvBackend, ReadOptions } from './node_options.js';
import type { AppliedWrite } from './ready_driver.js';
import { RequestPath, type RequestRaft } from './request_path.js';
import type { NodeMetrics } from './status.js';

/** What the KV uses of Raft. */
export type KvRaft = RequestRaft;

export interface ReplicatedKvOptions {
  readonly serverName: string;
  /** Random per process start: an entry proposed by an earlier run of this node is never taken for a new request. */
  readonly boot: number;
  /** How long a write or read waits (NodeOptions.requestTimeoutMs). */
  readonly timeoutMs: number;
  /** --max-kv-bytes; undefined: unlimited. */
  readonly maxKvBytes: number | undefined;
  readonly stateMachine: KvStateMachine;
  readonly metrics: NodeMetrics;
  /** Raft, once started. */
  readonly raft: () => KvRaft | undefined;
  /** This node's slot (the envelope's origin), once known. */
  readonly slot: () => number | undefined;
  /** Raft has work: run the Ready loop. */
  readonly schedule: () => void;
  /** The node's health (a refused write says why). */
  readonly health: () => Health;
  /** The error a stopping or stopped node fails requests with; undefined while it runs. */
  readonly stopped: () => NodeError | undefined;
  /** performance.now() in production. */
  readonly now: () => number;
  readonly log: Logger;
}

/** The KV as the node's callers see it (ClusterNode.kv); the Ready driver's hooks stay the node's. */
export type NodeKv = Pick<ReplicatedKv, 'propose' | 'proposeBytes' | 'read' | 'readBarrier' | 'watch' | 'onReset' | 'reader' | 'backend'>;

export class ReplicatedKv implements RaftKvBackend {
  private readonly o: ReplicatedKvOptions;
  /** Waiting writes and linearizable reads (requests.ts), wired to Raft as test/sim wires its nodes' (request_path.ts). */
  private readonly path: RequestPath<KvResult>;
  /** Called after a snapshot from the leader replaced the state machine (KvBackend.onReset). */
  private readonly resetListeners = new Set<() => void>();

  constructor(o: ReplicatedKvOptions) {
    this.o = o;
    this.path = new RequestPath<KvResult>({
      serverName: o.serverName, boot: o.boot, timeoutMs: o.timeoutMs, now: o.now,
      raw: o.raft, origin: o.slot, schedule: o.schedule, appliedIndex: () => o.stateMachine.appliedIndex,
      health: o.health, stopped: o.stopped, metrics: o.metrics,
    });
  }

  /** The state machine as applied on this node (stale reads). */
  get reader(): KvStateMachine {
    return this.o.stateMachine;
  }

  /** Writes and readers waiting now (/raftz). */
  get writesWaiting(): number {
    return this.path.requests.writesWaiting;
  }

  get readersWaiting(): number {
    return this.path.requests.readersWaiting;
  }

  /** Replicates a KV command; resolves with its result once applied on this node. A write past the quota is refused. */
  propose(cmd: KvCommand): Promise<KvResult> {
    if (this.o.maxKvBytes !== undefined) {
      const refused = quotaRefusal(cmd, this.o.stateMachine.totalBytes(), this.o.maxKvBytes);
      if (refused !== undefined) {
        this.o.metrics.quotaRefusals++;
        return Promise.resolve(refused);
      }
    }
    return this.proposeBytes(encodeKvCommand(cmd));
  }

  /** Replicates an encoded KV command (no quota check). */
  proposeBytes(command: Uint8Array): Promise<KvResult> {
    return this.path.requests.submitWrite(command);
  }

  /**
   * Waits until this node's state machine reflects every write committed before the call
   * (ReadIndex, Raft thesis §6.4), then returns it. With `stale`, returns at once.
   */
  async read(opts: ReadOptions = {}): Promise<KvStateMachine> {
    const stopped = this.o.stopped();
    if (stopped) throw stopped;
    if (opts.stale) return this.o.stateMachine;
    await this.path.requests.submitRead();
    return this.o.stateMachine;
  }

  /** Resolves once the state machine reflects every write committed before the call (ReadIndex). */
  async readBarrier(): Promise<void> {
    await this.read();
  }

  /**
   * The bucket's retained entries after `afterRevision`, then every entry applied later, until the
   * returned function is called. Entries absorbed by installing a snapshot are not replayed.
   */
  watch(bucket: string, afterRevision: number, listener: KvListener): () => void {
    for (const e of this.o.stateMachine.changesSince(afterRevision, bucket)) listener(e);
    return this.o.stateMachine.subscribe((e: KvEntry) => {
      if (e.bucket === bucket) listener(e);
    });
  }

  /** Called after a snapshot from the leader replaced the state machine; returns the removal. */
  onReset(l: () => void): () => void {
    this.resetListeners.add(l);
    return () => this.resetListeners.delete(l);
  }

  /** The KvBackend of src/kv as a plain object (callers may spread or wrap it). */
  backend(): RaftKvBackend {
    return {
      propose: (c) => this.propose(c),
      readBarrier: () => this.readBarrier(),
      reader: this.o.stateMachine,
      watch: (b, r, l) => this.watch(b, r, l),
      onReset: (l) => this.onReset(l),
    };
  }

  // ---- what the node's Ready driver and tick report ----

  /** A write applied: resolve it if this node (this boot) proposed it. */
  writeApplied(write: AppliedWrite<KvResult>): void {
    this.path.applied(write);
  }

  readStates(states: readonly ReadState[]): void {
    this.path.readStates(states);
  }

  /** A Ready batch was applied: serve the reads whose index is now applied. */
  applied(): void {
    this.path.advanced();
  }

  /** A new leader: writes waiting on the old one are proposed again (requests.ts). */
  leaderChanged(): void {
    this.path.requests.leaderChanged();
  }

  /** A tick with Raft running: hand waiting requests to Raft again. */
  retryWaiting(): void {
    this.path.requests.retryWaiting();
  }

  /** A tick: fail the requests past their deadline. */
  expire(): void {
    this.path.requests.expire();
  }

  failAll(e: Error): void {
    this.path.requests.failAll(e);
  }

  /** After a snapshot from the leader replaced the state machine (KvBackend.onReset). */
  snapshotInstalled(): void {
    // A copy: a listener may re-subscribe itself (KvPrincipalSource re-attaches).
    for (const l of [...this.resetListeners]) {
      try {
        l();
      } catch (err) {
        this.o.log.error({ err }, 'snapshot-install listener threw');
      }
    }
  }
}
