// The KV state machine, applied from committed Raft entries. Deterministic: the result and the state
// after apply(index, data) depend only on the prior state and the entry, so every node holds the same
// bytes (snapshot() of two replicas at the same index is byte-identical). A bad command never throws:
// a committed entry is applied on every node alike, so refusals are results carrying a stable code.
//
// Mapping to the NATS JetStream KV API: a bucket is a stream; `seq` is the bucket's stream sequence
// (1, 2, 3 ... per bucket), `revision` is the Raft log index of the write (unique and increasing
// cluster-wide; update-if-revision compares it), `op` is the KV-Operation header (PUT/DEL/PURGE).
import { assert } from '../assert.js';
import { copyBytes, isUint, pack, unpack } from '../codec.js';
import { StoreError, StoreErrorCode } from '../errors.js';
import {
  type BucketConfigInput, decodeKvCommand, type KvCommand, type KvGuard, type KvWriteCommand, type NonceClaim, nonceLimits, nonceRetentionMs,
} from './command.js';

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
  /** The request nonce was claimed before (a replayed signed request). */
  nonceSeen: 'EKV_NONCE_SEEN',
  /** The claim's request is older than the nonce record reaches back (nonceRetentionMs). */
  nonceExpired: 'EKV_NONCE_EXPIRED',
  /** nonceLimits.claimsMax live claims: no room for another until older ones expire. */
  noncesFull: 'EKV_NONCES_FULL',
} as const;
export type KvErrorCode = (typeof KvErrorCode)[keyof typeof KvErrorCode];

export type KvOperation = 'PUT' | 'DEL' | 'PURGE';

export interface KvEntry {
  readonly bucket: string;
  readonly key: string;
  readonly op: KvOperation;
  readonly value: Uint8Array;
  /** Raft log index of the write. */
  readonly revision: number;
  /** The bucket's stream sequence. */
  readonly seq: number;
  /** Proposer-supplied time, ms since the epoch. */
  readonly ts: number;
}

export interface BucketConfig {
  readonly history: number;
  readonly valueBytesMax: number;
  readonly bytesMax: number;
  readonly keyBytesMax: number;
}

export interface BucketInfo {
  readonly name: string;
  readonly config: BucketConfig;
  readonly created: number;
  /** Last stream sequence used (0: no write yet). */
  readonly seq: number;
  /** Retained entries (markers included). */
  readonly values: number;
  readonly bytes: number;
}

export type KvResult =
  | { readonly ok: true; readonly kind: 'entry'; readonly entry: KvEntry }
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
}

export const defaultKvLimits: KvLimits = { bucketsMax: 1024, bucketNameBytesMax: 64, historyMax: 64, keyBytesMax: 1024, valueBytesMax: 1024 * 1024 };

export const defaultBucketConfig: BucketConfig = { history: 1, valueBytesMax: 1024 * 1024, bytesMax: 256 * 1024 * 1024, keyBytesMax: 1024 };

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
  readonly created: number;
  seq: number;
  bytes: number;
  values: number;
  /** Per key, retained entries oldest first. */
  readonly keys: Map<string, KvEntry[]>;
}

const entryBytes = (key: string, value: Uint8Array): number => Buffer.byteLength(key) + value.length;

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

