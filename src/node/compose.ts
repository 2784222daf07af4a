// The composition root of a membershipd node (CONVENTIONS.md §18): one NATS server (src/nats) and one HTTP port
// (src/http), plus, with cluster flags, the cluster node, service presence, the control plane and the KV API,
// wired together and stopped in order. Both `membershipd serve` (src/cli/serve.ts) and the embeddable library
// (src/library) call composeNode; neither wires a node of its own.
import { MembershipdError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ServeConfig } from '../config/index.js';
import { createNatsServer, type NatsServerWithCluster } from '../nats/index.js';
import type { NatsServer, NatsServerStats } from '../nats/api.js';
import type { BusAuthenticator, PrincipalSource } from '../auth/index.js';
import { createHttpServer, processMetricsText, processVarz, startProcessMetrics, statusPageEndpoints, type HttpServer } from '../http/index.js';
import { controlBuckets, createServiceSeam, redactControlValue, singleNodeOptions, startControlPlane, wantsSingleNodeKv, type ControlPlane, type KvPrincipalSource } from '../control/index.js';
import { attachKvApi, redactedBackend, type KvApi, type KvServerPort } from '../kv/index.js';
import { startServicePresence, type ServicePresence } from '../services/index.js';
import { packageVersion } from '../version.js';
import { defaultIdleGcQuietMs, IdleCollector } from './idle_gc.js';
import { renderMetrics } from './metrics.js';
import { startNode, type ClusterNode, type NodeOptions } from './node.js';
import { clusterPosture, nodeHttpEndpoints, nodeOptionsFromServeConfig, wantsCluster } from './serve.js';

/** What the control plane needs from bus auth (bus_auth.ts) when the node runs --store kv. */
export interface ControlWiring {
  readonly kvSource: KvPrincipalSource | undefined;
  /** The authenticator's admin keys; the node's identity is added here. */
  readonly internalKeys: string[];
  /** Users and roles (roles' `services` grants for service presence); undefined with bus auth off. */
  readonly principals?: PrincipalSource;
}

/** A listener could not be opened (port taken, address not local, no permission). */
export class ListenError extends MembershipdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ELISTEN', message, options);
  }
}

export interface NodeUrls {
  readonly nats: string;
  readonly http: string;
  readonly ws: string | undefined;
}

export interface ServingNode {
  readonly nats: NatsServer;
  readonly http: HttpServer;
  readonly urls: NodeUrls;
  /** The cluster node (Raft meta-group + routes) when cluster flags are given. */
  readonly cluster: ClusterNode | undefined;
  /** Service presence (`services` bucket, `$UB.API.SERVICE.*`, `$SRV` services) when the node runs the Raft store. */
  readonly services?: ServicePresence;
  /** Stop accepting, drain and close every client, close HTTP. Idempotent. */
  stop(): Promise<void>;
}

function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function listenError(what: string, host: string, port: number, err: unknown): ListenError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const why = code === 'EADDRINUSE' ? 'address already in use'
    : code === 'EADDRNOTAVAIL' ? 'address not available on this host'
      : code === 'EACCES' ? 'permission denied'
        : (err instanceof Error ? err.message : String(err));
  return new ListenError(`cannot listen on ${hostForUrl(host)}:${port} (${what}): ${why}`, { cause: err });
}

/** nats-server's /varz field names, so existing dashboards and scripts read ours unchanged. */
/**
 * The same authenticator, counting the clients it refuses (enforce mode; warn mode accepts them as anonymous) for
 * membershipd_nats_auth_failures_total: a password-guessing client or a rolled-out wrong secret shows up as a rate.
 */
function countingRefusals(auth: BusAuthenticator, counts: { refused: number }): BusAuthenticator {
  return {
    get mode() { return auth.mode; },
    get authRequired() { return auth.authRequired; },
    get nonceRequired() { return auth.nonceRequired; },
    authenticate: async (request) => {
      const outcome = await auth.authenticate(request);
      if (!outcome.ok) counts.refused++;
      return outcome;
    },
    revalidate: (principal) => auth.revalidate(principal),
    onChange: (listener) => auth.onChange(listener),
  };
}

