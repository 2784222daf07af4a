// The NATS server: listeners (TCP, optional TLS, optional WebSocket), the shared subject trie, message routing
// and the once-per-turn outbound flush. Protocol handling per connection lives in client.ts.
import net from 'node:net';
import tls from 'node:tls';
import type { IncomingMessage } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { WebSocket, WebSocketServer } from 'ws';
import type { Logger } from 'pino';
import type { BusAuthenticator, Principal } from '../auth/types.js';
import type { NatsLimits, NatsServer, NatsServerOptions, NatsServerStats } from './api.js';
import { Client, closeReason, type Subscription } from './client.js';
import { newNonce, newServerId } from './nkey.js';
import { PubArgs } from './parser.js';
import { encodedErrors } from './protocol_errors.js';
import { Sublist } from './sublist.js';
import { SocketTransport, WebSocketTransport, type ClientTransport } from './transport.js';

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
 * With TLS, a client may start the handshake before reading INFO (nats-server 2.10 handshake_first). We wait this
 * long for a first byte before sending INFO in plain text (the 2.9 model); a ClientHello (0x16) in that window
 * means TLS first, and INFO then goes inside TLS.
 */
export const handshakeFirstWaitMs = 100;

/**
 * TLS handshakes this node runs at once; more wait (socket paused, the ClientHello left in the kernel) for
 * up to `tlsQueueWaitMs`. The TLS timeout (nats-server's, 2 s) then times the handshake itself, from the
 * moment it starts, not this node's queue: in a storm of 500 handshakes on one event loop the queue is
 * seconds long, and timing it out cut 109 of 500 clients (EPIPE) that were only waiting for this node's CPU.
 */
const tlsHandshakesMax = 16;
const tlsQueueWaitMs = 30_000;

/** A subscription interest change: delta +1 on SUB, -1 on UNSUB/auto-unsubscribe/close. */
export interface InterestChange {
  readonly subject: string;
  /** undefined for a plain subscription. */
  readonly queue: string | undefined;
  readonly delta: 1 | -1;
}

/** A message published by a local client, offered to the cluster layer. Views are valid only during the call. */
export interface LocalPublish {
  readonly subject: string;
  readonly reply: string | undefined;
  /** The header block (empty when the message has none). */
  readonly headers: Uint8Array;
  readonly payload: Uint8Array;
  /**
   * Queue groups of this subject with local members that can take the message, and how many (set only when there
   * are some). A queue group delivers each message once cluster-wide, chosen over every node's members (as
   * nats-server 2.9 does, weighted by member count), so the forwarder decides first: it adds a group to
   * `remoteQueues` when it sent the message to a peer to serve that group, and the server then skips its local
   * members; every other group here goes to one local member.
   */
  readonly localQueues?: ReadonlyMap<string, number>;
  readonly remoteQueues?: Set<string>;
  /**
   * Back-pressure from the forwarder: set stallMs > 0 when a route this message was queued on is over its
   * high-water mark, and the server stops reading the publisher for that long (as it does for a local slow
   * subscriber). Reset by the server before each call.
   */
  readonly feedback?: PublishFeedback;
  /**
   * Who published it: the connection's authenticated principal; undefined when bus auth is off. In-process
   * services behind the forwarder (the KV API) use it for what permissions cannot say (control-plane buckets
   * readable by admin principals only).
   */
  readonly principal?: Principal;
}

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

export interface PublishFeedback {
  stallMs: number;
}

/** A message that arrived from a route, to be delivered to local subscribers only (never forwarded again). */
export interface RouteMessage {
  readonly subject: string;
  readonly reply?: string;
  readonly headers?: Uint8Array;
  readonly payload: Uint8Array;
  /** Queue groups this node must serve (one local member each); plain subscribers always get a copy. */
  readonly queues?: readonly string[];
  /**
   * Write to the subscribers' sockets once the current run of callbacks and microtasks is over instead of at the
   * event loop's next flush: for replies an in-server service (admin API, KV API) computed asynchronously. Waiting
   * for the check phase cost a sequential admin write about 0.9 ms (bench:cluster, A/B over five runs each);
   * replies produced together (one Raft batch applied) share the write.
   */
  readonly flushNow?: boolean;
}

