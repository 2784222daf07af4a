// Slot binding and bootstrap (src/node/slot_binding.ts) without a cluster: a temporary data dir, routes that a
// fake transport reports up, hellos handed in directly, and Raft replaced by a recorder. The real clusters
// (test/cluster, test/control) check the same paths over TLS routes.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { StateType, type BasicStatus, type ConfState } from '../../raft/index.js';
import type { PeerInfo, RouteFrame } from '../../transport/index.js';
import { readClusterFile } from '../../src/node/bootstrap.js';
import { silentLogger } from '../../src/log.js';
import { SlotBindings, type SlotBindingOptions, type SlotRaft, type SlotTransport } from '../../src/node/slot_binding.js';
import { decodeNodeFrame, type SlotHello } from '../../src/node/wire.js';

const port = 7001;
const self = `127.0.0.1:${port}`;
const table = ['127.0.0.1:7001', '127.0.0.2:7001', '127.0.0.3:7001'];
const counters = { bytesIn: 0, bytesOut: 0, framesIn: 0, framesOut: 0, writes: 0, raftDropped: 0 };

interface Fixture {
  readonly binding: SlotBindings;
  readonly dataDir: string;
  /** Peers whose route is up, by name → identity key (hex). */
  readonly up: Map<string, string>;
  /** Hellos sent, as [peer, hello]. */
  readonly sent: [string, SlotHello][];
  readonly handshakes: { clusterSize: number; incarnation: string }[];
  raftStarts: number;
  campaigns: number;
  raft: SlotRaft | undefined;
  /** Hands the fake routes to the binding (the node does this once its transport exists). */
  attach(): void;
}

