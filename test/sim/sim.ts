// Deterministic cluster simulator (TigerBeetle VOPR / etcd-io/raft test network style): one seed
// drives a 3- or 5-node cluster of raft/ RawNodes, each driven by the node's own Ready driver
// (src/node/ready_driver.ts, the code the product ships: early leader sends, deferred commit-only hard
// states, session de-duplication, local snapshots and installs), over a simulated network that drops,
// duplicates, reorders and delays messages and partitions nodes (symmetrically or one way), simulated
// disks whose writes complete after a delay and are torn by crashes (a crash can fall between any two
// steps of a Ready: before a write completes, between two sends, between two applies), restarts from
// what was persisted, membership changes, leadership transfers, lost disks (a node restarts empty and
// must abstain until it caught up), and clients that go through the node's request path: each simulated node holds
// store/'s KvStateMachine and the node's PendingRequests (src/node/requests.ts), wired to its Raft and driver as the
// node wires them (src/node/request_path.ts), and clients put, compare-and-set (create / update at a revision) and
// read linearizably (ReadIndex) through it. Invariants are checked after every step; the history of what the
// clients' requests resolved with is checked for linearizability at the end.
//
// Determinism with an async driver: the driver awaits only its storage and its clock's yieldTurn, both of which
// this file implements with promises it resolves at simulated times; after each step it drains the microtask
// queue (one setImmediate turn, see drain()), so the driver runs exactly as far as the simulated world allows.
// PendingRequests reads the simulated clock (ticks × tickMs) and is driven by the simulated ticks; nothing here
// waits on a real timer, so a seed replays exactly.
import { ConfChangeType, EntryType, MemoryStorage, RaftAssertionError, RaftError, RawNode, StateType, seededRng } from '../../raft/index.js';
import type { ConfState, Entry, HardState, Limits, Message, ReadState, Rng, Snapshot, SoftState } from '../../raft/index.js';
import type { PlantedBug } from '../../raft/testing.js';
import { KvErrorCode, KvStateMachine, StoreError, StoreErrorCode, MsgpackWriter, decodeKvCommand, encodeKvCommand } from '../../store/index.js';
import type { KvCommand, KvEntry, KvResult } from '../../store/index.js';
import { silentLogger } from '../../src/log.js';
import { DriverBug, ReadyDriver, snapshotSliceMs } from '../../src/node/ready_driver.js';
import type { AppliedWrite, DriverMetrics, DriverStateMachine, DriverStorage } from '../../src/node/ready_driver.js';
import { decodeNodeSnapshot } from '../../src/node/sessions.js';
import { Histogram } from '../../src/node/metrics.js';
import { RequestPath } from '../../src/node/request_path.js';
import { stoppedError } from '../../src/node/requests.js';
import { NodeError, NodeErrorCode } from '../../src/node/errors.js';
import { decodeEnvelope } from '../../src/node/wire.js';
import { checkHistory } from './linearizability.js';
import type { Op } from './linearizability.js';

export { DriverBug };

export interface SimOptions {
  readonly seed: number;
  readonly nodes: 3 | 5;
  /** A bug planted in raft/ (raft/testing.ts). */
  readonly plant?: PlantedBug;
  /** A bug planted in the node's Ready driver (src/node/ready_driver.ts DriverBug). */
  readonly driverBug?: DriverBug;
  /** Ticks of the fault phase (default chosen by the seed, 300..600). */
  readonly faultTicks?: number;
  /** Records a trace of the run (client ops, applied writes, leaders, faults) in SimResult.trace; off by default. */
  readonly trace?: boolean;
}

export interface SimResult {
  readonly seed: number;
  readonly nodes: number;
  readonly violations: string[];
  readonly linearizable: boolean;
  /** Ticks from the end of the faults until a leader is up and every member has caught up (-1 if never). */
  readonly ticksToRecover: number;
  readonly ops: number;
  readonly ticks: number;
  /** Disks lost, and lost-disk nodes that caught up and voted again. */
  readonly disksLost: number;
  readonly disksRecovered: number;
  /** The driver's local snapshots and installs of the leader's (its snapshot paths ran). */
  readonly snapshotsTaken: number;
  readonly snapshotsInstalled: number;
  /** Crashes the simulator put inside a Ready (a write that never completed after messages left, a send, an apply). */
  readonly midReadyCrashes: number;
  /** Re-submitted copies of a write the driver's session table skipped. */
  readonly duplicatesSkipped: number;
  /** Compare-and-sets answered: took effect, refused (the value differed). */
  readonly casApplied: number;
  readonly casRefused: number;
  /** Linearizable reads the request path answered (their read index applied on the node asked). */
  readonly readsServed: number;
  /** With SimOptions.trace: one line per event, `t=<tick>` first; a line about one key carries ` key=<k> `. */
  readonly trace?: readonly string[];
}

const electionTicks = 10;
const heartbeatTicks = 2;
/** After the faults heal, a leader must be elected and every member caught up within this many ticks. */
export const recoverTicksMax = 400;
/** Simulated milliseconds per tick: PendingRequests' clock, and the ts of the commands proposed. */
const tickMs = 100;
/**
 * PendingRequests' clock at tick 0. Not 0: the node's clock (performance.now) never reads 0, and PendingRequests
 * takes a submission time of 0 for "not submitted yet".
 */
const clockEpochMs = 1_000_000;
/** The node's request timeout (PendingRequests' timeoutMs), in ticks. */
const opTimeoutTicks = 30;
/** A client gives up on a node that has not answered this many ticks after the node's own timeout (a paused node). */
const clientSlackTicks = 10;
/** The setup (a leader elected, the clients' bucket created, no faults) must be done within this many ticks. */
const setupTicksMax = 200;
/** The KV bucket every client key lives in (created through the request path before the clients start). */
const bucket = 'sim';
/** Rounds of "complete the writes now due, let the drivers run" per tick (each round at least one write completes). */
const settleRoundsMax = 64;
const keys = ['a', 'b', 'c'];
const enc = new TextEncoder();
const dec = new TextDecoder();
const logger = silentLogger();

/** A client request in flight through a node's PendingRequests, and the history record it becomes. */
interface ClientOp {
  op: Op & { value: string | null; ret: number; ok?: boolean };
  readonly kind: 'read' | 'write' | 'cas';
  readonly node: number;
  /** The process the request went to: its crash leaves the outcome unknown. */
  readonly inc: Incarnation;
  /** The client gives up then (the node's own timeout answers first unless the node is paused). */
  readonly deadline: number;
  done: boolean;
}

/** What the client learned of a key: the value and the revision it holds (0: no entry), for its next CAS. */
interface Seen {
  readonly value: string | null;
  readonly revision: number;
}

/**
 * store/'s KvStateMachine behind the driver's seam, as the node hands it over, but for restoreYielding: the store's
 * yields after 10 ms of real work with setImmediate, which a slow or busy machine would turn into a different
 * interleaving per run. The simulator's images are small; they are restored in one step.
 */
function driverStateMachine(sm: KvStateMachine): DriverStateMachine<KvResult> {
  return {
    get appliedIndex() {
      return sm.appliedIndex;
    },
    apply: (index, command) => sm.apply(index, command),
    restore: (image) => sm.restore(image),
    restoreYielding: (image) => {
      sm.restore(image);
      return Promise.resolve();
    },
    beginSnapshot: () => sm.beginSnapshot(),
  };
}

/** The KV state as comparable text (the store's deterministic image: applied index, buckets, keys, revisions). */
function imageOf(sm: KvStateMachine): string {
  const b = sm.snapshot();
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('base64');
}

/** A disk write in flight: completes (or is torn by a crash) at `doneAt`. */
interface PendingIo {
  readonly doneAt: number;
  /** Entries of a save (what a crash may leave a prefix of). */
  readonly entries: readonly Entry[];
  /** Buggify: the process dies when this write would complete (messages left ahead of it). */
  readonly crash: boolean;
  run(): void;
  resolve(): void;
  reject(e: Error): void;
}

