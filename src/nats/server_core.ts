// The state every client connection shares (ServerCore): the subject trie, the limits, the counters, message routing
// to local subscribers and to the forwarder, and the once-per-turn outbound flush. The listeners that create the
// connections are in server.ts; the protocol of one connection is in client.ts.
import type { Logger } from 'pino';
import type { BusAuthenticator, Principal } from '../auth/types.js';
import type { NatsLimits, NatsServerOptions } from './api.js';
import { Client, closeReason, type Subscription } from './client.js';
import { PubArgs } from './parser.js';
import { Sublist } from './sublist.js';
import type { ClientTransport } from './transport.js';
import type { InterestChange, LocalPublish, PublishFeedback, RouteMessage } from './cluster_port.js';

/** The version INFO reports. nats.js gates features on it: ≥ 2.9.4 enables KV watch/keys/history (reference §4.9). */
export const reportedServerVersion = '2.9.10';

export const defaultLimits: NatsLimits = {
  maxPayloadBytes: 1024 * 1024,
  maxControlLineBytes: 4096,
  maxPendingBytes: 64 * 1024 * 1024,
  maxConnections: 65536,
  // nats-server's default is unlimited; 100k SUBs cost a connection ~110 MiB here, so one client could exhaust
  // the node. 10 000 is far above what a client library uses (nats.js: one SUB for all requests, one per
  // subscription or KV watch) and bounds a connection's subscriptions to ~11 MiB. --max-subscriptions changes it.
  maxSubscriptions: 10_000,
  pingIntervalMs: 120_000,
  pingMax: 2,
  authTimeoutMs: 2000,
  tlsTimeoutMs: 2000,
};

/**
 * The LocalPublish handed to the forwarder for every local publish. Most publishes are neither a KV/JetStream
 * request nor wanted by a peer, and the forwarders look at the subject only; the header and payload views are
 * made when one is read (profiled: two subarrays and the object were 5 % of a node's CPU per message in Go
 * client pub/sub). The fields are copied from the parser's PubArgs, which the next message reuses, so a view
 * made after the call still shows this message: `data` is a socket read or a per-message copy, never reused.
 * The reply is decoded at once because its bytes may sit in the parser's scratch buffer.
 */
class ForwardedPublish implements LocalPublish {
  readonly subject: string;
  readonly reply: string | undefined;
  localQueues?: ReadonlyMap<string, number>;
  remoteQueues?: Set<string>;
  feedback?: PublishFeedback;
  principal?: Principal;
  private readonly data: Buffer;
  private readonly dataStart: number;
  private readonly headerEnd: number;
  private readonly dataEnd: number;

  constructor(p: PubArgs) {
    this.subject = p.subject;
    this.reply = p.replyStart >= 0 ? p.reply() : undefined;
    this.data = p.data;
    this.dataStart = p.dataStart;
    this.headerEnd = p.dataStart + (p.headerBytes > 0 ? p.headerBytes : 0);
    this.dataEnd = p.dataStart + p.size;
  }

  get headers(): Uint8Array {
    return this.data.subarray(this.dataStart, this.headerEnd);
  }

  get payload(): Uint8Array {
    return this.data.subarray(this.headerEnd, this.dataEnd);
  }
}

/** What a Client needs from the server. */
export class ServerCore {
  /** A graceful stop is draining the clients (NatsServer.drainClients). */
  draining = false;
  readonly sublist = new Sublist<Subscription>();
  readonly clients = new Map<number, Client>();
  readonly limits: NatsLimits;
  readonly authRequired: boolean;
  /**
   * Pending outbound bytes of a subscriber above which its publishers are paused, for at most stallMs at a time:
   * half of maxPendingBytes, as nats-server sets its stall channel (client.go, out.pb > out.mp/2). Stalling
   * earlier only moves the backlog into the publishing client's memory.
   */
  readonly stallBytes: number;
  readonly stallMs = 10;
  inMsgs = 0;
  inBytes = 0;
  outMsgs = 0;
  outBytes = 0;
  slowConsumers = 0;
  totalConnections = 0;
  port = 0;
  forwarder: ((msg: LocalPublish) => boolean) | undefined;
  /** Reused for every forwarder call (the hot path allocates nothing for it). */
  private readonly feedback: PublishFeedback = { stallMs: 0 };
  readonly interestListeners = new Set<(change: InterestChange) => void>();
  private dirty: Client[] = [];
  private flushScheduled = false;
  private readonly flushAll = (): void => {
    this.flushScheduled = false;
    this.flushDirty();
  };
  private soonScheduled = false;
  private readonly flushSoon = (): void => {
    this.soonScheduled = false;
    this.flushDirty();
  };

  private flushDirty(): void {
    const list = this.dirty;
    this.dirty = [];
    for (const c of list) if (!c.closed) c.flush();
  }

