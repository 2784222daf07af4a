// Service presence under process faults (issue 15 item 4) on real `membershipd serve` processes (test/fault/harness.ts):
//   - kill -9 of the leader with SERVICES_INSTANCES (default 200) live instances — three quarters real @nats-io/services
//     instances (connection-bound) on the two followers, a quarter leased (REGISTER, a KEEPALIVE every 2 s, TTL 10 s) —
//     watched through the whole failover by a @nats-io/kv watcher on `ub_services`: not one delete;
//   - kill -9 of the node holding a service's connection: the instance leaves after the connection TTL (10 s after the
//     node's last report, which is at most one report period, 2 s, before the kill) and not before;
//   - SIGSTOP of that node beyond the TTL: the instance leaves; after SIGCONT it returns (the node reports it again).
// Lower bounds on a leave are what the lease guarantees (never before the TTL), not timings of the machine; upper
// bounds are liveness bounds for a loaded 2-core machine. Every child is killed by PID in teardown.
import t from 'tap';
import type { NatsConnection } from '@nats-io/transport-node';
import { followKeys, type FollowedKeys } from '../support/kv_watch.js';
import { client, getJson, HEALTHY_MS, kill9, newCluster, sleep, spawnNode, teardownHarness, waitFor, waitHealthy, type Cluster } from './harness.js';

t.teardown(teardownHarness);

const instances = Math.max(4, Math.min(1000, Number(process.env.SERVICES_INSTANCES ?? 200)));
/** The serve defaults (src/services/presence.ts): connection-bound TTL and the holding node's report period. */
const connectionTtlMs = 10_000;
const reportMs = 2000;
const leaseTtlS = 10;


async function watchServices(nc: NatsConnection): Promise<FollowedKeys> {
  const { jetstream } = await import('@nats-io/jetstream');
  const { Kvm } = await import('@nats-io/kv');
  return followKeys(await new Kvm(jetstream(nc, { timeout: 5000 })).open('ub_services'));
}

async function leaderOf(c: Cluster, idx: readonly number[]): Promise<number> {
  let leader = -1;
  await waitFor('a leader', async () => {
    for (const i of idx) if ((await getJson(c, i, '/raftz')).body.state === 'leader') leader = i;
    return leader >= 0;
  }, HEALTHY_MS);
  return leader;
}

async function serviceApi(nc: NatsConnection, verb: string, body: unknown): Promise<Record<string, unknown>> {
  const m = await nc.request(`$UB.API.SERVICE.${verb}`, JSON.stringify(body), { timeout: 5000 });
  return m.json<Record<string, unknown>>();
}

/** `count` real @nats-io/services instances of `name` on `conns` connections to node i; their ub_services keys. */
async function startInstances(c: Cluster, i: number, name: string, count: number, connsPerNode: number): Promise<{ keys: string[]; stop(): Promise<void> }> {
  const { Svcm } = await import('@nats-io/services');
  const keys: string[] = [];
  const services: { stop(): Promise<unknown> }[] = [];
  for (let k = 0; k < connsPerNode; k++) {
    const nc = await client(c, i);
    // `as never`: @nats-io/services pins its own copy of nats-core, structurally the same connection (as in test/services).
    const svcm = new Svcm(nc as never);
    for (let n = k; n < count; n += connsPerNode) {
      const srv = await svcm.add({ name, version: '1.0.0', metadata: { node: `n${i}`, n: String(n) } });
      srv.addEndpoint('do', { subject: `${name}.do`, handler: (_err, m) => m.respond('ok') });
      keys.push(`${name}.${srv.info().id}`);
      services.push(srv);
    }
  }
  return { keys, stop: async () => { for (const s of services) await s.stop().catch(() => undefined); } };
}

let cluster: Cluster | undefined;

t.before(async () => {
  cluster = await newCluster();
  for (let i = 0; i < 3; i++) spawnNode(cluster, i);
  await waitHealthy(cluster, [0, 1, 2]);
});

