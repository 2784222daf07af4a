// Shared by the multi-process tests of test/fault that need a fresh 3-node cluster of `membershipd serve` processes in
// the deploy posture (--store kv, --bus-auth enforce, TLS client port, TLS routes with a password file, identity
// files): spawn, kill by PID, HTTP probes, the real CLI as a process, NATS clients on the node identities. Every child
// is killed by PID in the importing file's teardown (`teardownHarness`). Not a test file (tap runs *.test.ts).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { freePort } from '../support/free_port.js';
import { holdPorts, releaseUnused, spawnOnHeldPort, type HeldPort } from '../support/ports.js';

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const root = mkdtempSync(join(tmpdir(), 'membershipd-fault-harness-'));
// Bundled as in cluster_faults.test.ts (a boot costs ~1 s instead of 2-4 s under tsx); FAULT_TSX=1 runs tsx.
const bundleDir = join(repo, 'node_modules/.cache/membershipd-fault-harness', `run-${process.pid}`);
const entry = ((): string[] => {
  if (process.env.FAULT_TSX !== '1') {
    const r = spawnSync(join(repo, 'node_modules/.bin/esbuild'),
      [join(repo, 'bin/membershipd.ts'), '--bundle', '--splitting', '--platform=node', '--format=esm', '--packages=external', '--out-extension:.js=.mjs', '--log-level=error', `--outdir=${bundleDir}`],
      { stdio: ['ignore', 'ignore', 'inherit'], timeout: 60_000 });
    if (r.status === 0) return [join(bundleDir, 'membershipd.mjs')];
  }
  return ['--import', 'tsx', join(repo, 'bin/membershipd.ts')];
})();

export const HEALTHY_MS = 30_000;
export const live = new Set<ChildProcess>();
export const conns: NatsConnection[] = [];
const heldRoutePorts: HeldPort[] = [];
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
export const bound = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

