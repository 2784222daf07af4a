// assessHealth (src/node/health.ts): every reason /healthz gives for a node running Raft, from a view, without a
// cluster. The real clusters (test/cluster, test/fault) check that node.ts builds the view from what it sees.
import t from 'tap';
import { assessHealth, type HealthView } from '../../src/node/health.js';

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
