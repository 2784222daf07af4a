// Exactly-once apply of retried proposals. A proposer re-submits a write it has not seen applied (the
// forwarded MsgProp may be lost with a route or a leader), so the log can hold the same (origin, boot,
// seq) twice; only the first copy is applied. The table is part of the replicated state: it changes
// only in apply and travels in the snapshot, so every node skips exactly the same entries.
import { Packr } from 'msgpackr';
import { MsgpackWriter, packOwned, type KvStateMachine } from '../../store/index.js';

/** Seqs below a session's highest applied seq minus this are treated as already applied. */
export const sessionWindow = 65_536;
/** A session unused for this many log entries is forgotten (its proposer has long since timed out). */
const sessionIdleEntries = 1_000_000;
/**
 * Seqs that fell out of the window are dropped this many at a time. Dropping them all at once when the set reached
 * twice the window walked 131k entries in one apply (a few ms of stall every 65k writes) and kept twice the
 * window in memory; in slices the set stays near the window.
 */
const sweepBatch = 1024;
/** Seqs written into a snapshot between two pauses of its writer. */
const seqsPerStep = 8192;

interface Session {
  max: number;
  lastIndex: number;
  readonly seen: Set<number>;
}

/** A session as a snapshot holds it: the seen seqs still inside the window, copied out at the freeze, ascending. */
export interface FrozenSession {
  readonly key: string;
  readonly max: number;
  readonly lastIndex: number;
  readonly seen: Float64Array;
}

const packr = new Packr({ useRecords: false });

export class AppliedSessions {
  private readonly sessions = new Map<string, Session>();
  private appliedSinceSweep = 0;

  /** True when the entry is new (apply it); false for a duplicate (skip it). */
  admit(origin: number, boot: number, seq: number, index: number): boolean {
    if (origin === 0) return true;
    const key = `${origin}:${boot}`;
    let s = this.sessions.get(key);
    if (!s) {
      s = { max: 0, lastIndex: index, seen: new Set() };
      this.sessions.set(key, s);
    }
    s.lastIndex = index;
    if (s.seen.has(seq) || (s.max > sessionWindow && seq <= s.max - sessionWindow)) return false;
    s.seen.add(seq);
    if (seq > s.max) s.max = seq;
    if (s.seen.size > sessionWindow + sweepBatch) dropStale(s);
    if (++this.appliedSinceSweep >= 10_000) {
      this.appliedSinceSweep = 0;
      for (const [k, v] of this.sessions) if (index - v.lastIndex > sessionIdleEntries) this.sessions.delete(k);
    }
    return true;
  }

  /** The table as plain values (the snapshot's shape): [key, max, lastIndex, seen seqs ascending] per session. */
  encode(): unknown[] {
    return this.freeze().map((f) => [f.key, f.max, f.lastIndex, Array.from(f.seen)]);
  }

  /**
   * The table at this moment, for a snapshot written over time (writeSessions). Seqs at or below max - window are
   * left out: admit refuses them by the window rule alone, so the restored table admits exactly what this one does.
   */
  freeze(): FrozenSession[] {
    return [...this.sessions.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([key, s]) => {
      const floor = s.max > sessionWindow ? s.max - sessionWindow : 0;
      const seen = new Float64Array(s.seen.size);
      let n = 0;
      let ascending = true;
      // Seqs arrive in apply order, which is the proposers' order but for retries: the sort is rarely needed.
      for (const q of s.seen) {
        if (q <= floor) continue;
        if (n > 0 && q < seen[n - 1]!) ascending = false;
        seen[n++] = q;
      }
      const live = seen.subarray(0, n);
      if (!ascending) live.sort();
      return { key, max: s.max, lastIndex: s.lastIndex, seen: live };
    });
  }

  restore(v: unknown): void {
    this.sessions.clear();
    this.appliedSinceSweep = 0;
    if (!Array.isArray(v)) throw new Error('session table is not an array');
    for (const row of v) {
      if (!Array.isArray(row) || row.length !== 4 || typeof row[0] !== 'string' || !Array.isArray(row[3])) throw new Error('malformed session row');
      this.sessions.set(row[0], { max: Number(row[1]), lastIndex: Number(row[2]), seen: new Set((row[3] as unknown[]).map(Number)) });
    }
  }
}

/** Drops up to sweepBatch seqs that fell out of the window, oldest admitted first (the order the set iterates in). */
function dropStale(s: Session): void {
  const floor = s.max - sessionWindow;
  let dropped = 0;
  let visited = 0;
  for (const q of s.seen) {
    if (q <= floor) {
      s.seen.delete(q);
      if (++dropped === sweepBatch) return;
    }
    // Bounded also when retries left live seqs among the oldest: the next admit goes on.
    if (++visited === 4 * sweepBatch) return;
  }
}

