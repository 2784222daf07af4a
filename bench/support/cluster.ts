// A 3-node membershipd cluster as separate processes on loopback, in the deploy unit's posture (--store kv,
// --bus-auth enforce, TLS client port, mutual-TLS routes with a route password, WAL fsync on), and the admin
// API as `membershipd` drives it: a signed envelope over a TLS connection authenticated with the node's
// internal identity. Shared by bench:cluster and bench:storm.
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { type CertificateAuthority, createCertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { signRequest } from '../../src/control/envelope.js';
import { keyPairFromSeed } from '../../src/auth/index.js';
import { nodeEntryArgs, spawnChild } from './children.js';
import { freePorts } from './ports.js';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface BenchCluster {
  natsPorts: number[];
  httpPorts: number[];
  routePorts: number[];
  dirs: string[];
  idFiles: string[];
  ca: CertificateAuthority;
  caFile: string;
  stderr: string[];
  children: ChildProcess[];
  /** The argv each node was started with (a restart reuses it). */
  argv: string[][];
}

export async function getJson(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  } catch (e) {
    return { status: 0, body: { error: String(e) } };
  }
}

/** The node runs from plain JavaScript bundled by esbuild, as it would from dist/. */
function nodeCommand(bundleName = 'membershipd_cluster.mjs'): string[] {
  return nodeEntryArgs('bin/membershipd.ts', bundleName, 'esbuild bundle failed; running the nodes under tsx');
}

/** Starts node i of the cluster with its argv (first start or a restart with the same data). */
export function spawnNode(c: BenchCluster, i: number): ChildProcess {
  // The unit's malloc setting (deploy/cluster/membershipd-cluster.service): RSS as deployed. MALLOC_MMAP_THRESHOLD_=default
  // measures glibc's own behaviour.
  const env: NodeJS.ProcessEnv = { ...process.env, MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072' };
  if (env.MALLOC_MMAP_THRESHOLD_ === 'default') delete env.MALLOC_MMAP_THRESHOLD_;
  const child = spawnChild(process.execPath, c.argv[i]!, { cwd: repo, env, stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => { c.stderr[i] = (c.stderr[i] + d.toString()).slice(-4000); });
  c.children[i] = child;
  return child;
}

export interface StartOptions {
  /** Node.js flags before the entry point (e.g. --cpu-prof). */
  readonly nodeFlags?: readonly string[];
  /** Extra `serve` flags for every node. */
  readonly serveFlags?: readonly string[];
  /**
   * File name of the esbuild bundle under node_modules/.cache (shared by every worktree using the same
   * node_modules): a bench of its own name never runs a bundle another worktree's bench just wrote.
   */
  readonly bundleName?: string;
  /** The nodes' --log-level (default error: a bench reads figures, not logs). */
  readonly logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

export async function startBenchCluster(root: string, o: StartOptions = {}): Promise<BenchCluster> {
  const ca = await createCertificateAuthority('bench-ca');
  const caFile = join(root, 'ca.pem');
  writeFileSync(caFile, ca.cert);
  const passFile = join(root, 'route.pass');
  writeFileSync(passFile, 'route-secret\n', { mode: 0o600 });
  const ports = await freePorts(9);
  const [routePorts, natsPorts, httpPorts] = [ports.slice(0, 3), ports.slice(3, 6), ports.slice(6)];
  const routes = routePorts.map((p) => `127.0.0.1:${p}`).join(',');
  const cmd = nodeCommand(o.bundleName);
  const c: BenchCluster = { natsPorts, httpPorts, routePorts, dirs: [], idFiles: [], ca, caFile, stderr: ['', '', ''], children: [], argv: [] };
  for (let i = 0; i < 3; i++) {
    const pair = await writePemPair(root, `n${i}`, await issueCertificate(ca, { commonName: `n${i}`, usage: 'node' }));
    const dataDir = join(root, `data-${i}`);
    mkdirSync(dataDir, { recursive: true });
    c.dirs.push(dataDir);
    c.idFiles.push(join(root, `id-${i}.nk`));
    c.argv.push([...(o.nodeFlags ?? []), ...cmd,
      'serve', '--bind', '127.0.0.1', '--bus-auth', 'enforce', '--http-port', String(httpPorts[i]), '--nats-port', String(natsPorts[i]),
      '--tls-cert', pair.certFile, '--tls-key', pair.keyFile,
      '--cluster-name', 'bench', '--server-name', `n${i}`, '--cluster-port', String(routePorts[i]), '--routes', routes,
      '--cluster-user', 'route', '--cluster-pass-file', passFile,
      '--route-tls-cert', pair.certFile, '--route-tls-key', pair.keyFile, '--route-tls-ca', caFile,
      '--internal-id-file', c.idFiles[i]!, '--store', 'kv', '--kv-replicas', '3', '--data-dir', dataDir, '--log-level', o.logLevel ?? 'error',
      ...(o.serveFlags ?? []),
    ]);
    spawnNode(c, i);
  }
  const t0 = Date.now();
  await waitHealthy(c, [0, 1, 2], 60_000);
  console.log(`  cluster healthy ${Date.now() - t0} ms after spawning 3 processes`);
  return c;
}

/** Waits until every listed node answers /healthz 200; throws with the nodes' answers after `timeoutMs`. */
export async function waitHealthy(c: BenchCluster, nodes: readonly number[], timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const hs = await Promise.all(nodes.map((i) => getJson(`http://127.0.0.1:${c.httpPorts[i]}/healthz`)));
    if (hs.every((h) => h.status === 200)) return;
    for (const i of nodes) {
      const ch = c.children[i]!;
      if (ch.exitCode !== null) throw new Error(`n${i} exited ${ch.exitCode}: ${c.stderr[i]}`);
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`cluster not healthy within ${timeoutMs} ms: ${JSON.stringify(hs.map((h) => h.body))}`);
    await sleep(100);
  }
}

/** The index of the node whose /raftz says leader, or -1 after `timeoutMs`. */
export async function findLeader(c: BenchCluster, timeoutMs = 10_000): Promise<number> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    for (let i = 0; i < c.httpPorts.length; i++) if ((await getJson(`http://127.0.0.1:${c.httpPorts[i]}/raftz`)).body.state === 'leader') return i;
    await sleep(100);
  }
  return -1;
}

export interface Admin { nc: NatsConnection; signer: ReturnType<typeof keyPairFromSeed> }

export async function adminConnection(c: BenchCluster, i: number): Promise<Admin> {
  const seed = readFileSync(c.idFiles[i]!, 'utf8').trim();
  const nc = await connect({
    servers: `tls://127.0.0.1:${c.natsPorts[i]}`, authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
    tls: { caFile: c.caFile }, reconnect: false, maxReconnectAttempts: 0, timeout: 10_000, name: 'bench-admin',
    // A private reply prefix, as the CLI uses: the admin API refuses replies to the shared `_INBOX.`.
    inboxPrefix: `_INBOX_bench_admin_${i}_${process.pid}`,
  });
  return { nc, signer: keyPairFromSeed(seed, ['server', 'user']) };
}

export type AdminReply = { result?: string; user?: unknown; error?: { code?: string; message?: string } };

/** One signed admin request; the latency in ms (signing is the client's cost, outside it) and the reply. */
export async function adminRequest(a: Admin, subject: string, body: Record<string, unknown>): Promise<{ ms: number; reply: AdminReply }> {
  const payload = signRequest(subject, body, a.signer);
  const t0 = process.hrtime.bigint();
  const msg = await a.nc.request(subject, payload, { timeout: 15_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ms, reply: JSON.parse(new TextDecoder().decode(msg.data)) as AdminReply };
}
