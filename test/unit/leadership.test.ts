// Who leads, as a node's Raft says (src/node/leadership.ts), from scripted soft states: a leader change is counted,
// told to the node's parts before the listeners, and a throwing listener does not keep the others from hearing it;
// isLeader and leaderName read Raft now. The real clusters (test/cluster) check elections end to end.
import t from 'tap';
import { StateType, type BasicStatus } from '../../raft/index.js';
import { Leadership } from '../../src/node/leadership.js';
import { newNodeMetrics } from '../../src/node/status.js';
import { silentLogger } from '../../src/log.js';

function fixture() {
  const basic = { lead: 0, state: StateType.follower as StateType };
  const raft = {
    basicStatus: (): BasicStatus => ({
      id: 1, term: 5, vote: 0, commit: 0, lead: basic.lead, state: basic.state, applied: 0,
      recovering: false, leaderCommit: 0, snapshotReceived: 0, snapshotBytes: 0,
    }),
  };
  const metrics = newNodeMetrics();
  const told: string[] = [];
  let started = true;
  const leadership = new Leadership({
    serverName: 'n1', raft: () => (started ? raft : undefined), slot: () => 1, peerOf: (id) => (id === 2 ? 'n2' : undefined),
    peerName: (id) => (id === 1 ? 'n1' : id === 2 ? 'n2' : `slot ${id}`), metrics, log: silentLogger(),
    changed: (lead) => void told.push(`parts ${lead}`),
  });
  return { basic, metrics, told, leadership, stop: () => { started = false; } };
}

t.test('a leader change is counted, told to the node\'s parts, then to every listener, however one of them fails', async (t) => {
  const f = fixture();
  f.leadership.onLeaderChange(() => { throw new Error('listener bug'); });
  const off = f.leadership.onLeaderChange((isLeader, name) => void f.told.push(`listener ${isLeader} ${name}`));
  f.leadership.softState({ lead: 2, state: StateType.follower });
  t.same(f.told, ['parts 2', 'listener false n2']);
  t.equal(f.metrics.leaderChanges, 1);
  f.leadership.softState({ lead: 2, state: StateType.follower });
  t.equal(f.told.length, 2, 'the same leader again is no change');
  f.leadership.softState({ lead: 0, state: StateType.candidate });
  t.same(f.told.slice(2), ['parts 0', 'listener false undefined'], 'a lost leader is told, with no name');
  t.equal(f.metrics.leaderChanges, 1, 'losing the leader is not counted as a change');
  f.leadership.softState({ lead: 1, state: StateType.leader });
  t.same(f.told.slice(4), ['parts 1', 'listener true n1']);
  off();
  f.leadership.softState({ lead: 3, state: StateType.follower });
  t.same(f.told.slice(6), ['parts 3'], 'a removed listener hears nothing');
});

t.test('isLeader and leaderName read Raft now', async (t) => {
  const f = fixture();
  t.equal(f.leadership.isLeader, false);
  t.equal(f.leadership.leaderName(), undefined, 'no leader');
  f.basic.lead = 2;
  t.equal(f.leadership.leaderName(), 'n2');
  f.basic.lead = 3;
  t.equal(f.leadership.leaderName(), undefined, 'a slot not bound to a name yet');
  f.basic.lead = 1;
  f.basic.state = StateType.leader;
  t.equal(f.leadership.isLeader, true);
  t.equal(f.leadership.leaderName(), 'n1', 'itself when it leads');
  f.stop();
  t.equal(f.leadership.isLeader, false, 'not before Raft starts');
  t.equal(f.leadership.leaderName(), undefined);
});
