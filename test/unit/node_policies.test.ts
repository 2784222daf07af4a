// The node's policies as pure functions of a view, without a cluster: assessHealth (src/node/health.ts), every
// reason /healthz gives for a node running Raft, and nextMembershipChange (src/node/membership_policy.ts), the
// leader's next configuration change at R voters. The real clusters (test/cluster, test/fault) check that node.ts
// builds the views from what it sees.
import t from 'tap';
import { ConfChangeType } from '../../raft/index.js';
import { assessHealth, type HealthView } from '../../src/node/health.js';
import { nextMembershipChange, promoteWindow, VoterDownWatch, type MemberProgress, type MembershipView } from '../../src/node/membership_policy.js';

const healthy: HealthView = {
  voters: 3, reachable: 3, notConnected: [], silent: [], windowMs: 1000, role: 'follower', term: 4, lead: 2,
  leaderName: 'n2', leaderConnected: true, leaderSilentMs: 50, commit: 10, applied: 10, catchingUp: () => undefined,
};
const reason = (v: Partial<HealthView>): string => {
  const h = assessHealth({ ...healthy, ...v });
  return h.status === 'ok' ? 'ok' : h.reason;
};

t.test('a follower that hears its leader and applied its commit is ok; so is a leader heard by a quorum', async (t) => {
  t.equal(reason({}), 'ok');
  t.equal(reason({ role: 'leader', lead: 1, leaderConnected: false, silent: [{ name: 'n3', silentMs: 5000 }] }), 'ok', 'a leader with one silent voter of three still has its quorum');
});

t.test('each way to be unavailable names its cause and, where there is one, the remedy', async (t) => {
  t.equal(reason({ removed: { slot: 3, serverName: 'n3', address: '127.0.0.1:7001' } }), 'removed from the cluster: slot 3 is not a member (re-add it with "membershipd cluster add n3 127.0.0.1:7001")');
  t.equal(reason({ reachable: 1, notConnected: ['n2', 'n3: certificate expired'] }), 'no quorum: 1 of 3 voters reachable (not connected: n2, n3: certificate expired)');
  t.equal(reason({ voters: 5, reachable: 2 }), 'no quorum: 2 of 5 voters reachable', 'no list when every route is up but the configuration is larger');
  t.equal(
    reason({ role: 'leader', lead: 1, silent: [{ name: 'n2', silentMs: 1500 }, { name: 'n3', silentMs: undefined }] }),
    'no quorum: this leader heard from 1 of 3 voters within 1000 ms (n2 silent for 1500 ms, n3 never heard from); it cannot commit, and the others may have elected a new leader',
  );
  t.equal(reason({ lead: 0, silent: [{ name: 'n3', silentMs: 3000 }] }), 'no leader: election in progress (term 4, heard from 2 of 3 voters within 1000 ms; n3 silent for 3000 ms)');
  t.equal(reason({ lead: 0, bootstrapProblem: 'slot tables disagree' }), 'no leader: election in progress (term 4, heard from 3 of 3 voters within 1000 ms); slot tables disagree');
  t.equal(reason({ role: 'candidate' }), 'no leader: this node is campaigning (candidate, term 4)');
  t.equal(reason({ leaderConnected: false }), 'leader n2 is not connected (election pending)');
  t.equal(reason({ leaderSilentMs: 2001 }), 'leader n2 not heard from for 2001 ms');
  t.equal(reason({ leaderSilentMs: 2000 }), 'ok', 'two election timeouts of silence are tolerated');
  t.equal(reason({ applied: 7 }), 'catching up: applied 7 of commit 10');
  t.equal(reason({ catchingUp: () => ({ status: 'unavailable', reason: 'catching up: applied 10 of the leader\'s commit 90' }) }), 'catching up: applied 10 of the leader\'s commit 90');
});

t.test('the order of the checks: membership, quorum, leadership, data; the catch-up is asked only last', async (t) => {
  let asked = 0;
  const catchingUp = (): undefined => void asked++;
  t.match(reason({ removed: { slot: 1, serverName: 'n1', address: 'a' }, reachable: 0, lead: 0, applied: 0, catchingUp }), /^removed/);
  t.match(reason({ reachable: 1, lead: 0, applied: 0, catchingUp }), /^no quorum: 1 of 3/);
  t.match(reason({ lead: 0, applied: 0, catchingUp }), /^no leader/);
  t.match(reason({ leaderConnected: false, applied: 0, catchingUp }), /not connected/);
  t.match(reason({ applied: 0, catchingUp }), /^catching up: applied 0 of commit 10/);
  t.equal(asked, 0, 'a node that fails an earlier check is never asked whether it caught up (it remembers the first time)');
  t.equal(reason({ catchingUp }), 'ok');
  t.equal(asked, 1);
});

