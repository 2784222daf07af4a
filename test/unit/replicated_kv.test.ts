// The node's KV through Raft (src/node/replicated_kv.ts) with a scripted Raft and a real KV state machine: a write
// leaves in this node's session envelope and resolves only with its own entry (this slot, this boot), the quota
// refuses before Raft, reads wait for their read index to be applied, watches replay then follow one bucket, and
// snapshot-install listeners are isolated from each other. requests.ts's own rules are in node_requests.test.ts.
import t from 'tap';
import { RaftError, RaftErrorCode, StateType, type BasicStatus } from '../../raft/index.js';
import { KvStateMachine, encodeKvCommand, type KvCommand, type KvEntry, type KvResult } from '../../store/index.js';
import { NodeErrorCode } from '../../src/node/errors.js';
import { ReplicatedKv, type KvRaft } from '../../src/node/replicated_kv.js';
import { stoppedError } from '../../src/node/requests.js';
import { newNodeMetrics } from '../../src/node/status.js';
import { decodeEnvelope } from '../../src/node/wire.js';
import { silentLogger } from '../../src/log.js';

const boot = 0x5eed;

/** A Raft following leader `lead` (0: none) that records proposals and read-index requests. */
class ScriptedRaft implements KvRaft {
  lead = 1;
  refuse = false;
  readonly proposals: Uint8Array[] = [];
  readonly readContexts: Uint8Array[] = [];

  basicStatus(): BasicStatus {
    return {
      id: 2, term: 3, vote: 1, commit: 0, lead: this.lead, state: StateType.follower, applied: 0,
      recovering: false, leaderCommit: 0, snapshotReceived: 0, snapshotBytes: 0,
    };
  }

  propose(data: Uint8Array): void {
    if (this.refuse) throw new RaftError(RaftErrorCode.proposalDropped, 'leader transfer running');
    this.proposals.push(data);
  }

  readIndex(context: Uint8Array): void {
    this.readContexts.push(context);
  }
}

function fixture(o: { maxKvBytes?: number } = {}) {
  const raft = new ScriptedRaft();
  const stateMachine = new KvStateMachine();
  const metrics = newNodeMetrics();
  const f = { raft, stateMachine, metrics, schedules: 0, stopped: false };
  const kv = new ReplicatedKv({
    serverName: 'n2', boot, timeoutMs: 5000, maxKvBytes: o.maxKvBytes, stateMachine, metrics,
    raft: () => raft, slot: () => 2, schedule: () => void f.schedules++, health: () => ({ status: 'ok' }),
    stopped: () => (f.stopped ? stoppedError('n2', undefined) : undefined), now: () => 1000, log: silentLogger(),
  });
  return { f, kv };
}

const put = (key: string, value: string): KvCommand => ({ op: 'put', bucket: 'b', key, value: Buffer.from(value), ts: 1 });
/** Lets the microtask that sends a read batch run. */
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

t.test('a write leaves in this node\'s envelope and resolves with its own entry only', async (t) => {
  const { f, kv } = fixture();
  const cmd = put('k', 'v');
  const done = kv.propose(cmd);
  t.equal(f.raft.proposals.length, 1);
  const env = decodeEnvelope(f.raft.proposals[0]!);
  t.match(env, { origin: 2, boot, seq: 1 });
  t.same(Buffer.from(env.command), Buffer.from(encodeKvCommand(cmd)), 'the command as encoded');
  t.equal(f.schedules, 1);

  const result: KvResult = { ok: true, kind: 'noop' };
  kv.writeApplied({ envelope: { ...env, boot: boot + 1 }, result: { ok: true, kind: 'noop' } });
  kv.writeApplied({ envelope: { ...env, origin: 3 }, result: { ok: true, kind: 'noop' } });
  kv.writeApplied({ envelope: env, result });
  t.equal(await done, result, 'only this slot\'s and this boot\'s entry resolves it (not an earlier run\'s, not another node\'s)');
});