/** The bus counters of /varz as Prometheus series (slow consumers and refused clients are what alerts watch). */
function natsMetricsText(s: NatsServerStats, authRefused: number): string {
  return renderMetrics([
    ['membershipd_nats_connections', 'gauge', 'Client connections open now', s.connections],
    ['membershipd_nats_connections_total', 'counter', 'Client connections accepted since start', s.totalConnections],
    ['membershipd_nats_subscriptions', 'gauge', 'Subscriptions held now', s.subscriptions],
    ['membershipd_nats_in_msgs_total', 'counter', 'Messages received from clients', s.inMsgs],
    ['membershipd_nats_out_msgs_total', 'counter', 'Messages delivered to clients', s.outMsgs],
    ['membershipd_nats_in_bytes_total', 'counter', 'Payload bytes received from clients', s.inBytes],
    ['membershipd_nats_out_bytes_total', 'counter', 'Payload bytes delivered to clients', s.outBytes],
    ['membershipd_nats_slow_consumers_total', 'counter', 'Clients closed because their pending bytes hit the limit', s.slowConsumers],
    ['membershipd_nats_auth_failures_total', 'counter', 'Clients refused with Authorization Violation (bad or unknown credentials)', authRefused],
  ], []);
}

const prometheusText = 'text/plain; version=0.0.4; charset=utf-8';

function varzStats(s: NatsServerStats): Record<string, number> {
  return {
    connections: s.connections, total_connections: s.totalConnections, subscriptions: s.subscriptions,
    in_msgs: s.inMsgs, out_msgs: s.outMsgs, in_bytes: s.inBytes, out_bytes: s.outBytes, slow_consumers: s.slowConsumers,
  };
}

/** Raft timing of the cluster node; only in-process embedders set it (src/library: faster elections in tests). */
export type NodeTuning = Pick<NodeOptions, 'tickMs' | 'electionTicks' | 'heartbeatTicks' | 'clusterListener'>;

/**
 * Composes and starts one node from a validated `serve` configuration: the NATS server, and with cluster flags the
 * cluster node (Raft meta-group + routes), service presence, the control plane and the KV API, then the HTTP port.
 * `busAuth` undefined = bus auth off (bus_auth.ts builds it from the flags). A listener that cannot open is a
 * ListenError, after everything already started is stopped again. The process around it (start line, ports
 * file, signals, exit codes) is the CLI's (src/cli/serve.ts); src/library calls this directly.
 */
