// Deterministic cluster simulator (TigerBeetle VOPR / etcd-io/raft test network style): one seed
// drives a 3- or 5-node cluster of raft/ RawNodes over a simulated network that drops, duplicates,
// reorders and delays messages and partitions nodes (symmetrically or one way), simulated disks whose
// writes complete after a delay and are torn by crashes, restarts from what was persisted, membership
// changes, leadership transfers, snapshots with compaction, lost disks (a node restarts empty and must
// abstain until it caught up), and clients of a tiny KV state machine.
// Invariants are checked after every step; the client history is checked for linearizability at the end.
import { ConfChangeType, MemoryStorage, MessageType, RaftAssertionError, RaftError, RawNode, StateType, seededRng } from '../../raft/index.js';
import type { Entry, HardState, Limits, Message, PlantedBug, Ready, Rng } from '../../raft/index.js';
import { checkHistory } from './linearizability.js';
import type { Op } from './linearizability.js';

/**
 * How a node drives its Ready batches. `textbook`: persist everything, then send, then apply (raft/raw_node.ts's
 * contract). `production`: what src/node/node.ts does beyond it (handleReady): a leader sends its appends and
 * heartbeats before its own write completes when the commit index they reveal is already durable (Raft thesis
 * §10.2.1), and a hard state in which only the commit index moved is not written on its own but rides with the
 * next synced write (etcd's MustSync rule), so a crash loses it.
 */
export type SimDriver = 'textbook' | 'production';

/** Bugs planted in the production driver (test-only: raft/ knows nothing of them). */
export const DriverBug = {
  /** Every node sends everything before its write completes, votes and acknowledgements included. */
  sendBeforePersist: 'driver-send-before-persist',
  /** A hard state that changed the term or vote is deferred like a commit-only one (lost in a crash). */
  voteDeferred: 'driver-vote-deferred',
} as const;
export type DriverBug = (typeof DriverBug)[keyof typeof DriverBug];

export interface SimOptions {
  readonly seed: number;
  readonly nodes: 3 | 5;
  readonly plant?: PlantedBug;
  /** Planted in the driver; implies `driver: 'production'`. */
  readonly driverBug?: DriverBug;
  /** Default: chosen by the seed (production three times in four). */
  readonly driver?: SimDriver;
  /** Ticks of the fault phase (default chosen by the seed, 300..600). */
  readonly faultTicks?: number;
}

export interface SimResult {
  readonly seed: number;
  readonly nodes: number;
  readonly driver: SimDriver;
  readonly violations: string[];
  readonly linearizable: boolean;
  /** Ticks from the end of the faults until a leader is up and every member has caught up (-1 if never). */
  readonly ticksToRecover: number;
  readonly ops: number;
  readonly ticks: number;
  /** Disks lost, and lost-disk nodes that caught up and voted again. */
  readonly disksLost: number;
  readonly disksRecovered: number;
}

const electionTicks = 10;
const heartbeatTicks = 2;
/** After the faults heal, a leader must be elected and every member caught up within this many ticks. */
export const recoverTicksMax = 400;
const opTimeoutTicks = 30;
const keys = ['a', 'b', 'c'];
const enc = new TextEncoder();
const dec = new TextDecoder();

interface WriteCmd {
  c: number;
  s: number;
  k: string;
  v: string;
}

interface Pending {
  readonly rd: Ready;
  /** The Ready's messages that wait for its write (production driver: the rest left at once). */
  readonly held: readonly Message[];
  readonly doneAt: number;
  /** A node that lost its disk finished recovering in this Ready (its pinned vote is in rd.hardState). */
  readonly recovered: boolean;
}

interface ClientOp {
  op: Op & { value: string | null; ret: number };
  readonly kind: 'read' | 'write';
  readonly node: number;
  readonly deadline: number;
  readonly ctx: string;
  readIndex: number;
  done: boolean;
}

class SimNode {
  raw: RawNode | null = null;
  storage = new MemoryStorage();
  /** Lost its disk and has not caught up yet: what the node wiring persists beside the log (cluster.json). */
  recovering = false;
  kv = new Map<string, string>();
  sessions = new Map<number, number>();
  applied = 0;
  pending: Pending | null = null;
  incarnation = 0;
  isLeader = false;
  durableCommit = 0;
  prevCommit = 0;
  /** Buggify: this node crashes when its pending write would complete (it sent messages ahead of that write). */
  crashBeforeWrite = false;
  /** Production driver: a commit-only hard state waiting for the next synced write (gone in a crash). */
  deferredHardState: HardState | null = null;
  readonly writes = new Map<string, ClientOp>();
  readonly reads = new Map<string, ClientOp>();
  readonly readsAwaitingApply: ClientOp[] = [];
  checkedLeaderTerm = 0;
  /** A stopped-the-world pause (GC, swap): no ticks, no messages, no disk until then. */
  pausedUntil = 0;
  /** Clock skew: the fraction of simulated ticks this incarnation's clock advances by. */
  tickRate = 1;
  constructor(
    readonly id: number,
    readonly peers: readonly number[],
  ) {}
}

