// startCluster: N nodes in this process on loopback, with a fresh CA, node certificates and data
// directories, for test suites and local experiments (no binary, no download). Each node is an ordinary
// startNode() node: real TLS routes, real WAL with fsync.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCertificateAuthority, issueCertificate, type PemPair } from '../certs/index.js';
import type { Logger } from '../log.js';
import { NodeError, NodeErrorCode } from './errors.js';
import { startNode, type ClusterNode, type NodeOptions } from './node.js';
import { bindListeners, closeListeners } from './listeners.js';

export interface ClusterOptions {
  /** Number of nodes (default 3). */
  readonly size?: number;
  /** Parent of the nodes' data dirs (default: a new temp dir). */
  readonly dir?: string;
  readonly clusterName?: string;
  readonly kvReplicas?: number;
  readonly tickMs?: number;
  readonly logger?: Logger;
  /** Bound of the wait for every node to be healthy (default 15000 ms). */
  readonly healthyTimeoutMs?: number;
  /** Extra options for every node. */
  readonly node?: Partial<NodeOptions>;
}

export interface LocalCluster {
  readonly dir: string;
  readonly nodes: readonly ClusterNode[];
  /** The cluster CA (PEM): issue a certificate with src/certs to connect another node or tool. */
  readonly ca: PemPair;
  /** The node that is leader now, if any. */
  leader(): ClusterNode | undefined;
  /** Resolves when every node reports ok; rejects with the reasons after `timeoutMs`. */
  waitHealthy(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}


async function waitHealthy(nodes: readonly ClusterNode[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (nodes.every((n) => n.status.health().status === 'ok')) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  const why = nodes.map((n) => `${n.serverName}: ${JSON.stringify(n.status.health())}`).join('; ');
  throw new NodeError(NodeErrorCode.noLeader, `cluster not healthy within ${timeoutMs} ms: ${why}`, true);
}

/** Starts `size` nodes (routes listing every node) and waits until all are healthy. */
export async function startCluster(options: ClusterOptions = {}): Promise<LocalCluster> {
  const size = options.size ?? 3;
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'membershipd-cluster-'));
  const ca = await createCertificateAuthority(`${options.clusterName ?? 'local'}-ca`);
  const listeners = await bindListeners(size);
  const ports = listeners.map((l) => l.port);
  const routes = ports.map((p) => `127.0.0.1:${p}`);
  const nodes: ClusterNode[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => n.stop()));
  };
  try {
    for (let i = 0; i < size; i++) {
      const leaf = await issueCertificate(ca, { commonName: `node-${i}` });
      nodes.push(await startNode({
        serverName: `node-${i}`,
        clusterName: options.clusterName ?? 'local',
        dataDir: join(dir, `node-${i}`),
        bind: '127.0.0.1',
        clusterPort: ports[i]!,
        clusterListener: listeners[i]!.server,
        routes: size > 1 ? routes : [],
        tls: { cert: leaf.cert, key: leaf.key, ca: ca.cert },
        clusterUser: 'route',
        clusterPassword: 'local-cluster',
        ...(options.kvReplicas !== undefined ? { kvReplicas: options.kvReplicas } : {}),
        ...(options.tickMs !== undefined ? { tickMs: options.tickMs } : {}),
        ...(options.logger !== undefined ? { logger: options.logger } : {}),
        ...options.node,
      }));
    }
    await waitHealthy(nodes, options.healthyTimeoutMs ?? 15_000);
  } catch (e) {
    await stop();
    closeListeners(listeners);
    throw e;
  }
  return {
    dir,
    nodes,
    ca: { cert: ca.cert, key: ca.key },
    leader: () => nodes.find((n) => n.status.raftz().state === 'leader'),
    waitHealthy: (ms = 15_000) => waitHealthy(nodes, ms),
    stop,
  };
}