/**
 * Hooks for the future route layer (src/cluster): no routes here, only the two seams they need.
 *  - interest(): the current local interest, for the initial dump to a new peer; then onInterest() for changes.
 *  - setForwarder(): called for every locally published message after local delivery; returns true when at least
 *    one peer had interest (so no_responders is not sent). Must copy what it keeps.
 *  - deliverFromRoute(): local delivery of a routed message; returns the number of local deliveries.
 */
export interface NatsClusterPort {
  interest(): { subject: string; queue: string | undefined; count: number }[];
  onInterest(listener: (change: InterestChange) => void): () => void;
  setForwarder(forward: ((msg: LocalPublish) => boolean) | undefined): void;
  deliverFromRoute(msg: RouteMessage): number;
  /**
   * Push delivery as nats-server's JetStream consumers do it: delivers `msg` to the local plain subscribers whose
   * subject matches `routeSubject` (a consumer's deliver subject) while writing `msg.subject` (the stream
   * subject, `$KV.b.k`) on the MSG/HMSG line; queue subscribers are not served. Returns the number of deliveries.
   * Optional so that wrappers of the port may omit it; the server's own port always has it.
   */
  deliverAs?(routeSubject: string, msg: RouteMessage): number;
}

/** One open client connection, for /connz. */
export interface NatsConnectionInfo {
  readonly cid: number;
  readonly kind: 'tcp' | 'tls' | 'ws';
  readonly ip: string;
  readonly port: number;
  /** ISO time of accept. */
  readonly start: string;
  readonly subscriptions: number;
  readonly name: string | undefined;
  readonly lang: string | undefined;
  readonly version: string | undefined;
  /** Authenticated principal name (never a secret), when bus auth is on. */
  readonly user: string | undefined;
  readonly inMsgs: number;
  readonly outMsgs: number;
  readonly inBytes: number;
  readonly outBytes: number;
  readonly pendingBytes: number;
}

/** What createNatsServer returns: the NatsServer API plus the cluster seams and a connection listing. */
export interface NatsServerWithCluster extends NatsServer {
  readonly cluster: NatsClusterPort;
  connections(): NatsConnectionInfo[];
  /**
   * Sends an asynchronous INFO (with connect_urls as options.connectUrls() now returns them) to every client that
   * sent CONNECT protocol 1, as nats-server does when routes come and go (reference §1.13).
   */
  announceConnectUrls(): void;
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

class NatsServerImpl implements NatsServerWithCluster {
  readonly serverId: string;
  readonly serverName: string;
  readonly cluster: NatsClusterPort;
  private readonly core: ServerCore;
  private readonly secureContext: tls.SecureContext | undefined;
  private tcp: net.Server | null = null;
  private wss: WebSocketServer | null = null;
  /** The HTTPS server under a wss:// listener (TLS configured), null for plain ws:// or no WebSocket. */
  private wsHttps: HttpsServer | null = null;
  private boundWsPort: number | undefined;
  private readonly sockets = new Set<net.Socket>();
  private nextCid = 1;
  private handshakes = 0;
  private readonly handshakeQueue: Array<() => void> = [];
  private closing = false;
  private draining = false;
  private unsubscribeAuth: (() => void) | undefined;

  constructor(private readonly options: NatsServerOptions) {
    this.serverId = newServerId();
    this.serverName = options.serverName ?? this.serverId;
    this.core = new ServerCore(this.serverId, this.serverName, options, options.logger, options.auth);
    this.secureContext = options.tls === undefined ? undefined
      : tls.createSecureContext({ cert: options.tls.cert, key: options.tls.key, ca: options.tls.ca });
    const core = this.core;
    this.cluster = {
      interest: () => {
        const counts = new Map<string, { subject: string; queue: string | undefined; count: number }>();
        for (const c of core.clients.values()) {
          for (const s of c.subs.values()) {
            const key = `${s.subject} ${s.queue ?? ''}`;
            const e = counts.get(key);
            if (e === undefined) counts.set(key, { subject: s.subject, queue: s.queue, count: 1 });
            else e.count++;
          }
        }
        return [...counts.values()];
      },
      onInterest: (listener) => {
        core.interestListeners.add(listener);
        return () => void core.interestListeners.delete(listener);
      },
      setForwarder: (forward) => {
        core.forwarder = forward;
      },
      deliverFromRoute: (msg) => core.deliverFromRoute(msg),
      deliverAs: (routeSubject, msg) => core.deliverAs(routeSubject, msg),
    };
  }

