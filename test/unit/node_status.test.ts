// What a node says about itself (src/node/status.ts; status_reports.ts reads the node afresh per call) as functions
// of a view, without a cluster: the health a
// bootstrapping or stopped node gives, the view assessHealth gets from Raft and the routes, the catch-up latch,
// `cluster status` rows, STREAM.INFO's `cluster`, and the monitoring endpoints. The real clusters (test/cluster,
// test/ops) check that node.ts builds the view from what it sees.
import t from 'tap';
import { ProgressState, StateType, type BasicStatus, type ProgressStatus, type Status } from '../../raft/index.js';
import type { PeerInfo } from '../../transport/index.js';
import type { ClusterFile } from '../../src/node/bootstrap.js';
import {
  CatchUp, StatusQueries, clusterStatusFrom, jsClusterInfo, metricsText, newNodeMetrics, nodeHealth, raftz, routez, selfReport,
  type NodeStatusView, type RaftStatusSource,
} from '../../src/node/status.js';
import { StatusReports } from '../../src/node/status_reports.js';
import { decodeNodeFrame, type MemberReport } from '../../src/node/wire.js';
import { silentLogger } from '../../src/log.js';

const now = 1_000_000;
const cluster: ClusterFile = {
  version: 1, cluster: 'c', server: 'n1', id: 1, addresses: ['127.0.0.1:7001', '127.0.0.2:7001', '127.0.0.3:7001'], voters: 3,
  bindings: { 2: { name: 'n2', key: 'aa' }, 3: { name: 'n3', key: 'bb' } }, initial: 3,
};
const counters = { bytesIn: 10, bytesOut: 20, framesIn: 1, framesOut: 2, writes: 1, raftDropped: 0 };
const peer = (name: string, state: PeerInfo['state'], lastError?: PeerInfo['lastError']): PeerInfo => ({
  name, state, address: `${name}:7001`, direction: 'outbound', identity: undefined, rttMs: undefined, counters, route: undefined, attempts: 0, lastError,
});
const progress = (match: number): ProgressStatus => ({
  match, next: match + 1, state: ProgressState.replicate, isLearner: false, recentActive: true, recovering: false, snapshotAcked: 0, snapshotBytes: 0,
});

/** A fixed Raft: this node (slot 1) in `state`, following `lead`, with the leader's progress when it leads. */
function raft(state: StateType, lead: number, over: Partial<BasicStatus> = {}, prog: ReadonlyMap<number, ProgressStatus> = new Map()): RaftStatusSource {
  const basic: BasicStatus = {
    id: 1, term: 4, vote: lead, commit: 10, lead, state, applied: 10, recovering: false, leaderCommit: 10, snapshotReceived: 0, snapshotBytes: 0, ...over,
  };
  const conf = { voters: [1, 2, 3], learners: [] };
  const status: Status = {
    id: 1, hardState: { term: basic.term, vote: basic.vote, commit: basic.commit }, softState: { lead, state }, applied: basic.applied,
    lastIndex: 12, conf, leadTransferee: 0, progress: prog,
  };
  return { status: () => status, basicStatus: () => basic, confState: () => conf };
}

function view(over: Partial<NodeStatusView> = {}): NodeStatusView {
  const v: NodeStatusView = {
    serverName: 'n1', clusterName: 'c', identityKey: 'NKEY', cluster, clusterSize: 3, kvReplicas: 3, raft: raft(StateType.follower, 2), applied: 10,
    kvBytes: 100, maxKvBytes: undefined,
    transport: { peers: () => [peer('n2', 'up'), peer('n3', 'up')], upPeers: () => ['n2', 'n3'], address: () => ({ host: '127.0.0.1', port: 7001 }), linkCount: () => 2 },
    idToPeer: new Map([[2, 'n2'], [3, 'n3']]), peerToId: new Map([['n2', 2], ['n3', 3]]), peerContact: new Map([[2, now - 10], [3, now - 10]]),
    lastLeaderContact: now - 10, electionWindowMs: 1000, now, startedAt: now - 5000,
    storage: { firstIndex: () => 1, snapshotIndex: () => 0, walSegments: () => 1 },
    metrics: newNodeMetrics(), pendingWrites: 0, pendingReads: 0,
    snapshotStream: {
      receiving: () => ({ received: 0, total: 0 }), sending: () => undefined,
      counters: { transfersStarted: 0, transfersCompleted: 0, transfersAbandoned: 0, chunksSent: 0, bytesSent: 0, chunksReceived: 0, bytesReceived: 0, chunksRefused: 0 },
    },
    fatal: undefined, refusal: undefined, stopping: false, bootstrapProblem: undefined, verdictPending: false, joining: false, removedSlots: new Set(),
    rss: () => 1, health: () => ({ status: 'ok' }),
    ...over,
  };
  return v;
}
const reason = (v: NodeStatusView, catchUp = new CatchUp(() => undefined)): string => {
  const h = nodeHealth(v, catchUp);
  return h.status === 'ok' ? 'ok' : h.reason;
};

