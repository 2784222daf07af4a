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
//
// This file is the dispatcher and the KV publish path; the stream requests are in stream_requests.ts, the consumer
// requests in consumer_requests.ts, message gets in message_get.ts and a publish's headers in publish_command.ts.
import type { Logger } from 'pino';
import type { Principal } from '../auth/types.js';
import type { KvCommand, KvResult } from '../../store/index.js';
import type { InterestChange, LocalPublish, NatsClusterPort, RouteMessage } from '../nats/index.js';
import type { Permissions } from '../auth/index.js';
import { subjectMatches } from '../nats/index.js';
import type { ApiContext, Fail, Ok, StreamClusterInfo } from './api_context.js';
import type { KvBackend } from './backend.js';
import { consumerRequest } from './consumer_requests.js';
import { defaultConsumerLimits, type ConsumerLimits } from './consumer_spec.js';
import { ConsumerRegistry, entryHeaderFields } from './consumers.js';
import { jsErrors, type JsApiError } from './errors.js';
import { findMessage, parseGetQuery, type Query } from './message_get.js';
import { kvCommandOf, resultError } from './publish_command.js';
import type { StreamView } from './streams.js';
import { accountInfo, streamCreate, streamDelete, streamList, streamPurge, streamRequest } from './stream_requests.js';
import {
  apiPrefix, bucketOfStream, encodeHeaders, flowControlPrefix, kvPrefix, parseApiSubject, parseKvSubject, responseType, rfc3339,
  streamPrefix, type ApiRequest,
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

const notFoundHeaders = encodeHeaders([], { code: 404, description: 'Message Not Found' });
const badRequestHeaders = (d: string) => encodeHeaders([], { code: 408, description: d });
const unavailableHeaders = encodeHeaders([], { code: 503, description: 'JetStream system temporarily unavailable' });

export class KvApi {
  private readonly backend: KvBackend;
  private readonly logger: Logger;
  private readonly view: StreamView;
  private readonly consumers: ConsumerRegistry;
  /** What the $JS.API handlers (stream_requests.ts, consumer_requests.ts) read of this API. */
  private readonly ctx: ApiContext;
  private readonly linearizable: boolean;
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
    if (options.ttl !== undefined) {
      const ttl = options.ttl;
      this.expiryTimer = setInterval(() => {
        if (ttl.isLeader()) this.expireOld();
      }, ttl.periodMs ?? 250);
      this.expiryTimer.unref();
    }
    this.adminOnly = options.adminOnly ?? ((b: string) => b.startsWith('ub_'));
    const deliverAs = port.deliverAs;
    const deliveryPort = {
      deliverAs: deliverAs === undefined ? () => 0 : (s: string, m: RouteMessage) => deliverAs(s, m),
      hasInterest: (s: string) => port.interest().some((i) => subjectMatches(i.subject, s)),
    };
    this.consumers = new ConsumerRegistry(options.backend, deliveryPort, { ...defaultConsumerLimits, ...options.limits });
    this.ctx = {
      backend: options.backend,
      view: this.view,
      streamLimits: { replicasMax: options.replicas ?? 1, ttl: options.ttl !== undefined },
      consumers: this.consumers,
      serverName: options.serverName,
      pushDelivery: deliverAs !== undefined,
      clusterInfo: options.clusterInfo,
      propose: (cmd) => this.propose(cmd),
    };
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
        return streamCreate(this.ctx, req.stream, body, ok, fail);
      case 'stream.delete':
        return streamDelete(this.ctx, req.stream, ok, fail);
      case 'stream.purge':
        return streamPurge(this.ctx, req.stream, body, ok, fail);
      case 'direct.get':
        return this.directGet(reply, req.stream, req.subject, body);
      case 'consumer.durable.create':
        return fail(jsErrors.consumerCreate('durable consumers are not supported by membershipd (KV uses ephemeral ordered push consumers)'));
      default:
        if (!(await this.barrier(() => fail(jsErrors.clusterNotAvailable())))) return;
        return this.read(req, body, ok, fail, hidden, perms);
    }
  }

  private read(req: ApiRequest, body: unknown, ok: Ok, fail: Fail, hidden?: (bucket: string) => boolean, perms?: Permissions): void {
    switch (req.kind) {
      case 'info':
        return ok(accountInfo(this.ctx, { total: this.requests, errors: this.errors }, hidden));
      case 'stream.names':
      case 'stream.list':
        return streamList(this.ctx, req.kind === 'stream.names', body, ok, fail, hidden);
      case 'consumer.create':
      case 'consumer.info':
      case 'consumer.delete':
      case 'consumer.names':
      case 'consumer.list':
        return consumerRequest(this.ctx, req, body, ok, fail, perms);
      case 'stream.update':
      case 'stream.info':
      case 'stream.purge':
      case 'stream.msg.get':
      case 'stream.msg.delete':
        return streamRequest(this.ctx, req, body, ok, fail);
      default:
        return fail(jsErrors.badRequest());
    }
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
    const e = bucket === undefined ? undefined : findMessage(this.backend.reader, bucket, q);
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