/** One run of a node's process, from start to crash: its Raft, driver, state machine and requests. */
class Incarnation {
  dead = false;
  /** Client requests waiting on this process (a crash leaves their outcome unknown). */
  readonly ops = new Set<ClientOp>();
  readonly io: PendingIo[] = [];
  /** yieldTurn() callers (a snapshot being written), let go at the next tick. */
  turns: (() => void)[] = [];
  sentSinceSave = false;
  clockMs = 0;
  lastApplied = 0;
  driver!: ReadyDriver<KvResult>;
  /** The node's PendingRequests, wired as the node wires them. */
  path!: RequestPath<KvResult>;
  constructor(
    readonly raw: RawNode,
    readonly sm: KvStateMachine,
    readonly boot: number,
  ) {}
}

class SimNode {
  raw: RawNode | null = null;
  inc: Incarnation | null = null;
  /** The disk: what survives a crash (not a lost disk). */
  storage = new MemoryStorage();
  /** Lost its disk and has not caught up yet: what the node wiring persists beside the log (cluster.json). */
  recovering = false;
  incarnation = 0;
  /** The commit index on disk: no write may lower it, and no entry at or below it may be overwritten. */
  durableCommit = 0;
  prevCommit = 0;
  checkedLeaderTerm = 0;
  /** A stopped-the-world pause (GC, swap): no ticks, no messages, no disk until then. */
  pausedUntil = 0;
  /** Clock skew: the fraction of simulated ticks this incarnation's clock advances by. */
  tickRate = 1;
  constructor(
    readonly id: number,
    readonly peers: readonly number[],
  ) {}

  get applied(): number {
    return this.inc?.sm.appliedIndex ?? 0;
  }
}

class Violation extends Error {}

interface Client {
  readonly id: number;
  seq: number;
  busy: ClientOp | null;
  nextAt: number;
  /** The node this client talks to until it fails it (clients cache the leader they found). */
  node: number;
  /** What this client last saw of each key (what its next CAS of the key expects); absent: not known. */
  readonly seen: Map<string, Seen>;
}

/** Lets every microtask run: the drivers schedule themselves with microtasks and wait only on this file's promises. */
function drain(): Promise<void> {
  return new Promise<void>((resolve) => setImmediate(resolve));
}

export class Simulation {
  readonly rng: Rng & { next(): number };
  readonly nodes = new Map<number, SimNode>();
  readonly violations: string[] = [];
  readonly history: ClientOp[] = [];
  t = 0;
  private readonly queue = new Map<number, Message[]>();
  private readonly blocked = new Set<string>(); // "from>to"
  private partitionUntil = 0;
  private readonly restartAt = new Map<number, number>();
  private readonly leaders = new Map<number, number>(); // term -> leader id
  private readonly appliedAt = new Map<number, Entry>(); // index -> entry applied somewhere
  private readonly stateAt = new Map<number, string>(); // index -> KV image after applying it
  private readonly commitTerm = new Map<number, { term: number; entryTerm: number }>();
  private readonly limits: Partial<Limits>;
  private readonly dropP: number;
  private readonly dupP: number;
  private readonly delayMax: number;
  private readonly diskDelayMax: number;
  private readonly faultRate: number;
  /** A stretch of the fault phase in which whoever leads is soon cut off or crashed (leader churn). */
  private churnFrom: number;
  private churnTo: number;
  private churnNext = 0;
  private lastLeaderTerm = 0;
  private nextId: number;
  private clients: Client[] = [];
  /** Faults are injected (from the end of the setup until they heal). */
  private faulty = false;
  readonly faultTicks: number;
  /** Lost disks draw from their own generator: adding the fault left every other seed's schedule as it was. */
  private readonly diskRng: Rng & { next(): number };
  private readonly diskLossP: number;
  private disksLost = 0;
  private disksRecovered = 0;
  /** Draws of the crashes inside a Ready (buggify), and the driver's snapshot interval. */
  private readonly buggifyRng: Rng & { next(): number };
  private readonly snapshotEntries: number;
  private midReadyCrashes = 0;
  private duplicatesSkipped = 0;
  private casApplied = 0;
  private casRefused = 0;
  private readsServed = 0;
  /** Counters every driver of this run adds to. */
  private readonly metrics: DriverMetrics = { persistSeconds: { observe: () => undefined }, snapshotsTaken: 0, snapshotsInstalled: 0 };
  /** Counters every node's PendingRequests of this run adds to. */
  private readonly requestMetrics = { proposalSeconds: new Histogram(), proposalsFailed: 0 };
  /** Values of the client writes some node applied with effect (every value is written by one request only). */
  private readonly tookEffect = new Set<string>();
  /** The clients' bucket was created (through a node's request path); until then no client starts. */
  private bucketReady = false;
  /** The process the bucket's creation was handed to, while it is in flight. */
  private bucketCreator: Incarnation | undefined;
  /** A violation seen inside a driver callback (which must not throw): the main loop stops at the next step. */
  private halted = false;
  /** SimOptions.trace's lines; undefined when tracing is off (the default: a sweep records nothing). */
  private readonly traceLines: string[] | undefined;

  constructor(readonly opts: SimOptions) {
    this.rng = seededRng(opts.seed * 2654435761 + opts.nodes);
    this.traceLines = opts.trace ? [] : undefined;
    const r = this.rng;
    const pick = <T>(xs: readonly T[]): T => xs[r.int(xs.length)]!;
    this.limits = {
      msgEntriesMax: pick([1, 1, 2, 4, 64]),
      msgBytesMax: pick([48, 1 << 20]),
      inflightMsgsMax: pick([1, 2, 8, 256]),
      snapshotChunkBytesMax: pick([16, 64, 1 << 20]),
    };
    this.dropP = pick([0, 0.02, 0.05, 0.1, 0.2]);
    this.dupP = pick([0, 0.02, 0.1]);
    this.delayMax = pick([1, 2, 3, 5]);
    this.diskDelayMax = pick([0, 1, 2]);
    this.faultRate = pick([0.5, 1, 2]);
    this.faultTicks = opts.faultTicks ?? 300 + r.int(301);
    this.churnFrom = r.int(4) !== 0 ? r.int(this.faultTicks >> 1) : this.faultTicks;
    this.churnTo = this.churnFrom + 100 + r.int(200);
    this.diskRng = seededRng(opts.seed * 40503 + opts.nodes * 7 + 1);
    this.diskLossP = [0, 0.003, 0.01][this.diskRng.int(3)]!;
    // Its own generator too, for the same reason.
    this.buggifyRng = seededRng(opts.seed * 69069 + opts.nodes * 13 + 5);
    this.snapshotEntries = [4, 8, 16, 32][this.buggifyRng.int(4)]!;
    const peers = Array.from({ length: opts.nodes }, (_, i) => i + 1);
    for (const id of peers) {
      const n = new SimNode(id, peers);
      this.nodes.set(id, n);
      this.start(n);
    }
    this.nextId = opts.nodes + 1;
    this.clients = [1, 2, 3, 4].map((id) => ({
      id, seq: 0, busy: null, nextAt: r.int(20), node: 1 + r.int(opts.nodes), seen: new Map<string, Seen>(),
    }));
  }

  // ---- node lifecycle ----

