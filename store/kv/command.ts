// KV commands: what a Raft entry's data holds for the KV state machine. Each is a msgpack map with
// an `op` field. `ts` (ms since the epoch) is chosen by the proposer, never read from the clock at
// apply time, so every node applies the same entry to the same bytes.
//
//   { op: 'bucket.create', bucket, config: { history?, valueBytesMax?, bytesMax?, keyBytesMax? }, ts }
//   { op: 'bucket.delete', bucket, ts }
//   { op: 'put',    bucket, key, value, ts }                 always writes
//   { op: 'create', bucket, key, value, ts }                 only if the key is absent, deleted or purged
//   { op: 'update', bucket, key, value, revision, ts }       only if the key's latest revision is `revision`
//                                                            (0: the key has no entry at all)
//   { op: 'delete', bucket, key, ts, revision? }             appends a DEL marker (kept in history)
//   { op: 'purge',  bucket, key, ts, revision? }             drops the key's history, keeps a PURGE marker
import { copyBytes, isUint, pack, unpack } from '../codec.js';

export interface BucketConfigInput {
  /** Entries kept per key, markers included (1..64, default 1). */
  readonly history?: number;
  readonly valueBytesMax?: number;
  /** Bytes of retained keys + values in the bucket. */
  readonly bytesMax?: number;
  readonly keyBytesMax?: number;
}

export type KvCommand =
  | { readonly op: 'bucket.create'; readonly bucket: string; readonly config: BucketConfigInput; readonly ts: number }
  | { readonly op: 'bucket.delete'; readonly bucket: string; readonly ts: number }
  | { readonly op: 'put' | 'create'; readonly bucket: string; readonly key: string; readonly value: Uint8Array; readonly ts: number }
  | { readonly op: 'update'; readonly bucket: string; readonly key: string; readonly value: Uint8Array; readonly revision: number; readonly ts: number }
  | { readonly op: 'delete' | 'purge'; readonly bucket: string; readonly key: string; readonly ts: number; readonly revision?: number };

export function encodeKvCommand(cmd: KvCommand): Uint8Array {
  return pack(cmd);
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
  if (!str(o.bucket)) return 'bucket must be a string';
  if (!isUint(o.ts)) return 'ts must be a non-negative integer';
  const bucket = o.bucket;
  const ts = o.ts;
  switch (o.op) {
    case 'bucket.create': {
      const c = o.config;
      if (typeof c !== 'object' || c === null || Array.isArray(c)) return 'config must be a map';
      const cfg = c as Record<string, unknown>;
      const out: Record<string, number> = {};
      for (const k of ['history', 'valueBytesMax', 'bytesMax', 'keyBytesMax'] as const) {
        if (cfg[k] === undefined) continue;
        if (!isUint(cfg[k])) return `config.${k} must be a non-negative integer`;
        out[k] = cfg[k];
      }
      return { op: 'bucket.create', bucket, config: out, ts };
    }
    case 'bucket.delete':
      return { op: 'bucket.delete', bucket, ts };
    case 'put':
    case 'create':
    case 'update': {
      if (!str(o.key)) return 'key must be a string';
      if (!(o.value instanceof Uint8Array)) return 'value must be bytes';
      const value = copyBytes(o.value);
      if (o.op !== 'update') return { op: o.op, bucket, key: o.key, value, ts };
      if (!isUint(o.revision)) return 'revision must be a non-negative integer';
      return { op: 'update', bucket, key: o.key, value, revision: o.revision, ts };
    }
    case 'delete':
    case 'purge': {
      if (!str(o.key)) return 'key must be a string';
      if (o.revision !== undefined && !isUint(o.revision)) return 'revision must be a non-negative integer';
      return o.revision === undefined ? { op: o.op, bucket, key: o.key, ts } : { op: o.op, bucket, key: o.key, ts, revision: o.revision };
    }
    default:
      return `unknown op ${JSON.stringify(o.op)}`;
  }
}
