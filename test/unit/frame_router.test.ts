// Route-frame routing for a node (src/node/frame_router.ts) with no transport and no Raft: which frame goes where
// (route listeners, extension handlers, slot bindings, `cluster status` questions and answers, Raft), which Raft
// messages are dropped and counted, when the peers and the leader were last heard from, and how Raft's own
// messages leave (a snapshot through the snapshot stream). test/cluster checks the same paths over real routes.
import t from 'tap';
import { MessageType, RaftError, RaftErrorCode, StateType, message, type BasicStatus, type Message } from '../../raft/index.js';
import { refusalCode, type LinkClose, type PeerInfo, type RouteFrame } from '../../transport/index.js';
import { FrameRouter, type RoutedRaft } from '../../src/node/frame_router.js';
import { newNodeMetrics } from '../../src/node/status.js';
import {
  decodeNodeFrame, encodeHello, encodeMessage, encodeStatusReply, encodeStatusRequest, type MemberReport, type SlotHello,
} from '../../src/node/wire.js';
import { silentLogger } from '../../src/log.js';

const counters = { bytesIn: 0, bytesOut: 0, framesIn: 0, framesOut: 0, writes: 0, raftDropped: 0 };
const peerInfo = (name: string): PeerInfo => ({
  name, state: 'up', address: `127.0.0.1:7001`, direction: 'outbound', identity: 'ab', rttMs: 1, counters, route: undefined, attempts: 0, lastError: undefined,
});
const report: MemberReport = { id: 1, name: 'n1', state: 'follower', term: 3, lead: 2, commit: 9, applied: 9, lastIndex: 9, health: 'ok' };

/** A Raft that records the messages stepped into it; `refuse` makes step throw as Raft does for a dropped proposal. */
class SteppedRaft implements RoutedRaft {
  lead = 2;
  refuse = false;
  readonly stepped: Message[] = [];

  step(m: Message): void {
    if (this.refuse) throw new RaftError(RaftErrorCode.proposalDropped, 'no leader');
    this.stepped.push(m);
  }

  basicStatus(): BasicStatus {
    return {
      id: 1, term: 3, vote: 2, commit: 9, lead: this.lead, state: StateType.follower, applied: 9,
      recovering: false, leaderCommit: 9, snapshotReceived: 0, snapshotBytes: 0,
    };
  }
}

/** Node n1 (slot 1) with peers n2 (slot 2) and n3 (slot 3); `upPeers` are the routes that accept a frame. */
function fixture(o: { started?: boolean } = {}) {
  const raft = new SteppedRaft();
  const metrics = newNodeMetrics();
  const slots = new Map([['n2', 2], ['n3', 3]]);
  const f = {
    raft, metrics, now: 1000, schedules: 0, upPeers: new Set(['n2', 'n3']),
    sent: [] as [string, RouteFrame][], hellos: [] as [string, SlotHello][], bound: [] as string[], answers: [] as [number, MemberReport][],
    snapshots: [] as [string, Message][],
  };
  const router = new FrameRouter({
    raft: () => (o.started === false ? undefined : raft),
    slotOf: (peer) => slots.get(peer),
    peerOf: (id) => [...slots].find(([, slot]) => slot === id)?.[0],
    send: (peer, frame) => {
      if (!f.upPeers.has(peer)) return false;
      f.sent.push([peer, frame]);
      return true;
    },
    bindings: {
      peerUp: (p) => void f.bound.push(`up ${p.name}`),
      peerDown: (p) => void f.bound.push(`down ${p.name}`),
      onHello: (peer, hello) => void f.hellos.push([peer, hello]),
    },
    selfReport: () => report,
    statusAnswered: (reqId, r) => void f.answers.push([reqId, r]),
    offerSnapshot: (peer, m) => void f.snapshots.push([peer, m]),
    metrics,
    schedule: () => void f.schedules++,
    now: () => f.now,
    log: silentLogger(),
  });
  return { f, router };
}

const raftFrame = (m: Message): RouteFrame => ({ kind: 'raft', data: encodeMessage(m) });

t.test('a Raft message from the peer bound to its sender slot is stepped, counted, and runs the Ready loop', async (t) => {
  const { f, router } = fixture();
  f.now = 5000;
  router.frame('n3', raftFrame(message({ type: MessageType.vote, from: 3, to: 1, term: 4 })));
  t.equal(f.raft.stepped.length, 1);
  t.equal(f.raft.stepped[0]!.type, MessageType.vote);
  t.equal(f.metrics.raftMessagesIn, 1);
  t.equal(f.schedules, 1);
  t.same([...router.peerContact], [[3, 5000]], 'n3 heard from now');
  t.equal(router.lastLeaderContact, 0, 'a vote from a node that does not lead is no contact with the leader');

  f.now = 6000;
  router.frame('n3', raftFrame(message({ type: MessageType.heartbeat, from: 3, to: 1, term: 4 })));
  t.equal(router.lastLeaderContact, 6000, 'a heartbeat is the leader\'s, whoever Raft thinks leads');
  f.now = 7000;
  router.frame('n2', raftFrame(message({ type: MessageType.appResp, from: 2, to: 1, term: 4 })));
  t.equal(router.lastLeaderContact, 7000, 'any message from the known leader counts');
  f.now = 8000;
  router.leaderChanged();
  t.equal(router.lastLeaderContact, 8000, 'a leader change restarts the count');
});

