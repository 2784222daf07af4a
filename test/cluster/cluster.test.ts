// Three cluster nodes in one process over real mutual-TLS routes on loopback (certificates from
// src/certs): bootstrap in every start order for both --routes styles, the lone node's no-quorum
// reason, writes through any node, leader loss, restart from the data dir, rejoin by snapshot.
// A failing trial is reproducible from the printed line: CLUSTER_SEED=<seed>.
import t from 'tap';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRng } from '../../raft/index.js';
import { issueCertificate, type PemPair } from '../../src/certs/index.js';
import { NodeError, NodeErrorCode, startCluster, startNode, type ClusterNode, type NodeOptions } from '../../src/node/index.js';
import { makePki } from '../support/certs.js';
import { closeHandedListener, heldListener, trioNodeOptions } from '../support/cluster.js';
import { holdPorts, releaseUnused, type HeldPort } from '../support/ports.js';
import type { KvResult } from '../../store/index.js';
import { MessageType, message, type Message } from '../../raft/index.js';
import { decodeFrameBody, encodeFrameBody } from '../../transport/index.js';
import { decodeEnvelope, decodeNodeFrame, encodeEnvelope, encodeHello, encodeMessage, encodeStatusReply, encodeStatusRequest } from '../../src/node/wire.js';
import { nodeHttpEndpoints } from '../../src/node/serve.js';
import { AppliedSessions, decodeNodeSnapshot, encodeNodeSnapshot, sessionWindow, SnapshotTurns, writeNodeSnapshot } from '../../src/node/sessions.js';
import { encodeKvCommand, KvStateMachine } from '../../store/index.js';
import { appendSlots, learnAddresses, readClusterFile, tablesAgree, type ClusterFile } from '../../src/node/bootstrap.js';
import { KvPrincipalSource } from '../../src/control/principal_source.js';
import { controlBuckets, encodeValue, schemaVersion, validateUser, type UserValue } from '../../src/control/buckets.js';
import { createKeyPair } from '../../src/auth/index.js';
import { freePort } from '../support/free_port.js';
import { pause, waitFor } from '../support/wait.js';

const seed = Number(process.env.CLUSTER_SEED ?? Date.now() % 1_000_000);
t.comment(`CLUSTER_SEED=${seed} (rerun with this variable to replay the start orders and delays)`);
const rng = seededRng(seed);

const root = mkdtempSync(join(tmpdir(), 'membershipd-cluster-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const running = new Set<ClusterNode>();
t.teardown(async () => {
  await Promise.all([...running].map((n) => n.stop()));
});

let ca: PemPair;
const leaves: PemPair[] = [];


type Style = 'all' | 'others';

interface Trio {
  readonly dir: string;
  readonly ports: number[];
  readonly held: HeldPort[];
  readonly style: Style;
  readonly nodes: (ClusterNode | undefined)[];
  readonly extra: Partial<NodeOptions>;
}

function options(trio: Trio, i: number): NodeOptions {
  return trioNodeOptions(trio, i, { ca, leaves }, { clusterName: 'test-cluster', requestTimeoutMs: 5000 });
}

const heldPorts: HeldPort[] = [];
t.teardown(() => releaseUnused(heldPorts));

async function newTrio(name: string, style: Style, extra: Partial<NodeOptions> = {}): Promise<Trio> {
  const held = await holdPorts(3);
  heldPorts.push(...held);
  return { dir: join(root, name), ports: held.map((h) => h.port), held, style, nodes: [undefined, undefined, undefined], extra };
}

/** Starts node i; its first start takes over the route socket held since newTrio (bind, don't probe). */
async function startWith(trio: Trio, i: number, extra: Partial<NodeOptions> = {}): Promise<ClusterNode> {
  const handed = heldListener(trio, i);
  try {
    return await startNode({ ...options(trio, i), ...handed, ...extra });
  } catch (err) {
    closeHandedListener(handed);
    throw err;
  }
}

async function start(trio: Trio, i: number): Promise<ClusterNode> {
  const n = await startWith(trio, i);
  trio.nodes[i] = n;
  running.add(n);
  return n;
}

async function stop(trio: Trio, i: number): Promise<void> {
  const n = trio.nodes[i]!;
  await n.stop();
  running.delete(n);
  trio.nodes[i] = undefined;
}

/** Polls (bounded) until every given node reports ok; returns the elapsed ms, or throws with reasons. */
async function waitHealthy(nodes: readonly ClusterNode[], boundMs = 15_000): Promise<number> {
  const t0 = Date.now();
  await waitFor(() => nodes.every((n) => n.status.health().status === 'ok'), {
    what: () => `every node healthy: ${JSON.stringify(nodes.map((n) => [n.serverName, n.status.health()]))}`, timeoutMs: boundMs,
  });
  return Date.now() - t0;
}

function leaderOf(nodes: readonly (ClusterNode | undefined)[]): number {
  return nodes.findIndex((n) => n !== undefined && n.status.raftz().state === 'leader');
}

/** A write retried on retryable errors (elections), as a client would; bounded. */
async function write(n: ClusterNode, key: string, value: number): Promise<KvResult> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await n.kv.propose({ op: 'put', bucket: 'b', key, value: Uint8Array.of(value), ts: 1 });
    } catch (e) {
      if (!(e instanceof NodeError) || !e.retryable || attempt >= 3) throw e;
    }
  }
}

const permutations = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

t.before(async () => {
  const pki = await makePki('cluster-test-ca', ['node-0', 'node-1', 'node-2']);
  ca = pki.ca;
  leaves.push(...pki.leaves);
});