  private start(n: SimNode): void {
    n.incarnation++;
    const snap = n.storage.snapshot();
    const hs = n.storage.hardState();
    if (hs.commit < snap.meta.index) {
      // What store/raft_storage.ts does on load (adopt): a snapshot is committed state, so the commit index is at
      // least its index, even when the commit-only hard state that followed its install was deferred and lost.
      n.storage.setHardState({ ...hs, commit: snap.meta.index });
    }
    n.durableCommit = n.storage.hardState().commit;
    n.prevCommit = n.durableCommit;
    n.tickRate = [1, 1, 0.9, 0.7][this.rng.int(4)]!;
    const raw = new RawNode({
      id: n.id,
      storage: n.storage,
      rng: seededRng(this.opts.seed * 7919 + n.id * 104729 + n.incarnation),
      // A node that lost its disk must not bootstrap [1..N] again: the cluster's log says who the members are.
      peers: n.recovering ? [] : n.peers,
      ...(n.recovering ? { recovering: true } : {}),
      electionTicks,
      heartbeatTicks,
      limits: this.limits,
      ...(this.opts.plant ? { plantedBug: this.opts.plant } : {}),
    });
    const inc = new Incarnation(raw, new KvStateMachine(), n.incarnation);
    const serverName = `n${n.id}`;
    // The node's wiring (replicated_kv.ts, through request_path.ts): its PendingRequests propose in the session envelope (origin = Raft id, boot)
    // and ask for read indexes through Raft; the driver's events settle them. Only the clock is the simulator's.
    inc.path = new RequestPath<KvResult>({
      serverName,
      boot: inc.boot,
      timeoutMs: opTimeoutTicks * tickMs,
      now: () => clockEpochMs + this.t * tickMs,
      raw: () => (inc.dead ? undefined : raw),
      origin: () => n.id,
      schedule: () => inc.driver.schedule(),
      appliedIndex: () => inc.sm.appliedIndex,
      health: () => (raw.basicStatus().lead === 0 ? { status: 'unavailable', reason: 'no leader known' } : { status: 'ok' }),
      stopped: () => (inc.driver.fatal ? stoppedError(serverName, inc.driver.fatal) : undefined),
      metrics: this.requestMetrics,
    });
    inc.driver = new ReadyDriver<KvResult>({
      raw,
      storage: this.disk(n, inc),
      sink: { send: (m) => this.sendFrom(n, inc, m) },
      stateMachine: driverStateMachine(inc.sm),
      clock: {
        // Every reading is a slice later: the snapshot writer yields between all its steps, to the next tick.
        now: () => (inc.clockMs += snapshotSliceMs),
        yieldTurn: () => new Promise<void>((resolve) => inc.turns.push(resolve)),
      },
      metrics: this.metrics,
      logger,
      snapshotEntries: this.snapshotEntries,
      events: {
        softState: (ss) => this.onSoftState(n, inc, ss),
        applied: (e, w) => this.onApplied(n, inc, e, w),
        readStates: (states) => {
          this.note(() => `n${n.id} boot ${inc.boot} read indexes ${states.map((s) => s.index).join(',')} (applied ${inc.sm.appliedIndex})`);
          if (!inc.dead) inc.path.readStates(states);
        },
        advanced: () => {
          if (inc.dead) return;
          inc.path.advanced();
          this.noteLeaderCommit(n, inc);
        },
        snapshotInstalled: (index) => this.onSnapshotInstalled(n, inc, index),
        recoveringOnDisk: () => n.recovering,
        recovered: () => {
          if (inc.dead) return;
          n.recovering = false;
          this.disksRecovered++;
        },
        fatal: (err) => {
          if (inc.dead) return;
          inc.path.requests.failAll(stoppedError(serverName, err));
          this.flag(err instanceof RaftAssertionError ? `raft assertion at t=${this.t}: ${err.message}` : `node ${n.id}'s Ready driver stopped: ${err.message} (t=${this.t})`);
        },
      },
      ...(this.opts.driverBug ? { plantedBug: this.opts.driverBug } : {}),
    });
    inc.driver.restoreStoredSnapshot();
    inc.lastApplied = inc.sm.appliedIndex;
    n.raw = raw;
    n.inc = inc;
    this.note(() => `start n${n.id} boot ${inc.boot}${n.recovering ? ' recovering (lost disk)' : ''} applied ${inc.lastApplied} commit ${n.durableCommit} last ${n.storage.lastIndex()}`);
  }

  private crash(n: SimNode): void {
    const inc = n.inc;
    if (!n.raw || !inc) return;
    const p = inc.io[0];
    if (p && p.entries.length > 0 && this.rng.int(2) === 0) {
      // A torn write: a prefix of the batch's entries reached the disk, the hard state did not.
      const k = this.rng.int(p.entries.length + 1);
      this.persistEntries(n, p.entries.slice(0, k));
    }
    inc.dead = true;
    inc.io.length = 0;
    inc.turns = [];
    n.raw = null;
    n.inc = null;
    this.note(() => `crash n${n.id} boot ${inc.boot} (applied ${inc.sm.appliedIndex}, durable last ${n.storage.lastIndex()})`);
    // The connection to the client dies with the process: what it waited for is unknown (a write may still commit).
    for (const op of inc.ops) this.finishOp(op, undefined);
    inc.ops.clear();
  }

  /** Buggify: the process dies in the middle of a Ready; it restarts a little later. */
  private crashMidReady(n: SimNode): void {
    this.midReadyCrashes++;
    this.crash(n);
    this.restartAt.set(n.id, this.t + 1 + this.buggifyRng.int(20));
  }

  // ---- the main loop ----

  async run(): Promise<SimResult> {
    let recovered = -1;
    try {
      // Setup, without faults: the cluster elects a leader and the clients' bucket is created through its request
      // path (what the control plane does when a cluster is bootstrapped). The fault phase starts once it exists.
      for (this.t = 0; !this.bucketReady; this.t++) {
        if (this.t >= setupTicksMax) this.violation(`liveness: the clients' bucket was not created within ${setupTicksMax} fault-free ticks; ${this.describe()}`);
        this.deliver();
        this.tickAll();
        this.clientsStep(false);
        await this.settle();
      }
      this.startFaults();
    } catch (e) {
      if (!(e instanceof Violation) && !(e instanceof RaftAssertionError)) throw e;
      if (e instanceof RaftAssertionError) this.violations.push(`raft assertion at t=${this.t}: ${e.message}`);
      return this.result(-1);
    }
    const healAt = this.t + this.faultTicks;
    const end = healAt + recoverTicksMax;
    try {
      for (; this.t < end; this.t++) {
        if (this.t === healAt) this.heal();
        this.deliver();
        this.tickAll();
        if (this.faulty) this.injectFaults();
        else this.restartDue();
        this.clientsStep(this.faulty);
        await this.settle();
        if (!this.faulty && recovered < 0 && this.recoveredNow()) {
          recovered = this.t - healAt;
          this.startFinalReads();
        }
        if (recovered >= 0 && this.clients.every((c) => c.busy === null) && this.finalReadsDone) break;
      }
      if (recovered < 0) this.violation(`liveness: no leader with every member caught up within ${recoverTicksMax} ticks after the faults healed; ${this.describe()}`);
    } catch (e) {
      if (e instanceof Violation) {
        // recorded already
      } else if (e instanceof RaftAssertionError) {
        this.violations.push(`raft assertion at t=${this.t}: ${e.message}`);
      } else throw e;
    }
    return this.result(recovered);
  }

  /** The fault phase begins now: the fault schedule drawn at construction is counted from here. */
  private startFaults(): void {
    const t0 = this.t;
    this.faulty = true;
    this.churnFrom += t0;
    this.churnTo += t0;
    for (const c of this.clients) c.nextAt += t0;
  }

