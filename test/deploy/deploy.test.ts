// The production deploy path, end to end on loopback: deploy/cluster/deploy-cluster.sh writes a 3-node
// cluster's files into a temp dir, the three nodes start as separate processes with exactly the ExecStart
// line of deploy/cluster/membershipd-cluster.service (continuation lines joined, ${VAR} substituted from each
// node's cluster.env as systemd does, WorkingDirectory = the node's dir), every /healthz turns 200, the admin
// CLI adds a role and a user through node 1 with only the node's cluster.env, that user connects through node 3
// with a real NATS client over TLS (CA from the deploy) and pub/sub works within the role's permissions (and is
// refused outside them), a re-run of deploy-cluster.sh changes no secret, and systemd-analyze verifies the unit.
// Then a 4th node joins the running cluster the way RUNBOOK "Adding a node" says: `membershipd cluster add n4 …`
// through node 1, deploy-cluster.sh re-run with n4 appended and `--join n4` (its cluster.env gets
// INITIAL_CLUSTER_STATE=existing, the other nodes' files need no such line: the unit's Environment= default `new`
// applies), n4 started with the same ExecStart, and `cluster status` through n4 shows it as a reachable member.
//
// deploy-cluster.sh runs `membershipd certs|id` ten times per run; to keep that cost down it gets a one-file
// esbuild bundle of bin/membershipd.ts (same code, no per-process TypeScript transform). The nodes and the admin
// commands run from the sources: `node --import <tsx loader> bin/membershipd.ts` (the loader by absolute path,
// since `--import tsx` resolves from the working directory, which is the node's dir here).
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { freePort } from '../support/free_port.js';
import { after, pause } from '../support/wait.js';

// DEPLOY_TEST_REPO runs the test against another checkout (its unit, script and sources).
const repo = process.env.DEPLOY_TEST_REPO ?? resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const unitFile = join(repo, 'deploy', 'cluster', 'membershipd-cluster.service');
const deployScript = join(repo, 'deploy', 'cluster', 'deploy-cluster.sh');
const tsxLoader = join(repo, 'node_modules', 'tsx', 'dist', 'loader.mjs');
const runner = ['node', '--import', tsxLoader, join(repo, 'bin', 'membershipd.ts')];
const installedBinary = '/opt/unibus/membershipd';
const installedDir = '/opt/unibus';

// Forty-six `membershipd certs|id` runs (four deploy runs), four nodes and four admin commands: minutes on a loaded 2-core machine.
t.setTimeout(420_000);
const root = mkdtempSync(join(tmpdir(), 'membershipd-deploy-'));
const out = join(root, 'cluster');
const children = new Map<string, ChildProcess>();
/** Commands in flight (deploy-cluster.sh, admin CLI), each the leader of its own process group. */
const commands = new Set<ChildProcess>();
function killGroup(c: ChildProcess): void {
  try {
    process.kill(-c.pid!, 'SIGKILL');
  } catch {
    // already gone
  }
}
const clients: NatsConnection[] = [];
t.teardown(async () => {
  await Promise.allSettled(clients.map((c) => c.close()));
  for (const [name, c] of children) {
    if (c.exitCode === null && c.signalCode === null) {
      t.comment(`teardown: SIGKILL ${name} (pid ${c.pid})`);
      process.kill(c.pid!, 'SIGKILL');
    }
  }
  for (const c of commands) killGroup(c);
  rmSync(root, { recursive: true, force: true });
});

/** Marks the rest of a test as skipped, with the reason in the output (tap's t.skip needs a test body). */
const skipRest = (t: Test, why: string): void => void t.test(why, { skip: why }, () => {});


