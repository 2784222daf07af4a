// Quorum-loss recovery (issue 16 item 3) on real `membershipd serve` processes in the deploy posture (--store kv,
// --bus-auth enforce, TLS client port, TLS routes with a password file, identity files): data written through real
// NATS clients (@nats-io/kv puts, admin API user adds), kill -9 of two of three nodes, `membershipd cluster recover
// --force-new-cluster` (the real CLI, a separate process) on the survivor, which then serves every acknowledged write
// alone and takes new ones; a node of the old cluster started with its old data is refused (cluster_incarnation,
// naming the remedy); the wiped node added back with `cluster add` replicates. Refusals: the node running, a majority
// of the old voters reachable, bad flags. Every child is killed by PID in teardown. Bounds are liveness bounds for a
// loaded 2-core machine, not timings.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { createUser } from '@nats-io/nkeys';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { signRequest } from '../../src/control/envelope.js';
import { keyPairFromSeed } from '../../src/auth/index.js';
import { freePort } from '../../src/free_port.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const root = mkdtempSync(join(tmpdir(), 'membershipd-recover-'));
// Bundled as in cluster_faults.test.ts (a boot costs ~1 s instead of 2-4 s under tsx); FAULT_TSX=1 runs tsx.
const bundleDir = join(repo, 'node_modules/.cache/membershipd-recover', `run-${process.pid}`);
const entry = ((): string[] => {
  if (process.env.FAULT_TSX !== '1') {
    const r = spawnSync(join(repo, 'node_modules/.bin/esbuild'),
      [join(repo, 'bin/membershipd.ts'), '--bundle', '--splitting', '--platform=node', '--format=esm', '--packages=external', '--out-extension:.js=.mjs', '--log-level=error', `--outdir=${bundleDir}`],
      { stdio: ['ignore', 'ignore', 'inherit'], timeout: 60_000 });
    if (r.status === 0) return [join(bundleDir, 'membershipd.mjs')];
  }
  return ['--import', 'tsx', join(repo, 'bin/membershipd.ts')];
})();

const HEALTHY_MS = 30_000;
const live = new Set<ChildProcess>();
const conns: NatsConnection[] = [];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const bound = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

