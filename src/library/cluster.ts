// startCluster/startNode: N full membershipd nodes in this process on loopback. Everything they need is made in
// one temp directory (CA and node certificates, route password, users file, internal identities, data dirs)
// and removed again by stop(). Each node is composed as `membershipd serve` composes it (src/node composeNode and
// loadBusAuth), so what a test suite exercises here is what production runs.
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MembershipdError } from '../errors.js';
import { createLogger, silentLogger, type LogLevel, type Logger } from '../log.js';
import { createCertificateAuthority, issueCertificate, type PemPair } from '../certs/index.js';
import { builtinAdminRole, hashPassword, userInboxPrefix, type PermissionSpec } from '../auth/index.js';
import type { ServeConfig } from '../config/index.js';
import {
  bindListeners, closeListeners, composeNode, loadBusAuth, type ClusterNode, type Health, type NodeTuning, type NodeUrls, type ServingNode,
} from '../node/index.js';

export const LibraryErrorCode = {
  /** The options are wrong (node count, user names, roles). */
  options: 'ELIBOPTIONS',
  /** The cluster did not become healthy within `healthyTimeoutMs`; the message carries each node's reason. */
  notHealthy: 'ELIBNOTHEALTHY',
} as const;
export type LibraryErrorCode = (typeof LibraryErrorCode)[keyof typeof LibraryErrorCode];

