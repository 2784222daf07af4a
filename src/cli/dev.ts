// `membershipd dev` (what `npm start` runs): a local cluster of `--nodes` nodes on loopback in one command. TLS on
// every client port, mutual-TLS routes, bus auth enforced, users and roles in the replicated store (`--store kv`),
// so the admin CLI (`membershipd user add … --store kv`, `cluster status`) changes membership live, as in
// production. On first run it generates in --dir a dev CA, each node's client and route certificates, the route
// password and the admin user's password (admin.password); later runs reuse them and the Raft data (data/, on the
// same route ports, kept in route-ports.json: the slots of a Raft data dir are its peers' addresses), so clients
// keep trusting the same CA and every user and role added survives a restart.
//
// src/cli/index.ts runs node n1 through the ordinary serve path (signals, drain, exit code) with
// devServeConfig(); the other nodes are started here, in the same process, by ensureDevCertificates(). Once n1 is
// up, devReady() chains the peers' stop onto n1's (one Ctrl-C drains and stops every node), waits for a healthy
// cluster, writes cluster.env (how the admin CLI finds n1, the CA and n1's internal identity), creates the dev
// user and role through the admin API (idempotent: a restart finds them unchanged) and returns the banner.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { X509Certificate } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync, readFileSync } from 'node:fs';
import { ConfigError, MembershipdError } from '../errors.js';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../certs/index.js';
import { defaultDevNodes, loadCertAndKey, type DevConfig, type PemFiles, type ServeConfig } from '../config/index.js';
import { controlBuckets } from '../control/index.js';
import { createLogger } from '../log.js';
import { memoryOutput } from './output.js';
import type { ServingNode } from './serve.js';
import { bindListeners } from '../node/listeners.js';

export const devNodeName = 'n1';
export const devClusterName = 'dev';
/** The printed dev user: the built-in admin role (every subject, and the admin API). */
export const devAdminUser = 'admin';
/** The role the banner's `user add` example names: its own subjects, request/reply included. */
export const devAppRole = { name: 'app', subjects: 'app.>' } as const;
const devRouteUser = 'route';
const dayMs = 86_400_000;
/** Bound on waiting for a healthy cluster and the first admin writes (elections take 1–2 s; a loaded box more). */
export const devReadyTimeoutMs = 60_000;

/** dev could not bring its cluster up (no quorum in time, the admin API refused the dev user). Exit 1. */
export class DevStartError extends MembershipdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EDEV', message, options);
  }
}

export interface DevCertificates {
  readonly caFile: string;
  /** n1's client-port certificate. */
  readonly node: PemFiles;
  /** True when this run generated any of them. */
  readonly created: boolean;
  readonly cluster: DevCluster;
}

export interface DevCluster {
  readonly dir: string;
  /** n1's route port, bound by ensureDevCertificates: the caller hands it to n1 (NodeTuning.clusterListener). */
  readonly routeListener: Server;
  /** Route ports of n1..nN on 127.0.0.1, the same on every run of this --dir (kept in route-ports.json). */
  readonly routePorts: readonly number[];
  /** True when data/ (the replicated users, roles and KV buckets) is kept from an earlier run. */
  readonly dataKept: boolean;
  /** Why data/ was started afresh although it existed (e.g. --nodes changed); undefined otherwise. */
  readonly dataReset: string | undefined;
  readonly passFile: string;
  readonly adminPassword: string;
  readonly adminPasswordFile: string;
  /** n1's internal identity (NKey seed, 0600): the admin CLI's signing identity. */
  readonly idFile: string;
  /** KEY=VALUE file for `membershipd <command> --env-file`: n1's client port, the CA, n1's identity. */
  readonly envFile: string;
  /** n2..nN, started in this process. */
  readonly peers: ServingNode[];
}

