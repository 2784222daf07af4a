// The control plane on the Raft-backed store: three `serve --store kv --bus-auth enforce` nodes in this process
// (the real flag parser, bus-auth loading and start path of src/cli, real TLS routes, real WAL), the admin CLI
// through main() against a FOLLOWER, and real NATS clients on another node: a user added through one node
// connects through another with its role's permissions, and its removal disconnects it there.
import t from 'tap';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { parseCommandLine } from '../../src/config/index.js';
import { startServing, type ServingNode } from '../../src/cli/serve.js';
import { loadBusAuth } from '../../src/cli/bus_auth.js';
import { main, memoryOutput } from '../../src/cli/index.js';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { controlBuckets, decodeValue, encodeValue, validateConfig, validateNode } from '../../src/control/index.js';
import { silentLogger } from '../../src/log.js';
import { nodeOptionsFromServeConfig, postureDigest } from '../../src/node/index.js';
import type { ServeConfig } from '../../src/config/index.js';
import { freePort } from '../../src/free_port.js';

const dir = t.testdir({ 'pw-carol': 'tr0ub4dor\n', 'route.pass': 'route-secret\n' });
const nodes: ServingNode[] = [];
const clients: NatsConnection[] = [];
const parsedConfigs: ServeConfig[] = [];


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
    parsedConfigs[i] = cmd.config;
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

t.test('nodes and config buckets: identities, URLs, roles and the posture; a differing posture refuses the node with the reason', async (t) => {
  const reader = (i: number) => nodes[i]!.cluster!.kvBackend().reader;
  const record = (i: number, name: string): Record<string, unknown> | undefined => {
    const e = reader(i).get(controlBuckets.nodes, name);
    return e?.op === 'PUT' ? (decodeValue(e.value, validateNode) as Record<string, unknown> | undefined) : undefined;
  };
  await until('every node recorded with its client URL', () => [0, 1, 2].every((i) => (record(0, `n${i}`)?.urls as { client?: string } | undefined)?.client !== undefined));
  for (const i of [0, 1, 2]) {
    const r = record(2, `n${i}`)!;
    t.equal(r.identity, nodes[i]!.cluster!.identity.publicKey, `n${i}'s identity key`);
    t.equal(r.role, 'voter');
    t.same(r.urls, { route: `nats-route://${nodes[i]!.cluster!.slots().find((s) => s.name === `n${i}`)!.address}`, client: nodes[i]!.urls.nats, http: nodes[i]!.urls.http });
    t.match(r.version, /^\d+\.\d+/);
  }
  // Node 1's identity administers through node 0: node 0 knows the key only from the nodes bucket.
  const o = memoryOutput();
  t.equal(await main(['role', 'list', '--server', nodes[0]!.urls.nats, '--internal-id-file', join(dir, 'id-1.nk')], o), 0, o.stderr.join('\n'));

  const config = (key: string): unknown => {
    const e = reader(1).get(controlBuckets.config, key);
    return e?.op === 'PUT' ? decodeValue(e.value, validateConfig)?.value : undefined;
  };
  await until('the posture in the config bucket', () => config('kv-replicas') !== undefined);
  t.same(['bus-auth', 'client-tls', 'store', 'kv-replicas'].map(config), ['enforce', false, 'kv', 3]);
  const digest = postureDigest({ busAuth: String(config('bus-auth')), clientTls: config('client-tls') === true, store: String(config('store')) });
  t.equal(digest, nodeOptionsFromServeConfig(parsedConfigs[0]!, silentLogger()).postureDigest, 'the route handshake digest is made of the config bucket values');

  // The cluster's posture changes under the nodes (as if they had been started with other flags): each refuses.
  const b = nodes[0]!.cluster!.kvBackend();
  const prev = b.reader.get(controlBuckets.config, 'store')!;
  const put = async (value: string): Promise<void> => {
    const ts = Date.now();
    const r = await b.propose({ op: 'put', bucket: controlBuckets.config, key: 'store', value: encodeValue({ v: 1, value, updated: ts, by: 'test' }), ts });
    t.ok(r.ok);
  };
  await put('file');
  await until('every node refused', () => nodes.slice(0, 3).every((n) => n.cluster!.health().status !== 'ok'));
  const res = await fetch(`${nodes[2]!.urls.http}/healthz`);
  t.equal(res.status, 503);
  t.match(((await res.json()) as { reason: string }).reason, /posture differs.*store is file in the cluster, kv on this node/);
  const ts = Date.now();
  t.ok((await b.propose({ op: 'put', bucket: controlBuckets.config, key: 'store', value: prev.op === 'PUT' ? prev.value : new Uint8Array(), ts })).ok);
  await until('healthy again', () => nodes.slice(0, 3).every((n) => n.cluster!.health().status === 'ok'));
});