t.test('bootstrap in every start order, both --routes styles; a lone node says why', async (t) => {
  const figures: number[] = [];
  for (let trial = 0; trial < permutations.length; trial++) {
    const order = permutations[trial]!;
    const style: Style = trial % 2 === 0 ? 'all' : 'others';
    const delays = order.map(() => rng.int(300));
    t.comment(`trial ${trial}: style=${style} order=${order.join(',')} delays=${delays.join(',')}ms (CLUSTER_SEED=${seed})`);
    const trio = await newTrio(`order-${trial}`, style);
    const first = await start(trio, order[0]!);
    if (style === 'all') {
      // Its own --routes entry is recognised up front and never dialed (no handshake with itself).
      const rz = first.status.routez() as { listen: { port: number }; routes: { route?: string }[] };
      t.same(rz.routes.map((r) => r.route?.endsWith(`:${rz.listen.port}`)), [false, false], `${first.serverName} dials the two others only`);
    }
    if (trial < 2) {
      // Longer than two maximal election timeouts (2 * 20 ticks * 50 ms): a lone node must not elect
      // itself. (In the others-only style it cannot even start Raft before meeting a peer.)
      if (style === 'all') await pause(2200, 'two maximal election timeouts alone: the absence of an election is the point');
      const h = first.status.health();
      t.equal(h.status, 'unavailable', `lone node (${style}) is unavailable`);
      t.match(h.status === 'unavailable' ? h.reason : '', /^no quorum: 1 of 3 voters reachable/, `lone node (${style}) reports the no-quorum reason`);
      t.not(first.status.raftz().state, 'leader', 'lone node never elects itself');
    }
    await pause(delays[0]!, 'the seeded start order and spacing under test');
    const second = await start(trio, order[1]!);
    const t2 = Date.now();
    await waitHealthy([first, second]);
    figures.push(Date.now() - t2);
    await pause(delays[1]!, 'the seeded start order and spacing under test');
    await start(trio, order[2]!);
    await waitHealthy(trio.nodes as ClusterNode[]);
    const ids = trio.nodes.map((n) => n!.id).sort();
    t.same(ids, [1, 2, 3], 'every node derived a distinct slot');
    const r = await trio.nodes[order[2]!]!.kv.propose({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 });
    t.ok(r.ok, 'a write through the last node started commits');
    await Promise.all([0, 1, 2].map((i) => stop(trio, i)));
  }
  figures.sort((a, b) => a - b);
  t.comment(`time from the second node's start to a healthy pair: median ${figures[figures.length >> 1]} ms, max ${figures[figures.length - 1]} ms (tick 50 ms, loaded machine)`);
});

t.test('writes through any node, leader loss, restart from the data dir, rejoin by snapshot', async (t) => {
  const trio = await newTrio('lifecycle', 'others', { snapshotEntries: 20 });
  await Promise.all([0, 1, 2].map((i) => start(trio, i)));
  await waitHealthy(trio.nodes as ClusterNode[]);
  const nodes = trio.nodes as ClusterNode[];
  const leader = leaderOf(nodes);
  t.ok(leader >= 0, 'a leader exists');
  const follower = (leader + 1) % 3;
  const created = await nodes[follower]!.kv.propose({ op: 'bucket.create', bucket: 'b', config: { history: 1 }, ts: 1 });
  t.match(created, { ok: true, kind: 'bucket.create', created: true }, 'a follower forwards a write to the leader and gets its result');

  const acked = new Map<string, number>();
  const lat: number[] = [];
  for (let i = 0; i < 30; i++) {
    const t0 = performance.now();
    const r = await write(nodes[i % 3]!, `k${i}`, i);
    lat.push(performance.now() - t0);
    if (r.ok) acked.set(`k${i}`, i);
  }
  lat.sort((a, b) => a - b);
  t.comment(`sequential write latency through any node: p50 ${lat[15]!.toFixed(1)} ms, max ${lat[29]!.toFixed(1)} ms (fsync on, loaded machine)`);
  t.equal(acked.size, 30, 'every write was applied');
  for (const n of nodes) {
    const sm = await n.kv.read();
    t.equal(sm.keys('b').length, 30, `${n.serverName} has every write after a linearizable read`);
  }
  // Linearizable reads on a follower gather behind one ReadIndex request per round trip to the leader.
  const messagesOut = (n: ClusterNode): number => Number(/^membershipd_raft_messages_out_total (\d+)$/m.exec(n.status.metricsText())?.[1] ?? NaN);
  const f = nodes[follower]!;
  const before = messagesOut(f);
  const burst = await Promise.allSettled(Array.from({ length: 2000 }, () => f.kv.read()));
  t.equal(burst.filter((r) => r.status === 'fulfilled').length, 2000, '2000 concurrent linearizable reads on a follower are all served');
  const sent = messagesOut(f) - before;
  t.ok(sent < 200, `they cost the follower ${sent} Raft messages (heartbeat answers included), not one ReadIndex each`);
  // Every read that starts after a write was acknowledged sees it, wherever the write went through.
  const seenBad: string[] = [];
  const reads: Promise<void>[] = [];
  for (let i = 0; i < 20; i++) {
    // A new value for an existing key (the key count is checked later): the read must see this one.
    const r = await write(nodes[i % 3]!, `k${i}`, 100 + i);
    t.ok(r.ok, `k${i} = ${100 + i} acknowledged`);
    acked.set(`k${i}`, 100 + i);
    for (let j = 0; j < 5; j++) {
      reads.push(f.kv.read().then((sm) => { if (sm.get('b', `k${i}`)?.value[0] !== 100 + i) seenBad.push(`k${i}`); }));
    }
  }
  await Promise.all(reads);
  t.same(seenBad, [], '100 reads on the follower, each started after a write was acknowledged, all saw it');
  // The wait is bounded: past 10,000 waiting reads a node refuses at once (retry, or read stale).
  const flood = await Promise.allSettled(Array.from({ length: 10_001 }, () => f.kv.read()));
  const refused = flood.flatMap((r) => (r.status === 'rejected' ? [String((r.reason as Error).message)] : []));
  t.equal(refused.length, 1, 'the 10,001st concurrent read is refused');
  t.match(refused[0], /10000 linearizable reads are already waiting on .*retry later, or read stale/);

  const conflict = await nodes[follower]!.kv.propose({ op: 'create', bucket: 'b', key: 'k1', value: Uint8Array.of(9), ts: 1 });
  t.match(conflict, { ok: false }, 'a create of an existing key is refused with the state machine\'s result');

  // Stop the leader: the other two elect a new one and every acknowledged write survives.
  const oldLeader = nodes[leader]!.serverName;
  const oldLeaderId = nodes[leader]!.id;
  await stop(trio, leader);
  const rest = trio.nodes.filter((n): n is ClusterNode => n !== undefined);
  await waitHealthy(rest);
  const newLeader = leaderOf(trio.nodes);
  t.ok(newLeader >= 0 && trio.nodes[newLeader]!.serverName !== oldLeader, 'a new leader was elected');
  for (let i = 30; i < 60; i++) {
    const r = await write(rest[i % 2]!, `k${i}`, i);
    if (r.ok) acked.set(`k${i}`, i);
  }
  for (const n of rest) {
    const sm = await n.kv.read();
    for (const [k, v] of acked) {
      if (sm.get('b', k)?.value[0] !== v) {
        t.fail(`${n.serverName} lost acknowledged write ${k}`);
        break;
      }
    }
  }
  t.pass('acknowledged writes survive the loss of the leader');

  // The stopped node restarts from its data dir (its slot and log) and catches up; the log was
  // compacted meanwhile (snapshot every 20 entries), so it may need a snapshot.
  const back = await start(trio, leader);
  await waitHealthy(trio.nodes as ClusterNode[]);
  t.equal(back.id, oldLeaderId, 'restarted with its persisted slot');
  const smBack = await back.kv.read();
  t.equal(smBack.keys('b').length, 60, 'the restarted node caught up with every write');
  t.ok(((trio.nodes[newLeader]!.status.raftz() as { snapshotIndex: number }).snapshotIndex) > 0, 'the leader compacted its log');

  // A wiped follower (same identity file, empty data dir) rejoins by snapshot.
  const wiped = trio.nodes.findIndex((n) => n !== undefined && n.status.raftz().state !== 'leader');
  await stop(trio, wiped);
  rmSync(join(trio.dir, `node-${wiped}`), { recursive: true, force: true });
  const writer = trio.nodes[(wiped + 1) % 3]!;
  // Users written while it is away, then enough writes that the leader compacts them into a snapshot.
  await writer.kv.propose({ op: 'bucket.create', bucket: controlBuckets.users, config: {}, ts: 1 });
  const userNames = ['ann', 'ben', 'cat'];
  for (const name of userNames) {
    const u: UserValue = { v: schemaVersion, name, nkey: createKeyPair('user').publicKey, roles: [], disabled: false, created: 1, updated: 1, by: 'test' };
    validateUser(u);
    t.match(await writer.kv.propose({ op: 'create', bucket: controlBuckets.users, key: name, value: encodeValue(u), ts: 1 }), { ok: true });
  }
  for (let i = 60; i < 90; i++) await write(writer, `k${i}`, i);
  const fresh = await start(trio, wiped);
  // What `serve --store kv` attaches at start, while the node is still empty: it follows the change feed,
  // which carries none of the writes a snapshot install absorbs (KvBackend.onReset makes it re-read).
  const source = new KvPrincipalSource();
  source.attach(fresh.kv.backend());
  const changed: string[] = [];
  source.onChange((c) => changed.push(...(c.users === 'all' ? ['all'] : c.users)));
  await waitHealthy(trio.nodes as ClusterNode[]);
  const smFresh = await fresh.kv.read();
  t.equal(smFresh.keys('b').length, 90, 'the wiped node rejoined with every write');
  t.ok(fresh.metrics.snapshotsInstalled > 0, 'it was sent a snapshot (the leader\'s log was compacted)');
  t.same(userNames.map((n) => source.userByName(n)?.name), userNames, 'the principal source knows the users the snapshot brought');
  t.same([...changed].sort(), userNames, 'and announced them as changed (so connections are re-checked)');
  source.detach();
  t.match(fresh.status.metricsText(), /membershipd_raft_applied_index \d+/, 'metrics are exported');

  for (let i = 0; i < 3; i++) await stop(trio, i);
  // Stopped: requests fail at once with a typed, non-retryable error.
  await t.rejects(fresh.kv.propose({ op: 'put', bucket: 'b', key: 'x', value: Uint8Array.of(1), ts: 1 }), { code: NodeErrorCode.stopped });
});

