// The CONSUMER.CREATE request of a push consumer, validated into a ConsumerSpec, and the limits a node sets on its
// consumers: what a client may ask for, kept apart from how a consumer delivers (consumers.ts), so that the refusals
// (durable, pull, ack policies, filters outside the bucket) read as one list against nats-server's.
import { isValidPublishSubject, isValidSubject } from '../nats/index.js';
import { jsErrors, type JsApiError } from './errors.js';
import { bucketOverlaps } from './streams.js';
import { isValidName } from './wire.js';

export type DeliverPolicy = 'all' | 'last' | 'last_per_subject' | 'new' | 'by_start_sequence' | 'by_start_time';
const policies: readonly string[] = ['all', 'last', 'last_per_subject', 'new', 'by_start_sequence', 'by_start_time'];

export interface ConsumerLimits {
  /** Consumers on this node, all buckets. */
  consumersMax: number;
  /** Entries a consumer may hold queued; beyond it the queue is dropped and refilled from the cursor. */
  queueEntriesMax: number;
  /** Flow-control window: a request goes out at half of it, delivery pauses at all of it (nats-server: 2 MiB start). */
  flowWindowBytes: number;
  /** Messages and bytes one consumer delivers per event-loop turn before yielding. */
  turnMessagesMax: number;
  turnBytesMax: number;
  /** Ephemeral default when the client sets none (nats-server: 5 s). */
  inactiveThresholdMs: number;
  /** Period of the heartbeat / reaping check. */
  tickMs: number;
}

export const defaultConsumerLimits: ConsumerLimits = {
  consumersMax: 10_000,
  queueEntriesMax: 100_000,
  flowWindowBytes: 2 * 1024 * 1024,
  turnMessagesMax: 512,
  turnBytesMax: 1024 * 1024,
  inactiveThresholdMs: 5000,
  tickMs: 250,
};

