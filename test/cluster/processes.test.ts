// Three membershipd nodes as separate processes started through the real `serve` path (flag parser,
// NATS server, cluster node, HTTP), on loopback with real TLS files: cold start in a seeded random order
// with random delays (health over HTTP), writes through every node, kill -9 of the leader while writes
// continue, every acknowledged write present on the survivors, the killed node restarts and catches up, a follower
// whose data dir is deleted (a replaced disk) rejoins: 503 until it has every write, 200 after (issue 20).
// Reproduce a run with CLUSTER_SEED=<seed> (printed first). Every child is killed by PID in teardown.
import t from 'tap';
import { execFile, fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { seededRng } from '../../raft/index.js';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { holdPorts, releaseUnused, spawnOnHeldPort, type HeldPort } from '../support/ports.js';
import { pause, waitFor } from '../support/wait.js';

const seed = Number(process.env.CLUSTER_SEED ?? Date.now() % 1_000_000);
t.comment(`CLUSTER_SEED=${seed}`);
const rng = seededRng(seed);
const here = dirname(fileURLToPath(import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'membershipd-procs-'));
const children = new Set<ChildProcess>();
const routeHeld: HeldPort[] = [];
t.teardown(() => {
  releaseUnused(routeHeld);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});


interface Proc {
  child: ChildProcess;
  /** URLs the child reports once its listeners are bound (it was given port 0). */
  http: string;
  nats: string;
  nextId: number;
  readonly waiting: Map<number, (v: Record<string, unknown>) => void>;
}

const args: string[][] = [];
const procs: (Proc | undefined)[] = [undefined, undefined, undefined];

function spawnNode(i: number): Promise<Proc> {
  // First start: the route port bound by this process arrives at stdio[4] (3 is the IPC channel); a restart binds it.
  const child = spawnOnHeldPort(routeHeld[i], (fd) => (fd === undefined
    ? fork(join(here, 'serve_child.ts'), ['serve', ...args[i]!], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] })
    : fork(join(here, 'serve_child.ts'), ['serve', ...args[i]!, '--cluster-fd', '4'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'pipe', 'ipc', fd] })));
  children.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  return new Promise((resolve, reject) => {
    const guard = setTimeout(() => reject(new Error(`node ${i} did not start within 30 s: ${stderr}`)), 30_000);
    const p: Proc = { child, http: '', nats: '', nextId: 1, waiting: new Map() };
    child.on('message', (m: Record<string, unknown>) => {
      if (m.ready) {
        clearTimeout(guard);
        p.http = String(m.http);
        p.nats = String(m.nats);
        procs[i] = p;
        resolve(p);
        return;
      }
      const w = p.waiting.get(Number(m.id));
      if (w) {
        p.waiting.delete(Number(m.id));
        w(m);
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(guard);
      for (const w of p.waiting.values()) w({ ok: false, code: 'EXITED', message: `exited ${code ?? signal}` });
      p.waiting.clear();
      reject(new Error(`node ${i} exited (${code ?? signal}) before it was ready: ${stderr}`));
    });
  });
}

function ask(p: Proc, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const id = p.nextId++;
  return new Promise((resolve) => {
    p.waiting.set(id, resolve);
    p.child.send({ id, ...body });
  });
}