const SNAPSHOT_VERSION = 1;
const SNAPSHOT_VERSION_NONCES = 2;
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
    const w = this.plan(cmd);
    return 'ok' in w ? w : { ok: true, kind: 'entry', entry: this.commitWrite(index, w) };
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
    const hist = b.keys.get(cmd.key);
    const latest = hist?.[hist.length - 1];
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
    const len = hist?.length ?? 0;
    // What stays after this write: a purge drops the whole history; otherwise the oldest beyond depth.
    const dropCount = op === 'PURGE' ? len : Math.max(0, len + 1 - b.config.history);
    let dropped = 0;
    for (let k = 0; k < dropCount; k++) dropped += entryBytes(cmd.key, hist![k]!.value);
    const size = entryBytes(cmd.key, value);
    if (b.bytes - dropped + size > b.config.bytesMax) {
      return refuse(KvErrorCode.bucketFull, `bucket ${b.name} would hold ${b.bytes - dropped + size} bytes, more than its ${b.config.bytesMax}`);
    }
    return { b, key: cmd.key, op, value, ts: cmd.ts, dropCount, dropped };
  }

  /** The value → keys index of `field` in `bucket`, built on first use and kept current by commitWrite(). */
  private indexFor(bucket: string, field: string): Map<string, Set<string>> {
    let perBucket = this.fieldIndex.get(bucket);
    if (!perBucket) this.fieldIndex.set(bucket, (perBucket = new Map()));
    let idx = perBucket.get(field);
    if (!idx) {
      idx = new Map();
      for (const [k, h] of this.buckets.get(bucket)?.keys ?? []) {
        const e = h[h.length - 1]!;
        const f = e.op === 'PUT' ? fieldOf(e.value, field) : undefined;
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
    const config: BucketConfig = {
      history: input.history ?? defaultBucketConfig.history,
      valueBytesMax: input.valueBytesMax ?? Math.min(defaultBucketConfig.valueBytesMax, this.limits.valueBytesMax),
      bytesMax: input.bytesMax ?? defaultBucketConfig.bytesMax,
      keyBytesMax: input.keyBytesMax ?? Math.min(defaultBucketConfig.keyBytesMax, this.limits.keyBytesMax),
    };
    if (config.history < 1 || config.history > this.limits.historyMax) return refuse(KvErrorCode.badConfig, `history must be 1..${this.limits.historyMax}`);
    if (config.valueBytesMax > this.limits.valueBytesMax) return refuse(KvErrorCode.badConfig, `valueBytesMax may be at most ${this.limits.valueBytesMax}`);
    if (config.keyBytesMax < 1 || config.keyBytesMax > this.limits.keyBytesMax) return refuse(KvErrorCode.badConfig, `keyBytesMax must be 1..${this.limits.keyBytesMax}`);
    const existing = this.buckets.get(name);
    if (existing) {
      const same = (Object.keys(config) as (keyof BucketConfig)[]).every((k) => existing.config[k] === config[k]);
      if (!same) return refuse(KvErrorCode.bucketExists, `bucket ${name} exists with a different configuration`);
      return { ok: true, kind: 'bucket.create', bucket: name, created: false, config };
    }
    if (this.buckets.size >= this.limits.bucketsMax) return refuse(KvErrorCode.tooManyBuckets, `at most ${this.limits.bucketsMax} buckets`);
    this.buckets.set(name, { name, config, created: ts, seq: 0, bytes: 0, values: 0, keys: new Map() });
    return { ok: true, kind: 'bucket.create', bucket: name, created: true, config };
  }

  private commitWrite(index: number, w: PlannedWrite): KvEntry {
    const { b, key } = w;
    const hist = b.keys.get(key) ?? [];
    const before = hist[hist.length - 1];
    const entry: KvEntry = { bucket: b.name, key, op: w.op, value: w.value, revision: index, seq: b.seq + 1, ts: w.ts };
    hist.splice(0, w.dropCount);
    hist.push(entry);
    b.keys.set(key, hist);
    b.seq++;
    b.bytes += entryBytes(key, w.value) - w.dropped;
    b.values += 1 - w.dropCount;
    const indexes = this.fieldIndex.get(b.name);
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

  // ---- reads -------------------------------------------------------------------------------

  bucketNames(): string[] {
    return [...this.buckets.keys()].sort();
  }

  bucketInfo(name: string): BucketInfo | undefined {
    const b = this.buckets.get(name);
    return b && { name, config: b.config, created: b.created, seq: b.seq, values: b.values, bytes: b.bytes };
  }

  /** The key's latest entry, markers included (undefined when it has none). */
  get(bucket: string, key: string): KvEntry | undefined {
    const h = this.buckets.get(bucket)?.keys.get(key);
    return h?.[h.length - 1];
  }

  /** Retained entries of a key, oldest first. */
  history(bucket: string, key: string): KvEntry[] {
    return [...(this.buckets.get(bucket)?.keys.get(key) ?? [])];
  }

  /** Keys whose latest entry is a PUT, sorted. */
  keys(bucket: string): string[] {
    const b = this.buckets.get(bucket);
    if (!b) return [];
    const out: string[] = [];
    for (const [k, h] of b.keys) if (h[h.length - 1]!.op === 'PUT') out.push(k);
    return out.sort();
  }

  /**
   * The change feed: retained entries with revision > `afterRevision` in revision order (all
   * buckets, or one), at most `limit`. A watcher reads this, then subscribe()s for later ones.
   */
  changesSince(afterRevision: number, bucket?: string, limit = Number.POSITIVE_INFINITY): KvEntry[] {
    const out: KvEntry[] = [];
    const scan = bucket === undefined ? [...this.buckets.values()] : [this.buckets.get(bucket)].filter((b): b is Bucket => !!b);
    for (const b of scan) for (const h of b.keys.values()) for (const e of h) if (e.revision > afterRevision) out.push(e);
    // A txn's writes share a revision (one per bucket): ties go by bucket name, the same on every node.
    out.sort((a, z) => a.revision - z.revision || (a.bucket < z.bucket ? -1 : a.bucket > z.bucket ? 1 : 0));
    return out.length > limit ? out.slice(0, limit) : out;
  }

  /** Called synchronously for every entry written, after the state changed. Returns the unsubscribe. */
  subscribe(listener: KvListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---- snapshot ----------------------------------------------------------------------------

  /** The whole state as deterministic bytes (sorted buckets and keys, fixed field order). */
  snapshot(): Uint8Array {
    const buckets = this.bucketNames().map((name) => {
      const b = this.buckets.get(name)!;
      const keys = [...b.keys.keys()].sort().map((k) => [k, b.keys.get(k)!.map((e) => [OPS.indexOf(e.op), e.value, e.revision, e.seq, e.ts])]);
      const c = b.config;
      return [name, [c.history, c.valueBytesMax, c.bytesMax, c.keyBytesMax], b.created, b.seq, keys];
    });
    if (this.nonces.size === 0 && this.nonceClock === 0) return pack([SNAPSHOT_VERSION, this.applied, buckets]);
    // Version 2 adds the nonce record; a state without one keeps writing version 1, byte for byte as before.
    const claims = [...this.nonces.entries()].sort((a, z) => (a[0] < z[0] ? -1 : a[0] > z[0] ? 1 : 0));
    return pack([SNAPSHOT_VERSION_NONCES, this.applied, buckets, [this.nonceClock, claims]]);
  }

  /** Replaces the whole state with a snapshot image; throws ESTORE_CORRUPT when it is not one. */
  restore(image: Uint8Array): void {
    const bad = (why: string): never => {
      throw new StoreError(StoreErrorCode.corrupt, `KV snapshot image is invalid: ${why}; the node cannot start from it`);
    };
    let v: unknown;
    try {
      v = unpack(image);
    } catch (err) {
      return bad(String(err));
    }
    const v1 = Array.isArray(v) && v.length === 3 && v[0] === SNAPSHOT_VERSION;
    const v2 = Array.isArray(v) && v.length === 4 && v[0] === SNAPSHOT_VERSION_NONCES;
    if (!Array.isArray(v) || (!v1 && !v2) || !isUint(v[1]) || !Array.isArray(v[2])) return bad('header');
    const nonces = new Map<string, number>();
    let nonceClock = 0;
    if (v2) {
      const rec = v[3] as unknown;
      if (!Array.isArray(rec) || rec.length !== 2 || !isUint(rec[0]) || !Array.isArray(rec[1])) return bad('nonce record');
      nonceClock = rec[0];
      for (const c of rec[1] as unknown[]) {
        if (!Array.isArray(c) || c.length !== 2 || typeof c[0] !== 'string' || !isUint(c[1])) return bad('nonce claim');
        nonces.set(c[0], c[1]);
      }
    }
    const buckets = new Map<string, Bucket>();
    for (const raw of v[2] as unknown[]) {
      if (!Array.isArray(raw) || raw.length !== 5) return bad('bucket');
      const [name, cfg, created, seq, keys] = raw as unknown[];
      if (typeof name !== 'string' || !Array.isArray(cfg) || cfg.length !== 4 || !cfg.every(isUint) || !isUint(created) || !isUint(seq) || !Array.isArray(keys)) return bad('bucket');
      const [history, valueBytesMax, bytesMax, keyBytesMax] = cfg as number[];
      const b: Bucket = { name, config: { history: history!, valueBytesMax: valueBytesMax!, bytesMax: bytesMax!, keyBytesMax: keyBytesMax! }, created, seq, bytes: 0, values: 0, keys: new Map() };
      for (const kr of keys as unknown[]) {
        if (!Array.isArray(kr) || kr.length !== 2 || typeof kr[0] !== 'string' || !Array.isArray(kr[1]) || kr[1].length === 0) return bad('key');
        const key = kr[0];
        const hist: KvEntry[] = [];
        for (const er of kr[1] as unknown[]) {
          if (!Array.isArray(er) || er.length !== 5 || !isUint(er[0]) || er[0] > 2 || !(er[1] instanceof Uint8Array) || !isUint(er[2]) || !isUint(er[3]) || !isUint(er[4])) return bad('entry');
          const value = copyBytes(er[1]);
          hist.push({ bucket: name, key, op: OPS[er[0]]!, value, revision: er[2], seq: er[3], ts: er[4] });
          b.bytes += entryBytes(key, value);
          b.values++;
        }
        b.keys.set(key, hist);
      }
      buckets.set(name, b);
    }
    this.buckets.clear();
    this.fieldIndex.clear();
    for (const [k, b] of buckets) this.buckets.set(k, b);
    this.nonces.clear();
    this.oldestClaim = Number.POSITIVE_INFINITY;
    for (const [id, at] of nonces) this.recordClaim({ id, at });
    this.nonceClock = nonceClock;
    this.applied = v[1];
  }
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