t.test('without a leader, or when Raft refuses, a write waits and is proposed again on a later tick', async (t) => {
  const { f, kv } = fixture();
  f.raft.lead = 0;
  const done = kv.propose(put('k', 'v'));
  t.equal(f.raft.proposals.length, 0);
  t.equal(f.schedules, 0, 'nothing for the Ready loop');
  f.raft.lead = 1;
  f.raft.refuse = true;
  kv.retryWaiting();
  t.equal(f.raft.proposals.length, 0, 'Raft refused it: not thrown, still waiting');
  f.raft.refuse = false;
  kv.retryWaiting();
  t.equal(f.raft.proposals.length, 1);
  kv.failAll(stoppedError('n2', undefined));
  await t.rejects(done, { code: NodeErrorCode.stopped });
});

t.test('the quota refuses a write before Raft sees it', async (t) => {
  const { f, kv } = fixture({ maxKvBytes: 8 });
  const r = await kv.propose(put('k', 'far more than eight bytes'));
  t.match(r, { ok: false, code: 'EKV_QUOTA_EXCEEDED' });
  t.equal(f.raft.proposals.length, 0);
  t.equal(f.metrics.quotaRefusals, 1);
});

t.test('a read waits until its read index is applied; a stale read and a stopped node do not ask Raft', async (t) => {
  const { f, kv } = fixture();
  t.equal(await kv.read({ stale: true }), f.stateMachine, 'stale: at once');
  let served = false;
  const barrier = kv.readBarrier().then(() => { served = true; });
  await turn();
  t.equal(f.raft.readContexts.length, 1, 'one read index asked');
  kv.readStates([{ context: f.raft.readContexts[0]!, index: 1 }]);
  kv.applied();
  await turn();
  t.equal(served, false, 'index 1 is not applied yet');
  f.stateMachine.apply(1, encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }));
  kv.applied();
  await barrier;
  t.equal(served, true);

  f.stopped = true;
  await t.rejects(kv.read(), { code: NodeErrorCode.stopped });
  t.equal(f.raft.readContexts.length, 1);
});

t.test('a watch replays the bucket after a revision, then follows what is applied to it, until removed', async (t) => {
  const { f, kv } = fixture();
  const sm = f.stateMachine;
  sm.apply(1, encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }));
  sm.apply(2, encodeKvCommand({ op: 'bucket.create', bucket: 'other', config: {}, ts: 1 }));
  sm.apply(3, encodeKvCommand(put('a', '1')));
  sm.apply(4, encodeKvCommand(put('b', '2')));
  const seen: string[] = [];
  const stop = kv.backend().watch('b', 1, (e: KvEntry) => void seen.push(e.key));
  t.same(seen, ['b'], 'retained entries after revision 1');
  sm.apply(5, encodeKvCommand({ op: 'put', bucket: 'other', key: 'x', value: Buffer.from('y'), ts: 1 }));
  sm.apply(6, encodeKvCommand(put('c', '3')));
  t.same(seen, ['b', 'c'], 'another bucket\'s entries are not this watch\'s');
  stop();
  sm.apply(7, encodeKvCommand(put('d', '4')));
  t.same(seen, ['b', 'c']);
  t.equal(kv.reader, sm, 'the backend reads this node\'s state machine');
});

t.test('snapshot-install listeners are each called, a throwing one does not stop the others, and removal holds', async (t) => {
  const { kv } = fixture();
  const calls: string[] = [];
  kv.onReset(() => { throw new Error('listener bug'); });
  const off = kv.backend().onReset(() => void calls.push('a'));
  // A listener that re-subscribes itself (as KvPrincipalSource does) is called once per install, not forever.
  let offAgain: () => void = () => undefined;
  const again = (): void => {
    calls.push('b');
    offAgain();
    offAgain = kv.onReset(again);
  };
  offAgain = kv.onReset(again);
  kv.snapshotInstalled();
  t.same(calls, ['a', 'b']);
  off();
  kv.snapshotInstalled();
  t.same(calls, ['a', 'b', 'b']);
});
