// KV buckets seen as JetStream streams: the `KV_<bucket>` stream config a client sends is mapped onto the state
// machine's bucket config and kept with the bucket as nats-server would store it (the request plus the server's
// defaults), so a client reads back exactly the config it created (nats.go compares them). Only what the state
// machine really does is accepted: a field that would promise behaviour we do not have (mirrors, stream-wide
// message limits, memory-only storage semantics aside) is refused with a reason rather than ignored.
import type { BucketConfig, BucketConfigInput, BucketInfo, KvEntry } from '../../store/index.js';
import type { KvReader } from './backend.js';
import { jsErrors, type JsApiError } from './errors.js';
import { bucketOfStream, kvPrefix, rfc3339 } from './wire.js';

/** Nanoseconds, as JetStream JSON carries durations. */
const nsPerMs = 1_000_000;
/** nats-server's default Nats-Msg-Id window (StreamDefaultDuplicatesWindow), in ns. */
const duplicateWindowNs = 120_000 * nsPerMs;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const int = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const enc = new TextEncoder();
const dec = new TextDecoder();

/** -1 / 0 / absent mean "server default" for JetStream limits. */
function limit(v: unknown, field: string): number | undefined | JsApiError {
  if (v === undefined || v === null) return undefined;
  if (!int(v)) return jsErrors.streamInvalidConfig(`${field} must be an integer`);
  return v <= 0 ? undefined : v;
}

export interface KvStreamRequest {
  readonly bucket: string;
  readonly config: BucketConfigInput;
  /** The stream config as nats-server would store it (the request plus its defaults), echoed on every read. */
  readonly stream: Record<string, unknown>;
}

/** Refusals for config fields whose behaviour membershipd does not implement. */
function unsupported(c: Record<string, unknown>, ttl: boolean): JsApiError | undefined {
  const why = (s: string) => jsErrors.streamInvalidConfig(`${s} is not supported by membershipd KV buckets`);
  if (c.retention !== undefined && c.retention !== 'limits') return why(`retention ${JSON.stringify(c.retention)}`);
  if (!ttl && int(c.max_age) && c.max_age > 0) return why('max_age (bucket TTL)');
  if (int(c.max_msgs) && c.max_msgs > 0) return why('max_msgs (a stream-wide message limit)');
  if (c.mirror !== undefined && c.mirror !== null) return why('mirror');
  if (Array.isArray(c.sources) && c.sources.length > 0) return why('sources');
  if (isObject(c.republish)) return why('republish');
  if (c.sealed === true) return why('sealed');
  if (c.discard_new_per_subject === true) return why('discard_new_per_subject');
  if (c.allow_msg_ttl === true) return why('allow_msg_ttl (per-key TTL)');
  if (isObject(c.subject_transform)) return why('subject_transform');
  if (c.no_ack === true) return why('no_ack');
  return undefined;
}

/** What parseStreamCreate needs to know of the node: how many replicas it can give, whether TTL is wired. */
export interface StreamLimits {
  /** The meta-group's voters: a stream cannot ask for more replicas. */
  readonly replicasMax: number;
  /** Bucket TTL (max_age) needs the leader's expiry timer; without it max_age is refused. */
  readonly ttl: boolean;
}