export class LibraryError extends MembershipdError {
  constructor(code: LibraryErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

export interface LibraryUser {
  readonly name: string;
  /** Plain text here; the node only ever sees its scrypt hash (users file). */
  readonly password: string;
  /** Role names: defined in `auth.roles`, or the built-in 'admin' (everything). */
  readonly roles?: readonly string[];
}

export interface LibraryAuth {
  /** Users besides the generated admin (whose credentials are in `connectOptions`). */
  readonly users?: readonly LibraryUser[];
  /** Role name → permissions, as in the users file (src/auth/principal_source.ts). */
  readonly roles?: Readonly<Record<string, PermissionSpec & { readonly admin?: boolean; readonly services?: readonly string[]; readonly services_read?: boolean }>>;
}

export interface StartNodeOptions {
  /** TLS on the client ports, verified against a CA made for this cluster (`connectOptions.tls.ca`). Default true. */
  readonly tls?: boolean;
  /** Bus auth enforced with a generated admin user (default), plus these users and roles; false = anyone may connect. */
  readonly auth?: LibraryAuth | false;
  /** Also serve NATS over WebSocket on a free port (wss:// when `tls` is on, as `membershipd serve --ws-port`). Default false. */
  readonly websocket?: boolean;
  /** Node logs to stderr at this level. Default 'silent'. */
  readonly logLevel?: LogLevel;
  /** Parent directory of the temp directory (default os.tmpdir()). The temp directory is removed by stop(). */
  readonly dir?: string;
  /** Resolve only once every node reports healthy (default true); false resolves as soon as all listen. */
  readonly waitHealthy?: boolean;
  /**
   * Raft tick in ms (default 50, half of serve's 100): elections take 10 ticks, so a cluster elects its leader in
   * 0.5–1 s. Much lower makes a loaded machine (CI) call spurious elections.
   */
  readonly tickMs?: number;
  /** Give up waiting for health after this long (default 20000 ms): stop everything and throw ELIBNOTHEALTHY. */
  readonly healthyTimeoutMs?: number;
}

/** Where a node of startCluster will live, given to `beforeStart` before any node starts. */
export interface PlannedNode {
  readonly name: string;
  /** Empty (or absent) when beforeStart runs. */
  readonly dataDir: string;
  readonly clusterName: string;
  readonly clusterPort: number;
  /** Every node's route address (this node's included), as --routes takes them. */
  readonly routes: readonly string[];
}

export interface StartClusterOptions extends StartNodeOptions {
  /** Number of nodes (default 3); all of them are Raft voters. */
  readonly nodes?: number;
  /** Cluster name presented on the routes (default 'membershipd'). */
  readonly name?: string;
  /**
   * Runs once the ports are chosen and before any node starts: e.g. `membershipd snapshot restore` into each data
   * directory, to start a cluster from a backup. May run again with new ports when a port was taken meanwhile.
   */
  readonly beforeStart?: (nodes: readonly PlannedNode[]) => Promise<void>;
}

/** Spread into @nats-io/transport-node's `connect({ servers: urls, ...connectOptions })`. */
export interface ConnectOptions {
  readonly tls?: { readonly ca: string };
  /** The admin's private reply prefix (random per handle; SECURITY.md): replies never pass the shared `_INBOX.`. */
  readonly inboxPrefix?: string;
  readonly user?: string;
  readonly pass?: string;
}

export interface LibraryNode {
  /** n1, n2, … */
  readonly name: string;
  readonly urls: NodeUrls;
  /** The Raft node (health(), raftz(), kvBackend()). */
  readonly cluster: ClusterNode;
  /** The serving node (NATS server, HTTP server); stopped by the handle's stop(). */
  readonly serving: ServingNode;
  health(): Health;
}

export interface LocalClusterHandle {
  /** Client URLs of every node (tls:// when TLS is on), in node order. */
  readonly urls: string[];
  readonly connectOptions: ConnectOptions;
  readonly nodes: LibraryNode[];
  /** The temp directory holding certificates, secrets and data dirs; gone after stop(). */
  readonly dir: string;
  /** The CA certificate (PEM) that signed every node's certificate. */
  readonly ca: string;
  /** Resolves once every node reports healthy (already done unless `waitHealthy: false`). */
  healthy(timeoutMs?: number): Promise<void>;
  /** Stops every node (ports closed) and removes the temp directory. Idempotent. */
  stop(): Promise<void>;
}

const adminUser = 'admin';
const routeUser = 'route';
const maxNodes = 15;
const defaultTickMs = 50;
/**
 * scrypt cost of the users file: a throwaway cluster in a temp dir does not need serve's N=2^15 against offline
 * guessing, and every connection verifies a password — tests connect a lot.
 */
const libraryScrypt = { N: 1 << 10, r: 8, p: 1 } as const;


function checkOptions(o: StartClusterOptions): number {
  const n = o.nodes ?? 3;
  if (!Number.isInteger(n) || n < 1 || n > maxNodes) throw new LibraryError(LibraryErrorCode.options, `nodes: ${String(n)} is not a whole number from 1 to ${maxNodes}`);
  if (o.auth !== false && o.auth !== undefined) {
    const roles = new Set(Object.keys(o.auth.roles ?? {}));
    const names = new Set<string>([adminUser]);
    for (const u of o.auth.users ?? []) {
      if (names.has(u.name)) throw new LibraryError(LibraryErrorCode.options, `auth.users: ${JSON.stringify(u.name)} is given twice (or is the generated admin)`);
      names.add(u.name);
      if (u.password.length === 0) throw new LibraryError(LibraryErrorCode.options, `auth.users: ${JSON.stringify(u.name)} has an empty password`);
      for (const r of u.roles ?? []) {
        if (r !== builtinAdminRole && !roles.has(r)) throw new LibraryError(LibraryErrorCode.options, `auth.users: ${JSON.stringify(u.name)} has role ${JSON.stringify(r)}, which auth.roles does not define`);
      }
    }
  }
  if (o.tickMs !== undefined && (!Number.isInteger(o.tickMs) || o.tickMs < 5 || o.tickMs > 1000)) {
    throw new LibraryError(LibraryErrorCode.options, `tickMs: ${String(o.tickMs)} is not a whole number of milliseconds from 5 to 1000`);
  }
  return n;
}

interface Prepared {
  readonly ca: PemPair;
  readonly leaves: PemPair[];
  readonly passFile: string;
  readonly usersFile: string | undefined;
  readonly adminPassword: string | undefined;
}

async function prepare(dir: string, n: number, o: StartClusterOptions): Promise<Prepared> {
  const ca = await createCertificateAuthority('membershipd-library-ca', 2);
  // One certificate per node, serverAuth + clientAuth: it serves the client port and both ends of its routes.
  const leaves = await Promise.all(Array.from({ length: n }, (_, i) => issueCertificate(ca, { commonName: `n${i + 1}`, usage: 'node', validDays: 2 })));
  const passFile = join(dir, 'route.pass');
  await writeFile(passFile, `${randomBytes(18).toString('base64url')}\n`, { mode: 0o600 });
  if (o.auth === false) return { ca, leaves, passFile, usersFile: undefined, adminPassword: undefined };
  const adminPassword = randomBytes(18).toString('base64url');
  const all: LibraryUser[] = [{ name: adminUser, password: adminPassword, roles: [builtinAdminRole] }, ...(o.auth?.users ?? [])];
  const users = await Promise.all(all.map(async (u) => ({ name: u.name, password: await hashPassword(u.password, libraryScrypt), roles: [...(u.roles ?? [])] })));
  const usersFile = join(dir, 'users.json');
  await writeFile(usersFile, `${JSON.stringify({ users, roles: o.auth?.roles ?? {} }, null, 2)}\n`, { mode: 0o600 });
  return { ca, leaves, passFile, usersFile, adminPassword };
}

function nodeConfig(dir: string, i: number, p: Prepared, routePorts: readonly number[], o: StartClusterOptions): ServeConfig {
  const name = `n${i + 1}`;
  const leaf = p.leaves[i]!;
  const pem = { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}.key`), cert: leaf.cert, key: leaf.key };
  return {
    bind: '127.0.0.1',
    natsPort: 0,
    httpPort: 0,
    serverName: name,
    tls: o.tls === false ? undefined : pem,
    wsPort: o.websocket === true ? 0 : undefined,
    logLevel: o.logLevel ?? 'silent',
    dataDir: join(dir, 'data', name),
    cluster: {
      name: o.name ?? 'membershipd',
      port: routePorts[i]!,
      // A node alone gets no routes: src/node numbers a lone node's slot only when its route list is empty.
      routes: routePorts.length === 1 ? [] : routePorts.map((port) => ({ host: '127.0.0.1', port, text: `127.0.0.1:${port}` })),
      user: routeUser,
      passFile: p.passFile,
      routeTls: { ...pem, caFile: join(dir, 'ca.pem'), ca: p.ca.cert },
    },
    busAuth: o.auth === false ? 'off' : 'enforce',
    store: 'file',
    usersFile: p.usersFile,
    internalIdFile: join(dir, `${name}.seed`),
    kvReplicas: undefined,
    given: [],
  };
}

async function startOne(config: ServeConfig, tuning: NodeTuning): Promise<ServingNode> {
  const logger: Logger = config.logLevel === 'silent' ? silentLogger() : createLogger(config.logLevel, { server_name: config.serverName });
  const auth = await loadBusAuth(config, logger);
  return composeNode(config, logger, auth.authenticator, auth, tuning);
}

/**
 * Route ports are bound first (port 0) and handed to the nodes, whose --routes must name them all before any
 * starts; client and HTTP ports are 0 too. Nothing is probed, so no other process can take a port in between.
 */
async function startAll(dir: string, n: number, p: Prepared, o: StartClusterOptions): Promise<ServingNode[]> {
  const listeners = await bindListeners(n);
  const routePorts = listeners.map((l) => l.port);
  if (o.beforeStart !== undefined) {
    const configs = Array.from({ length: n }, (_, i) => nodeConfig(dir, i, p, routePorts, o));
    try {
      await o.beforeStart(configs.map((c) => ({
        name: c.serverName, dataDir: c.dataDir, clusterName: c.cluster.name!, clusterPort: c.cluster.port!, routes: routePorts.map((port) => `127.0.0.1:${port}`),
      })));
    } catch (err) {
      closeListeners(listeners);
      throw err;
    }
  }
  const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => startOne(nodeConfig(dir, i, p, routePorts, o), {
    tickMs: o.tickMs ?? defaultTickMs, clusterListener: listeners[i]!.server,
  })));
  const started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  if (failed.length === 0) return started;
  await Promise.allSettled(started.map((s) => s.stop()));
  closeListeners(listeners);
  throw failed[0];
}

async function waitHealthy(nodes: readonly LibraryNode[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reports = nodes.map((node) => ({ node, h: node.health() }));
    if (reports.every((r) => r.h.status === 'ok')) return;
    if (Date.now() >= deadline) {
      const why = reports.filter((r) => r.h.status !== 'ok').map((r) => `${r.node.name}: ${r.h.status === 'ok' ? 'ok' : r.h.reason}`).join('; ');
      throw new LibraryError(LibraryErrorCode.notHealthy, `the cluster did not become healthy within ${timeoutMs} ms (${why})`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Starts `nodes` (default 3) full membershipd nodes in this process and waits until every one is healthy. */
export async function startCluster(options: StartClusterOptions = {}): Promise<LocalClusterHandle> {
  const n = checkOptions(options);
  const dir = await mkdtemp(join(options.dir ?? tmpdir(), 'membershipd-'));
  let serving: ServingNode[] = [];
  let stopping: Promise<void> | undefined;
  // A suite that exits without stop() (a crash, process.exit) still leaves no temp directory behind.
  const removeOnExit = (): void => { rmSync(dir, { recursive: true, force: true }); };
  process.once('exit', removeOnExit);
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      process.removeListener('exit', removeOnExit);
      try {
        await Promise.all(serving.map((s) => s.stop()));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    })();
    return stopping;
  };
  try {
    const prepared = await prepare(dir, n, options);
    await writeFile(join(dir, 'ca.pem'), prepared.ca.cert);
    serving = await startAll(dir, n, prepared, options);
    const nodes: LibraryNode[] = serving.map((s, i) => {
      const cluster = s.cluster;
      if (cluster === undefined) throw new Error(`node n${i + 1} started without its cluster node`);
      return { name: `n${i + 1}`, urls: s.urls, cluster, serving: s, health: () => cluster.status.health() };
    });
    const connectOptions: ConnectOptions = {
      ...(options.tls === false ? {} : { tls: { ca: prepared.ca.cert } }),
      // The admin's replies go to a random prefix of this cluster handle (the admin may use any subject): nobody
      // can guess it, not even a role granted the admin's per-user inbox.
      ...(prepared.adminPassword !== undefined ? { user: adminUser, pass: prepared.adminPassword, inboxPrefix: `${userInboxPrefix(adminUser)}_${randomBytes(12).toString('hex')}` } : {}),
    };
    const healthyTimeoutMs = options.healthyTimeoutMs ?? 20_000;
    const handle: LocalClusterHandle = {
      urls: serving.map((s) => s.urls.nats),
      connectOptions,
      nodes,
      dir,
      ca: prepared.ca.cert,
      healthy: (timeoutMs = healthyTimeoutMs) => waitHealthy(nodes, timeoutMs),
      stop,
    };
    if (options.waitHealthy !== false) await handle.healthy();
    return handle;
  } catch (err) {
    await stop();
    throw err;
  }
}

/** One node: a cluster of one (it elects itself at once). */
export function startNode(options: StartNodeOptions = {}): Promise<LocalClusterHandle> {
  return startCluster({ ...options, nodes: 1 });
}