  /** Checks the clients' history and sums the run up. */
  private result(recovered: number): SimResult {
    // The run is over: every driver still waiting on a write stays waiting (its promises are never settled).
    for (const n of this.nodes.values()) if (n.inc) n.inc.dead = true;
    let linearizable = true;
    if (this.violations.length === 0 || this.history.length > 0) {
      // A write without an answer is unknown to its client, and the checker may place it anywhere after its call. One
      // that no node ever applied with effect (never committed, or a CAS refused) had none by the end of the run:
      // it leaves the history, as it could be placed after everything. What only the simulator knows: it keeps the
      // search from trying every order of the writes that timed out in a long outage (20 of them on one key took
      // 15 M steps), and it takes from the checker no order that a correct cluster needs.
      const ops = this.history
        .filter((o) => o.op.ret !== -1 && (o.kind === 'read' || o.op.ret !== Infinity || this.tookEffect.has(o.op.value!)))
        .map((o) => o.op);
      const r = checkHistory(ops);
      linearizable = r.ok;
      if (!r.ok) this.violations.push(r.exhausted ? `linearizability check exhausted its budget on key ${r.key}` : `history of key ${r.key} is not linearizable`);
    }
    return {
      seed: this.opts.seed,
      nodes: this.opts.nodes,
      violations: this.violations,
      linearizable,
      ticksToRecover: recovered,
      ops: this.history.length,
      ticks: this.t,
      disksLost: this.disksLost,
      disksRecovered: this.disksRecovered,
      snapshotsTaken: this.metrics.snapshotsTaken,
      snapshotsInstalled: this.metrics.snapshotsInstalled,
      midReadyCrashes: this.midReadyCrashes,
      duplicatesSkipped: this.duplicatesSkipped,
      casApplied: this.casApplied,
      casRefused: this.casRefused,
      readsServed: this.readsServed,
      ...(this.traceLines ? { trace: this.traceLines } : {}),
    };
  }

  /** One line per node, for failure reports. */
  describe(): string {
    return [...this.nodes.values()]
      .map((n) => {
        if (!n.raw) return `n${n.id}:down`;
        const s = n.raw.status();
        const pr = [...s.progress].map(([id, p]) => `${id}:${p.state}/${p.match}/${p.next}`).join(',');
        return `n${n.id}:${s.softState.state} t${s.hardState.term} lead${s.softState.lead} commit${s.hardState.commit} applied${n.applied} last${s.lastIndex} v[${s.conf.voters}] l[${s.conf.learners}]${pr ? ` pr[${pr}]` : ''}`;
      })
      .join(' | ');
  }

  /** A trace line (SimOptions.trace); `what` is built only when tracing, and draws nothing from the generators. */
  private note(what: () => string): void {
    this.traceLines?.push(`t=${this.t} ${what()}`);
  }

  private violation(msg: string): never {
    this.violations.push(`${msg} (t=${this.t})`);
    throw new Violation(msg);
  }

  /** A violation found inside a driver callback, which must not throw: recorded, and the run stops after this step. */
  private flag(msg: string): void {
    if (this.halted) return;
    this.halted = true;
    this.violations.push(msg.includes('(t=') ? msg : `${msg} (t=${this.t})`);
  }

  private live(): SimNode[] {
    return [...this.nodes.values()].filter((n) => n.raw !== null);
  }

  private leader(): SimNode | undefined {
    let best: SimNode | undefined;
    let bestTerm = -1;
    for (const n of this.live()) {
      const s = n.raw!.basicStatus();
      if (s.state === StateType.leader && s.term > bestTerm) {
        best = n;
        bestTerm = s.term;
      }
    }
    return best;
  }

  // ---- network ----

  /** The driver's message sink: the message enters the simulated network (or the process dies first). */
  private sendFrom(n: SimNode, inc: Incarnation, m: Message): void {
    if (inc.dead) return;
    if (this.faulty && this.buggifyRng.int(3000) === 0) {
      this.crashMidReady(n); // between two sends: the ones before left, this one and the rest do not
      return;
    }
    inc.sentSinceSave = true;
    if (this.faulty && this.rng.next() < this.dropP) return;
    const copies = this.faulty && this.rng.next() < this.dupP ? 2 : 1;
    // A paused process sends nothing until it wakes.
    const from = Math.max(this.t, n.pausedUntil);
    for (let i = 0; i < copies; i++) {
      const at = from + 1 + this.rng.int(this.delayMax);
      const q = this.queue.get(at);
      if (q) q.push(m);
      else this.queue.set(at, [m]);
    }
  }

  private deliver(): void {
    const q = this.queue.get(this.t);
    if (!q) return;
    this.queue.delete(this.t);
    for (const m of q) {
      const n = this.nodes.get(m.to);
      if (!n?.raw) continue;
      if (this.blocked.has(`${m.from}>${m.to}`)) continue;
      if (n.pausedUntil > this.t) {
        // Delivered after the pause, spread out: a waking process may serve a client first.
        const at = n.pausedUntil + 1 + this.rng.int(3);
        const later = this.queue.get(at);
        if (later) later.push(m);
        else this.queue.set(at, [m]);
        continue;
      }
      const before = n.raw.basicStatus();
      n.raw.step(m);
      this.checkNode(n);
      const after = n.raw.basicStatus();
      if (after.state === StateType.leader && after.commit > before.commit && this.inChurn() && this.rng.int(4) === 0) {
        // Buggify: cut a leader off right after it advanced its commit index, before the messages that tell it leave
        // (with the isolation after an election, the raw material of the paper's Figure 8).
        this.isolate(new Set([n.id]), 10 + this.rng.int(30));
      }
    }
  }

  private tickAll(): void {
    for (const n of this.nodes.values()) {
      if (!n.raw || n.pausedUntil > this.t) continue;
      // The node's tick (node.ts onTick): Raft's tick, then its waiting requests asked again, then expired.
      const requests = n.inc!.path.requests;
      if (n.tickRate >= 1 || this.rng.next() < n.tickRate) {
        n.raw.tick();
        this.checkNode(n);
        requests.retryWaiting();
      }
      requests.expire();
    }
  }

  // ---- disks: the driver's storage seam ----

  /** The driver's storage: reads see what is durable; a write is durable when the simulator completes it. */
  private disk(n: SimNode, inc: Incarnation): DriverStorage {
    return {
      save: (update) => {
        // Buggify (FoundationDB style): the risky window of the driver is between messages that left ahead of a write
        // and that write (a leader's early appends; a planted bug's early votes): die there now and then.
        const crash = this.faulty && inc.sentSinceSave && this.buggifyRng.int(60) === 0;
        inc.sentSinceSave = false;
        return this.io(inc, update.entries ?? [], crash, () => this.persist(n, update));
      },
      applySnapshot: (snap) => this.io(inc, [], false, () => this.installOnDisk(n, snap)),
      // The image is built in memory here (store/ streams it to its file), paced by the driver's clock as store/ paces it.
      createSnapshotStreamed: async (index, conf, write, opts) => {
        const now = opts.now ?? ((): number => this.t);
        const w = new MsgpackWriter(1024);
        const steps = write(w);
        let sliceEnd = now() + opts.sliceMs;
        for (let k = 0; !steps.next().done; k++) {
          if (k > 1_000_000) throw new Error('snapshot image: more than 1,000,000 steps');
          if (now() < sliceEnd) continue;
          if (opts.yieldTurn) await opts.yieldTurn();
          if (opts.stopped()) return null;
          sliceEnd = now() + opts.sliceMs;
        }
        const data = w.finish();
        await this.io(inc, [], false, () => this.snapshotOnDisk(n, index, conf, data));
        return true;
      },
      readSnapshotData: () => Promise.resolve(n.storage.snapshot().data),
      lastIndex: () => n.storage.lastIndex(),
      snapshot: () => n.storage.snapshot(),
      snapshotBytes: () => n.storage.snapshot().data.length,
    };
  }

  /** Queues a write; store/ runs its writes one after the other, and so do these. */
  private io(inc: Incarnation, entries: readonly Entry[], crash: boolean, run: () => void): Promise<void> {
    if (inc.dead) return new Promise<void>(() => undefined); // a dead process's write never completes
    const last = inc.io[inc.io.length - 1];
    const doneAt = Math.max(last?.doneAt ?? 0, this.t + this.rng.int(this.diskDelayMax + 1));
    return new Promise<void>((resolve, reject) => inc.io.push({ doneAt, entries, crash, run, resolve, reject }));
  }