export async function composeNode(
  config: ServeConfig, logger: Logger, busAuth?: BusAuthenticator, control?: ControlWiring, tuning?: NodeTuning,
): Promise<ServingNode> {
  const authCounts = { refused: 0 };
  const auth = busAuth === undefined ? undefined : countingRefusals(busAuth, authCounts);
  const nats = createNatsServer({
    host: config.bind,
    port: config.natsPort,
    serverName: config.serverName,
    ...(config.tls ? { tls: { cert: config.tls.cert, key: config.tls.key } } : {}),
    ...(config.wsPort !== undefined ? { wsPort: config.wsPort } : {}),
    ...(config.maxSubscriptions !== undefined ? { limits: { maxSubscriptions: config.maxSubscriptions } } : {}),
    ...(auth !== undefined ? { auth } : {}),
    // The KV API (src/kv) is attached exactly when the node has the Raft-backed store (below).
    ...(wantsCluster(config) ? { jetstream: true } : {}),
    logger,
  });
  try {
    await nats.start();
  } catch (err) {
    throw listenError(config.wsPort !== undefined ? '--nats-port or --ws-port' : '--nats-port', config.bind, config.natsPort, err);
  }
  // Cluster flags (src/node): the Raft meta-group and the routes, with the bus joined to this NATS server.
  let ownUrls: { client?: string; http?: string } = {};
  const parts = wantsCluster(config) ? await startClusterParts(config, logger, nats, control, tuning, () => ownUrls) : undefined;
  const cluster = parts?.node;
  const presence = parts?.presence;
  const controlPlane = parts?.controlPlane;
  const kvApi = parts?.kvApi;
  const startedAt = new Date();
  startProcessMetrics();
  // The idle collector (idle_gc.ts) watches the write path: client messages in, and on a cluster node the applied
  // Raft index (a follower applies writes no client sent it). Heartbeats and HTTP polls move neither.
  const idleGcMs = config.idleGcMs ?? defaultIdleGcQuietMs;
  const idleGc = idleGcMs === 0 ? undefined : new IdleCollector({
    quietMs: idleGcMs, logger,
    activity: () => nats.stats().inMsgs + (cluster?.stateMachine.appliedIndex ?? 0),
  });
  idleGc?.start();
  const http = createHttpServer({
    host: config.bind,
    port: config.httpPort,
    logger,
    endpoints: {
      ...statusPageEndpoints(),
      // A node without the Raft store still answers what the status page polls: itself, and no buckets.
      '/clusterz': () => ({ status: 200, body: {
        cluster: null, via: nats.serverName, leader: null, term: 0, kvReplicas: 0, voters: [], learners: [],
        members: [{ id: 0, name: nats.serverName, address: null, role: 'standalone', term: null, leader: null, commit: null, applied: null, lag: null, reachable: true, health: 'ok' }],
      } }),
      '/kvz': () => ({ status: 200, body: { server: nats.serverName, applied: 0, buckets: [] } }),
      ...(cluster ? nodeHttpEndpoints(cluster) : {}),
      // After the node's endpoints: its Raft series, then the bus and the process (prom-client's names).
      '/metrics': () => ({
        status: 200, contentType: prometheusText,
        body: (cluster ? cluster.status.metricsText() : '') + natsMetricsText(nats.stats(), authCounts.refused) + (idleGc?.metricsText() ?? '')
          + processMetricsText(),
      }),
      '/varz': () => ({ status: 200, body: {
        server_id: nats.serverId,
        server_name: nats.serverName,
        version: packageVersion(),
        host: config.bind,
        port: nats.port,
        http_port: http.port,
        ws_port: nats.wsPort ?? null,
        tls_required: config.tls !== undefined,
        start: startedAt.toISOString(),
        now: new Date().toISOString(),
        uptime_seconds: Math.floor((Date.now() - startedAt.getTime()) / 1000),
        ...varzStats(nats.stats()),
        // Not nats-server fields: this process's event-loop delay and GC pauses since start (issue 14, tail latency).
        ...processVarz(),
        ...(cluster ? { cluster: cluster.status.varz() } : {}),
      } }),
      // nats-server's /connz shape (reference §5.3): snake_case fields, one entry per client connection.
      '/connz': () => {
        const connections = nats.connections().map((c) => ({
          cid: c.cid, kind: c.kind, ip: c.ip, port: c.port, start: c.start, subscriptions: c.subscriptions,
          name: c.name, lang: c.lang, version: c.version, authorized_user: c.user,
          in_msgs: c.inMsgs, out_msgs: c.outMsgs, in_bytes: c.inBytes, out_bytes: c.outBytes, pending_bytes: c.pendingBytes,
        }));
        return { status: 200, body: { server_id: nats.serverId, now: new Date().toISOString(), num_connections: connections.length, connections } };
      },
    },
  });
  try {
    await http.start();
  } catch (err) {
    idleGc?.stop();
    kvApi?.detach();
    presence?.stop();
    controlPlane?.stop();
    await cluster?.stop();
    await nats.close();
    throw listenError('--http-port', config.bind, config.httpPort, err);
  }
  const host = hostForUrl(config.bind);
  const urls: NodeUrls = {
    nats: `${config.tls ? 'tls' : 'nats'}://${host}:${nats.port}`,
    http: `http://${host}:${http.port}`,
    // What the listener actually speaks, not what the flags suggest.
    ws: nats.wsPort === undefined ? undefined : `${nats.wsTls ? 'wss' : 'ws'}://${host}:${nats.wsPort}`,
  };
  ownUrls = { client: urls.nats, http: urls.http };
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      idleGc?.stop();
      http.setState('stopping');
      try {
        if (cluster !== undefined) await handOffLeadership(cluster, logger);
        // Drain: new KV requests are refused with no-responders (the client retries elsewhere), the ones
        // already taken are answered, then each connection closes at a quiet moment (clients reconnect to
        // another node). Detaching first left a taken write unanswered, and its client waited out its request
        // timeout (a 3 s stall per restart in the rolling-restart test).
        kvApi?.stopTaking();
        await nats.drainClients(drainQuietMs, drainRequestsMs + 1000, kvApi?.idle(drainRequestsMs));
        kvApi?.detach();
        presence?.stop();
        controlPlane?.stop();
        await nats.close();
        await cluster?.stop();
      } finally {
        await http.close();
      }
    })();
    return stopping;
  };
  return { nats, http, urls, cluster, ...(presence !== undefined ? { services: presence } : {}), stop };
}

/** What a node with cluster flags runs besides its NATS server; each is stopped by the node's stop(). */
interface ClusterParts {
  readonly node: ClusterNode;
  readonly presence: ServicePresence;
  readonly controlPlane: ControlPlane;
  readonly kvApi: KvApi & { detach(): void };
}

/**
 * The cluster node on its routes, with the bus joined to `nats`, then service presence, the control plane and the
 * KV API on the node's replicated store. A node that cannot start closes `nats` before the error goes up.
 */