export interface ConsumerSpec {
  readonly stream: string;
  readonly bucket: string;
  readonly name: string;
  readonly deliverSubject: string;
  readonly filter: string;
  readonly policy: DeliverPolicy;
  readonly optStartSeq: number;
  readonly optStartTimeMs: number;
  readonly headersOnly: boolean;
  readonly flowControl: boolean;
  readonly heartbeatMs: number;
  readonly inactiveMs: number;
  /** The config as reported back (client fields normalised). */
  readonly config: Record<string, unknown>;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const nsToMs = (ns: number): number => Math.floor(ns / 1e6);
const nonNegInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/**
 * Validates CONSUMER.CREATE for `stream`/`bucket`. `nameInSubject` / `filterInSubject` come from the subject
 * forms `CONSUMER.CREATE.<stream>.<name>[.<filter>]` (undefined for the legacy `CONSUMER.CREATE.<stream>`).
 */
export function parseConsumerCreate(
  stream: string, bucket: string, body: unknown, nameInSubject: string | undefined, filterInSubject: string | undefined,
  newName: () => string, defaults: Pick<ConsumerLimits, 'inactiveThresholdMs'>,
): ConsumerSpec | JsApiError {
  if (!isObject(body)) return jsErrors.invalidJson();
  if (body.stream_name !== undefined && body.stream_name !== stream) return jsErrors.streamNameMismatch();
  const c = body.config;
  if (!isObject(c)) return jsErrors.consumerCreate('consumer config required');
  const refuse = (why: string) => jsErrors.consumerCreate(`${why} is not supported by membershipd (KV uses ephemeral ordered push consumers)`);
  if (typeof c.durable_name === 'string' && c.durable_name !== '') return refuse('a durable consumer');
  if (typeof c.deliver_subject !== 'string' || c.deliver_subject === '') return refuse('a pull consumer (no deliver_subject)');
  if (c.ack_policy !== undefined && c.ack_policy !== 'none') return refuse(`ack_policy ${JSON.stringify(c.ack_policy)}`);
  if (typeof c.deliver_group === 'string' && c.deliver_group !== '') return refuse('deliver_group');
  if (c.replay_policy !== undefined && c.replay_policy !== 'instant') return refuse(`replay_policy ${JSON.stringify(c.replay_policy)}`);
  if (!isValidSubject(c.deliver_subject)) return jsErrors.consumerCreate('deliver_subject is not a valid subject');
  if (!isValidPublishSubject(c.deliver_subject)) return jsErrors.consumerDeliverToWildcards();
  let filter = typeof c.filter_subject === 'string' && c.filter_subject !== '' ? c.filter_subject : undefined;
  if (Array.isArray(c.filter_subjects) && c.filter_subjects.length > 0) {
    if (filter !== undefined || c.filter_subjects.length > 1 || typeof c.filter_subjects[0] !== 'string') return refuse('multiple filter subjects');
    filter = c.filter_subjects[0];
  }
  filter ??= '>';
  if (filterInSubject !== undefined && filterInSubject !== filter) return jsErrors.consumerFilterMismatch();
  if (!isValidSubject(filter)) return jsErrors.consumerCreate('filter_subject is not a valid subject');
  if (!bucketOverlaps(bucket, filter)) return jsErrors.consumerFilterNotSubset();
  const name = typeof c.name === 'string' && c.name !== '' ? c.name : nameInSubject ?? newName();
  if (nameInSubject !== undefined && name !== nameInSubject) return jsErrors.consumerCreate('consumer name in subject does not match the request');
  if (!isValidName(name)) return jsErrors.consumerCreate('consumer name must not be empty nor hold ".", "*", ">" or whitespace');
  const policy = (c.deliver_policy ?? 'all') as DeliverPolicy;
  if (typeof policy !== 'string' || !policies.includes(policy)) return jsErrors.consumerCreate(`unknown deliver_policy ${JSON.stringify(policy)}`);
  let optStartSeq = 0;
  let optStartTimeMs = 0;
  if (policy === 'by_start_sequence') {
    if (!nonNegInt(c.opt_start_seq) || c.opt_start_seq === 0) return jsErrors.consumerCreate('deliver_policy by_start_sequence needs opt_start_seq >= 1');
    optStartSeq = c.opt_start_seq;
  }
  if (policy === 'by_start_time') {
    const t = typeof c.opt_start_time === 'string' ? Date.parse(c.opt_start_time) : Number.NaN;
    if (Number.isNaN(t)) return jsErrors.consumerCreate('deliver_policy by_start_time needs an RFC 3339 opt_start_time');
    optStartTimeMs = t;
  }
  for (const k of ['idle_heartbeat', 'inactive_threshold'] as const) {
    if (c[k] !== undefined && !nonNegInt(c[k])) return jsErrors.consumerCreate(`${k} must be a non-negative integer of nanoseconds`);
  }
  const heartbeatMs = nsToMs((c.idle_heartbeat as number | undefined) ?? 0);
  if (heartbeatMs > 0 && heartbeatMs < 100) return jsErrors.consumerSmallHeartbeat();
  const flowControl = c.flow_control === true;
  if (flowControl && heartbeatMs === 0) return jsErrors.consumerFlowControlNeedsHeartbeats();
  const inactiveMs = nsToMs((c.inactive_threshold as number | undefined) ?? 0) || defaults.inactiveThresholdMs;
  const config: Record<string, unknown> = {
    ...c, name, deliver_policy: policy, ack_policy: 'none', replay_policy: 'instant', filter_subject: filter,
    deliver_subject: c.deliver_subject, flow_control: flowControl, headers_only: c.headers_only === true,
    idle_heartbeat: heartbeatMs * 1e6, inactive_threshold: inactiveMs * 1e6, max_deliver: c.max_deliver ?? -1,
    num_replicas: c.num_replicas ?? 0,
  };
  delete config.filter_subjects;
  delete config.durable_name;
  return {
    stream, bucket, name, deliverSubject: c.deliver_subject, filter, policy, optStartSeq, optStartTimeMs,
    headersOnly: c.headers_only === true, flowControl, heartbeatMs, inactiveMs, config,
  };
}