function killPid(c: ChildProcess): void {
  if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) return;
  try {
    process.kill(c.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
t.teardown(async () => {
  for (const nc of conns) await nc.close().catch(() => undefined);
  for (const c of live) killPid(c);
  rmSync(root, { recursive: true, force: true });
  rmSync(bundleDir, { recursive: true, force: true });
});

interface Node { child: ChildProcess; stderr: string; exited: Promise<void> }
interface Cluster {
  readonly caFile: string;
  readonly args: string[][];
  readonly routePorts: number[];
  readonly natsPorts: number[];
  readonly httpPorts: number[];
  readonly dataDirs: string[];
  readonly idFiles: string[];
  readonly nodes: (Node | undefined)[];
}

async function newCluster(): Promise<Cluster> {
  const ca = await createCertificateAuthority('recover-ca');
  const caFile = join(root, 'ca.pem');
  writeFileSync(caFile, ca.cert);
  const passFile = join(root, 'route.pass');
  writeFileSync(passFile, 'route-secret\n', { mode: 0o600 });
  const routePorts: number[] = [];
  const natsPorts: number[] = [];
  const httpPorts: number[] = [];
  for (let i = 0; i < 3; i++) {
    routePorts.push(await freePort());
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
  return { caFile, args, routePorts, natsPorts, httpPorts, dataDirs, idFiles, nodes: [undefined, undefined, undefined] };
}

function spawnNode(c: Cluster, i: number, args: readonly string[] = c.args[i]!): Node {
  const child = spawn(process.execPath, [...entry, ...args], { cwd: repo, stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);
  const n: Node = { child, stderr: '', exited: new Promise((r) => child.once('exit', () => { live.delete(child); r(); })) };
  child.stderr!.on('data', (d: Buffer) => { n.stderr = (n.stderr + d.toString()).slice(-16_000); });
  c.nodes[i] = n;
  return n;
}

async function kill9(c: Cluster, i: number): Promise<void> {
  const n = c.nodes[i];
  if (!n) return;
  killPid(n.child);
  await Promise.race([n.exited, bound(10_000)]);
  c.nodes[i] = undefined;
}

async function getJson(c: Cluster, i: number, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  try {
    const res = await fetch(`http://127.0.0.1:${c.httpPorts[i]}${path}`, { signal: AbortSignal.timeout(1500) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  } catch (e) {
    return { status: 0, body: { error: String(e) } };
  }
}

async function waitFor(what: string, cond: () => Promise<boolean> | boolean, boundMs: number): Promise<void> {
  const end = Date.now() + boundMs;
  for (let k = 0; k < 10_000; k++) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`${what}: not within ${boundMs} ms`);
    await sleep(50);
  }
}

async function waitHealthy(c: Cluster, idx: readonly number[]): Promise<void> {
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
function cli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
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

const adminFlags = (c: Cluster, i: number): string[] => ['--server', `tls://127.0.0.1:${c.natsPorts[i]}`, '--tls-ca', c.caFile, '--internal-id-file', c.idFiles[i]!];

async function client(c: Cluster, i: number): Promise<NatsConnection> {
  const seed = readFileSync(c.idFiles[i]!, 'utf8').trim();
  const nc = await connect({
    servers: `tls://127.0.0.1:${c.natsPorts[i]}`, authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
    tls: { caFile: c.caFile }, reconnect: false, timeout: 5000, inboxPrefix: `_INBOX_recover_${i}`,
  });
  conns.push(nc);
  return nc;
}

async function addUser(c: Cluster, i: number, nc: NatsConnection, name: string): Promise<boolean> {
  const signer = keyPairFromSeed(readFileSync(c.idFiles[i]!, 'utf8').trim(), ['server', 'user']);
  const subject = '$UB.API.USER.ADD';
  const body = { name, nkey: createUser().getPublicKey(), roles: [] };
  const msg = await nc.request(subject, signRequest(subject, body, signer), { timeout: 5000 });
  const r = JSON.parse(new TextDecoder().decode(msg.data)) as Record<string, unknown>;
  return r.error === undefined && r.result === 'created';
}

async function listUsers(c: Cluster, i: number): Promise<Set<string>> {
  const r = await cli(['user', 'list', '--json', ...adminFlags(c, i)]);
  if (r.code !== 0) throw new Error(`user list on n${i}: ${r.stderr}`);
  const parsed = JSON.parse(r.stdout) as { users?: { name: string }[] } | { name: string }[];
  const users = Array.isArray(parsed) ? parsed : parsed.users ?? [];
  return new Set(users.map((u) => u.name));
}

t.test('quorum loss: kill -9 of two of three, cluster recover --force-new-cluster on the survivor, a wiped node added back', async (t) => {
  const { jetstream } = await import('@nats-io/jetstream');
  const { Kvm } = await import('@nats-io/kv');
  const c = await newCluster();
  for (let i = 0; i < 3; i++) spawnNode(c, i);
  await waitHealthy(c, [0, 1, 2]);

  // Data through real clients: KV puts and admin API user adds, each acknowledged.
  const writer = await client(c, 0);
  const kv = await new Kvm(jetstream(writer, { timeout: 5000 })).create('orders', { history: 3 });
  const acked = new Map<string, string>();
  for (let k = 0; k < 60; k++) {
    await kv.put(`o.${k}`, `value-${k}`);
    acked.set(`o.${k}`, `value-${k}`);
  }
  await kv.put('o.0', 'value-0-updated');
  acked.set('o.0', 'value-0-updated');
  const users: string[] = [];
  for (let k = 0; k < 5; k++) if (await addUser(c, 0, writer, `before-${k}`)) users.push(`before-${k}`);
  t.equal(users.length, 5, 'five users added before the loss');
  await writer.close();

  // The survivor is a follower that has applied the leader's commit index: every acknowledged write is on it (a
  // survivor that lagged would lose what only the lost majority held, as RUNBOOK "Quorum loss" says).
  let leader = -1;
  await waitFor('a leader', async () => {
    for (let i = 0; i < 3; i++) if ((await getJson(c, i, '/raftz')).body.state === 'leader') leader = i;
    return leader >= 0;
  }, HEALTHY_MS);
  const survivor = (leader + 1) % 3;
  const others = [0, 1, 2].filter((i) => i !== survivor);
  const leaderCommit = Number((await getJson(c, leader, '/raftz')).body.commit);
  await waitFor('the survivor applied the leader\'s commit', async () => Number((await getJson(c, survivor, '/raftz')).body.applied) >= leaderCommit, HEALTHY_MS);
  const dataDir = c.dataDirs[survivor]!;
  const recover = (...extra: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    cli(['cluster', 'recover', '--force-new-cluster', '--data-dir', dataDir, ...extra]);

  // Refused while the node runs: its store's lock names the live process.
  let r = await recover();
  t.equal(r.code, 3, `refused while the node runs (exit 3)${r.code === 3 ? '' : `: ${r.stdout}${r.stderr}`}`);
  t.match(r.stderr, /ERECOVER_RUNNING.*in use by process \d+.*nothing was changed/s, 'it says the node is running and nothing changed');

  // Bad flags: exit 2 naming the flag; nothing touched.
  const usage: [string[], RegExp][] = [
    [['cluster', 'recover', '--data-dir', dataDir], /--force-new-cluster is required/],
    [['cluster', 'recover', '--force-new-cluster'], /--data-dir is required/],
    [['cluster', 'recover', '--force-new-cluster', '--data-dir', dataDir, '--probe-timeout-ms', 'soon'], /--probe-timeout-ms "soon": milliseconds from 50 to 10000/],
    [['cluster', 'recover', '--force-new-cluster', '--data-dir', dataDir, '--probe-timeout-ms', '99999999999'], /--probe-timeout-ms/],
    [['cluster', 'recover', '--force-new-cluster', '--data-dir', dataDir, '--probe-timeout-ms', '10'], /--probe-timeout-ms "10"/],
    [['cluster', 'recover', '--force-new-cluster', '--data-dir', dataDir, '--force'], /unknown flag --force/],
    [['cluster', 'recover', '--force-new-cluster=yes', '--data-dir', dataDir], /--force-new-cluster takes no value/],
    [['cluster', 'recover', '--force-new-cluster', '--data-dir', dataDir, 'extra'], /unexpected argument "extra"/],
  ];
  for (const [args, why] of usage) {
    const u = await cli(args);
    t.equal(u.code, 2, `${args.slice(2).join(' ')}: exit 2`);
    t.match(u.stderr, why, `and says ${why}`);
  }
  const emptyDir = join(root, 'not-a-node');
  mkdirSync(emptyDir);
  r = await cli(['cluster', 'recover', '--force-new-cluster', '--data-dir', emptyDir]);
  t.equal(r.code, 3, 'a directory that is no node\'s data dir is refused');
  t.match(r.stderr, /ERECOVER_STATE.*cluster\.json does not exist/s, 'naming what is missing');

  // The survivor stopped, the two others up: they and the survivor are a majority, so a restart is the remedy.
  await kill9(c, survivor);
  const clusterJsonBefore = readFileSync(join(dataDir, 'cluster.json'), 'utf8');
  r = await recover();
  t.equal(r.code, 3, `refused while a majority of the old voters answers (exit 3)${r.code === 3 ? '' : `: ${r.stdout}${r.stderr}`}`);
  t.match(r.stderr, /ERECOVER_QUORUM_REACHABLE.*2 of the 2 other voters answer.*start it instead.*--i-know-a-quorum-is-lost/s, 'it names the reachable voters and the override');
  t.equal(readFileSync(join(dataDir, 'cluster.json'), 'utf8'), clusterJsonBefore, 'cluster.json unchanged');
  t.same(readdirSync(dataDir).filter((f) => f.includes('recover') || f === 'RECOVERY'), [], 'nothing of a recovery left in the data dir');

  // The quorum is lost for good: kill -9 of the two others.
  for (const i of others) await kill9(c, i);
  r = await recover('--probe-timeout-ms', '500');
  t.equal(r.code, 0, `recover succeeds once no majority answers${r.code === 0 ? '' : `: ${r.stdout}${r.stderr}`}`);
  t.match(r.stdout, /is now a cluster of one.*no answer.*no answer.*cluster add/s, r.stdout.split('\n')[0]!);
  const recovered = JSON.parse(readFileSync(join(dataDir, 'cluster.json'), 'utf8')) as Record<string, unknown>;
  t.equal(recovered.id, 1, 'the survivor is slot 1 of a one-slot table');
  t.same(recovered.addresses, [`127.0.0.1:${c.routePorts[survivor]}`], 'at its own route address');
  t.match(String(recovered.incarnation), /^\d+-[0-9a-f]{16}$/, 'under a new incarnation');
  t.notOk(existsSync(join(dataDir, 'RECOVERY')), 'the commit marker is gone once rolled forward');
  t.ok(readdirSync(dataDir).some((f) => f.startsWith('raft.before-recovery-')), 'the old Raft state is kept aside');
  r = await recover();
  t.equal(r.code, 3, 'a second recover is refused: the node is already the only voter');
  t.match(r.stderr, /already the only voter/, r.stderr.trim());

  // The survivor alone: elected, every acknowledged write there, new writes work, the recovery audited.
  spawnNode(c, survivor);
  await waitHealthy(c, [survivor]);
  const nc = await client(c, survivor);
  const kv2 = await new Kvm(jetstream(nc, { timeout: 5000 })).open('orders');
  const missing: string[] = [];
  for (const [key, value] of acked) if ((await kv2.get(key))?.string() !== value) missing.push(key);
  t.same(missing, [], `every acknowledged KV write (${acked.size} keys) is on the recovered node`);
  const names = await listUsers(c, survivor);
  t.same(users.filter((u) => !names.has(u)), [], 'every acknowledged user is on the recovered node');
  await kv2.put('after.recover', 'yes');
  t.ok(await addUser(c, survivor, nc, 'after-recover'), 'an admin write is acknowledged after the recovery');
  let audit = '';
  await waitFor('the recovery in the audit bucket', async () => {
    const a = await cli(['audit', 'list', '--json', ...adminFlags(c, survivor)]);
    audit = a.stdout;
    return a.code === 0 && audit.includes('cluster.recover');
  }, HEALTHY_MS);
  t.match(audit, /cluster\.recover/, 'the audit bucket records cluster.recover');
  t.match(audit, new RegExp(`"who":\\s*"node:n${survivor}"`), 'by the recovered node');

  // A node of the old cluster started with its old data is refused by the handshake, with the remedy.
  const stale = others[0]!;
  const staleArgs = c.args[stale]!.map((a, k, all) => (all[k - 1] === '--log-level' ? 'warn' : a));
  const staleNode = spawnNode(c, stale, staleArgs);
  await waitFor('the stale node refused', () => /cluster_incarnation/.test(staleNode.stderr), HEALTHY_MS)
    .catch((e: unknown) => { throw new Error(`${String(e)}: ${staleNode.stderr.slice(-3000)}`); });
  t.match(staleNode.stderr, /cluster incarnation mismatch.*this node belongs to an earlier incarnation.*wipe its data directory.*cluster add/,
    'the stale node is told it belongs to the old incarnation and what to do');
  const z = await getJson(c, survivor, '/raftz');
  t.same((z.body.conf as { voters?: number[] }).voters, [1], 'the recovered node is still the only voter');
  t.same((z.body.slots as unknown[]).length, 1, 'and its slot table did not take the stale node in');
  await waitHealthy(c, [survivor]);
  await kill9(c, stale);

  // Added back: wiped, registered with `cluster add` at its old address, started in join mode.
  rmSync(c.dataDirs[stale]!, { recursive: true, force: true });
  r = await cli(['cluster', 'add', `n${stale}`, `nats-route://127.0.0.1:${c.routePorts[stale]}`, ...adminFlags(c, survivor)]);
  t.equal(r.code, 0, `cluster add n${stale} at its old address exits 0${r.code === 0 ? '' : `: ${r.stdout}${r.stderr}`}`);
  const joinArgs = [...c.args[stale]!.map((a, k, all) => (all[k - 1] === '--routes' ? `127.0.0.1:${c.routePorts[survivor]}` : a)), '--initial-cluster-state', 'existing'];
  spawnNode(c, stale, joinArgs);
  await waitHealthy(c, [survivor, stale]);
  const nc2 = await client(c, stale);
  const kv3 = await new Kvm(jetstream(nc2, { timeout: 5000 })).open('orders');
  const missingThere: string[] = [];
  for (const [key, value] of [...acked, ['after.recover', 'yes'] as const]) if ((await kv3.get(key))?.string() !== value) missingThere.push(key);
  t.same(missingThere, [], `the added node has every key (${acked.size + 1})`);
  await kv3.put('after.join', 'replicated');
  await waitFor('the write through the added node on the survivor', async () => (await kv2.get('after.join'))?.string() === 'replicated', HEALTHY_MS);
  t.pass('a write through the added node is on the recovered one');
  const joined = JSON.parse(readFileSync(join(c.dataDirs[stale]!, 'cluster.json'), 'utf8')) as Record<string, unknown>;
  t.equal(joined.incarnation, recovered.incarnation, 'the added node adopted the recovered cluster\'s incarnation');
  let voters: unknown;
  await waitFor('the added node promoted to voter (R 3, 1 voter)', async () => {
    const z = await getJson(c, survivor, '/raftz');
    voters = (z.body.conf as { voters?: number[] }).voters;
    return Array.isArray(voters) && voters.length === 2;
  }, HEALTHY_MS).catch(() => undefined);
  t.same(voters, [1, 2], 'the added node is a voter');
});