async function startClusterParts(
  config: ServeConfig, logger: Logger, nats: NatsServerWithCluster, control: ControlWiring | undefined, tuning: NodeTuning | undefined,
  ownUrls: () => { client?: string; http?: string },
): Promise<ClusterParts> {
  // One forwarder slot, two users: the admin API (src/control) in front, the cluster bus behind it. The node
  // reads only `cluster` of the server it is given.
  const seam = createServiceSeam(nats.cluster);
  // The services' front slot split again: the admin API first, then the JetStream-compatible KV API.
  const services = createServiceSeam(seam.services);
  const routed = Object.assign(Object.create(nats) as typeof nats, { cluster: seam.routes });
  let node: ClusterNode;
  try {
    const options = wantsSingleNodeKv(config) ? await singleNodeOptions(config, logger) : nodeOptionsFromServeConfig(config, logger);
    node = await startNode({ ...options, ...tuning, nats: routed });
  } catch (err) {
    await nats.close();
    throw err;
  }
  const internalKeys = control?.internalKeys ?? [];
  if (!internalKeys.includes(node.identity.publicKey)) internalKeys.push(node.identity.publicKey);
  // Service presence in front of the admin API: `$UB.API.SERVICE.*` is answered for service principals, not admins only.
  const presenceSeam = createServiceSeam(services.services);
  const presence = startServicePresence({
    node, backend: node.kv.backend(), logger, internalKeys: () => internalKeys, port: presenceSeam.services,
    ...(control?.principals !== undefined ? { source: control.principals } : {}),
  });
  const controlPlane = startControlPlane({
    port: presenceSeam.routes, backend: node.kv.backend(), logger, internalKeys: () => internalKeys,
    ...(control?.kvSource !== undefined ? { source: control.kvSource } : {}),
    cluster: { node, posture: clusterPosture(config), version: packageVersion(), urls: ownUrls, trustedKeys: internalKeys },
  });
  // KV buckets for @nats-io/kv (and nats.go/nats.c KV) on the same replicated store as the control plane: a
  // client on any node reads its own writes there and sees every node's writes (linearizable reads). Without
  // the Raft store (`--store file` and no cluster flags) there is no KV API: nothing would persist or replicate.
  const kvPort: KvServerPort = {
    interest: () => services.routes.interest(),
    onInterest: (l) => services.routes.onInterest(l),
    deliverFromRoute: (m) => services.routes.deliverFromRoute(m),
    setForwarder: (f) => services.routes.setForwarder(f),
    deliverAs: (s, m) => nats.cluster.deliverAs!(s, m),
  };
  const kvApi = attachKvApi({ cluster: kvPort }, {
    backend: redactedBackend(node.kv.backend(), redactControlValue), logger, serverName: nats.serverName, replicas: node.kvReplicas,
    clusterInfo: () => node.status.jsClusterInfo(), ttl: { isLeader: () => node.isLeader },
    visibleTo: (bucket, principal) => bucket === controlBuckets.services && presence.mayRead(principal),
  });
  return { node, presence, controlPlane, kvApi };
}

/** How long a stopping node waits for the KV requests it already took to be answered. */
const drainRequestsMs = 2000;
/** A client is closed once it sent nothing for this long (a sequential writer is then waiting to retry). */
const drainQuietMs = 50;

/** How long a stopping leader waits for its successor before it stops anyway (an election follows then). */
const handOffTimeoutMs = 3000;

/**
 * A stopping leader hands leadership to its most caught-up voter first (as `cluster transfer-leader`), so a
 * rolling restart costs writes one transfer (a round trip or two) instead of an election timeout. Bounded: a
 * transfer that does not complete (no caught-up voter reachable) leaves the stop to proceed as before.
 */
async function handOffLeadership(cluster: ClusterNode, logger: Logger): Promise<void> {
  if (!cluster.isLeader) return;
  const t0 = Date.now();
  const done = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => { off(); resolve(false); }, handOffTimeoutMs);
    const off = cluster.onLeaderChange((isLeader) => {
      if (isLeader) return;
      clearTimeout(timer);
      off();
      resolve(true);
    });
  });
  try {
    cluster.membership.transferLeadership();
  } catch (err) {
    logger.warn({ err }, 'stopping leader could not hand leadership over; the others will elect after the election timeout');
    return;
  }
  const handedOver = await done;
  if (handedOver) logger.info({ ms: Date.now() - t0 }, 'stopping leader handed leadership over');
  else logger.warn({ timeout_ms: handOffTimeoutMs }, 'stopping leader: leadership transfer did not complete in time; stopping anyway');
}

