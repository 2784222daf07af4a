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

interface Session {
  max: number;
  lastIndex: number;
  readonly seen: Set<number>;
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
    if (s.seen.size > 2 * sessionWindow) for (const q of s.seen) if (q <= s.max - sessionWindow) s.seen.delete(q);
    if (++this.appliedSinceSweep >= 10_000) {
      this.appliedSinceSweep = 0;
      for (const [k, v] of this.sessions) if (index - v.lastIndex > sessionIdleEntries) this.sessions.delete(k);
    }
    return true;
  }

  encode(): unknown[] {
    return [...this.sessions.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([k, s]) => [k, s.max, s.lastIndex, [...s.seen].sort((a, b) => a - b)]);
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
  const table = packOwned(packr, sessions.encode());
  return {
    bytesEstimate: image.bytesEstimate + table.length + 16,
    *write(w: MsgpackWriter) {
      w.array(3);
      w.uint(1);
      const mark = w.beginBin32();
      yield* image.write(w);
      w.endBin32(mark);
      w.raw(table);
    },
  };
}

/** encodeNodeSnapshot(stateMachine.snapshot(), sessions), with the image written in place (no copy of it). */
export function writeNodeSnapshot(stateMachine: KvStateMachine, sessions: AppliedSessions): Uint8Array {
  const w = new MsgpackWriter(stateMachine.snapshotBytesEstimate() + 64 * 1024);
  w.array(3);
  w.uint(1);
  const mark = w.beginBin32();
  stateMachine.snapshotInto(w);
  w.endBin32(mark);
  w.raw(packOwned(packr, sessions.encode()));
  return w.finish();
}

export function decodeNodeSnapshot(data: Uint8Array): { kvImage: Uint8Array; sessions: unknown } {
  const v = packr.unpack(data) as unknown;
  if (!Array.isArray(v) || v[0] !== 1 || !(v[1] instanceof Uint8Array)) throw new Error('snapshot data is not a membershipd node snapshot (version 1)');
  return { kvImage: v[1], sessions: v[2] };
}