/** A loaded pair still usable for a while, else undefined (missing, unreadable, mismatched, expiring). */
function loadUsable(dir: string, base: string, issuer?: X509Certificate): PemFiles | undefined {
  try {
    const pair = loadCertAndKey('dir', join(dir, `${base}.pem`), 'dir', join(dir, `${base}.key`));
    const cert = new X509Certificate(pair.cert);
    if (Date.parse(cert.validTo) - Date.now() < dayMs) return undefined;
    if (issuer !== undefined && !cert.verify(issuer.publicKey)) return undefined;
    return pair;
  } catch {
    return undefined;
  }
}


/** A pair `base` signed by the CA, kept when usable, else (re)issued. */
async function ensurePair(dir: string, base: string, ca: PemFiles, caCert: X509Certificate, fresh: boolean, usage?: 'client'): Promise<{ pair: PemFiles; created: boolean }> {
  const kept = fresh ? undefined : loadUsable(dir, base, caCert);
  if (kept !== undefined) return { pair: kept, created: false };
  const leaf = await issueCertificate(ca, { commonName: base, ...(usage !== undefined ? { usage } : {}) });
  const files = await writePemPair(dir, base, leaf);
  return { pair: { ...files, cert: leaf.cert, key: leaf.key }, created: true };
}

/** Reads a kept secret file, or writes a fresh random one (0600). */
async function ensureSecret(file: string): Promise<{ value: string; created: boolean }> {
  try {
    const value = (await readFile(file, 'utf8')).trim();
    if (value.length > 0) return { value, created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const value = randomBytes(18).toString('base64url');
  await writeFile(file, `${value}\n`, { mode: 0o600 });
  return { value, created: true };
}

/** The route ports kept for `nodes` nodes, or undefined (missing, unreadable, another node count). */
function keptRoutePorts(file: string, nodes: number): { ports: number[] | undefined; why: string | undefined } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return { ports: undefined, why: undefined };
  }
  try {
    const v = JSON.parse(text) as { routePorts?: unknown };
    const ports = v.routePorts;
    if (!Array.isArray(ports) || !ports.every((p) => Number.isInteger(p) && p > 0 && p < 65536) || new Set(ports).size !== ports.length) {
      return { ports: undefined, why: `${file} is not a list of ports` };
    }
    if (ports.length !== nodes) return { ports: undefined, why: `--nodes ${nodes}, the data was a cluster of ${ports.length}` };
    return { ports: ports as number[], why: undefined };
  } catch {
    return { ports: undefined, why: `${file} is not JSON` };
  }
}

/** Listens on 127.0.0.1:port (a kept route port); undefined when another process holds it. */
function bindRoutePort(port: number): Promise<Server | undefined> {
  return new Promise((done) => {
    const server = createServer();
    server.once('error', () => done(undefined));
    server.listen({ port, host: '127.0.0.1', exclusive: true }, () => done(server));
  });
}

const routeTlsBase = (i: number): string => `n${i + 1}-route`;
const clientTlsBase = (i: number): string => (i === 0 ? devNodeName : `n${i + 1}`);
const seedFile = (dir: string, i: number): string => join(dir, `n${i + 1}.seed`);

/** The serve configuration of dev node `i` (0 = n1). */
function nodeConfig(dir: string, i: number, certs: { node: PemFiles; route: PemFiles; caFile: string; ca: string }, c: Omit<DevCluster, 'peers' | 'routeListener'>,
  ports: { nats: number; http: number }, logLevel: ServeConfig['logLevel']): ServeConfig {
  return {
    bind: '127.0.0.1',
    natsPort: ports.nats,
    httpPort: ports.http,
    serverName: `n${i + 1}`,
    tls: certs.node,
    wsPort: undefined,
    logLevel,
    dataDir: join(dir, 'data', `n${i + 1}`),
    cluster: {
      name: devClusterName,
      port: c.routePorts[i]!,
      routes: c.routePorts.map((p) => ({ host: '127.0.0.1', port: p, text: `127.0.0.1:${p}` })),
      user: devRouteUser,
      passFile: c.passFile,
      routeTls: { ...certs.route, caFile: certs.caFile, ca: certs.ca },
    },
    busAuth: 'enforce',
    // Users and roles live in the replicated store: the admin API (and so the admin CLI) changes them live.
    store: 'kv',
    usersFile: undefined,
    internalIdFile: seedFile(dir, i),
    kvReplicas: undefined,
    given: [],
  };
}

