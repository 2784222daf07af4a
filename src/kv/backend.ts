// The seam between the KV API and replication. Every write goes through propose(): the Raft-backed backend (node
// wiring) appends the encoded command to the meta-group's log and resolves once the entry is applied on THIS node,
// so a client that got a PubAck reads its own write on the same node. Reads go to the node's applied state
// through `reader` (possibly stale); readBarrier() is the ReadIndex step that makes the next read linearizable.
//
// Revisions: a KV entry's revision is its bucket's stream sequence (1, 2, 3 ... per bucket), assigned by the state
// machine at apply time (store/kv), so every node numbers a write alike and update-if-revision is decided there with
// no translation a lagging node could get wrong. The KV API reports it as the JetStream stream sequence, as
// nats-server does. The Raft log index (KvEntry.index) stays the cluster's internal order.
import { encodeKvCommand, type KvCommand, type KvEntry, type KvListener, type KvResult, type KvStateMachine } from '../../store/index.js';

/** The read side of a node's KV state machine (applied state, synchronous). */
export type KvReader = Pick<KvStateMachine, 'appliedIndex' | 'bucketNames' | 'hasBucket' | 'bucketInfo' | 'get' | 'history' | 'changesSince' | 'oldestTs'>;

export interface KvBackend {
  /**
   * Replicates `command` and resolves with the state machine's result once it is applied on this node. Rejects
   * only when the command could not be committed (no leader, timeout, shutdown); refusals (wrong revision, bucket
   * full …) resolve as `{ ok: false }` results.
   */
  propose(command: KvCommand): Promise<KvResult>;
  /** Resolves once `reader` reflects every write committed before the call (Raft ReadIndex); rejects like propose. */
  readBarrier(): Promise<void>;
  readonly reader: KvReader;
  /**
   * Calls `listener` synchronously with the bucket's retained entries whose revision is > `afterRevision`, in
   * revision order, then with every entry applied later, until the returned function is called. Passing the
   * bucket's last revision (`reader.bucketInfo(bucket).seq`) gives only future entries with no gap and no duplicate.
   */
  watch(bucket: string, afterRevision: number, listener: KvListener): () => void;
  /**
   * Calls `listener` after the state was replaced wholesale (a lagging node installed the leader's snapshot):
   * the change feed carries none of the writes the snapshot absorbed, so whoever follows it re-reads. Returns
   * the unsubscribe. Absent on backends whose state is never replaced.
   */
  onReset?(listener: () => void): () => void;
}

/**
 * THE NON-REPLICATED BACKEND: applies each command directly to `stateMachine`, in call order, at log index
 * appliedIndex + 1. For tests and single-node serve only — nothing is persisted or replicated here.
 */
export function createLocalKvBackend(stateMachine: KvStateMachine): KvBackend {
  return {
    propose(command: KvCommand): Promise<KvResult> {
      try {
        return Promise.resolve(stateMachine.apply(stateMachine.appliedIndex + 1, encodeKvCommand(command)));
      } catch (err) {
        return Promise.reject(err);
      }
    },
    readBarrier: () => Promise.resolve(),
    reader: stateMachine,
    watch: (bucket, afterRevision, listener) => watchStateMachine(stateMachine, bucket, afterRevision, listener),
  };
}

/**
 * KvBackend.watch over a node's state machine, for any backend that applies into one (the Raft backend too):
 * replay and subscription happen in one synchronous step, so no entry is missed or seen twice.
 */
export function watchStateMachine(stateMachine: KvStateMachine, bucket: string, afterRevision: number, listener: KvListener): () => void {
  for (const e of stateMachine.changesSince(afterRevision, bucket)) listener(e);
  return stateMachine.subscribe((e: KvEntry) => {
    if (e.bucket === bucket) listener(e);
  });
}

/** Rewrites a value as a reader of the KV API sees it (the stored bytes are untouched). */
export type KvRedactor = (bucket: string, value: Uint8Array) => Uint8Array;

/**
 * `backend` as the KV API serves it: every value read or watched passes through `redact` (writes go through
 * unchanged). The control plane keeps secrets in its buckets (scrypt hashes in `ub_users`); this is where they
 * are taken out before any KV reply, consumer delivery or direct get can carry them onto the bus.
 */
export function redactedBackend(backend: KvBackend, redact: KvRedactor): KvBackend {
  const r = backend.reader;
  const view = (e: KvEntry): KvEntry => {
    if (e.op !== 'PUT' || e.value.length === 0) return e;
    const value = redact(e.bucket, e.value);
    return value === e.value ? e : { ...e, value };
  };
  const reader: KvReader = {
    get appliedIndex() { return r.appliedIndex; },
    bucketNames: () => r.bucketNames(),
    hasBucket: (name) => r.hasBucket(name),
    bucketInfo: (name) => r.bucketInfo(name),
    get: (bucket, key) => {
      const e = r.get(bucket, key);
      return e === undefined ? undefined : view(e);
    },
    history: (bucket, key) => r.history(bucket, key).map(view),
    changesSince: (after, bucket, limit) => r.changesSince(after, bucket, limit).map(view),
    oldestTs: (bucket) => r.oldestTs(bucket),
  };
  return {
    propose: (c) => backend.propose(c),
    readBarrier: () => backend.readBarrier(),
    reader,
    watch: (bucket, after, listener) => backend.watch(bucket, after, (e) => listener(view(e))),
    ...(backend.onReset !== undefined ? { onReset: (l: () => void) => backend.onReset!(l) } : {}),
  };
}
