// The control plane on the Raft-backed store: three `serve --store kv --bus-auth enforce` nodes in this process
// (the real flag parser, bus-auth loading and start path of src/cli, real TLS routes, real WAL), the admin CLI
// through main() against a FOLLOWER, and real NATS clients on another node: a user added through one node
// connects through another with its role's permissions, and its removal disconnects it there.
import t from 'tap';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { parseCommandLine } from '../../src/config/index.js';
import { startServing, type ServingNode } from '../../src/cli/serve.js';
import { loadBusAuth } from '../../src/cli/bus_auth.js';
import { main, memoryOutput } from '../../src/cli/index.js';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { controlBuckets } from '../../src/control/index.js';
import { silentLogger } from '../../src/log.js';

const dir = t.testdir({ 'pw-carol': 'tr0ub4dor\n', 'route.pass': 'route-secret\n' });
const nodes: ServingNode[] = [];
const clients: NatsConnection[] = [];

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

async function until(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

t.teardown(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  for (const n of nodes) await n.stop().catch(() => undefined);
});

t.before(async () => {
  const ca = await createCertificateAuthority();
  const leaf = await issueCertificate(ca, { commonName: 'route', usage: 'node' });
  const { certFile, keyFile } = await writePemPair(dir, 'route', leaf);
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, ca.cert);
  const clusterPorts = [await freePort(), await freePort(), await freePort()];
  const routes = clusterPorts.map((p) => `127.0.0.1:${p}`).join(',');
  await Promise.all(clusterPorts.map(async (port, i) => {
    const argv = [
      'serve', '--server-name', `n${i}`, '--bind', '127.0.0.1', '--nats-port', '0', '--http-port', '0',
      '--cluster-name', 'ctl', '--cluster-port', String(port), '--routes', routes, '--cluster-user', 'route', '--cluster-pass-file', join(dir, 'route.pass'),
      '--route-tls-cert', certFile, '--route-tls-key', keyFile, '--route-tls-ca', caFile,
      '--data-dir', join(dir, `data-${i}`), '--internal-id-file', join(dir, `id-${i}.nk`),
      '--store', 'kv', '--bus-auth', 'enforce', '--log-level', 'silent',
    ];
    const cmd = parseCommandLine(argv);
    if (cmd.kind !== 'serve') throw new Error('expected serve');
    const logger = silentLogger();
    const auth = await loadBusAuth(cmd.config, logger);
    nodes[i] = await startServing(cmd.config, logger, auth.authenticator, auth);
  }));
  await until('a healthy cluster with its control buckets', () => nodes.every((n) => n.cluster!.health().status === 'ok'
    && Object.values(controlBuckets).every((b) => n.cluster!.kvBackend().reader.bucketInfo(b) !== undefined)));
});

async function cli(node: number, ...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = memoryOutput();
  const code = await main([...argv, '--server', nodes[node]!.urls.nats, '--internal-id-file', join(dir, `id-${node}.nk`)], o);
  return { code, out: o.stdout.join('\n'), err: o.stderr.join('\n') };
}