  /** Lets the drivers run until each waits on a write not due yet (or a violation stops the run). */
  private async settle(): Promise<void> {
    for (const n of this.nodes.values()) {
      const inc = n.inc;
      if (!inc || n.pausedUntil > this.t) continue;
      const turns = inc.turns;
      inc.turns = [];
      for (const go of turns) go();
      inc.driver.schedule();
    }
    await drain();
    for (let round = 0; round < settleRoundsMax && !this.halted; round++) {
      if (!this.completeDueIo()) break;
      await drain();
    }
    if (this.halted) throw new Violation(this.violations[0] ?? 'violation');
    for (const n of this.live()) if (n.raw!.basicStatus().state === StateType.leader) this.checkLeaderCompleteness(n);
  }

  /** What a leader holds committed (as far as it is durable here), recorded for the leader-completeness check. */
  private noteLeaderCommit(n: SimNode, inc: Incarnation): void {
    if (inc.dead) return;
    const s = inc.raw.basicStatus();
    if (s.state === StateType.leader) this.recordLeaderCommit(n, s.term, Math.min(s.commit, n.storage.lastIndex()));
  }

  /** Completes every write now due; true when any completed (the drivers have work). */
  private completeDueIo(): boolean {
    let any = false;
    for (const n of this.nodes.values()) {
      const inc = n.inc;
      if (!inc || n.pausedUntil > this.t) continue;
      while (!inc.dead && inc.io.length > 0 && inc.io[0]!.doneAt <= this.t) {
        const op = inc.io[0]!;
        any = true;
        if (op.crash) {
          this.crashMidReady(n); // tears op (crash looks at inc.io[0])
          break;
        }
        inc.io.shift();
        try {
          op.run();
        } catch (e) {
          if (!(e instanceof StoreError)) throw e;
          op.reject(e);
          continue;
        }
        op.resolve();
      }
    }
    return any;
  }

  /** A save completes: entries (replacing a conflicting suffix), then the hard state. */
  private persist(n: SimNode, update: { readonly hardState?: HardState; readonly entries?: readonly Entry[] }): void {
    const st = n.storage;
    const entries = (update.entries ?? []).filter((e) => e.index > st.snapshot().meta.index);
    if (entries.length > 0 && entries[0]!.index > st.lastIndex() + 1) {
      throw new StoreError(StoreErrorCode.badRequest, `entry ${entries[0]!.index} would leave a gap after ${st.lastIndex()}`);
    }
    this.persistEntries(n, entries);
    const hs = update.hardState;
    if (!hs) return;
    if (hs.commit < n.durableCommit) this.violation(`node ${n.id} persisted commit ${hs.commit} below ${n.durableCommit}`);
    st.setHardState(hs);
    n.durableCommit = hs.commit;
  }

  /** A snapshot from the leader reaches the disk, with store/'s rule: the log after it is kept only where it matches. */
  private installOnDisk(n: SimNode, snap: Snapshot): void {
    const st = n.storage;
    const base = st.snapshot().meta.index;
    const at = snap.meta.index;
    if (at <= base) throw new StoreError(StoreErrorCode.badRequest, `snapshot at ${at} is not newer than the current one at ${base}`);
    const keep = at <= st.lastIndex() && st.term(at) === snap.meta.term;
    if (keep) {
      st.createSnapshot(at, snap.meta.conf, snap.data);
      st.compact(at);
    } else st.applySnapshot(snap);
    const hs = st.hardState();
    if (hs.commit < at) st.setHardState({ ...hs, commit: at });
    n.durableCommit = Math.max(n.durableCommit, at);
  }

  /** A local snapshot reaches the disk (store/'s checks), and the log up to it is compacted. */
  private snapshotOnDisk(n: SimNode, index: number, conf: ConfState, data: Uint8Array): void {
    const st = n.storage;
    const base = st.snapshot().meta.index;
    if (index <= base) throw new StoreError(StoreErrorCode.badRequest, `snapshot at ${index} is not newer than the current one at ${base}`);
    if (index > st.hardState().commit) throw new StoreError(StoreErrorCode.badRequest, `snapshot at ${index} is beyond the commit index ${st.hardState().commit}`);
    if (index > st.lastIndex()) throw new StoreError(StoreErrorCode.unavailable, `snapshot at ${index} is beyond the last index ${st.lastIndex()}`);
    // The image must be the state after applying exactly `index`: the log up to it is about to go. Read back with
    // the store's own restore, which also proves the image is one a restarted node can start from.
    const img = new KvStateMachine();
    img.restore(decodeNodeSnapshot(data).kvImage);
    if (img.appliedIndex !== index) this.violation(`node ${n.id} took a snapshot at ${index} whose image is the state applied through ${img.appliedIndex}`);
    const want = this.stateAt.get(index);
    if (want !== undefined && want !== imageOf(img)) this.violation(`node ${n.id} took a snapshot at ${index} that differs from the state applied there`);
    st.createSnapshot(index, conf, data);
    st.compact(index);
  }

  private persistEntries(n: SimNode, ents: readonly Entry[]): void {
    if (ents.length === 0) return;
    const st = n.storage;
    // Log matching (Raft paper §5.3), checked incrementally: an (index, term) pair always has the
    // same predecessor term and the same data. A node never overwrites an entry it knows is committed.
    // Only what it knows: an entry committed by a quorum it was not part of can still be overwritten by a
    // stale leader it follows (5 nodes: n3 commits 7@8 with n2 and n5 in term 13 while n4, leader of term
    // 12, replaces n1's copy of 7@8). That is safe, as the quorum still holds it and leader completeness
    // (checked at every election) proves no later leader lacks it.
    // What it knows is what it persisted: the batch that replaces a stale entry carries the commit index
    // that covers its replacement, so the in-memory commit is already past it.
    const known = n.durableCommit;
    const first = ents[0]!.index;
    for (let i = Math.max(first, st.firstIndex()); i <= Math.min(st.lastIndex(), known); i++) {
      const old = st.term(i);
      const e = ents[i - first];
      if (!e || e.term !== old) this.violation(`node ${n.id} overwrote entry ${i} (term ${old}) at or below its commit index ${known}`);
    }
    st.append(ents);
    for (const e of ents) {
      const prevTerm = e.index - 1 >= st.firstIndex() - 1 ? st.term(e.index - 1) : -1;
      this.checkLogMatching(n, e, prevTerm);
    }
  }

  private readonly seen = new Map<string, { prevTerm: number; data: Uint8Array }>();
  private checkLogMatching(n: SimNode, e: Entry, prevTerm: number): void {
    const k = `${e.index}:${e.term}`;
    const s = this.seen.get(k);
    if (!s) {
      this.seen.set(k, { prevTerm, data: e.data });
      return;
    }
    if ((prevTerm >= 0 && s.prevTerm >= 0 && s.prevTerm !== prevTerm) || !sameBytes(s.data, e.data)) {
      this.violation(`log matching: node ${n.id} holds a different entry ${e.index} of term ${e.term} (prev term ${prevTerm} vs ${s.prevTerm})`);
    }
  }

  // ---- the driver's events ----

  private onSoftState(n: SimNode, inc: Incarnation, ss: SoftState): void {
    if (inc.dead) return;
    this.note(() => `n${n.id} boot ${inc.boot}: ${ss.state} lead ${ss.lead} term ${inc.raw.basicStatus().term}`);
    inc.path.softState(ss);
    if (this.inChurn() && ss.state === StateType.leader && this.rng.int(3) === 0) {
      // Buggify: cut a leader off right after its election, before this batch's messages leave; now and then with
      // one follower, which then holds the orphan no-op of a higher term (the raw material of the paper's Figure 8).
      const side = new Set([n.id]);
      const others = [...this.nodes.keys()].filter((id) => id !== n.id);
      if (this.rng.int(2) === 0) side.add(others[this.rng.int(others.length)]!);
      this.isolate(side, 10 + this.rng.int(30));
    }
  }

