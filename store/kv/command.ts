// KV commands: what a Raft entry's data holds for the KV state machine. Each is a msgpack map with
// an `op` field. `ts` (ms since the epoch) is chosen by the proposer, never read from the clock at
// apply time, so every node applies the same entry to the same bytes.
//
//   { op: 'bucket.create', bucket, config: { history?, valueBytesMax?, bytesMax?, keyBytesMax?, maxAgeMs?,
//                          duplicateWindowMs?, stream? }, ts }   stream: the client's stream config, opaque bytes
//   { op: 'bucket.delete', bucket, ts }
//   { op: 'bucket.purge', bucket, ts, subject?, keep?, seq? }  drops retained entries as JetStream's STREAM.PURGE
//   { op: 'expire', bucket, before, ts }                      drops entries with ts <= before (bucket TTL; the
//                                                            leader proposes it, so every node expires alike)
//   { op: 'put',    bucket, key, value, ts }                 always writes
//   { op: 'create', bucket, key, value, ts }                 only if the key is absent, deleted or purged
//   { op: 'update', bucket, key, value, revision, ts }       only if the key's latest revision is `revision`
//                                                            (0: the key has no entry at all)
//   { op: 'delete', bucket, key, ts, revision? }             appends a DEL marker (kept in history)
//   { op: 'purge',  bucket, key, ts, revision? }             drops the key's history, keeps a PURGE marker
//   { op: 'txn', ts, guards: [KvGuard…], ops: [write…] }     every guard holds and every write is accepted,
//                                                            then all writes apply (one per bucket), or none
//
// A txn lets a caller turn "check, then write" into one replicated entry whose checks run at apply
// time on every node against the same state, so it needs no ReadIndex round before it and cannot
// interleave with a concurrent writer (the control plane writes a user and its audit record this way).
// Its writes share the entry's index (each gets its own bucket's next revision); at most one write per bucket.
//
// Every write may also carry (JetStream publish headers, checked at apply time on every node):
//   hdrBytes        length of the header block the client sent (stored-size accounting, as nats-server's)
//   msgId           Nats-Msg-Id: a second write with an id seen within the bucket's duplicate window is
//                   not stored and answers with the first write's revision
//   expectLastSeq   Nats-Expected-Last-Sequence: the bucket's last revision must be this
//   guard { bucket, key, present: true|false }              the key's latest entry is (not) a PUT
//   guard { bucket, key, revision }                         the key's latest revision is `revision` (0: none)
//   guard { bucket, field, equals, except? }                no key but `except` holds a PUT whose value is a
//                                                            msgpack map with map[field] === equals (a string)
//
// Request nonces (replay protection of signed admin requests, cluster-wide):
//   { op: 'nonce', ts, claim: { id, at } }                   records the claim, refused if `id` was claimed
//   txn may carry `claim` too                                 the txn applies and records it, or neither
// `id` names one signed request (signer key + nonce), `at` is the request's own signed timestamp. A claim is
// kept while at + nonceRetentionMs ≥ the highest `ts` of any claim-bearing command applied so far, and a claim
// older than that is refused outright: so a forgotten claim can never be accepted again, whatever the clocks.
import { copyBytes, isUint, pack, unpack } from '../codec.js';

export interface BucketConfigInput {
  /** Entries kept per key, markers included (1..64, default 1). */
  readonly history?: number;
  readonly valueBytesMax?: number;
  /** Bytes of retained keys + values in the bucket. */
  readonly bytesMax?: number;
  readonly keyBytesMax?: number;
  /** Bucket TTL: entries older than this are expired by the leader's proposal (0: never). */
  readonly maxAgeMs?: number;
  /** Nats-Msg-Id duplicate window (default 2 min, as nats-server). */
  readonly duplicateWindowMs?: number;
  /** The stream config the client asked for, opaque to the state machine (echoed back by the KV API). */
  readonly stream?: Uint8Array;
}

/** JetStream publish expectations every write may carry (see above). */
export interface WriteExtras {
  readonly hdrBytes?: number;
  readonly msgId?: string;
  readonly expectLastSeq?: number;
}

export type KvWriteCommand = WriteExtras & (
  | { readonly op: 'put' | 'create'; readonly bucket: string; readonly key: string; readonly value: Uint8Array; readonly ts: number }
  | { readonly op: 'update'; readonly bucket: string; readonly key: string; readonly value: Uint8Array; readonly revision: number; readonly ts: number }
  | { readonly op: 'delete' | 'purge'; readonly bucket: string; readonly key: string; readonly ts: number; readonly revision?: number });

export type KvGuard =
  | { readonly bucket: string; readonly key: string; readonly present: boolean }
  | { readonly bucket: string; readonly key: string; readonly revision: number }
  | { readonly bucket: string; readonly field: string; readonly equals: string; readonly except?: string };

/** One signed request's claim: `id` = signer key + nonce, `at` = the request's signed timestamp (ms). */
export interface NonceClaim {
  readonly id: string;
  readonly at: number;
}

