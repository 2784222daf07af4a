// What the node sends inside the transport's `raft` frames: `[tag, ...]` plain msgpack arrays.
//   [0, message]   a Raft message (fields in the fixed order of `encodeMessage`)
//   [1, hello]     the node's slot view, sent when a link comes up and when the view changes (bootstrap, see
//                  README.md): [1, id, routes, addresses, voters, initial, names, bound]; the last three (slots at
//                  bootstrap, names of the slots `cluster add` appended, slots whose identity the sender has bound)
//                  are absent from older nodes' hellos
//   [2, reqId]     asks the peer for its member report (`cluster status`)
//   [3, reqId, report]  the answer: [id, name, state, term, lead, commit, applied, lastIndex, health]
// Everything received is validated field by field: a peer runs the same code, but a bug or a newer
// version must end as a logged, dropped frame, never as a malformed object inside raft/.
import { MessageType, message, type Message, type SnapshotChunk } from '../../raft/index.js';
import type { ConfState, Entry } from '../../raft/index.js';

export const wireTag = { raft: 0, hello: 1, statusRequest: 2, statusReply: 3 } as const;

/** One node's own view, as `cluster status` shows it (every index is the node's own). */
export interface MemberReport {
  readonly id: number;
  readonly name: string;
  /** Raft state: follower, preCandidate, candidate, leader. */
  readonly state: string;
  readonly term: number;
  /** Raft id of the leader it follows, 0 when none. */
  readonly lead: number;
  readonly commit: number;
  readonly applied: number;
  readonly lastIndex: number;
  /** 'ok' or the health reason. */
  readonly health: string;
}

export function encodeStatusRequest(reqId: number): unknown[] {
  return [wireTag.statusRequest, reqId];
}

export function encodeStatusReply(reqId: number, r: MemberReport): unknown[] {
  return [wireTag.statusReply, reqId, [r.id, r.name, r.state, r.term, r.lead, r.commit, r.applied, r.lastIndex, r.health]];
}

export interface SlotHello {
  /** The sender's Raft id, 0 while it does not know its slot yet. */
  readonly id: number;
  /** The sender's --routes, normalized (`host:port`). */
  readonly routes: readonly string[];
  /** The sender's full sorted slot address list, when it knows it. */
  readonly addresses: readonly string[] | null;
  readonly voters: number;
  /** Slots at bootstrap (the handshake's N); 0 when the sender has no table (or is an older node). */
  readonly initial: number;
  /** Names of the appended slots `initial+1..`, in order (what `cluster add NAME URL` recorded). */
  readonly names: readonly string[];
  /**
   * Slots whose identity the sender has met and bound (persisted in its cluster.json). A node that starts with an
   * empty store and finds its own slot here is not new: it lost its data (src/node/README.md, "A wiped node").
   */
  readonly bound: readonly number[];
}

const types = new Set<string>(Object.values(MessageType));

export function encodeMessage(m: Message): unknown[] {
  const snap = m.snapshot;
  return [
    0, m.type, m.from, m.to, m.term, m.logTerm, m.index,
    m.entries.map((e) => [e.term, e.index, e.type, e.data]),
    m.commit, m.reject, m.rejectHint, m.context,
    snap === null ? null : [snap.meta.index, snap.meta.term, snap.meta.conf.voters, snap.meta.conf.learners, snap.offset, snap.data, snap.done, snap.total],
    // Only when set: a 13-field message is what nodes without the field accept, and only a node that lost its
    // data sets it.
    ...(m.recovering ? [true] : []),
  ];
}

export function encodeHello(h: SlotHello): unknown[] {
  return [1, h.id, h.routes, h.addresses, h.voters, h.initial, h.names, h.bound];
}

const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isIds = (v: unknown): v is number[] => Array.isArray(v) && v.every(isUint);
const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');

export type Decoded =
  | { readonly kind: 'raft'; readonly message: Message }
  | { readonly kind: 'hello'; readonly hello: SlotHello }
  | { readonly kind: 'statusRequest'; readonly reqId: number }
  | { readonly kind: 'statusReply'; readonly reqId: number; readonly report: MemberReport };

