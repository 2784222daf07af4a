// The request path (src/node/request_path.ts): a node's PendingRequests wired to a real RawNode and fed by the real
// Ready driver's events, on a single voter whose disk completes every write at once. test/sim runs the same wiring
// under faults; these pin down what each piece of the wiring does, so that a failure names it.
import t from 'tap';
import { EntryType, MemoryStorage, RawNode, seededRng, type Entry, type HardState } from '../../raft/index.js';
import { KvStateMachine, encodeKvCommand, type KvResult } from '../../store/index.js';
import { silentLogger } from '../../src/log.js';
import { Histogram } from '../../src/node/metrics.js';
import { ReadyDriver, type DriverStorage } from '../../src/node/ready_driver.js';
import { RequestPath } from '../../src/node/request_path.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/node/wire.js';
import { MemoryDriverStorage } from '../support/driver_storage.js';

const origin = 1;
const boot = 0x5eed;

/** Writes durable at once: what is under test is the wiring, not the disk's order. */
class InstantStorage extends MemoryDriverStorage {}

interface Harness {
  readonly raw: RawNode;
  readonly storage: InstantStorage;
  readonly sm: KvStateMachine;
  readonly path: RequestPath<KvResult>;
  readonly driver: ReadyDriver<KvResult>;
  clock: number;
}

function harness(): Harness {
  const storage = new InstantStorage();
  const raw = new RawNode({ id: origin, storage: storage.mem, rng: seededRng(7), peers: [origin], electionTicks: 10, heartbeatTicks: 1 });
  const sm = new KvStateMachine();
  // Not near 0: PendingRequests proposes a write again after a leader change once its clock is past resubmitAfterMs.
  const h = { raw, storage, sm, clock: 1_000_000 } as Harness;
  const path = new RequestPath<KvResult>({
    serverName: 'n1', boot, timeoutMs: 5000, now: () => h.clock,
    raw: () => raw, origin: () => origin, schedule: () => h.driver.schedule(), appliedIndex: () => sm.appliedIndex,
    health: () => ({ status: 'ok' }), stopped: () => undefined, metrics: { proposalSeconds: new Histogram(), proposalsFailed: 0 },
  });
  const driver = new ReadyDriver<KvResult>({
    raw, storage, sink: { send: () => undefined }, stateMachine: sm,
    clock: { now: () => h.clock, yieldTurn: () => Promise.resolve() },
    metrics: { persistSeconds: { observe: () => undefined }, snapshotsTaken: 0, snapshotsInstalled: 0 },
    logger: silentLogger(), snapshotEntries: 1_000_000,
    events: {
      softState: (ss) => path.softState(ss),
      applied: (_e, write) => path.applied(write),
      readStates: (states) => path.readStates(states),
      advanced: () => path.advanced(),
      snapshotInstalled: () => undefined,
      recoveringOnDisk: () => false,
      recovered: () => undefined,
      fatal: (err) => path.requests.failAll(err),
    },
  });
  return Object.assign(h, { path, driver });
}

/** Lets the driver's loop (microtasks) run to its end. */
const drain = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));

/** The single voter elects itself at its first Ready. */
async function elect(h: Harness): Promise<void> {
  h.driver.schedule();
  await drain();
}

const put = (key: string, value: string): Uint8Array => encodeKvCommand({ op: 'put', bucket: 'b', key, value: new TextEncoder().encode(value), ts: 1 });

/** The normal entries of the log, as the envelopes they hold. */
function envelopes(h: Harness): ReturnType<typeof decodeEnvelope>[] {
  const m = h.storage.mem;
  const all = m.entries(m.firstIndex(), m.lastIndex() + 1, Number.MAX_SAFE_INTEGER);
  return all.filter((e) => e.type === EntryType.normal && e.data.length > 0).map((e) => decodeEnvelope(e.data));
}