t.test('cluster status, transfer-leader, remove and add through the CLI', async (t) => {
  const leaderIdx = (): number => [0, 1, 2].find((i) => nodes[i]!.cluster!.selfReport().state === 'leader') ?? -1;
  await until('a leader', () => leaderIdx() >= 0);
  const follower = [0, 1, 2].find((i) => i !== leaderIdx())!;
  let r = await cli(follower, 'cluster', 'status');
  t.equal(r.code, 0, r.err);
  t.match(r.out, /^cluster ctl: leader n\d, term \d+, 3 voters of 3/);
  t.match(r.out, /NODE +ROLE +TERM +LEADER +COMMIT +APPLIED +LAG +REACHABLE +ADDRESS/);
  t.equal(r.out.split('\n').filter((l) => / (leader|follower) .* yes /.test(l)).length, 3, 'three reachable voters');
  r = await cli(follower, 'cluster', 'status', '--json');
  const st = (JSON.parse(r.out) as { status: { members: { name: string; role: string; reachable: boolean; lag: number }[]; leader: string } }).status;
  t.same(st.members.map((m) => m.role).sort(), ['follower', 'follower', 'leader']);
  t.equal(st.leader, `n${leaderIdx()}`);

  // Transfer through a follower, to a named voter and then to "the best other one".
  const target = [0, 1, 2].find((i) => i !== leaderIdx() && i !== follower)!;
  r = await cli(follower, 'cluster', 'transfer-leader', `n${target}`);
  t.equal(r.code, 0, r.err);
  t.equal(r.out, `leader: n${target} (updated)`);
  await until('the new leader', () => leaderIdx() === target);
  r = await cli(follower, 'cluster', 'transfer-leader');
  t.equal(r.code, 0, r.err);
  await until('leadership moved away', () => leaderIdx() !== target && leaderIdx() >= 0);

  // Remove a follower: the configuration drops it, writes go on with two voters, the removed node says why.
  const victim = [0, 1, 2].find((i) => i !== leaderIdx())!;
  const via = [0, 1, 2].find((i) => i !== victim)!;
  r = await cli(via, 'cluster', 'remove', `n${victim}`);
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'node: removed (2 voters left)');
  r = await cli(via, 'cluster', 'remove', `n${victim}`);
  t.equal(r.out, 'node: unchanged', 'removing again is unchanged');
  await until('the removed node knows', () => nodes[victim]!.cluster!.health().status !== 'ok');
  t.match((nodes[victim]!.cluster!.health() as { reason: string }).reason, /removed from the cluster.*cluster add/);
  r = await cli(via, 'role', 'add', 'during-removal');
  t.equal(r.code, 0, 'writes commit with two voters');
  r = await cli(via, 'cluster', 'status', '--json');
  t.equal((JSON.parse(r.out) as { status: { members: { name: string; role: string }[] } }).status.members.find((m) => m.name === `n${victim}`)?.role, 'removed');
  await until('its nodes record deleted', () => nodes[via]!.cluster!.kvBackend().reader.get(controlBuckets.nodes, `n${victim}`)?.op !== 'PUT');

  // Bad input: an address outside the slot list, a name bound elsewhere, an unknown node.
  r = await cli(via, 'cluster', 'add', 'n9', 'nats-route://127.0.0.1:1');
  t.equal(r.code, 2);
  t.match(r.err, /not one of the cluster's slot addresses.*outside the initial --routes is not supported yet/);
  const address = nodes[victim]!.cluster!.slots().find((s) => s.name === `n${victim}`)!.address;
  r = await cli(via, 'cluster', 'add', `n${via}`, address);
  t.equal(r.code, 3, 'an address bound to another name is a conflict');
  r = await cli(via, 'cluster', 'remove', 'nobody');
  t.equal(r.code, 1);
  t.match(r.err, /no cluster node named nobody/);
  r = await cli(via, 'cluster', 'add');
  t.equal(r.code, 2);

  // Re-add at its address: learner first, promoted back to voter once caught up (R = 3).
  r = await cli(via, 'cluster', 'add', `n${victim}`, `nats-route://${address}`);
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'node: created, voter');
  await until('the re-added node healthy and caught up', () => nodes[victim]!.cluster!.health().status === 'ok'
    && nodes[victim]!.cluster!.kvBackend().reader.get(controlBuckets.roles, 'during-removal')?.op === 'PUT');
  await until('its record back as a voter', () => {
    const e = nodes[via]!.cluster!.kvBackend().reader.get(controlBuckets.nodes, `n${victim}`);
    return e?.op === 'PUT' && decodeValue(e.value, validateNode)?.role === 'voter';
  });
  // R lowered and raised on the running cluster: 3 → 2 (a voter steps down to learner) → 3.
  r = await cli(via, 'cluster', 'kv-replicas', '2');
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'kv-replicas: updated, 2 voters');
  await until('every node adopted R = 2; the stepped-down voter back as a learner', () => nodes.slice(0, 3).every((n) => n.cluster!.kvReplicas === 2)
    && nodes[via]!.cluster!.membership()!.learners.length === 1);
  r = await cli(victim, 'cluster', 'status', '--json');
  const two = (JSON.parse(r.out) as { status: { kvReplicas: number; voters: number[]; learners: number[] } }).status;
  t.same([two.kvReplicas, two.voters.length, two.learners.length], [2, 2, 1], 'two voters and a learner');
  r = await cli(via, 'cluster', 'kv-replicas', '3');
  t.equal(r.out, 'kv-replicas: updated, 3 voters');
  r = await cli(via, 'cluster', 'kv-replicas', '3');
  t.equal(r.out, 'kv-replicas: unchanged, 3 voters');
  r = await cli(via, 'cluster', 'kv-replicas', '4');
  t.equal(r.code, 2);
  t.match(r.err, /greater than the cluster size 3/);
  r = await cli(via, 'cluster', 'kv-replicas', 'x');
  t.equal(r.code, 2);
  await until('healthy with R = 3', () => nodes.slice(0, 3).every((n) => n.cluster!.health().status === 'ok' && n.cluster!.kvReplicas === 3));

  r = await cli(via, 'audit', 'list', '--json');
  const audit = (JSON.parse(r.out) as { audit: { what: string; target: string; result: string }[] }).audit;
  t.ok(audit.some((a) => a.what === 'cluster.remove' && a.target === `n${victim}` && a.result === 'removed'));
  t.ok(audit.some((a) => a.what === 'cluster.add' && a.target === `n${victim}` && a.result === 'created'));
  t.ok(audit.some((a) => a.what === 'cluster.transfer' && a.result === 'updated'));
});
