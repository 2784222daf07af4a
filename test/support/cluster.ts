// NodeOptions of node i of an in-process test cluster over real TLS routes, shared by the cluster test files:
// every node lists every route ('all', as the deploy unit does) or only the others ('others').
import { join } from 'node:path';
import type { PemPair } from '../../src/certs/index.js';
import type { NodeOptions } from '../../src/node/index.js';
import { takeListener, type HeldPort } from './ports.js';

export interface TrioLayout {
  readonly dir: string;
  readonly ports: readonly number[];
  /** The route ports held since the trio was laid out (./ports.ts): node i's first start takes its socket over. */
  readonly held?: readonly HeldPort[];
  readonly style: 'all' | 'others';
  readonly extra: Partial<NodeOptions>;
}

export function trioNodeOptions(trio: TrioLayout, i: number, pki: { ca: PemPair; leaves: readonly PemPair[] }, fixed: { clusterName: string; requestTimeoutMs: number }): NodeOptions {
  const routes = trio.ports.filter((_, j) => trio.style === 'all' || j !== i).map((p) => `127.0.0.1:${p}`);
  return {
    serverName: `node-${i}`,
    clusterName: fixed.clusterName,
    dataDir: join(trio.dir, `node-${i}`),
    // Outside the data dir, as the deploy layout keeps it: a replaced disk keeps the node's identity.
    identityFile: join(trio.dir, `id-${i}.nk`),
    bind: '127.0.0.1',
    clusterPort: trio.ports[i]!,
    routes,
    tls: { cert: pki.leaves[i]!.cert, key: pki.leaves[i]!.key, ca: pki.ca.cert },
    clusterUser: 'route',
    clusterPassword: 'route-secret',
    tickMs: 50,
    requestTimeoutMs: fixed.requestTimeoutMs,
    ...trio.extra,
  };
}

/**
 * Node i's held route socket, for its first start only (spread into the options given to startNode); later starts
 * (restarts) bind the port themselves. A start that fails must close it: `closeHeld`.
 */
export function heldListener(trio: TrioLayout, i: number): Pick<NodeOptions, 'clusterListener'> {
  const listener = takeListener(trio.held?.[i]);
  return listener === undefined ? {} : { clusterListener: listener };
}

/** After a start that failed: closes the socket it was handed (the node may not have taken it over). */
export function closeHandedListener(options: Pick<NodeOptions, 'clusterListener'>): void {
  if (options.clusterListener?.listening === true) options.clusterListener.close();
}