  private onApplied(n: SimNode, inc: Incarnation, e: Entry, write: AppliedWrite<KvResult> | undefined): void {
    if (inc.dead) return;
    if (e.index !== inc.lastApplied + 1) return this.flag(`node ${n.id} applies ${e.index} after ${inc.lastApplied}`);
    inc.lastApplied = e.index;
    // Raft thesis §10.2.1's argument for the leader's early sends rests on this: nothing is applied before it is
    // durable here (so a leader counts itself towards a commit only with what it would still hold after a crash).
    const st = n.storage;
    if (e.index > st.snapshot().meta.index && (e.index > st.lastIndex() || st.term(e.index) !== e.term)) {
      return this.flag(`node ${n.id} applied entry ${e.index} (term ${e.term}) before it was durable (durable log ends at ${st.lastIndex()})`);
    }
    const prior = this.appliedAt.get(e.index);
    if (prior) {
      if (prior.term !== e.term || !sameBytes(prior.data, e.data)) return this.flag(`state machine safety: node ${n.id} applies a different entry at ${e.index} (term ${e.term} vs ${prior.term})`);
    } else this.appliedAt.set(e.index, e);
    if (write === undefined && e.type === EntryType.normal && e.data.length > 0) this.duplicatesSkipped++; // a re-submitted copy
    if (write?.result.ok && write.result.kind === 'entry') this.tookEffect.add(dec.decode(write.result.entry.value));
    this.note(() => {
      if (e.type !== EntryType.normal) return `n${n.id} applies ${e.index}@${e.term} conf change`;
      if (e.data.length === 0) return `n${n.id} applies ${e.index}@${e.term} empty`;
      const env = decodeEnvelope(e.data);
      const cmd = decodeKvCommand(env.command);
      const key = typeof cmd === 'string' || !('key' in cmd) ? '-' : cmd.key;
      const value = typeof cmd !== 'string' && 'value' in cmd && cmd.value instanceof Uint8Array ? dec.decode(cmd.value) : '';
      const r = write === undefined ? 'skipped (a copy)' : write.result.ok ? write.result.kind : `refused ${write.result.code}`;
      return `n${n.id} applies ${e.index}@${e.term} key=${key} ${typeof cmd === 'string' ? cmd : cmd.op} ${value} from n${env.origin} boot ${env.boot} seq ${env.seq}: ${r}`;
    });
    // Resolves the write's promise if this process proposed it; the client hears of it a microtask later.
    inc.path.applied(write);
    const img = imageOf(inc.sm);
    const want = this.stateAt.get(e.index);
    if (want === undefined) this.stateAt.set(e.index, img);
    else if (want !== img) return this.flag(`node ${n.id} state after ${e.index} differs from another node's`);
    if (this.faulty && this.buggifyRng.int(3000) === 0) this.crashMidReady(n); // between two applies
  }

  private onSnapshotInstalled(n: SimNode, inc: Incarnation, index: number): void {
    if (inc.dead) return;
    inc.lastApplied = inc.sm.appliedIndex;
    if (inc.lastApplied !== index) return this.flag(`node ${n.id} installed a snapshot at ${index} whose image is the state applied through ${inc.lastApplied}`);
    const want = this.stateAt.get(index);
    if (want !== undefined && want !== imageOf(inc.sm)) this.flag(`node ${n.id} restored a snapshot at ${index} that differs from the applied state`);
  }

  // ---- invariants ----

  private checkNode(n: SimNode): void {
    const s = n.raw!.basicStatus();
    if (s.state !== StateType.leader) return;
    const other = this.leaders.get(s.term);
    if (other === undefined) this.leaders.set(s.term, n.id);
    else if (other !== n.id) this.violation(`election safety: nodes ${other} and ${n.id} are both leaders of term ${s.term}`);
  }

  private recordLeaderCommit(n: SimNode, term: number, commit: number): void {
    for (let i = n.prevCommit + 1; i <= commit; i++) {
      if (this.commitTerm.has(i) || i < n.storage.firstIndex()) continue;
      this.commitTerm.set(i, { term, entryTerm: n.storage.term(i) });
    }
    n.prevCommit = Math.max(n.prevCommit, commit);
  }

  /** Raft paper §5.4: a leader of term T holds every entry committed in a term before T. */
  private checkLeaderCompleteness(n: SimNode): void {
    const term = n.storage.hardState().term;
    if (n.checkedLeaderTerm === term) return;
    n.checkedLeaderTerm = term;
    const st = n.storage;
    const snapIndex = st.snapshot().meta.index;
    for (const [i, c] of this.commitTerm) {
      if (c.term >= term || i <= snapIndex) continue;
      if (i > st.lastIndex() || st.term(i) !== c.entryTerm) {
        this.violation(`leader completeness: leader ${n.id} of term ${term} lacks entry ${i} committed in term ${c.term}`);
      }
    }
  }

  // ---- clients ----

  private clientsStep(startNew: boolean): void {
    if (!this.bucketReady) this.createBucket();
    for (const c of this.clients) {
      const op = c.busy;
      if (op) {
        if (this.t >= op.deadline) this.timedOut(op);
        continue;
      }
      if (!startNew || !this.bucketReady || this.t < c.nextAt) continue;
      this.startOp(c);
    }
  }

  /**
   * The clients' bucket, created through a leader's request path like any write, once; asked again when the
   * process it went to died or answered with an error (bucket.create of an existing bucket answers created: false).
   */
  private createBucket(): void {
    if (this.bucketCreator !== undefined && !this.bucketCreator.dead) return;
    const lead = this.leader();
    if (!lead || lead.pausedUntil > this.t) return;
    const inc = lead.inc!;
    this.bucketCreator = inc;
    const cmd: KvCommand = { op: 'bucket.create', bucket, config: {}, ts: this.t * tickMs };
    inc.path.requests.submitWrite(encodeKvCommand(cmd)).then(
      (r) => {
        if (r.ok) this.bucketReady = true;
        else this.flag(`the clients' bucket was refused: ${r.code}: ${r.message}`);
      },
      () => {
        if (this.bucketCreator === inc) this.bucketCreator = undefined;
      },
    );
  }

