// KV buckets seen as JetStream streams: the `KV_<bucket>` stream config a client sends is mapped onto the state
// machine's bucket config, and the stream config / state a client reads is rendered from the bucket. Only what
// the state machine really does is accepted: a field that would promise behaviour we do not have (TTL, mirrors,
// stream-wide message limits, memory-only storage semantics aside) is refused with a reason rather than ignored.
import type { BucketConfig, BucketConfigInput, BucketInfo, KvEntry } from '../../store/index.js';
import type { KvReader } from './backend.js';
import { jsErrors, type JsApiError } from './errors.js';
import { bucketOfStream, kvPrefix, rfc3339 } from './wire.js';

/** Nanoseconds, as JetStream JSON carries durations. */
const duplicateWindowNs = 120_000_000_000;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const int = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);

/** -1 / 0 / absent mean "server default" for JetStream limits. */
function limit(v: unknown, field: string): number | undefined | JsApiError {
  if (v === undefined || v === null) return undefined;
  if (!int(v)) return jsErrors.streamInvalidConfig(`${field} must be an integer`);
  return v <= 0 ? undefined : v;
}

export interface KvStreamRequest {
  readonly bucket: string;
  readonly config: BucketConfigInput;
}

/** Refusals for config fields whose behaviour membershipd does not implement. */
function unsupported(c: Record<string, unknown>): JsApiError | undefined {
  const why = (s: string) => jsErrors.streamInvalidConfig(`${s} is not supported by membershipd KV buckets`);
  if (c.retention !== undefined && c.retention !== 'limits') return why(`retention ${JSON.stringify(c.retention)}`);
  if (int(c.max_age) && c.max_age > 0) return why('max_age (bucket TTL)');
  if (int(c.max_msgs) && c.max_msgs > 0) return why('max_msgs (a stream-wide message limit)');
  if (c.mirror !== undefined && c.mirror !== null) return why('mirror');
  if (Array.isArray(c.sources) && c.sources.length > 0) return why('sources');
  if (isObject(c.republish)) return why('republish');
  if (c.sealed === true) return why('sealed');
  if (c.discard_new_per_subject === true) return why('discard_new_per_subject');
  if (c.allow_msg_ttl === true) return why('allow_msg_ttl (per-key TTL)');
  if (isObject(c.subject_transform)) return why('subject_transform');
  return undefined;
}

/** Validates a STREAM.CREATE body for stream `name` (from the subject). */
export function parseStreamCreate(name: string, body: unknown): KvStreamRequest | JsApiError {
  if (!isObject(body)) return jsErrors.invalidJson();
  if (body.name !== undefined && body.name !== name) return jsErrors.streamNameMismatch();
  const bucket = bucketOfStream(name);
  const want = `${kvPrefix}${bucket}.>`;
  const subjects = body.subjects;
  if (bucket === undefined || !Array.isArray(subjects) || subjects.length !== 1 || subjects[0] !== want) {
    return jsErrors.streamInvalidConfig(`membershipd serves only KV streams: name KV_<bucket> with subjects ["$KV.<bucket>.>"]`);
  }
  const bad = unsupported(body);
  if (bad !== undefined) return bad;
  const history = limit(body.max_msgs_per_subject, 'max_msgs_per_subject');
  const valueBytesMax = limit(body.max_msg_size, 'max_msg_size');
  const bytesMax = limit(body.max_bytes, 'max_bytes');
  for (const v of [history, valueBytesMax, bytesMax]) if (typeof v === 'object') return v;
  const config: { -readonly [K in keyof BucketConfigInput]: BucketConfigInput[K] } = {};
  if (typeof history === 'number') config.history = history;
  if (typeof valueBytesMax === 'number') config.valueBytesMax = valueBytesMax;
  if (typeof bytesMax === 'number') config.bytesMax = bytesMax;
  return { bucket, config };
}

export interface StreamView {
  readonly replicas: number;
  readonly readOnly: (bucket: string) => boolean;
}

/** The stream config a client reads back: the bucket's effective limits and the fixed KV settings. */
export function streamConfig(bucket: string, c: BucketConfig, view: StreamView): Record<string, unknown> {
  return {
    name: `KV_${bucket}`,
    subjects: [`${kvPrefix}${bucket}.>`],
    retention: 'limits',
    max_consumers: -1,
    max_msgs: -1,
    max_bytes: c.bytesMax,
    max_age: 0,
    max_msgs_per_subject: c.history,
    max_msg_size: c.valueBytesMax,
    discard: 'new',
    storage: 'file',
    num_replicas: view.replicas,
    duplicate_window: duplicateWindowNs,
    allow_direct: true,
    mirror_direct: false,
    // Control-plane buckets are read-only here: sealed is how JetStream says so.
    sealed: view.readOnly(bucket),
    // STREAM.MSG.DELETE and STREAM.PURGE are not implemented (the state machine has no such commands).
    deny_delete: true,
    deny_purge: true,
    allow_rollup_hdrs: true,
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