// ---- membership policy ---------------------------------------------------------------------------------

const replicating = (match: number): MemberProgress => ({ match, state: 'replicate' });
const base: MembershipView = {
  self: 1, voters: [1, 2, 3], learners: [], slots: 3, replicas: 3, removed: new Set(), isUp: () => true, deadVoters: [],
  progress: new Map([[1, replicating(100)], [2, replicating(100)], [3, replicating(100)]]), commit: 100,
};
const next = (v: Partial<MembershipView>) => nextMembershipChange({ ...base, ...v });

t.test('membership: R voters and every slot a member is a fixed point', async (t) => {
  t.equal(next({}), undefined);
  t.equal(next({ slots: 5, learners: [4, 5], progress: new Map([...base.progress, [4, replicating(99)], [5, replicating(99)]]) }), undefined, 'R=3 with two learners: nothing to do');
});

t.test('membership: slots become learners; an operator removal comes first; a removed leader hands off', async (t) => {
  t.match(next({ slots: 5 }), { kind: 'change', type: ConfChangeType.addLearner, nodeId: 4 });
  t.match(next({ slots: 5, removed: new Set([4]) }), { kind: 'change', type: ConfChangeType.addLearner, nodeId: 5 }, 'a removed slot is not re-added');
  t.match(next({ removed: new Set([2]), slots: 5 }), { kind: 'change', type: ConfChangeType.remove, nodeId: 2, why: /operator/ });
  t.match(next({ removed: new Set([1]) }), { kind: 'handOff' });
});

t.test('membership: a dead voter is replaced by a caught-up learner, promote first, then remove', async (t) => {
  const progress = new Map([...base.progress, [4, replicating(90)], [5, replicating(95)]]);
  const v = { slots: 5, learners: [4, 5], deadVoters: [3], isUp: (id: number) => id !== 3, progress };
  t.match(next(v), { kind: 'change', type: ConfChangeType.promote, nodeId: 5 }, 'the most caught-up learner is promoted');
  t.equal(next({ ...v, progress: new Map([...base.progress, [4, replicating(10)], [5, replicating(20)]]) }), undefined, 'no learner close enough: it waits for one to catch up');
  t.equal(next({ ...v, learners: [4, 5], isUp: (id: number) => id !== 3 && id !== 5, progress: new Map([...base.progress, [4, replicating(10)], [5, replicating(99)]]) }), undefined, 'a disconnected learner is never promoted');
  t.match(next({ ...v, voters: [1, 2, 3, 5], learners: [4] }), { kind: 'change', type: ConfChangeType.remove, nodeId: 3 }, 'R+1 voters: the dead one goes');
});

t.test('membership: R lowered steps the least caught-up follower down; R raised promotes a replicating learner', async (t) => {
  const progress = new Map([[1, replicating(100)], [2, replicating(40)], [3, replicating(90)], [4, replicating(100)], [5, replicating(100)]]);
  t.match(next({ voters: [1, 2, 3, 4, 5], slots: 5, progress }), { kind: 'change', type: ConfChangeType.remove, nodeId: 2 });
  t.match(next({ voters: [2, 3, 4, 5, 1], self: 2, slots: 5, progress }), { kind: 'change', type: ConfChangeType.remove, nodeId: 3 }, 'never the leader itself');
  const raised = { replicas: 5, slots: 5, learners: [4, 5], commit: 1000 };
  const far = 1000 - promoteWindow - 1;
  t.match(next({ ...raised, progress: new Map([...base.progress, [4, replicating(far)], [5, replicating(1000 - promoteWindow)]]) }), { kind: 'change', type: ConfChangeType.promote, nodeId: 5 }, `within ${promoteWindow} entries of the commit`);
  t.equal(next({ ...raised, progress: new Map([...base.progress, [4, { match: 1000, state: 'probe' }], [5, replicating(far)]]) }), undefined, 'a probing or far-behind learner waits');
});

t.test('membership: a voter is dead once its route has been down for the whole grace period, counted afresh after it comes back', async (t) => {
  const watch = new VoterDownWatch(30_000);
  const down = new Set([3]);
  const isUp = (id: number): boolean => !down.has(id);
  t.same(watch.dead([1, 2, 3], isUp, 1_000), [], 'just went down');
  t.same(watch.dead([1, 2, 3], isUp, 30_999), []);
  t.same(watch.dead([1, 2, 3], isUp, 31_000), [3], 'down for the grace period');
  down.delete(3);
  t.same(watch.dead([1, 2, 3], isUp, 32_000), [], 'back up');
  down.add(3);
  t.same(watch.dead([1, 2, 3], isUp, 33_000), [], 'down again: the grace period starts over');
  t.same(watch.dead([1, 2, 3], isUp, 63_000), [3]);
});