/** Writes a frozen session table in the shape encode() gives, pausing (yield) every seqsPerStep seqs. */
export function* writeSessions(w: MsgpackWriter, table: readonly FrozenSession[]): Generator<void, void, void> {
  w.array(table.length);
  for (const f of table) {
    w.array(4);
    w.str(f.key);
    w.uint(f.max);
    w.uint(f.lastIndex);
    w.array(f.seen.length);
    for (let i = 0; i < f.seen.length; i++) {
      if (i % seqsPerStep === seqsPerStep - 1) yield;
      w.uint(f.seen[i]!);
    }
  }
}

/** Snapshot data of a node: the KV image plus the session table. */
export function encodeNodeSnapshot(kvImage: Uint8Array, sessions: AppliedSessions): Uint8Array {
  return packOwned(packr, [1, kvImage, sessions.encode()]);
}

/** A node snapshot begun now (KvStateMachine.beginSnapshot and the session table), written over time by `write`. */
export interface NodeImageBuild {
  readonly bytesEstimate: number;
  write(w: MsgpackWriter): Generator<void, void, void>;
}

/** What beginNodeSnapshot needs of a state machine (KvStateMachine; the simulator's has its own image). */
export interface SnapshotSource {
  beginSnapshot(): { readonly bytesEstimate: number; write(w: MsgpackWriter): Generator<void, void, void> };
}

export function beginNodeSnapshot(stateMachine: SnapshotSource, sessions: AppliedSessions): NodeImageBuild {
  const image = stateMachine.beginSnapshot();
  // Frozen (copied out) now, written with the image: packing it here with msgpackr took 10-25 ms of one turn at 65k
  // seqs (bench/tail_probe.ts), on every node at the same applied index.
  const table = sessions.freeze();
  let seqs = 0;
  for (const f of table) seqs += f.seen.length;
  return {
    bytesEstimate: image.bytesEstimate + 5 * seqs + 64 * table.length + 16,
    *write(w: MsgpackWriter) {
      w.array(3);
      w.uint(1);
      const mark = w.beginBin32();
      yield* image.write(w);
      w.endBin32(mark);
      yield* writeSessions(w, table);
    },
  };
}

/** encodeNodeSnapshot(stateMachine.snapshot(), sessions), with the image written in place (no copy of it): the node's snapshot writer, run without pauses. */
export function writeNodeSnapshot(stateMachine: KvStateMachine, sessions: AppliedSessions): Uint8Array {
  const build = beginNodeSnapshot(stateMachine, sessions);
  const w = new MsgpackWriter(build.bytesEstimate);
  const steps = build.write(w);
  while (!steps.next().done);
  return w.finish();
}

/** The session table of a node snapshot, from the bytes after its KV image (a staged restore: staged_restore.ts). */
export function decodeNodeSessions(afterImage: Uint8Array): unknown {
  return packr.unpack(afterImage) as unknown;
}

export function decodeNodeSnapshot(data: Uint8Array): { kvImage: Uint8Array; sessions: unknown } {
  const v = packr.unpack(data) as unknown;
  if (!Array.isArray(v) || v[0] !== 1 || !(v[1] instanceof Uint8Array)) throw new Error('snapshot data is not a membershipd node snapshot (version 1)');
  return { kvImage: v[1], sessions: v[2] };
}

/**
 * When a node may begin a local snapshot. Snapshot work slows the node taking it, and a write commits with the leader
 * and one follower; every node crossed the snapshot threshold at the same applied index, so both followers (and the
 * leader) were slow at once and every write waited: bursts of the whole window of 64 puts at 100-180 ms
 * (bench/tail_probe.ts, PERFORMANCE.md "Tail latency"). The applied index is a clock the nodes share, so they take
 * turns on it without a message: each cycle of `entries` indexes is cut into one turn per slot, and a node whose
 * thresholds are met waits for its own turn (at most one cycle, so the log it keeps in memory until then is at most
 * twice the threshold). A turn that one Ready batch stepped over still counts: the check covers every index applied
 * since the last call.
 */
export class SnapshotTurns {
  private lastApplied = -1;

  /** True when an index of this slot's turn was applied since the last call (slot 1-based, of `slots`). */
  passed(applied: number, slot: number, slots: number, entries: number): boolean {
    const from = this.lastApplied < 0 || this.lastApplied >= applied ? applied : this.lastApplied + 1;
    this.lastApplied = applied;
    if (slots <= 1) return true;
    const turn = Math.max(1, Math.floor(entries / slots));
    const cycle = turn * slots;
    if (applied - from + 1 >= cycle) return true;
    const lo = ((slot - 1) % slots) * turn;
    const hi = lo + turn - 1;
    const a = from % cycle;
    const b = applied % cycle;
    // [a, b] on the cycle, or [a, cycle) and [0, b] when it wraps, against the turn [lo, hi].
    return a <= b ? a <= hi && b >= lo : a <= hi || b >= lo;
  }
}