t.test('a write reaches Raft in this process\'s session envelope and resolves with what the state machine answered', async (t) => {
  const h = harness();
  await elect(h);
  const created = h.path.requests.submitWrite(encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }));
  const written = h.path.requests.submitWrite(put('k', 'v1'));
  await drain();
  const r = await created;
  t.ok(r.ok && r.kind === 'bucket.create', 'the bucket was created');
  const w = await written;
  t.ok(w.ok && w.kind === 'entry' && w.entry.revision === 1, 'the put answers with its entry (revision 1)');
  t.same(envelopes(h).map((e) => [e.origin, e.boot, e.seq]), [[origin, boot, 1], [origin, boot, 2]], 'each in the envelope (origin, boot, seq)');
  t.equal(h.path.requests.writesWaiting, 0);
});

t.test('without a leader a write waits unproposed; once one is elected, the tick proposes it', async (t) => {
  const h = harness();
  t.equal(h.raw.basicStatus().lead, 0, 'no leader before the first Ready');
  const p = h.path.requests.submitWrite(encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }));
  h.driver.schedule(); // the single voter elects itself
  await drain();
  t.equal(h.raw.basicStatus().lead, origin, 'elected');
  t.same(envelopes(h), [], 'nothing proposed: the election alone does not propose');
  t.equal(h.path.requests.writesWaiting, 1);
  h.path.requests.retryWaiting(); // the node's tick
  await drain();
  t.ok((await p).ok, 'proposed on the tick after the leader appeared, and applied');
  t.equal(envelopes(h).length, 1);
});

t.test('an applied write of another process (origin or boot) resolves nothing of ours', async (t) => {
  const h = harness();
  const p = h.path.requests.submitWrite(put('k', 'v'));
  let settled = false;
  void p.then(() => (settled = true), () => (settled = true));
  const result: KvResult = { ok: true, kind: 'noop' };
  h.path.applied({ envelope: decodeEnvelope(encodeEnvelope(origin, boot + 1, 1, new Uint8Array(0))), result });
  h.path.applied({ envelope: decodeEnvelope(encodeEnvelope(origin + 1, boot, 1, new Uint8Array(0))), result });
  h.path.applied(undefined);
  await drain();
  t.equal(settled, false, 'seq 1 of another boot or origin is not our seq 1');
  h.path.applied({ envelope: decodeEnvelope(encodeEnvelope(origin, boot, 1, new Uint8Array(0))), result });
  t.same(await p, result, 'ours is');
});

t.test('a linearizable read resolves once its read index is applied, and sees the write acknowledged before it', async (t) => {
  const h = harness();
  await elect(h);
  const created = h.path.requests.submitWrite(encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }));
  const written = h.path.requests.submitWrite(put('k', 'v1'));
  await drain();
  await created;
  await written;
  const read = h.path.requests.submitRead();
  t.equal(h.path.requests.readersWaiting, 1);
  await drain();
  await read;
  t.equal(h.path.requests.readersWaiting, 0);
  t.equal(new TextDecoder().decode(h.sm.get('b', 'k')?.value), 'v1');
});

t.test('a leader change is reported once, and makes a waiting write be proposed again (its copy applies once)', async (t) => {
  const h = harness();
  await elect(h);
  await h.path.requests.submitWrite(encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }));
  const state = h.raw.basicStatus().state;
  t.equal(h.path.softState({ lead: origin, state }), false, 'the leader it knows: no change');
  // Proposed, not yet applied (the driver has not run) when another leader is reported.
  const p = h.path.requests.submitWrite(put('k', 'v1'));
  t.equal(h.path.softState({ lead: 2, state }), true, 'another leader: a change');
  t.equal(h.path.softState({ lead: 2, state }), false, 'the same leader again: no change');
  h.path.requests.retryWaiting(); // the node's tick
  await drain();
  const r = await p;
  t.ok(r.ok && r.kind === 'entry' && r.entry.revision === 1, 'resolved by the first copy');
  t.same(envelopes(h).map((e) => e.seq), [1, 2, 2], 'the write was proposed twice');
  t.equal(h.sm.bucketInfo('b')?.seq, 1, 'and applied once (the session table skipped the copy)');
});