const perDir = new Map<string, { routes: PemFiles[]; clients: PemFiles[]; ca: PemFiles }>();

/**
 * Prepares --dir (CA, every node's client and route certificates, route password, admin password, route ports;
 * kept across runs), then starts nodes n2..nN in this process; n1 is started by the caller with devServeConfig().
 */
export async function ensureDevCertificates(dir: string, devNodes: number = defaultDevNodes): Promise<DevCertificates> {
  const abs = resolve(dir);
  let files: { ca: PemFiles; clients: PemFiles[]; routes: PemFiles[]; created: boolean; cluster: Omit<DevCluster, 'peers' | 'routeListener'> };
  const routeListeners: Server[] = [];
  try {
    await mkdir(abs, { recursive: true, mode: 0o700 });
    let created = false;
    let ca = loadUsable(abs, 'ca');
    if (ca === undefined) {
      const fresh = await createCertificateAuthority('membershipd-dev-ca');
      const written = await writePemPair(abs, 'ca', fresh);
      ca = { ...written, cert: fresh.cert, key: fresh.key };
      created = true;
    }
    const caCert = new X509Certificate(ca.cert);
    const freshCa = created;
    const clients: PemFiles[] = [];
    const routes: PemFiles[] = [];
    for (let i = 0; i < devNodes; i++) {
      const client = await ensurePair(abs, clientTlsBase(i), ca, caCert, freshCa);
      const route = await ensurePair(abs, routeTlsBase(i), ca, caCert, freshCa);
      clients.push(client.pair);
      routes.push(route.pair);
      created ||= client.created || route.created;
    }
    const pass = await ensureSecret(join(abs, 'route.pass'));
    const admin = await ensureSecret(join(abs, 'admin.password'));
    created ||= pass.created || admin.created;
    // A Raft data dir names its peers by address (src/node bootstrap: slots are the sorted route addresses), so
    // kept data needs the same route ports; anything else (first run, --nodes changed, a data/ from a build that
    // wiped it every run) starts the data afresh on new ports.
    const dataDir = join(abs, 'data');
    const portsFile = join(abs, 'route-ports.json');
    const kept = keptRoutePorts(portsFile, devNodes);
    const hadData = existsSync(dataDir);
    let routePorts: number[];
    let dataKept = false;
    // Every node's route port is bound here and its socket handed to the node (NodeOptions.clusterListener), never
    // probed and released: every node's --routes names all of them before any node starts.
    if (kept.ports !== undefined && hadData) {
      for (const [i, p] of kept.ports.entries()) {
        const server = await bindRoutePort(p);
        if (server === undefined) {
          throw new ConfigError(`--dir: the route port 127.0.0.1:${p} of n${i + 1} (kept in ${portsFile}: the cluster's data in ${dataDir} names its peers by these ports) is in use. `
            + `Is another membershipd dev running on ${abs}? Stop it, or remove ${dataDir} and ${portsFile} to start a fresh cluster (users and roles are lost)`, 'dir');
        }
        routeListeners.push(server);
      }
      routePorts = kept.ports;
      dataKept = true;
    } else {
      await rm(dataDir, { recursive: true, force: true });
      const bound = await bindListeners(devNodes);
      routeListeners.push(...bound.map((b) => b.server));
      routePorts = bound.map((b) => b.port);
      await writeFile(portsFile, `${JSON.stringify({ routePorts })}\n`, { mode: 0o600 });
    }
    const dataReset = hadData && !dataKept ? (kept.why ?? 'the earlier data/ had no route-ports.json: an older dev that kept users in users.json') : undefined;
    files = {
      ca, clients, routes, created,
      cluster: {
        dir: abs, routePorts, dataKept, dataReset, passFile: join(abs, 'route.pass'), adminPassword: admin.value, adminPasswordFile: join(abs, 'admin.password'),
        idFile: seedFile(abs, 0), envFile: join(abs, 'cluster.env'),
      },
    };
  } catch (err) {
    for (const l of routeListeners) l.close();
    if (err instanceof ConfigError) throw err;
    const code = (err as NodeJS.ErrnoException | undefined)?.code ?? (err instanceof Error ? err.message : String(err));
    throw new ConfigError(`--dir: cannot create dev certificates in ${JSON.stringify(abs)} (${code})`, 'dir', { cause: err });
  }
  perDir.set(abs, { routes: files.routes, clients: files.clients, ca: files.ca });
  const peers: ServingNode[] = [];
  const { startServing, loadBusAuth } = await import('./serve.js');
  try {
    for (let i = 1; i < devNodes; i++) {
      const config = nodeConfig(abs, i, { node: files.clients[i]!, route: files.routes[i]!, caFile: files.ca.certFile, ca: files.ca.cert }, files.cluster, { nats: 0, http: 0 }, 'warn');
      const logger = createLogger(config.logLevel, { server_name: config.serverName });
      const auth = await loadBusAuth(config, logger);
      peers.push(await startServing(config, logger, auth.authenticator, auth, { clusterListener: routeListeners[i]! }));
    }
  } catch (err) {
    await Promise.allSettled(peers.map((p) => p.stop()));
    // Those no node took over (a node that stopped closed its own already).
    for (const l of routeListeners.slice(peers.length + 1)) l.close();
    routeListeners[0]!.close();
    throw err;
  }
  return { caFile: files.ca.certFile, node: files.clients[0]!, created: files.created, cluster: { ...files.cluster, peers, routeListener: routeListeners[0]! } };
}

