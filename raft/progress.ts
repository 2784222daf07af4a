// The leader's view of one follower (etcd-io/raft tracker/progress.go). Flow control: in `probe` the
// leader sends one append per heartbeat interval until the follower's match is found; in `replicate`
// it pipelines appends optimistically, bounded by Inflights (messages and bytes); in `snapshot` it
// streams an InstallSnapshot and sends no appends until the follower reports the snapshot applied.
import { assert } from './errors.js';
import type { Snapshot } from './types.js';

export const ProgressState = { probe: 'probe', replicate: 'replicate', snapshot: 'snapshot' } as const;
export type ProgressState = (typeof ProgressState)[keyof typeof ProgressState];

/** A ring of the last index and byte size of every append in flight to one follower. */
export class Inflights {
  private readonly idx: Float64Array;
  private readonly bytes: Float64Array;
  private start = 0;
  count = 0;
  totalBytes = 0;

  constructor(
    readonly msgsMax: number,
    readonly bytesMax: number,
  ) {
    this.idx = new Float64Array(msgsMax);
    this.bytes = new Float64Array(msgsMax);
  }

  add(index: number, bytes: number): void {
    assert(!this.full(), 'Inflights.add on a full window');
    const at = (this.start + this.count) % this.msgsMax;
    this.idx[at] = index;
    this.bytes[at] = bytes;
    this.count++;
    this.totalBytes += bytes;
  }

  /** Frees every append whose last index is <= `to` (acknowledged). */
  freeLE(to: number): void {
    while (this.count > 0 && this.idx[this.start]! <= to) {
      this.totalBytes -= this.bytes[this.start]!;
      this.start = (this.start + 1) % this.msgsMax;
      this.count--;
    }
    if (this.count === 0) this.start = 0;
  }

  /** Frees the oldest append: its ack or its loss will show, and the window must not stall meanwhile. */
  freeFirstOne(): void {
    if (this.count === 0) return;
    this.freeLE(this.idx[this.start]!);
  }

  full(): boolean {
    return this.count >= this.msgsMax || (this.bytesMax > 0 && this.totalBytes >= this.bytesMax);
  }

  reset(): void {
    this.start = 0;
    this.count = 0;
    this.totalBytes = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = ProgressState.probe;
  /** In probe: an append was sent and no answer has come back yet (cleared by heartbeat responses). */
  probeSent = false;
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  isLearner: boolean;
  readonly inflights: Inflights;
  /** In snapshot: what is being streamed, and the next byte offset the follower wants. */
  snapshot: Snapshot | null = null;
  snapOffset = 0;
  /** Heartbeat answers seen since the last chunk was acknowledged: two mean the chunk was lost. */
  snapWaits = 0;
  /** The follower says it lost its disk and has not caught up: its match counts for no quorum. */
  recovering = false;
  /**
   * While recovering: the first log index appended after the leader learned so. Only an entry from here on,
   * committed without this follower, proves the leader's term is at least any term the follower promised
   * something in before it lost its disk (see Raft.ownCommitFor).
   */
  recoverFloor = 0;

  constructor(next: number, isLearner: boolean, inflightMsgsMax: number, inflightBytesMax: number) {
    this.next = next;
    this.isLearner = isLearner;
    this.inflights = new Inflights(inflightMsgsMax, inflightBytesMax);
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.snapshot = null;
    this.snapOffset = 0;
    this.snapWaits = 0;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    const snapIndex = this.snapshot?.meta.index ?? 0;
    const wasSnapshot = this.state === ProgressState.snapshot;
    this.resetState(ProgressState.probe);
    this.next = wasSnapshot ? Math.max(this.match + 1, snapIndex + 1) : this.match + 1;
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.replicate);
    this.next = this.match + 1;
  }

  /**
   * The follower lost its log (a wiped disk): the match remembered for it is void. Probe again from what it
   * still has (`hint`, 0 for nothing); an index below the leader's first index turns into a snapshot.
   */
  resetLostLog(hint: number): void {
    this.resetState(ProgressState.probe);
    this.match = 0;
    this.next = hint + 1;
  }

  becomeSnapshot(s: Snapshot): void {
    this.resetState(ProgressState.snapshot);
    this.snapshot = s;
  }

  /** An append (or snapshot) up to n was acknowledged; false if it was stale. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /**
   * The follower rejected an append whose previous index was `rejected`; `matchHint` is the index the
   * leader derived from the follower's conflict hint. Returns false for a stale rejection.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.replicate) {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  /** An append of entries ending at `last` with `bytes` payload was sent. */
  sentEntries(count: number, last: number, bytes: number): void {
    if (this.state === ProgressState.replicate) {
      if (count > 0) {
        this.next = last + 1;
        this.inflights.add(last, bytes);
      }
    } else if (this.state === ProgressState.probe) {
      this.probeSent = true;
    }
  }

  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.probe:
        return this.probeSent;
      case ProgressState.replicate:
        return this.inflights.full();
      case ProgressState.snapshot:
        return true;
    }
  }
}