export function killPid(c: ChildProcess): void {
  if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) return;
  try {
    process.kill(c.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
/** Closes every client, kills every child by PID, removes the temp and bundle dirs. */
export async function teardownHarness(): Promise<void> {
  releaseUnused(heldRoutePorts);
  for (const nc of conns) await nc.close().catch(() => undefined);
  for (const c of live) killPid(c);
  rmSync(root, { recursive: true, force: true });
  rmSync(bundleDir, { recursive: true, force: true });
}

export interface Node { child: ChildProcess; stderr: string; exited: Promise<void> }
export interface Cluster {
  readonly caFile: string;
  readonly args: string[][];
  readonly routePorts: number[];
  /** Bound by this process and handed to each node's first start (--cluster-fd); restarts bind the port themselves. */
  readonly routeHeld: HeldPort[];
  readonly natsPorts: number[];
  readonly httpPorts: number[];
  readonly dataDirs: string[];
  readonly idFiles: string[];
  readonly nodes: (Node | undefined)[];
}

export async function newCluster(): Promise<Cluster> {
  const ca = await createCertificateAuthority('recover-ca');
  const caFile = join(root, 'ca.pem');
  writeFileSync(caFile, ca.cert);
  const passFile = join(root, 'route.pass');
  writeFileSync(passFile, 'route-secret\n', { mode: 0o600 });
  // Route ports are bound here and passed to each child (every node's --routes names all of them before any node
  // starts). Client and HTTP ports are claimed (test/support/free_port.ts): the tests reach a restarted node on the same ones.
  const routeHeld = await holdPorts(3);
  heldRoutePorts.push(...routeHeld);
  const routePorts = routeHeld.map((h) => h.port);
  const natsPorts: number[] = [];
  const httpPorts: number[] = [];
  for (let i = 0; i < 3; i++) {
    natsPorts.push(await freePort());
    httpPorts.push(await freePort());
  }
  const routes = routePorts.map((p) => `127.0.0.1:${p}`).join(',');
  const dataDirs = [0, 1, 2].map((i) => join(root, `data-${i}`));
  const idFiles = [0, 1, 2].map((i) => join(root, `id-${i}.nk`));
  const args: string[][] = [];
  for (let i = 0; i < 3; i++) {
    const cert = await writePemPair(root, `n${i}`, await issueCertificate(ca, { commonName: `n${i}`, usage: 'node' }));
    args.push([
      'serve', '--bind', '127.0.0.1', '--bus-auth', 'enforce', '--http-port', String(httpPorts[i]), '--nats-port', String(natsPorts[i]),
      '--tls-cert', cert.certFile, '--tls-key', cert.keyFile,
      '--cluster-name', 'recover', '--server-name', `n${i}`, '--cluster-port', String(routePorts[i]), '--routes', routes,
      '--cluster-user', 'route', '--cluster-pass-file', passFile,
      '--route-tls-cert', cert.certFile, '--route-tls-key', cert.keyFile, '--route-tls-ca', caFile,
      '--internal-id-file', idFiles[i]!, '--store', 'kv', '--kv-replicas', '3', '--data-dir', dataDirs[i]!, '--log-level', 'error',
    ]);
  }
  return { caFile, args, routePorts, routeHeld, natsPorts, httpPorts, dataDirs, idFiles, nodes: [undefined, undefined, undefined] };
}

export function spawnNode(c: Cluster, i: number, args: readonly string[] = c.args[i]!): Node {
  const child = spawnOnHeldPort(c.routeHeld[i], (fd) => (fd === undefined
    ? spawn(process.execPath, [...entry, ...args], { cwd: repo, stdio: ['ignore', 'ignore', 'pipe'] })
    : spawn(process.execPath, [...entry, ...args, '--cluster-fd', '3'], { cwd: repo, stdio: ['ignore', 'ignore', 'pipe', fd] })));
  live.add(child);
  const n: Node = { child, stderr: '', exited: new Promise((r) => child.once('exit', () => { live.delete(child); r(); })) };
  child.stderr!.on('data', (d: Buffer) => { n.stderr = (n.stderr + d.toString()).slice(-16_000); });
  c.nodes[i] = n;
  return n;
}

export async function kill9(c: Cluster, i: number): Promise<void> {
  const n = c.nodes[i];
  if (!n) return;
  killPid(n.child);
  await Promise.race([n.exited, bound(10_000)]);
  c.nodes[i] = undefined;
}

export async function getJson(c: Cluster, i: number, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  try {
    const res = await fetch(`http://127.0.0.1:${c.httpPorts[i]}${path}`, { signal: AbortSignal.timeout(1500) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  } catch (e) {
    return { status: 0, body: { error: String(e) } };
  }
}

export async function waitFor(what: string, cond: () => Promise<boolean> | boolean, boundMs: number): Promise<void> {
  const end = Date.now() + boundMs;
  for (let k = 0; k < 10_000; k++) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`${what}: not within ${boundMs} ms`);
    await sleep(50);
  }
}

export async function waitHealthy(c: Cluster, idx: readonly number[]): Promise<void> {
  let last: unknown[] = [];
  await waitFor('healthy', async () => {
    const hs = await Promise.all(idx.map((i) => getJson(c, i, '/healthz')));
    last = hs.map((h, k) => ({ node: idx[k], ...h }));
    for (const i of idx) {
      const n = c.nodes[i];
      if (n && (n.child.exitCode !== null || n.child.signalCode !== null)) throw new Error(`n${i} exited: ${n.stderr}`);
    }
    return hs.every((h) => h.status === 200);
  }, HEALTHY_MS).catch((e: unknown) => { throw new Error(`${String(e)}: ${JSON.stringify(last).slice(0, 2000)}`); });
}

/** The real CLI as a separate process; resolves with its exit code and output. */
export function cli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [...entry, ...args], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    const guard = setTimeout(() => killPid(child), 60_000);
    child.once('exit', (code) => { clearTimeout(guard); live.delete(child); res({ code, stdout, stderr }); });
  });
}

export const adminFlags = (c: Cluster, i: number): string[] => ['--server', `tls://127.0.0.1:${c.natsPorts[i]}`, '--tls-ca', c.caFile, '--internal-id-file', c.idFiles[i]!];

export async function client(c: Cluster, i: number): Promise<NatsConnection> {
  const seed = readFileSync(c.idFiles[i]!, 'utf8').trim();
  const nc = await connect({
    servers: `tls://127.0.0.1:${c.natsPorts[i]}`, authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
    tls: { caFile: c.caFile }, reconnect: false, timeout: 5000, inboxPrefix: `_INBOX_recover_${i}`,
  });
  conns.push(nc);
  return nc;
}