async function getJson(p: Proc, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  try {
    const res = await fetch(`${p.http}${path}`, { signal: AbortSignal.timeout(2000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  } catch (e) {
    return { status: 0, body: { error: String(e) } };
  }
}

async function waitHealthy(ps: readonly Proc[], boundMs = 20_000): Promise<number> {
  const t0 = Date.now();
  let last: unknown[] = [];
  await waitFor(async () => {
    const hs = await Promise.all(ps.map((p) => getJson(p, '/healthz')));
    last = hs.map((h) => h.body);
    return hs.every((h) => h.status === 200);
  }, { what: () => `every process healthy (last /healthz bodies: ${JSON.stringify(last)})`, timeoutMs: boundMs, intervalMs: 50 });
  return Date.now() - t0;
}

async function leaderIndex(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    const p = procs[i];
    if (p && (await getJson(p, '/raftz')).body.state === 'leader') return i;
  }
  return -1;
}

t.test('separate processes: cold start in a random order, kill -9 of the leader, restart', async (t) => {
  const ca = await createCertificateAuthority('procs-ca');
  const caFile = join(root, 'ca.pem');
  writeFileSync(caFile, ca.cert);
  const passFile = join(root, 'route.pass');
  writeFileSync(passFile, 'route-secret\n', { mode: 0o600 });
  // Every node's --routes names every route port before any node runs (the slot table is derived from them,
  // src/node/bootstrap.ts): they are bound here and each child takes its socket over (--cluster-fd). Client and HTTP
  // ports are bound (0) by the child and reported to this process.
  routeHeld.push(...await holdPorts(3));
  const clusterPorts = routeHeld.map((h) => h.port);
  const routes = clusterPorts.map((p) => `127.0.0.1:${p}`).join(',');
  for (let i = 0; i < 3; i++) {
    const { certFile, keyFile } = await writePemPair(root, `node-${i}`, await issueCertificate(ca, { commonName: `node-${i}` }));
    args.push([
      '--server-name', `node-${i}`, '--bind', '127.0.0.1', '--nats-port', '0', '--http-port', '0',
      '--cluster-name', 'procs', '--cluster-port', String(clusterPorts[i]), '--routes', routes,
      '--cluster-user', 'route', '--cluster-pass-file', passFile,
      '--route-tls-cert', certFile, '--route-tls-key', keyFile, '--route-tls-ca', caFile,
      '--data-dir', join(root, `data-${i}`), '--internal-id-file', join(root, `id-${i}.nk`), '--log-level', 'error',
    ]);
  }

  const order = [0, 1, 2];
  for (let i = 2; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const delays = [rng.int(500), rng.int(500)];
  t.comment(`start order ${order.join(',')}, delays ${delays.join(',')} ms (CLUSTER_SEED=${seed})`);
  const first = await spawnNode(order[0]!);
  const lone = await getJson(first, '/healthz');
  t.equal(lone.status, 503, 'a lone node answers /healthz 503');
  t.match(String(lone.body.reason), /^no quorum: 1 of 3 voters reachable/, 'and says why');
  await pause(delays[0]!, 'the seeded start order and spacing under test');
  const second = await spawnNode(order[1]!);
  const healthyMs = await waitHealthy([first, second]);
  t.comment(`healthy ${healthyMs} ms after the second process reported ready`);
  await pause(delays[1]!, 'the seeded start order and spacing under test');
  await spawnNode(order[2]!);
  await waitHealthy(procs as Proc[]);
  const metrics = await fetch(`${procs[0]!.http}/metrics`).then((r) => r.text());
  t.match(metrics, /membershipd_raft_term \d+/, '/metrics serves Prometheus text');

  t.match(await ask(procs[order[2]!]!, { op: 'bucket' }), { ok: true }, 'bucket created through the last node');
  const acked = new Map<string, number>();
  for (let i = 0; i < 15; i++) {
    const r = await ask(procs[i % 3]!, { op: 'put', key: `k${i}`, value: i });
    if (r.ok === true) acked.set(`k${i}`, i);
  }
  t.equal(acked.size, 15, 'writes through every node are acknowledged');

  // kill -9 the leader while a writer keeps writing through the survivors.
  const leader = await leaderIndex();
  t.ok(leader >= 0, 'a leader is known');
  const survivors = [0, 1, 2].filter((i) => i !== leader).map((i) => procs[i]!);
  let stopWriter = false;
  let failed = 0;
  const writer = (async () => {
    for (let i = 100; i < 400 && !stopWriter; i++) {
      const r = await ask(survivors[i % 2]!, { op: 'put', key: `k${i}`, value: i % 251 });
      if (r.ok === true) acked.set(`k${i}`, i % 251);
      else if (r.retryable === true) failed++;
      else throw new Error(`non-retryable write failure: ${JSON.stringify(r)}`);
    }
  })();
  await waitFor(() => acked.size >= 20, { what: () => `the writer under way (${acked.size - 15} of 5 writes acknowledged)`, intervalMs: 10 });
  const killedAt = Date.now();
  procs[leader]!.child.kill('SIGKILL');
  procs[leader] = undefined;
  // A new leader among the survivors, and both healthy (bounded poll).
  const { newLeader } = await waitFor(async () => { const l = await leaderIndex(); return l >= 0 ? { newLeader: l } : undefined; }, { what: 'a leader among the survivors' });
  await waitHealthy(survivors);
  const failoverMs = Date.now() - killedAt;
  t.ok(newLeader >= 0 && newLeader !== leader, 'a new leader was elected among the survivors');
  const before = acked.size;
  try {
    await waitFor(() => acked.size >= before + 10, { what: () => `10 more writes acknowledged after the failover (${acked.size - before} so far)` });
  } finally {
    stopWriter = true;
    await writer;
  }
  t.comment(`new leader and healthy survivors ${failoverMs} ms after kill -9 of the leader; ${failed} writes failed retryably meanwhile, ${acked.size - 15} acknowledged during the run`);
  for (const p of survivors) {
    const r = await ask(p, { op: 'read' });
    const values = r.values as Record<string, number>;
    const missing = [...acked].filter(([k, v]) => values[k] !== v).map(([k]) => k);
    t.same(missing, [], `every acknowledged write (${acked.size}) is on a survivor`);
  }

  const back = await spawnNode(leader);
  await waitHealthy(procs as Proc[]);
  const r = await ask(back, { op: 'read' });
  const values = r.values as Record<string, number>;
  t.same([...acked].filter(([k, v]) => values[k] !== v).map(([k]) => k), [], 'the killed node restarted from its data dir and caught up');

  // Issue 20: a replaced disk. A follower stops, its data dir is deleted, it starts with the same flags and identity
  // file. Polled every 100 ms over HTTP: 503 until it holds every acknowledged write, then 200; it went through
  // recovery (it knew it had lost its data) and the leader counts it again.
  const leadNow = await leaderIndex();
  const wipedIdx = [0, 1, 2].find((i) => i !== leadNow)!;
  const wipedProc = procs[wipedIdx]!;
  wipedProc.child.kill('SIGTERM');
  await new Promise((res) => (wipedProc.child.exitCode !== null ? res(null) : wipedProc.child.once('exit', res)));
  rmSync(join(root, `data-${wipedIdx}`), { recursive: true, force: true });
  const reborn = await spawnNode(wipedIdx);
  const reasons = new Set<string>();
  let healthy = false;
  for (let k = 0; k < 300 && !healthy; k++) {
    const h = await getJson(reborn, '/healthz');
    if (h.status === 200) {
      const got = (await ask(reborn, { op: 'read' })).values as Record<string, number>;
      t.same([...acked].filter(([key, v]) => got[key] !== v).map(([key]) => key), [], 'the wiped node answers 200 only with every acknowledged write');
      healthy = true;
      break;
    }
    t.equal(h.status, 503, 'a wiped node is 503 until it has caught up');
    reasons.add(String(h.body.reason).replace(/\d+/g, 'N').replace(/\(not connected.*$/, ''));
    await pause(100, 'the issue\'s polling interval: each 503 on the way is asserted');
  }
  t.ok(healthy, `the wiped node became healthy; reasons seen meanwhile: ${[...reasons].join(' | ')}`);
  const rz = (await getJson(reborn, '/raftz')).body;
  t.equal(rz.recovering, false, 'it ended its recovery (it knew it had lost its data)');
  t.match(await fetch(`${reborn.http}/metrics`).then((r) => r.text()), /membershipd_raft_recoveries_total 1\b/, 'and counts one recovery');

  // The admin CLI as its own process, as an operator runs it on a node: `cluster status` (table and JSON).
  // The client URL the restarted node reported (it listens on a port it was given as 0).
  const natsUrl = procs[leader]!.nats;
  const cli = (...argv: string[]): Promise<{ code: number; out: string; err: string }> => new Promise((resolve) => {
    const c = execFile(process.execPath, ['--import', 'tsx', join(here, '../../bin/membershipd.ts'), ...argv,
      '--server', natsUrl, '--internal-id-file', join(root, `id-${leader}.nk`)],
    { timeout: 30_000 }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: stdout, err: stderr }));
    children.add(c);
  });
  let st = await cli('cluster', 'status', '--json');
  t.equal(st.code, 0, st.err);
  const status = (JSON.parse(st.out) as { status: { members: { name: string; role: string; reachable: boolean }[] } }).status;
  t.same(status.members.map((m) => m.reachable), [true, true, true], 'every process answers the status request over its route');
  t.equal(status.members.filter((m) => m.role === 'leader').length, 1, 'one leader');
  st = await cli('cluster', 'status');
  t.match(st.out, /^cluster procs: leader node-\d, term \d+, 3 voters of 3/);
  for (const p of procs) p!.child.kill('SIGTERM');
  await Promise.all(procs.map((p) => new Promise((res) => (p!.child.exitCode !== null ? res(null) : p!.child.once('exit', res)))));
});
