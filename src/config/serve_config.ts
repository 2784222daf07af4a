// Typed, validated options of `serve` and `dev`. Every flag is checked here, including flags whose feature
// a later build provides; whether the running build can honour them is decided by the CLI (src/cli).
import { hostname } from 'node:os';
import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import { logLevels, type LogLevel } from '../log.js';
import type { BusAuthMode } from '../auth/types.js';
import type { ParsedArgs } from './argv.js';
import {
  loadCertAndKey, parseByteSize, parseCertificates, parseEnum, parseHost, parseIntInRange, parseName, parsePort, parseRoutes,
  quote, readFlagFile, type PemFiles, type RouteTarget,
} from './validate.js';

export const busAuthModes = ['off', 'warn', 'enforce'] as const satisfies readonly BusAuthMode[];
export const storeKinds = ['file', 'kv'] as const;
export type StoreKind = (typeof storeKinds)[number];

export const defaults = {
  bind: '127.0.0.1',
  natsPort: 4222,
  httpPort: 8222,
  logLevel: 'info',
  devLogLevel: 'warn',
  dataDir: './data',
  devDir: './.dev-cluster',
  busAuth: 'off',
  store: 'file',
} as const;
/** Raft voters: DESIGN.md runs 3 or 5; anything above a handful is a typo. */
export const kvReplicasMax = 15;
/** --max-kv-bytes bounds: below 1 MiB the control-plane buckets alone would fill it; 16 TiB is beyond any memory. */
export const maxKvBytesMin = 1024 * 1024;
export const maxKvBytesMax = 16 * 1024 ** 4;
/** --idle-gc upper bound: an hour; a longer quiet window would never see its garbage while the node runs. */
export const idleGcMsMax = 3_600_000;
/** `membershipd dev --nodes`: default and bound (each node costs a Node.js event loop's share of the machine). */
export const defaultDevNodes = 3;
export const devNodesMax = 7;

export interface ClusterConfig {
  readonly name: string | undefined;
  readonly port: number | undefined;
  readonly routes: readonly RouteTarget[];
  readonly user: string | undefined;
  readonly passFile: string | undefined;
  readonly routeTls: (PemFiles & { readonly caFile: string; readonly ca: string }) | undefined;
  /** --initial-cluster-state: `existing` joins a running cluster (src/node NodeOptions.join); absent = new. */
  readonly initialState?: 'new' | 'existing';
  /** --cluster-fd: an inherited socket already listening on --cluster-port (src/node/listeners.ts inheritedListener). */
  readonly listenFd?: number;
}

export interface ServeConfig {
  readonly bind: string;
  readonly natsPort: number;
  readonly httpPort: number;
  readonly serverName: string;
  readonly tls: PemFiles | undefined;
  readonly wsPort: number | undefined;
  /** --max-subscriptions: per client connection; undefined = the NATS server's default (defaultLimits). */
  readonly maxSubscriptions?: number;
  readonly logLevel: LogLevel;
  readonly dataDir: string;
  readonly cluster: ClusterConfig;
  readonly busAuth: BusAuthMode;
  readonly store: StoreKind;
  readonly usersFile: string | undefined;
  readonly internalIdFile: string | undefined;
  readonly kvReplicas: number | undefined;
  /** --ports-file: where the bound ports are written once listening (src/cli/ports_file.ts). */
  readonly portsFile?: string;
  /** --max-kv-bytes: KV bytes (stored-size accounting) past which a write is refused; undefined = unlimited. */
  readonly maxKvBytes?: number;
  /** --idle-gc: quiet ms before an idle full GC (src/node/idle_gc.ts); 0 = off; undefined = the default. */
  readonly idleGcMs?: number;
  /** Flag names given on the command line, in order: the CLI refuses the ones this build cannot honour. */
  readonly given: readonly string[];
}

export interface DevConfig {
  readonly dir: string;
  /** Nodes of the local cluster (all voters). */
  readonly nodes: number;
  readonly natsPort: number;
  readonly httpPort: number;
  readonly logLevel: LogLevel;
}

function fail(flag: string, message: string): never {
  throw new ConfigError(`--${flag}: ${message}`, flag);
}

/** `--a is required with --b`: a flag that only makes sense together with another. */
function requiredWith(flag: string, other: string, why = ''): never {
  throw new ConfigError(`--${flag} is required with --${other}${why}`, flag);
}