  constructor(
    readonly serverId: string,
    readonly serverName: string,
    readonly options: NatsServerOptions,
    readonly logger: Logger,
    readonly auth: BusAuthenticator | undefined,
  ) {
    this.limits = { ...defaultLimits, ...options.limits };
    this.authRequired = auth?.authRequired ?? false;
    this.stallBytes = Math.floor(this.limits.maxPendingBytes / 2);
  }

  infoLine(c: Pick<Client, 'cid' | 'nonce'> & { transport: Pick<ClientTransport, 'kind' | 'remoteAddress'> }): Buffer {
    const info: Record<string, unknown> = {
      server_id: this.serverId,
      server_name: this.serverName,
      version: reportedServerVersion,
      proto: 1,
      go: `node${process.versions.node}`,
      host: this.options.host,
      port: this.port,
      headers: true,
    };
    if (this.options.jetstream === true) info.jetstream = true;
    if (this.authRequired) info.auth_required = true;
    if (this.options.tls !== undefined && c.transport.kind !== 'ws') info.tls_required = true;
    if (this.options.tls?.ca !== undefined && c.transport.kind !== 'ws') info.tls_verify = true;
    info.max_payload = this.limits.maxPayloadBytes;
    info.client_id = c.cid;
    info.client_ip = c.transport.remoteAddress;
    if (c.nonce !== undefined) info.nonce = c.nonce;
    const urls = this.options.connectUrls?.() ?? [];
    if (urls.length > 0) info.connect_urls = urls;
    return Buffer.from(`INFO ${JSON.stringify(info)} \r\n`);
  }

