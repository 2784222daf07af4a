// The route transport: a TLS listener, a dialer per --routes entry, and the policy over links: one link
// per peer (deterministic tie-break), self-route detection, redial with backoff, peer-up/-down events.
import type { AddressInfo, Server as NetServer, Socket } from 'node:net';
import type { Server, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { backoffDelayMs } from './backoff.js';
import { systemClock, type Clock, type TimerHandle } from './clock.js';
import type { HelloBody, RouteFrame } from './frame.js';
import { checkHello, type HandshakeConfig, type Refusal, type RefusalCode } from './handshake.js';
import type { RouteIdentity } from './identity.js';
import { Link, type LinkClose, type LinkCounters } from './link.js';
import { routeLimitsDefault, type RouteLimits } from './limits.js';
import { parseRoutes, type RouteAddress } from './routes.js';
import { checkOwnCertificate, createRouteServer, describeSocketError, dialRoute, routeRoleProblem, type RouteTlsOptions } from './tls.js';

export interface RouteTransportOptions {
  readonly clusterName: string;
  readonly serverName: string;
  /** Listen address of the cluster port; port 0 picks an ephemeral port (see `address()`). */
  readonly host: string;
  readonly port: number;
  /**
   * A TCP server already listening (typically on port 0) whose socket the route listener takes over instead of
   * binding host:port: the caller learns the port before any node's --routes is written, without probing for a
   * free one (CONVENTIONS.md §16). The socket closes with the transport; `port` must be its port.
   */
  readonly listener?: NetServer;
  /** Peers to dial: a `--routes` string or parsed addresses. May include this node itself. */
  readonly routes: string | readonly RouteAddress[];
  readonly tls: RouteTlsOptions;
  readonly identity: RouteIdentity;
  /** Route user and password (--cluster-user, --cluster-pass-file); both must match on every node. */
  readonly user: string;
  readonly password: string;
  /** Opaque digest of this node's security posture; every peer must present the same bytes. */
  readonly postureDigest: string | Uint8Array;
  /** N of the Raft meta-group: every peer must agree on it. */
  readonly clusterSize: number;
  /** Cluster incarnation ('' or absent: never recovered): peers with data must present the same (checkHello). */
  readonly incarnation?: string;
  /**
   * Called once a peer has proven its identity key: return a reason (or false) to refuse it, e.g. when
   * the `nodes` bucket binds `name` to another key. Undefined or true accepts.
   */
  readonly verifyPeer?: (name: string, publicKey: Uint8Array) => string | boolean | undefined;
  readonly logger: Logger;
  readonly limits?: Partial<RouteLimits>;
  /** Uniform in [0, 1) for backoff jitter (default Math.random). */
  readonly random?: () => number;
  readonly clock?: Clock;
  readonly onPeerUp?: (peer: PeerInfo) => void;
  readonly onPeerDown?: (peer: PeerInfo, close: LinkClose) => void;
  readonly onFrame?: (peerName: string, frame: RouteFrame) => void;
}

export type PeerState = 'up' | 'connecting' | 'backoff' | 'idle';

/** What /routez shows for a peer or a not-yet-connected route. */
export interface PeerInfo {
  /** Server name; undefined for a route that never completed a handshake. */
  readonly name: string | undefined;
  readonly state: PeerState;
  /** Remote address of the link, or the configured route URL when not connected. */
  readonly address: string;
  readonly direction: 'outbound' | 'inbound' | undefined;
  /** Hex of the peer's Ed25519 identity key. */
  readonly identity: string | undefined;
  readonly rttMs: number | undefined;
  readonly counters: Readonly<LinkCounters>;
  /** Configured route (from --routes) that reaches this peer, if any. */
  readonly route: string | undefined;
  /** Redial attempts since the last established link. */
  readonly attempts: number;
  readonly lastError: { readonly code: string; readonly reason: string } | undefined;
  /** The cluster incarnation the peer presented in its hello ('' when none); set for peers that are up. */
  readonly incarnation?: string;
}

export interface RouteTransport {
  /** Listens on the cluster port and starts dialing every route. */
  start(): Promise<void>;
  /** Stops dialing, refuses every link with `shutdown`, and resolves when every socket is closed. */
  close(): Promise<void>;
  /**
   * What later handshakes present and require: a node that joined a recovered cluster has adopted its N and
   * incarnation and must stop accepting peers as a joiner (N 0 skips the incarnation check). Up links to peers of
   * another incarnation are closed; the others stay.
   */
  updateHandshake(update: { readonly clusterSize: number; readonly incarnation: string }): void;
  /** Bound address of the listener (valid after start()). */
  address(): { host: string; port: number };
  /** Queues a frame to a peer: false when the peer is not up, or a raft frame was dropped (queue full). */
  send(peerName: string, frame: RouteFrame): boolean;
  /** Queues a frame to every up peer; returns how many accepted it. */
  broadcast(frame: RouteFrame): number;
  peers(): PeerInfo[];
  /** Names of peers with an established link. */
  upPeers(): string[];
  /** Open connections in any state (handshaking, up, closing): for /varz and leak checks. */
  linkCount(): number;
}

interface DialTarget {
  readonly route: RouteAddress;
  state: 'idle' | 'connecting' | 'backoff' | 'self';
  link: Link | undefined;
  timer: TimerHandle | undefined;
  attempts: number;
  peerName: string | undefined;
  lastError: Refusal | undefined;
}

const zeroCounters: LinkCounters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0, writes: 0, raftDropped: 0 };

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

