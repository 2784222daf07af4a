// The JetStream-compatible KV API of a node: the $JS.API requests, KV publishes answered with PubAcks, direct and
// stream message gets, and push consumers, so that @nats-io/kv (and nats.go / nats.c KV) work unchanged.
//
// How it meets the NATS server: the server has no internal-subscription API, so the API rides on its cluster
// seam (NatsClusterPort): the forwarder sees every message a local client publishes (after permission checks and
// local delivery) and returns true for what this API answers, which also suppresses no_responders;
// deliverFromRoute() delivers replies to local subscribers; interest events wake consumers. Push consumers need
// one more seam, `deliverAs` (route by the deliver subject, write the stream subject on the MSG line, as
// nats-server's push delivery does); without it consumer creation is refused with a JetStream error that says so.
// Only principals whose permissions allow publishing to `$JS.API.>` / `$KV.>` ever reach this code, and the
// control-plane buckets (`ub_*`) exist only for admin principals (LocalPublish.principal).
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Principal } from '../auth/types.js';
import type { KvCommand, KvEntry, KvResult } from '../../store/index.js';
import { KvErrorCode, msgIdBytesMax } from '../../store/index.js';
import type { InterestChange, LocalPublish, NatsClusterPort, RouteMessage } from '../nats/index.js';
import type { Permissions } from '../auth/index.js';
import { subjectMatches } from '../nats/index.js';
import type { KvBackend } from './backend.js';
import { defaultConsumerLimits, parseConsumerCreate, type ConsumerLimits } from './consumer_spec.js';
import { ConsumerRegistry, entryHeaderFields } from './consumers.js';
import { jsErrors, type JsApiError } from './errors.js';
import { bucketOverlaps, parseStreamCreate, streamConfig, streamState, type StreamLimits, type StreamView } from './streams.js';
import {
  apiPrefix, bucketOfStream, encodeHeaders, flowControlPrefix, hasWildcard, headerValue, kvPrefix, parseApiSubject, parseHeaders,
  parseKvSubject, parseSeq, responseType, rfc3339, streamPrefix, type ApiRequest,
} from './wire.js';

export interface KvApiOptions {
  readonly backend: KvBackend;
  readonly logger: Logger;
  /** Reported as the stream / consumer cluster leader. */
  readonly serverName: string;
  /** The meta-group's voters: the most replicas a stream may ask for, and `num_replicas` of the ub_* buckets. Default 1. */
  readonly replicas?: number;
  /**
   * Bucket TTL (max_age): whether this node leads the meta-group now. Only the leader proposes expiries, as log
   * entries, so every replica drops the same entries at the same index; without this option max_age is refused.
   */
  readonly ttl?: { readonly isLeader: () => boolean; readonly periodMs?: number };
  /** STREAM.INFO `cluster` (name, Raft leader, replicas); undefined on a single node, where nats-server omits it. */
  readonly clusterInfo?: () => StreamClusterInfo | undefined;
  /** Buckets that are read-only through this API. Default: names starting with `ub_` (control plane). */
  readonly readOnly?: (bucket: string) => boolean;
  /**
   * Buckets that only admin principals (LocalPublish.principal.admin) may see: to anyone else they do not exist
   * (absent from stream lists, `stream not found`, no responders). Default: names starting with `ub_`, which
   * DESIGN.md makes visible read-only to admin principals. With bus auth off no client is an admin principal, so
   * none sees them (they hold credential hashes; the admin CLI reads them through `$UB.API`).
   */
  readonly adminOnly?: (bucket: string) => boolean;
  /**
   * A bucket `adminOnly` hides that this non-admin principal may still read (read-only), e.g. `ub_services` for a
   * role granted `services_read` (src/services). Default: none.
   */
  readonly visibleTo?: (bucket: string, principal: Principal) => boolean;
  /** `linearizable` (default) runs backend.readBarrier() before every read; `stale` reads the applied state. */
  readonly reads?: 'linearizable' | 'stale';
  readonly limits?: Partial<ConsumerLimits>;
}

/**
 * What the API needs from the NATS server: the cluster seam's local delivery and interest listing, plus the
 * push-delivery seam `deliverAs` (NatsClusterPort.deliverAs): deliver `msg` to the local plain subscribers whose
 * subject matches `routeSubject`, writing `msg.subject` on the MSG/HMSG line; returns the number of deliveries.
 */