export function devServeConfig(config: DevConfig, certs: DevCertificates): ServeConfig {
  const kept = perDir.get(certs.cluster.dir);
  if (kept === undefined) throw new Error('devServeConfig: call ensureDevCertificates first');
  return nodeConfig(certs.cluster.dir, 0, { node: certs.node, route: kept.routes[0]!, caFile: certs.caFile, ca: kept.ca.cert }, certs.cluster,
    { nats: config.natsPort, http: config.httpPort }, config.logLevel);
}

/** POSIX shell single-quoting: safe for any path or script. */
export function shellQuote(text: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

/** The directory whose node_modules holds @nats-io/transport-node (the project root), if found. */
function projectDir(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 6; depth++) {
    if (existsSync(join(dir, 'node_modules', '@nats-io', 'transport-node', 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return undefined;
}

/** A command that connects with TLS verified against the dev CA, subscribes, publishes and prints what it got. */
export function exampleCommand(url: string, caFile: string, user?: string, pass?: string): string {
  const auth = user !== undefined ? `, user: ${JSON.stringify(user)}, pass: ${JSON.stringify(pass ?? '')}` : '';
  const script = `import("@nats-io/transport-node").then(async ({ connect }) => { `
    + `const nc = await connect({ servers: ${JSON.stringify(url)}, tls: { caFile: ${JSON.stringify(caFile)} }${auth} }); `
    + `const sub = nc.subscribe("hello", { max: 1 }); nc.publish("hello", "world"); `
    + `for await (const m of sub) console.log("received", m.subject, m.string()); await nc.close(); })`;
  const project = projectDir();
  const run = `node -e ${shellQuote(script)}`;
  // The bare import resolves from the working directory, so the command carries its own `cd`.
  return project === undefined ? run : `cd ${shellQuote(project)} && ${run}`;
}

/** `path` as typed from `cwd`: relative when inside it (shorter to read), else absolute. */
function fromCwd(path: string, cwd: string): string {
  const r = relative(cwd, path);
  return r !== '' && !r.startsWith('..') && !isAbsolute(r) ? r : path;
}

/**
 * How to run this same membershipd from `cwd`: `node dist/bin/membershipd.js` after `npm start` (the build), or
 * the TypeScript entry point through tsx when dev itself runs from source (tests, `tsx bin/membershipd.ts dev`).
 */
export function cliInvocation(cwd: string = process.cwd(), script: string | undefined = process.argv[1]): string {
  if (script === undefined || script === '') return 'membershipd';
  const path = shellQuote(fromCwd(resolve(script), cwd));
  return /\.[cm]?ts$/.test(script) ? `node --import tsx ${path}` : `node ${path}`;
}

/** cluster.env for the admin CLI (src/cli/admin/connection.ts reads these keys); values quoted, paths absolute. */
export function devEnvFile(natsPort: number, caFile: string, idFile: string): string {
  const quote = (v: string): string => {
    if (/["\r\n]/.test(v)) throw new DevStartError(`${JSON.stringify(v)}: a path with a quote or newline cannot go into cluster.env; use another --dir`);
    return `"${v}"`;
  };
  return [
    '# membershipd dev: how the admin CLI reaches this cluster: `membershipd <command> --env-file <this file>`.',
    '# Rewritten at every start of `membershipd dev` on this --dir (n1\'s client port is that run\'s).',
    `NATS_CLIENT_PORT=${natsPort}`,
    `TLS_CA=${quote(caFile)}`,
    `INTERNAL_ID_FILE=${quote(idFile)}`,
    '',
  ].join('\n');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Why `node` cannot serve the admin API yet, or undefined when it can (healthy, control buckets created). */
function notReady(node: ServingNode): string | undefined {
  const c = node.cluster;
  if (c === undefined) return `${node.nats.serverName}: no cluster node`;
  const h = c.status.health();
  if (h.status !== 'ok') return `${node.nats.serverName}: ${h.reason}`;
  const reader = c.kv.reader;
  const missing = Object.values(controlBuckets).filter((b) => reader.bucketInfo(b) === undefined);
  return missing.length === 0 ? undefined : `${node.nats.serverName}: control buckets not created yet (${missing.join(', ')})`;
}

/** Runs one admin command in process, exactly as the CLI would (same parser, connection, signing). */
async function admin(area: string, argv: readonly string[], envFile: string): Promise<{ code: number; out: string; err: string }> {
  const { runAdmin } = await import('./admin/index.js');
  const o = memoryOutput();
  // An empty environment: cluster.env alone says where n1 is (a stray NATS_CLIENT_PORT in the shell must not win).
  const code = await runAdmin(area, [...argv, '--env-file', envFile, '--timeout', '5000'], o, {});
  return { code, out: o.stdout.join('\n'), err: o.stderr.join('\n') };
}

/**
 * After n1 is up: chains the peers' stop onto n1's, waits (bounded) for every node to be healthy, writes
 * cluster.env, creates role `app` and the admin user through the admin API, and returns the banner. Resolves
 * undefined when the node is stopped meanwhile (a Ctrl-C during start-up); rejects with DevStartError on timeout.
 */
export async function devReady(node: ServingNode, certs: DevCertificates, timeoutMs: number = devReadyTimeoutMs): Promise<string | undefined> {
  const c = certs.cluster;
  let stopped = false;
  // One Ctrl-C: the serve path stops n1 (and waits for it); the peers stop with it.
  const stopFirst = node.stop.bind(node);
  (node as { stop: () => Promise<void> }).stop = async () => {
    stopped = true;
    await Promise.all([stopFirst(), ...c.peers.map((p) => p.stop())]);
  };
  const all = [node, ...c.peers];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (stopped) return undefined;
    const waiting = all.map(notReady).filter((w) => w !== undefined);
    if (waiting.length === 0) break;
    if (Date.now() > deadline) throw new DevStartError(`membershipd dev: the cluster was not ready within ${timeoutMs} ms: ${waiting.join('; ')}`);
    await sleep(50);
  }
  const natsPort = Number(new URL(node.urls.nats).port);
  await writeFile(c.envFile, devEnvFile(natsPort, certs.caFile, c.idFile), { mode: 0o600 });

  // Idempotent: `add` of the same spec is `unchanged`; a different one (exit 3) is left to the operator for the
  // role, but the admin user is reset to the printed password and role, since the banner promises them.
  // No `_INBOX.>`: every user owns its private inbox `_INBOX_<user>.>` (SECURITY.md); a role granting the shared
  // one would read every reply on the node.
  const role = ['add', devAppRole.name, '--pub-allow', devAppRole.subjects, '--sub-allow', devAppRole.subjects, '--allow-responses'];
  const user = ['add', devAdminUser, '--password-file', c.adminPasswordFile, '--role', 'admin'];
  const reset = ['update', devAdminUser, '--password-file', c.adminPasswordFile, '--role', 'admin', '--enable'];
  const outcome: string[] = [];
  for (const [area, argv, fallback] of [['role', role, undefined], ['user', user, reset]] as const) {
    for (let attempt = 1; ; attempt++) {
      if (stopped) return undefined;
      let r = await admin(area, argv, c.envFile);
      if (r.code === 3 && fallback !== undefined) r = await admin(area, fallback, c.envFile);
      if (r.code === 0 || r.code === 3) {
        outcome.push(r.code === 0 ? r.out : `${area} ${argv[1]}: kept as changed by an operator`);
        break;
      }
      // 1 = no leader yet, a timeout, a replaced leader: retry within the bound. 2 = a bug in these arguments.
      if (r.code !== 1 || Date.now() > deadline) throw new DevStartError(`membershipd dev: creating the dev ${area} through the admin API failed after ${attempt} attempts: ${r.err}`);
      await sleep(250);
    }
  }
  return devBanner(all, certs, outcome);
}

export function devBanner(all: readonly ServingNode[], certs: DevCertificates, bootstrap: readonly string[] = [], cwd: string = process.cwd()): string {
  const c = certs.cluster;
  const cli = cliInvocation(cwd);
  const envFlag = `--env-file ${shellQuote(fromCwd(c.envFile, cwd))}`;
  return [
    `membershipd dev: ${all.length} node${all.length === 1 ? '' : 's'} (cluster "${devClusterName}") on 127.0.0.1, TLS on client ports, bus auth enforced, users in the replicated store (--store kv)`,
    `  client URLs  ${all.map((n) => n.urls.nats).join(',')}`,
    `  CA file      ${certs.caFile}`,
    `  credentials  user ${devAdminUser}, password ${c.adminPassword} (kept in ${c.adminPasswordFile}; role admin: every subject)`,
    `  health       ${all.map((n) => `${n.urls.http}/healthz`).join(' ')}`,
    `  certificates ${certs.created ? 'generated now in' : 'kept from an earlier run in'} ${c.dir}`,
    `  data         ${c.dataKept ? 'kept from an earlier run' : c.dataReset !== undefined ? `started afresh (${c.dataReset})` : 'new'}: users, roles and KV buckets in ${join(c.dir, 'data')}; ${bootstrap.join(', ')}`,
    'Try it (subscribes to "hello", publishes "world" over TLS verified against the CA, as the admin user):',
    `  ${exampleCommand(all[0]!.urls.nats, certs.caFile, devAdminUser, c.adminPassword)}`,
    `Administer it live from ${cwd} (${fromCwd(c.envFile, cwd)} tells the admin CLI n1's port, the CA and n1's internal identity):`,
    `  ${cli} cluster status ${envFlag}`,
    `  echo bob-password | ${cli} user add bob --password-stdin --role ${devAppRole.name} --store kv ${envFlag}`,
    `  ${cli} user list ${envFlag}`,
    `  ${cli} role add sensors --pub-allow 'sensors.>' --sub-allow 'sensors.>' ${envFlag}`,
    `  (role ${devAppRole.name} publishes and subscribes ${devAppRole.subjects}, replies included; a user's replies go to its own inbox _INBOX_<user>: connect with inboxPrefix '_INBOX_bob'; \`${cli} --help\` lists every admin command)`,
    'Ctrl-C stops every node.',
  ].join('\n');
}