/** --tls-cert and --tls-key (and the route pair) come together or not at all. */
function pair(flags: ReadonlyMap<string, string>, certFlag: string, keyFlag: string): PemFiles | undefined {
  const cert = flags.get(certFlag);
  const key = flags.get(keyFlag);
  if (cert === undefined && key === undefined) return undefined;
  if (key === undefined) requiredWith(keyFlag, certFlag);
  if (cert === undefined) requiredWith(certFlag, keyFlag);
  return loadCertAndKey(certFlag, cert, keyFlag, key);
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** A file the node creates on first start: if it exists it must be a readable file, else its directory must exist. */
function creatableFile(flag: string, path: string): string {
  try {
    const st = statSync(path);
    if (!st.isFile()) fail(flag, `${quote(path)} exists but is not a regular file`);
    readFlagFile(flag, path);
    return path;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
  }
  const dir = dirname(resolve(path));
  if (!isDirectory(dir)) fail(flag, `${quote(path)} does not exist and its directory ${quote(dir)} does not exist either`);
  return path;
}

/** Bytes a path flag may have: Linux's PATH_MAX. */
const pathBytesMax = 4096;

/** A file the node replaces whole (written elsewhere, renamed over it): absent or a regular file, in an existing directory. */
function replaceableFile(flag: string, path: string): string {
  if (Buffer.byteLength(path) > pathBytesMax) fail(flag, `is ${Buffer.byteLength(path)} bytes long, more than ${pathBytesMax}; give a shorter path`);
  if (path.includes('\0')) fail(flag, 'contains a NUL byte; give a file path');
  try {
    if (!statSync(path).isFile()) fail(flag, `${quote(path)} exists but is not a regular file`);
    return path;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
  }
  const dir = dirname(resolve(path));
  if (!isDirectory(dir)) fail(flag, `${quote(path)} cannot be created: its directory ${quote(dir)} does not exist`);
  return path;
}

function existingDirOrAbsent(flag: string, path: string): string {
  try {
    if (!statSync(path).isDirectory()) fail(flag, `${quote(path)} exists but is not a directory`);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
  }
  return path;
}

function parseCluster(f: ReadonlyMap<string, string>): ClusterConfig {
  const name = f.has('cluster-name') ? parseName('cluster-name', f.get('cluster-name')!) : undefined;
  const port = f.has('cluster-port') ? parsePort('cluster-port', f.get('cluster-port')!, { allowZero: true }) : undefined;
  const routes = f.has('routes') ? parseRoutes('routes', f.get('routes')!) : [];
  const listenFd = parseListenFd(f, port);
  const user = f.has('cluster-user') ? parseName('cluster-user', f.get('cluster-user')!) : undefined;
  const passFile = f.get('cluster-pass-file');
  if (passFile !== undefined) readFlagFile('cluster-pass-file', passFile);
  if (passFile !== undefined && user === undefined) requiredWith('cluster-user', 'cluster-pass-file');
  if (user !== undefined && passFile === undefined) requiredWith('cluster-pass-file', 'cluster-user', ' (the route password is never taken from argv)');
  const routePair = pair(f, 'route-tls-cert', 'route-tls-key');
  const caFile = f.get('route-tls-ca');
  let routeTls: ClusterConfig['routeTls'];
  if (caFile !== undefined) {
    const ca = readFlagFile('route-tls-ca', caFile);
    parseCertificates('route-tls-ca', caFile, ca);
    if (routePair === undefined) requiredWith('route-tls-cert', 'route-tls-ca');
    routeTls = { ...routePair, caFile, ca };
  } else if (routePair !== undefined) {
    requiredWith('route-tls-ca', 'route-tls-cert', ' (routes verify their peers against this CA)');
  }
  const initialState = f.has('initial-cluster-state') ? parseEnum('initial-cluster-state', f.get('initial-cluster-state')!, ['new', 'existing'] as const) : undefined;
  if (initialState === 'existing' && routes.length === 0) fail('initial-cluster-state', 'existing needs --routes: the running nodes this node dials to learn its slot');
  return { name, port, routes, user, passFile, routeTls, ...(initialState !== undefined ? { initialState } : {}), ...(listenFd !== undefined ? { listenFd } : {}) };
}

/**
 * --cluster-fd: every node's --routes names every route port before any node starts, so a harness or supervisor that
 * binds the ports itself (never a probe another process can win) hands each node its socket. The port stays named by
 * --cluster-port: the slot table is derived from it, and the node checks the socket listens there.
 */
function parseListenFd(f: ReadonlyMap<string, string>, port: number | undefined): number | undefined {
  const raw = f.get('cluster-fd');
  if (raw === undefined) return undefined;
  const fd = parseIntInRange('cluster-fd', raw, 0, 65_535);
  if (fd <= 2) fail('cluster-fd', `${fd} is ${['stdin', 'stdout', 'stderr'][fd]}, not an inherited socket: pass the descriptor the listening socket was given (3 or above)`);
  if (port === undefined) requiredWith('cluster-port', 'cluster-fd', ' (the port the inherited socket listens on, as --routes names it)');
  if (port === 0) fail('cluster-port', '0 cannot be used with --cluster-fd: name the port the inherited socket listens on, as --routes names it');
  return fd;
}

function defaultServerName(): string {
  const host = hostname();
  // A fully qualified host name keeps its first label, as nats-server users expect a short name.
  const short = host.split('.')[0] ?? '';
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(short)) {
    fail('server-name', `the host name ${quote(host)} is not a valid server name; pass --server-name`);
  }
  return short;
}