export type KvApiPort = Pick<NatsClusterPort, 'deliverFromRoute' | 'interest'> & {
  readonly deliverAs?: (routeSubject: string, msg: RouteMessage) => number;
};

/** The server side attachKvApi() wires into: the cluster seam (+ deliverAs when the server has it). */
export type KvServerPort = KvApiPort & Pick<NatsClusterPort, 'setForwarder' | 'onInterest'>;

export interface KvApiStats {
  readonly requests: number;
  readonly errors: number;
  readonly consumers: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const purgeResponseType = responseType('stream.purge');
const pageStreamNames = 1024;
const pageStreamList = 256;

const notFoundHeaders = encodeHeaders([], { code: 404, description: 'Message Not Found' });
const badRequestHeaders = (d: string) => encodeHeaders([], { code: 408, description: d });
const unavailableHeaders = encodeHeaders([], { code: 503, description: 'JetStream system temporarily unavailable' });

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

type Query = { seq?: number; last_by_subj?: string; next_by_subj?: string };

/** Validates a MSG.GET / DIRECT.GET body. */
export function parseGetQuery(body: unknown): Query | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'Bad Request';
  const o = body as Record<string, unknown>;
  const q: Query = {};
  if (o.seq !== undefined) {
    if (typeof o.seq !== 'number' || !Number.isSafeInteger(o.seq) || o.seq < 0) return 'Bad Request';
    q.seq = o.seq;
  }
  for (const k of ['last_by_subj', 'next_by_subj'] as const) {
    if (o[k] === undefined) continue;
    if (typeof o[k] !== 'string' || o[k] === '') return 'Bad Request';
    q[k] = o[k];
  }
  if (q.last_by_subj !== undefined && (q.next_by_subj !== undefined || q.seq !== undefined)) return 'Bad Request';
  if (q.last_by_subj === undefined && q.next_by_subj === undefined && (q.seq === undefined || q.seq === 0)) return 'Empty Request';
  return q;
}

/** STREAM.INFO `cluster` as nats-server's ClusterInfo / PeerInfo JSON. */
export interface StreamClusterInfo {
  readonly name: string;
  readonly leader?: string;
  readonly replicas?: readonly { readonly name: string; readonly current: boolean; readonly offline?: boolean; readonly active: number; readonly lag?: number }[];
}

export class KvApi {
  private readonly backend: KvBackend;
  private readonly streamLimits: StreamLimits;
  private readonly logger: Logger;
  private readonly view: StreamView;
  private readonly consumers: ConsumerRegistry;
  private readonly linearizable: boolean;
  private readonly pushDelivery: boolean;
  private readonly adminOnly: (bucket: string) => boolean;
  private requests = 0;
  private errors = 0;
  private inFlight = 0;
  private refusing = false;
  private readonly idleWaiters: Array<() => void> = [];
  private closed = false;
  private readonly offReset: (() => void) | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  /** Buckets whose expiry proposal is in flight (one at a time each, so a slow commit does not pile them up). */
  private readonly expiring = new Set<string>();

  constructor(private readonly port: KvApiPort, private readonly options: KvApiOptions) {
    this.backend = options.backend;
    this.logger = options.logger;
    this.offReset = options.backend.onReset?.(() => this.resync());
    this.linearizable = (options.reads ?? 'linearizable') === 'linearizable';
    const readOnly = options.readOnly ?? ((b: string) => b.startsWith('ub_'));
    this.view = { replicas: options.replicas ?? 1, readOnly };
    this.streamLimits = { replicasMax: options.replicas ?? 1, ttl: options.ttl !== undefined };
    if (options.ttl !== undefined) {
      const ttl = options.ttl;
      this.expiryTimer = setInterval(() => {
        if (ttl.isLeader()) this.expireOld();
      }, ttl.periodMs ?? 250);
      this.expiryTimer.unref();
    }
    this.adminOnly = options.adminOnly ?? ((b: string) => b.startsWith('ub_'));
    this.pushDelivery = port.deliverAs !== undefined;
    const deliverAs = port.deliverAs;
    const deliveryPort = {
      deliverAs: deliverAs === undefined ? () => 0 : (s: string, m: RouteMessage) => deliverAs(s, m),
      hasInterest: (s: string) => port.interest().some((i) => subjectMatches(i.subject, s)),
    };
    this.consumers = new ConsumerRegistry(options.backend, deliveryPort, { ...defaultConsumerLimits, ...options.limits });
  }