t.test('--kv-replicas: learners beyond R, R > N refused, no leader → typed retryable error', async (t) => {
  const bad = await newTrio('replicas-bad', 'all', { kvReplicas: 4 });
  await t.rejects(startNode(options(bad, 0)), { code: NodeErrorCode.config, message: /--kv-replicas 4 is greater than the cluster size 3/ });

  const trio = await newTrio('replicas-2', 'all', { kvReplicas: 2, requestTimeoutMs: 600 });
  // Slot 3 (the highest address) is the learner; start only it: it has no voter to talk to.
  const sorted = [...trio.ports].map((p, i) => [`127.0.0.1:${p}`, i] as const).sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const learnerIdx = sorted[2]![1];
  const lone = await start(trio, sorted[0]![1]);
  const err = await lone.kv.propose({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }).then(() => null, (e: unknown) => e);
  t.ok(err instanceof NodeError && err.code === NodeErrorCode.noLeader && err.retryable, 'a write without a leader fails with a retryable no-leader error');
  t.match((err as Error).message, /no quorum: 1 of 2 voters reachable/, 'the error carries the health reason');
  await start(trio, sorted[1]![1]);
  await start(trio, learnerIdx);
  await waitHealthy(trio.nodes as ClusterNode[]);
  const leader = trio.nodes[leaderOf(trio.nodes)]!;
  await waitFor(() => (leader.status.raftz() as { conf: { learners: number[] } }).conf.learners.includes(3), { what: 'slot 3 a learner in the leader\'s configuration', timeoutMs: 10_000 });
  t.same((leader.status.raftz() as { conf: unknown }).conf, { voters: [1, 2], learners: [3] }, 'the node beyond R was added as a learner');
  await trio.nodes[learnerIdx]!.kv.propose({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 });
  const sm = await trio.nodes[learnerIdx]!.kv.read();
  t.ok(sm.bucketInfo('b'), 'a learner writes (forwarded) and reads linearizably');
  for (let i = 0; i < 3; i++) await stop(trio, i);
});

