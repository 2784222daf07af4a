// The node's Ready driver (src/node/ready_driver.ts) on its own, one rule per test, named after the rule: a RawNode
// and the real KV state machine behind a storage whose writes complete only when the test says so, so each test
// sees exactly what left and what was applied while a write was in flight. test/sim runs the same driver under
// faults; these pin the rules down where a failure names the rule broken.
import t from 'tap';
import { MemoryStorage, MessageType, RawNode, StateType, message, seededRng, type Entry, type HardState, type Message } from '../../raft/index.js';
import { KvStateMachine } from '../../store/index.js';
import { silentLogger } from '../../src/log.js';
import { DriverBug, ReadyDriver, type DriverStorage } from '../../src/node/ready_driver.js';
import type { KvResult } from '../../store/index.js';
import { MemoryDriverStorage } from '../support/driver_storage.js';

interface HeldSave {
  readonly hardState: HardState | undefined;
  readonly entries: readonly Entry[];
  complete(): void;
}

/** A MemoryStorage whose saves wait for complete(): what is durable is what the test completed. */
class HeldStorage extends MemoryDriverStorage {
  readonly held: HeldSave[] = [];
  saves = 0;

  override save(update: { readonly hardState?: HardState; readonly entries?: readonly Entry[] }): Promise<void> {
    this.saves++;
    return new Promise<void>((resolve) => {
      this.held.push({
        hardState: update.hardState,
        entries: update.entries ?? [],
        complete: () => {
          this.persist(update);
          resolve();
        },
      });
    });
  }
}

/** Lets every microtask (the driver's loop) run. */
const drain = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));

interface Harness {
  raw: RawNode;
  storage: HeldStorage;
  sent: Message[];
  sm: KvStateMachine;
  driver: ReadyDriver<KvResult>;
  fatal: Error[];
}

function harness(id: number, plantedBug?: DriverBug): Harness {
  const storage = new HeldStorage();
  const raw = new RawNode({ id, storage: storage.mem, rng: seededRng(id), peers: [1, 2, 3], electionTicks: 10, heartbeatTicks: 1, preVote: false });
  const sent: Message[] = [];
  const fatal: Error[] = [];
  const sm = new KvStateMachine();
  const driver = new ReadyDriver<KvResult>({
    raw,
    storage,
    sink: { send: (m) => sent.push(m) },
    stateMachine: sm,
    clock: { now: () => 0, yieldTurn: () => Promise.resolve() },
    metrics: { persistSeconds: { observe: () => undefined }, snapshotsTaken: 0, snapshotsInstalled: 0 },
    logger: silentLogger(),
    snapshotEntries: 1_000_000,
    ...(plantedBug !== undefined ? { plantedBug } : {}),
    events: {
      softState: () => undefined,
      applied: () => undefined,
      readStates: () => undefined,
      advanced: () => undefined,
      snapshotInstalled: () => undefined,
      recoveringOnDisk: () => false,
      recovered: () => undefined,
      fatal: (e) => fatal.push(e),
    },
  });
  return { raw, storage, sent, sm, driver, fatal };
}

/** Completes held saves (and the ones they lead to) until the driver waits on nothing. */
async function completeAll(storage: HeldStorage): Promise<void> {
  for (let i = 0; i < 32; i++) {
    await drain();
    const s = storage.held.shift();
    if (!s) return;
    s.complete();
  }
  throw new Error('the driver kept saving: more than 32 saves in a row');
}

/** Node 1 campaigns and wins with node 2's vote (its bootstrap batch durable first). */
async function electNode1(h: Harness): Promise<void> {
  h.driver.schedule();
  await completeAll(h.storage);
  h.raw.campaign();
  h.driver.schedule();
  await completeAll(h.storage);
  h.raw.step(message({ type: MessageType.voteResp, from: 2, to: 1, term: h.raw.basicStatus().term }));
  h.driver.schedule();
}