  private startOp(c: Client, only?: { node: SimNode; key: string }): void {
    const live = this.live();
    if (live.length === 0) return;
    let n = only?.node ?? this.nodes.get(c.node)!;
    if (!n.raw || this.rng.int(5) === 0) {
      const lead = this.leader();
      n = lead && this.rng.int(2) === 0 ? lead : live[this.rng.int(live.length)]!;
      c.node = n.id;
    }
    if (n.pausedUntil > this.t) {
      const others = live.filter((x) => x.pausedUntil <= this.t);
      if (only || others.length === 0 || this.rng.int(2) === 0) {
        c.nextAt = n.pausedUntil; // the request waits in the paused process's socket buffer
        return;
      }
      n = others[this.rng.int(others.length)]!; // or the client gives up on it and tries another node
      c.node = n.id;
    }
    const key = only?.key ?? keys[this.rng.int(keys.length)]!;
    const roll = this.rng.int(4);
    const kind = only || roll < 2 ? 'read' : roll === 2 ? 'write' : 'cas';
    const seq = ++c.seq;
    const value = kind === 'read' ? null : `${c.id}.${seq}`;
    // A CAS is a read-modify-write of what this client last saw of the key: an update at the revision it saw (so it
    // takes effect iff the key still holds that write's value: values are unique), or a create when it saw the key
    // absent or knows nothing of it (takes effect iff the key is absent: the clients never delete).
    const seen = c.seen.get(key);
    const expect = kind === 'cas' ? (seen?.value ?? null) : undefined;
    const inc = n.inc!;
    const op: ClientOp = {
      op: { client: c.id, kind, key, value, call: this.t, ret: Infinity, ...(expect !== undefined ? { expect } : {}) },
      kind,
      node: n.id,
      inc,
      deadline: this.t + opTimeoutTicks + clientSlackTicks,
      done: false,
    };
    c.busy = op;
    this.history.push(op);
    inc.ops.add(op);
    this.note(() => `invoke key=${key} c${c.id} ${kind}${value !== null ? ` ${value}` : ''}${expect !== undefined ? ` expect ${expect ?? 'absent'} (rev ${seen?.revision ?? 0})` : ''} on n${n.id} boot ${inc.boot} (${n.raw!.basicStatus().state === StateType.leader ? 'leader' : `lead ${n.raw!.basicStatus().lead}`}, applied ${inc.sm.appliedIndex})`);
    const requests = inc.path.requests;
    if (kind === 'read') {
      // The node's linearizable read (replicated_kv.ts read()): once the read index is applied, the state machine is read.
      requests.submitRead().then(
        () => this.finishOp(op, { read: inc.sm.get(bucket, key) }),
        (e: unknown) => this.timedOut(op, e),
      );
    } else {
      const ts = this.t * tickMs;
      const v = enc.encode(value!);
      const cmd: KvCommand =
        kind === 'write' ? { op: 'put', bucket, key, value: v, ts }
        : seen !== undefined && seen.revision > 0 ? { op: 'update', bucket, key, value: v, revision: seen.revision, ts }
        : { op: 'create', bucket, key, value: v, ts };
      requests.submitWrite(encodeKvCommand(cmd)).then(
        (r) => this.finishOp(op, { write: r }),
        (e: unknown) => this.timedOut(op, e),
      );
    }
    this.checkNode(n);
  }

  /**
   * No answer in time (the node's rejection `err`, or the client's own deadline when the node is silent): the client
   * tries the leader next.
   */
  private timedOut(op: ClientOp, err?: unknown): void {
    if (op.done) return;
    const c = this.clients.find((x) => x.id === op.op.client)!;
    c.node = this.leader()?.id ?? c.node;
    this.note(() => `reject key=${op.op.key} c${c.id} ${op.kind} ${op.op.value ?? ''}: ${err instanceof NodeError ? err.code : err === undefined ? 'client deadline' : String(err)}`);
    this.finishOp(op, undefined);
    // A write the node never handed to Raft (no leader until its deadline: PendingRequests answers noLeader only
    // then) is not in any log: it leaves the history, as a write Raft refused at once did. Were that answer ever
    // wrong, a read of its value would have no write to explain it, and the check would fail.
    if (err instanceof NodeError && err.code === NodeErrorCode.noLeader && op.kind !== 'read') op.op.ret = -1;
  }

  /**
   * `answer`: what the request resolved with, now. Undefined: it was rejected, timed out or its process died, and the
   * outcome is unknown (a write may still take effect; a read returned nothing and leaves the history).
   */
  private finishOp(op: ClientOp, answer: { readonly read: KvEntry | undefined } | { readonly write: KvResult } | undefined): void {
    if (op.done) return;
    op.done = true;
    op.inc.ops.delete(op);
    const c = this.clients.find((x) => x.id === op.op.client)!;
    const key = op.op.key;
    if (answer === undefined) {
      if (op.kind === 'read') op.op.ret = -1; // dropped from the history: it returned nothing
    } else if ('read' in answer) {
      op.op.ret = this.t;
      const e = answer.read?.op === 'PUT' ? answer.read : undefined;
      op.op.value = e ? dec.decode(e.value) : null;
      this.readsServed++;
      c.seen.set(key, { value: op.op.value, revision: e?.revision ?? 0 });
    } else {
      const r = answer.write;
      if (r.ok && r.kind === 'entry') {
        op.op.ret = this.t;
        c.seen.set(key, { value: op.op.value, revision: r.entry.revision });
        if (op.kind === 'cas') {
          op.op.ok = true;
          this.casApplied++;
        }
      } else if (!r.ok && op.kind === 'cas' && (r.code === KvErrorCode.keyExists || r.code === KvErrorCode.wrongRevision)) {
        op.op.ret = this.t;
        op.op.ok = false;
        this.casRefused++;
        c.seen.delete(key); // the refusal names the key's revision, not its value: the next CAS of it is a create
      } else {
        // Anything else (no bucket, a bad command) is the simulator's or the node's bug: the outcome stays unknown.
        this.flag(`client ${c.id}'s ${op.kind} of ${key} on node ${op.node} was answered ${r.ok ? r.kind : `${r.code}: ${r.message}`}`);
      }
    }
    this.note(() => {
      const o = op.op;
      const what = answer === undefined ? 'no answer' : 'read' in answer ? `read ${o.value ?? 'absent'} (applied ${op.inc.sm.appliedIndex})`
        : answer.write.ok ? `${answer.write.kind}${answer.write.kind === 'entry' ? ` rev ${answer.write.entry.revision}` : ''}` : `refused ${answer.write.code}`;
      return `return key=${key} c${c.id} ${op.kind}${op.kind !== 'read' ? ` ${o.value}` : ''} on n${op.node} boot ${op.inc.boot}: ${what} (called t=${o.call})`;
    });
    if (c.busy === op) {
      c.busy = null;
      c.nextAt = this.t + 1 + this.rng.int(6);
    }
  }

  private finalReadsDone = false;
  private finalReads: ClientOp[] = [];
  /** After recovery every key is read once through the leader: a lost acknowledged write shows up here. */
  private startFinalReads(): void {
    const lead = this.leader()!;
    for (const c of this.clients) if (c.busy) this.timedOut(c.busy);
    keys.forEach((key, i) => {
      const c = this.clients[i % this.clients.length]!;
      this.startOp(c, { node: lead, key });
      if (c.busy) this.finalReads.push(c.busy);
    });
    this.finalReadsDone = true;
  }

  // ---- faults ----

  private injectFaults(): void {
    const r = this.rng;
    const p = (x: number): boolean => r.next() < x * this.faultRate;
    this.restartDue();
    if (p(0.012)) {
      // Crash a node, the leader half of the time; restart it soon or much later.
      const live = this.live();
      const lead = this.leader();
      const n = lead && r.int(2) === 0 ? lead : live[r.int(live.length)];
      if (n) {
        this.crash(n);
        this.restartAt.set(n.id, this.t + 1 + (r.int(2) === 0 ? r.int(15) : r.int(120)));
      }
    }
    if (this.t >= this.partitionUntil && this.blocked.size > 0 && r.int(4) === 0) this.blocked.clear();
    if (p(0.01)) this.partition();
    if (p(0.01)) this.isolateLeader();
    const inChurn = this.t >= this.churnFrom && this.t < this.churnTo;
    const cur = inChurn ? this.leader() : undefined;
    const curTerm = cur ? cur.raw!.basicStatus().term : 0;
    if (cur && curTerm > this.lastLeaderTerm) {
      // A leader cut off right after its election leaves an orphan no-op of a higher term behind:
      // the raw material of the paper's Figure 8.
      this.lastLeaderTerm = curTerm;
      if (r.int(2) === 0) this.churnNext = this.t + r.int(4);
    }
    if (inChurn && this.t >= this.churnNext) {
      this.churnNext = this.t + 5 + r.int(25);
      const lead = this.leader();
      if (lead && r.int(3) === 0) {
        this.crash(lead);
        this.restartAt.set(lead.id, this.t + 1 + r.int(20));
      } else this.isolateLeader();
    }
    if (p(0.01)) {
      // A stop-the-world pause, mostly of the leader: on waking it may serve a client before it
      // hears that it was replaced (the classic lease hazard ReadIndex guards against).
      const lead = this.leader();
      const live = this.live();
      const n = lead && r.int(4) !== 0 ? lead : live[r.int(live.length)];
      if (n) {
        n.pausedUntil = this.t + 5 + r.int(60);
        this.note(() => `pause n${n.id} until ${n.pausedUntil}`);
      }
    }
    this.maybeLoseDisk();
    if (p(0.006)) this.membershipChange();
    if (p(0.006)) {
      const lead = this.leader();
      const voters = lead?.raw!.confState().voters ?? [];
      if (lead && voters.length > 1) {
        const to = voters[r.int(voters.length)]!;
        this.note(() => `transfer leadership n${lead.id} -> n${to}`);
        lead.raw!.transferLeadership(to);
      }
    }
  }

