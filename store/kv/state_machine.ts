// The KV state machine, applied from committed Raft entries. Deterministic: the result and the state
// after apply(index, data) depend only on the prior state and the entry, so every node holds the same
// bytes (snapshot() of two replicas at the same index is byte-identical). A bad command never throws:
// a committed entry is applied on every node alike, so refusals are results carrying a stable code.
//
// Mapping to the NATS JetStream KV API: a bucket is a stream; an entry's `revision` is the bucket's stream
// sequence (1, 2, 3 ... per bucket, contiguous, as nats-server numbers a KV stream), assigned here at apply
// time, so every replica gives the same write the same number; update-if-revision compares it. `index` is the
// Raft log index of the write: the cluster-wide order (the change feed across buckets sorts by it), never shown
// to KV clients. `op` is the KV-Operation header (PUT/DEL/PURGE).
import { assert } from '../assert.js';
import { copyBytes, isUint, pack, unpack } from '../codec.js';
import { StoreError, StoreErrorCode } from '../errors.js';
import {
  type BucketConfigInput, decodeKvCommand, type KvCommand, type KvGuard, type KvWriteCommand, type NonceClaim, nonceLimits, nonceRetentionMs,
} from './command.js';
import { EntryTable, type EntryOp, type EntryRow, type FrozenEntries } from './entry_table.js';
import { ImageFormatError, MoreBytesNeeded, MsgpackReader } from './msgpack_reader.js';
import { MsgpackWriter } from './msgpack_writer.js';

export const KvErrorCode = {
  badCommand: 'EKV_BAD_COMMAND',
  badBucketName: 'EKV_BAD_BUCKET_NAME',
  badKey: 'EKV_BAD_KEY',
  badConfig: 'EKV_BAD_CONFIG',
  bucketNotFound: 'EKV_BUCKET_NOT_FOUND',
  bucketExists: 'EKV_BUCKET_EXISTS',
  tooManyBuckets: 'EKV_TOO_MANY_BUCKETS',
  keyExists: 'EKV_KEY_EXISTS',
  wrongRevision: 'EKV_WRONG_REVISION',
  keyTooLong: 'EKV_KEY_TOO_LONG',
  valueTooLarge: 'EKV_VALUE_TOO_LARGE',
  bucketFull: 'EKV_BUCKET_FULL',
  /** A txn guard `present: true` found no value. */
  keyNotFound: 'EKV_KEY_NOT_FOUND',
  /** A txn guard `field/equals` found another key holding that value. */
  valueTaken: 'EKV_VALUE_TAKEN',
  /** Nats-Expected-Last-Sequence did not match the bucket's last revision (`revision` carries it). */
  wrongLastSequence: 'EKV_WRONG_LAST_SEQUENCE',
  /** A bucket purge asked for both `seq` and `keep` (JetStream refuses the combination). */
  badPurge: 'EKV_BAD_PURGE',
  /** The request nonce was claimed before (a replayed signed request). */
  nonceSeen: 'EKV_NONCE_SEEN',
  /** The claim's request is older than the nonce record reaches back (nonceRetentionMs). */
  nonceExpired: 'EKV_NONCE_EXPIRED',
  /** nonceLimits.claimsMax live claims: no room for another until older ones expire. */
  noncesFull: 'EKV_NONCES_FULL',
  /** The node's --max-kv-bytes would be passed (refused by the proposing node, never by apply: see quota.ts). */
  quotaExceeded: 'EKV_QUOTA_EXCEEDED',
} as const;
export type KvErrorCode = (typeof KvErrorCode)[keyof typeof KvErrorCode];

export type KvOperation = 'PUT' | 'DEL' | 'PURGE';

export interface KvEntry {
  readonly bucket: string;
  readonly key: string;
  readonly op: KvOperation;
  readonly value: Uint8Array;
  /** The bucket's stream sequence of the write (the KV revision). */
  readonly revision: number;
  /** Raft log index of the write (cluster-wide order; a txn's writes share one). */
  readonly index: number;
  /** Proposer-supplied time, ms since the epoch. */
  readonly ts: number;
  /** Length of the header block the client published with (0: none); counts in the stored size. */
  readonly hdrBytes: number;
}

export interface BucketConfig {
  readonly history: number;
  readonly valueBytesMax: number;
  readonly bytesMax: number;
  readonly keyBytesMax: number;
  /** Bucket TTL in ms (0: entries never expire). */
  readonly maxAgeMs: number;
  /** Nats-Msg-Id duplicate window in ms. */
  readonly duplicateWindowMs: number;
}

export interface BucketInfo {
  readonly name: string;
  readonly config: BucketConfig;
  /** The client's stream config as sent at creation (opaque; empty for buckets created without one). */
  readonly stream: Uint8Array;
  readonly created: number;
  /** Last stream sequence used (0: no write yet). */
  readonly seq: number;
  /** Lowest retained revision; seq + 1 when nothing is retained after a write (JetStream's first_seq). */
  readonly firstSeq: number;
  /** Retained entries (markers included). */
  readonly values: number;
  /** Stored bytes, as nats-server's file store counts them (see storedBytes). */
  readonly bytes: number;
}

export type KvResult =
  | { readonly ok: true; readonly kind: 'entry'; readonly entry: KvEntry }
  /** A Nats-Msg-Id seen within the duplicate window: nothing stored; `revision` is the first write's. */
  | { readonly ok: true; readonly kind: 'duplicate'; readonly bucket: string; readonly revision: number }
  /** A bucket purge or TTL expiry: `purged` entries dropped. */
  | { readonly ok: true; readonly kind: 'purge'; readonly bucket: string; readonly purged: number }
  | { readonly ok: true; readonly kind: 'bucket.create'; readonly bucket: string; readonly created: boolean; readonly config: BucketConfig }
  | { readonly ok: true; readonly kind: 'bucket.delete'; readonly bucket: string }
  | { readonly ok: true; readonly kind: 'noop' }
  | { readonly ok: true; readonly kind: 'txn'; readonly entries: readonly KvEntry[] }
  /** `revision`: the key's latest revision where that explains the refusal; `key`: the key concerned. */
  | { readonly ok: false; readonly code: KvErrorCode; readonly message: string; readonly revision?: number; readonly key?: string };

