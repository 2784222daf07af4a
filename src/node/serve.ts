// Glue between a validated `serve` configuration, the NATS server and a cluster node: NodeOptions from
// the deploy flags and the HTTP endpoints (the bus is attached by startNode when given `nats`).
import { readFileSync } from 'node:fs';
import type { ServeConfig } from '../config/index.js';
import { ConfigError } from '../errors.js';
import type { HttpEndpoint } from '../http/index.js';
import type { Logger } from '../log.js';
import type { ClusterNode, NodeOptions } from './node.js';
import { inheritedListener } from './listeners.js';

/** Flags that turn a node into a cluster member. */
export const clusterFlagNames = [
  'cluster-name', 'cluster-port', 'routes', 'cluster-user', 'cluster-pass-file', 'route-tls-cert', 'route-tls-key', 'route-tls-ca',
  'kv-replicas', 'store', 'data-dir', 'internal-id-file', 'initial-cluster-state',
] as const;

/** True when the configuration asks for clustering (any route/cluster flag, or --store kv). */
export function wantsCluster(config: ServeConfig): boolean {
  const c = config.cluster;
  return c.name !== undefined || c.port !== undefined || c.routes.length > 0 || c.routeTls !== undefined || config.store === 'kv';
}

function need(flag: string, why: string): never {
  throw new ConfigError(`--${flag} is required for a cluster node (${why})`, flag);
}

/**
 * What every node of a cluster must agree on. The route handshake compares `postureDigest()` of it (without
 * kv-replicas, which the slot hello compares and which may change on a running cluster); the first leader
 * writes every field to the `config` bucket and a node whose own posture differs is refused (src/control).
 */
export interface ClusterPosture {
  readonly busAuth: string;
  readonly clientTls: boolean;
  readonly store: string;
  /** Voters (--kv-replicas); undefined: every node. */
  readonly kvReplicas: number | undefined;
}

export function clusterPosture(config: ServeConfig): ClusterPosture {
  return { busAuth: config.busAuth, clientTls: config.tls !== undefined, store: config.store, kvReplicas: config.kvReplicas };
}

/** The digest the route handshake compares (the `config` bucket's bus-auth, client-tls and store, in that order). */
export function postureDigest(p: Pick<ClusterPosture, 'busAuth' | 'clientTls' | 'store'>): string {
  return `bus-auth=${p.busAuth};client-tls=${p.clientTls};store=${p.store}`;
}

/** NodeOptions from the deploy flags; throws ConfigError naming the missing flag. */
export function nodeOptionsFromServeConfig(config: ServeConfig, logger: Logger): NodeOptions {
  const c = config.cluster;
  if (c.name === undefined) need('cluster-name', 'every node of a cluster presents the same name');
  if (c.port === undefined) need('cluster-port', 'the port routes listen on');
  if (c.routeTls === undefined) need('route-tls-cert', 'routes are mutual TLS: --route-tls-cert, --route-tls-key and --route-tls-ca');
  if (c.user === undefined || c.passFile === undefined) need('cluster-user', 'with --cluster-pass-file: the route credentials');
  let password: string;
  try {
    password = readFileSync(c.passFile, 'utf8').trim();
  } catch (e) {
    throw new ConfigError(`--cluster-pass-file: cannot read ${c.passFile}: ${(e as Error).message}`, 'cluster-pass-file', { cause: e });
  }
  if (password.length === 0) throw new ConfigError(`--cluster-pass-file: ${c.passFile} is empty`, 'cluster-pass-file');
  return {
    serverName: config.serverName,
    clusterName: c.name,
    dataDir: config.dataDir,
    ...(config.internalIdFile !== undefined ? { identityFile: config.internalIdFile } : {}),
    bind: config.bind,
    clusterPort: c.port,
    routes: c.routes.map((r) => (r.host.includes(':') ? `[${r.host}]:${r.port}` : `${r.host}:${r.port}`)),
    tls: { cert: c.routeTls.cert, key: c.routeTls.key, ca: c.routeTls.ca },
    clusterUser: c.user,
    clusterPassword: password,
    postureDigest: postureDigest(clusterPosture(config)),
    ...(config.kvReplicas !== undefined ? { kvReplicas: config.kvReplicas } : {}),
    ...(config.maxKvBytes !== undefined ? { maxKvBytes: config.maxKvBytes } : {}),
    ...(c.initialState === 'existing' ? { join: true } : {}),
    ...(c.listenFd !== undefined ? { clusterListener: inheritedListener(c.listenFd, c.port) } : {}),
    logger,
  };
}

/** What /kvz lists per bucket: counts and configuration only, never keys or values (the port has no auth). */
export interface BucketSummary {
  readonly name: string;
  readonly keys: number;
  readonly values: number;
  readonly bytes: number;
  readonly seq: number;
  readonly history: number;
}

/** Every KV bucket as this node has applied it (a stale read: the page polls it, it must not load the leader). */
export function bucketSummaries(node: ClusterNode): BucketSummary[] {
  const sm = node.kv.reader;
  return sm.bucketNames().flatMap((name) => {
    const b = sm.bucketInfo(name);
    return b === undefined ? [] : [{ name, keys: sm.keys(name).length, values: b.values, bytes: b.bytes, seq: b.seq, history: b.config.history }];
  });
}

/** /healthz, /readyz (200 ok or 503 with the reason), /raftz, /routez, /clusterz, /kvz, /metrics for src/http. */
export function nodeHttpEndpoints(node: ClusterNode): Record<string, HttpEndpoint> {
  const health: HttpEndpoint = () => {
    const h = node.status.health();
    return { status: h.status === 'ok' ? 200 : 503, body: h };
  };
  return {
    '/healthz': health,
    '/readyz': health,
    '/raftz': () => ({ status: 200, body: node.status.raftz() }),
    '/routez': () => ({ status: 200, body: node.status.routez() }),
    // `cluster status` over HTTP (each peer's own report, asked over its route), for the status page.
    '/clusterz': async () => ({ status: 200, body: await node.status.clusterStatus(1000) }),
    '/kvz': () => ({ status: 200, body: { server: node.serverName, applied: node.kv.reader.appliedIndex, buckets: bucketSummaries(node) } }),
    '/metrics': () => ({ status: 200, body: node.status.metricsText(), contentType: 'text/plain; version=0.0.4; charset=utf-8' }),
  };
}