/** systemd EnvironmentFile= syntax (the subset deploy-cluster.sh writes: comments, KEY=VALUE, optional quotes). */
function parseEnvironmentFile(text: string): Map<string, string> {
  const env = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m === null) throw new Error(`cluster.env: not KEY=VALUE: ${line}`);
    let v = m[2]!;
    if (v.length >= 2 && /^(["']).*\1$/.test(v)) v = v.slice(1, -1);
    env.set(m[1]!, v);
  }
  return env;
}

interface Unit {
  readonly service: Map<string, string[]>;
}

/**
 * Environment= values of a unit: space-separated KEY=VALUE assignments, an assignment with spaces in double quotes
 * (systemd.exec(5)). Later assignments of a key win, as in systemd.
 */
function unitEnvironment(lines: readonly string[]): Map<string, string> {
  const env = new Map<string, string>();
  for (const line of lines) {
    for (const m of line.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) {
      const a = m[1] ?? m[2]!;
      const eq = a.indexOf('=');
      if (eq < 1) throw new Error(`Environment=: not KEY=VALUE: ${a}`);
      env.set(a.slice(0, eq), a.slice(eq + 1));
    }
  }
  return env;
}

/** [Service] settings of a unit file, continuation lines joined (backslash-newline becomes a space, as systemd does). */
function parseUnit(text: string): Unit {
  const joined = text.replace(/\\\n/g, ' ');
  const service = new Map<string, string[]>();
  let section = '';
  for (const raw of joined.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1]!;
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (section === 'Service' && kv) service.set(kv[1]!, [...(service.get(kv[1]!) ?? []), kv[2]!]);
  }
  return { service };
}

/** ExecStart's words with ${VAR} replaced by the whole value as one word (systemd: "${FOO}" is one argument). */
function execStartArgv(execStart: string, env: Map<string, string>): string[] {
  const words = execStart.trim().split(/\s+/);
  return words.map((w) => w.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, k: string) => {
    const v = env.get(k);
    if (v === undefined) throw new Error(`ExecStart uses \${${k}} but neither cluster.env nor the unit's Environment= sets it`);
    return v;
  }));
}

/** The word after flag in argv (undefined when the flag is absent). */
function flagValue(argv: readonly string[], flag: string): string | undefined {
  const i = argv.indexOf(flag);
  return i < 0 ? undefined : argv[i + 1];
}

interface RunResult { code: number | null; stdout: string; stderr: string }