export interface KvLimits {
  readonly bucketsMax: number;
  readonly bucketNameBytesMax: number;
  readonly historyMax: number;
  /** Ceiling of a bucket's keyBytesMax. */
  readonly keyBytesMax: number;
  /** Ceiling of a bucket's valueBytesMax. */
  readonly valueBytesMax: number;
  /** Nats-Msg-Ids remembered per bucket; the oldest is forgotten beyond it (nats-server keeps them all). */
  readonly msgIdsMax: number;
}

export const defaultKvLimits: KvLimits = { bucketsMax: 1024, bucketNameBytesMax: 64, historyMax: 64, keyBytesMax: 1024, valueBytesMax: 1024 * 1024, msgIdsMax: 100_000 };

export const defaultBucketConfig: BucketConfig = {
  history: 1, valueBytesMax: 1024 * 1024, bytesMax: 256 * 1024 * 1024, keyBytesMax: 1024, maxAgeMs: 0, duplicateWindowMs: 120_000,
};

// NATS KV naming rules (nats.go kv.go: validBucketRe, validKeyRe): a key may not start or end with
// '.' nor hold an empty token.
const BUCKET_RE = /^[a-zA-Z0-9_-]+$/;
const KEY_RE = /^[-/_=.a-zA-Z0-9]+$/;

export function isValidKey(key: string): boolean {
  return KEY_RE.test(key) && !key.startsWith('.') && !key.endsWith('.') && !key.includes('..');
}

interface Bucket {
  readonly name: string;
  readonly config: BucketConfig;
  readonly stream: Uint8Array;
  readonly created: number;
  seq: number;
  bytes: number;
  values: number;
  /** Per key, retained entries (packed: see entry_table.ts). */
  readonly keys: EntryTable;
  /** Nats-Msg-Id → the revision and time of its write, oldest first (Map keeps insertion order). */
  readonly msgIds: Map<string, { readonly revision: number; readonly ts: number }>;
}

/**
 * Bytes of one stored message as nats-server's file store counts them (server/filestore.go fileStoreMsgSize):
 * a record of length (4) + seq (8) + ts (8) + subject length (2) + subject + payload + hash (8), and with a header
 * block 4 more for its length plus the block itself. The subject is `$KV.<bucket>.<key>`.
 */
export function storedBytes(bucket: string, key: string, hdrBytes: number, valueBytes: number): number {
  const subject = 4 + Buffer.byteLength(bucket) + 1 + Buffer.byteLength(key);
  return 22 + subject + valueBytes + 8 + (hdrBytes > 0 ? 4 + hdrBytes : 0);
}

/** A retained entry's place: its key and its row in the bucket's table. */
interface Row {
  readonly key: string;
  readonly row: number;
}

const opPut: EntryOp = 0;

/** Stored bytes of a row (storedBytes of its bucket, key, header and value). */
function rowBytes(b: Bucket, key: string, row: number): number {
  return storedBytes(b.name, key, b.keys.hdrBytes(row), b.keys.valueBytes(row));
}

/** A row as the KvEntry readers see; its value views the table's slab (never rewritten). */
function entryAt(b: Bucket, key: string, row: number): KvEntry {
  const t = b.keys;
  return { bucket: b.name, key, op: OPS[t.op(row)]!, value: t.value(row), revision: t.rev(row), index: t.index(row), ts: t.ts(row), hdrBytes: t.hdrBytes(row) };
}

const refuse = (code: KvErrorCode, message: string, revision?: number, key?: string): KvResult & { ok: false } => ({
  ok: false, code, message, ...(revision === undefined ? {} : { revision }), ...(key === undefined ? {} : { key }),
});

/** A write that passed every check, applied by commitWrite() (so a txn applies all of its writes or none). */
interface PlannedWrite {
  readonly b: Bucket;
  readonly key: string;
  readonly op: KvOperation;
  readonly value: Uint8Array;
  readonly ts: number;
  readonly hdrBytes: number;
  readonly msgId: string | undefined;
  readonly dropCount: number;
  readonly dropped: number;
}

/** The string at map[field] of a msgpack-map value, or undefined (the field index of txn guards). */
function fieldOf(value: Uint8Array, field: string): string | undefined {
  if (value.length === 0 || (value[0]! & 0xf0) !== 0x80 && value[0] !== 0xde && value[0] !== 0xdf) return undefined;
  try {
    const v: unknown = unpack(value);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
    const f = (v as Record<string, unknown>)[field];
    return typeof f === 'string' ? f : undefined;
  } catch {
    return undefined;
  }
}

export type KvListener = (entry: KvEntry) => void;

/**
 * 2: revisions are per-bucket sequences (1 numbered them by the Raft index). A version 1 image is refused, not
 * converted: the log entries after it carry CAS revisions in the old numbering (deploy/cluster/RUNBOOK.md).
 * 3: version 2 plus the record of claimed admin-request nonces; a state without claims keeps writing 2.
 */
const SNAPSHOT_VERSION = 2;
const SNAPSHOT_VERSION_NONCES = 3;
const OPS: readonly KvOperation[] = ['PUT', 'DEL', 'PURGE'];

export class KvStateMachine {
  private readonly limits: KvLimits;
  private readonly buckets = new Map<string, Bucket>();
  private applied = 0;
  private readonly listeners = new Set<KvListener>();
  /** Claimed request nonces: id → the request's timestamp. Replicated state (snapshotted). */
  private readonly nonces = new Map<string, number>();
  /** Highest `ts` of any claim-bearing command applied: the nonce record's clock (never a local clock). */
  private nonceClock = 0;
  /** The smallest timestamp in `nonces` (derived; +Infinity when empty). */
  private oldestClaim = Number.POSITIVE_INFINITY;
  /** bucket → field → value → keys: derived state for txn field guards (rebuilt on demand, never snapshotted). */
  private readonly fieldIndex = new Map<string, Map<string, Map<string, Set<string>>>>();

  constructor(limits: Partial<KvLimits> = {}) {
    this.limits = { ...defaultKvLimits, ...limits };
  }

  /** Index of the last applied entry. */
  get appliedIndex(): number {
    return this.applied;
  }

  /** Applies the committed entry at `index`; empty data (a leader's no-op, a conf change) only advances. */
  apply(index: number, data: Uint8Array): KvResult {
    assert(Number.isSafeInteger(index) && index > this.applied, `apply(${index}) after ${this.applied}: entries must be applied once, in order`);
    this.applied = index;
    if (data.length === 0) return { ok: true, kind: 'noop' };
    const cmd = decodeKvCommand(data);
    if (typeof cmd === 'string') return refuse(KvErrorCode.badCommand, `entry ${index}: ${cmd}`);
    return this.run(index, cmd);
  }

