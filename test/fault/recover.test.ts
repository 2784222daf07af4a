// Quorum-loss recovery (issue 16 item 3) on real `membershipd serve` processes in the deploy posture (--store kv,
// --bus-auth enforce, TLS client port, TLS routes with a password file, identity files): data written through real
// NATS clients (@nats-io/kv puts, admin API user adds), kill -9 of two of three nodes, `membershipd cluster recover
// --force-new-cluster` (the real CLI, a separate process) on the survivor, which then serves every acknowledged write
// alone and takes new ones; a node of the old cluster started with its old data is refused (cluster_incarnation,
// naming the remedy); the wiped node added back with `cluster add` replicates. Refusals: the node running, a majority
// of the old voters reachable, bad flags. Every child is killed by PID in teardown. Bounds are liveness bounds for a
// loaded 2-core machine, not timings.
import t from 'tap';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { createUser } from '@nats-io/nkeys';
import { signRequest } from '../../src/control/envelope.js';
import { keyPairFromSeed } from '../../src/auth/index.js';
import {
  adminFlags, cli, client, getJson, HEALTHY_MS, kill9, newCluster, root, spawnNode, teardownHarness, waitFor, waitHealthy, type Cluster,
} from './harness.js';

t.teardown(teardownHarness);

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
  const recoverStarted = Date.now();
  r = await recover('--probe-timeout-ms', '500');
  const recoverMs = Date.now() - recoverStarted;
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
  const spawnedAt = Date.now();
  spawnNode(c, survivor);
  await waitHealthy(c, [survivor]);
  t.comment(`figures (loaded shared 2-core machine): recover CLI ${recoverMs} ms wall (process boot, a TCP probe of the two dead voters' route ports, refused at once on loopback, and the rewrite); `
    + `the recovered node healthy alone ${Date.now() - spawnedAt} ms after its spawn`);
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
  let staleReason = '';
  await waitFor('the stale node\'s /healthz names the refusal', async () => {
    const h = await getJson(c, stale, '/healthz');
    staleReason = String(h.body.reason);
    return h.status === 503 && /cluster incarnation mismatch/.test(staleReason);
  }, HEALTHY_MS).catch(() => undefined);
  t.match(staleReason, /cluster incarnation mismatch.*cluster add/, 'its /healthz (503) says the same');
  const z = await getJson(c, survivor, '/raftz');
  t.same((z.body.conf as { voters?: number[] }).voters, [1], 'the recovered node is still the only voter');
  t.same((z.body.slots as unknown[]).length, 1, 'and its slot table did not take the stale node in');
  await waitHealthy(c, [survivor]);
  await kill9(c, stale);

  // Added back: wiped, registered with `cluster add` at its old address, started in join mode.
  rmSync(c.dataDirs[stale]!, { recursive: true, force: true });
  r = await cli(['cluster', 'add', `n${stale}`, `nats-route://127.0.0.1:${c.routePorts[stale]}`, ...adminFlags(c, survivor)]);
  t.equal(r.code, 0, `cluster add n${stale} at its old address exits 0${r.code === 0 ? '' : `: ${r.stdout}${r.stderr}`}`);
  const joinArgs = (i: number): string[] => [...c.args[i]!.map((a, k, all) => (all[k - 1] === '--routes' ? `127.0.0.1:${c.routePorts[survivor]}` : a)), '--initial-cluster-state', 'existing'];
  spawnNode(c, stale, joinArgs(stale));
  await waitHealthy(c, [survivor, stale]);
  const nc2 = await client(c, stale);
  const kv3 = await new Kvm(jetstream(nc2, { timeout: 5000 })).open('orders');
  const missingThere: string[] = [];
  for (const [key, value] of [...acked, ['after.recover', 'yes'] as const]) if ((await kv3.get(key))?.string() !== value) missingThere.push(key);
  t.same(missingThere, [], `the added node has every key (${acked.size + 1})`);
  await kv3.put('after.join', 'replicated');
  await waitFor('the write through the added node on the survivor', async () => (await kv2.get('after.join'))?.string() === 'replicated', HEALTHY_MS)
    .catch(() => undefined);
  t.equal((await kv2.get('after.join'))?.string(), 'replicated', 'a write through the added node is on the recovered one');
  const joined = JSON.parse(readFileSync(join(c.dataDirs[stale]!, 'cluster.json'), 'utf8')) as Record<string, unknown>;
  t.equal(joined.incarnation, recovered.incarnation, 'the added node adopted the recovered cluster\'s incarnation');
  let voters: unknown;
  await waitFor('the added node promoted to voter (R 3, 1 voter)', async () => {
    const z = await getJson(c, survivor, '/raftz');
    voters = (z.body.conf as { voters?: number[] }).voters;
    return Array.isArray(voters) && voters.length === 2;
  }, HEALTHY_MS).catch(() => undefined);
  t.same(voters, [1, 2], 'the added node is a voter');

  // The other old node started with its old data dials its old routes, among them the address the added node now
  // serves: the added node (not restarted since it joined) refuses it too, as a restart would.
  const second = others[1]!;
  const stale2 = spawnNode(c, second, c.args[second]!.map((a, k, all) => (all[k - 1] === '--log-level' ? 'warn' : a)));
  // pino JSON escapes the quotes around the name.
  const byAdded = new RegExp(`cluster incarnation mismatch: peer \\\\?"n${stale}\\\\?"`);
  await waitFor('the added node refuses the other stale node', () => byAdded.test(stale2.stderr), HEALTHY_MS).catch(() => undefined);
  t.ok(byAdded.test(stale2.stderr), `the stale n${second} is refused by the added n${stale} as well${byAdded.test(stale2.stderr) ? '' : `: ${stale2.stderr.slice(-3000)}`}`);
  await kill9(c, second);

  // The second lost node back too (issue 16: "add two fresh nodes"): three voters again, /healthz 200 everywhere.
  rmSync(c.dataDirs[second]!, { recursive: true, force: true });
  r = await cli(['cluster', 'add', `n${second}`, `nats-route://127.0.0.1:${c.routePorts[second]}`, ...adminFlags(c, stale)]);
  t.equal(r.code, 0, `cluster add n${second} through the added node exits 0${r.code === 0 ? '' : `: ${r.stdout}${r.stderr}`}`);
  spawnNode(c, second, joinArgs(second));
  await waitHealthy(c, [0, 1, 2]);
  const nc4 = await client(c, second);
  const kv4 = await new Kvm(jetstream(nc4, { timeout: 5000 })).open('orders');
  const missingOnSecond: string[] = [];
  for (const [key, value] of [...acked, ['after.recover', 'yes'] as const, ['after.join', 'replicated'] as const]) {
    if ((await kv4.get(key))?.string() !== value) missingOnSecond.push(key);
  }
  t.same(missingOnSecond, [], `the second added node has every key (${acked.size + 2})`);
  t.same(await listUsers(c, second).then((u) => [...users, 'after-recover'].filter((n) => !u.has(n))), [], 'and every user');
  await waitFor('three voters again', async () => {
    const z = await getJson(c, survivor, '/raftz');
    voters = (z.body.conf as { voters?: number[] }).voters;
    return Array.isArray(voters) && voters.length === 3;
  }, HEALTHY_MS).catch(() => undefined);
  t.same(voters, [1, 2, 3], 'three voters, as before the loss');
  const health = await Promise.all([0, 1, 2].map((i) => getJson(c, i, '/healthz')));
  t.same(health.map((h) => h.status), [200, 200, 200], '/healthz 200 on every node');
});