t.test('a Raft message whose sender slot is not the peer\'s, or one before Raft starts, is dropped and counted', async (t) => {
  const { f, router } = fixture();
  router.frame('n2', raftFrame(message({ type: MessageType.vote, from: 3, to: 1, term: 4 })));
  router.frame('n9', raftFrame(message({ type: MessageType.vote, from: 3, to: 1, term: 4 })));
  t.same(f.raft.stepped, [], 'n2 cannot speak for slot 3, nor an unbound peer');
  t.equal(f.metrics.raftMessagesDropped, 2);
  t.equal(f.metrics.raftMessagesIn, 0);
  t.equal(f.schedules, 0);

  const early = fixture({ started: false });
  early.router.frame('n3', raftFrame(message({ type: MessageType.vote, from: 3, to: 1, term: 4 })));
  t.equal(early.f.metrics.raftMessagesDropped, 1, 'a node still learning its slot drops Raft traffic');
});

t.test('Raft refusing a message is logged, not thrown; a malformed frame is dropped', async (t) => {
  const { f, router } = fixture();
  f.raft.refuse = true;
  t.doesNotThrow(() => router.frame('n3', raftFrame(message({ type: MessageType.prop, from: 3, to: 1, term: 4 }))));
  t.equal(f.schedules, 1, 'the loop still runs: the step may have changed nothing, which costs one empty Ready');
  t.doesNotThrow(() => router.frame('n3', { kind: 'raft', data: [0, 'not a type'] }));
  t.doesNotThrow(() => router.frame('n3', { kind: 'raft', data: 'junk' }));
  t.equal(f.metrics.raftMessagesIn, 1, 'malformed frames reach neither Raft nor the counters');
});

t.test('hellos go to the slot bindings; status questions are answered with this node\'s report; answers go to the asker', async (t) => {
  const { f, router } = fixture();
  const hello: SlotHello = { id: 2, routes: ['127.0.0.1:7001'], addresses: ['127.0.0.1:7001', '127.0.0.2:7001'], voters: 2, initial: 2, names: [], bound: [1] };
  router.frame('n2', { kind: 'raft', data: encodeHello(hello) });
  t.same(f.hellos, [['n2', hello]]);

  router.frame('n2', { kind: 'raft', data: encodeStatusRequest(17) });
  t.equal(f.sent.length, 1);
  const [to, frame] = f.sent[0]!;
  t.equal(to, 'n2', 'the answer goes back to the asker');
  t.same(frame.kind === 'raft' ? decodeNodeFrame(frame.data) : undefined, { kind: 'statusReply', reqId: 17, report });

  const theirs = { ...report, id: 3, name: 'n3' };
  router.frame('n3', { kind: 'raft', data: encodeStatusReply(18, theirs) });
  t.same(f.answers, [[18, theirs]]);
});

t.test('tagged raft frames go to their extension handler; other kinds to the route listeners, as do peer events', async (t) => {
  const { f, router } = fixture();
  const ext: [string, unknown[]][] = [];
  const off = router.onExtensionFrame('svc', (peer, data) => void ext.push([peer, data]));
  t.throws(() => router.onExtensionFrame('svc', () => undefined), RangeError, 'one handler per tag');
  router.frame('n2', { kind: 'raft', data: ['svc', 1, 'x'] });
  t.same(ext, [['n2', ['svc', 1, 'x']]]);
  off();
  router.frame('n2', { kind: 'raft', data: ['svc', 2] });
  t.equal(ext.length, 1, 'after its removal the tag is an unknown one, dropped');

  const seen: string[] = [];
  const remove = router.addRouteListener({
    frame: (peer, fr) => void seen.push(`${peer} ${fr.kind}`),
    up: (p) => void seen.push(`up ${p.name}`),
    down: (p, c) => void seen.push(`down ${p.name} ${c.code}`),
  });
  router.frame('n2', { kind: 'interest_add', subject: 'a.b' });
  router.frame('n2', raftFrame(message({ type: MessageType.app, from: 2, to: 1, term: 4 })));
  const close: LinkClose = { code: refusalCode.deadPeer, reason: 'no pong', origin: 'local', wasUp: true };
  router.peerUp(peerInfo('n3'));
  router.peerDown(peerInfo('n3'), close);
  t.same(seen, ['n2 interest_add', 'up n3', 'down n3 dead_peer'], 'raft frames are not the listeners\'');
  t.same(f.bound, ['up n3', 'down n3'], 'the slot bindings see the peer events first');
  remove();
  router.frame('n2', { kind: 'interest_add', subject: 'a.c' });
  t.equal(seen.length, 3, 'a removed listener hears nothing');
});

t.test('Raft\'s messages leave on their peer\'s route; snapshots through the stream; an unknown or down peer is a counted drop', async (t) => {
  const { f, router } = fixture();
  router.sendMessage(message({ type: MessageType.app, from: 1, to: 2, term: 4 }));
  t.equal(f.sent.length, 1);
  t.equal(f.sent[0]![0], 'n2');
  t.equal(f.metrics.raftMessagesOut, 1);

  const snap = message({ type: MessageType.snap, from: 1, to: 3, term: 4 });
  router.sendMessage(snap);
  t.same(f.snapshots, [['n3', snap]], 'the stream sends the snapshot file');
  t.equal(f.metrics.raftMessagesOut, 1, 'the stream counts its own traffic');

  router.sendMessage(message({ type: MessageType.app, from: 1, to: 9, term: 4 }));
  f.upPeers.delete('n3');
  router.sendMessage(message({ type: MessageType.heartbeat, from: 1, to: 3, term: 4 }));
  t.equal(f.metrics.raftMessagesDropped, 2, 'slot 9 has no peer; n3\'s route is down');
  t.equal(f.sent.length, 1);
});