  private run(index: number, cmd: KvCommand): KvResult {
    if (cmd.op === 'bucket.create') return this.createBucket(cmd.bucket, cmd.config, cmd.ts);
    if (cmd.op === 'txn') return this.txn(index, cmd.guards, cmd.ops, cmd.claim === undefined ? undefined : { claim: cmd.claim, ts: cmd.ts });
    if (cmd.op === 'nonce') {
      const failed = this.checkClaim(cmd.claim, cmd.ts);
      if (failed) return failed;
      this.recordClaim(cmd.claim);
      return { ok: true, kind: 'noop' };
    }
    if (cmd.op === 'bucket.delete') {
      if (!this.buckets.delete(cmd.bucket)) return refuse(KvErrorCode.bucketNotFound, `bucket ${JSON.stringify(cmd.bucket)} does not exist`);
      this.fieldIndex.delete(cmd.bucket);
      return { ok: true, kind: 'bucket.delete', bucket: cmd.bucket };
    }
    if (cmd.op === 'bucket.purge') return this.purgeBucket(cmd.bucket, cmd.subject, cmd.keep, cmd.seq);
    if (cmd.op === 'expire') return this.expire(cmd.bucket, cmd.before);
    if (cmd.msgId !== undefined) {
      const b = this.buckets.get(cmd.bucket);
      const seen = b === undefined ? undefined : this.seenMsgId(b, cmd.msgId, cmd.ts);
      if (seen !== undefined) return { ok: true, kind: 'duplicate', bucket: cmd.bucket, revision: seen };
    }
    const w = this.plan(cmd);
    return 'ok' in w ? w : { ok: true, kind: 'entry', entry: this.commitWrite(index, w) };
  }

  /**
   * The revision of an earlier write with `msgId` inside the bucket's duplicate window at time `now` (the
   * proposer's ts), after forgetting the ids that fell out of it. Pruning walks from the oldest id and stops at
   * the first one still inside: ids are remembered in apply order, which is time order up to leader clock skew.
   */
  private seenMsgId(b: Bucket, msgId: string, now: number): number | undefined {
    const window = b.config.duplicateWindowMs;
    for (const [id, v] of b.msgIds) {
      if (v.ts + window >= now) break;
      b.msgIds.delete(id);
    }
    const hit = b.msgIds.get(msgId);
    return hit !== undefined && hit.ts + window >= now ? hit.revision : undefined;
  }

  private txn(index: number, guards: readonly KvGuard[], ops: readonly KvWriteCommand[], claimed?: { claim: NonceClaim; ts: number }): KvResult {
    if (claimed !== undefined) {
      const failed = this.checkClaim(claimed.claim, claimed.ts);
      if (failed) return failed;
    }
    for (const g of guards) {
      const failed = this.checkGuard(g);
      if (failed) return failed;
    }
    const planned: PlannedWrite[] = [];
    for (const op of ops) {
      const w = this.plan(op);
      if ('ok' in w) return w;
      planned.push(w);
    }
    // Recorded only when the txn applies: a txn refused by a guard (a wrong revision) is retried with the same
    // request's nonce.
    if (claimed !== undefined) this.recordClaim(claimed.claim);
    return { ok: true, kind: 'txn', entries: planned.map((w) => this.commitWrite(index, w)) };
  }

  /**
   * May this request's nonce be claimed now? Advances the nonce clock to `ts` (the proposer's time in the
   * command) and forgets claims that fell out of the retention window first; the answer depends only on the
   * replicated state and the command, so every node gives the same one.
   */
  private checkClaim(claim: NonceClaim, ts: number): (KvResult & { ok: false }) | undefined {
    if (ts > this.nonceClock) this.nonceClock = ts;
    this.pruneClaims();
    if (claim.at + nonceRetentionMs < this.nonceClock) {
      return refuse(KvErrorCode.nonceExpired, `request ${claim.id} of ${claim.at} is older than the replay record (${nonceRetentionMs} ms before ${this.nonceClock})`);
    }
    if (this.nonces.has(claim.id)) return refuse(KvErrorCode.nonceSeen, `request ${claim.id} was already applied (replay)`);
    if (this.nonces.size >= nonceLimits.claimsMax) return refuse(KvErrorCode.noncesFull, `${nonceLimits.claimsMax} signed requests within ${nonceRetentionMs} ms: retry later`);
    return undefined;
  }

  private recordClaim(claim: NonceClaim): void {
    this.nonces.set(claim.id, claim.at);
    if (claim.at < this.oldestClaim) this.oldestClaim = claim.at;
  }

  /**
   * Drops every claim whose request is older than the window (they would be refused as expired anyway). Exact, so
   * the record is the same set on every node however it was built (applied live or restored from a snapshot);
   * a sweep runs only when the oldest claim has expired.
   */
  private pruneClaims(): void {
    const horizon = this.nonceClock - nonceRetentionMs;
    if (this.nonces.size === 0 || this.oldestClaim >= horizon) return;
    let oldest = Number.POSITIVE_INFINITY;
    for (const [id, at] of this.nonces) {
      if (at < horizon) this.nonces.delete(id);
      else if (at < oldest) oldest = at;
    }
    this.oldestClaim = oldest;
  }

  private checkGuard(g: KvGuard): (KvResult & { ok: false }) | undefined {
    if (!this.buckets.has(g.bucket)) return refuse(KvErrorCode.bucketNotFound, `bucket ${JSON.stringify(g.bucket)} does not exist`);
    if ('field' in g) {
      const holders = this.indexFor(g.bucket, g.field).get(g.equals);
      if (holders) for (const k of holders) if (k !== g.except) return refuse(KvErrorCode.valueTaken, `${g.field} ${g.equals} already belongs to ${k}`, this.get(g.bucket, k)?.revision, k);
      return undefined;
    }
    const latest = this.get(g.bucket, g.key);
    if ('present' in g) {
      const present = latest !== undefined && latest.op === 'PUT';
      if (present === g.present) return undefined;
      return g.present
        ? refuse(KvErrorCode.keyNotFound, `key ${g.key} has no value`, latest?.revision ?? 0, g.key)
        : refuse(KvErrorCode.keyExists, `key ${g.key} exists at revision ${latest!.revision}`, latest!.revision, g.key);
    }
    if ((latest?.revision ?? 0) === g.revision) return undefined;
    return refuse(KvErrorCode.wrongRevision, `key ${g.key} is at revision ${latest?.revision ?? 0}, not ${g.revision}`, latest?.revision ?? 0, g.key);
  }