export type KvCommand =
  | { readonly op: 'bucket.create'; readonly bucket: string; readonly config: BucketConfigInput; readonly ts: number }
  | { readonly op: 'bucket.delete'; readonly bucket: string; readonly ts: number }
  | { readonly op: 'bucket.purge'; readonly bucket: string; readonly ts: number; readonly subject?: string; readonly keep?: number; readonly seq?: number }
  | { readonly op: 'expire'; readonly bucket: string; readonly before: number; readonly ts: number }
  | KvWriteCommand
  | { readonly op: 'txn'; readonly ts: number; readonly guards: readonly KvGuard[]; readonly ops: readonly KvWriteCommand[]; readonly claim?: NonceClaim }
  | { readonly op: 'nonce'; readonly ts: number; readonly claim: NonceClaim };

/** Bounds of a txn (a bigger one is refused as a bad command, on every node alike). */
export const txnLimits = { guardsMax: 64, opsMax: 16 } as const;

/** Longest Nats-Msg-Id kept (a longer one is refused as a bad command). */
export const msgIdBytesMax = 256;

/**
 * How long a claimed nonce is remembered, after its request's own timestamp. Must be at least twice the clock
 * window in which a node accepts a signed request (src/control/envelope.ts checks it), so that a request whose
 * claim was forgotten is refused by every node's clock check; claims older than this are refused anyway.
 */
export const nonceRetentionMs = 240_000;

/** Bounds of the nonce record: id length, and live claims (beyond it new claims are refused, on every node alike). */
export const nonceLimits = { idBytesMax: 160, claimsMax: 100_000 } as const;

function decodeClaim(v: unknown): NonceClaim | string {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'claim must be a map';
  const c = v as Record<string, unknown>;
  if (!str(c.id) || c.id.length === 0 || c.id.length > nonceLimits.idBytesMax) return `claim.id must be a string of 1..${nonceLimits.idBytesMax}`;
  if (!isUint(c.at)) return 'claim.at must be a non-negative integer';
  return { id: c.id, at: c.at };
}

export function encodeKvCommand(cmd: KvCommand): Uint8Array {
  // msgpack writes an undefined field as nil, which the decoder refuses: optional fields left undefined by a
  // caller are dropped instead.
  if (cmd.op === 'txn') return pack({ ...defined(cmd), ops: cmd.ops.map(defined) });
  return pack(defined(cmd));
}

function defined<T extends object>(o: T): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out as T;
}

const str = (v: unknown): v is string => typeof v === 'string';