  /**
   * Offered every message a local client publishes; true when this API answers it (the server then sends no
   * no_responders status). Views in `msg` are valid only during the call, so what is kept is copied.
   */
  handlePublish(msg: LocalPublish): boolean {
    const s = msg.subject;
    // Every subject the KV API serves starts with '$' ($KV., $JS.API., $JS.FC.): one comparison lets the bus's
    // other messages pass (this runs for every local publish).
    if (s.charCodeAt(0) !== 36 /* $ */ || this.closed || this.refusing) return false;
    const hidden = this.hiddenFor(msg.principal);
    if (s.startsWith(kvPrefix)) {
      const kv = parseKvSubject(s);
      // No such bucket: no stream captures the subject, and the client gets no_responders as from nats-server.
      if (kv === undefined || !this.backend.reader.hasBucket(kv.bucket) || hidden?.(kv.bucket) === true) return false;
      this.run(this.onKvPublish(kv.bucket, kv.key, msg.reply, msg.headers.slice(), msg.payload.slice()), msg.reply, 'PubAck');
      return true;
    }
    if (s.startsWith(apiPrefix)) {
      const req = parseApiSubject(s);
      const named = req !== undefined && 'stream' in req ? bucketOfStream(req.stream) : undefined;
      // A bucket hidden from this principal behaves as absent (a create still meets the read-only refusal).
      const concealed = named !== undefined && hidden?.(named) === true && req?.kind !== 'stream.create';
      if (req?.kind === 'direct.get') {
        // Direct gets are answered by the stream itself in nats-server: no stream, no responder.
        if (named === undefined || !this.backend.reader.hasBucket(named) || concealed) return false;
      }
      if (msg.reply === undefined) return true;
      this.requests++;
      if (concealed) {
        this.fail(msg.reply, responseType(req!.kind), jsErrors.streamNotFound());
        return true;
      }
      this.run(this.onApi(req, msg.reply, msg.payload.slice(), hidden, msg.principal?.permissions), msg.reply, req === undefined ? undefined : responseType(req.kind));
      return true;
    }
    if (s.startsWith(flowControlPrefix)) {
      this.consumers.onFlowControl(s);
      return true;
    }
    return false;
  }

  /** Per principal (one object per connection): handlePublish runs for every publish and must not allocate. */
  private readonly hiddenByPrincipal = new WeakMap<Principal, (bucket: string) => boolean>();

  /** The buckets concealed from this principal (undefined: none). */
  private hiddenFor(principal: Principal | undefined): ((bucket: string) => boolean) | undefined {
    if (principal?.admin === true) return undefined;
    const visibleTo = this.options.visibleTo;
    if (visibleTo === undefined || principal === undefined) return this.adminOnly;
    let h = this.hiddenByPrincipal.get(principal);
    if (h === undefined) {
      h = (bucket) => this.adminOnly(bucket) && !visibleTo(bucket, principal);
      this.hiddenByPrincipal.set(principal, h);
    }
    return h;
  }

  /** Subscription interest changes of the NATS server (wakes push consumers). */
  onInterest(change: InterestChange): void {
    if (!this.closed) this.consumers.onInterest(change.subject, change.delta);
  }

  /**
   * Call after the node's state machine was replaced wholesale (snapshot install): the change feed does not carry
   * that, so consumers re-read from their cursors.
   */
  resync(): void {
    if (!this.closed) this.consumers.resync();
  }

  stats(): KvApiStats {
    return { requests: this.requests, errors: this.errors, consumers: this.consumers.size };
  }

  close(): void {
    this.closed = true;
    if (this.expiryTimer !== undefined) clearInterval(this.expiryTimer);
    this.offReset?.();
    this.consumers.close();
  }

  /**
   * The leader's TTL pass: for each bucket with max_age whose oldest entry is older, proposes `expire before
   * now - max_age`. The cut-off travels in the entry, so the followers never consult their own clocks.
   */
  private expireOld(): void {
    if (this.closed) return;
    const r = this.backend.reader;
    const now = Date.now();
    for (const bucket of r.bucketNames()) {
      const maxAge = r.bucketInfo(bucket)?.config.maxAgeMs ?? 0;
      if (maxAge <= 0 || this.expiring.has(bucket)) continue;
      const oldest = r.oldestTs(bucket);
      if (oldest === undefined || oldest > now - maxAge) continue;
      this.expiring.add(bucket);
      this.propose({ op: 'expire', bucket, before: now - maxAge, ts: now })
        .then((res) => {
          if ('err_code' in res || !res.ok) this.logger.warn({ bucket, res }, 'KV expiry proposal was not applied; retried on the next pass');
        })
        // propose() turns its own failures into a result; this covers a throw in the handler above, which left
        // unhandled would end the process (Node's unhandled-rejection default). The next pass retries.
        .catch((err: unknown) => this.logger.warn({ bucket, err }, 'KV expiry proposal failed; retried on the next pass'))
        .finally(() => this.expiring.delete(bucket));
    }
  }