  /** Checks a write against the bucket's rules and the key's state; nothing changes yet. */
  private plan(cmd: KvWriteCommand): PlannedWrite | (KvResult & { ok: false }) {
    const b = this.buckets.get(cmd.bucket);
    if (!b) return refuse(KvErrorCode.bucketNotFound, `bucket ${JSON.stringify(cmd.bucket)} does not exist`);
    if (!isValidKey(cmd.key)) return refuse(KvErrorCode.badKey, `key ${JSON.stringify(cmd.key.slice(0, 100))} is not a valid KV key`);
    if (Buffer.byteLength(cmd.key) > b.config.keyBytesMax) {
      return refuse(KvErrorCode.keyTooLong, `key of ${Buffer.byteLength(cmd.key)} bytes exceeds the bucket's ${b.config.keyBytesMax}`);
    }
    // nats-server checks the stream's last sequence before the subject's (stream.go processJetStreamMsg).
    if (cmd.expectLastSeq !== undefined && cmd.expectLastSeq !== b.seq) {
      return refuse(KvErrorCode.wrongLastSequence, `bucket ${b.name} is at revision ${b.seq}, not ${cmd.expectLastSeq}`, b.seq);
    }
    const hist = b.keys.chain(cmd.key);
    const latest = hist.length === 0 ? undefined : entryAt(b, cmd.key, hist[hist.length - 1]!);
    if (cmd.op === 'create' && latest && latest.op === 'PUT') return refuse(KvErrorCode.keyExists, `key ${cmd.key} exists at revision ${latest.revision}`, latest.revision, cmd.key);
    if ((cmd.op === 'update' || cmd.op === 'delete' || cmd.op === 'purge') && cmd.revision !== undefined && (latest?.revision ?? 0) !== cmd.revision) {
      return refuse(KvErrorCode.wrongRevision, `key ${cmd.key} is at revision ${latest?.revision ?? 0}, not ${cmd.revision}`, latest?.revision ?? 0, cmd.key);
    }
    const put = cmd.op === 'put' || cmd.op === 'create' || cmd.op === 'update';
    const op: KvOperation = put ? 'PUT' : cmd.op === 'delete' ? 'DEL' : 'PURGE';
    const value = put ? cmd.value : new Uint8Array(0);
    if (value.length > b.config.valueBytesMax) {
      return refuse(KvErrorCode.valueTooLarge, `value of ${value.length} bytes exceeds the bucket's ${b.config.valueBytesMax}`);
    }
    const len = hist.length;
    // What stays after this write: a purge drops the whole history; otherwise the oldest beyond depth.
    const dropCount = op === 'PURGE' ? len : Math.max(0, len + 1 - b.config.history);
    let dropped = 0;
    for (let k = 0; k < dropCount; k++) dropped += rowBytes(b, cmd.key, hist[k]!);
    const hdrBytes = cmd.hdrBytes ?? 0;
    const size = storedBytes(b.name, cmd.key, hdrBytes, value.length);
    if (b.bytes - dropped + size > b.config.bytesMax) {
      return refuse(KvErrorCode.bucketFull, `bucket ${b.name} would hold ${b.bytes - dropped + size} bytes, more than its ${b.config.bytesMax}`);
    }
    return { b, key: cmd.key, op, value, ts: cmd.ts, hdrBytes, msgId: cmd.msgId, dropCount, dropped };
  }

  /** The value → keys index of `field` in `bucket`, built on first use and kept current by commitWrite(). */
  private indexFor(bucket: string, field: string): Map<string, Set<string>> {
    let perBucket = this.fieldIndex.get(bucket);
    if (!perBucket) this.fieldIndex.set(bucket, (perBucket = new Map()));
    let idx = perBucket.get(field);
    if (!idx) {
      idx = new Map();
      const t = this.buckets.get(bucket)?.keys;
      for (const [k, row] of t?.heads() ?? []) {
        const f = t!.op(row) === opPut ? fieldOf(t!.value(row), field) : undefined;
        if (f !== undefined) addTo(idx, f, k);
      }
      perBucket.set(field, idx);
    }
    return idx;
  }

  private createBucket(name: string, input: BucketConfigInput, ts: number): KvResult {
    if (!BUCKET_RE.test(name) || Buffer.byteLength(name) > this.limits.bucketNameBytesMax) {
      return refuse(KvErrorCode.badBucketName, `bucket name ${JSON.stringify(name.slice(0, 100))} must be 1..${this.limits.bucketNameBytesMax} of [a-zA-Z0-9_-]`);
    }
    const maxAgeMs = input.maxAgeMs ?? 0;
    const config: BucketConfig = {
      history: input.history ?? defaultBucketConfig.history,
      valueBytesMax: input.valueBytesMax ?? Math.min(defaultBucketConfig.valueBytesMax, this.limits.valueBytesMax),
      bytesMax: input.bytesMax ?? defaultBucketConfig.bytesMax,
      keyBytesMax: input.keyBytesMax ?? Math.min(defaultBucketConfig.keyBytesMax, this.limits.keyBytesMax),
      maxAgeMs,
      // nats-server: the duplicate window defaults to 2 min, or to max_age when that is shorter.
      duplicateWindowMs: input.duplicateWindowMs ?? (maxAgeMs > 0 ? Math.min(maxAgeMs, defaultBucketConfig.duplicateWindowMs) : defaultBucketConfig.duplicateWindowMs),
    };
    if (config.history < 1 || config.history > this.limits.historyMax) return refuse(KvErrorCode.badConfig, `history must be 1..${this.limits.historyMax}`);
    if (config.valueBytesMax > this.limits.valueBytesMax) return refuse(KvErrorCode.badConfig, `valueBytesMax may be at most ${this.limits.valueBytesMax}`);
    if (config.keyBytesMax < 1 || config.keyBytesMax > this.limits.keyBytesMax) return refuse(KvErrorCode.badConfig, `keyBytesMax must be 1..${this.limits.keyBytesMax}`);
    if (maxAgeMs > 0 && config.duplicateWindowMs > maxAgeMs) return refuse(KvErrorCode.badConfig, 'the duplicate window may not exceed the bucket TTL (max_age)');
    const stream = input.stream ?? new Uint8Array(0);
    const existing = this.buckets.get(name);
    if (existing) {
      const same = (Object.keys(config) as (keyof BucketConfig)[]).every((k) => existing.config[k] === config[k]) && Buffer.from(existing.stream).equals(stream);
      if (!same) return refuse(KvErrorCode.bucketExists, `bucket ${name} exists with a different configuration`);
      return { ok: true, kind: 'bucket.create', bucket: name, created: false, config };
    }
    if (this.buckets.size >= this.limits.bucketsMax) return refuse(KvErrorCode.tooManyBuckets, `at most ${this.limits.bucketsMax} buckets`);
    this.buckets.set(name, { name, config, stream: copyBytes(stream), created: ts, seq: 0, bytes: 0, values: 0, keys: new EntryTable(), msgIds: new Map() });
    return { ok: true, kind: 'bucket.create', bucket: name, created: true, config };
  }