t.test('health: the node\'s own conditions come before anything Raft says', async (t) => {
  t.equal(reason(view()), 'ok');
  t.equal(reason(view({ fatal: new Error('EIO'), refusal: 'posture differs', stopping: true })), 'replication stopped: EIO');
  t.equal(reason(view({ refusal: 'posture differs', stopping: true })), 'posture differs');
  t.equal(reason(view({ stopping: true })), 'node is stopping');
});

t.test('health before Raft runs says what the bootstrap waits for, and whom it cannot reach', async (t) => {
  const transport = { ...view().transport, peers: () => [peer('n2', 'up'), peer('n3', 'connecting', { code: 'tls', reason: 'certificate expired' })], upPeers: () => ['n2'] };
  const boot = { raft: undefined, transport };
  t.equal(reason(view({ ...boot, bootstrapProblem: 'slot tables disagree', verdictPending: true })), 'slot tables disagree');
  t.equal(
    reason(view({ ...boot, verdictPending: true })),
    'no quorum: 2 of 3 voters reachable (this node\'s store is empty: a peer with a slot table tells whether it is new or lost its data; not connected: n3: certificate expired)',
  );
  t.equal(reason(view({ ...boot, cluster: undefined, joining: true })), 'joining cluster "c": waiting for a peer\'s slot table (1 peer(s) connected; not connected: n3: certificate expired)');
  t.equal(reason(view({ ...boot, cluster: undefined })), 'no quorum: 2 of 3 voters reachable (this node learns its slot from the first peer it meets; not connected: n3: certificate expired)');
});

t.test('health with Raft: reachability, silence and the leader\'s route come from the view', async (t) => {
  const oneDown = { ...view().transport, peers: () => [peer('n2', 'up'), peer('n3', 'backoff')], upPeers: () => ['n2'] };
  t.equal(reason(view({ transport: oneDown, raft: raft(StateType.follower, 3) })), 'leader n3 is not connected (election pending)');
  t.equal(reason(view({ transport: { ...oneDown, upPeers: () => [] }, raft: raft(StateType.follower, 2) })), 'no quorum: 1 of 3 voters reachable (not connected: n3)');
  t.equal(
    reason(view({ raft: raft(StateType.leader, 1), peerContact: new Map([[2, now - 1500]]) })),
    'no quorum: this leader heard from 1 of 3 voters within 1000 ms (n2 silent for 1500 ms, n3 never heard from); it cannot commit, and the others may have elected a new leader',
  );
  t.equal(reason(view({ lastLeaderContact: now - 2001 })), 'leader n2 not heard from for 2001 ms');
  const conf = { voters: [2, 3], learners: [] };
  t.match(reason(view({ removedSlots: new Set([1]), raft: { ...raft(StateType.follower, 2), confState: () => conf } })), /^removed from the cluster: slot 1 .*cluster add n1 127\.0\.0\.1:7001/);
});

t.test('catch-up: not current until the leader\'s commit is applied once; then it stays current', async (t) => {
  const catchUp = new CatchUp(() => t.fail('not a legacy leader'));
  t.equal(reason(view({ applied: 10, raft: raft(StateType.follower, 2, { commit: 10, leaderCommit: 90 }) }), catchUp), 'catching up: applied 10 of the leader\'s commit 90');
  t.equal(
    reason(view({
      applied: 10, raft: raft(StateType.follower, 2, { leaderCommit: 90, recovering: true }),
      snapshotStream: { receiving: () => ({ received: 50, total: 200 }), sending: () => undefined, counters: { transfersStarted: 0, transfersCompleted: 0, transfersAbandoned: 0, chunksSent: 0, bytesSent: 0, chunksReceived: 0, bytesReceived: 0, chunksRefused: 0 } },
    }), catchUp),
    'catching up: applied 10 of the leader\'s commit 90 (snapshot 25% received); this node lost its data and votes again once caught up',
  );
  t.equal(reason(view({ applied: 90, raft: raft(StateType.follower, 2, { commit: 90, leaderCommit: 90 }) }), catchUp), 'ok');
  t.equal(reason(view({ applied: 90, raft: raft(StateType.follower, 2, { commit: 90, leaderCommit: 500 }) }), catchUp), 'ok', 'caught up once: a leader moving ahead does not make it "catching up" again');
});