t.test('Raft §5.2: a vote leaves only once the term and vote it promises are durable', async (t) => {
  const h = harness(2);
  h.driver.schedule();
  await completeAll(h.storage);
  h.raw.step(message({ type: MessageType.vote, from: 1, to: 2, term: 2, index: 3, logTerm: 1 }));
  h.driver.schedule();
  await drain();
  t.equal(h.storage.held.length, 1, 'the vote is being written');
  t.same(h.storage.held[0]!.hardState, { term: 2, vote: 1, commit: h.storage.held[0]!.hardState?.commit ?? -1 }, 'the write holds term 2 and the vote for node 1');
  t.equal(h.sent.filter((m) => m.type === MessageType.voteResp).length, 0, 'no answer while the write is in flight');
  await completeAll(h.storage);
  const answers = h.sent.filter((m) => m.type === MessageType.voteResp);
  t.equal(answers.length, 1, 'the answer leaves once the write completed');
  t.equal(answers[0]!.reject, false, 'and grants the vote');
  t.same(h.fatal, [], 'no fatal error');
});

t.test('Raft thesis §10.2.1: a leader sends its appends before its own write completes; nothing is applied before it does', async (t) => {
  const h = harness(1);
  await electNode1(h);
  await drain();
  t.equal(h.raw.basicStatus().state, StateType.leader, 'node 1 leads');
  const pending = h.storage.held.at(-1);
  t.ok(pending !== undefined && pending.entries.length > 0, 'the leader\'s empty entry is being written');
  const appends = h.sent.filter((m) => m.type === MessageType.app && m.entries.length > 0);
  t.ok(appends.length > 0, 'its appends left while that write is in flight');
  t.ok(appends.every((m) => m.commit <= h.storage.lastIndex()), 'each reveals only a commit index durable here');
  const appliedBefore = h.sm.appliedIndex;
  h.raw.step(message({ type: MessageType.appResp, from: 2, to: 1, term: h.raw.basicStatus().term, index: pending!.entries.at(-1)!.index }));
  h.driver.schedule();
  await drain();
  t.equal(h.sm.appliedIndex, appliedBefore, 'a quorum acknowledged, yet nothing is applied while the leader\'s own write is in flight');
  await completeAll(h.storage);
  t.equal(h.sm.appliedIndex, pending!.entries.at(-1)!.index, 'applied once durable');
  t.same(h.fatal, [], 'no fatal error');
});

t.test('etcd MustSync: a hard state in which only the commit index moved is not written alone; stop() writes it', async (t) => {
  const h = harness(1);
  await electNode1(h);
  await completeAll(h.storage);
  const last = h.storage.lastIndex();
  const savesBefore = h.storage.saves;
  h.raw.step(message({ type: MessageType.appResp, from: 2, to: 1, term: h.raw.basicStatus().term, index: last }));
  h.driver.schedule();
  await completeAll(h.storage);
  t.equal(h.raw.basicStatus().commit, last, 'the commit index moved');
  t.equal(h.sm.appliedIndex, last, 'and its entries were applied');
  t.equal(h.storage.saves, savesBefore, 'without a write of its own');
  t.ok(h.storage.mem.hardState().commit < last, 'the durable commit index lags behind');
  const stopped = h.driver.stop();
  await completeAll(h.storage);
  await stopped;
  t.equal(h.storage.mem.hardState().commit, last, 'stop() wrote the deferred commit index');
  t.same(h.fatal, [], 'no fatal error');
});

// The rules above can fail: with the driver's planted bugs, what they assert does not hold.
t.test('teeth: with the bug planted, the vote answer leaves before its write and an entry is applied before its batch is durable', async (t) => {
  const voter = harness(2, DriverBug.voteSentBeforePersist);
  voter.driver.schedule();
  await completeAll(voter.storage);
  voter.raw.step(message({ type: MessageType.vote, from: 1, to: 2, term: 2, index: 3, logTerm: 1 }));
  voter.driver.schedule();
  await drain();
  t.equal(voter.storage.held.length, 1, 'the vote is being written');
  t.equal(voter.sent.filter((m) => m.type === MessageType.voteResp).length, 1, 'and its answer already left');

  const follower = harness(2, DriverBug.applyBeforeDurable);
  follower.driver.schedule();
  await drain();
  t.ok(follower.storage.held.length === 1 && follower.storage.lastIndex() === 0, 'the bootstrap batch is being written, nothing durable yet');
  t.ok(follower.sm.appliedIndex > 0, `yet the state machine applied through ${follower.sm.appliedIndex}`);
});