function fixture(t: { teardown(fn: () => void): void }, over: Partial<SlotBindingOptions> = {}, storeEmpty = false): Fixture {
  const dataDir = mkdtempSync(join(tmpdir(), 'slot-binding-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const f: Fixture = {
    dataDir, up: new Map(), sent: [], handshakes: [], raftStarts: 0, campaigns: 0, raft: undefined,
    binding: undefined as unknown as SlotBindings, attach: () => undefined,
  };
  const binding = new SlotBindings({
    serverName: 'n1', clusterName: 'c', clusterPort: port, dataDir, join: false, kvReplicas: undefined, log: silentLogger(),
    storeEmpty: () => storeEmpty, startRaft: () => void f.raftStarts++, raft: () => f.raft, schedule: () => undefined, ...over,
  });
  const peerInfo = (name: string, identity: string): PeerInfo => ({
    name, state: 'up', address: `${name}:7001`, direction: 'outbound', identity, rttMs: 1, counters, route: undefined, attempts: 0, lastError: undefined,
  });
  const transport: SlotTransport = {
    upPeers: () => [...f.up.keys()],
    peers: () => [...f.up].map(([name, key]) => peerInfo(name, key)),
    send: (peer: string, frame: RouteFrame) => {
      const d = frame.kind === 'raft' ? decodeNodeFrame(frame.data) : 'not raft';
      if (typeof d !== 'string' && d.kind === 'hello') f.sent.push([peer, d.hello]);
      return true;
    },
    updateHandshake: (u) => void f.handshakes.push(u),
  };
  return Object.assign(f, { binding, attach: () => binding.attach(transport) });
}

const hello = (h: Partial<SlotHello>): SlotHello => ({ id: 2, routes: [], addresses: table, voters: 3, initial: 3, names: [], bound: [], ...h });

t.test('routes listing every node: the slot is this node\'s place in the sorted table, persisted; itself is not dialed', async (t) => {
  const f = fixture(t);
  const dial = await f.binding.configure(['127.0.0.3:7001', '127.0.0.1:7001', '127.0.0.2:7001'], '127.0.0.1');
  t.same(dial.map((r) => `${r.host}:${r.port}`), ['127.0.0.3:7001', '127.0.0.2:7001']);
  t.match(f.binding.file, { id: 1, addresses: table, voters: 3, initial: 3 });
  t.same(readClusterFile(f.dataDir), f.binding.file, 'cluster.json holds it');
  t.same(f.binding.handshake(), { clusterSize: 3 });
  f.attach();
  t.equal(f.raftStarts, 1, 'a store with data starts Raft at once');
});

t.test('flags that cannot be right are config errors that say what to change', async (t) => {
  await t.rejects(fixture(t, { kvReplicas: 4 }).binding.configure(table, '127.0.0.1'), { code: 'ENODE_CONFIG', message: /--kv-replicas 4 is greater than the cluster size 3 .*use --kv-replicas 3 or add routes/ });
  await t.rejects(fixture(t).binding.configure([...table, 'localhost:7001'], '127.0.0.1'), { code: 'ENODE_CONFIG', message: /lists this node under 2 addresses/ });
  const f = fixture(t);
  await f.binding.configure(table, '127.0.0.1');
  const other = new SlotBindings({ serverName: 'n1', clusterName: 'other', clusterPort: port, dataDir: f.dataDir, join: false, kvReplicas: undefined, log: silentLogger(),
    storeEmpty: () => false, startRaft: () => undefined, raft: () => undefined, schedule: () => undefined });
  await t.rejects(other.configure(table, '127.0.0.1'), { code: 'ENODE_CONFIG', message: `data dir ${f.dataDir} belongs to cluster "c", not "other"; use another --data-dir or wipe it to join this cluster` });
});

t.test('routes listing only the others: the first peer\'s hello gives the table; an empty store waits for the verdict', async (t) => {
  const f = fixture(t, {}, true);
  await f.binding.configure(['127.0.0.2:7001', '127.0.0.3:7001'], '127.0.0.1');
  t.equal(f.binding.file, undefined, 'no slot yet');
  f.attach();
  f.up.set('n2', 'k2');
  f.binding.onHello('n2', hello({ id: 2, addresses: null, routes: ['127.0.0.1:7001', '127.0.0.3:7001'] }));
  t.match(f.binding.file, { id: 1, addresses: table });
  t.equal(f.binding.awaitingVerdict, true, 'a peer without a table cannot say whether this node lost its data');
  t.equal(f.raftStarts, 0);
  t.same(f.sent.map(([p, h]) => [p, h.id]), [['n2', 1]], 'the peer gets our table, so it can learn its own slot');
  f.binding.onHello('n2', hello({ id: 2, bound: [1] }));
  t.equal(f.binding.awaitingVerdict, false);
  t.equal(f.binding.file?.recovering, true, 'the peer had this slot bound: this node lost its data and rejoins without a vote');
  t.equal(f.raftStarts, 1);
  t.equal(f.binding.idToPeer.get(2), 'n2');
  t.same(readClusterFile(f.dataDir)?.bindings, { 2: { name: 'n2', key: 'k2' } }, 'the binding is persisted');
  f.binding.markRecovered(40);
  t.equal(readClusterFile(f.dataDir)?.recovering, undefined, 'caught up: an ordinary member again');
});

t.test('a slot is bound to one identity: another key claiming it, or a different R, is a bootstrap problem', async (t) => {
  const f = fixture(t);
  await f.binding.configure(table, '127.0.0.1');
  f.attach();
  f.up.set('n2', 'k2');
  f.binding.onHello('n2', hello({ id: 2 }));
  t.equal(f.binding.verifyPeer('n2', 'k2'), true);
  t.match(f.binding.verifyPeer('n2', 'kX'), /^"n2" is bound to slot 2 with identity key k2…, this peer presents kX…/);
  t.match(f.binding.verifyPeer('n9', 'k2'), /^identity key k2… is bound to "n2" \(slot 2\), this peer calls itself "n9"/);
  f.up.set('n9', 'k9');
  f.binding.onHello('n9', hello({ id: 2 }));
  t.match(f.binding.problem, /^slot 2 is bound to "n2" \(key k2…\) but "n9" \(key k9…\) claims it/);
  f.binding.onHello('n2', hello({ id: 2, voters: 5 }));
  t.equal(f.binding.problem, 'peer "n2" has --kv-replicas 5, this node 3');
  f.sent.length = 0;
  f.binding.setKvReplicas(2);
  t.equal(f.binding.problem, undefined, 'R changed by the control plane: the disagreement on R is over');
  t.same(f.sent.map(([p, h]) => [p, h.voters]), [['n2', 2], ['n9', 2]], 'and every peer hears the new R');
  t.equal(readClusterFile(f.dataDir)?.voters, 2, 'persisted: a restart keeps it');
  t.throws(() => f.binding.setKvReplicas(4), { code: 'ENODE_CONFIG', message: '--kv-replicas 4: must be 1..3 (the cluster size)' });
});

t.test('the lowest reachable voter campaigns as soon as a quorum is reachable and no leader is known', async (t) => {
  const f = fixture(t);
  await f.binding.configure(table, '127.0.0.1');
  f.attach();
  const basic = { lead: 0, state: StateType.follower } as BasicStatus;
  f.raft = { basicStatus: () => basic, confState: (): ConfState => ({ voters: [1, 2, 3], learners: [] }), campaign: () => void f.campaigns++ };
  f.up.set('n2', 'k2');
  f.binding.onHello('n2', hello({ id: 2 }));
  t.equal(f.campaigns, 1, 'slot 1 with slot 2 reachable: 2 of 3');
  f.raft = { ...f.raft, confState: () => ({ voters: [1, 2, 3, 4, 5], learners: [] }) };
  f.binding.onHello('n2', hello({ id: 2 }));
  t.equal(f.campaigns, 1, '2 of 5 is no quorum: it waits for its election timeout');
});

t.test('joining a running cluster: the slot `cluster add` gave this name, or what to run when there is none', async (t) => {
  const f = fixture(t, { join: true });
  await f.binding.configure(['127.0.0.2:7001'], '127.0.0.1');
  t.same(f.binding.handshake(), { clusterSize: 0 }, 'a joiner presents N 0');
  f.attach();
  f.up.set('n2', 'k2');
  f.binding.onHello('n2', hello({ id: 2 }));
  t.equal(f.binding.problem, 'joining cluster "c": the slot table of peer "n2" has no slot for n1; run "membershipd cluster add n1 <host>:7001" on a running node');
  const grown = [...table, '127.0.0.9:7001'];
  f.binding.onHello('n2', hello({ id: 2, addresses: grown, names: ['n1'] }));
  t.match(f.binding.file, { id: 4, addresses: grown, joined: true, initial: 3, names: { 4: 'n1' } });
  t.equal(f.binding.problem, undefined);
  t.equal(f.raftStarts, 1);
});

t.test('the slot table grows by `cluster add`: persisted, announced, and a held-back claim binds', async (t) => {
  const f = fixture(t);
  await f.binding.configure(table, '127.0.0.1');
  f.attach();
  f.up.set('n4', 'k4');
  f.binding.onHello('n4', hello({ id: 4, addresses: [...table, '127.0.0.4:7001'] }));
  t.equal(f.binding.idToPeer.get(4), undefined, 'slot 4 is not in this node\'s table yet');
  f.sent.length = 0;
  f.binding.setAddedSlots([{ name: 'n4', address: '127.0.0.4:7001' }]);
  t.equal(f.binding.size, 4);
  t.same(readClusterFile(f.dataDir)?.addresses, [...table, '127.0.0.4:7001']);
  t.same(f.sent.map(([p, h]) => [p, h.addresses?.length]), [['n4', 4]], 'every up peer hears the new table');
  t.equal(f.binding.idToPeer.get(4), 'n4', 'the held-back hello is read again');
  t.same(f.binding.slots('k1').map((s) => [s.id, s.name, s.identity]), [[1, 'n1', 'k1'], [2, undefined, undefined], [3, undefined, undefined], [4, 'n4', 'k4']]);
});