/** Two listeners of this node on the same fixed port can never both start. */
function checkDistinctPorts(ports: readonly (readonly [string, number | undefined])[]): void {
  const seen = new Map<number, string>();
  for (const [flag, port] of ports) {
    if (port === undefined || port === 0) continue;
    const other = seen.get(port);
    if (other !== undefined) fail(flag, `port ${port} is already used by --${other}`);
    seen.set(port, flag);
  }
}

export function resolveServeConfig(args: ParsedArgs): ServeConfig {
  const f = args.flags;
  const bind = f.has('bind') ? parseHost('bind', f.get('bind')!) : defaults.bind;
  const natsPort = f.has('nats-port') ? parsePort('nats-port', f.get('nats-port')!, { allowZero: true }) : defaults.natsPort;
  const httpPort = f.has('http-port') ? parsePort('http-port', f.get('http-port')!, { allowZero: true }) : defaults.httpPort;
  const wsPort = f.has('ws-port') ? parsePort('ws-port', f.get('ws-port')!, { allowZero: true }) : undefined;
  const serverName = f.has('server-name') ? parseName('server-name', f.get('server-name')!) : defaultServerName();
  const maxSubscriptions = f.has('max-subscriptions') ? parseIntInRange('max-subscriptions', f.get('max-subscriptions')!, 0, 1_000_000) : undefined;
  const logLevel = f.has('log-level') ? parseEnum('log-level', f.get('log-level')!, logLevels) : defaults.logLevel;
  const tls = pair(f, 'tls-cert', 'tls-key');
  const dataDir = existingDirOrAbsent('data-dir', f.get('data-dir') ?? defaults.dataDir);
  const cluster = parseCluster(f);
  checkDistinctPorts([['nats-port', natsPort], ['http-port', httpPort], ['ws-port', wsPort], ['cluster-port', cluster.port]]);
  const busAuth = f.has('bus-auth') ? parseEnum('bus-auth', f.get('bus-auth')!, busAuthModes) : defaults.busAuth;
  const store = f.has('store') ? parseEnum('store', f.get('store')!, storeKinds) : defaults.store;
  const usersFile = f.get('users-file');
  if (usersFile !== undefined) {
    if (store !== 'file') fail('users-file', 'applies only to --store file (with --store kv users live in the replicated store)');
    readFlagFile('users-file', usersFile);
  }
  const kvReplicas = f.has('kv-replicas') ? parseIntInRange('kv-replicas', f.get('kv-replicas')!, 1, kvReplicasMax) : undefined;
  if (kvReplicas !== undefined && store !== 'kv') fail('kv-replicas', 'applies only to --store kv');
  const maxKvBytes = f.has('max-kv-bytes') ? parseByteSize('max-kv-bytes', f.get('max-kv-bytes')!, maxKvBytesMin, maxKvBytesMax) : undefined;
  if (maxKvBytes !== undefined && store !== 'kv' && cluster.port === undefined) fail('max-kv-bytes', 'applies only to a node serving the KV API (--store kv or a cluster node)');
  const idleGcMs = f.has('idle-gc') ? parseIntInRange('idle-gc', f.get('idle-gc')!, 0, idleGcMsMax) : undefined;
  const internalIdFile = f.has('internal-id-file') ? creatableFile('internal-id-file', f.get('internal-id-file')!) : undefined;
  const portsFile = f.has('ports-file') ? replaceableFile('ports-file', f.get('ports-file')!) : undefined;
  return {
    bind, natsPort, httpPort, serverName, tls, wsPort, logLevel, dataDir, cluster, busAuth, store, usersFile,
    internalIdFile, kvReplicas, given: [...f.keys()], ...(maxSubscriptions !== undefined ? { maxSubscriptions } : {}),
    ...(portsFile !== undefined ? { portsFile } : {}),
    ...(maxKvBytes !== undefined ? { maxKvBytes } : {}),
    ...(idleGcMs !== undefined ? { idleGcMs } : {}),
  };
}

export function resolveDevConfig(args: ParsedArgs): DevConfig {
  const f = args.flags;
  const natsPort = f.has('nats-port') ? parsePort('nats-port', f.get('nats-port')!, { allowZero: true }) : defaults.natsPort;
  const httpPort = f.has('http-port') ? parsePort('http-port', f.get('http-port')!, { allowZero: true }) : defaults.httpPort;
  checkDistinctPorts([['nats-port', natsPort], ['http-port', httpPort]]);
  const logLevel = f.has('log-level') ? parseEnum('log-level', f.get('log-level')!, logLevels) : defaults.devLogLevel;
  const dir = existingDirOrAbsent('dir', f.get('dir') ?? defaults.devDir);
  const nodes = f.has('nodes') ? parseIntInRange('nodes', f.get('nodes')!, 1, devNodesMax) : defaultDevNodes;
  return { dir, nodes, natsPort, httpPort, logLevel };
}
