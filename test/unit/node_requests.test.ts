// The node's pending requests (src/node/requests.ts) without a cluster: a hand-moved clock, and Raft's propose and
// readIndex replaced by recorders whose answer the test chooses. The real clusters (test/cluster, test/kv) check
// that replicated_kv.ts feeds it what Raft says.
import t from 'tap';
import { NodeErrorCode, type NodeError } from '../../src/node/errors.js';
import { Histogram } from '../../src/node/metrics.js';
import type { Health } from '../../src/node/health.js';
import { PendingRequests, resubmitAfterMs, stoppedError, type PendingRequestsOptions } from '../../src/node/requests.js';

const boot = 0xabc;

interface Harness {
  readonly requests: PendingRequests<string>;
  readonly proposed: number[];
  readonly asked: Uint8Array[];
  readonly metrics: { proposalSeconds: Histogram; proposalsFailed: number };
  clock: number;
  leader: boolean;
  health: Health;
  stopped: NodeError | undefined;
}

function harness(over: Partial<PendingRequestsOptions> = {}): Harness {
  const h: Harness = {
    proposed: [], asked: [], metrics: { proposalSeconds: new Histogram(), proposalsFailed: 0 }, clock: 1000, leader: true,
    health: { status: 'ok' }, stopped: undefined,
    requests: undefined as unknown as PendingRequests<string>,
  };
  const requests = new PendingRequests<string>({
    serverName: 'n1', boot, timeoutMs: 5000, now: () => h.clock,
    propose: (seq) => {
      if (!h.leader) return false;
      h.proposed.push(seq);
      return true;
    },
    readIndex: (ctx) => {
      if (!h.leader) return false;
      h.asked.push(ctx);
      return true;
    },
    health: () => h.health, stopped: () => h.stopped, metrics: h.metrics, ...over,
  });
  return Object.assign(h, { requests });
}

/** Lets the microtask that sends a read batch run. */
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
/** The ReadState raft/ would return for the read batch whose context is `ctx`. */
const answer = (ctx: Uint8Array, index: number) => ({ context: ctx, index });

t.test('a write is proposed at once and resolved with its result when its entry applies', async (t) => {
  const h = harness();
  const p = h.requests.submitWrite(new Uint8Array([1]));
  t.same(h.proposed, [1]);
  t.equal(h.requests.writesWaiting, 1);
  h.clock += 3;
  h.requests.writeApplied(1, 'done');
  t.equal(await p, 'done');
  t.equal(h.requests.writesWaiting, 0);
  t.equal(h.metrics.proposalSeconds.count, 1);
  t.equal(h.metrics.proposalSeconds.sum, 0.003, 'the proposal time runs from submission to apply');
  h.requests.writeApplied(1, 'again');
  t.equal(h.metrics.proposalSeconds.count, 1, 'a second copy of the same entry resolves nothing');
});

t.test('a write without a leader waits; the tick proposes it once there is one, and again after a leader change', async (t) => {
  const h = harness();
  h.leader = false;
  const p = h.requests.submitWrite(new Uint8Array([1]));
  t.same(h.proposed, []);
  h.leader = true;
  h.requests.retryWaiting();
  t.same(h.proposed, [1]);
  h.requests.retryWaiting();
  t.same(h.proposed, [1], 'submitted and not yet stale: not asked again');
  h.clock += resubmitAfterMs + 1;
  h.requests.retryWaiting();
  t.same(h.proposed, [1, 1], `unanswered for ${resubmitAfterMs} ms: proposed again (copies apply once)`);
  h.requests.leaderChanged();
  h.requests.retryWaiting();
  t.same(h.proposed, [1, 1, 1], 'a new leader: proposed again at once');
  h.requests.writeApplied(1, 'ok');
  t.equal(await p, 'ok');
});

t.test('an expired write says whether it reached Raft, with the node\'s health as the reason', async (t) => {
  const h = harness();
  h.leader = false;
  const never = h.requests.submitWrite(new Uint8Array([1]));
  h.leader = true;
  const lost = h.requests.submitWrite(new Uint8Array([2]));
  h.health = { status: 'unavailable', reason: 'no quorum: 1 of 3 voters reachable' };
  h.clock += 4999;
  h.requests.expire();
  t.equal(h.requests.writesWaiting, 2, 'not before the deadline');
  h.clock += 1;
  h.requests.expire();
  await t.rejects(never, { code: NodeErrorCode.noLeader, retryable: true, message: 'no leader within 5000 ms on n1: no quorum: 1 of 3 voters reachable; retry' });
  await t.rejects(lost, { code: NodeErrorCode.timeout, message: /^write not applied within 5000 ms on n1 \(outcome unknown: it may still commit; retry if the command is idempotent\): no quorum/ });
  t.equal(h.metrics.proposalsFailed, 2);
  t.equal(h.requests.writesWaiting, 0);
});