  /**
   * A replaced disk: a node restarts with empty storage (the worst case: the follower that acknowledged the
   * most, often together with a crash of the leader, so that its acknowledgements were all that made entries
   * committed). One at a time: two of three disks lost is a lost majority, which no protocol survives.
   */
  private maybeLoseDisk(): void {
    const r = this.diskRng;
    if (r.next() >= this.diskLossP) return;
    if ([...this.nodes.values()].some((n) => n.recovering)) return;
    const lead = this.leader();
    const prs = lead?.raw!.status().progress;
    const others = [...this.nodes.values()].filter((n) => n !== lead);
    if (others.length === 0) return;
    others.sort((a, b) => (prs?.get(b.id)?.match ?? 0) - (prs?.get(a.id)?.match ?? 0));
    const n = r.int(2) === 0 ? others[0]! : others[r.int(others.length)]!;
    this.crash(n);
    // Its route connections closed with the process: nothing it sent before arrives after what it sends once
    // restarted (TCP order, and a new connection only after the old one ended). Modelled as lost in flight.
    for (const q of this.queue.values()) for (let i = q.length - 1; i >= 0; i--) if (q[i]!.from === n.id) q.splice(i, 1);
    n.storage = new MemoryStorage();
    n.recovering = true;
    this.note(() => `disk lost n${n.id}`);
    n.checkedLeaderTerm = 0;
    this.disksLost++;
    this.restartAt.set(n.id, this.t + 1 + r.int(10));
    if (lead && r.int(2) === 0) {
      this.crash(lead);
      this.restartAt.set(lead.id, this.t + 1 + r.int(60));
    }
  }

  private restartDue(): void {
    for (const [id, at] of this.restartAt) {
      if (at > this.t) continue;
      this.restartAt.delete(id);
      const n = this.nodes.get(id)!;
      if (!n.raw) this.start(n);
    }
  }

  private partition(): void {
    const r = this.rng;
    const ids = [...this.nodes.keys()];
    this.blocked.clear();
    this.partitionUntil = this.t + 10 + r.int(150);
    if (r.int(2) === 0) {
      // Symmetric: a random side cut off from the rest.
      const side = new Set(ids.filter(() => r.int(2) === 0));
      for (const a of ids) for (const b of ids) if (side.has(a) !== side.has(b)) this.blocked.add(`${a}>${b}`);
    } else {
      // Asymmetric: some directed links fail.
      for (const a of ids) for (const b of ids) if (a !== b && r.int(4) === 0) this.blocked.add(`${a}>${b}`);
    }
    this.note(() => `partition until ${this.partitionUntil}: blocked ${[...this.blocked].join(' ')}`);
  }

  private inChurn(): boolean {
    return this.faulty && this.t >= this.churnFrom && this.t < this.churnTo;
  }

  private isolate(side: ReadonlySet<number>, ticks: number): void {
    const ids = [...this.nodes.keys()];
    this.blocked.clear();
    this.partitionUntil = this.t + ticks;
    for (const a of ids) for (const b of ids) if (side.has(a) !== side.has(b)) this.blocked.add(`${a}>${b}`);
    this.note(() => `isolate {${[...side].join(',')}} until ${this.partitionUntil}`);
  }

  /** Cut the leader off (alone, or with one follower) for a short while: the Figure 8 recipe. */
  private isolateLeader(): void {
    const lead = this.leader();
    if (!lead) return;
    const r = this.rng;
    const ids = [...this.nodes.keys()];
    const others = ids.filter((id) => id !== lead.id);
    const side = new Set([lead.id]);
    if (r.int(2) === 0 && others.length > 0) side.add(others[r.int(others.length)]!);
    this.blocked.clear();
    this.partitionUntil = this.t + 10 + r.int(50);
    for (const a of ids) for (const b of ids) if (side.has(a) !== side.has(b)) this.blocked.add(`${a}>${b}`);
    this.note(() => `isolate leader n${lead.id} with {${[...side].join(',')}} until ${this.partitionUntil}`);
    // A slow clock on the cut-off leader keeps it leading (check-quorum late) while others elect.
    if (r.int(2) === 0) lead.tickRate = 0.5;
  }

  private membershipChange(): void {
    const r = this.rng;
    const lead = this.leader();
    if (!lead) return;
    const raw = lead.raw!;
    const cs = raw.confState();
    const minVoters = 3;
    const maxMembers = this.opts.nodes + 2;
    const choice = r.int(3);
    try {
      if (choice === 0 && cs.voters.length + cs.learners.length < maxMembers) {
        const id = this.nextId++;
        raw.proposeConfChange({ type: ConfChangeType.addLearner, nodeId: id });
        const n = new SimNode(id, []);
        this.nodes.set(id, n);
        this.start(n);
      } else if (choice === 1 && cs.learners.length > 0) {
        const id = cs.learners[r.int(cs.learners.length)]!;
        const pr = raw.status().progress.get(id);
        if (pr && pr.match + 5 >= raw.status().lastIndex) raw.proposeConfChange({ type: ConfChangeType.promote, nodeId: id });
      } else if (choice === 2 && cs.voters.length > minVoters) {
        raw.proposeConfChange({ type: ConfChangeType.remove, nodeId: cs.voters[r.int(cs.voters.length)]! });
      }
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
    }
    this.checkNode(lead);
  }

  private heal(): void {
    this.note(() => 'heal');
    this.faulty = false;
    for (const n of this.nodes.values()) n.pausedUntil = Math.min(n.pausedUntil, this.t);
    this.blocked.clear();
    for (const id of this.restartAt.keys()) this.restartAt.set(id, this.t);
    this.restartDue();
  }

  /** A leader whose current-term entry is committed, and every member of its configuration applied up to its commit. */
  private recoveredNow(): boolean {
    const lead = this.leader();
    if (!lead) return false;
    const st = lead.raw!.status();
    if (st.hardState.commit !== st.lastIndex || st.applied !== st.hardState.commit) return false;
    for (const id of [...st.conf.voters, ...st.conf.learners]) {
      const n = this.nodes.get(id);
      if (!n?.raw) {
        // A member the faults left down (e.g. added while partitioned): bring it back.
        if (n && !this.restartAt.has(id)) this.restartAt.set(id, this.t + 1);
        return false;
      }
      const s = n.raw.basicStatus();
      if (n.applied < st.hardState.commit || s.lead !== lead.id) return false;
    }
    // Nodes removed from the configuration are shut down, as an operator would.
    for (const n of this.nodes.values()) {
      if (n.raw && !st.conf.voters.includes(n.id) && !st.conf.learners.includes(n.id)) this.crash(n);
    }
    return true;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function runSim(opts: SimOptions): Promise<SimResult> {
  return new Simulation(opts).run();
}

/** The one command that replays a seed. */
export function reproCommand(seed: number, nodes: number, plant?: string): string {
  return `npm run sim -- --seeds 1 --seed ${seed} --nodes ${nodes}${plant ? ` --plant ${plant}` : ''}`;
}
