// What a KV publish asks the replicated state machine for, and how its refusal reads to a JetStream client: the
// translation between `$KV.<bucket>.<key>` publishes (their headers) and KvCommand / KvResult, with no I/O, so that
// every header rule is testable on its own (test/kv/wire.test.ts).
import type { KvCommand, KvResult } from '../../store/index.js';
import { KvErrorCode, msgIdBytesMax } from '../../store/index.js';
import { jsErrors, type JsApiError } from './errors.js';
import { headerValue, parseHeaders, parseSeq } from './wire.js';

/** Maps a state machine refusal onto the JetStream error a client expects. */
export function resultError(r: Extract<KvResult, { ok: false }>): JsApiError {
  switch (r.code) {
    case KvErrorCode.wrongRevision:
    case KvErrorCode.wrongLastSequence:
    case KvErrorCode.keyExists:
      return jsErrors.wrongLastSequence(r.revision ?? 0);
    case KvErrorCode.valueTooLarge:
      return jsErrors.messageTooLarge();
    case KvErrorCode.bucketFull:
      return jsErrors.storeFailed('maximum bytes exceeded');
    case KvErrorCode.quotaExceeded:
      return jsErrors.storeFailed(r.message);
    case KvErrorCode.bucketNotFound:
      return jsErrors.streamNotFound();
    case KvErrorCode.bucketExists:
      return jsErrors.streamNameExists();
    case KvErrorCode.tooManyBuckets:
      return jsErrors.maxStreams();
    case KvErrorCode.badBucketName:
    case KvErrorCode.badConfig:
      return jsErrors.streamInvalidConfig(r.message);
    default:
      return jsErrors.badRequest(r.message);
  }
}

/**
 * The KV command a publish to `$KV.<bucket>.<key>` asks for, from its headers (reference §4.4): KV-Operation
 * DEL/PURGE markers, Nats-Expected-Last-Subject-Sequence as update-if-revision (0: the key has no entry at all,
 * markers count, as in JetStream), Nats-Expected-Last-Sequence on the bucket's last revision, Nats-Msg-Id with the
 * bucket's duplicate window, Nats-Rollup only as KV's purge. All of them are checked by the state machine at apply
 * time. Headers whose guarantee membershipd cannot give are refused rather than ignored.
 */
export function kvCommandOf(bucket: string, key: string, stream: string, hdr: Uint8Array, payload: Uint8Array, ts: number): KvCommand | JsApiError {
  const h = parseHeaders(hdr);
  if (typeof h === 'string') return jsErrors.badRequest(h);
  const expectedStream = headerValue(h, 'Nats-Expected-Stream');
  if (expectedStream !== undefined && expectedStream !== stream) return jsErrors.streamNotMatch();
  if (headerValue(h, 'Nats-Expected-Last-Msg-Id') !== undefined) {
    return jsErrors.badRequest('header Nats-Expected-Last-Msg-Id is not supported by membershipd KV buckets');
  }
  if (headerValue(h, 'Nats-TTL') !== undefined) return jsErrors.messageTtlDisabled();
  const op = headerValue(h, 'KV-Operation') ?? 'PUT';
  if (op !== 'PUT' && op !== 'DEL' && op !== 'PURGE') return jsErrors.badRequest(`unknown KV-Operation ${JSON.stringify(op.slice(0, 32))}`);
  const rollup = headerValue(h, 'Nats-Rollup');
  if (rollup !== undefined && !(rollup === 'sub' && op === 'PURGE')) {
    return jsErrors.badRequest('Nats-Rollup is supported only as "sub" together with KV-Operation: PURGE');
  }
  const seqHeader = (name: string): number | undefined | JsApiError => {
    const text = headerValue(h, name);
    if (text === undefined) return undefined;
    return parseSeq(text) ?? jsErrors.badRequest(`${name} must be a decimal sequence`);
  };
  const expected = seqHeader('Nats-Expected-Last-Subject-Sequence');
  const expectLastSeq = seqHeader('Nats-Expected-Last-Sequence');
  if (typeof expected === 'object') return expected;
  if (typeof expectLastSeq === 'object') return expectLastSeq;
  const msgId = headerValue(h, 'Nats-Msg-Id');
  if (msgId !== undefined && (msgId === '' || msgId.length > msgIdBytesMax)) return jsErrors.badRequest(`Nats-Msg-Id must be 1..${msgIdBytesMax} characters`);
  // hdrBytes: nats-server stores the header block as published and counts it in the stream's bytes.
  const extras = { hdrBytes: hdr.length, ...(msgId === undefined ? {} : { msgId }), ...(expectLastSeq === undefined ? {} : { expectLastSeq }) };
  if (op === 'PUT') {
    const value = payload;
    return expected === undefined ? { op: 'put', bucket, key, value, ts, ...extras } : { op: 'update', bucket, key, value, revision: expected, ts, ...extras };
  }
  const o = op === 'DEL' ? 'delete' : 'purge';
  return expected === undefined ? { op: o, bucket, key, ts, ...extras } : { op: o, bucket, key, ts, revision: expected, ...extras };
}
