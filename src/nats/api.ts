// The public surface of the NATS server that the rest of src/ (CLI, HTTP, node wiring) programs against.
import type { Logger } from 'pino';
import type { BusAuthenticator } from '../auth/types.js';

export interface NatsServerOptions {
  /** Address to bind the client port (and the WebSocket port). */
  readonly host: string;
  /** 0 picks an ephemeral port; read the real one from `NatsServer.port` after start(). */
  readonly port: number;
  readonly serverName?: string;
  /** PEM contents (not paths). When set, INFO says tls_required and every client must use TLS. */
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca?: string };
  /** WebSocket listener; undefined = off. */
  readonly wsPort?: number;
  /** Undefined = bus auth off (everyone allowed). */
  readonly auth?: BusAuthenticator;
  readonly logger: Logger;
  readonly limits?: Partial<NatsLimits>;
  /** Client URLs of the other cluster members, for INFO connect_urls. */
  readonly connectUrls?: () => readonly string[];
  /** INFO says `"jetstream": true` (set when the KV API, src/kv, answers `$JS.API.>` on this server). */
  readonly jetstream?: boolean;
}

export interface NatsLimits {
  maxPayloadBytes: number;        // default 1 MiB
  maxControlLineBytes: number;    // default 4096
  maxPendingBytes: number;        // default 64 MiB: over it, a slow consumer is closed
  maxConnections: number;         // default 65536
  maxSubscriptions: number;       // default 10000 per connection; 0 = unlimited
  pingIntervalMs: number;         // default 120000
  pingMax: number;                // default 2
  authTimeoutMs: number;          // default 2000
  tlsTimeoutMs: number;           // default 2000
}

export interface NatsServerStats {
  readonly connections: number;
  readonly totalConnections: number;
  readonly subscriptions: number;
  readonly inMsgs: number;
  readonly outMsgs: number;
  readonly inBytes: number;
  readonly outBytes: number;
  readonly slowConsumers: number;
}

export interface NatsServer {
  readonly serverId: string;
  readonly serverName: string;
  /** Bound client port (valid after start()). */
  readonly port: number;
  readonly wsPort: number | undefined;
  /** The WebSocket port speaks wss:// (TLS configured); false for ws:// or no WebSocket. */
  readonly wsTls: boolean;
  start(): Promise<void>;
  /**
   * A graceful stop's client drain: new connections are refused (clients go to another node), and each
   * client is closed (flushed) once nothing has come from it for `quietMs`, everyone at `deadlineMs`. A
   * request a client sent is either read and answered before its connection closes, or, if it is still
   * in the socket at close, lost: closing a connection in the middle of a burst would lose it for sure, so
   * a quiet moment is waited for, and only once `answered` (the requests the node already took) resolves. From
   * the call on, a request nobody takes gets its 503 and then the connection closes, so the client's retry
   * goes to another node. close() follows.
   */
  drainClients(quietMs: number, deadlineMs: number, answered?: Promise<void>): Promise<void>;
  /** Stops accepting, flushes and closes every client, then resolves. */
  close(): Promise<void>;
  stats(): NatsServerStats;
}