/** Runs a command to completion (bounded: SIGKILL by PID after timeoutMs), capturing its output. */
function run(cmd: string[], opts: { cwd?: string; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((res) => {
    // Own process group: a timeout or the teardown kills the script and whatever it started (membershipd runs).
    const child = spawn(cmd[0]!, cmd.slice(1), { cwd: opts.cwd ?? repo, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    commands.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${opts.timeoutMs ?? 120_000} ms)`;
      killGroup(child);
    }, opts.timeoutMs ?? 120_000);
    child.on('error', (e) => { stderr += String(e); });
    child.on('close', (code) => {
      commands.delete(child);
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
    // A command that exits without reading its input (`sh -c 'command -v …'`) closes the pipe first: EPIPE on
    // our write says nothing about the command, whose exit code and output are what the caller checks.
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(opts.input ?? '');
  });
}

/** Every file under dir (relative path → bytes), the nodes' data dirs excluded. */
function snapshot(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'data') walk(p);
      } else files.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return files;
}

async function httpGet(url: string): Promise<{ status: number; body: string }> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 3000);
  try {
    const r = await fetch(url, { signal: ac.signal });
    return { status: r.status, body: await r.text() };
  } finally {
    clearTimeout(timer);
  }
}

/** The nodes the cluster forms from; n4 joins it later (index 3 of ports). */
const names = ['n1', 'n2', 'n3'] as const;
const started = Date.now();
const ports: { nats: number; route: number; http: number }[] = [];
for (let i = 0; i < 4; i++) ports.push({ nats: await freePort(), route: await freePort(), http: await freePort() });
const nodeSpec = (n: string, i: number): string => `${n}=127.0.0.1/${ports[i]!.nats},${ports[i]!.route},${ports[i]!.http}`;

// One-file bundle for deploy-cluster.sh's ten `membershipd certs|id` runs; node_modules next to it resolves its packages.
const bundleDir = join(root, 'bundle');
const esbuild = await import('esbuild');
await esbuild.build({
  entryPoints: [join(repo, 'bin', 'membershipd.ts')], bundle: true, platform: 'node', format: 'esm', target: 'node20',
  packages: 'external', outfile: join(bundleDir, 'membershipd.mjs'), logLevel: 'warning',
});
symlinkSync(join(repo, 'node_modules'), join(bundleDir, 'node_modules'), 'dir');
const deployArgs = [
  deployScript, '--out', out, '--install-dir', join(out, '{name}'), '--membershipd', `node ${join(bundleDir, 'membershipd.mjs')}`,
  ...names.map(nodeSpec),
];

const unit = parseUnit(readFileSync(unitFile, 'utf8'));
/** What systemd hands ExecStart and the process: the unit's Environment= defaults, overridden by cluster.env
 * (systemd.exec(5): "Settings from these files override settings made with Environment="). */
const defaults = unitEnvironment(unit.service.get('Environment') ?? []);
const envs = new Map<string, Map<string, string>>();
const effectiveEnv = (n: string): Map<string, string> => new Map([...defaults, ...envs.get(n)!]);
/** Nodes that exited on their own, with the tail of their log. */
const exited: string[] = [];
type Node = ChildProcess & { log: () => string };

/** Starts node n (n1..n4: ports[0..3]) as systemd would: the unit's ExecStart with ${VAR} substituted, in its WorkingDirectory. */
function startNode(t: Test, n: string): string[] {
  const env = effectiveEnv(n);
  const argv = execStartArgv(unit.service.get('ExecStart')![0]!, env);
  t.equal(argv[0], installedBinary, `${n}: ExecStart runs the installed binary`);
  const cmd = [...runner, ...argv.slice(1)];
  if (n === 'n1') t.comment(`node n1: cd ${join(out, n)} && ${cmd.join(' ')}`);
  const child = spawn(cmd[0]!, cmd.slice(1), {
    cwd: join(out, n), // WorkingDirectory, with the cluster.env's paths pointing at this dir (--install-dir)
    env: { ...process.env, ...Object.fromEntries(env) }, // Environment= and EnvironmentFile= set the process environment
    stdio: ['ignore', 'ignore', 'pipe'],
  }) as Node;
  children.set(n, child);
  let log = '';
  child.stderr!.on('data', (d: Buffer) => { log = (log + d.toString()).slice(-6000); });
  child.on('exit', (code, signal) => {
    if (!stopping) exited.push(`${n} exited (${code ?? signal}) before the test stopped it: ${log.trim()}`);
  });
  child.log = () => log;
  return argv;
}

/** Polls /healthz of the nodes (by index into ports) until each answers 200, a node exits, or timeoutMs passes. */
async function waitHealthy(t: Test, nodes: readonly string[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const healthy = new Set<string>();
  const last = new Map<string, string>();
  while (healthy.size < nodes.length && Date.now() < deadline && exited.length === 0) {
    for (const n of nodes) {
      if (healthy.has(n)) continue;
      try {
        const r = await httpGet(`http://127.0.0.1:${ports[Number(n.slice(1)) - 1]!.http}/healthz`);
        if (r.status === 200) {
          healthy.add(n);
          t.comment(`${n} healthy ${((Date.now() - started) / 1000).toFixed(1)} s after the test started`);
        } else last.set(n, `${r.status} ${r.body}`);
      } catch (e) {
        last.set(n, String((e as Error).message));
      }
    }
    await pause(250, 'polling every node\'s /healthz; the loop above bounds it by the deadline');
  }
  t.same(exited, [], 'no node exited during start-up');
  const why = nodes.filter((n) => !healthy.has(n)).map((n) => `${n}: ${last.get(n)}\n${(children.get(n) as Node).log()}`);
  t.equal(healthy.size, nodes.length, `every /healthz of ${nodes.join(', ')} is 200 within ${timeoutMs / 1000} s\n${why.join('\n')}`);
}

/** The admin CLI on node n: the operator types only the command, everything else comes from the node's cluster.env. */
const admin = (n: string, args: string[], input = ''): Promise<RunResult> =>
  run([...runner, ...args, '--env-file', join(out, n, 'cluster.env')], { cwd: join(out, n), input, timeoutMs: 60_000 });

const password = 'correct horse battery staple';
/** alice connects to node ports[i]; she reaches a node through replication: a refused login is retried (bounded). */
async function connectAs(i: number, pass: string, retryMs = 15_000): Promise<NatsConnection> {
  const deadline = Date.now() + retryMs;
  for (;;) {
    try {
      const nc = await connect({
        servers: `tls://127.0.0.1:${ports[i]!.nats}`, user: 'alice', pass, tls: { caFile: join(out, 'ca', 'ca.pem') }, reconnect: false, timeout: 5000,
      });
      clients.push(nc);
      return nc;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await pause(250, 'a client\'s retry while the node comes up (bounded by the deadline above)');
    }
  }
}
let rerun: Promise<RunResult> | undefined;
let before = new Map<string, Buffer>();

t.test('deploy-cluster.sh writes every node\'s files', async (t) => {
  const r = await run(['bash', ...deployArgs], { timeoutMs: 200_000 });
  t.equal(r.code, 0, `deploy-cluster.sh exits 0\n${r.stderr}`);
  t.match(r.stdout, /cluster "unibus": 3 nodes, kv-replicas 3/);
  for (const n of names) {
    const env = parseEnvironmentFile(readFileSync(join(out, n, 'cluster.env'), 'utf8'));
    envs.set(n, env);
    t.equal(env.get('NODE_NAME'), n);
    t.equal(statSync(join(out, n, 'route.pass')).mode & 0o777, 0o600, `${n}/route.pass is 0600`);
    t.equal(statSync(join(out, n, 'internal-id.seed')).mode & 0o777, 0o600, `${n}/internal-id.seed is 0600`);
  }
  t.equal(statSync(join(out, 'ca', 'ca.key')).mode & 0o777, 0o600, 'CA key is 0600');
  before = snapshot(out);
});

t.test('the unit\'s ExecStart starts a healthy cluster', async (t) => {
  t.equal(unit.service.get('WorkingDirectory')?.[0], installedDir, 'the unit runs in /opt/unibus (replaced by the node dir here)');
  t.equal(unit.service.get('EnvironmentFile')?.[0], `${installedDir}/cluster.env`);
  const execStart = unit.service.get('ExecStart');
  t.equal(execStart?.length, 1, 'one ExecStart');
  t.equal(defaults.get('INITIAL_CLUSTER_STATE'), 'new', 'the unit defaults INITIAL_CLUSTER_STATE to new (Environment=)');
  for (const n of names) {
    // The forming nodes' files carry no INITIAL_CLUSTER_STATE, like every cluster.env written before it existed:
    // the unit's default is what makes them start as "new".
    t.notOk(envs.get(n)!.has('INITIAL_CLUSTER_STATE'), `${n}/cluster.env does not set INITIAL_CLUSTER_STATE`);
    const argv = startNode(t, n);
    t.equal(flagValue(argv, '--initial-cluster-state'), 'new', `${n} starts with --initial-cluster-state new (the unit's default)`);
  }
  // The second deploy run (checked below) overlaps the nodes' start-up: it only reads what exists.
  rerun = run(['bash', ...deployArgs], { timeoutMs: 200_000 });
  await waitHealthy(t, names, 60_000);
  const metrics = await httpGet(`http://127.0.0.1:${ports[0]!.http}/metrics`);
  t.equal(metrics.status, 200, '/metrics answers');
});

let stopping = false;
let aliceAdded = false;
function stopAll(): void {
  stopping = true;
  for (const c of children.values()) if (c.exitCode === null && c.signalCode === null) process.kill(c.pid!, 'SIGTERM');
}
const clusterUp = (): boolean =>
  exited.length === 0 && names.every((n) => children.get(n) !== undefined && children.get(n)!.exitCode === null && children.get(n)!.signalCode === null);

t.test('a user added through node 1 works through node 3 within its role', async (t) => {
  if (!clusterUp()) return skipRest(t, 'the cluster is not running (see above)');
  const role = await admin('n1', ['role', 'add', 'app', '--pub-allow', 'app.>', '--sub-allow', 'app.>']);
  t.equal(role.code, 0, `role add exits 0\n${role.stdout}${role.stderr}`);
  const user = await admin('n1', ['user', 'add', 'alice', '--password-stdin', '--role', 'app', '--store', 'kv'], `${password}\n`);
  t.equal(user.code, 0, `user add exits 0\n${user.stdout}${user.stderr}`);
  aliceAdded = user.code === 0;

  const sub3 = await connectAs(2, password);
  // Once alice is known on node 3 (above), a wrong password is refused there on the first attempt.
  const wrong = await connectAs(2, 'wrong password', 0).then(() => 'connected', (e: Error) => e.message);
  t.not(wrong, 'connected', `a wrong password is refused (${wrong})`);
  const pub1 = await connectAs(0, password);
  const sub = sub3.subscribe('app.greeting', { max: 1 });
  await sub3.flush();
  // The subscription reaches node 1 over the routes; publish until it arrives (bounded).
  const got = (async () => {
    for await (const m of sub) return m.string();
    return undefined;
  })();
  let received: string | undefined;
  void got.then((v) => { received = v; });
  for (let i = 0; i < 100 && received === undefined; i++) {
    pub1.publish('app.greeting', 'hello from node 1');
    await pub1.flush();
    await pause(100, 'between re-publishes: interest may not have reached node 1 yet (no ack to wait for)');
  }
  t.equal(await Promise.race([got, after(5000, 'timeout')]), 'hello from node 1', 'alice on node 3 receives alice\'s publish on node 1');

  const denied = sub3.subscribe('other.secret');
  const deniedResult = await Promise.race([
    (async () => {
      try {
        for await (const _ of denied) return 'message';
        return 'closed';
      } catch (e) {
        return `error: ${(e as Error).message}`;
      }
    })(),
    after(10_000, 'no answer'),
  ]);
  t.match(deniedResult, /permission/i, `a subscription outside the role is refused (${deniedResult})`);
});

t.test('re-running deploy-cluster.sh changes no secret', async (t) => {
  const r = await (rerun ?? run(['bash', ...deployArgs], { timeoutMs: 200_000 }));
  t.equal(r.code, 0, `second run exits 0\n${r.stderr}`);
  const after = snapshot(out);
  const secrets = [...before.keys()].filter((k) => /(\.key|\.pem|\.seed|\.pass)$/.test(k));
  t.ok(secrets.includes('ca/ca.key') && secrets.includes('ca/route.pass') && secrets.includes('n3/internal-id.seed') && secrets.includes('n2/tls/route.key'),
    `the secrets compared include the CA key, route password, identities and node keys (${secrets.length} files)`);
  for (const k of secrets) t.ok(after.get(k)?.equals(before.get(k)!), `${k} unchanged`);
  for (const n of names) t.ok(after.get(`${n}/cluster.env`)?.equals(before.get(`${n}/cluster.env`)!), `${n}/cluster.env rewritten identically`);
  t.same([...after.keys()].sort(), [...before.keys()].sort(), 'no file appeared or vanished');
});

t.test('a 4th node joins the running cluster from its cluster.env (INITIAL_CLUSTER_STATE=existing)', async (t) => {
  if (!clusterUp()) return skipRest(t, 'the cluster is not running (see above)');
  const route4 = `127.0.0.1:${ports[3]!.route}`;
  const joinArgs = [...deployArgs, nodeSpec('n4', 3), '--join', 'n4'];
  // RUNBOOK "Adding a node": register n4 on the running cluster (step 1) and generate its files (step 2). The two
  // are independent (the deploy only writes files), so they run side by side.
  const [add, deploy] = await Promise.all([
    admin('n1', ['cluster', 'add', 'n4', route4]),
    run(['bash', ...joinArgs], { timeoutMs: 200_000 }),
  ]);
  t.equal(add.code, 0, `cluster add n4 exits 0${add.code === 0 ? '' : `\n${add.stdout}${add.stderr}`}`);
  t.match(add.stdout, /node: created, learner \(slot 4\)/, 'n4 is registered as a learner in slot 4');
  t.equal(deploy.code, 0, `deploy-cluster.sh with n4 --join n4 exits 0\n${deploy.stderr}`);
  t.match(deploy.stdout, /cluster "unibus": 4 nodes \(1 joining\), kv-replicas 3/, 'the default R stays 3 (joiners do not count)');
  t.match(deploy.stdout, new RegExp(`n4: .*joins a running cluster: run "membershipd cluster add n4 nats-route://${route4}"`), 'it says what to register');
  const files = snapshot(out);
  for (const [k, v] of before) if (/(\.key|\.pem|\.seed|\.pass)$/.test(k)) t.ok(files.get(k)?.equals(v), `${k} unchanged by adding n4`);
  const env4 = parseEnvironmentFile(readFileSync(join(out, 'n4', 'cluster.env'), 'utf8'));
  envs.set('n4', env4);
  t.equal(env4.get('INITIAL_CLUSTER_STATE'), 'existing', 'n4/cluster.env says INITIAL_CLUSTER_STATE=existing');
  t.equal(env4.get('ROUTES')?.split(',').length, 4, 'n4 dials every node (itself included)');
  t.notOk(parseEnvironmentFile(readFileSync(join(out, 'n1', 'cluster.env'), 'utf8')).has('INITIAL_CLUSTER_STATE'), 'n1/cluster.env still has no INITIAL_CLUSTER_STATE');
  if (add.code !== 0 || deploy.code !== 0) return;

  // Step 3: the unit's ExecStart, unchanged; the cluster.env overrides the unit's default `new`.
  const argv = startNode(t, 'n4');
  t.equal(flagValue(argv, '--initial-cluster-state'), 'existing', 'n4 starts with --initial-cluster-state existing from its cluster.env');
  // A later run that forgets --join (say, when adding n5) keeps n4 joining; it overlaps n4's start (reads only).
  const sticky = run(['bash', ...deployArgs, nodeSpec('n4', 3)], { timeoutMs: 200_000 });
  await waitHealthy(t, ['n4'], 60_000);

  // Step 4: `cluster status` through n4 (with n4's own cluster.env) shows four members, n4 reachable.
  const status = await admin('n4', ['cluster', 'status', '--json']);
  t.equal(status.code, 0, `cluster status through n4 exits 0${status.code === 0 ? '' : `\n${status.stdout}${status.stderr}`}`);
  let report: { via?: string; members?: { name: string | null; role: string; reachable: boolean }[] } = {};
  try {
    report = (JSON.parse(status.stdout) as { status: typeof report }).status;
  } catch (e) {
    t.fail(`cluster status --json prints JSON: ${(e as Error).message}\n${status.stdout}`);
  }
  t.equal(report.via, 'n4', 'the status came from n4');
  t.same(report.members?.map((m) => m.name).sort(), ['n1', 'n2', 'n3', 'n4'], 'four members');
  const m4 = report.members?.find((m) => m.name === 'n4');
  t.equal(m4?.reachable, true, 'n4 is reachable');
  t.match(m4?.role, /^(learner|follower|leader)$/, `n4 is a member (${m4?.role}: R3 with three voters keeps it a learner)`);

  // The replicated store serves n4 at once: alice (added through n1 before n4 existed) logs in through n4.
  if (aliceAdded) {
    const nc4 = await connectAs(3, password).then((nc) => nc, (e: Error) => e.message);
    t.type(nc4, 'object', `alice logs in through n4 (${typeof nc4 === 'string' ? nc4 : 'connected'})`);
  }

  const again = await sticky;
  t.equal(again.code, 0, `a re-run without --join exits 0\n${again.stderr}`);
  const now = snapshot(out);
  for (const [k, v] of files) t.ok(now.get(k)?.equals(v), `${k} unchanged by the re-run without --join`);
});

t.test('deploy-cluster.sh refuses unsafe input', async (t) => {
  const bad = join(root, 'bad');
  const cases: [string[], RegExp][] = [
    [['a=127.0.0.1', 'a=127.0.0.2'], /duplicate node name "a"/],
    [['a=not_an address'], /is not an IP address or a DNS name/],
    [['a=127.0.0.1', 'b=127.0.0.2', '--kv-replicas', '3'], /--kv-replicas 3 is above the node count 2/],
    [['--join', 'c', 'a=127.0.0.1', 'b=127.0.0.2'], /--join "c": no such node among the NAME=ADDRESS arguments/],
    [['--join', 'a', '--join', 'b', 'a=127.0.0.1', 'b=127.0.0.2'], /every node is marked --join/],
  ];
  for (const [args, msg] of cases) {
    const r = await run(['bash', deployScript, '--out', bad, ...args]);
    t.equal(r.code, 2, `refused: ${args.join(' ')}`);
    t.match(r.stderr, msg);
  }
  t.notOk(existsSync(bad), 'nothing written for refused input');
});

t.test('systemd-analyze verify accepts the unit', async (t) => {
  const which = await run(['sh', '-c', 'command -v systemd-analyze']);
  if (which.code !== 0) return skipRest(t, 'systemd-analyze is not installed on this machine');
  // A temp copy whose paths exist: /opt/unibus → a temp dir holding cluster.env and an executable stand-in.
  const dir = mkdtempSync(join(root, 'unit-'));
  writeFileSync(join(dir, 'cluster.env'), readFileSync(join(out, 'n1', 'cluster.env')));
  writeFileSync(join(dir, 'membershipd'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  const copy = join(dir, 'membershipd-cluster.service');
  writeFileSync(copy, readFileSync(unitFile, 'utf8').replaceAll(installedDir, dir));
  const r = await run(['systemd-analyze', 'verify', copy], { timeoutMs: 30_000 });
  t.equal(r.code, 0, `systemd-analyze verify exits 0\n${r.stderr}`);
  // verify exits 0 even for unknown keys or unparsable values; those are warnings naming the file.
  const warnings = r.stderr.split('\n').filter((l) => l.includes('membershipd-cluster.service'));
  t.same(warnings, [], 'no warning about the unit');
});

t.test('stop the nodes with SIGTERM (systemd\'s KillSignal) and they exit 0', async (t) => {
  if (children.size === 0) return skipRest(t, 'no node was started');
  const exits = [...children.entries()].map(([n, c]) => new Promise<string>((res) => {
    if (c.exitCode !== null || c.signalCode !== null) return res(`${n}: already exited (${c.exitCode ?? c.signalCode})`);
    c.once('exit', (code, sig) => res(`${n}: ${code ?? sig}`));
  }));
  stopAll();
  const result = await Promise.race([Promise.all(exits), after(30_000, ['timeout'])]);
  t.comment(`exits: ${result.join(', ')} (test wall time ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  if (exited.length > 0) return skipRest(t, 'a node had already exited (see above)');
  t.same(result, [...children.keys()].map((n) => `${n}: 0`), 'each node exits 0 on SIGTERM within 30 s (TimeoutStopSec)');
});