t.test('concurrent reads share one ReadIndex; a read arriving meanwhile waits for the next round trip', async (t) => {
  const h = harness();
  const served: string[] = [];
  const first = [h.requests.submitRead(), h.requests.submitRead(), h.requests.submitRead()].map((p, i) => p.then(() => served.push(`a${i}`)));
  t.equal(h.asked.length, 0, 'sent after the current callback, so every read it carries joins');
  await turn();
  t.equal(h.asked.length, 1, 'three reads, one request');
  const later = h.requests.submitRead().then(() => served.push('b'));
  await turn();
  t.equal(h.asked.length, 1, 'a request is in flight: the new read does not join it (its index could predate a write the read must see)');
  t.equal(h.requests.readersWaiting, 4);
  h.requests.readIndexesArrived([answer(h.asked[0]!, 7)]);
  t.equal(h.asked.length, 2, 'the answer sends the batch gathered meanwhile');
  h.requests.serveReads(6);
  await turn();
  t.same(served, [], 'not served before the read index is applied here');
  h.requests.serveReads(7);
  await Promise.all(first);
  t.same(served, ['a0', 'a1', 'a2']);
  h.requests.readIndexesArrived([answer(h.asked[1]!, 9)]);
  h.requests.serveReads(9);
  await later;
  t.equal(h.requests.readersWaiting, 0);
});

t.test('a read index of another process (boot) or of an unknown shape is ignored', async (t) => {
  const h = harness();
  let served = false;
  const p = h.requests.submitRead().then(() => { served = true; });
  await turn();
  const ctx = h.asked[0]!;
  const other = Uint8Array.from(ctx);
  new DataView(other.buffer).setUint32(0, boot + 1);
  h.requests.readIndexesArrived([answer(other, 5), answer(new Uint8Array(4), 5)]);
  h.requests.serveReads(100);
  await turn();
  t.equal(served, false);
  h.requests.readIndexesArrived([answer(ctx, 0)]);
  h.requests.serveReads(1);
  await p;
  t.equal(served, true, 'an index of 0 counts as 1: the read waits for at least one applied entry');
});

t.test('reads without a leader are asked for on the tick; an unanswered request is asked again; expiry names the cause', async (t) => {
  const h = harness();
  h.leader = false;
  const p = h.requests.submitRead();
  await turn();
  t.equal(h.asked.length, 0);
  h.leader = true;
  h.requests.retryWaiting();
  t.equal(h.asked.length, 1);
  h.clock += resubmitAfterMs + 1;
  h.requests.retryWaiting();
  t.equal(h.asked.length, 2, 'the request may be lost with a route or a leader: asked again');
  h.clock += 5000;
  h.health = { status: 'unavailable', reason: 'leader n2 is not connected (election pending)' };
  h.requests.expire();
  await t.rejects(p, { code: NodeErrorCode.noLeader, message: 'linearizable read not served within 5000 ms on n1: leader n2 is not connected (election pending); retry, or read stale' });
  t.equal(h.requests.readersWaiting, 0);
});

t.test('writes and readers share one bound: at waitingMax the next of either is refused as overloaded', async (t) => {
  const h = harness({ waitingMax: 3 });
  const writes = [h.requests.submitWrite(new Uint8Array([1])), h.requests.submitWrite(new Uint8Array([2]))];
  const read = h.requests.submitRead();
  await t.rejects(h.requests.submitWrite(new Uint8Array([3])), { code: NodeErrorCode.overloaded, retryable: true, message: '2 writes and 1 linearizable reads are already waiting on n1 (at most 3); retry later' });
  await t.rejects(h.requests.submitRead(), { code: NodeErrorCode.overloaded, message: /retry later, or read stale$/ });
  h.requests.writeApplied(1, 'ok');
  await writes[0];
  const again = h.requests.submitRead();
  t.equal(h.requests.readersWaiting, 2, 'room again once one is done');
  h.requests.failAll(new Error('end'));
  await t.rejects(Promise.all([writes[1]!, read, again]), { message: 'end' });
});

t.test('failAll fails everything waiting; a stopped node refuses new requests with why it stopped', async (t) => {
  const h = harness();
  const w = h.requests.submitWrite(new Uint8Array([1]));
  const r = h.requests.submitRead();
  h.stopped = stoppedError('n1', new Error('EIO: disk gone'));
  h.requests.failAll(h.stopped);
  await t.rejects(w, { code: NodeErrorCode.stopped, retryable: false, message: 'node n1 stopped replicating: EIO: disk gone' });
  await t.rejects(r, { code: NodeErrorCode.stopped });
  t.equal(h.requests.writesWaiting + h.requests.readersWaiting, 0);
  await t.rejects(h.requests.submitWrite(new Uint8Array([2])), h.stopped);
  await t.rejects(h.requests.submitRead(), h.stopped);
  t.equal(stoppedError('n1', undefined).message, 'node n1 is stopping');
  t.equal(h.proposed.length, 1, 'nothing proposed after the stop');
});

