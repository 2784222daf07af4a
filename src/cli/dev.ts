// `membershipd dev` (what `npm start` runs): a local cluster of `--nodes` nodes on loopback in one command. TLS on
// every client port, mutual-TLS routes, bus auth enforced with an admin user. On first run it generates in --dir a
// dev CA, each node's client and route certificates, the route password and the admin user (password kept in
// admin.password, users in users.json); later runs reuse them, so clients keep trusting the same CA and the same
// credentials. Raft state is per run (data/ is wiped at start): the durable part of dev is its credentials.
//
// src/cli/index.ts runs node n1 through the ordinary serve path (signals, drain, exit code) with
// devServeConfig(); the other nodes are started here, in the same process, by ensureDevCertificates(), and
// devBanner() chains their stop onto n1's, so one Ctrl-C drains and stops every node.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { X509Certificate } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { hashPassword } from '../auth/index.js';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../certs/index.js';
import { defaultDevNodes, loadCertAndKey, type DevConfig, type PemFiles, type ServeConfig } from '../config/index.js';
import { createLogger } from '../log.js';
import type { ServingNode } from './serve.js';
import { freePort } from '../free_port.js';

export const devNodeName = 'n1';
/** Nodes of the dev cluster: a majority survives one loss. (A --nodes flag needs an entry in src/config.) */
export const devClusterName = 'dev';
export const devAdminUser = 'admin';
const devRouteUser = 'route';
const dayMs = 86_400_000;

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
  /** Route ports of n1..nN (this run's, on 127.0.0.1). */
  readonly routePorts: readonly number[];
  readonly passFile: string;
  readonly usersFile: string;
  readonly adminPassword: string;
  readonly adminPasswordFile: string;
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

const routeTlsBase = (i: number): string => `n${i + 1}-route`;
const clientTlsBase = (i: number): string => (i === 0 ? devNodeName : `n${i + 1}`);

/** The serve configuration of dev node `i` (0 = n1). */
function nodeConfig(dir: string, i: number, certs: { node: PemFiles; route: PemFiles; caFile: string; ca: string }, c: Omit<DevCluster, 'peers'>,
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
    store: 'file',
    usersFile: c.usersFile,
    internalIdFile: join(dir, `n${i + 1}.seed`),
    kvReplicas: undefined,
    given: [],
  };
}

const perDir = new Map<string, { routes: PemFiles[]; clients: PemFiles[]; ca: PemFiles }>();

/**
 * Prepares --dir (CA, every node's client and route certificates, route password, admin user; kept across runs),
 * then starts nodes n2..nN in this process; n1 is started by the caller with devServeConfig().
 */
export async function ensureDevCertificates(dir: string, devNodes: number = defaultDevNodes): Promise<DevCertificates> {
  const abs = resolve(dir);
  let files: { ca: PemFiles; clients: PemFiles[]; routes: PemFiles[]; created: boolean; cluster: Omit<DevCluster, 'peers'> };
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
    const usersFile = join(abs, 'users.json');
    if (admin.created || !existsSync(usersFile)) {
      // The built-in admin role grants every subject; add narrower users and roles to users.json (SIGHUP reloads it).
      const users = { users: [{ name: devAdminUser, password: await hashPassword(admin.value), roles: ['admin'] }], roles: {} };
      await writeFile(usersFile, `${JSON.stringify(users, null, 2)}\n`, { mode: 0o600 });
    }
    created ||= pass.created || admin.created;
    // Raft state is per run: route ports are picked afresh and a data dir remembers its peers' addresses.
    await rm(join(abs, 'data'), { recursive: true, force: true });
    const routePorts: number[] = [];
    for (let i = 0; i < devNodes; i++) routePorts.push(await freePort());
    files = {
      ca, clients, routes, created,
      cluster: { dir: abs, routePorts, passFile: join(abs, 'route.pass'), usersFile, adminPassword: admin.value, adminPasswordFile: join(abs, 'admin.password') },
    };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | undefined)?.code ?? (err instanceof Error ? err.message : String(err));
    throw new ConfigError(`--dir: cannot create dev certificates in ${JSON.stringify(abs)} (${code})`, 'dir', { cause: err });
  }
  perDir.set(abs, { routes: files.routes, clients: files.clients, ca: files.ca });
  const peers: ServingNode[] = [];
  const { startServing } = await import('./serve.js');
  const { loadBusAuth } = await import('./bus_auth.js');
  try {
    for (let i = 1; i < devNodes; i++) {
      const config = nodeConfig(abs, i, { node: files.clients[i]!, route: files.routes[i]!, caFile: files.ca.certFile, ca: files.ca.cert }, files.cluster, { nats: 0, http: 0 }, 'warn');
      const logger = createLogger(config.logLevel, { server_name: config.serverName });
      const auth = await loadBusAuth(config, logger);
      peers.push(await startServing(config, logger, auth.authenticator, auth));
    }
  } catch (err) {
    await Promise.allSettled(peers.map((p) => p.stop()));
    throw err;
  }
  return { caFile: files.ca.certFile, node: files.clients[0]!, created: files.created, cluster: { ...files.cluster, peers } };
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

export function devBanner(node: ServingNode, certs: DevCertificates): string {
  const c = certs.cluster;
  // One Ctrl-C: the serve path stops n1 (and waits for it); the peers stop with it.
  const stopFirst = node.stop.bind(node);
  (node as { stop: () => Promise<void> }).stop = async () => {
    await Promise.all([stopFirst(), ...c.peers.map((p) => p.stop())]);
  };
  const all = [node, ...c.peers];
  return [
    `membershipd dev: ${all.length} node${all.length === 1 ? '' : 's'} (cluster "${devClusterName}") on 127.0.0.1, TLS on client ports, bus auth enforced`,
    `  client URLs  ${all.map((n) => n.urls.nats).join(',')}`,
    `  CA file      ${certs.caFile}`,
    `  credentials  user ${devAdminUser}, password ${c.adminPassword} (kept in ${c.adminPasswordFile}; users in ${c.usersFile})`,
    `  health       ${all.map((n) => `${n.urls.http}/healthz`).join(' ')}`,
    `  certificates ${certs.created ? 'generated now in' : 'kept from an earlier run in'} ${c.dir}`,
    'Try it (subscribes to "hello", publishes "world" over TLS verified against the CA, as the admin user):',
    `  ${exampleCommand(node.urls.nats, certs.caFile, devAdminUser, c.adminPassword)}`,
    'Ctrl-C stops every node.',
  ].join('\n');
}