  scheduleFlush(c: Client): void {
    this.dirty.push(c);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushAll);
    }
  }

  addSubscription(sub: Subscription): void {
    this.sublist.insert(sub);
    this.emitInterest(sub, 1);
  }

  removeSubscription(sub: Subscription): void {
    if (this.sublist.remove(sub)) this.emitInterest(sub, -1);
  }

  private emitInterest(sub: Subscription, delta: 1 | -1): void {
    if (this.interestListeners.size === 0) return;
    const change: InterestChange = { subject: sub.subject, queue: sub.queue, delta };
    for (const l of this.interestListeners) l(change);
  }

  clientClosed(c: Client): void {
    this.clients.delete(c.cid);
    this.logger.debug({ cid: c.cid, reason: c.reason }, 'client closed');
  }

  /** Delivers a parsed PUB/HPUB (or a routed message when origin is null); returns the number of deliveries. */
  routeMessage(p: PubArgs, origin: Client | null, queues?: readonly string[]): number {
    const r = this.sublist.match(p.subject);
    let delivered = 0;
    const noEcho = origin !== null && !origin.opts.echo;
    const plain = r.plain;
    for (let i = 0; i < plain.length; i++) {
      const sub = plain[i]!;
      if (noEcho && sub.client === origin) continue;
      if (sub.client.deliver(sub, p, origin)) delivered++;
    }
    const groups = r.queues;
    let remoteQueues: Set<string> | undefined;
    if (origin !== null && this.forwarder !== undefined) {
      // The forwarder runs before local queue delivery: it may take a group for a remote member (see LocalPublish).
      let localQueues: Map<string, number> | undefined;
      if (groups.length > 0) {
        localQueues = new Map();
        for (let g = 0; g < groups.length; g++) {
          const members = groups[g]!;
          let n = members.length;
          if (noEcho) for (const m of members) if (m.client === origin) n--;
          if (n > 0) localQueues.set(members[0]!.queue!, n);
        }
        remoteQueues = new Set();
      }
      if (this.forwardToRoutes(p, localQueues, remoteQueues, origin)) delivered++;
      if (this.feedback.stallMs > 0) origin.stallFor(this.feedback.stallMs);
    }
    for (let g = 0; g < groups.length; g++) {
      const members = groups[g]!;
      const group = members[0]!.queue!;
      if (queues !== undefined && !queues.includes(group)) continue;
      if (remoteQueues !== undefined && remoteQueues.has(group)) continue;
      // One member per group, chosen at random as nats-server does; skip members that cannot take it.
      const n = members.length;
      const start = n === 1 ? 0 : Math.floor(Math.random() * n);
      for (let k = 0; k < n; k++) {
        const sub = members[(start + k) % n]!;
        if (noEcho && sub.client === origin) continue;
        if (sub.client.deliver(sub, p, origin)) {
          delivered++;
          break;
        }
      }
    }
    if (delivered === 0 && origin !== null && p.replyStart >= 0 && origin.opts.noResponders) {
      origin.sendNoResponders(p.reply()!);
      // A stopping node refuses new requests with this 503; the client's retry must reach another node, so
      // its connection closes right behind the status (a retry sent on this connection could be lost in the
      // socket when the drain closes it, and would cost the client its request timeout).
      if (this.draining) queueMicrotask(() => origin.close(closeReason.serverShutdown, true));
    }
    return delivered;
  }

  private forwardToRoutes(p: PubArgs, localQueues: Map<string, number> | undefined, remoteQueues: Set<string> | undefined, origin: Client): boolean {
    const msg = new ForwardedPublish(p);
    if (localQueues !== undefined) {
      msg.localQueues = localQueues;
      msg.remoteQueues = remoteQueues;
    }
    const feedback = this.feedback;
    feedback.stallMs = 0;
    msg.feedback = feedback;
    if (origin.principal !== null) msg.principal = origin.principal;
    return this.forwarder!(msg);
  }

  /** NatsClusterPort.deliverAs: deliverFromRoute's message, matched on `routeSubject`, plain subscribers only. */
  deliverAs(routeSubject: string, msg: RouteMessage): number {
    const p = new PubArgs();
    this.fillRouteArgs(p, msg);
    let delivered = 0;
    const plain = this.sublist.match(routeSubject).plain;
    for (let i = 0; i < plain.length; i++) if (plain[i]!.client.deliver(plain[i]!, p, null)) delivered++;
    return delivered;
  }

  /**
   * Local delivery of a routed message. Client.deliver copies subject, reply and data into each subscriber's
   * outbound buffer synchronously, so the message's own buffers are used as views (no copy of the payload); only
   * the subject's bytes are needed, cached per subject (routed traffic repeats a few subjects), and a message
   * with headers joins headers and payload once (PubArgs holds one data buffer).
   */
  deliverFromRoute(msg: RouteMessage): number {
    // Reused unless a delivery re-enters (an interest listener that delivers a reply synchronously).
    const p = this.routeArgsBusy ? new PubArgs() : this.routeArgs;
    this.routeArgsBusy = true;
    try {
      this.fillRouteArgs(p, msg);
      const n = this.routeMessage(p, null, msg.queues ?? []);
      if (msg.flushNow === true && !this.soonScheduled) {
        // Replies of in-server services are sent from promise continuations: a Raft apply resolves every write of
        // its batch at once, and their replies follow in the same microtask run. A tick queued from a microtask
        // runs once that run has drained (Node's processTicksAndRejections), so a batch of replies shares one
        // socket write per client instead of one TLS write each (profiled: 64 writes per batch at 64 in flight),
        // and a lone reply still leaves before the event loop moves on.
        this.soonScheduled = true;
        process.nextTick(this.flushSoon);
      }
      return n;
    } finally {
      if (p === this.routeArgs) {
        this.routeArgsBusy = false;
        p.data = p.argBuf = emptyBuffer; // keep no reference to the message after the call
      }
    }
  }

  /** Points `p` at a routed message's bytes; valid while `msg` is, so delivery must copy synchronously. */
  private fillRouteArgs(p: PubArgs, msg: RouteMessage): void {
    // A service's reply (flushNow) goes to a request's own inbox, seen once: caching its bytes would only push the
    // subjects routed traffic repeats out of the cache (and clear it every 4,096 replies).
    const subj = msg.flushNow === true ? Buffer.from(msg.subject) : this.subjectBytes(msg.subject);
    p.subject = msg.subject;
    p.subjectStart = 0;
    p.subjectEnd = subj.length;
    if (msg.reply === undefined) {
      p.argBuf = subj;
      p.replyStart = p.replyEnd = -1;
    } else {
      const arg = Buffer.allocUnsafe(subj.length + 1 + Buffer.byteLength(msg.reply));
      subj.copy(arg, 0);
      arg[subj.length] = 32;
      arg.write(msg.reply, subj.length + 1);
      p.argBuf = arg;
      p.replyStart = subj.length + 1;
      p.replyEnd = arg.length;
    }
    const headers = msg.headers;
    if (headers !== undefined && headers.length > 0) {
      p.headerBytes = headers.length;
      p.data = Buffer.concat([headers, msg.payload]);
    } else {
      p.headerBytes = -1;
      const pl = msg.payload;
      p.data = Buffer.isBuffer(pl) ? pl : Buffer.from(pl.buffer, pl.byteOffset, pl.byteLength);
    }
    p.dataStart = 0;
    p.size = p.data.length;
  }

  private readonly routeArgs = new PubArgs();
  private routeArgsBusy = false;
  /** Encoded subjects of routed messages; cleared wholesale when full (a bound, not an LRU: cheap and rare). */
  private readonly subjectCache = new Map<string, Buffer>();

  private subjectBytes(subject: string): Buffer {
    let b = this.subjectCache.get(subject);
    if (b === undefined) {
      if (this.subjectCache.size >= subjectCacheMax) this.subjectCache.clear();
      b = Buffer.from(subject);
      this.subjectCache.set(subject, b);
    }
    return b;
  }
}

const subjectCacheMax = 4096;
const emptyBuffer = Buffer.alloc(0);
