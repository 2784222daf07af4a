// `serve --store kv` without cluster flags: the replicated store on a cluster of one. The node is an ordinary
// src/node Raft node whose voter set is itself (it elects itself at once and commits alone, still through the
// WAL in --data-dir, so users and roles survive a restart). A node needs a route listener; a lone node's is
// bound to loopback on an ephemeral port with a throwaway CA and password made at each start — nothing ever
// dials it, and a real cluster is formed with the cluster flags instead.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { createCertificateAuthority, issueCertificate } from '../certs/index.js';
import type { ServeConfig } from '../config/index.js';
import { clusterPosture, postureDigest, type NodeOptions } from '../node/index.js';

/** True for `--store kv` with none of the flags that make a node a cluster member. */
export function wantsSingleNodeKv(config: ServeConfig): boolean {
  const c = config.cluster;
  return config.store === 'kv' && c.name === undefined && c.port === undefined && c.routes.length === 0 && c.routeTls === undefined;
}

export async function singleNodeOptions(config: ServeConfig, logger?: Logger): Promise<NodeOptions> {
  if (config.kvReplicas !== undefined && config.kvReplicas !== 1) {
    const { ConfigError } = await import('../errors.js');
    throw new ConfigError(`--kv-replicas ${config.kvReplicas}: a node without cluster flags is a cluster of one; give --routes (and the other cluster flags) for more voters`, 'kv-replicas');
  }
  const ca = await createCertificateAuthority('membershipd-single-node', 1);
  const leaf = await issueCertificate(ca, { commonName: config.serverName, usage: 'node', validDays: 1 });
  // src/node itself warns that one voter is a single point of failure.
  return {
    serverName: config.serverName,
    clusterName: `single-${config.serverName}`,
    dataDir: config.dataDir,
    ...(config.internalIdFile !== undefined ? { identityFile: config.internalIdFile } : {}),
    bind: '127.0.0.1',
    clusterPort: 0,
    routes: [],
    tls: { cert: leaf.cert, key: leaf.key, ca: ca.cert },
    clusterUser: 'single',
    clusterPassword: randomBytes(24).toString('base64url'),
    postureDigest: postureDigest(clusterPosture(config)),
    ...(config.maxKvBytes !== undefined ? { maxKvBytes: config.maxKvBytes } : {}),
    ...(logger !== undefined ? { logger } : {}),
  };
}