t.test('--kv-replicas 1 → 3 on the running cluster: writes keep committing, learners promoted once caught up, kept across a restart', async (t) => {
  const trio = await newTrio('replicas-live', 'all', { kvReplicas: 1 });
  for (let i = 0; i < 3; i++) await start(trio, i);
  const nodes = trio.nodes as ClusterNode[];
  await waitHealthy(nodes);
  const conf = (): { voters: readonly number[]; learners: readonly number[] } => nodes[0]!.membership.current()!;
  await waitFor(() => conf().learners.length >= 2, { what: () => `two learners (conf ${JSON.stringify(conf())})`, timeoutMs: 10_000 });
  t.same(conf(), { voters: [1], learners: [2, 3] }, 'R = 1: one voter, two learners');
  t.match(await nodes[2]!.kv.propose({ op: 'bucket.create', bucket: 'live', config: {}, ts: 1 }), { ok: true });
  // Writes through a learner while R changes: every one is acknowledged (no downtime).
  let acked = 0;
  let failed = 0;
  let writing = true;
  const writer = (async () => {
    for (let k = 0; k < 5000 && writing; k++) {
      const r = await nodes[2]!.kv.propose({ op: 'put', bucket: 'live', key: `k${k}`, value: Uint8Array.of(k & 0xff), ts: 1 }).catch(() => null);
      if (r?.ok) acked++;
      else failed++;
    }
  })();
  for (const n of nodes) n.slotTable.setKvReplicas(3);
  try {
    await waitFor(() => conf().voters.length >= 3, { what: () => `three voters (conf ${JSON.stringify(conf())})`, timeoutMs: 30_000 });
  } finally {
    writing = false;
    await writer;
  }
  t.same(conf().voters, [1, 2, 3], 'both learners promoted to voters');
  t.ok(acked > 0, `${acked} writes acknowledged during the change`);
  t.equal(failed, 0, 'no write failed during the change');
  t.throws(() => nodes[0]!.slotTable.setKvReplicas(4), { code: NodeErrorCode.config }, 'R > N refused');
  // The new R is persisted: a restart with the old flag keeps 3 voters (the persisted value wins, with a warning).
  await stop(trio, 1);
  const again = await start(trio, 1);
  t.equal(again.kvReplicas, 3);
  await waitHealthy(nodes);
  for (let i = 0; i < 3; i++) await stop(trio, i);
});

t.test('a node whose security posture differs is refused at the route handshake; its /healthz says why', async (t) => {
  const trio = await newTrio('posture', 'all', { postureDigest: 'bus-auth=enforce;client-tls=false;store=kv' });
  await start(trio, 0);
  await start(trio, 1);
  const odd = await startWith(trio, 2, { postureDigest: 'bus-auth=off;client-tls=false;store=kv' });
  trio.nodes[2] = odd;
  running.add(odd);
  await waitHealthy([trio.nodes[0]!, trio.nodes[1]!]);
  let body: { status: string; reason?: string } = { status: '' };
  await waitFor(async () => {
    const r = await nodeHttpEndpoints(odd)['/healthz']!();
    body = (r as { body: typeof body }).body;
    return /posture mismatch/.test(body.reason ?? '');
  }, { what: () => `a posture mismatch in the odd node's /healthz (last: ${JSON.stringify(body)})`, timeoutMs: 10_000 });
  t.equal(body.status, 'unavailable');
  t.match(body.reason, /security posture mismatch with "node-\d": digest bus-auth=enforce;client-tls=false;store=kv vs bus-auth=off;client-tls=false;store=kv/);
  for (let i = 0; i < 3; i++) await stop(trio, i);
});

t.test('startCluster, the KvBackend seam, leadership transfer, a node whose routes disagree', async (t) => {
  const c = await startCluster({ size: 3, tickMs: 50, dir: join(root, 'library') });
  for (const n of c.nodes) running.add(n);
  const [a, b] = [c.nodes[0]!.kv.backend(), c.nodes[2]!.kv.backend()];
  t.match(await a.propose({ op: 'bucket.create', bucket: 'w', config: {}, ts: 1 }), { ok: true });
  const seen: string[] = [];
  const unwatch = b.watch('w', b.reader.bucketInfo('w')?.seq ?? 0, (e) => seen.push(e.key));
  const put = await a.propose({ op: 'put', bucket: 'w', key: 'x', value: Uint8Array.of(1), ts: 1 });
  await b.readBarrier();
  unwatch();
  t.same(seen, ['x'], 'a watcher on another node sees the write after a read barrier');
  t.equal(b.reader.get('w', 'x')?.revision, put.ok && put.kind === 'entry' ? put.entry.revision : -1, 'same revision (the bucket sequence, assigned at apply) on every node');

  const before = c.leader()!;
  before.membership.transferLeadership();
  const after = await waitFor(() => { const l = c.leader(); return l !== before ? l : undefined; }, { what: `a leader other than ${before.serverName}`, timeoutMs: 10_000 });
  t.ok(after && after !== before, `leadership moved from ${before.serverName} to ${after?.serverName}`);

  // A fourth node whose --routes name an extra address derives N = 5: every peer refuses it, and its
  // health says why.
  const ports = c.nodes.map((n) => n.routeAddress().port);
  const leaf = await issueCertificate(c.ca, { commonName: 'stray' });
  const [strayPort] = await holdPorts(1);
  heldPorts.push(strayPort!);
  const stray = await startNode({
    serverName: 'stray', clusterName: 'local', dataDir: join(root, 'stray'), bind: '127.0.0.1', clusterPort: strayPort!.port, clusterListener: strayPort!.server,
    // The fifth address is one nobody listens on (a probed free port, on purpose): only the count matters.
    routes: [...ports, await freePort()].map((p) => `127.0.0.1:${p}`), tls: { cert: leaf.cert, key: leaf.key, ca: c.ca.cert },
    clusterUser: 'route', clusterPassword: 'local-cluster', tickMs: 50,
  });
  strayPort!.taken = true;
  running.add(stray);
  const healthReason = (n: ClusterNode): string => { const h = n.status.health(); return h.status === 'unavailable' ? h.reason : 'ok'; };
  const reason = await waitFor(() => /cluster size mismatch/.test(healthReason(stray)) && healthReason(stray), {
    what: () => `a cluster size mismatch in the stray node's health (now: ${healthReason(stray)})`, timeoutMs: 10_000,
  });
  t.match(reason, /^no quorum: 1 of 5 voters reachable .*cluster size mismatch/, 'the stray node is refused and reports the mismatch');
  await c.waitHealthy();
  t.pass('the cluster stays healthy');
  await stray.stop();

  // An impostor: node-2's name and port with another identity key (fresh identity file and data dir).
  // Peers have bound node-2's slot to its key and refuse the impostor in the handshake.
  const real = c.nodes[2]!;
  const port = real.routeAddress().port;
  await real.stop();
  const leaf2 = await issueCertificate(c.ca, { commonName: 'node-2' });
  const impostor = await startNode({
    serverName: 'node-2', clusterName: 'local', dataDir: join(root, 'impostor'), bind: '127.0.0.1', clusterPort: port,
    routes: ports.map((p) => `127.0.0.1:${p}`), tls: { cert: leaf2.cert, key: leaf2.key, ca: c.ca.cert },
    clusterUser: 'route', clusterPassword: 'local-cluster', tickMs: 50,
  });
  running.add(impostor);
  const why = await waitFor(() => /is bound to slot/.test(healthReason(impostor)) && healthReason(impostor), {
    what: () => `a bound-slot refusal in the impostor's health (now: ${healthReason(impostor)})`, timeoutMs: 10_000,
  });
  t.match(why, /"node-2" is bound to slot \d with identity key/, 'a different identity for a bound slot is refused, and the refused node says why');
  await impostor.stop();
  await c.stop();
  for (const n of [...c.nodes, stray, impostor]) running.delete(n);
});