class Violation extends Error {}

interface Client {
  readonly id: number;
  seq: number;
  busy: ClientOp | null;
  nextAt: number;
  /** The node this client talks to until it fails it (clients cache the leader they found). */
  node: number;
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
  private readonly churnFrom: number;
  private readonly churnTo: number;
  private churnNext = 0;
  private lastLeaderTerm = 0;
  private nextId: number;
  private clients: Client[] = [];
  private faulty = true;
  readonly faultTicks: number;
  /** Lost disks draw from their own generator: adding the fault left every other seed's schedule as it was. */
  private readonly diskRng: Rng & { next(): number };
  private readonly diskLossP: number;
  private disksLost = 0;
  private disksRecovered = 0;
  readonly driver: SimDriver;
  /** Draws of the production driver's buggify (crash between an early send and the write it ran ahead of). */
  private readonly buggifyRng: Rng & { next(): number };

  constructor(readonly opts: SimOptions) {
    this.rng = seededRng(opts.seed * 2654435761 + opts.nodes);
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
    const driverRng = seededRng(opts.seed * 69069 + opts.nodes * 13 + 5);
    this.driver = opts.driverBug !== undefined ? 'production' : opts.driver ?? (driverRng.int(4) === 0 ? 'textbook' : 'production');
    this.buggifyRng = driverRng;
    const peers = Array.from({ length: opts.nodes }, (_, i) => i + 1);
    for (const id of peers) {
      const n = new SimNode(id, peers);
      this.nodes.set(id, n);
      this.start(n);
    }
    this.nextId = opts.nodes + 1;
    this.clients = [1, 2, 3, 4].map((id) => ({ id, seq: 0, busy: null, nextAt: r.int(20), node: 1 + r.int(opts.nodes) }));
  }

  // ---- node lifecycle ----