t.test('catch-up: a leader that never tells its commit is taken at its word after two election timeouts', async (t) => {
  const legacy: number[] = [];
  const catchUp = new CatchUp((lead) => legacy.push(lead));
  const st: BasicStatus = raft(StateType.follower, 2, { leaderCommit: 0 }).basicStatus();
  t.match(catchUp.check(st, 10, now, 1000), { status: 'unavailable', reason: /the leader's commit \(not known yet\)/ });
  t.match(catchUp.check(st, 10, now + 2000, 1000), { status: 'unavailable' }, 'not before two election timeouts');
  t.equal(catchUp.check(st, 10, now + 2001, 1000), undefined);
  t.same(legacy, [2], 'said once');
  t.equal(catchUp.check(st, 10, now + 9000, 1000), undefined);
  t.same(legacy, [2]);
});

t.test('cluster status: a row per slot with role, leader name and lag against the leader\'s commit', async (t) => {
  const report = (id: number, state: string, commit: number, applied: number): MemberReport => ({ id, name: `n${id}`, state, term: 4, lead: 2, commit, applied, lastIndex: commit, health: 'ok' });
  const reports = new Map([[1, report(1, 'follower', 100, 97)], [2, report(2, StateType.leader, 100, 100)]]);
  const s = clusterStatusFrom(view(), reports);
  t.match(s, { cluster: 'c', via: 'n1', leader: 'n2', term: 4, kvReplicas: 3, voters: [1, 2, 3], learners: [] });
  t.same(s.members.map((m) => [m.name, m.role, m.leader, m.lag, m.reachable]), [
    ['n1', 'follower', 'n2', 3, true], ['n2', 'leader', 'n2', 0, true], ['n3', 'voter', null, null, false],
  ]);
  t.equal(clusterStatusFrom(view({ raft: undefined }), new Map()).members[0]!.role, 'removed', 'no configuration known: no slot is a member');
});

t.test('STREAM.INFO cluster: the leader reports lag and offline replicas; a follower reports itself', async (t) => {
  const leading = raft(StateType.leader, 1, {}, new Map([[1, progress(12)], [2, progress(12)], [3, progress(9)]]));
  const oneDown = { ...view().transport, upPeers: () => ['n2'] };
  t.same(jsClusterInfo(view({ raft: leading, transport: oneDown })), {
    name: 'c', leader: 'n1', replicas: [{ name: 'n2', current: true, active: 10_000_000 }, { name: 'n3', current: false, offline: true, active: 10_000_000, lag: 3 }],
  });
  const follower = jsClusterInfo(view({ applied: 8 }));
  t.same(follower?.replicas?.find((r) => r.name === 'n1'), { name: 'n1', current: false, active: 0, lag: 2 }, 'behind its commit by 2');
  t.same(jsClusterInfo(view({ raft: raft(StateType.follower, 0) })), { name: 'c' }, 'no leader: the name only');
});

t.test('endpoints: /raftz while bootstrapping and running, /routez slots, /metrics series', async (t) => {
  t.match(raftz(view({ raft: undefined })), { server: 'n1', id: null, state: 'bootstrapping', n: 3, voters: 3, health: { status: 'ok' } });
  t.match(raftz(view({ pendingWrites: 2, pendingReads: 5 })), { id: 1, state: StateType.follower, leader: { id: 2, name: 'n2' }, commit: 10, lastIndex: 12, pendingWrites: 2, pendingReads: 5, walSegments: 1 });
  t.same((routez(view()).routes as { raftId: number | null }[]).map((r) => r.raftId), [2, 3]);
  t.match(selfReport(view()), { id: 1, name: 'n1', state: StateType.follower, lead: 2, lastIndex: 12, health: 'ok' });
  const streaming = new Map([[2, progress(1)]]);
  const text = metricsText(view({
    raft: raft(StateType.leader, 1, {}, streaming), maxKvBytes: 4096,
    snapshotStream: { receiving: () => ({ received: 0, total: 0 }), sending: (peer) => (peer === 'n2' ? { ackedBytes: 5, totalBytes: 50 } : undefined), counters: { transfersStarted: 0, transfersCompleted: 0, transfersAbandoned: 0, chunksSent: 0, bytesSent: 0, chunksReceived: 0, bytesReceived: 0, chunksRefused: 0 } },
  }));
  t.match(text, /^membershipd_raft_leader 1$/m);
  t.match(text, /^membershipd_kv_quota_bytes 4096$/m);
  t.match(text, /^membershipd_route_bytes_in_total 20$/m, 'route counters summed over peers');
  t.match(text, /^membershipd_raft_snapshot_acked_bytes\{peer="n2"\} 5$/m);
  t.match(text, /^membershipd_route_up\{peer="n3"\} 1$/m);
});

t.test('cluster status questions: a reply counts only from the peer bound to the slot it claims; silence and a down route end the wait', async (t) => {
  const asked: [string, number][] = [];
  const queries = new StatusQueries((peer, reqId) => {
    if (peer === 'n4') return false;
    asked.push([peer, reqId]);
    return true;
  });
  const report = (id: number): MemberReport => ({ id, name: `n${id}`, state: 'follower', term: 4, lead: 1, commit: 9, applied: 9, lastIndex: 9, health: 'ok' });
  const into = new Map<number, MemberReport>([[1, report(1)]]);
  const done = queries.ask(['n2', 'n3', 'n4', 'n5'], new Map([['n2', 2], ['n3', 3], ['n5', 5]]), 50, into);
  t.same(asked.map(([p]) => p), ['n2', 'n3', 'n5'], 'n4\'s route is down: not waited for');
  queries.answered(asked[0]![1], report(2));
  queries.answered(asked[1]![1], report(5));
  queries.answered(999, report(3));
  const reports = await done;
  t.same([...reports.keys()], [1, 2], 'n3 claimed slot 5 and is ignored; n5 never answered within the bound');
  t.equal(queries.pending, 0, 'nothing left waiting');
});

t.test('StatusReports (ClusterNode.status): each report reads the node afresh, with the health the reports compute', async (t) => {
  let node = view({ applied: 10, raft: raft(StateType.follower, 2, { commit: 10, leaderCommit: 90 }) });
  const questions: string[] = [];
  const reports: StatusReports = new StatusReports(() => node, (peer, frame) => {
    const d = decodeNodeFrame(frame.data);
    if (typeof d === 'string' || d.kind !== 'statusRequest') return false;
    questions.push(peer);
    // n2 answers at once; n3's route is down.
    const leader: MemberReport = { id: 2, name: 'n2', state: StateType.leader, term: 4, lead: 2, commit: 90, applied: 90, lastIndex: 90, health: 'ok' };
    if (peer === 'n2') reports.answered(d.reqId, leader);
    return peer === 'n2';
  }, silentLogger());
  t.equal(reports.isCurrent(), false, 'applied 10 of the leader\'s 90');
  t.match(reports.health(), { status: 'unavailable', reason: 'catching up: applied 10 of the leader\'s commit 90' });
  t.match(reports.raftz(), { health: { status: 'unavailable' } }, '/raftz shows the reports\' health, not the source\'s');
  t.match(reports.selfReport(), { id: 1, health: 'catching up: applied 10 of the leader\'s commit 90' });

  node = view({ applied: 90, raft: raft(StateType.follower, 2, { commit: 90, leaderCommit: 90 }) });
  t.equal(reports.isCurrent(), true, 'the next call sees the node as it is now');
  node = view({ applied: 90, raft: raft(StateType.follower, 2, { commit: 90, leaderCommit: 400 }) });
  t.equal(reports.isCurrent(), true, 'and the catch-up latch holds across calls');

  const s = await reports.clusterStatus(50);
  t.same(questions, ['n2', 'n3'], 'every peer up is asked');
  t.same(s.members.map((m) => [m.name, m.role, m.reachable]), [['n1', 'follower', true], ['n2', 'leader', true], ['n3', 'voter', false]]);
  t.equal(s.leader, 'n2');
});