/** Validates a STREAM.CREATE body for stream `name` (from the subject). */
export function parseStreamCreate(name: string, body: unknown, lim: StreamLimits): KvStreamRequest | JsApiError {
  if (!isObject(body)) return jsErrors.invalidJson();
  if (body.name !== undefined && body.name !== name) return jsErrors.streamNameMismatch();
  const bucket = bucketOfStream(name);
  const want = `${kvPrefix}${bucket}.>`;
  const subjects = body.subjects;
  if (bucket === undefined || !Array.isArray(subjects) || subjects.length !== 1 || subjects[0] !== want) {
    return jsErrors.streamInvalidConfig(`membershipd serves only KV streams: name KV_<bucket> with subjects ["$KV.<bucket>.>"]`);
  }
  const bad = unsupported(body, lim.ttl);
  if (bad !== undefined) return bad;
  const history = limit(body.max_msgs_per_subject, 'max_msgs_per_subject');
  const valueBytesMax = limit(body.max_msg_size, 'max_msg_size');
  const bytesMax = limit(body.max_bytes, 'max_bytes');
  for (const v of [history, valueBytesMax, bytesMax]) if (typeof v === 'object') return v;
  for (const k of ['max_age', 'duplicate_window', 'num_replicas'] as const) {
    if (body[k] !== undefined && (!int(body[k]) || (body[k] as number) < 0)) return jsErrors.streamInvalidConfig(`${k} must be a non-negative integer`);
  }
  const replicas = (body.num_replicas as number | undefined) || 1;
  if (replicas > lim.replicasMax) {
    return lim.replicasMax === 1 ? jsErrors.replicasNotSupported() : jsErrors.insufficientResources();
  }
  const maxAgeNs = (body.max_age as number | undefined) ?? 0;
  // nats-server (checkStreamCfg): no window given → 2 min, or max_age when that is shorter.
  const dupNs = (body.duplicate_window as number | undefined) || (maxAgeNs > 0 && maxAgeNs < duplicateWindowNs ? maxAgeNs : duplicateWindowNs);
  if (maxAgeNs > 0 && dupNs > maxAgeNs) return jsErrors.streamInvalidConfig('duplicates window can not be larger then max age');
  const config: { -readonly [K in keyof BucketConfigInput]: BucketConfigInput[K] } = {};
  if (typeof history === 'number') config.history = history;
  if (typeof valueBytesMax === 'number') config.valueBytesMax = valueBytesMax;
  if (typeof bytesMax === 'number') config.bytesMax = bytesMax;
  config.maxAgeMs = Math.ceil(maxAgeNs / nsPerMs);
  config.duplicateWindowMs = Math.ceil(dupNs / nsPerMs);
  // What nats-server 2.9 stores and echoes: the request with its defaults (-1 for unset limits, 1 replica,
  // discard old, file storage) in its field order; flags only as asked.
  const orDefault = (v: unknown): number => (int(v) && v !== 0 ? v : -1);
  const stream: Record<string, unknown> = {
    name,
    ...(typeof body.description === 'string' && body.description !== '' ? { description: body.description } : {}),
    subjects: [want],
    retention: 'limits',
    max_consumers: orDefault(body.max_consumers),
    max_msgs: orDefault(body.max_msgs),
    max_bytes: orDefault(body.max_bytes),
    max_age: maxAgeNs,
    max_msgs_per_subject: orDefault(body.max_msgs_per_subject),
    max_msg_size: orDefault(body.max_msg_size),
    discard: body.discard === 'new' ? 'new' : 'old',
    storage: body.storage === 'memory' ? 'memory' : 'file',
    num_replicas: replicas,
    duplicate_window: dupNs,
    sealed: false,
    deny_delete: body.deny_delete === true,
    deny_purge: body.deny_purge === true,
    allow_rollup_hdrs: body.allow_rollup_hdrs === true,
    allow_direct: body.allow_direct === true,
    mirror_direct: false,
  };
  config.stream = enc.encode(JSON.stringify(stream));
  return { bucket, config, stream };
}

export interface StreamView {
  readonly replicas: number;
  readonly readOnly: (bucket: string) => boolean;
}

/**
 * The stream config a client reads back: what it created (stored with the bucket), or for a bucket created
 * without one (the control plane's ub_*) the effective limits with the fixed read-only KV settings.
 */
export function streamConfig(bucket: string, info: BucketInfo, view: StreamView): Record<string, unknown> {
  if (info.stream.length > 0) return JSON.parse(dec.decode(info.stream)) as Record<string, unknown>;
  const c: BucketConfig = info.config;
  return {
    name: `KV_${bucket}`,
    subjects: [`${kvPrefix}${bucket}.>`],
    retention: 'limits',
    max_consumers: -1,
    max_msgs: -1,
    max_bytes: c.bytesMax,
    max_age: c.maxAgeMs * nsPerMs,
    max_msgs_per_subject: c.history,
    max_msg_size: c.valueBytesMax,
    discard: 'new',
    storage: 'file',
    num_replicas: view.replicas,
    duplicate_window: c.duplicateWindowMs * nsPerMs,
    // Control-plane buckets are read-only here: sealed is how JetStream says so.
    sealed: view.readOnly(bucket),
    deny_delete: true,
    deny_purge: true,
    allow_rollup_hdrs: true,
    allow_direct: true,
    mirror_direct: false,
  };
}

export interface StreamState {
  readonly messages: number;
  readonly bytes: number;
  readonly first_seq: number;
  readonly first_ts: string;
  readonly last_seq: number;
  readonly last_ts: string;
  /** Omitted when 0, as nats-server's `omitempty` does. */
  readonly num_subjects?: number;
  readonly consumer_count: number;
}

/**
 * Stream state from the retained entries (sequences are the bucket's revisions, see backend.ts). As nats-server:
 * last_seq is the last revision ever used, first_seq the lowest retained one (last_seq + 1 once everything was
 * purged or expired), bytes the stored size of the retained messages.
 */
export function streamState(reader: KvReader, info: BucketInfo, consumers: number): StreamState {
  const entries = reader.changesSince(0, info.name);
  const keys = new Set<string>();
  for (const e of entries) keys.add(e.key);
  const first: KvEntry | undefined = entries[0];
  const last: KvEntry | undefined = entries[entries.length - 1];
  return {
    messages: info.values,
    bytes: info.bytes,
    first_seq: info.firstSeq,
    first_ts: rfc3339(first?.ts ?? 0),
    last_seq: info.seq,
    last_ts: rfc3339(last?.ts ?? 0),
    ...(keys.size > 0 ? { num_subjects: keys.size } : {}),
    consumer_count: consumers,
  };
}

/** Does a stream's subject `$KV.<bucket>.>` overlap a client's filter (STREAM.NAMES `subject`)? */
export function bucketOverlaps(bucket: string, filter: string): boolean {
  const a = [...`${kvPrefix}${bucket}`.split('.'), '>'];
  const b = filter.split('.');
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x === '>' || y === '>') return x !== undefined && y !== undefined;
    if (x === undefined || y === undefined) return false;
    if (x !== '*' && y !== '*' && x !== y) return false;
  }
  return true;
}