t.test('user add through a follower; the user connects through another node; remove disconnects it there', async (t) => {
  const leaderName = (nodes[0]!.cluster!.raftz().leader as { name?: string } | null)?.name;
  const follower = [0, 1, 2].find((i) => `n${i}` !== leaderName)!;
  t.ok(leaderName !== undefined && `n${follower}` !== leaderName, `n${follower} is a follower (leader ${String(leaderName)})`);
  const other = [0, 1, 2].find((i) => i !== follower)!;

  let r = await cli(follower, 'role', 'add', 'telemetry', '--pub-allow', 'metrics.>', '--sub-allow', 'metrics.>', '--sub-allow', '_INBOX.>');
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'role telemetry: created');
  r = await cli(follower, 'user', 'add', 'carol', '--password-file', join(dir, 'pw-carol'), '--role', 'telemetry');
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'user carol: created');
  r = await cli(other, 'user', 'add', 'carol', '--password-file', join(dir, 'pw-carol'), '--role', 'telemetry');
  t.equal(r.out, 'user carol: unchanged', 'the same add through another node is unchanged');
  r = await cli(other, 'user', 'add', 'carol', '--password-file', join(dir, 'route.pass'), '--role', 'telemetry');
  t.equal(r.code, 3, 'a different spec through another node is a conflict');

  // Every node applied the write; the user connects through a node it was not added on.
  await until('carol on every node', () => nodes.every((n) => n.cluster!.kvBackend().reader.get(controlBuckets.users, 'carol')?.op === 'PUT'));
  const carol = await connect({ servers: nodes[other]!.urls.nats, user: 'carol', pass: 'tr0ub4dor', reconnect: false });
  clients.push(carol);
  const sub = carol.subscribe('metrics.cpu', { max: 1 });
  carol.publish('metrics.cpu', '42');
  for await (const m of sub) t.equal(m.string(), '42', 'its role grants metrics.>');
  const errs: string[] = [];
  void (async () => {
    for await (const s of carol.status()) if (s.type === 'error') errs.push(String((s as { error?: Error }).error?.message));
  })();
  carol.publish('orders.new', 'x');
  await carol.flush();
  await until('a permissions violation', () => errs.length > 0, 5_000);
  t.match(errs[0], /Permissions Violation for Publish to "orders\.new"/);

  const closed = carol.closed();
  r = await cli(follower, 'user', 'remove', 'carol');
  t.equal(r.out, 'user carol: removed');
  const outcome = await Promise.race([closed.then(() => 'closed'), new Promise((res) => setTimeout(() => res('still open'), 10_000))]);
  t.equal(outcome, 'closed', 'the removal disconnects the user on the other node');

  r = await cli(other, 'audit', 'list', '--json');
  const audit = (JSON.parse(r.out) as { audit: { what: string; target: string; result: string }[] }).audit;
  t.ok(audit.some((a) => a.what === 'user.add' && a.target === 'carol' && a.result === 'created'), 'the audit is replicated');
  t.ok(audit.some((a) => a.what === 'user.remove' && a.target === 'carol' && a.result === 'removed'));
});

t.test('serve --store kv without cluster flags: a cluster of one, durable across a restart', async (t) => {
  const argv = [
    'serve', '--server-name', 'solo', '--bind', '127.0.0.1', '--nats-port', '0', '--http-port', '0',
    '--data-dir', join(dir, 'solo'), '--internal-id-file', join(dir, 'solo.nk'), '--store', 'kv', '--bus-auth', 'enforce', '--log-level', 'silent',
  ];
  const start = async (): Promise<ServingNode> => {
    const cmd = parseCommandLine(argv);
    if (cmd.kind !== 'serve') throw new Error('expected serve');
    const auth = await loadBusAuth(cmd.config, silentLogger());
    const n = await startServing(cmd.config, silentLogger(), auth.authenticator, auth);
    nodes.push(n);
    await until('the lone node\'s buckets', () => n.cluster!.health().status === 'ok' && n.cluster!.kvBackend().reader.bucketInfo(controlBuckets.users) !== undefined);
    return n;
  };
  const solo = async (n: ServingNode, ...a: string[]): Promise<{ code: number; out: string; err: string }> => {
    const o = memoryOutput();
    const code = await main([...a, '--server', n.urls.nats, '--internal-id-file', join(dir, 'solo.nk')], o);
    return { code, out: o.stdout.join('\n'), err: o.stderr.join('\n') };
  };
  let n = await start();
  let r = await solo(n, 'user', 'add', 'dave', '--password-file', join(dir, 'pw-carol'), '--role', 'admin');
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'user dave: created');
  await n.stop();
  n = await start();
  r = await solo(n, 'user', 'add', 'dave', '--password-file', join(dir, 'pw-carol'), '--role', 'admin');
  t.equal(r.out, 'user dave: unchanged', 'the user survived the restart (WAL in --data-dir)');
  const dave = await connect({ servers: n.urls.nats, user: 'dave', pass: 'tr0ub4dor', reconnect: false });
  clients.push(dave);
  const sub = dave.subscribe('$SYS.REQ.X', { max: 1 });
  dave.publish('$SYS.REQ.X', 'admin');
  for await (const m of sub) t.equal(m.string(), 'admin', 'the built-in admin role grants the reserved subjects');
  const three = parseCommandLine(['serve', '--store', 'kv', '--kv-replicas', '3', '--data-dir', join(dir, 'solo3'), '--nats-port', '0', '--http-port', '0']);
  if (three.kind !== 'serve') throw new Error('expected serve');
  await t.rejects(startServing(three.config, silentLogger()), { code: 'ECONFIG', flag: 'kv-replicas', message: /a cluster of one/ }, '--kv-replicas 3 without cluster flags is refused at start');
});
