// The read-only view of durable state that Raft reads from, and MemoryStorage, the reference
// implementation (store/ mirrors its semantics on top of the WAL). Raft never writes here: the caller
// writes what a Ready says, then calls advance(). Index i of the log is entries[i - snapshot.index];
// entries[0] is a dummy holding the snapshot's index and term (etcd-io/raft storage.go).
import { RaftError, RaftErrorCode, assert } from './errors.js';
import type { ConfState, Entry, HardState, Snapshot } from './types.js';
import { EntryType, emptyHardState } from './types.js';

export interface InitialState {
  readonly hardState: HardState;
  /** The configuration as of the snapshot (conf changes after it are replayed from the log). */
  readonly confState: ConfState;
}

export interface Storage {
  initialState(): InitialState;
  /** Entries [lo, hi), at most bytesMax payload bytes but always at least one. Throws compacted/unavailable. */
  entries(lo: number, hi: number, bytesMax: number): Entry[];
  /** Term of entry i, for firstIndex()-1 <= i <= lastIndex(). Throws compacted/unavailable otherwise. */
  term(i: number): number;
  firstIndex(): number;
  lastIndex(): number;
  /** The most recent snapshot (index 0 when there is none). */
  snapshot(): Snapshot;
}

export const emptyConfState: ConfState = { voters: [], learners: [] };
export const emptySnapshot: Snapshot = {
  meta: { index: 0, term: 0, conf: emptyConfState },
  data: new Uint8Array(0),
};

export function limitBytes(ents: Entry[], bytesMax: number): Entry[] {
  if (ents.length === 0) return ents;
  let size = ents[0]!.data.length;
  let n = 1;
  for (; n < ents.length; n++) {
    size += ents[n]!.data.length;
    if (size > bytesMax) break;
  }
  return n < ents.length ? ents.slice(0, n) : ents;
}

export class MemoryStorage implements Storage {
  private hs: HardState = emptyHardState;
  private snap: Snapshot = emptySnapshot;
  private ents: Entry[] = [{ term: 0, index: 0, type: EntryType.normal, data: new Uint8Array(0) }];

  initialState(): InitialState {
    return { hardState: this.hs, confState: this.snap.meta.conf };
  }
  hardState(): HardState {
    return this.hs;
  }
  setHardState(hs: HardState): void {
    this.hs = hs;
  }

  private get offset(): number {
    return this.ents[0]!.index;
  }
  firstIndex(): number {
    return this.offset + 1;
  }
  lastIndex(): number {
    return this.offset + this.ents.length - 1;
  }

  entries(lo: number, hi: number, bytesMax: number): Entry[] {
    if (lo <= this.offset) throw new RaftError(RaftErrorCode.compacted, `entry ${lo} is compacted (first index ${this.firstIndex()})`);
    if (hi > this.lastIndex() + 1) throw new RaftError(RaftErrorCode.unavailable, `entries up to ${hi - 1} requested, last index ${this.lastIndex()}`);
    return limitBytes(this.ents.slice(lo - this.offset, hi - this.offset), bytesMax);
  }

  term(i: number): number {
    if (i < this.offset) throw new RaftError(RaftErrorCode.compacted, `term of compacted entry ${i} (first index ${this.firstIndex()})`);
    if (i > this.lastIndex()) throw new RaftError(RaftErrorCode.unavailable, `term of entry ${i} beyond last index ${this.lastIndex()}`);
    return this.ents[i - this.offset]!.term;
  }

  snapshot(): Snapshot {
    return this.snap;
  }

  /** Replaces everything with a received snapshot (Ready.snapshot). */
  applySnapshot(snap: Snapshot): void {
    if (snap.meta.index <= this.snap.meta.index) return;
    this.snap = snap;
    this.ents = [{ term: snap.meta.term, index: snap.meta.index, type: EntryType.normal, data: new Uint8Array(0) }];
  }

  /** Records a snapshot the caller took of its state machine at applied index `index` (≤ lastIndex). */
  createSnapshot(index: number, conf: ConfState, data: Uint8Array): Snapshot {
    if (index <= this.snap.meta.index) return this.snap;
    assert(index <= this.lastIndex(), `snapshot index ${index} beyond last index ${this.lastIndex()}`);
    this.snap = { meta: { index, term: this.term(index), conf }, data };
    return this.snap;
  }

  /** Drops entries up to and including `index`, which a snapshot must already cover. */
  compact(index: number): void {
    if (index <= this.offset) return;
    assert(index <= this.snap.meta.index, `compact(${index}) beyond the snapshot index ${this.snap.meta.index}`);
    assert(index <= this.lastIndex(), `compact(${index}) beyond last index ${this.lastIndex()}`);
    const head = this.ents[index - this.offset]!;
    this.ents = [{ term: head.term, index: head.index, type: EntryType.normal, data: new Uint8Array(0) }, ...this.ents.slice(index - this.offset + 1)];
  }

  /**
   * Appends Ready.entries; an entry that conflicts with the stored log truncates the log from its index
   * (Raft paper Fig. 2, AppendEntries step 3). Entries already covered by the snapshot are skipped.
   * Returns the number of stored entries that were removed by truncation.
   */
  append(entries: readonly Entry[]): number {
    if (entries.length === 0) return 0;
    let ents = entries;
    const first = this.firstIndex();
    const lastNew = ents[ents.length - 1]!.index;
    if (lastNew < first) return 0;
    if (ents[0]!.index < first) ents = ents.slice(first - ents[0]!.index);
    const at = ents[0]!.index - this.offset;
    assert(at <= this.ents.length, `append at ${ents[0]!.index} leaves a gap after last index ${this.lastIndex()}`);
    const removed = this.ents.length - at;
    if (removed > 0) this.ents.length = at;
    for (let i = 0; i < ents.length; i++) this.ents.push(ents[i]!);
    return removed;
  }
}