t.test(`kill -9 of the leader with ${instances} live instances: not one falsely leaves`, async (t) => {
  const c = cluster!;
  const leader = await leaderOf(c, [0, 1, 2]);
  const followers = [0, 1, 2].filter((i) => i !== leader);
  const watcher = await watchServices(await client(c, followers[0]!));
  const auto = Math.floor((instances * 3) / 4);
  const leased = instances - auto;
  const groups = [];
  const perFollower = [Math.ceil(auto / 2), Math.floor(auto / 2)];
  for (const [k, f] of followers.entries()) groups.push(await startInstances(c, f, `svc${k}`, perFollower[k]!, 3));
  const autoKeys = groups.flatMap((g) => g.keys);
  // Leased instances through the second follower: REGISTER, then a KEEPALIVE every 2 s, retried while the cluster elects.
  const leaseConn = await client(c, followers[1]!);
  const leases: string[] = [];
  const leasedKeys: string[] = [];
  const refused: string[] = [];
  for (let n = 0; n < leased; n++) {
    const r = await serviceApi(leaseConn, 'REGISTER', { service: 'leased', instance: `i${n}`, ttl: leaseTtlS, endpoints: ['leased.do'] });
    if (r.error !== undefined || typeof r.lease !== 'string') refused.push(JSON.stringify(r).slice(0, 200));
    leases.push(String(r.lease));
    leasedKeys.push(`leased.i${n}`);
  }
  t.same(refused, [], `${leased} leased registrations accepted`);
  let keepAliveFailures = 0;
  let stopping = false;
  const keeper = (async () => {
    for (let round = 0; round < 1000 && !stopping; round++) {
      await Promise.all(leases.map(async (lease) => {
        const r = await serviceApi(leaseConn, 'KEEPALIVE', { lease }).catch((e: unknown) => ({ error: { code: 'client', message: String(e) } }));
        if (r.error !== undefined) keepAliveFailures++;
      }));
      await sleep(2000);
    }
  })();
  const all = [...autoKeys, ...leasedKeys];
  t.equal(all.length, instances, `${autoKeys.length} @nats-io/services instances and ${leasedKeys.length} leased ones`);
  await waitFor(`all ${instances} instances seen by the watcher`, () => all.every((k) => watcher.live.has(k)), HEALTHY_MS * 2);
  const seenBefore = watcher.ops.length;

  const killedAt = Date.now();
  await kill9(c, leader);
  const newLeader = await leaderOf(c, followers);
  await waitHealthy(c, followers);
  t.comment(`leader n${leader} killed; n${newLeader} leads ${Date.now() - killedAt} ms later`);
  // Watched for longer than a TTL plus a report period after the election: a new leader that did not give every entry
  // a full TTL, or lost the followers' reports or the relayed keep-alives, would expire instances in this window.
  const watchUntil = Date.now() + connectionTtlMs + 2 * reportMs + 2000;
  while (Date.now() < watchUntil) await sleep(250);
  const wanted = new Set(all);
  const falseLeaves = watcher.ops.slice(seenBefore).filter((o) => o.op !== 'PUT' && wanted.has(o.key));
  t.same(falseLeaves.slice(0, 10), [], `no instance left across the failover (${watcher.ops.length - seenBefore} watcher ops after the kill, ${falseLeaves.length} deletes)`);
  t.same(all.filter((k) => !watcher.live.has(k)), [], `all ${instances} instances are still live`);
  t.comment(`keep-alives refused or timed out during the failover (retried every 2 s): ${keepAliveFailures}`);
  stopping = true;
  await keeper;
  for (const g of groups) await g.stop();
  for (const lease of leases) await serviceApi(leaseConn, 'DEREGISTER', { lease }).catch(() => undefined);
  await waitFor('every instance gone after a clean stop', () => all.every((k) => !watcher.live.has(k)), HEALTHY_MS);
  watcher.stop();
  // The killed leader comes back for the next tests.
  spawnNode(c, leader);
  await waitHealthy(c, [0, 1, 2]);
});

/** One instance on node `holder`, watched from the leader; resolves once the watcher sees it. */
async function oneInstance(c: Cluster, holder: number, name: string): Promise<{ key: string; watcher: FollowedKeys }> {
  const leader = await leaderOf(c, [0, 1, 2]);
  const watcher = await watchServices(await client(c, leader));
  const g = await startInstances(c, holder, name, 1, 1);
  const key = g.keys[0]!;
  await waitFor(`${key} seen`, () => watcher.live.has(key), HEALTHY_MS);
  return { key, watcher };
}

const leaveOf = (w: FollowedKeys, key: string, after: number): number | undefined => w.ops.find((o) => o.key === key && o.op !== 'PUT' && o.at >= after)?.at;

t.test('kill -9 of the node holding an instance\'s connection: it leaves after the TTL, not before', async (t) => {
  const c = cluster!;
  const leader = await leaderOf(c, [0, 1, 2]);
  const holder = [0, 1, 2].find((i) => i !== leader)!;
  const { key, watcher } = await oneInstance(c, holder, 'killed');
  const killedAt = Date.now();
  await kill9(c, holder);
  await waitFor(`${key} leaves`, () => leaveOf(watcher, key, killedAt) !== undefined, connectionTtlMs + 20_000);
  const after = leaveOf(watcher, key, killedAt)! - killedAt;
  // The leader renewed it at the holder's last report, at most one report period before the kill.
  t.ok(after >= connectionTtlMs - reportMs, `left ${after} ms after the kill: not before the TTL (${connectionTtlMs} ms) less one report period (${reportMs} ms)`);
  watcher.stop();
  spawnNode(c, holder);
  await waitHealthy(c, [0, 1, 2]);
});

t.test('SIGSTOP of the node holding an instance beyond the TTL: it leaves, and returns after SIGCONT', async (t) => {
  const c = cluster!;
  const leader = await leaderOf(c, [0, 1, 2]);
  const holder = [0, 1, 2].find((i) => i !== leader)!;
  const { key, watcher } = await oneInstance(c, holder, 'stopped');
  const pid = c.nodes[holder]!.child.pid!;
  const stoppedAt = Date.now();
  process.kill(pid, 'SIGSTOP');
  let continued = false;
  try {
    await waitFor(`${key} leaves while its node is stopped`, () => leaveOf(watcher, key, stoppedAt) !== undefined, connectionTtlMs + 20_000);
    const after = leaveOf(watcher, key, stoppedAt)! - stoppedAt;
    t.ok(after >= connectionTtlMs - reportMs, `left ${after} ms after SIGSTOP: not before the TTL less one report period`);
  } finally {
    process.kill(pid, 'SIGCONT');
    continued = true;
  }
  const contAt = Date.now();
  await waitFor(`${key} returns after SIGCONT`, () => watcher.live.has(key), HEALTHY_MS);
  t.ok(continued && watcher.live.has(key), `${key} is live again ${Date.now() - contAt} ms after SIGCONT`);
  await waitHealthy(c, [0, 1, 2]);
  watcher.stop();
});