t.test('a voter down past the grace period is replaced by a caught-up learner', async (t) => {
  const c = await startCluster({ size: 4, kvReplicas: 3, tickMs: 50, dir: join(root, 'replace'), node: { voterGraceMs: 800 } });
  for (const n of c.nodes) running.add(n);
  const confOf = (): { voters: number[]; learners: number[] } => (c.leader()?.status.raftz() as { conf: { voters: number[]; learners: number[] } } | undefined)?.conf ?? { voters: [], learners: [] };
  await waitFor(() => confOf().learners.length > 0, { what: () => `a learner (conf ${JSON.stringify(confOf())})`, timeoutMs: 10_000 });
  t.same(confOf(), { voters: [1, 2, 3], learners: [4] }, 'slot 4 joined as a learner');
  const learner = c.nodes.find((n) => n.id === 4)!;
  t.match(await learner.kv.propose({ op: 'bucket.create', bucket: 'r', config: {}, ts: 1 }), { ok: true }, 'a learner forwards writes');
  const victim = c.nodes.find((n) => n.id !== 4 && n.status.raftz().state !== 'leader')!;
  const victimId = victim.id!;
  await victim.stop();
  running.delete(victim);
  const conf = await waitFor(() => { const c2 = confOf(); return c2.voters.includes(4) && !c2.voters.includes(victimId) ? c2 : undefined; }, {
    what: () => `slot 4 a voter and slot ${victimId} removed (conf ${JSON.stringify(confOf())})`, timeoutMs: 10_000,
  });
  t.ok(conf.voters.includes(4) && !conf.voters.includes(victimId) && conf.voters.length === 3, `learner promoted, dead voter ${victimId} removed: ${JSON.stringify(conf)}`);
  const rest = c.nodes.filter((n) => n !== victim);
  for (const n of rest) await n.kv.propose({ op: 'put', bucket: 'r', key: n.serverName, value: Uint8Array.of(1), ts: 1 });
  await Promise.all(rest.map((n) => n.stop()));
  for (const n of rest) running.delete(n);
});

