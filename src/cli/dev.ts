// `membershipd dev` (what `npm start` runs): one node on loopback with TLS on the client port, using a dev CA
// and node certificate generated on first run and kept in --dir for later runs (clients keep trusting the same CA).
import { mkdir } from 'node:fs/promises';
import { X509Certificate } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../certs/index.js';
import { loadCertAndKey, type DevConfig, type PemFiles, type ServeConfig } from '../config/index.js';
import type { ServingNode } from './serve.js';

export const devNodeName = 'n1';
const dayMs = 86_400_000;

export interface DevCertificates {
  readonly caFile: string;
  readonly node: PemFiles;
  /** True when this run generated them. */
  readonly created: boolean;
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

export async function ensureDevCertificates(dir: string): Promise<DevCertificates> {
  const abs = resolve(dir);
  try {
    await mkdir(abs, { recursive: true, mode: 0o700 });
    let created = false;
    let ca = loadUsable(abs, 'ca');
    if (ca === undefined) {
      const fresh = await createCertificateAuthority('membershipd-dev-ca');
      const files = await writePemPair(abs, 'ca', fresh);
      ca = { ...files, cert: fresh.cert, key: fresh.key };
      created = true;
    }
    const caCert = new X509Certificate(ca.cert);
    let node = created ? undefined : loadUsable(abs, devNodeName, caCert);
    if (node === undefined) {
      const fresh = await issueCertificate(ca, { commonName: devNodeName });
      const files = await writePemPair(abs, devNodeName, fresh);
      node = { ...files, cert: fresh.cert, key: fresh.key };
      created = true;
    }
    return { caFile: ca.certFile, node, created };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | undefined)?.code ?? (err instanceof Error ? err.message : String(err));
    throw new ConfigError(`--dir: cannot create dev certificates in ${JSON.stringify(abs)} (${code})`, 'dir', { cause: err });
  }
}

export function devServeConfig(config: DevConfig, certs: DevCertificates): ServeConfig {
  return {
    bind: '127.0.0.1',
    natsPort: config.natsPort,
    httpPort: config.httpPort,
    serverName: devNodeName,
    tls: certs.node,
    wsPort: undefined,
    logLevel: config.logLevel,
    dataDir: join(resolve(config.dir), devNodeName),
    cluster: { name: undefined, port: undefined, routes: [], user: undefined, passFile: undefined, routeTls: undefined },
    busAuth: 'off',
    store: 'file',
    usersFile: undefined,
    internalIdFile: undefined,
    kvReplicas: undefined,
    given: [],
  };
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
export function exampleCommand(url: string, caFile: string): string {
  const script = `import("@nats-io/transport-node").then(async ({ connect }) => { `
    + `const nc = await connect({ servers: ${JSON.stringify(url)}, tls: { caFile: ${JSON.stringify(caFile)} } }); `
    + `const sub = nc.subscribe("hello", { max: 1 }); nc.publish("hello", "world"); `
    + `for await (const m of sub) console.log("received", m.subject, m.string()); await nc.close(); })`;
  const project = projectDir();
  const run = `node -e ${shellQuote(script)}`;
  // The bare import resolves from the working directory, so the command carries its own `cd`.
  return project === undefined ? run : `cd ${shellQuote(project)} && ${run}`;
}

export function devBanner(node: ServingNode, certs: DevCertificates): string {
  return [
    `membershipd dev: 1 node (${node.nats.serverName}) on 127.0.0.1 with TLS on the client port; bus auth off`,
    `  client URL   ${node.urls.nats}`,
    `  CA file      ${certs.caFile}`,
    '  credentials  none (dev runs with --bus-auth off)',
    `  HTTP         ${node.urls.http}/livez`,
    `  certificates ${certs.created ? 'generated now in' : 'kept from an earlier run in'} ${dirname(certs.caFile)}`,
    'Try it (subscribes to "hello", publishes "world" over TLS verified against the CA):',
    `  ${exampleCommand(node.urls.nats, certs.caFile)}`,
    'Ctrl-C stops the node.',
  ].join('\n');
}
