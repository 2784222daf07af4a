// The NATS server: listeners (TCP, optional TLS, optional WebSocket) and the life of a connection around its
// protocol (accept, TLS admission, drain, close). The state the connections share and message routing live in
// server_core.ts, the protocol of one connection in client.ts, the seams to the rest of the node in cluster_port.ts.
import net from 'node:net';
import tls from 'node:tls';
import type { IncomingMessage } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { WebSocket, WebSocketServer } from 'ws';
import type { NatsServer, NatsServerOptions, NatsServerStats } from './api.js';
import { Client, closeReason } from './client.js';
import { newNonce, newServerId } from './nkey.js';
import { encodedErrors } from './protocol_errors.js';
import { SocketTransport, WebSocketTransport, type ClientTransport } from './transport.js';
import type { NatsClusterPort } from './cluster_port.js';
import { ServerCore } from './server_core.js';

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