  private start(n: SimNode): void {
    n.incarnation++;
    const snap = n.storage.snapshot();
    const hs = n.storage.hardState();
    if (this.driver === 'production' && hs.commit < snap.meta.index) {
      // What store/raft_storage.ts does on load (adopt): a snapshot is committed state, so the commit index is at
      // least its index, even when the commit-only hard state that followed its install was deferred and lost.
      n.storage.setHardState({ ...hs, commit: snap.meta.index });
    }
    n.applied = snap.meta.index;
    this.loadKV(n, snap.data);
    n.durableCommit = n.storage.hardState().commit;
    n.prevCommit = n.durableCommit;
    n.isLeader = false;
    n.tickRate = [1, 1, 0.9, 0.7][this.rng.int(4)]!;
    n.raw = new RawNode({
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
  }

  private crash(n: SimNode): void {
    if (!n.raw) return;
    const p = n.pending;
    if (p && !p.rd.snapshot && p.rd.entries.length > 0 && this.rng.int(2) === 0) {
      // A torn write: a prefix of the batch's entries reached the disk, the hard state did not.
      const k = this.rng.int(p.rd.entries.length + 1);
      this.persistEntries(n, p.rd.entries.slice(0, k));
    }
    n.pending = null;
    n.raw = null;
    n.deferredHardState = null;
    n.crashBeforeWrite = false;
    for (const op of [...n.writes.values(), ...n.reads.values(), ...n.readsAwaitingApply]) this.finishOp(op, false);
    n.writes.clear();
    n.reads.clear();
    n.readsAwaitingApply.length = 0;
  }

  private loadKV(n: SimNode, data: Uint8Array): void {
    n.kv = new Map();
    n.sessions = new Map();
    if (data.length === 0) return;
    const img = JSON.parse(dec.decode(data)) as { kv: [string, string][]; s: [number, number][] };
    n.kv = new Map(img.kv);
    n.sessions = new Map(img.s);
  }

  private image(n: SimNode): string {
    const kv = [...n.kv].sort(([a], [b]) => (a < b ? -1 : 1));
    const s = [...n.sessions].sort(([a], [b]) => a - b);
    return JSON.stringify({ kv, s });
  }

  // ---- the main loop ----

  run(): SimResult {
    let recovered = -1;
    const end = this.faultTicks + recoverTicksMax;
    try {
      for (this.t = 0; this.t < end; this.t++) {
        if (this.t === this.faultTicks) this.heal();
        this.deliver();
        this.tickAll();
        if (this.faulty) this.injectFaults();
        else this.restartDue();
        this.clientsStep(this.faulty);
        this.driveAll();
        if (!this.faulty && recovered < 0 && this.recoveredNow()) {
          recovered = this.t - this.faultTicks;
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
    let linearizable = true;
    if (this.violations.length === 0 || this.history.length > 0) {
      const ops = this.history.filter((o) => o.op.ret !== -1).map((o) => o.op);
      const r = checkHistory(ops);
      linearizable = r.ok;
      if (!r.ok) this.violations.push(r.exhausted ? `linearizability check exhausted its budget on key ${r.key}` : `history of key ${r.key} is not linearizable`);
    }
    return {
      seed: this.opts.seed,
      nodes: this.opts.nodes,
      driver: this.driver,
      violations: this.violations,
      linearizable,
      ticksToRecover: recovered,
      ops: this.history.length,
      ticks: this.t,
      disksLost: this.disksLost,
      disksRecovered: this.disksRecovered,
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

  private violation(msg: string): never {
    this.violations.push(`${msg} (t=${this.t})`);
    throw new Violation(msg);
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

  private sendAll(from: SimNode, msgs: readonly Message[]): void {
    for (const m of msgs) {
      if (this.faulty && this.rng.next() < this.dropP) continue;
      const copies = this.faulty && this.rng.next() < this.dupP ? 2 : 1;
      for (let i = 0; i < copies; i++) {
        const at = this.t + 1 + this.rng.int(this.delayMax);
        const q = this.queue.get(at);
        if (q) q.push(m);
        else this.queue.set(at, [m]);
      }
    }
    void from;
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
      n.raw.step(m);
      this.checkNode(n);
    }
  }

  private tickAll(): void {
    for (const n of this.nodes.values()) {
      if (!n.raw || n.pausedUntil > this.t) continue;
      if (n.tickRate < 1 && this.rng.next() >= n.tickRate) continue;
      n.raw.tick();
      this.checkNode(n);
    }
  }

  // ---- disks and the Ready loop ----

  private driveAll(): void {
    for (const n of this.nodes.values()) this.drive(n);
  }

  private drive(n: SimNode): void {
    for (let i = 0; i < 8 && n.raw && n.pausedUntil <= this.t; i++) {
      if (n.pending) {
        if (n.pending.doneAt > this.t) return;
        if (n.crashBeforeWrite) {
          n.crashBeforeWrite = false;
          this.crash(n);
          this.restartAt.set(n.id, this.t + 1 + this.buggifyRng.int(20));
          return;
        }
        this.complete(n);
        continue;
      }
      if (!n.raw.hasReady()) return;
      const rd = n.raw.ready();
      if (rd.softState) n.isLeader = rd.softState.state === StateType.leader;
      const recovered = n.recovering && !n.raw.basicStatus().recovering;
      const held = this.sendEarly(n, rd);
      // Buggify (FoundationDB style): the production driver's one risky window is between what it sent early and
      // the write that sending ran ahead of; crash there now and then, so the simulator visits it.
      if (this.faulty && held.length < rd.messages.length && this.buggifyRng.int(40) === 0) n.crashBeforeWrite = true;
      n.pending = { rd, held, doneAt: this.t + this.rng.int(this.diskDelayMax + 1), recovered };
    }
  }

  /** The production driver's early sends (node.ts handleReady); returns what waits for the write. */
  private sendEarly(n: SimNode, rd: Ready): readonly Message[] {
    if (this.driver === 'textbook' || rd.messages.length === 0) return rd.messages;
    const bug = this.opts.driverBug;
    if (bug === DriverBug.sendBeforePersist) {
      this.sendAll(n, rd.messages);
      return [];
    }
    if (n.raw!.basicStatus().state !== StateType.leader) return rd.messages;
    const durable = n.storage.lastIndex();
    const held: Message[] = [];
    for (const m of rd.messages) {
      // With one Ready in flight at a time, entries a commit index covers were written by an earlier Ready, so
      // this test never holds a message back here; node.ts keeps it as the invariant that makes sending early safe.
      const early = (m.type === MessageType.app || m.type === MessageType.heartbeat) && m.commit <= durable;
      if (early) this.sendAll(n, [m]);
      else held.push(m);
    }
    return held;
  }

  /** The hard state a completed Ready leaves on disk: node.ts's save rule for the production driver. */
  private persistHardState(n: SimNode, rd: Ready): void {
    let hs: HardState | null = rd.hardState;
    if (this.driver === 'production') {
      const mustSync = this.opts.driverBug === DriverBug.voteDeferred ? rd.entries.length > 0 : rd.mustSync || rd.entries.length > 0;
      if (!mustSync) {
        if (rd.hardState) n.deferredHardState = rd.hardState;
        return;
      }
      hs = rd.hardState ?? n.deferredHardState;
      n.deferredHardState = null;
    }
    if (!hs) return;
    if (hs.commit < n.durableCommit) this.violation(`node ${n.id} persisted commit ${hs.commit} below ${n.durableCommit}`);
    n.storage.setHardState(hs);
    n.durableCommit = hs.commit;
  }

  private persistEntries(n: SimNode, ents: readonly Entry[]): void {
    if (ents.length === 0) return;
    const st = n.storage;
    // Log matching (Raft paper §5.3), checked incrementally: an (index, term) pair always has the
    // same predecessor term and the same data. A node never overwrites an entry it knows is committed.
    // Only what it knows: an entry committed by a quorum it was not part of can still be overwritten by a
    // stale leader it follows (5 nodes: n3 commits 7@8 with n2 and n5 in term 13 while n4, leader of term
    // 12, replaces n1's copy of 7@8). That is safe, as the quorum still holds it and leader completeness
    // (checked at every election) proves no later leader lacks it; seed 4917 of 5 nodes does exactly this.
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

  private complete(n: SimNode): void {
    const { rd, held, recovered } = n.pending!;
    n.pending = null;
    const raw = n.raw!;
    const st = n.storage;
    if (rd.snapshot) {
      st.applySnapshot(rd.snapshot);
      this.loadKV(n, rd.snapshot.data);
      n.applied = rd.snapshot.meta.index;
      const want = this.stateAt.get(n.applied);
      if (want !== undefined && want !== this.image(n)) this.violation(`node ${n.id} restored a snapshot at ${n.applied} that differs from the applied state`);
    }
    this.persistEntries(n, rd.entries);
    this.persistHardState(n, rd);
    if (recovered) {
      n.recovering = false;
      this.disksRecovered++;
    }
    const commitMoved = n.isLeader && rd.hardState !== null && rd.hardState.commit > n.prevCommit;
    if (n.isLeader && rd.hardState) this.recordLeaderCommit(n, rd.hardState.term, rd.hardState.commit);
    if (this.inChurn() && ((rd.softState?.state === StateType.leader && this.rng.int(3) === 0) || (commitMoved && this.rng.int(4) === 0))) {
      // Buggify (FoundationDB style): cut a leader off at the worst moments, right after its election
      // or right after it advanced its commit index, before this batch's messages leave.
      this.isolate(new Set([n.id]), 10 + this.rng.int(30));
    }
    if (n.isLeader) this.checkLeaderCompleteness(n);
    this.sendAll(n, held);
    for (const e of rd.committedEntries) this.apply(n, e);
    for (const rs of rd.readStates) {
      const op = n.reads.get(dec.decode(rs.context));
      if (!op) continue;
      n.reads.delete(op.ctx);
      op.readIndex = rs.index;
      n.readsAwaitingApply.push(op);
    }
    this.serveReads(n);
    raw.advance();
    this.checkNode(n);
    this.maybeSnapshot(n);
  }

  private apply(n: SimNode, e: Entry): void {
    if (e.index !== n.applied + 1) this.violation(`node ${n.id} applies ${e.index} after ${n.applied}`);
    const prior = this.appliedAt.get(e.index);
    if (prior) {
      if (prior.term !== e.term || !sameBytes(prior.data, e.data)) this.violation(`state machine safety: node ${n.id} applies a different entry at ${e.index} (term ${e.term} vs ${prior.term})`);
    } else this.appliedAt.set(e.index, e);
    n.applied = e.index;
    if (e.type === 0 && e.data.length > 0) {
      const w = JSON.parse(dec.decode(e.data)) as WriteCmd;
      // Client sessions (Raft thesis §6.3): a duplicated or late proposal applies at most once.
      if ((n.sessions.get(w.c) ?? 0) < w.s) {
        n.sessions.set(w.c, w.s);
        n.kv.set(w.k, w.v);
        const op = n.writes.get(`${w.c}:${w.s}`);
        if (op) {
          n.writes.delete(op.ctx);
          this.finishOp(op, true);
        }
      }
    }
    const img = this.image(n);
    const want = this.stateAt.get(e.index);
    if (want === undefined) this.stateAt.set(e.index, img);
    else if (want !== img) this.violation(`node ${n.id} state after ${e.index} differs from another node's`);
  }

  private serveReads(n: SimNode): void {
    for (let i = 0; i < n.readsAwaitingApply.length; ) {
      const op = n.readsAwaitingApply[i]!;
      if (op.readIndex <= n.applied) {
        n.readsAwaitingApply.splice(i, 1);
        op.op.value = n.kv.get(op.op.key) ?? null;
        this.finishOp(op, true);
      } else i++;
    }
  }

  private maybeSnapshot(n: SimNode): void {
    if (!n.raw || this.rng.int(60) !== 0) return;
    const st = n.storage;
    if (n.applied <= st.snapshot().meta.index) return;
    // Pad the image so that InstallSnapshot needs several chunks.
    const img = JSON.stringify({ ...JSON.parse(this.image(n)), pad: 'x'.repeat(this.rng.int(200)) });
    st.createSnapshot(n.applied, n.raw.confState(), enc.encode(img));
    st.compact(Math.max(st.firstIndex() - 1, n.applied - this.rng.int(8)));
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
    for (const c of this.clients) {
      const op = c.busy;
      if (op) {
        if (this.t >= op.deadline) this.timeout(op);
        continue;
      }
      if (!startNew || this.t < c.nextAt) continue;
      this.startOp(c);
    }
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
    const kind = only || this.rng.int(2) === 0 ? 'read' : 'write';
    const seq = ++c.seq;
    const ctx = `${c.id}:${seq}`;
    const value = kind === 'write' ? `${c.id}.${seq}` : null;
    const op: ClientOp = {
      op: { client: c.id, kind, key, value, call: this.t, ret: Infinity },
      kind,
      node: n.id,
      deadline: this.t + opTimeoutTicks,
      ctx,
      readIndex: 0,
      done: false,
    };
    try {
      if (kind === 'write') n.raw!.propose(enc.encode(JSON.stringify({ c: c.id, s: seq, k: key, v: value! } satisfies WriteCmd)));
      else n.raw!.readIndex(enc.encode(ctx));
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      c.nextAt = this.t + 3; // refused at once: it never happened
      c.node = this.leader()?.id ?? c.node;
      return;
    }
    this.checkNode(n);
    c.busy = op;
    this.history.push(op);
    if (kind === 'write') n.writes.set(ctx, op);
    else n.reads.set(ctx, op);
  }

  private timeout(op: ClientOp): void {
    const n = this.nodes.get(op.node)!;
    const c = this.clients.find((x) => x.id === op.op.client)!;
    c.node = this.leader()?.id ?? c.node;
    n.writes.delete(op.ctx);
    n.reads.delete(op.ctx);
    const i = n.readsAwaitingApply.indexOf(op);
    if (i >= 0) n.readsAwaitingApply.splice(i, 1);
    this.finishOp(op, false);
  }

  /** ok: the response arrived now. Otherwise the outcome is unknown: a write may still take effect. */
  private finishOp(op: ClientOp, ok: boolean): void {
    if (op.done) return;
    op.done = true;
    if (ok) op.op.ret = this.t;
    else if (op.kind === 'read') op.op.ret = -1; // dropped from the history: it returned nothing
    const c = this.clients.find((x) => x.id === op.op.client)!;
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
    for (const c of this.clients) if (c.busy) this.timeout(c.busy);
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
      if (n) n.pausedUntil = this.t + 5 + r.int(60);
    }
    this.maybeLoseDisk();
    if (p(0.006)) this.membershipChange();
    if (p(0.006)) {
      const lead = this.leader();
      const voters = lead?.raw!.confState().voters ?? [];
      if (lead && voters.length > 1) lead.raw!.transferLeadership(voters[r.int(voters.length)]!);
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
  }

  private inChurn(): boolean {
    return this.faulty && this.t >= this.churnFrom && this.t < this.churnTo;
  }

  private isolate(side: ReadonlySet<number>, ticks: number): void {
    const ids = [...this.nodes.keys()];
    this.blocked.clear();
    this.partitionUntil = this.t + ticks;
    for (const a of ids) for (const b of ids) if (side.has(a) !== side.has(b)) this.blocked.add(`${a}>${b}`);
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

export function runSim(opts: SimOptions): SimResult {
  return new Simulation(opts).run();
}

/** The one command that replays a seed. */
export function reproCommand(seed: number, nodes: number, plant?: string): string {
  return `npm run sim -- --seeds 1 --seed ${seed} --nodes ${nodes}${plant ? ` --plant ${plant}` : ''}`;
}