export function createRouteTransport(options: RouteTransportOptions): RouteTransport {
  return new Transport(options);
}

class Transport implements RouteTransport {
  readonly #options: RouteTransportOptions;
  readonly #limits: RouteLimits;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #log: Logger;
  #config: HandshakeConfig;
  readonly #ownKey: string;
  readonly #targets: DialTarget[];
  readonly #links = new Set<Link>();
  readonly #up = new Map<string, Link>();
  #server: Server | undefined;
  #state: 'new' | 'running' | 'closing' | 'closed' = 'new';

  constructor(options: RouteTransportOptions) {
    this.#options = options;
    this.#limits = { ...routeLimitsDefault, ...options.limits };
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#log = options.logger.child({ component: 'routes', server: options.serverName });
    const posture = typeof options.postureDigest === 'string' ? Buffer.from(options.postureDigest) : options.postureDigest;
    this.#config = {
      clusterName: options.clusterName, serverName: options.serverName, identity: options.identity,
      clusterSize: options.clusterSize, posture, user: options.user, password: options.password,
      ...(options.incarnation ? { incarnation: options.incarnation } : {}),
    };
    if (options.identity.publicKey.length !== 32) throw new TypeError('identity.publicKey must be a raw 32-byte Ed25519 key');
    this.#ownKey = hex(options.identity.publicKey);
    const routes = typeof options.routes === 'string' ? parseRoutes(options.routes) : options.routes;
    this.#targets = routes.map((route) => ({
      route, state: 'idle', link: undefined, timer: undefined, attempts: 0, peerName: undefined, lastError: undefined,
    }));
  }

  async start(): Promise<void> {
    if (this.#state !== 'new') throw new Error('route transport already started');
    const server = createRouteServer(this.#options.tls, this.#limits.handshakeTimeoutMs);
    this.#server = server;
    // Reading the address on the raw TCP socket caches it there: a socket whose certificate failed verification is
    // destroyed before 'tlsClientError', and the TLS socket then has no address left to log ("undefined:undefined").
    server.on('connection', (raw: Socket) => void raw.remoteAddress);
    server.on('secureConnection', (socket: TLSSocket) => this.#accept(socket));
    server.on('tlsClientError', (error: Error, socket: TLSSocket) => {
      // Node destroys a socket whose certificate failed verification without an alert, so the error seen
      // here is a bare ECONNRESET; the verify result itself is in authorizationError.
      const verifyCode = (socket as TLSSocket & { authorizationError?: string }).authorizationError;
      const refusal = describeSocketError(verifyCode
        ? Object.assign(new Error(`peer certificate refused: ${verifyCode}`), { code: verifyCode }) : error);
      this.#log.warn({ address: peerAddress(socket), direction: 'inbound', ...refusal }, 'route refused');
      socket.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const listening = (): void => { server.off('error', reject); resolve(); };
      const pre = this.#options.listener;
      if (pre === undefined) server.listen(this.#options.port, this.#options.host, listening);
      // Node's listen(handle): the TLS server accepts on the bound socket of `pre`.
      else if (!pre.listening) reject(new Error('the route listener handed over is not listening (closed already, or never bound)'));
      else if ((pre.address() as AddressInfo).port !== this.#options.port) {
        reject(new Error(`the route listener handed over listens on port ${(pre.address() as AddressInfo).port}, not the cluster port ${this.#options.port}`));
      } else server.listen(pre, listening);
    });
    server.on('error', (error) => this.#log.error({ err: error }, 'route listener error'));
    this.#state = 'running';
    const problem = checkOwnCertificate(this.#options.tls);
    if (problem) this.#log.warn({ code: 'tls', reason: problem }, 'route certificate will be refused by peers');
    const { host, port } = this.address();
    this.#log.info({ host, port, routes: this.#targets.map((t) => t.route.url) }, 'route listener started');
    for (const target of this.#targets) this.#dial(target);
  }

  address(): { host: string; port: number } {
    const info = this.#server?.address() as AddressInfo | null | undefined;
    if (!info) throw new Error('route transport is not listening');
    return { host: info.address, port: info.port };
  }

  updateHandshake(update: { readonly clusterSize: number; readonly incarnation: string }): void {
    // A new object: a link keeps the config it was created with.
    this.#config = { ...this.#config, clusterSize: update.clusterSize, ...(update.incarnation !== '' ? { incarnation: update.incarnation } : {}) };
    // Links this node accepted as a joiner from peers of another incarnation (an old member dialing the address this
    // node took over) would be refused now: close them, or their hellos and Raft traffic would still reach the node.
    for (const link of [...this.#up.values()]) {
      const refusal = link.peer === undefined ? undefined : checkHello(this.#config, link.peer);
      if (refusal?.code === 'cluster_incarnation') link.close(refusal.code, refusal.reason);
    }
  }

  async close(): Promise<void> {
    if (this.#state === 'closed' || this.#state === 'closing') return;
    const wasRunning = this.#state === 'running';
    this.#state = 'closing';
    for (const target of this.#targets) {
      this.#clock.clearTimeout(target.timer);
      target.timer = undefined;
    }
    const serverClosed = wasRunning && this.#server
      ? new Promise<void>((resolve) => this.#server!.close(() => resolve()))
      : Promise.resolve();
    const links = [...this.#links];
    for (const link of links) link.close('shutdown', `${this.#options.serverName} is shutting down`);
    await Promise.all([serverClosed, ...links.map((l) => l.done)]);
    this.#state = 'closed';
  }

  send(peerName: string, frame: RouteFrame): boolean {
    const link = this.#up.get(peerName);
    return link !== undefined && link.send(frame) === 'queued';
  }

  broadcast(frame: RouteFrame): number {
    let n = 0;
    for (const link of [...this.#up.values()]) if (link.send(frame) === 'queued') n++;
    return n;
  }

  upPeers(): string[] {
    return [...this.#up.keys()];
  }

  linkCount(): number {
    return this.#links.size;
  }

  peers(): PeerInfo[] {
    const out: PeerInfo[] = [];
    for (const [name, link] of this.#up) {
      const target = this.#targets.find((t) => t.peerName === name && t.state !== 'self');
      out.push({
        name, state: 'up', address: link.address, direction: link.outbound ? 'outbound' : 'inbound',
        identity: hex(link.peer!.identity), rttMs: link.rttMs, counters: { ...link.counters },
        route: target?.route.url, attempts: 0, lastError: undefined, incarnation: link.peer!.incarnation ?? '',
      });
    }
    for (const target of this.#targets) {
      if (target.state === 'self' || (target.peerName !== undefined && this.#up.has(target.peerName))) continue;
      out.push({
        name: target.peerName, state: target.state === 'connecting' ? 'connecting' : target.state,
        address: target.route.url, direction: 'outbound', identity: undefined, rttMs: undefined,
        counters: { ...zeroCounters }, route: target.route.url, attempts: target.attempts,
        lastError: target.lastError && { code: target.lastError.code, reason: target.lastError.reason },
      });
    }
    return out;
  }

  #accept(socket: TLSSocket): void {
    if (this.#state !== 'running') {
      socket.destroy();
      return;
    }
    const role = routeRoleProblem(socket.getPeerCertificate());
    if (role !== undefined) {
      this.#log.warn({ address: peerAddress(socket), direction: 'inbound', code: 'tls', reason: role }, 'route refused');
      socket.destroy();
      return;
    }
    this.#track(new Link(socket, false, `${socket.remoteAddress}:${socket.remotePort}`, this.#config, this.#limits,
      this.#clock, this.#log, this.#linkEvents(undefined)));
  }

  #dial(target: DialTarget): void {
    if (this.#state !== 'running' || target.state === 'self') return;
    target.timer = undefined;
    target.state = 'connecting';
    const socket = dialRoute(this.#options.tls, target.route.host, target.route.port);
    const link = new Link(socket, true, target.route.url, this.#config, this.#limits, this.#clock, this.#log,
      this.#linkEvents(target));
    target.link = link;
    this.#track(link);
  }

  #track(link: Link): void {
    this.#links.add(link);
    void link.done.then(() => this.#links.delete(link));
  }

  #linkEvents(target: DialTarget | undefined) {
    return {
      authenticated: (link: Link, peer: HelloBody) => {
        // The name a peer claims is believed only once the whole handshake passed (its key proven, this node's
        // checks passed): a refused peer must not leave its claimed name on the route it came in by.
        // (A link that lost the tie-break to an equally valid one is that very peer: its route keeps the name, so
        // it redials when the winning link goes down.)
        const refusal = this.#authorize(link, peer, target);
        if (target && (refusal === undefined || refusal.code === 'duplicate')) target.peerName = peer.name;
        return refusal;
      },
      up: (link: Link) => this.#onUp(link, target),
      frame: (link: Link, frame: RouteFrame) => this.#call('onFrame', () => this.#options.onFrame?.(link.peerName!, frame)),
      closed: (link: Link, close: LinkClose) => this.#onClosed(link, close, target),
    };
  }

  /** Policy checks once the peer proved its key: self-route, identity binding, one link per pair. */
  #authorize(link: Link, peer: HelloBody, target: DialTarget | undefined): Refusal | undefined {
    const key = hex(peer.identity);
    if (key === this.#ownKey) {
      // Proven possession of our own key: this is a --routes entry pointing at ourselves.
      if (peer.name !== this.#options.serverName) {
        return { code: 'identity', reason: `peer "${peer.name}" presents the identity key of "${this.#options.serverName}"` };
      }
      if (target) {
        target.state = 'self';
        this.#log.info({ route: target.route.url }, 'route points at this node itself; dropped');
      }
      return { code: 'self', reason: 'route to self' };
    }
    if (peer.name === this.#options.serverName) {
      return { code: 'identity', reason: `peer claims this node's name "${peer.name}" with another identity key ${key.slice(0, 16)}` };
    }
    const verdict = this.#options.verifyPeer?.(peer.name, peer.identity);
    if (verdict === false || typeof verdict === 'string') {
      return { code: 'identity', reason: typeof verdict === 'string' ? verdict
        : `peer "${peer.name}" with identity key ${key.slice(0, 16)} refused by this node's peer check` };
    }
    const existing = this.#up.get(peer.name);
    if (existing === undefined) return undefined;
    if (hex(existing.peer!.identity) !== key) {
      return { code: 'identity', reason: `"${peer.name}" is already connected with identity key ${hex(existing.peer!.identity).slice(0, 16)}, not ${key.slice(0, 16)}` };
    }
    // Both nodes dialed each other (or one node dialed twice): both sides keep the link dialed by the
    // lexically smaller server name, then by the smaller dialer nonce, so they agree without talking.
    if (this.#prefer(link, existing)) {
      existing.close('duplicate', `duplicate route to "${peer.name}": keeping the one dialed by ${link.dialerHello!.name}`);
      return undefined;
    }
    return { code: 'duplicate', reason: `duplicate route to "${peer.name}": keeping the one dialed by ${existing.dialerHello!.name}` };
  }

  #prefer(candidate: Link, existing: Link): boolean {
    const a = candidate.dialerHello!;
    const b = existing.dialerHello!;
    if (a.name !== b.name) return a.name < b.name;
    return Buffer.compare(Buffer.from(a.nonce), Buffer.from(b.nonce)) < 0;
  }

  #onUp(link: Link, target: DialTarget | undefined): void {
    const name = link.peerName!;
    this.#up.set(name, link);
    if (target) {
      target.attempts = 0;
      target.lastError = undefined;
    }
    this.#log.info({ peer: name, address: link.address, direction: link.outbound ? 'outbound' : 'inbound' }, 'route up');
    const info = this.peers().find((p) => p.name === name && p.state === 'up')!;
    this.#call('onPeerUp', () => this.#options.onPeerUp?.(info));
  }

  #onClosed(link: Link, close: LinkClose, target: DialTarget | undefined): void {
    const name = link.peerName;
    // A link closed as the loser of a tie-break is replaced, not lost: nothing redials for it.
    const replaced = close.code === 'duplicate';
    if (name !== undefined && this.#up.get(name) === link) {
      this.#up.delete(name);
      const info: PeerInfo = {
        name, state: 'idle', address: link.address, direction: link.outbound ? 'outbound' : 'inbound',
        identity: hex(link.peer!.identity), rttMs: link.rttMs, counters: { ...link.counters },
        route: target?.route.url, attempts: 0, lastError: { code: close.code, reason: close.reason },
      };
      this.#call('onPeerDown', () => this.#options.onPeerDown?.(info, close));
      // Every route known to reach this peer redials; the peer may be listed under several addresses.
      for (const t of replaced ? [] : this.#targets) {
        if (t !== target && t.peerName === name && t.state === 'idle') this.#scheduleRedial(t, close);
      }
    }
    if (target && target.link === link) {
      target.link = undefined;
      if (target.state === 'self') return;
      target.state = 'idle';
      // A loser of the tie-break stays idle while the winning link serves the peer; when that one goes
      // down, the loop above redials.
      if (replaced || (name !== undefined && this.#up.has(name))) return;
      this.#scheduleRedial(target, close);
    }
  }

  #scheduleRedial(target: DialTarget, cause: Refusal): void {
    if (this.#state !== 'running' || target.state !== 'idle') return;
    target.attempts++;
    target.lastError = cause.code === 'shutdown' || cause.code === 'duplicate' ? target.lastError : cause;
    const delayMs = backoffDelayMs(target.attempts, {
      baseMs: this.#limits.backoffBaseMs, maxMs: this.#limits.backoffMaxMs, random: this.#random,
    });
    target.state = 'backoff';
    this.#log.debug({ route: target.route.url, attempt: target.attempts, delayMs }, 'route redial scheduled');
    target.timer = this.#clock.setTimeout(() => this.#dial(target), delayMs);
  }

  #call(what: string, fn: () => void): void {
    try {
      fn();
    } catch (error) {
      // An owner's bug must not tear down the socket machinery; it is logged loudly instead.
      this.#log.error({ err: error, callback: what }, 'route callback threw');
    }
  }
}

export type { RefusalCode };

/** `host:port` of a TLS socket's peer, also after the socket was destroyed (see the 'connection' listener). */
function peerAddress(socket: TLSSocket): string {
  const own = socket.remoteAddress;
  if (own !== undefined) return `${own}:${socket.remotePort}`;
  // Node keeps the wrapped TCP socket as `_parent`; its address was cached when the connection arrived.
  const raw = (socket as TLSSocket & { _parent?: Socket })._parent;
  return raw?.remoteAddress !== undefined ? `${raw.remoteAddress}:${raw.remotePort}` : 'unknown (closed before its address was read)';
}