  // ---- plumbing -------------------------------------------------------------------------------------------------

  /**
   * A stopping node takes no new request: each gets nats-server's no-responders status (503) at once, which
   * the standard clients retry, by then on another node, instead of waiting out their timeout.
   */
  stopTaking(): void {
    this.refusing = true;
  }

  /**
   * Resolves once every request already taken has been answered (or after `timeoutMs`): a stopping node waits
   * for this between reading no more client input and closing the connections, so a write it took is answered
   * rather than left to the client's timeout.
   */
  idle(timeoutMs: number): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(finish, timeoutMs);
      timer.unref();
      function finish(): void {
        clearTimeout(timer);
        resolve();
      }
      this.idleWaiters.push(finish);
    });
  }

  private run(p: Promise<void>, reply: string | undefined, type: string | undefined): void {
    this.inFlight++;
    void p.finally(() => {
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }).catch(() => undefined);
    p.catch((err: unknown) => {
      this.logger.error({ err }, 'KV API request failed');
      if (reply === undefined) return;
      const error = jsErrors.streamGeneral('internal error; see the server log');
      this.send(reply, type === 'PubAck' || type === undefined ? { error } : { type, error });
    });
  }

  private send(reply: string, body: unknown): void {
    if (this.closed) return;
    this.port.deliverFromRoute({ subject: reply, payload: enc.encode(JSON.stringify(body)), flushNow: true });
  }

  private fail(reply: string, type: string, error: JsApiError): void {
    this.errors++;
    // nats-server's purge response always carries `purged` (no omitempty), errors included.
    this.send(reply, type === purgeResponseType ? { type, error, purged: 0 } : { type, error });
  }

  /** Runs the read barrier; false (and the error sent) when the cluster cannot serve reads now. */
  private async barrier(onFail: () => void): Promise<boolean> {
    if (!this.linearizable) return true;
    try {
      await this.backend.readBarrier();
      return true;
    } catch (err) {
      this.logger.warn({ err }, 'KV read barrier failed');
      onFail();
      return false;
    }
  }

  private async propose(cmd: KvCommand): Promise<KvResult | JsApiError> {
    try {
      return await this.backend.propose(cmd);
    } catch (err) {
      this.logger.warn({ err, op: cmd.op, bucket: 'bucket' in cmd ? cmd.bucket : null }, 'KV proposal failed');
      return jsErrors.clusterNotAvailable();
    }
  }

  // ---- KV publishes -----------------------------------------------------------------------------------------------

  private async onKvPublish(bucket: string, key: string, reply: string | undefined, hdr: Uint8Array, payload: Uint8Array): Promise<void> {
    const stream = `${streamPrefix}${bucket}`;
    const ack = (r: JsApiError): void => {
      this.errors++;
      if (reply !== undefined) this.send(reply, { error: r, stream, seq: 0 });
    };
    if (this.view.readOnly(bucket)) return ack(jsErrors.streamSealed(bucket));
    const cmd = kvCommandOf(bucket, key, stream, hdr, payload, Date.now());
    if ('err_code' in cmd) return ack(cmd);
    const r = await this.propose(cmd);
    if ('err_code' in r) return ack(r);
    if (!r.ok) return ack(resultError(r));
    // A Nats-Msg-Id seen within the duplicate window: nats-server acks with the first write's sequence.
    if (r.kind === 'duplicate') {
      if (reply !== undefined) this.send(reply, { stream, seq: r.revision, duplicate: true });
      return;
    }
    if (r.kind !== 'entry') return ack(jsErrors.streamGeneral(`unexpected ${r.kind} result`));
    if (reply !== undefined) this.sendPubAck(reply, stream, r.entry.revision);
  }

  /**
   * The PubAck of every successful put, the bytes JSON.stringify({ stream, seq }) gives (a stream name is
   * [A-Za-z0-9_-] and a revision an integer: nothing to escape), without building and serialising an object.
   */
  private sendPubAck(reply: string, stream: string, seq: number): void {
    if (this.closed) return;
    this.port.deliverFromRoute({ subject: reply, payload: Buffer.from(`{"stream":"${stream}","seq":${seq}}`, 'latin1'), flushNow: true });
  }

  // ---- $JS.API ----------------------------------------------------------------------------------------------------

  private async onApi(req: ApiRequest | undefined, reply: string, raw: Uint8Array, hidden?: (bucket: string) => boolean, perms?: Permissions): Promise<void> {
    if (req === undefined) return this.fail(reply, 'io.nats.jetstream.api.v1.error_response', jsErrors.badRequest('unknown JetStream API request'));
    const type = responseType(req.kind);
    let body: unknown;
    if (raw.length > 0) {
      try {
        body = JSON.parse(dec.decode(raw));
      } catch {
        if (req.kind === 'direct.get') return this.directReply(reply, badRequestHeaders('Bad Request'));
        return this.fail(reply, type, jsErrors.invalidJson());
      }
    }
    const ok = (o: Record<string, unknown>) => this.send(reply, { type, ...o });
    const fail = (e: JsApiError) => this.fail(reply, type, e);
    switch (req.kind) {
      case 'stream.create':
        return this.streamCreate(req.stream, body, ok, fail);
      case 'stream.delete':
        return this.streamDelete(req.stream, ok, fail);
      case 'stream.purge':
        return this.streamPurge(req.stream, body, ok, fail);
      case 'direct.get':
        return this.directGet(reply, req.stream, req.subject, body);
      case 'consumer.durable.create':
        return fail(jsErrors.consumerCreate('durable consumers are not supported by membershipd (KV uses ephemeral ordered push consumers)'));
      default:
        if (!(await this.barrier(() => fail(jsErrors.clusterNotAvailable())))) return;
        return this.read(req, body, ok, fail, hidden, perms);
    }
  }

  private read(req: ApiRequest, body: unknown, ok: (o: Record<string, unknown>) => void, fail: (e: JsApiError) => void, hidden?: (bucket: string) => boolean, perms?: Permissions): void {
    switch (req.kind) {
      case 'info':
        return ok(this.accountInfo(hidden));
      case 'stream.names':
      case 'stream.list':
        return this.streamList(req.kind === 'stream.names', body, ok, fail, hidden);
      case 'consumer.create':
      case 'consumer.info':
      case 'consumer.delete':
      case 'consumer.names':
      case 'consumer.list':
        return this.consumerRequest(req, body, ok, fail, perms);
      case 'stream.update':
      case 'stream.info':
      case 'stream.purge':
      case 'stream.msg.get':
      case 'stream.msg.delete':
        return this.streamRequest(req, body, ok, fail);
      default:
        return fail(jsErrors.badRequest());
    }
  }

  /** Counts only what the caller may see: a hidden bucket (and its consumers) must not show even as a number. */
  private accountInfo(hidden?: (bucket: string) => boolean): Record<string, unknown> {
    const r = this.backend.reader;
    let storage = 0;
    const names = r.bucketNames().filter((n) => hidden?.(n) !== true);
    for (const n of names) storage += r.bucketInfo(n)?.bytes ?? 0;
    let consumers = 0;
    for (const n of names) consumers += this.consumers.countFor(n);
    return {
      memory: 0, storage, streams: names.length, consumers,
      limits: {
        max_memory: -1, max_storage: -1, max_streams: -1, max_consumers: -1, max_ack_pending: -1,
        memory_max_stream_bytes: -1, storage_max_stream_bytes: -1, max_bytes_required: false,
      },
      api: { total: this.requests, errors: this.errors },
    };
  }

  private streamInfo(bucket: string): Record<string, unknown> | undefined {
    const info = this.backend.reader.bucketInfo(bucket);
    if (info === undefined) return undefined;
    const cluster = this.options.clusterInfo?.();
    return {
      config: streamConfig(bucket, info, this.view),
      created: rfc3339(info.created),
      state: streamState(this.backend.reader, info, this.consumers.countFor(bucket)),
      // nats-server omits `cluster` for a stream on a single server.
      ...(cluster === undefined ? {} : { cluster }),
    };
  }

  /**
   * STREAM.PURGE as nats-server 2.9 answers it: `filter` (a subject of the stream), `seq` (purge below it) or
   * `keep` (keep the newest N matching), replicated as one entry so every node drops the same entries.
   */
  private async streamPurge(stream: string, body: unknown, ok: (o: Record<string, unknown>) => void, fail: (e: JsApiError) => void): Promise<void> {
    const bucket = bucketOfStream(stream);
    const info = bucket === undefined ? undefined : this.backend.reader.bucketInfo(bucket);
    if (bucket === undefined || info === undefined) return fail(jsErrors.streamNotFound());
    if (this.view.readOnly(bucket)) return fail(jsErrors.streamSealed(bucket));
    if (streamConfig(bucket, info, this.view).deny_purge === true) return fail(jsErrors.streamPurge('stream purge not permitted'));
    const o = (typeof body === 'object' && body !== null && !Array.isArray(body) ? body : {}) as Record<string, unknown>;
    const uint = (v: unknown): v is number | undefined => v === undefined || (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0);
    if (!uint(o.seq) || !uint(o.keep) || (o.filter !== undefined && typeof o.filter !== 'string')) return fail(jsErrors.badRequest());
    if ((o.seq ?? 0) > 0 && (o.keep ?? 0) > 0) return fail(jsErrors.badRequest());
    let subject: string | undefined;
    if (typeof o.filter === 'string' && o.filter !== '') {
      const prefix = `${kvPrefix}${bucket}.`;
      if (!o.filter.startsWith(prefix) || o.filter.length === prefix.length) return fail(jsErrors.badRequest('filter must be a subject of the stream ($KV.<bucket>.<key pattern>)'));
      subject = o.filter.slice(prefix.length);
    }
    const cmd: KvCommand = {
      op: 'bucket.purge', bucket, ts: Date.now(),
      ...(subject === undefined ? {} : { subject }), ...(o.seq ? { seq: o.seq } : {}), ...(o.keep ? { keep: o.keep } : {}),
    };
    const r = await this.propose(cmd);
    if ('err_code' in r) return fail(r);
    if (!r.ok) return fail(resultError(r));
    if (r.kind !== 'purge') return fail(jsErrors.streamGeneral(`unexpected ${r.kind} result`));
    ok({ success: true, purged: r.purged });
  }

  private async streamCreate(stream: string, body: unknown, ok: (o: Record<string, unknown>) => void, fail: (e: JsApiError) => void): Promise<void> {
    const parsed = parseStreamCreate(stream, body ?? {}, this.streamLimits);
    if ('err_code' in parsed) return fail(parsed);
    if (this.view.readOnly(parsed.bucket)) return fail(jsErrors.streamSealed(parsed.bucket));
    const r = await this.propose({ op: 'bucket.create', bucket: parsed.bucket, config: parsed.config, ts: Date.now() });
    if ('err_code' in r) return fail(r);
    if (!r.ok) return fail(resultError(r));
    const info = this.streamInfo(parsed.bucket);
    if (info === undefined || r.kind !== 'bucket.create') return fail(jsErrors.streamNotFound());
    ok(r.created ? { ...info, did_create: true } : info);
  }

  private async streamDelete(stream: string, ok: (o: Record<string, unknown>) => void, fail: (e: JsApiError) => void): Promise<void> {
    const bucket = bucketOfStream(stream);
    if (bucket === undefined) return fail(jsErrors.streamNotFound());
    if (this.view.readOnly(bucket)) return fail(jsErrors.streamSealed(bucket));
    const r = await this.propose({ op: 'bucket.delete', bucket, ts: Date.now() });
    if ('err_code' in r) return fail(r);
    if (!r.ok) return fail(resultError(r));
    this.consumers.deleteBucket(bucket);
    ok({ success: true });
  }

  private streamList(namesOnly: boolean, body: unknown, ok: (o: Record<string, unknown>) => void, fail: (e: JsApiError) => void, hidden?: (bucket: string) => boolean): void {
    const o = (typeof body === 'object' && body !== null && !Array.isArray(body) ? body : {}) as Record<string, unknown>;
    const offset = typeof o.offset === 'number' && Number.isSafeInteger(o.offset) && o.offset > 0 ? o.offset : 0;
    if (o.subject !== undefined && typeof o.subject !== 'string') return fail(jsErrors.badRequest('subject must be a string'));
    const filter = o.subject as string | undefined;
    const buckets = this.backend.reader.bucketNames()
      .filter((b) => (filter === undefined || filter === '' || bucketOverlaps(b, filter)) && hidden?.(b) !== true);
    const limit = namesOnly ? pageStreamNames : pageStreamList;
    const page = buckets.slice(offset, offset + limit);
    const streams = namesOnly ? page.map((b) => `${streamPrefix}${b}`) : page.map((b) => this.streamInfo(b)).filter((x) => x !== undefined);
    ok({ total: buckets.length, offset, limit, streams });
  }

  private streamRequest(req: Extract<ApiRequest, { stream: string }>, body: unknown, ok: (o: Record<string, unknown>) => void, fail: (e: JsApiError) => void): void {
    const bucket = bucketOfStream(req.stream);
    if (bucket === undefined || !this.backend.reader.hasBucket(bucket)) return fail(jsErrors.streamNotFound());
    // The stream info (its state counts every key and entry) only for the requests that answer with it: a KV get
    // (STREAM.MSG.GET) built it for nothing and spent 2 ms of the leader's CPU per get on a 10k-key bucket.
    const withInfo = req.kind === 'stream.info' || req.kind === 'stream.update';
    const info = withInfo ? this.streamInfo(bucket) : undefined;
    if (withInfo && info === undefined) return fail(jsErrors.streamNotFound());
    switch (req.kind) {
      case 'stream.info':
        return ok({ total: 0, offset: 0, limit: 0, ...info });
      case 'stream.update': {
        const parsed = parseStreamCreate(req.stream, body ?? {}, this.streamLimits);
        if ('err_code' in parsed) return fail(parsed);
        // An update to the very config the stream has is accepted (nats.go's KV create sends one when the
        // configs differ only in their discard policy); any real change is not supported.
        if (JSON.stringify(parsed.stream) === JSON.stringify(info!.config)) return ok(info!);
        return fail(jsErrors.streamUpdate('changing a KV bucket configuration is not supported by membershipd; create a new bucket'));
      }
      case 'stream.msg.delete':
        if (this.view.readOnly(bucket)) return fail(jsErrors.streamSealed(bucket));
        return fail(jsErrors.messageDeleteFailed('message delete not permitted (deny_delete); delete or purge the key instead'));
      case 'stream.msg.get': {
        const q = parseGetQuery(body ?? {});
        if (typeof q === 'string') return fail(jsErrors.badRequest());
        const e = this.findMessage(bucket, q);
        if (e === undefined) return fail(jsErrors.noMessageFound());
        const hdrs = entryHeaderFields(e);
        const message: Record<string, unknown> = { subject: `${kvPrefix}${bucket}.${e.key}`, seq: e.revision };
        if (hdrs.length > 0) message.hdrs = Buffer.from(encodeHeaders(hdrs)).toString('base64');
        if (e.value.length > 0) message.data = Buffer.from(e.value).toString('base64');
        message.time = rfc3339(e.ts);
        return ok({ message });
      }
      default:
        return fail(jsErrors.badRequest());
    }
  }

  /** The entry a get query names, from the bucket's retained entries. */
  private findMessage(bucket: string, q: Query): KvEntry | undefined {
    const r = this.backend.reader;
    const subjectOf = (e: KvEntry) => `${kvPrefix}${bucket}.${e.key}`;
    if (q.last_by_subj !== undefined) {
      const s = q.last_by_subj;
      if (!hasWildcard(s)) {
        const kv = parseKvSubject(s);
        return kv === undefined || kv.bucket !== bucket ? undefined : r.get(bucket, kv.key);
      }
      const all = r.changesSince(0, bucket).filter((e) => subjectMatches(s, subjectOf(e)));
      return all[all.length - 1];
    }
    const from = Math.max(0, (q.seq ?? 1) - 1);
    if (q.next_by_subj !== undefined) {
      const s = q.next_by_subj;
      return r.changesSince(from, bucket).find((e) => subjectMatches(s, subjectOf(e)));
    }
    const e = r.changesSince(from, bucket, 1)[0];
    return e !== undefined && e.revision === q.seq ? e : undefined;
  }

  private directReply(reply: string, headers: Uint8Array, payload: Uint8Array = new Uint8Array(0)): void {
    if (!this.closed) this.port.deliverFromRoute({ subject: reply, headers, payload });
  }

  private async directGet(reply: string, stream: string, subject: string | undefined, body: unknown): Promise<void> {
    const bucket = bucketOfStream(stream);
    let q: Query | string;
    if (subject !== undefined) q = body === undefined ? { last_by_subj: subject } : 'Bad Request';
    else q = body === undefined ? 'Empty Request' : parseGetQuery(body);
    if (typeof q === 'string') return this.directReply(reply, badRequestHeaders(q));
    if (!(await this.barrier(() => this.directReply(reply, unavailableHeaders)))) return;
    const e = bucket === undefined ? undefined : this.findMessage(bucket, q);
    if (e === undefined) return this.directReply(reply, notFoundHeaders);
    const headers = encodeHeaders([
      ...entryHeaderFields(e),
      ['Nats-Stream', stream],
      ['Nats-Subject', `${kvPrefix}${bucket}.${e.key}`],
      ['Nats-Sequence', String(e.revision)],
      ['Nats-Time-Stamp', rfc3339(e.ts)],
    ]);
    this.directReply(reply, headers, e.value);
  }

  private consumerRequest(req: Extract<ApiRequest, { stream: string }>, body: unknown, ok: (o: Record<string, unknown>) => void, fail: (e: JsApiError) => void, perms?: Permissions): void {
    const bucket = bucketOfStream(req.stream);
    if (bucket === undefined || !this.backend.reader.hasBucket(bucket)) return fail(jsErrors.streamNotFound());
    const server = this.options.serverName;
    switch (req.kind) {
      case 'consumer.create': {
        if (!this.pushDelivery) {
          return fail(jsErrors.consumerCreate('push consumers (KV watch/keys/history) need the NATS server\'s deliverAs seam, which this build lacks'));
        }
        const spec = parseConsumerCreate(req.stream, bucket, body, req.name, req.filter, newConsumerName, this.consumers.limits);
        if ('err_code' in spec) return fail(spec);
        // The consumer publishes into its deliver subject on its creator's behalf, so the creator must be allowed to
        // publish there: otherwise a KV user could have the server push bucket entries onto any subject (another
        // application's command subject, another user's inbox). A user's own inbox (`_INBOX_<user>.>`) is
        // publishable to its owner; the shared `_INBOX.` is not unless a role grants it.
        if (perms !== undefined && !perms.canPublish(spec.deliverSubject)) {
          return fail(jsErrors.consumerCreate(`deliver subject ${spec.deliverSubject} is not one you may publish to; connect with your private inbox prefix (_INBOX_<user>) or get a publish grant for it`));
        }
        const c = this.consumers.create(spec);
        if ('err_code' in c) return fail(c);
        return ok(c.info(server));
      }
      case 'consumer.info':
      case 'consumer.delete': {
        const c = this.consumers.get(req.stream, req.name);
        if (c === undefined) return fail(jsErrors.consumerNotFound());
        if (req.kind === 'consumer.info') return ok(c.info(server));
        this.consumers.delete(c);
        return ok({ success: true });
      }
      case 'consumer.names':
      case 'consumer.list': {
        const o = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
        const offset = typeof o.offset === 'number' && Number.isSafeInteger(o.offset) && o.offset > 0 ? o.offset : 0;
        const all = this.consumers.list(req.stream);
        const limit = req.kind === 'consumer.names' ? pageStreamNames : pageStreamList;
        const page = all.slice(offset, offset + limit);
        const consumers = req.kind === 'consumer.names' ? page.map((c) => c.spec.name) : page.map((c) => c.info(server));
        return ok({ total: all.length, offset, limit, consumers });
      }
      default:
        return fail(jsErrors.badRequest());
    }
  }
}

function newConsumerName(): string {
  // nats-server names ephemerals with 8 random characters.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(8);
  let s = '';
  for (const b of bytes) s += alphabet[b % alphabet.length];
  return s;
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

export function createKvApi(port: KvApiPort, options: KvApiOptions): KvApi {
  return new KvApi(port, options);
}

/**
 * Attaches the KV API to a NATS server: installs it as the server's forwarder (chained before `next`, the
 * route layer's forwarder, which still sees every message) and listens to interest changes. Returns the API;
 * close() detaches it.
 */
export function attachKvApi(
  server: { readonly cluster: KvServerPort },
  options: KvApiOptions & { readonly next?: (msg: LocalPublish) => boolean },
): KvApi & { detach(): void } {
  const port = server.cluster;
  const api = new KvApi(port, options);
  const next = options.next;
  port.setForwarder(next === undefined ? (m) => api.handlePublish(m) : (m) => {
    const mine = api.handlePublish(m);
    return next(m) || mine;
  });
  const off = port.onInterest((c) => api.onInterest(c));
  const detach = (): void => {
    off();
    port.setForwarder(next);
    api.close();
  };
  return Object.assign(api, { detach });
}