t.test('a new address joins a running cluster: the table grows on every node, the joiner learns its slot, catches up by snapshot, is promoted; restarts keep slots', async (t) => {
  const trio = await newTrio('grow', 'others', { snapshotEntries: 20 });
  await Promise.all([0, 1, 2].map((i) => start(trio, i)));
  await waitHealthy(trio.nodes as ClusterNode[]);
  const members = trio.nodes as ClusterNode[];
  await members[0]!.kv.propose({ op: 'bucket.create', bucket: 'b', config: { history: 1 }, ts: 1 });
  for (let i = 0; i < 40; i++) await write(members[i % 3]!, `k${i}`, i);

  // The joining node (--initial-cluster-state existing) dials the members; before `cluster add` it waits and says why.
  const leaf = await issueCertificate(ca, { commonName: 'node-3' });
  const [joinHeld] = await holdPorts(1);
  heldPorts.push(joinHeld!);
  const joinPort = joinHeld!.port;
  const address = `127.0.0.1:${joinPort}`;
  const joinOptions: NodeOptions = {
    ...options(trio, 0), serverName: 'node-3', dataDir: join(trio.dir, 'node-3'), identityFile: join(trio.dir, 'id-3.nk'),
    clusterPort: joinPort, routes: trio.ports.map((p) => `127.0.0.1:${p}`), tls: { cert: leaf.cert, key: leaf.key, ca: ca.cert }, join: true,
  };
  let joiner = await startNode({ ...joinOptions, clusterListener: joinHeld!.server });
  joinHeld!.taken = true;
  running.add(joiner);
  const reasonOf = (n: ClusterNode): string => { const h = n.status.health(); return h.status === 'ok' ? 'ok' : h.reason; };
  await waitFor(() => /has no slot for node-3/.test(reasonOf(joiner)), { what: () => `the joiner's "no slot" reason (now: ${reasonOf(joiner)})`, timeoutMs: 10_000 });
  t.match(reasonOf(joiner), /joining cluster "test-cluster": the slot table of peer "node-\d" has no slot for node-3; run "membershipd cluster add node-3 <host>:\d+"/, 'a joiner not added yet says what to run');
  t.equal(joiner.id, undefined, 'it has no slot yet');

  // One member is down during the add (it applies it later, from the log).
  const lag = members.findIndex((n) => n.status.raftz().state !== 'leader');
  await stop(trio, lag);
  const up = (): ClusterNode[] => trio.nodes.filter((n): n is ClusterNode => n !== undefined);
  // What the control plane does when every node applies the replicated added-slots key.
  for (const n of up()) n.slotTable.setAddedSlots([{ name: 'node-3', address }]);
  for (const n of up()) t.same(n.slots().map((s) => s.id), [1, 2, 3, 4], `${n.serverName} knows slot 4`);
  await waitFor(() => joiner.id === 4 && joiner.status.health().status === 'ok', { what: () => `the joiner in slot 4 and healthy (id ${joiner.id}, ${reasonOf(joiner)})`, timeoutMs: 15_000 });
  t.equal(joiner.id, 4, 'the joiner learned slot 4 from its peers');
  t.equal(reasonOf(joiner), 'ok', 'the joiner is healthy');
  t.equal((await joiner.kv.read()).keys('b').length, 40, 'it caught up with every write');
  t.ok(joiner.metrics.snapshotsInstalled > 0, 'by snapshot (the leader\'s log was compacted)');
  const confOf = (): { voters: number[]; learners: number[] } => (members[leaderOf(members)]?.status.raftz() as { conf: { voters: number[]; learners: number[] } } | undefined)?.conf ?? { voters: [], learners: [] };
  t.same(confOf(), { voters: [1, 2, 3], learners: [4] }, 'it is a learner: R = 3 voters already');
  t.match(readClusterFile(joinOptions.dataDir), { id: 4, initial: 3, joined: true, names: { 4: 'node-3' } }, 'its cluster.json holds the slot');

  // The member that missed the add comes back with three slots: the joiner's hello (slot 4) waits until the
  // member applies the add, then binds.
  const lagger = await start(trio, lag);
  await waitHealthy([...up(), joiner]);
  t.equal(lagger.slots().length, 3, 'the returning member\'s table has not grown yet (no control plane here to apply the key)');
  lagger.slotTable.setAddedSlots([{ name: 'node-3', address }]);
  await waitFor(() => lagger.slots()[3]?.identity !== undefined, { what: 'the returning member binding slot 4', timeoutMs: 10_000 });
  t.match(lagger.slots()[3], { id: 4, name: 'node-3', address }, 'it binds slot 4 to the joiner once its table has it');
  t.ok(lagger.slots()[3]?.identity, 'with the identity key the joiner proved');
  for (const n of members) t.equal(readClusterFile(join(trio.dir, n.serverName))?.addresses.length, 4, `${n.serverName} persisted 4 slots`);

  // An operator removes a member: 2 voters < R, so the caught-up joiner is promoted.
  const victim = members.findIndex((n) => n.status.raftz().state !== 'leader');
  const victimId = members[victim]!.id!;
  for (const n of [...members, joiner]) n.membership.setRemovedSlots([victimId]);
  await waitFor(() => confOf().voters.includes(4) && !confOf().voters.includes(victimId), {
    what: () => `the joiner a voter and slot ${victimId} removed (conf ${JSON.stringify(confOf())})`, timeoutMs: 15_000,
  });
  t.same(confOf(), { voters: [1, 2, 3, 4].filter((id) => id !== victimId), learners: [] }, 'the joiner was promoted to voter, the removed member left');
  await stop(trio, victim);

  // Restarts keep their slots: the joiner (from cluster.json, no bootstrap), and a member (which now dials the joiner too).
  await joiner.stop();
  running.delete(joiner);
  joiner = await startNode(joinOptions);
  running.add(joiner);
  const rest = trio.nodes.filter((n): n is ClusterNode => n !== undefined);
  await waitHealthy([...rest, joiner]);
  t.equal(joiner.id, 4, 'the restarted joiner kept slot 4');
  const member = trio.nodes.findIndex((n) => n !== undefined && n.status.raftz().state !== 'leader');
  await stop(trio, member);
  const back = await start(trio, member);
  back.membership.setRemovedSlots([victimId]);
  await waitHealthy([...trio.nodes.filter((n): n is ClusterNode => n !== undefined), joiner]);
  t.equal(back.slots().length, 4, 'the restarted member kept the grown table');
  t.ok(back.status.routez().routes && (back.status.routez().routes as { route?: string }[]).some((r) => r.route === `nats-route://${address}`), 'and dials the added node');
  t.match(await write(joiner, 'from-joiner', 7), { ok: true }, 'a write through the added node commits');
  for (const n of trio.nodes.filter((x): x is ClusterNode => x !== undefined)) t.equal((await n.kv.read()).get('b', 'from-joiner')?.value[0], 7, `${n.serverName} has it`);
  await joiner.stop();
  running.delete(joiner);
  for (let i = 0; i < 3; i++) if (trio.nodes[i] !== undefined) await stop(trio, i);
});

