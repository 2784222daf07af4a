// The Raft log: stable entries (the caller's Storage) followed by unstable ones (not yet persisted).
// Invariants: applied <= committed <= lastIndex(); committed entries are never truncated.
import { RaftError, RaftErrorCode, assert } from './errors.js';
import { Unstable } from './log_unstable.js';
import type { Storage } from './storage.js';
import { limitBytes } from './storage.js';
import type { Entry, Snapshot } from './types.js';

/** term() of an index that lies before the first available one (compacted into a snapshot). */
export const termCompacted = -1;

export class RaftLog {
  readonly storage: Storage;
  readonly unstable: Unstable;
  committed: number;
  applied: number;

  constructor(storage: Storage) {
    this.storage = storage;
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    this.unstable = new Unstable(last + 1);
    // The caller's state machine restarts from the latest snapshot, which may lie past first - 1 when
    // the log was not compacted all the way up to it.
    const base = Math.max(first - 1, storage.snapshot().meta.index);
    this.committed = base;
    this.applied = base;
  }

  firstIndex(): number {
    return this.unstable.maybeFirstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.maybeLastIndex() ?? this.storage.lastIndex();
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    assert(t >= 0, 'the last entry has a term');
    return t;
  }

  /** The term of entry i; 0 beyond the last index; termCompacted before the first available one. */
  term(i: number): number {
    const u = this.unstable.maybeTerm(i);
    if (u !== undefined) return u;
    const dummy = this.firstIndex() - 1;
    if (i < dummy) return termCompacted;
    if (i > this.lastIndex()) return 0;
    try {
      return this.storage.term(i);
    } catch (e) {
      if (e instanceof RaftError && e.code === RaftErrorCode.compacted) return termCompacted;
      throw e;
    }
  }

  matchTerm(i: number, t: number): boolean {
    return this.term(i) === t;
  }

  /** Raft paper §5.4.1: a candidate's log is at least as up to date as ours. */
  isUpToDate(lastIndex: number, term: number): boolean {
    const lt = this.lastTerm();
    return term > lt || (term === lt && lastIndex >= this.lastIndex());
  }

  /**
   * AppendEntries receiver (Raft paper Fig. 2): returns the last index now known to match the leader,
   * or -1 when the entry before `ents` does not match.
   */
  maybeAppend(index: number, logTerm: number, committed: number, ents: readonly Entry[]): number {
    if (!this.matchTerm(index, logTerm)) return -1;
    const lastNew = index + ents.length;
    const ci = this.findConflict(ents);
    if (ci !== 0) {
      assert(ci > this.committed, `entry ${ci} conflicts with committed entry (committed ${this.committed})`);
      this.append(ents.slice(ci - (index + 1)));
    }
    this.commitTo(Math.min(committed, lastNew));
    return lastNew;
  }

  append(ents: readonly Entry[]): number {
    if (ents.length === 0) return this.lastIndex();
    assert(ents[0]!.index - 1 >= this.committed, `append at ${ents[0]!.index} would overwrite committed ${this.committed}`);
    this.unstable.truncateAndAppend(ents);
    return this.lastIndex();
  }

  /** The index of the first entry of `ents` that is not already in the log with the same term, or 0. */
  findConflict(ents: readonly Entry[]): number {
    for (let i = 0; i < ents.length; i++) {
      const e = ents[i]!;
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * The largest index <= `index` whose term is <= `term`, with that term. A follower that rejects an
   * append returns it as the hint, and the leader uses it to skip a whole term of mismatching
   * entries per round trip (Raft paper §5.3; etcd-io/raft findConflictByTerm).
   */
  findConflictByTerm(index: number, term: number): [number, number] {
    for (let i = index; i >= 0; i--) {
      const t = this.term(i);
      if (t === termCompacted) return [i, 0];
      if (t <= term) return [i, t];
    }
    return [0, 0];
  }

  unstableEntries(): Entry[] {
    return this.unstable.entries;
  }

  /** Committed entries not yet applied, up to bytesMax (at least one if any). */
  nextCommittedEntries(bytesMax: number): Entry[] {
    const lo = Math.max(this.applied + 1, this.firstIndex());
    if (this.committed + 1 <= lo) return [];
    return this.slice(lo, this.committed + 1, bytesMax);
  }

  hasNextCommittedEntries(): boolean {
    return this.committed > Math.max(this.applied, this.firstIndex() - 1);
  }

  snapshot(): Snapshot {
    return this.unstable.snapshot ?? this.storage.snapshot();
  }

  commitTo(c: number): void {
    if (c > this.committed) {
      assert(c <= this.lastIndex(), `commit ${c} beyond last index ${this.lastIndex()}`);
      this.committed = c;
    }
  }

  appliedTo(i: number): void {
    if (i === 0) return;
    assert(i <= this.committed && i >= this.applied, `applied ${i} outside [${this.applied}, ${this.committed}]`);
    this.applied = i;
  }

  stableTo(i: number, t: number): void {
    this.unstable.stableTo(i, t);
  }

  stableSnapTo(i: number): void {
    this.unstable.stableSnapTo(i);
  }

  restore(s: Snapshot): void {
    this.committed = s.meta.index;
    this.unstable.restore(s);
  }

  /** Entries [lo, hi) (from storage then unstable), at most bytesMax payload bytes but at least one. */
  slice(lo: number, hi: number, bytesMax: number): Entry[] {
    if (lo >= hi) return [];
    assert(lo >= this.firstIndex() && hi <= this.lastIndex() + 1, `slice [${lo}, ${hi}) outside the log [${this.firstIndex()}, ${this.lastIndex()}]`);
    const uo = this.unstable.offset;
    let ents: Entry[] = [];
    if (lo < uo) {
      ents = this.storage.entries(lo, Math.min(hi, uo), bytesMax);
      if (ents.length < Math.min(hi, uo) - lo) return ents; // limited by bytes
    }
    if (hi > uo) {
      const u = this.unstable.slice(Math.max(lo, uo), hi);
      ents = ents.length > 0 ? ents.concat(u) : u;
    }
    return limitBytes(ents, bytesMax);
  }

  /** Entries from i on, for an append message: at most entriesMax entries and bytesMax bytes. */
  entriesFrom(i: number, entriesMax: number, bytesMax: number): Entry[] {
    const last = this.lastIndex();
    if (i > last) return [];
    return this.slice(i, Math.min(last + 1, i + entriesMax), bytesMax);
  }
}