  get port(): number {
    return this.core.port;
  }

  get wsPort(): number | undefined {
    return this.boundWsPort;
  }

  get wsTls(): boolean {
    return this.wsHttps !== null;
  }

  async start(): Promise<void> {
    const tcp = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.onSocket(socket));
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(this.options.port, this.options.host, () => {
        tcp.off('error', reject);
        resolve();
      });
    });
    tcp.on('error', (err) => this.core.logger.error({ err }, 'NATS listener error'));
    this.tcp = tcp;
    this.core.port = (tcp.address() as net.AddressInfo).port;
    if (this.options.wsPort !== undefined) await this.startWebSocket(this.options.wsPort);
    if (this.options.auth !== undefined) {
      this.unsubscribeAuth = this.options.auth.onChange(() => {
        for (const c of [...this.core.clients.values()]) c.revalidate();
      });
    }
    this.core.logger.info({ port: this.core.port, wsPort: this.boundWsPort, serverId: this.serverId },
      'NATS client port listening');
  }

  private async startWebSocket(port: number): Promise<void> {
    const lim = this.core.limits;
    // Loaded only with --ws-port: most nodes never serve WebSocket clients, and every module costs boot time.
    const { WebSocketServer } = await import('ws');
    const wsOptions = { perMessageDeflate: false, maxPayload: lim.maxPayloadBytes + lim.maxControlLineBytes + 1024 };
    let wss: WebSocketServer;
    if (this.options.tls !== undefined) {
      // With a client certificate the WebSocket port speaks wss:// only, with the same certificate (and client-CA
      // rule) as the client port: a plain ws:// port beside a TLS client port carried passwords in clear text
      // while the log announced wss://. A plain HTTP request on it fails the TLS handshake.
      const { createServer } = await import('node:https');
      const ca = this.options.tls.ca;
      const https = createServer({
        cert: this.options.tls.cert, key: this.options.tls.key, ...(ca !== undefined ? { ca, requestCert: true, rejectUnauthorized: true } : {}),
      });
      https.on('tlsClientError', (err, socket) => {
        this.core.logger.debug({ err: err.message, address: `${socket.remoteAddress}:${socket.remotePort}` }, 'WebSocket TLS handshake failed');
      });
      wss = new WebSocketServer({ ...wsOptions, server: https });
      await new Promise<void>((resolve, reject) => {
        https.once('error', reject);
        https.listen(port, this.options.host, () => {
          https.off('error', reject);
          resolve();
        });
      });
      this.wsHttps = https;
    } else {
      wss = new WebSocketServer({ ...wsOptions, host: this.options.host, port });
      await new Promise<void>((resolve, reject) => {
        wss.once('listening', resolve);
        wss.once('error', reject);
      });
    }
    wss.on('connection', (ws: WebSocket, req: IncomingMessage) => {
      if (this.closing || this.draining) return void ws.terminate();
      req.socket.setNoDelay(true);
      this.startClient(new WebSocketTransport(ws, req.socket, this.wsHttps !== null), false, undefined);
    });
    this.wss = wss;
    this.boundWsPort = ((this.wsHttps ?? wss).address() as net.AddressInfo).port;
  }

  async drainClients(quietMs: number, deadlineMs: number, answered?: Promise<void>): Promise<void> {
    if (this.closing) return;
    this.draining = true;
    this.core.draining = true;
    const end = Date.now() + deadlineMs;
    await answered;
    const seen = new Map<Client, { bytes: number; at: number }>();
    while (this.core.clients.size > 0) {
      const now = Date.now();
      for (const c of [...this.core.clients.values()]) {
        const last = seen.get(c);
        if (last === undefined || last.bytes !== c.inBytes) seen.set(c, { bytes: c.inBytes, at: now });
        else if (now - last.at >= quietMs || now >= end) c.close(closeReason.serverShutdown, true);
      }
      if (now >= end) break;
      await new Promise((r) => setTimeout(r, Math.max(5, Math.min(20, quietMs / 2))));
    }
  }

  private onSocket(socket: net.Socket): void {
    if (this.closing || this.draining) return void socket.destroy();
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    if (this.secureContext === undefined) {
      this.startClient(new SocketTransport(socket, false), false, undefined);
      return;
    }
    this.startTls(socket, this.secureContext);
  }

  private startTls(socket: net.Socket, context: tls.SecureContext): void {
    const cid = this.nextCid++;
    const nonce = this.options.auth?.nonceRequired ? newNonce() : undefined;
    let infoSent = false;
    let firstByteSeen = false;
    // No deadline until INFO is out (or a ClientHello came first): under a storm this node may send INFO
    // late, and that delay is its own, not the client's (in bench:storm 4,057 of 5,000 clients saw their
    // socket closed before INFO while the deadline ran from accept).
    let deadline: NodeJS.Timeout | undefined;
    const fallback = setTimeout(() => {
      // Decide after this turn's poll phase: if the event loop was blocked, a ClientHello may already be waiting
      // in the kernel, and the timers phase runs before the read that would deliver it.
      setImmediate(() => {
        if (firstByteSeen || socket.destroyed) return;
        // 2.9 model: INFO in plain text, then the client upgrades.
        infoSent = true;
        socket.write(this.core.infoLine({ cid, nonce, transport: { kind: 'tls', remoteAddress: socket.remoteAddress ?? '' } }));
        // From here the wait is the client's (read INFO, send its ClientHello), however late a busy loop sent it.
        deadline = setTimeout(() => socket.destroy(), this.core.limits.tlsTimeoutMs);
        deadline.unref();
      });
    }, handshakeFirstWaitMs);
    socket.once('data', (chunk: Buffer) => {
      firstByteSeen = true;
      clearTimeout(fallback);
      socket.pause();
      socket.unshift(chunk);
      clearTimeout(deadline);
      if (chunk[0] !== 0x16) {
        // Plain text where a TLS handshake must come: nats-server's handshake fails and the socket closes.
        socket.destroy();
        return;
      }
      this.admitHandshake(socket, () => {
        let released = false;
        // Every way a handshake can end gives its slot back (idempotent): a slot lost here would queue every
        // later TLS client behind it.
        const release = (): void => {
          if (released) return;
          released = true;
          clearTimeout(handshakeDeadline);
          this.handshakeDone();
        };
        const handshakeDeadline = setTimeout(() => {
          release();
          socket.destroy();
        }, this.core.limits.tlsTimeoutMs);
        handshakeDeadline.unref();
        const ca = this.options.tls?.ca;
        const secure = new tls.TLSSocket(socket, {
          isServer: true, secureContext: context, requestCert: ca !== undefined, rejectUnauthorized: ca !== undefined,
        });
        socket.once('close', release);
        secure.once('close', release);
        secure.on('error', () => {
          release();
          socket.destroy();
        });
        secure.once('secure', () => {
          release();
          secure.pause();
          this.startClient(new SocketTransport(secure, true), infoSent, { cid, nonce });
        });
      });
    });
    socket.resume();
  }

  /** Runs `start` now if fewer than tlsHandshakesMax handshakes are running, else when one ends (or drops the socket after tlsQueueWaitMs). */
  private admitHandshake(socket: net.Socket, start: () => void): void {
    if (this.handshakes < tlsHandshakesMax) {
      this.handshakes++;
      start();
      return;
    }
    const waited = setTimeout(() => {
      const i = this.handshakeQueue.indexOf(run);
      if (i >= 0) this.handshakeQueue.splice(i, 1);
      socket.destroy();
    }, tlsQueueWaitMs);
    waited.unref();
    const run = (): void => {
      clearTimeout(waited);
      if (socket.destroyed) return this.handshakeDone();
      start();
    };
    socket.once('close', () => {
      const i = this.handshakeQueue.indexOf(run);
      if (i >= 0) {
        this.handshakeQueue.splice(i, 1);
        clearTimeout(waited);
      }
    });
    this.handshakeQueue.push(run);
  }

  /** A handshake ended (secure, failed or socket gone): the next queued one takes its place. */
  private handshakeDone(): void {
    const next = this.handshakeQueue.shift();
    if (next === undefined) this.handshakes--;
    else next();
  }

  private startClient(transport: ClientTransport, infoSent: boolean, ids: { cid: number; nonce: string | undefined } | undefined): void {
    const core = this.core;
    const cid = ids?.cid ?? this.nextCid++;
    const nonce = ids !== undefined ? ids.nonce : this.options.auth?.nonceRequired ? newNonce() : undefined;
    const client = new Client(core, cid, transport, nonce);
    core.totalConnections++;
    if (core.clients.size >= core.limits.maxConnections) {
      // nats-server sends INFO, then the -ERR, then closes (reference §1.8).
      if (!infoSent) transport.write(core.infoLine(client));
      transport.write(encodedErrors.maxConnections);
      transport.end();
      return;
    }
    core.clients.set(cid, client);
    client.start(infoSent);
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.unsubscribeAuth?.();
    const tcpClosed = this.tcp === null ? Promise.resolve()
      : new Promise<void>((resolve) => this.tcp!.close(() => resolve()));
    const wsClosed = this.wss === null ? Promise.resolve()
      : new Promise<void>((resolve) => this.wss!.close(() => resolve()));
    const httpsClosed = this.wsHttps === null ? Promise.resolve()
      : new Promise<void>((resolve) => this.wsHttps!.close(() => resolve()));
    for (const c of [...this.core.clients.values()]) c.close(closeReason.serverShutdown, true);
    // Give peers a moment to read the last bytes and FIN; then cut whatever is left.
    const graceEnd = Date.now() + 1000;
    while (this.sockets.size > 0 && Date.now() < graceEnd) await new Promise((r) => setTimeout(r, 10));
    for (const s of this.sockets) s.destroy();
    for (const ws of this.wss?.clients ?? []) ws.terminate();
    this.wsHttps?.closeAllConnections();
    await Promise.all([tcpClosed, wsClosed, httpsClosed]);
    this.core.logger.info({ port: this.core.port }, 'NATS server closed');
  }

  announceConnectUrls(): void {
    for (const c of this.core.clients.values()) {
      if (c.connectReceived && c.opts.protocol >= 1) c.append(this.core.infoLine(c));
    }
  }

  connections(): NatsConnectionInfo[] {
    return [...this.core.clients.values()].map((c) => ({
      cid: c.cid,
      kind: c.transport.kind,
      ip: c.transport.remoteAddress,
      port: c.transport.remotePort,
      start: new Date(c.startedAt).toISOString(),
      subscriptions: c.subs.size,
      name: c.opts.name,
      lang: c.opts.lang,
      version: c.opts.version,
      user: c.principal?.name,
      inMsgs: c.inMsgs,
      outMsgs: c.outMsgs,
      inBytes: c.inBytes,
      outBytes: c.outBytes,
      pendingBytes: c.pendingBytes(),
    }));
  }

  stats(): NatsServerStats {
    const c = this.core;
    return {
      connections: c.clients.size,
      totalConnections: c.totalConnections,
      subscriptions: c.sublist.size,
      inMsgs: c.inMsgs,
      inBytes: c.inBytes,
      outMsgs: c.outMsgs,
      outBytes: c.outBytes,
      slowConsumers: c.slowConsumers,
    };
  }
}

export function createNatsServer(options: NatsServerOptions): NatsServerWithCluster {
  return new NatsServerImpl(options);
}