/** Decodes a raft frame's data; returns a reason string when it is not one of ours. */
export function decodeNodeFrame(data: unknown): Decoded | string {
  if (!Array.isArray(data) || data.length === 0) return 'not an array';
  if (data[0] === wireTag.hello) {
    if (data.length !== 5 && data.length !== 7 && data.length !== 8) return 'malformed hello';
    const [, id, routes, addresses, voters, initial = 0, names = [], bound = []] = data as unknown[];
    if (!isUint(id) || !isStrings(routes) || !(addresses === null || isStrings(addresses)) || !isUint(voters) || !isUint(initial) || !isStrings(names) || !isIds(bound)) return 'malformed hello';
    // The appended names must fit the table they describe (initial ≤ addresses, one name per appended slot).
    if (initial > 0 && (addresses === null || initial > addresses.length || names.length !== addresses.length - initial)) return 'malformed hello';
    return { kind: 'hello', hello: { id, routes, addresses, voters, initial, names, bound } };
  }
  if (data[0] === wireTag.statusRequest) {
    const [, reqId] = data as unknown[];
    if (!isUint(reqId) || data.length !== 2) return 'malformed status request';
    return { kind: 'statusRequest', reqId };
  }
  if (data[0] === wireTag.statusReply) {
    const [, reqId, r] = data as unknown[];
    if (!isUint(reqId) || !Array.isArray(r) || r.length !== 9) return 'malformed status reply';
    const [id, name, state, term, lead, commit, applied, lastIndex, health] = r as unknown[];
    if (!isUint(id) || typeof name !== 'string' || typeof state !== 'string' || !isUint(term) || !isUint(lead) || !isUint(commit) || !isUint(applied) || !isUint(lastIndex) || typeof health !== 'string') {
      return 'malformed status reply';
    }
    return { kind: 'statusReply', reqId, report: { id, name, state, term, lead, commit, applied, lastIndex, health } };
  }
  // 13 fields from nodes older than `recovering` (read as false: such a node never lost its disk knowingly).
  if (data[0] !== wireTag.raft || (data.length !== 13 && data.length !== 14)) return `unknown tag ${describeField(data[0])}`;
  const [, type, from, to, term, logTerm, index, entries, commit, reject, rejectHint, context, snap, recovering = false] = data as unknown[];
  if (typeof type !== 'string' || !types.has(type)) return `unknown message type ${describeField(type)}`;
  if (!isUint(from) || !isUint(to) || !isUint(term) || !isUint(logTerm) || !isUint(index) || !isUint(commit) || !isUint(rejectHint)) return 'malformed numbers';
  if (typeof reject !== 'boolean' || typeof recovering !== 'boolean' || !isBytes(context) || !Array.isArray(entries)) return 'malformed fields';
  const ents: Entry[] = [];
  for (const e of entries) {
    if (!Array.isArray(e) || e.length !== 4) return 'malformed entry';
    const [t, i, ty, d] = e as unknown[];
    if (!isUint(t) || !isUint(i) || (ty !== 0 && ty !== 1) || !isBytes(d)) return 'malformed entry';
    ents.push({ term: t, index: i, type: ty, data: d });
  }
  let snapshot: SnapshotChunk | null = null;
  if (snap !== null) {
    // 7 fields from nodes older than the chunk's `total` (progress only): read as 0.
    if (!Array.isArray(snap) || (snap.length !== 7 && snap.length !== 8)) return 'malformed snapshot chunk';
    const [si, st, sv, sl, off, sd, done, total = 0] = snap as unknown[];
    if (!isUint(si) || !isUint(st) || !isIds(sv) || !isIds(sl) || !isUint(off) || !isBytes(sd) || typeof done !== 'boolean' || !isUint(total)) return 'malformed snapshot chunk';
    const conf: ConfState = { voters: sv, learners: sl };
    snapshot = { meta: { index: si, term: st, conf }, offset: off, data: sd, done, total };
  }
  return {
    kind: 'raft',
    message: message({ type: type as MessageType, from, to, term, logTerm, index, entries: ents, commit, reject, rejectHint, context, snapshot, recovering }),
  };
}

// ---- entry envelope ----------------------------------------------------------------------------
// A normal entry's data is `[1][origin u32][boot u32][seq u32][command]`: the proposing node finds its
// own pending request when it applies the entry, whichever node's log it went through. `boot` is random
// per process start, so a restarted node never mistakes an old entry for a new request.
const envelopeVersion = 1;
const envelopeHeader = 13;

export interface Envelope {
  readonly origin: number;
  readonly boot: number;
  readonly seq: number;
  readonly command: Uint8Array;
}

export function encodeEnvelope(origin: number, boot: number, seq: number, command: Uint8Array): Uint8Array {
  const out = new Uint8Array(envelopeHeader + command.length);
  const dv = new DataView(out.buffer);
  out[0] = envelopeVersion;
  dv.setUint32(1, origin);
  dv.setUint32(5, boot);
  dv.setUint32(9, seq);
  out.set(command, envelopeHeader);
  return out;
}

/** A bare command (no envelope) decodes with origin 0: applied, but nobody is waiting for it. */
export function decodeEnvelope(data: Uint8Array): Envelope {
  if (data.length < envelopeHeader || data[0] !== envelopeVersion) return { origin: 0, boot: 0, seq: 0, command: data };
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return { origin: dv.getUint32(1), boot: dv.getUint32(5), seq: dv.getUint32(9), command: data.subarray(envelopeHeader) };
}

/**
 * A decoded field for an error message. Not String(): a msgpack map can decode to an object whose `toString` is
 * not a function, and String() of it throws (fast-check found one) where a refusal must be returned.
 */
function describeField(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.slice(0, 40));
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  return Array.isArray(v) ? 'an array' : typeof v;
}
