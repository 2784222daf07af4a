// The leader's membership rounds (src/node/membership_executor.ts) against a scripted Raft: what the executor
// gathers for membership_policy.ts (routes up, voters down past the grace period, progress), the one change it
// proposes per round, the hand-off of a leader an operator removed, and leadership transfers. The real clusters
// (test/cluster/cluster.test.ts) check the same rounds end to end.
import t from 'tap';
import {
  ConfChangeType, ProgressState, RaftError, RaftErrorCode, StateType,
  type BasicStatus, type ConfChange, type ConfState, type ProgressStatus, type Status,
} from '../../raft/index.js';
import { NodeErrorCode } from '../../src/node/errors.js';
import { MembershipExecutor, type MembershipRaft } from '../../src/node/membership_executor.js';
import { silentLogger } from '../../src/log.js';

/** A Raft whose status the test sets, recording what the executor asks of it. */
class ScriptedRaft implements MembershipRaft {
  state: StateType = StateType.leader;
  applied = 100;
  commit = 100;
  conf: ConfState = { voters: [1, 2, 3], learners: [] };
  progress = new Map<number, ProgressStatus>();
  refuseConfChange = false;
  readonly proposed: ConfChange[] = [];
  readonly transfers: number[] = [];

  basicStatus(): BasicStatus {
    return {
      id: 1, term: 3, vote: 1, commit: this.commit, lead: this.state === StateType.leader ? 1 : 2, state: this.state, applied: this.applied,
      recovering: false, leaderCommit: this.commit, snapshotReceived: 0, snapshotBytes: 0,
    };
  }

  confState(): ConfState {
    return this.conf;
  }

  status(): Status {
    return {
      id: 1, hardState: { term: 3, vote: 1, commit: this.commit }, softState: { lead: 1, state: this.state }, applied: this.applied,
      lastIndex: this.commit, conf: this.conf, leadTransferee: 0, progress: this.progress,
    };
  }

  proposeConfChange(cc: ConfChange): void {
    if (this.refuseConfChange) throw new RaftError(RaftErrorCode.confChangeRefused, 'another conf change is pending');
    this.proposed.push(cc);
  }

  transferLeadership(transferee: number): void {
    this.transfers.push(transferee);
  }
}

const progress = (match: number, isLearner = false): ProgressStatus => ({
  match, next: match + 1, state: ProgressState.replicate, isLearner, recentActive: true, recovering: false, snapshotAcked: 0, snapshotBytes: 0,
});

/** A leader in slot 1 of `slots`, R = `replicas`, with the routes in `up` (server names n2, n3, ...). */
function fixture(o: { slots?: number; replicas?: number; started?: boolean } = {}) {
  const raft = new ScriptedRaft();
  const up = new Set(['n2', 'n3', 'n4']);
  let now = 0;
  let schedules = 0;
  const executor = new MembershipExecutor({
    raft: () => (o.started === false ? undefined : raft),
    slots: () => ({ self: 1, count: o.slots ?? 3 }),
    replicas: () => o.replicas ?? 3,
    upPeers: () => up,
    peerOf: (id) => (id === 1 ? undefined : `n${id}`),
    peerName: (id) => `n${id}`,
    schedule: () => { schedules++; },
    voterGraceMs: 30_000,
    now: () => now,
    log: silentLogger(),
  });
  return { raft, up, executor, advance: (ms: number) => { now += ms; }, schedules: () => schedules };
}

t.test('a slot that is no member becomes a learner, one change per round, and Raft is scheduled', async (t) => {
  const f = fixture({ slots: 4 });
  f.executor.round();
  t.same(f.raft.proposed, [{ type: ConfChangeType.addLearner, nodeId: 4 }], 'slot 4 added as a learner');
  t.equal(f.schedules(), 1, 'the Ready loop runs the proposal');
  f.raft.conf = { voters: [1, 2, 3], learners: [4] };
  f.executor.round();
  t.equal(f.raft.proposed.length, 1, 'nothing more to change once every slot is a member');
});

t.test('a follower, or a leader far behind its own commit index, changes nothing; nor a node whose Raft has not started', async (t) => {
  const follower = fixture({ slots: 4 });
  follower.raft.state = StateType.follower;
  follower.executor.round();
  t.same(follower.raft.proposed, [], 'a follower leaves membership to the leader');

  const behind = fixture({ slots: 4 });
  behind.raft.applied = 10;
  behind.raft.commit = 10 + 257;
  behind.executor.round();
  t.same(behind.raft.proposed, [], 'a stale configuration is no basis for a change');
  behind.raft.commit = 10 + 256;
  behind.executor.round();
  t.same(behind.raft.proposed, [{ type: ConfChangeType.addLearner, nodeId: 4 }], 'within the promote window it acts');

  const unstarted = fixture({ slots: 4, started: false });
  unstarted.executor.round();
  t.equal(unstarted.executor.current(), undefined, 'no configuration before Raft starts');
  t.equal(unstarted.schedules(), 0);
});

