// JetStream API errors exactly as nats-server 2.9 sends them (reference/nats-protocol.md §4.7; nats-server
// server/jetstream_errors_generated.go). Clients branch on `err_code`, and nats.js compares some descriptions
// literally (`Kvm.create` falls back to STREAM.CREATE only on the exact text "stream not found"), so the texts of
// the fixed-text errors are never changed. The `{err}` kinds carry our own text: say what was wrong and what to do.
import { MembershipdError } from '../errors.js';

export interface JsApiError {
  readonly code: number;
  readonly err_code: number;
  readonly description: string;
}

const e = (code: number, err_code: number, description: string): JsApiError => ({ code, err_code, description });

export const jsErrors = {
  badRequest: (why?: string) => e(400, 10003, why === undefined ? 'bad request' : `bad request: ${why}`),
  clusterNotAvailable: () => e(503, 10008, 'JetStream system temporarily unavailable'),
  consumerCreate: (why: string) => e(500, 10012, why),
  consumerNameExists: () => e(400, 10013, 'consumer name already in use'),
  consumerNotFound: () => e(404, 10014, 'consumer not found'),
  insufficientResources: () => e(503, 10023, 'insufficient resources'),
  invalidJson: () => e(400, 10025, 'invalid JSON'),
  maxConsumers: () => e(400, 10026, 'maximum consumers limit reached'),
  maxStreams: () => e(400, 10027, 'maximum number of streams reached'),
  noMessageFound: () => e(404, 10037, 'no message found'),
  streamDelete: (why: string) => e(500, 10050, why),
  streamGeneral: (why: string) => e(500, 10051, why),
  streamInvalidConfig: (why: string) => e(500, 10052, why),
  messageTooLarge: () => e(400, 10054, 'message size exceeds maximum allowed'),
  streamNameMismatch: () => e(400, 10056, 'stream name in subject does not match request'),
  messageDeleteFailed: (why: string) => e(500, 10057, why),
  streamNameExists: () => e(400, 10058, 'stream name already in use with a different configuration'),
  streamNotFound: () => e(404, 10059, 'stream not found'),
  streamNotMatch: () => e(400, 10060, 'expected stream does not match'),
  streamUpdate: (why: string) => e(500, 10069, why),
  wrongLastSequence: (actual: number) => e(400, 10071, `wrong last sequence: ${actual}`),
  replicasNotSupported: () => e(500, 10074, 'replicas > 1 not supported in non-clustered mode'),
  storeFailed: (why: string) => e(503, 10077, why),
  consumerDeliverToWildcards: () => e(400, 10079, 'consumer deliver subject has wildcards'),
  consumerSmallHeartbeat: () => e(400, 10083, 'consumer idle heartbeat needs to be >= 100ms'),
  consumerFilterNotSubset: () => e(400, 10093, 'consumer filter subject is not a valid subset of the interest subjects'),
  consumerFlowControlNeedsHeartbeats: () => e(400, 10108, 'consumer with flow control also needs heartbeats'),
  /** A control-plane bucket (`ub_*`) is exposed as a sealed stream: read-only through this API. */
  streamSealed: (bucket: string) =>
    e(400, 10109, `invalid operation on sealed stream: ${bucket} is a control-plane bucket, change it through the admin API`),
  streamPurge: (why: string) => e(500, 10110, why),
  consumerFilterMismatch: () => e(400, 10131, 'Consumer create request did not match filtered subject from create subject'),
  messageTtlDisabled: () => e(400, 10166, 'per-message TTL is disabled'),
} as const;

/** A JetStream refusal as a typed error (stable code `EKV_API`), for callers that want to throw it. */
export class KvApiError extends MembershipdError {
  readonly api: JsApiError;
  constructor(api: JsApiError) {
    super('EKV_API', `${api.description} (err_code ${api.err_code})`);
    this.api = api;
  }
}