t.test('wire, envelope, sessions, slot derivation: seeded properties and malformed input', async (t) => {
  const runs = { seed, numRuns: 300 };
  const bytes = fc.uint8Array({ maxLength: 24 });
  const u = fc.nat({ max: 2 ** 40 });
  const arbMessage: fc.Arbitrary<Message> = fc.record({
    type: fc.constantFrom(...Object.values(MessageType)), from: u, to: u, term: u, logTerm: u, index: u, commit: u, rejectHint: u,
    reject: fc.boolean(), recovering: fc.boolean(), context: bytes,
    entries: fc.array(fc.record({ term: u, index: u, type: fc.constantFrom(0 as const, 1 as const), data: bytes }), { maxLength: 4 }),
    snapshot: fc.option(fc.record({
      meta: fc.record({ index: u, term: u, conf: fc.record({ voters: fc.array(u, { maxLength: 5 }), learners: fc.array(u, { maxLength: 3 }) }) }),
      offset: u, data: bytes, done: fc.boolean(), total: u,
    }), { nil: null }),
  }).map((m) => message(m));
  // Through the real route codec (msgpack), as on the wire.
  const viaWire = (data: unknown): unknown => {
    const f = decodeFrameBody(encodeFrameBody({ kind: 'raft', data }));
    return f.kind === 'raft' ? f.data : undefined;
  };
  // Buffers (decoded) and Uint8Arrays (generated) compare as plain byte lists.
  const plain = (v: unknown): unknown => {
    if (v instanceof Uint8Array) return { bytes: [...v] };
    if (Array.isArray(v)) return v.map(plain);
    if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
    return v;
  };
  fc.assert(fc.property(arbMessage, (m) => {
    const d = decodeNodeFrame(viaWire(encodeMessage(m)));
    return typeof d !== 'string' && d.kind === 'raft' && JSON.stringify(plain(d.message)) === JSON.stringify(plain(m));
  }), runs);
  // `cluster status` frames: request and member report round-trip; a report with any field mistyped is refused.
  const arbReport = fc.record({
    id: u, name: fc.string({ maxLength: 12 }), state: fc.constantFrom('follower', 'leader', 'candidate', 'bootstrapping'), term: u, lead: u,
    commit: u, applied: u, lastIndex: u, health: fc.string({ maxLength: 40 }),
  });
  fc.assert(fc.property(u, arbReport, (reqId, r) => {
    const q = decodeNodeFrame(viaWire(encodeStatusRequest(reqId)));
    const a = decodeNodeFrame(viaWire(encodeStatusReply(reqId, r)));
    return typeof q !== 'string' && q.kind === 'statusRequest' && q.reqId === reqId
      && typeof a !== 'string' && a.kind === 'statusReply' && a.reqId === reqId && JSON.stringify(a.report) === JSON.stringify(r);
  }), runs);
  fc.assert(fc.property(u, arbReport, fc.nat({ max: 8 }), fc.constantFrom(-1, 'x', null, 1.5), (reqId, r, field, bad) => {
    const frame = encodeStatusReply(reqId, r) as [number, number, unknown[]];
    if ((field === 1 || field === 2 || field === 8) && typeof bad === 'string') return true; // a string is valid there
    frame[2][field] = bad;
    return typeof decodeNodeFrame(viaWire(frame)) === 'string';
  }), runs);
  t.equal(decodeNodeFrame([2]), 'malformed status request');
  t.equal(decodeNodeFrame([3, 1, [1]]), 'malformed status reply');
  // Any value at all: a reason string or a well-formed frame, never an exception.
  fc.assert(fc.property(fc.anything({ withTypedArray: true }), (v) => {
    const d = decodeNodeFrame(v);
    return typeof d === 'string' || d.kind === 'raft' || d.kind === 'hello';
  }), runs);
  // Every field of a valid message replaced by a wrong type is refused.
  const good = encodeMessage(message({ type: MessageType.app, from: 1, to: 2, entries: [{ term: 1, index: 1, type: 0, data: Uint8Array.of(1) }] }));
  for (let i = 1; i < good.length; i++) {
    const bad = [...good];
    bad[i] = i === 9 ? 7 : 'x';
    t.type(decodeNodeFrame(viaWire(bad)), 'string', `field ${i} of the wrong type is refused`);
  }
  t.type(decodeNodeFrame(viaWire(good.slice(0, 12))), 'string', 'a truncated message is refused');
  t.type(decodeNodeFrame([1, 1, ['a:1'], null, 'x']), 'string', 'a malformed hello is refused');
  t.match(decodeNodeFrame(viaWire(encodeHello({ id: 2, routes: ['a:1'], addresses: null, voters: 3, initial: 0, names: [], bound: [1, 3] }))), { kind: 'hello', hello: { id: 2, routes: ['a:1'], voters: 3, bound: [1, 3] } });
  t.type(decodeNodeFrame(viaWire([1, 2, ['a:1'], null, 3, 0, [], ['x']])), 'string', 'a hello whose bound slots are not ids is refused');
  // An older node's hello (five fields) still decodes: no appended slots.
  t.match(decodeNodeFrame(viaWire([1, 2, ['a:1'], ['a:1', 'b:1'], 2])), { kind: 'hello', hello: { id: 2, initial: 0, names: [], bound: [] } });
  // A hello with appended slots round-trips; names must match the appended part of the table exactly.
  fc.assert(fc.property(fc.uniqueArray(fc.string({ minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 8 }), fc.nat({ max: 8 }), fc.nat({ max: 9 }),
    (addresses, cut, id) => {
      const initial = Math.min(addresses.length, cut + 1);
      const names = addresses.slice(initial).map((_, k) => `n${k}`);
      const d = decodeNodeFrame(viaWire(encodeHello({ id, routes: [], addresses, voters: 1, initial, names, bound: [] })));
      const bad = decodeNodeFrame(viaWire([1, id, [], addresses, 1, initial, [...names, 'extra']]));
      return typeof d !== 'string' && d.kind === 'hello' && d.hello.initial === initial && d.hello.names.join() === names.join() && typeof bad === 'string';
    }), runs);
  t.type(decodeNodeFrame([1, 1, [], null, 1, 2, []]), 'string', 'appended slots without a table are refused');
  t.type(decodeNodeFrame([1, 1, [], ['a:1'], 1, 0]), 'string', 'a hello of six fields is refused');

  // The slot table only grows: appendSlots appends in order, keeps every existing slot, refuses a contradiction.
  const table = { version: 1 as const, cluster: 'c', server: 's', id: 1, addresses: ['a:1', 'b:1', 'c:1'], voters: 3, bindings: {} };
  const grown = appendSlots(table, [{ name: 'd', address: 'd:1' }, { name: 'e', address: 'e:1' }]);
  t.match(grown, { initial: 3, addresses: ['a:1', 'b:1', 'c:1', 'd:1', 'e:1'], names: { 4: 'd', 5: 'e' } }, 'two slots appended after the bootstrap three');
  t.equal(appendSlots(grown as ClusterFile, [{ name: 'd', address: 'd:1' }]), grown, 'a shorter (older) list changes nothing');
  t.match(appendSlots(grown as ClusterFile, [{ name: 'x', address: 'x:1' }]), /slot 4 is d:1 here but x:1/, 'a contradicting list is refused');
  t.match(appendSlots(table, [{ name: 'x', address: 'b:1' }]), /already slot 2/, 'an address that is already a slot is refused');
  fc.assert(fc.property(fc.uniqueArray(fc.nat({ max: 50 }), { maxLength: 12 }), fc.nat({ max: 12 }), (ports, cut) => {
    const list = ports.map((p) => ({ name: `n${p}`, address: `h:${p + 100}` }));
    const first = appendSlots(table, list.slice(0, cut));
    if (typeof first === 'string') return false;
    const all = appendSlots(first, list);
    return typeof all !== 'string' && all.addresses.join() === [...table.addresses, ...list.map((x) => x.address)].join()
      && tablesAgree(all.addresses, table.addresses) && tablesAgree(first.addresses, all.addresses);
  }), runs);

  fc.assert(fc.property(fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), bytes, (o, b, q, cmd) => {
    const e = decodeEnvelope(encodeEnvelope(o, b, q, cmd));
    return e.origin === o && e.boot === b && e.seq === q && Buffer.from(e.command).equals(Buffer.from(cmd));
  }), runs);
  t.equal(decodeEnvelope(Uint8Array.of(0x81, 0xa2)).origin, 0, 'a bare command (no envelope) has no origin');

  // Two replicas fed the same log (duplicates included) admit exactly the same entries, also when one of
  // them restarts from the other's snapshot of the table half way.
  fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 2 }), fc.integer({ min: 1, max: 40 })), { maxLength: 200 }), (log) => {
    const a = new AppliedSessions();
    let b = new AppliedSessions();
    const seen = new Set<string>();
    return log.every(([o, boot, q], i) => {
      if (i === log.length >> 1) {
        const copy = new AppliedSessions();
        copy.restore(viaWire(b.encode()));
        b = copy;
      }
      const key = `${o}:${boot}:${q}`;
      const fresh = !seen.has(key);
      seen.add(key);
      return a.admit(o, boot, q, i + 1) === fresh && b.admit(o, boot, q, i + 1) === fresh;
    });
  }), runs);

  // Past the window: seqs that left it are refused by the window rule alone, so a snapshot keeps only the window
  // (dropped in slices as the window moves, out-of-order retries included), and a table restored from it admits
  // exactly what the original does.
  const long = new AppliedSessions();
  const top = sessionWindow + 5000;
  for (let q = 1; q <= top - 100; q++) long.admit(1, 1, q, q);
  for (let q = top; q > top - 100; q--) long.admit(1, 1, q, 2 * top - q); // a retried stretch, applied in reverse
  const frozen = long.freeze();
  t.equal(frozen[0]!.seen.length, sessionWindow, 'the frozen table holds the window\'s seqs only');
  t.ok(frozen[0]!.seen.every((q, i) => i === 0 || q > frozen[0]!.seen[i - 1]!), 'ascending, retries included');
  const restored = new AppliedSessions();
  restored.restore(viaWire(long.encode()));
  const probes = [1, top - sessionWindow, top - sessionWindow + 1, top - 50, top, top + 1, top + 2, top + 1];
  t.same(probes.map((q, i) => restored.admit(1, 1, q, 2 * top + i)), probes.map((q, i) => long.admit(1, 1, q, 2 * top + i)), 'the restored table admits what the original does');
  t.same(probes.map((q, i) => long.admit(1, 1, q, 3 * top + i)), probes.map(() => false), 'all of them are duplicates now');

  // Snapshot turns: nodes fed the same applied indexes in batches of any size never have a turn at the same index,
  // and each gets one turn in every cycle of `entries` indexes, whichever batches step over it.
  const stepsArb = fc.array(fc.integer({ min: 0, max: 40 }), { minLength: 1, maxLength: 300 });
  fc.assert(fc.property(fc.integer({ min: 1, max: 7 }), fc.integer({ min: 1, max: 200 }), stepsArb, (slots, entries, steps) => {
    const turns = Array.from({ length: slots }, () => new SnapshotTurns());
    turns.forEach((tu, i) => tu.passed(0, i + 1, slots, entries)); // a node counts from its first look
    const cycle = Math.max(1, Math.floor(entries / slots)) * slots;
    const since = new Array<number>(slots).fill(0);
    let applied = 0;
    return steps.every((step) => {
      applied += step;
      const mine = turns.map((tu, i) => tu.passed(applied, i + 1, slots, entries));
      // With one step at a time (step 1) at most one slot's turn holds; a batch may pass several turns.
      if (step === 1 && slots > 1 && mine.filter(Boolean).length > 1) return false;
      return mine.every((m, i) => {
        since[i] = m ? 0 : since[i]! + step;
        return since[i]! < cycle; // a turn in every cycle of applied indexes
      });
    });
  }), runs);
  const one = new SnapshotTurns();
  t.same([0, 5, 6, 11, 12, 17, 18].map((i) => one.passed(i, 2, 3, 20)), [false, false, true, true, false, false, false],
    'slot 2 of 3 at 20 entries: indexes 6-11 of every 18');
  t.ok(new SnapshotTurns().passed(7, 1, 1, 20), 'a single node needs no turn');

  // A node snapshot written in place (the KV image is not copied into a wrapper) reads back as the wrapped one.
  fc.assert(fc.property(fc.array(fc.tuple(fc.constantFrom('a', 'b.c', 'd'), fc.uint8Array({ maxLength: 300 })), { maxLength: 40 }), fc.nat(20), (puts, admitted) => {
    const sm = new KvStateMachine();
    sm.apply(1, encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: { history: 3 }, ts: 1 }));
    puts.forEach(([key, value], i) => sm.apply(i + 2, encodeKvCommand({ op: 'put', bucket: 'b', key, value, ts: i })));
    const sessions = new AppliedSessions();
    for (let q = 1; q <= admitted; q++) sessions.admit(1, 1, q, q);
    const inPlace = decodeNodeSnapshot(writeNodeSnapshot(sm, sessions));
    const wrapped = decodeNodeSnapshot(encodeNodeSnapshot(sm.snapshot(), sessions));
    return Buffer.compare(Buffer.from(inPlace.kvImage), Buffer.from(wrapped.kvImage)) === 0 && JSON.stringify(inPlace.sessions) === JSON.stringify(wrapped.sessions);
  }), runs);

  // Slot derivation: whatever the address set and whichever node, the others-only style and the
  // all-nodes style of the peer both yield this node's address and the same sorted list.
  fc.assert(fc.property(fc.uniqueArray(fc.integer({ min: 1, max: 65535 }), { minLength: 2, maxLength: 7 }), fc.nat(), fc.nat(), (portsList, si, pi) => {
    const all = portsList.map((p) => `127.0.0.1:${p}`);
    const self = all[si % all.length]!;
    const peer = all.filter((a) => a !== self)[pi % (all.length - 1)]!;
    const mine = all.filter((a) => a !== self);
    const sorted = [...all].sort();
    return [all.filter((a) => a !== peer), all].every((theirs) => {
      const r = learnAddresses(mine, theirs, all.length);
      return typeof r !== 'string' && r.self === self && r.addresses.join() === sorted.join();
    });
  }), runs);
  t.type(learnAddresses(['a:1'], ['b:1', 'c:1'], 3), 'string', 'routes that differ by more than one address are refused');
  t.type(learnAddresses(['a:1', 'b:1'], ['a:1', 'c:1'], 4), 'string', 'a union of the wrong size is refused');
});