t.test('a voter down past the grace period is replaced: a caught-up connected learner is promoted, then the dead voter removed', async (t) => {
  const f = fixture({ slots: 4 });
  f.raft.conf = { voters: [1, 2, 3], learners: [4] };
  f.raft.progress = new Map([[1, progress(100)], [2, progress(100)], [3, progress(40)], [4, progress(95, true)]]);
  f.up.delete('n3');
  f.executor.round();
  t.same(f.raft.proposed, [], 'the first round only notes when n3 went down');
  f.advance(29_999);
  f.executor.round();
  t.same(f.raft.proposed, [], 'still within the grace period');
  f.advance(1);
  f.executor.round();
  t.same(f.raft.proposed, [{ type: ConfChangeType.promote, nodeId: 4 }], 'promote first: the count never drops below R');
  f.raft.conf = { voters: [1, 2, 3, 4], learners: [] };
  f.executor.round();
  t.same(f.raft.proposed[1], { type: ConfChangeType.remove, nodeId: 3 }, 'then the dead voter is removed');
});

t.test('a voter whose route comes back starts its grace period afresh', async (t) => {
  const f = fixture({ slots: 4 });
  f.raft.conf = { voters: [1, 2, 3], learners: [4] };
  f.raft.progress = new Map([[1, progress(100)], [2, progress(100)], [3, progress(100)], [4, progress(100, true)]]);
  f.up.delete('n3');
  f.executor.round();
  f.advance(20_000);
  f.up.add('n3');
  f.executor.round();
  f.up.delete('n3');
  f.advance(20_000);
  f.executor.round();
  t.same(f.raft.proposed, [], '40 s down in two spells of 20 s is no dead voter');
});

t.test('Raft refusing a change (another pending) is retried next round, not thrown', async (t) => {
  const f = fixture({ slots: 4 });
  f.raft.refuseConfChange = true;
  t.doesNotThrow(() => f.executor.round());
  t.equal(f.schedules(), 0, 'nothing to run when nothing was proposed');
  f.raft.refuseConfChange = false;
  f.executor.round();
  t.same(f.raft.proposed, [{ type: ConfChangeType.addLearner, nodeId: 4 }]);
});

t.test('slots an operator removed leave the configuration and are never re-added; a removed leader hands over first', async (t) => {
  const f = fixture({ slots: 4 });
  f.raft.conf = { voters: [1, 2, 3], learners: [4] };
  f.raft.progress = new Map([[1, progress(100)], [2, progress(90)], [3, progress(99)], [4, progress(100, true)]]);
  f.executor.setRemovedSlots([4]);
  t.same([...f.executor.removedSlots], [4]);
  f.executor.round();
  t.same(f.raft.proposed, [{ type: ConfChangeType.remove, nodeId: 4 }], 'the removed learner leaves');
  f.raft.conf = { voters: [1, 2, 3], learners: [] };
  f.executor.round();
  t.equal(f.raft.proposed.length, 1, 'and is not re-added as a learner');

  f.executor.setRemovedSlots([1]);
  f.executor.round();
  t.same(f.raft.transfers, [3], 'the removed leader hands leadership to the most caught-up other voter');
  t.equal(f.raft.proposed.length, 1, 'and proposes no change itself');
});

t.test('transferLeadership names its target or picks the most caught-up voter; refusals are typed', async (t) => {
  const f = fixture();
  f.raft.progress = new Map([[1, progress(100)], [2, progress(70)], [3, progress(90)], [4, progress(100, true)]]);
  f.executor.transferLeadership(2);
  f.executor.transferLeadership();
  t.same(f.raft.transfers, [2, 3], 'a learner is never the default target');
  t.equal(f.schedules(), 2);

  f.raft.progress = new Map([[1, progress(100)]]);
  t.throws(() => f.executor.transferLeadership(), { code: NodeErrorCode.noLeader, message: 'this node is not the leader, or has no other voter to transfer to' });
  const unstarted = fixture({ started: false });
  t.throws(() => unstarted.executor.transferLeadership(), { code: NodeErrorCode.noLeader, message: 'raft has not started on this node yet' });
});

t.test('current() is a copy of the configuration', async (t) => {
  const f = fixture();
  const conf = f.executor.current();
  t.same(conf, { voters: [1, 2, 3], learners: [] });
  f.raft.conf = { voters: [1, 2], learners: [3] };
  t.same(conf, { voters: [1, 2, 3], learners: [] }, 'a later change does not show through');
});