  private commitWrite(index: number, w: PlannedWrite): KvEntry {
    const { b, key } = w;
    const head = b.keys.latest(key);
    const indexes = this.fieldIndex.get(b.name);
    const before = head < 0 || indexes === undefined ? undefined : entryAt(b, key, head);
    const row = b.keys.append(key, { op: OPS.indexOf(w.op) as EntryOp, value: w.value, revision: b.seq + 1, index, ts: w.ts, hdrBytes: w.hdrBytes }, w.dropCount);
    // The entry handed to listeners and the caller views the stored value (slab bytes are never rewritten).
    const entry = entryAt(b, key, row);
    b.seq++;
    b.bytes += storedBytes(b.name, key, w.hdrBytes, w.value.length) - w.dropped;
    b.values += 1 - w.dropCount;
    if (w.msgId !== undefined) {
      b.msgIds.delete(w.msgId);
      b.msgIds.set(w.msgId, { revision: entry.revision, ts: w.ts });
      if (b.msgIds.size > this.limits.msgIdsMax) b.msgIds.delete(b.msgIds.keys().next().value!);
    }
    if (indexes) {
      for (const [field, idx] of indexes) {
        const old = before?.op === 'PUT' ? fieldOf(before.value, field) : undefined;
        if (old !== undefined) removeFrom(idx, old, key);
        const now = w.op === 'PUT' ? fieldOf(w.value, field) : undefined;
        if (now !== undefined) addTo(idx, now, key);
      }
    }
    for (const l of this.listeners) {
      // A listener's bug must not make apply() throw half-way through the listeners; surface it as
      // an uncaught error instead (it is a programming error, not an operating condition).
      try {
        l(entry);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
    return entry;
  }

  /**
   * JetStream's STREAM.PURGE (nats-server 2.9 PurgeEx): drops the retained entries whose subject matches
   * `subject` (a key pattern; absent: all), those below revision `seq` when given, and with `keep` all but the
   * newest `keep` of the matching ones (counted together, not per subject). The bucket's sequence goes on.
   */
  private purgeBucket(bucket: string, subject: string | undefined, keep: number | undefined, seq: number | undefined): KvResult {
    const b = this.buckets.get(bucket);
    if (!b) return refuse(KvErrorCode.bucketNotFound, `bucket ${JSON.stringify(bucket)} does not exist`);
    if ((keep ?? 0) > 0 && (seq ?? 0) > 0) return refuse(KvErrorCode.badPurge, 'a purge takes seq or keep, not both');
    const pattern = subject === undefined || subject === '' || subject === '>' ? undefined : subject.split('.');
    const t = b.keys;
    const matching: Row[] = [];
    for (const k of t.keys()) if (pattern === undefined || keyMatches(pattern, k)) for (const row of t.chain(k)) matching.push({ key: k, row });
    matching.sort((x, y) => t.rev(x.row) - t.rev(y.row));
    let drop = matching;
    if ((seq ?? 0) > 0) drop = matching.filter((e) => t.rev(e.row) < seq!);
    else if ((keep ?? 0) > 0) drop = matching.slice(0, Math.max(0, matching.length - keep!));
    return { ok: true, kind: 'purge', bucket, purged: this.drop(b, drop) };
  }

  /** Bucket TTL: drops every entry written at or before `before` (the leader proposed now - max_age). */
  private expire(bucket: string, before: number): KvResult {
    const b = this.buckets.get(bucket);
    if (!b) return refuse(KvErrorCode.bucketNotFound, `bucket ${JSON.stringify(bucket)} does not exist`);
    const t = b.keys;
    const old: Row[] = [];
    if (b.config.maxAgeMs > 0) for (const k of t.keys()) for (const row of t.chain(k)) if (t.ts(row) <= before) old.push({ key: k, row });
    return { ok: true, kind: 'purge', bucket, purged: this.drop(b, old) };
  }

  private drop(b: Bucket, entries: readonly Row[]): number {
    if (entries.length === 0) return 0;
    const gone = new Set<number>();
    const keys = new Set<string>();
    for (const e of entries) {
      b.bytes -= rowBytes(b, e.key, e.row);
      b.values--;
      gone.add(e.row);
      keys.add(e.key);
    }
    for (const k of keys) b.keys.removeWhere(k, (row) => gone.has(row));
    // The field index is derived: rebuilt on its next use rather than patched key by key.
    this.fieldIndex.delete(b.name);
    return entries.length;
  }

  // ---- reads -------------------------------------------------------------------------------

  /** Stored bytes of every bucket (BucketInfo.bytes summed): what --max-kv-bytes counts. */
  totalBytes(): number {
    let n = 0;
    for (const b of this.buckets.values()) n += b.bytes;
    return n;
  }

  bucketNames(): string[] {
    return [...this.buckets.keys()].sort();
  }

  /**
   * Whether the bucket exists: O(1), for the per-message checks of the KV API (every put and direct get asks);
   * bucketInfo computes the first sequence over every key.
   */
  hasBucket(name: string): boolean {
    return this.buckets.has(name);
  }

  bucketInfo(name: string): BucketInfo | undefined {
    const b = this.buckets.get(name);
    if (!b) return undefined;
    const first = b.keys.lowestRevision();
    const firstSeq = Number.isFinite(first) ? first : b.seq === 0 ? 0 : b.seq + 1;
    return { name, config: b.config, stream: b.stream, created: b.created, seq: b.seq, firstSeq, values: b.values, bytes: b.bytes };
  }

  /** The earliest `ts` among a bucket's retained entries (undefined: none), for the leader's TTL timer. */
  oldestTs(bucket: string): number | undefined {
    let oldest: number | undefined;
    const t = this.buckets.get(bucket)?.keys;
    for (const k of t?.keys() ?? []) for (const row of t!.chain(k)) if (oldest === undefined || t!.ts(row) < oldest) oldest = t!.ts(row);
    return oldest;
  }

  /** The key's latest entry, markers included (undefined when it has none). */
  get(bucket: string, key: string): KvEntry | undefined {
    const b = this.buckets.get(bucket);
    const row = b?.keys.latest(key) ?? -1;
    return row < 0 ? undefined : entryAt(b!, key, row);
  }

  /** Retained entries of a key, oldest first. */
  history(bucket: string, key: string): KvEntry[] {
    const b = this.buckets.get(bucket);
    return b === undefined ? [] : b.keys.chain(key).map((row) => entryAt(b, key, row));
  }

  /** Keys whose latest entry is a PUT, sorted. */
  keys(bucket: string): string[] {
    const b = this.buckets.get(bucket);
    if (!b) return [];
    const out: string[] = [];
    for (const [k, row] of b.keys.heads()) if (b.keys.op(row) === opPut) out.push(k);
    return out.sort();
  }

  /**
   * The change feed, at most `limit` entries. With a `bucket`: its retained entries with revision > `after` (a
   * bucket revision), in revision order; a watcher reads this, then subscribe()s for later ones. Without: every
   * bucket's retained entries with Raft index > `after`, in index order (ties, a txn's writes, by bucket name).
   */
  changesSince(after: number, bucket?: string, limit = Number.POSITIVE_INFINITY): KvEntry[] {
    const out: KvEntry[] = [];
    if (bucket !== undefined) {
      const b = this.buckets.get(bucket);
      if (b !== undefined) for (const k of b.keys.keys()) for (const row of b.keys.chain(k)) if (b.keys.rev(row) > after) out.push(entryAt(b, k, row));
      out.sort((a, z) => a.revision - z.revision);
    } else {
      for (const b of this.buckets.values()) for (const k of b.keys.keys()) for (const row of b.keys.chain(k)) if (b.keys.index(row) > after) out.push(entryAt(b, k, row));
      out.sort((a, z) => a.index - z.index || (a.bucket < z.bucket ? -1 : a.bucket > z.bucket ? 1 : 0));
    }
    return out.length > limit ? out.slice(0, limit) : out;
  }

  /** Called synchronously for every entry written, after the state changed. Returns the unsubscribe. */
  subscribe(listener: KvListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---- snapshot ----------------------------------------------------------------------------

  /**
   * The whole state as deterministic bytes (sorted buckets and keys, fixed field order): msgpack
   * `[version, applied, buckets, nonces?]`, written straight from the entry tables (msgpack_writer.ts).
   */
  snapshot(): Uint8Array {
    const w = new MsgpackWriter(this.snapshotBytesEstimate());
    this.snapshotInto(w);
    return w.finish();
  }

  /** About the size of snapshot(), from the stored-bytes accounting (a writer's first buffer). */
  snapshotBytesEstimate(): number {
    let estimate = 1024;
    for (const b of this.buckets.values()) estimate += b.bytes + 16 * b.values;
    return estimate;
  }

  /** snapshot(), written into `w` (a caller that wraps the image writes around it without copying it). */
  snapshotInto(w: MsgpackWriter): void {
    const steps = this.beginSnapshot().write(w);
    while (!steps.next().done);
  }

  /**
   * The state as it is now, to be written as a snapshot image over several turns of the event loop while entries
   * are applied (KvImageBuild.write pauses every few hundred keys). Takes a sort of each bucket's keys and a copy of
   * its row columns (EntryTable.freeze), never of the values.
   */
  beginSnapshot(): KvImageBuild {
    const withNonces = this.nonces.size > 0 || this.nonceClock > 0;
    const buckets = this.bucketNames().map((name) => {
      const b = this.buckets.get(name)!;
      return {
        name, config: b.config, created: b.created, seq: b.seq, stream: b.stream, entries: b.keys.freeze(), bytes: b.bytes, values: b.values,
        msgIds: [...b.msgIds].map(([id, v]) => [id, v.revision, v.ts] as const),
      };
    });
    const claims = withNonces ? [...this.nonces.entries()].sort((a, z) => (a[0] < z[0] ? -1 : a[0] > z[0] ? 1 : 0)) : undefined;
    return new KvImageBuild(this.applied, buckets, claims === undefined ? undefined : { clock: this.nonceClock, claims });
  }

  /** Replaces the whole state with a snapshot image; throws ESTORE_CORRUPT when it is not one. */
  restore(image: Uint8Array): void {
    const parse = parseImage(image, new MsgpackReader(image));
    let step = parse.next();
    while (!step.done) step = parse.next();
    this.adopt(step.value);
  }

  /**
   * restore(), giving the event loop a turn every `sliceMs` of work (a follower installing a large snapshot keeps
   * answering its routes and health checks). The state is replaced in one step at the end; until then readers
   * see the old one, and a bad image leaves it untouched.
   */
  async restoreYielding(image: Uint8Array, sliceMs = 10): Promise<void> {
    const parse = parseImage(image, new MsgpackReader(image));
    let sliceEnd = performance.now() + sliceMs;
    let step = parse.next();
    while (!step.done) {
      if (performance.now() >= sliceEnd) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        sliceEnd = performance.now() + sliceMs;
      }
      step = parse.next();
    }
    this.adopt(step.value);
  }

  /**
   * A restore from an image that is still arriving (issue 20 item 3: a rejoining follower parses the leader's
   * snapshot while it is received instead of after): `image` is the buffer the bytes land in, whole-sized from the
   * start; advance(available) reads what its first `available` bytes hold, and install() replaces the state once
   * all of it was read. Until install() this state machine is untouched, and a bad image throws ESTORE_CORRUPT
   * from advance() as restore() would.
   */
  stagedRestore(image: Uint8Array): StagedKvRestore {
    const r = new MsgpackReader(image);
    r.setLimit(0);
    const parse = parseImage(image, r);
    let result: ParsedImage | undefined;
    return {
      advance: (available: number): boolean => {
        if (result !== undefined) return true;
        r.setLimit(available);
        // Bounded: every step reads bytes or yields 'more', and the bytes are bounded by `available`.
        for (;;) {
          const step = parse.next();
          if (step.done) {
            result = step.value;
            return true;
          }
          if (step.value === 'more') return false;
        }
      },
      install: (): void => {
        if (result === undefined) throw new StoreError(StoreErrorCode.badRequest, 'a staged snapshot restore was installed before its image was read whole');
        this.adopt(result);
      },
    };
  }

  /** The parsed image becomes the state (the last step of every restore). */
  private adopt(p: ParsedImage): void {
    this.buckets.clear();
    this.fieldIndex.clear();
    for (const [k, b] of p.buckets) this.buckets.set(k, b);
    this.nonces.clear();
    this.oldestClaim = Number.POSITIVE_INFINITY;
    for (const [id, at] of p.nonces) this.recordClaim({ id, at });
    this.nonceClock = p.nonceClock;
    this.applied = p.applied;
  }
}

/** A restore fed by an arriving image (KvStateMachine.stagedRestore). */
export interface StagedKvRestore {
  /** Reads what the first `available` bytes of the image hold; true once the whole image was read. */
  advance(available: number): boolean;
  /** Replaces the state machine's state with the image read (after advance returned true). */
  install(): void;
}

/** A snapshot image read into new tables, not yet the state. */
interface ParsedImage {
  readonly buckets: Map<string, Bucket>;
  readonly nonces: Map<string, number>;
  readonly nonceClock: number;
  readonly applied: number;
}

/**
 * What a restore's parse yields: undefined, a pause between keys (a yielding restore lets the event loop run);
 * 'more', the bytes available so far are read (a staged restore waits for the next piece, at the start of the unit
 * it could not finish: MsgpackReader.seek).
 */
type RestoreStep = undefined | 'more';

/** `read()` from the reader's offset, read again from there after each MoreBytesNeeded until the bytes are in. */
function* whole<T>(r: MsgpackReader, read: () => T): Generator<RestoreStep, T, void> {
  const start = r.offset;
  for (;;) {
    try {
      return read();
    } catch (err) {
      if (!(err instanceof MoreBytesNeeded)) throw err;
      r.seek(start);
      yield 'more';
    }
  }
}

/** Reads the image straight into new entry tables (msgpack_reader.ts), pausing (yield) every few hundred keys. */
function* parseImage(image: Uint8Array, r: MsgpackReader): Generator<RestoreStep, ParsedImage, void> {
  const bad = (why: string): never => {
    throw new StoreError(StoreErrorCode.corrupt, `KV snapshot image is invalid: ${why}; the node cannot start from it`);
  };
  const buckets = new Map<string, Bucket>();
  const nonces = new Map<string, number>();
  let nonceClock = 0;
  try {
    const head = yield* whole(r, () => ({ fields: r.array(), version: r.uint(), applied: r.uint(), buckets: r.array() }));
    if (head.version === 1) {
      throw new StoreError(StoreErrorCode.formatVersion, 'KV snapshot image has format 1 (KV revisions numbered by the Raft index); this membershipd numbers them per bucket and cannot convert it: see "Upgrading to per-bucket KV revisions" in deploy/cluster/RUNBOOK.md');
    }
    const plain = head.fields === 3 && head.version === SNAPSHOT_VERSION;
    const withNonces = head.fields === 4 && head.version === SNAPSHOT_VERSION_NONCES;
    if (!plain && !withNonces) return bad('header');
    for (let n = head.buckets; n > 0; n--) {
      const b = yield* readBucket(r);
      if (typeof b === 'string') return bad(b);
      if (buckets.has(b.name)) return bad('bucket listed twice');
      buckets.set(b.name, b);
    }
    if (withNonces) {
      const record = yield* whole(r, () => {
        if (r.array() !== 2) return 'nonce record';
        const clock = r.uint();
        const claims: [string, number][] = [];
        for (let n = r.array(); n > 0; n--) {
          if (r.array() !== 2) return 'nonce claim';
          const id = r.str();
          claims.push([id, r.uint()]);
        }
        return { clock, claims };
      });
      if (typeof record === 'string') return bad(record);
      nonceClock = record.clock;
      for (const [id, at] of record.claims) nonces.set(id, at);
    }
    if (!r.done) return bad(`${image.length - r.offset} bytes after the image`);
    return { buckets, nonces, nonceClock, applied: head.applied };
  } catch (err) {
    if (err instanceof ImageFormatError) return bad(err.message);
    throw err;
  } finally {
    // The last key's rows are views of the image: a module-level array must not keep hundreds of MB alive.
    keyRows.length = 0;
  }
}

interface FrozenBucket {
  readonly name: string;
  readonly config: BucketConfig;
  readonly created: number;
  readonly seq: number;
  readonly stream: Uint8Array;
  readonly entries: FrozenEntries;
  /** Stored bytes and entries at the freeze (the size estimate). */
  readonly bytes: number;
  readonly values: number;
  readonly msgIds: readonly (readonly [string, number, number])[];
}

/** Keys written between two pauses of a snapshot write. */
const writeKeysPerStep = 256;

/**
 * KvStateMachine.beginSnapshot(): the image `[version, applied, buckets, nonces?]`, each bucket
 * `[name, config, created, seq, keys, stream, msgIds]` with keys sorted, each `[key, [[op, value, rev, index, ts, hdr] …]]`.
 */
export class KvImageBuild {
  constructor(
    readonly applied: number,
    private readonly buckets: readonly FrozenBucket[],
    private readonly nonces: { readonly clock: number; readonly claims: readonly (readonly [string, number])[] } | undefined,
  ) {}

  /** About the size of the image, from the values' bytes (a writer's first buffer). */
  get bytesEstimate(): number {
    let n = 1024;
    for (const b of this.buckets) n += b.bytes + 16 * b.values;
    return n;
  }

  /** Writes the image into `w`, pausing (yield) every `keysPerStep` keys. */
  *write(w: MsgpackWriter, keysPerStep = writeKeysPerStep): Generator<void, void, void> {
    // Version 3 adds the nonce record; a state without one keeps writing version 2.
    w.array(this.nonces === undefined ? 3 : 4);
    w.uint(this.nonces === undefined ? SNAPSHOT_VERSION : SNAPSHOT_VERSION_NONCES);
    w.uint(this.applied);
    w.array(this.buckets.length);
    for (const b of this.buckets) yield* writeBucket(w, b, keysPerStep);
    if (this.nonces !== undefined) {
      w.array(2);
      w.uint(this.nonces.clock);
      w.array(this.nonces.claims.length);
      for (const [id, at] of this.nonces.claims) {
        w.array(2);
        w.str(id);
        w.uint(at);
      }
    }
  }
}

function* writeBucket(w: MsgpackWriter, b: FrozenBucket, keysPerStep: number): Generator<void, void, void> {
  const c = b.config;
  const t = b.entries;
  w.array(7);
  w.str(b.name);
  w.array(6);
  for (const n of [c.history, c.valueBytesMax, c.bytesMax, c.keyBytesMax, c.maxAgeMs, c.duplicateWindowMs]) w.uint(n);
  w.uint(b.created);
  w.uint(b.seq);
  const writeRow = (row: number): void => {
    w.array(6);
    w.uint(t.op(row));
    t.writeValue(row, w);
    w.uint(t.rev(row));
    w.uint(t.index(row));
    w.uint(t.ts(row));
    w.uint(t.hdrBytes(row));
  };
  w.array(t.keys.length);
  for (let i = 0; i < t.keys.length; i++) {
    if (i % keysPerStep === keysPerStep - 1) yield;
    w.array(2);
    w.str(t.keys[i]!);
    const head = t.heads[i]!;
    // Most keys hold one entry (history 1): no array of rows for them.
    if (t.older(head) < 0) {
      w.array(1);
      writeRow(head);
      continue;
    }
    const rows = t.chain(i);
    w.array(rows.length);
    for (const row of rows) writeRow(row);
  }
  w.bin(b.stream);
  w.array(b.msgIds.length);
  for (const [id, revision, ts] of b.msgIds) {
    w.array(3);
    w.str(id);
    w.uint(revision);
    w.uint(ts);
  }
}

/** Keys read between two pauses of a yielding restore. */
const restoreKeysPerStep = 256;

/** One key's entries as read (oldest first), before any is put in a table: a key cut by MoreBytesNeeded is read again. */
const keyRows: EntryRow[] = [];

/** One key of a bucket image: its name (its entries in keyRows), or what is wrong with it as `[why]`. */
function readKey(r: MsgpackReader): string | [string] {
  keyRows.length = 0;
  if (r.array() !== 2) return ['key'];
  const key = r.str();
  const depth = r.array();
  if (depth === 0) return ['key without entries'];
  for (let e = 0; e < depth; e++) {
    if (r.array() !== 6) return ['entry'];
    const op = r.uint();
    if (op > 2) return ['entry op'];
    const value = r.bin();
    const revision = r.uint();
    const index = r.uint();
    const ts = r.uint();
    const hdrBytes = r.uint();
    keyRows.push({ op: op as EntryOp, value, revision, index, ts, hdrBytes });
  }
  return key;
}

/** One bucket of a snapshot image (see writeBucket), or what is wrong with it; pauses every few hundred keys. */
function* readBucket(r: MsgpackReader): Generator<RestoreStep, Bucket | string, void> {
  const head = yield* whole(r, () => {
    if (r.array() !== 7) return 'bucket';
    const name = r.str();
    if (r.array() !== 6) return 'bucket config';
    const [history, valueBytesMax, bytesMax, keyBytesMax, maxAgeMs, duplicateWindowMs] = [r.uint(), r.uint(), r.uint(), r.uint(), r.uint(), r.uint()];
    const config: BucketConfig = { history, valueBytesMax, bytesMax, keyBytesMax, maxAgeMs, duplicateWindowMs };
    return { name, config, created: r.uint(), seq: r.uint(), keys: r.array() };
  });
  if (typeof head === 'string') return head;
  const name = head.name;
  const keys = new EntryTable();
  let bytes = 0;
  let values = 0;
  for (let k = 0; k < head.keys; k++) {
    if (k % restoreKeysPerStep === restoreKeysPerStep - 1) yield;
    const start = r.offset;
    let key: string | [string];
    // Inline rather than whole(): a closure per key cost a few % of a million-key restore.
    for (;;) {
      try {
        key = readKey(r);
        break;
      } catch (err) {
        if (!(err instanceof MoreBytesNeeded)) throw err;
        r.seek(start);
        yield 'more';
      }
    }
    if (typeof key !== 'string') return key[0];
    // Oldest first, as written: each is appended as the key's newest (the table copies the value into a slab).
    for (let e = 0; e < keyRows.length; e++) {
      const row = keyRows[e]!;
      if (e === 0) {
        if (keys.appendNewKey(key, row) < 0) return 'key listed twice';
      } else {
        keys.append(key, row, 0);
      }
      bytes += storedBytes(name, key, row.hdrBytes, row.value.length);
      values++;
    }
  }
  const tail = yield* whole(r, () => {
    const stream = r.bin();
    const msgIds = new Map<string, { readonly revision: number; readonly ts: number }>();
    for (let n = r.array(); n > 0; n--) {
      if (r.array() !== 3) return 'msg id';
      const id = r.str();
      msgIds.set(id, { revision: r.uint(), ts: r.uint() });
    }
    return { stream, msgIds };
  });
  if (typeof tail === 'string') return tail;
  keyRows.length = 0;
  return { name, config: head.config, stream: copyBytes(tail.stream), created: head.created, seq: head.seq, bytes, values, keys, msgIds: tail.msgIds };
}

/** A KV key against a key pattern split on '.', with NATS wildcards ('*' one token, '>' the rest). */
function keyMatches(pattern: readonly string[], key: string): boolean {
  const t = key.split('.');
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]!;
    if (p === '>') return t.length > i;
    if (i >= t.length || (p !== '*' && p !== t[i])) return false;
  }
  return t.length === pattern.length;
}

function addTo(idx: Map<string, Set<string>>, value: string, key: string): void {
  const keys = idx.get(value);
  if (keys) keys.add(key);
  else idx.set(value, new Set([key]));
}

function removeFrom(idx: Map<string, Set<string>>, value: string, key: string): void {
  const keys = idx.get(value);
  if (keys?.delete(key) && keys.size === 0) idx.delete(value);
}