/** Decodes and shape-checks a command; returns the reason when it is not one. */
export function decodeKvCommand(data: Uint8Array): KvCommand | string {
  let v: unknown;
  try {
    v = unpack(data);
  } catch (err) {
    return `not msgpack: ${String(err)}`;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not a msgpack map';
  const o = v as Record<string, unknown>;
  if (o.op === 'txn') return decodeTxn(o);
  if (o.op === 'nonce') {
    if (!isUint(o.ts)) return 'ts must be a non-negative integer';
    const claim = decodeClaim(o.claim);
    return typeof claim === 'string' ? claim : { op: 'nonce', ts: o.ts, claim };
  }
  return decodeSingle(o);
}

function decodeSingle(o: Record<string, unknown>): KvCommand | string {
  if (!str(o.bucket)) return 'bucket must be a string';
  if (!isUint(o.ts)) return 'ts must be a non-negative integer';
  const bucket = o.bucket;
  const ts = o.ts;
  switch (o.op) {
    case 'bucket.create': {
      const c = o.config;
      if (typeof c !== 'object' || c === null || Array.isArray(c)) return 'config must be a map';
      const cfg = c as Record<string, unknown>;
      const out: Record<string, number | Uint8Array> = {};
      for (const k of ['history', 'valueBytesMax', 'bytesMax', 'keyBytesMax', 'maxAgeMs', 'duplicateWindowMs'] as const) {
        if (cfg[k] === undefined) continue;
        if (!isUint(cfg[k])) return `config.${k} must be a non-negative integer`;
        out[k] = cfg[k];
      }
      if (cfg.stream !== undefined) {
        if (!(cfg.stream instanceof Uint8Array)) return 'config.stream must be bytes';
        out.stream = copyBytes(cfg.stream);
      }
      return { op: 'bucket.create', bucket, config: out as BucketConfigInput, ts };
    }
    case 'bucket.delete':
      return { op: 'bucket.delete', bucket, ts };
    case 'bucket.purge': {
      if (o.subject !== undefined && !str(o.subject)) return 'subject must be a string';
      for (const k of ['keep', 'seq'] as const) if (o[k] !== undefined && !isUint(o[k])) return `${k} must be a non-negative integer`;
      return {
        op: 'bucket.purge', bucket, ts,
        ...(o.subject === undefined ? {} : { subject: o.subject }), ...(o.keep === undefined ? {} : { keep: o.keep as number }), ...(o.seq === undefined ? {} : { seq: o.seq as number }),
      };
    }
    case 'expire':
      if (!isUint(o.before)) return 'before must be a non-negative integer';
      return { op: 'expire', bucket, before: o.before, ts };
    case 'put':
    case 'create':
    case 'update':
    case 'delete':
    case 'purge':
      return decodeWrite(o, bucket, ts);
    default:
      return `unknown op ${JSON.stringify(o.op)}`;
  }
}

function decodeWrite(o: Record<string, unknown>, bucket: string, ts: number): KvWriteCommand | string {
  const extras: { hdrBytes?: number; msgId?: string; expectLastSeq?: number } = {};
  if (o.hdrBytes !== undefined) {
    if (!isUint(o.hdrBytes)) return 'hdrBytes must be a non-negative integer';
    extras.hdrBytes = o.hdrBytes;
  }
  if (o.msgId !== undefined) {
    if (!str(o.msgId) || o.msgId === '' || o.msgId.length > msgIdBytesMax) return `msgId must be a string of 1..${msgIdBytesMax} characters`;
    extras.msgId = o.msgId;
  }
  if (o.expectLastSeq !== undefined) {
    if (!isUint(o.expectLastSeq)) return 'expectLastSeq must be a non-negative integer';
    extras.expectLastSeq = o.expectLastSeq;
  }
  switch (o.op) {
    case 'put':
    case 'create':
    case 'update': {
      if (!str(o.key)) return 'key must be a string';
      if (!(o.value instanceof Uint8Array)) return 'value must be bytes';
      const value = copyBytes(o.value);
      if (o.op !== 'update') return { op: o.op, bucket, key: o.key, value, ts, ...extras };
      if (!isUint(o.revision)) return 'revision must be a non-negative integer';
      return { op: 'update', bucket, key: o.key, value, revision: o.revision, ts, ...extras };
    }
    default: {
      const op = o.op as 'delete' | 'purge';
      if (!str(o.key)) return 'key must be a string';
      if (o.revision !== undefined && !isUint(o.revision)) return 'revision must be a non-negative integer';
      return o.revision === undefined ? { op, bucket, key: o.key, ts, ...extras } : { op, bucket, key: o.key, ts, revision: o.revision, ...extras };
    }
  }
}

function decodeTxn(o: Record<string, unknown>): KvCommand | string {
  if (!isUint(o.ts)) return 'ts must be a non-negative integer';
  if (!Array.isArray(o.guards) || o.guards.length > txnLimits.guardsMax) return `txn guards must be a list of at most ${txnLimits.guardsMax}`;
  if (!Array.isArray(o.ops) || o.ops.length === 0 || o.ops.length > txnLimits.opsMax) return `txn ops must be a list of 1..${txnLimits.opsMax} writes`;
  const guards: KvGuard[] = [];
  for (const [i, g] of o.guards.entries()) {
    if (typeof g !== 'object' || g === null || Array.isArray(g)) return `txn guard ${i} must be a map`;
    const m = g as Record<string, unknown>;
    if (!str(m.bucket)) return `txn guard ${i}: bucket must be a string`;
    if (str(m.field)) {
      if (!str(m.equals)) return `txn guard ${i}: equals must be a string`;
      if (m.except !== undefined && !str(m.except)) return `txn guard ${i}: except must be a string`;
      guards.push(m.except === undefined ? { bucket: m.bucket, field: m.field, equals: m.equals } : { bucket: m.bucket, field: m.field, equals: m.equals, except: m.except });
    } else if (!str(m.key)) {
      return `txn guard ${i}: key (or field) must be a string`;
    } else if (typeof m.present === 'boolean') {
      guards.push({ bucket: m.bucket, key: m.key, present: m.present });
    } else if (isUint(m.revision)) {
      guards.push({ bucket: m.bucket, key: m.key, revision: m.revision });
    } else {
      return `txn guard ${i}: needs present (boolean) or revision (non-negative integer)`;
    }
  }
  const ops: KvWriteCommand[] = [];
  const buckets = new Set<string>();
  for (const [i, w] of o.ops.entries()) {
    if (typeof w !== 'object' || w === null || Array.isArray(w)) return `txn op ${i} must be a map`;
    const c = decodeSingle(w as Record<string, unknown>);
    if (typeof c === 'string') return `txn op ${i}: ${c}`;
    if (c.op === 'bucket.create' || c.op === 'bucket.delete' || c.op === 'bucket.purge' || c.op === 'expire' || c.op === 'txn' || c.op === 'nonce') return `txn op ${i}: ${c.op} cannot be part of a txn`;
    // The entry's index is the revision of each write: two writes to one bucket would share it.
    if (buckets.has(c.bucket)) return `txn op ${i}: a txn writes each bucket at most once (${c.bucket} twice)`;
    buckets.add(c.bucket);
    ops.push(c);
  }
  if (o.claim === undefined) return { op: 'txn', ts: o.ts, guards, ops };
  const claim = decodeClaim(o.claim);
  return typeof claim === 'string' ? `txn ${claim}` : { op: 'txn', ts: o.ts, guards, ops, claim };
}
