// The Ready driver: what turns raft/'s Ready batches into effects (persist, send, apply, reads) for a cluster
// node. It was the Ready loop of node.ts; it lives here so that test/sim drives the very code the node ships
// (CONVENTIONS.md 17, TigerBeetle's VOPR running the real replica) and not an imitation of it.
//
// It talks to the outside only through narrow seams: DriverStorage (the part of store/'s RaftStorage it uses),
// MessageSink (a Raft message leaves), DriverStateMachine (apply / restore / begin a snapshot image), DriverClock
// (the time a persist took, and a turn of the event loop while a large snapshot is written) and DriverEvents
// (what the node does with a leader change, an applied write, a ReadIndex answer, an installed snapshot, a fatal
// error). It owns no pending-request bookkeeping: the node's writes and reads are resolved from those events.
//
// Why async, with the simulator owning the promises, rather than a step-wise state machine both run: the node's
// loop awaits its store (a WAL append + fdatasync) and nothing else, and that await is the only place where the
// outside world interleaves with a Ready. The simulator's storage returns promises that it resolves at a simulated
// time (or never: a crash), and after each event it drains the microtask queue to empty before it takes the next
// step (one setImmediate turn: the driver schedules itself with microtasks only, and every other wait goes
// through a seam the simulator controls). So a seed replays exactly, and the code under test is line for line
// the code the node runs; a step-wise rewrite would have been a second copy of the logic to keep in step.
import { EntryType, MessageType, StateType, decodeConfChange, type ConfState, type Entry, type HardState, type Message, type RawNode, type ReadState, type Ready, type Snapshot, type SoftState } from '../../raft/index.js';
import { MsgpackWriter, type SnapshotWriteOptions } from '../../store/index.js';
import type { Logger } from '../log.js';
import { SnapshotStaging, type StagingTarget } from './staged_restore.js';
import { AppliedSessions, beginNodeSnapshot, decodeNodeSnapshot, SnapshotTurns, type NodeImageBuild } from './sessions.js';
import { decodeEnvelope, type Envelope } from './wire.js';

/**
 * A local snapshot waits until the log since the last one holds at least 1/snapshotLogFraction of its size in bytes
 * (as well as snapshotEntries entries). The log kept in memory and replayed at restart is then at most
 * about a quarter of the state.
 */
export const snapshotLogFraction = 4;
/** A local snapshot is written in slices of this many ms of work, with a turn of the event loop between them. */
export const snapshotSliceMs = 10;

/** The part of store/'s RaftStorage the driver uses (RaftStorage implements it; so does the simulator's disk). */
export interface DriverStorage {
  /** Entries (replacing any conflicting suffix) and hard state, durable when the promise resolves. */
  save(update: { readonly hardState?: HardState; readonly entries?: readonly Entry[] }): Promise<void>;
  /** Installs a snapshot from the leader (the log after it is kept only where it matches). */
  applySnapshot(snap: Snapshot): Promise<void>;
  /** Records a local snapshot at an applied (so committed and durable) index and compacts the log up to it. */
  createSnapshotStreamed(
    index: number, conf: ConfState, write: (w: MsgpackWriter) => Generator<void, void, void>, opts: SnapshotWriteOptions,
  ): Promise<unknown>;
  /** The image of the snapshot installed last, read from where the store keeps it (a streamed file, or memory). */
  readSnapshotData(): Promise<Uint8Array>;
  /** The last durable log index. */
  lastIndex(): number;
  snapshot(): Snapshot;
  /** Size of the current snapshot's data in bytes. */
  snapshotBytes(): number;
}

/** Where a Raft message leaves (the node: the route to the peer's slot; the simulator: its network). */
export interface MessageSink {
  send(m: Message): void;
}

/** A snapshot image begun now and written over time (store/'s KvImageBuild). */
export interface DriverImageBuild {
  readonly bytesEstimate: number;
  write(w: MsgpackWriter): Generator<void, void, void>;
}

/** The replicated state machine (store/'s KvStateMachine implements it). */
export interface DriverStateMachine<Result> {
  readonly appliedIndex: number;
  /** Applies a command at `index`; an empty command only uses the index up (a conf change, a duplicate). */
  apply(index: number, command: Uint8Array): Result;
  restore(image: Uint8Array): void;
  /** restore(), giving the event loop turns (a large image takes seconds to read). */
  restoreYielding(image: Uint8Array): Promise<void>;
  beginSnapshot(): DriverImageBuild;
}

export interface DriverClock {
  /** Milliseconds, monotonic (performance.now in the node). */
  now(): number;
  /** One turn of the event loop (setImmediate in the node). */
  yieldTurn(): Promise<void>;
}

/** Counters the driver keeps up to date (the node's metrics object). */
export interface DriverMetrics {
  readonly persistSeconds: { observe(seconds: number): void };
  snapshotsTaken: number;
  snapshotsInstalled: number;
}

/** A write applied by this batch: its proposal envelope and what the state machine answered. */
export interface AppliedWrite<Result> {
  readonly envelope: Envelope;
  readonly result: Result;
}

/** What the driver tells its node. Callbacks run inside the loop: they must not throw (a throw stops the loop). */
export interface DriverEvents<Result> {
  /** The Ready carried a soft state (leader or role may have changed); called before anything else of it. */
  softState(s: SoftState): void;
  /** An entry was applied (or used up: conf change, re-submitted copy); `write` when a command was applied. */
  applied(entry: Entry, write: AppliedWrite<Result> | undefined): void;
  /** ReadIndex answers (thesis §6.4), after this batch's entries were applied. */
  readStates(states: readonly ReadState[]): void;
  /** The batch is durable, applied and acknowledged to Raft (advance): reads waiting on `applied` may go. */
  advanced(): void;
  /** The state machine was replaced by a snapshot from the leader. */
  snapshotInstalled(index: number): void;
  /** Whether the node's persisted state says it lost its data and has not caught up (cluster.json `recovering`). */
  recoveringOnDisk(): boolean;
  /** Raft ended the recovery and the Ready that says so is durable: persist that the node is whole again. */
  recovered(): void;
  /** The loop stopped for good (a disk error, a broken invariant): fail what waits, say so in health. */
  fatal(err: Error): void;
}

/**
 * Bugs the simulator plants in the driver to prove it catches them ("teeth"). Test-only: the node never sets
 * ReadyDriverOptions.plantedBug, and src/node/index.ts does not export this.
 */
export const DriverBug = {
  /** Votes and vote answers leave before the term and vote they promise are durable (Raft paper §5.2, Figure 2). */
  voteSentBeforePersist: 'driver-vote-sent-before-persist',
  /** Committed entries are applied (and answered) before the batch that carries them is durable. */
  applyBeforeDurable: 'driver-apply-before-durable',
  /** A hard state whose term or vote changed is deferred like a commit-only one, so a crash loses the vote. */
  voteChangeDeferred: 'driver-vote-change-deferred',
  /** A local snapshot's image is frozen after newer entries were applied, yet labelled with the older index. */
  snapshotOverNewer: 'driver-snapshot-over-newer',
  /** A local snapshot compacts the log up to Raft's commit index, dropping committed entries not applied yet. */
  truncateCommitted: 'driver-truncate-committed',
} as const;
export type DriverBug = (typeof DriverBug)[keyof typeof DriverBug];

export interface ReadyDriverOptions<Result> {
  readonly raw: RawNode;
  readonly storage: DriverStorage;
  readonly sink: MessageSink;
  readonly stateMachine: DriverStateMachine<Result>;
  readonly events: DriverEvents<Result>;
  readonly clock: DriverClock;
  readonly metrics: DriverMetrics;
  readonly logger: Logger;
  /** Applied entries between local snapshots (log compaction). */
  readonly snapshotEntries: number;
  /** This node's slot and the slot count, for taking turns at local snapshots (SnapshotTurns); absent: no turns. */
  readonly snapshotTurn?: () => { readonly slot: number; readonly slots: number };
  /** Snapshots parsed while they were received (staged_restore.ts); default the storage's. */
  readonly staging?: SnapshotStaging;
  /** Test-only (test/sim): a known bug switched on. */
  readonly plantedBug?: DriverBug;
}

/**
 * Drives one RawNode: one Ready at a time, persisted before what depends on it leaves or is applied. Start it with
 * restoreStoredSnapshot(), then schedule() whenever Raft may have a Ready (a step, a tick, a proposal).
 */
export class ReadyDriver<Result> {
  private readonly o: ReadyDriverOptions<Result>;
  private readonly raw: RawNode;
  private readonly storage: DriverStorage;
  private readonly log: Logger;
  private readonly bug: DriverBug | undefined;
  /** Exactly-once apply of re-submitted proposals: replicated state, travels in the snapshot (sessions.ts). */
  private readonly sessions = new AppliedSessions();
  private readonly snapshotTurns = new SnapshotTurns();
  /** Set when the state machine can take staged snapshots (KvStateMachine). */
  private readonly staging: SnapshotStaging | undefined;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private fatalError: Error | undefined;
  /** A local snapshot being written (writeSnapshot); stop() waits for it. */
  private snapshotting: Promise<void> | undefined;
  /** Bytes of the entries applied since the last snapshot (taken or installed): see maybeSnapshot. */
  private logBytesSinceSnapshot = 0;
  /** A commit-only hard state not yet written (see persist); saved with the next synced batch or at stop. */
  private deferredHardState: HardState | undefined;

  constructor(options: ReadyDriverOptions<Result>) {
    this.o = options;
    this.raw = options.raw;
    this.storage = options.storage;
    this.log = options.logger;
    this.bug = options.plantedBug;
    // Only a state machine that can restore from an arriving image gets staged snapshots (the simulator's cannot).
    const sm = options.stateMachine as Partial<StagingTarget>;
    if (typeof sm.stagedRestore === 'function') {
      this.staging = options.staging ?? new SnapshotStaging(options.logger);
      this.staging.target = sm as StagingTarget;
    }
  }

  /** Why the loop stopped for good, if it did. */
  get fatal(): Error | undefined {
    return this.fatalError;
  }

  /** Loads the stored snapshot into the state machine and the session table (at start, before any Ready). */
  restoreStoredSnapshot(): void {
    const snap = this.storage.snapshot();
    if (snap.meta.index === 0) return;
    const { kvImage, sessions } = decodeNodeSnapshot(snap.data);
    this.o.stateMachine.restore(kvImage);
    this.sessions.restore(sessions);
  }

  /** Runs the loop soon, unless it runs already (it then takes the new Ready itself). */
  schedule(): void {
    if (this.loop || this.stopping || this.fatalError) return;
    // A microtask, not setImmediate: the loop starts as soon as the current callback (a socket read holding
    // any number of frames, a parsed batch of client requests, a tick) has stepped everything it carries, so
    // batching is kept, without waiting for the event loop's check phase on every hop of a write.
    this.loop = Promise.resolve().then(() => this.runLoop()).finally(() => {
      this.loop = undefined;
      if (this.raw.hasReady()) this.schedule();
    });
  }

  /** Stops taking Readies, waits for the batch and the snapshot in flight, then writes a deferred commit index. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.loop;
    await this.snapshotting;
    if (this.deferredHardState && !this.fatalError) {
      // A clean stop leaves the latest commit index on disk, so a restart re-applies up to it at once.
      await this.storage.save({ hardState: this.deferredHardState }).catch((err: unknown) => this.log.warn({ err }, 'could not save the commit index at stop'));
      this.deferredHardState = undefined;
    }
  }

  private async runLoop(): Promise<void> {
    const raw = this.raw;
    try {
      while (!this.stopping && raw.hasReady()) {
        const rd = raw.ready();
        // Read with the Ready: if recovery ended, the vote it pinned is in rd.hardState, durable once handled.
        const recovered = this.o.events.recoveringOnDisk() && !raw.basicStatus().recovering;
        await this.handleReady(rd);
        if (recovered) this.o.events.recovered();
        raw.advance();
        this.o.events.advanced();
        await this.maybeSnapshot();
      }
    } catch (e) {
      // A disk error or a broken invariant: stop driving Raft (never send what is not durable) and
      // say so in health; the operator restarts after fixing the cause.
      this.fail(e as Error, 'raft loop stopped');
    }
  }

  private fail(err: Error, what: string): void {
    this.fatalError = err;
    this.log.fatal({ err }, what);
    this.o.events.fatal(err);
  }

  private async handleReady(rd: Ready): Promise<void> {
    if (rd.softState) this.o.events.softState(rd.softState);
    if (rd.snapshot) await this.installSnapshot(rd.snapshot);
    const late = this.sendEarly(rd);
    if (this.bug === DriverBug.applyBeforeDurable) this.applyCommitted(rd.committedEntries);
    await this.persist(rd);
    for (const m of late) this.o.sink.send(m);
    this.applyCommitted(rd.committedEntries);
    if (rd.readStates.length > 0) this.o.events.readStates(rd.readStates);
  }

  private async installSnapshot(snap: Snapshot): Promise<void> {
    await this.storage.applySnapshot(snap);
    // Yielding: a large image takes seconds to read, and the process keeps answering its routes and health. Raft's
    // snapshot data may be only a reference to the file streamed beside it (snapshot_stream.ts): read from the store.
    // A snapshot streamed to this node was parsed as it arrived (staged_restore.ts): its state is swapped in. Any
    // other (a different snapshot, a staging dropped) is read from its file, as it always was.
    const staged = this.staging?.take(snap.meta.index, snap.meta.term);
    if (staged !== undefined) {
      staged.install();
      this.sessions.restore(staged.sessions);
    } else {
      const { kvImage, sessions } = decodeNodeSnapshot(await this.storage.readSnapshotData());
      await this.o.stateMachine.restoreYielding(kvImage);
      this.sessions.restore(sessions);
    }
    this.logBytesSinceSnapshot = 0;
    this.o.metrics.snapshotsInstalled++;
    this.log.info({ index: snap.meta.index, parsed_while_received: staged !== undefined }, 'installed a snapshot from the leader');
    this.o.events.snapshotInstalled(snap.meta.index);
  }

  /**
   * Raft thesis §10.2.1: a leader may send AppendEntries while its own write is in flight, so its fsync and the
   * followers' overlap instead of adding up. Safe because (1) the leader counts itself towards a commit only
   * through this loop, which applies nothing before the save in persist() resolves, and (2) a message leaves early
   * only if the commit index it reveals is already durable here, so no follower or learner can apply an entry
   * this leader could still lose in a crash. Votes, responses and everything a follower sends wait for the save,
   * as the Ready contract requires. Returns the messages that wait.
   */
  private sendEarly(rd: Ready): readonly Message[] {
    if (rd.messages.length === 0) return rd.messages;
    if (this.bug === DriverBug.voteSentBeforePersist) {
      const held: Message[] = [];
      for (const m of rd.messages) {
        if (m.type === MessageType.vote || m.type === MessageType.voteResp) this.o.sink.send(m);
        else held.push(m);
      }
      return held;
    }
    if (this.raw.basicStatus().state !== StateType.leader) return rd.messages;
    const durable = this.storage.lastIndex();
    const held: Message[] = [];
    for (const m of rd.messages) {
      if ((m.type === MessageType.app || m.type === MessageType.heartbeat) && m.commit <= durable) this.o.sink.send(m);
      else held.push(m);
    }
    return held;
  }

  private async persist(rd: Ready): Promise<void> {
    const mustSync = this.bug === DriverBug.voteChangeDeferred ? rd.entries.length > 0 : rd.mustSync || rd.entries.length > 0;
    if (mustSync) {
      const t0 = this.o.clock.now();
      await this.storage.save({ hardState: rd.hardState ?? this.deferredHardState, entries: rd.entries });
      this.deferredHardState = undefined;
      this.o.metrics.persistSeconds.observe((this.o.clock.now() - t0) / 1000);
    } else if (rd.hardState) {
      // Only the commit index moved: it need not be durable (a restarted node relearns it from the
      // leader, as etcd's MustSync rule has it), so it rides along with the next synced write
      // instead of costing an fdatasync of its own on every node for every commit.
      this.deferredHardState = rd.hardState;
    }
  }

  private applyCommitted(entries: readonly Entry[]): void {
    const sm = this.o.stateMachine;
    for (const e of entries) {
      if (e.index <= sm.appliedIndex) continue;
      if (e.type === EntryType.confChange) {
        sm.apply(e.index, new Uint8Array(0));
        try {
          const cc = decodeConfChange(e.data);
          this.log.info({ index: e.index, type: cc.type, nodeId: cc.nodeId, voters: cc.voters }, 'configuration change applied');
        } catch {
          /* raft/ treats an undecodable change as a no-op on every node */
        }
        this.o.events.applied(e, undefined);
        continue;
      }
      const env = decodeEnvelope(e.data);
      if (!this.sessions.admit(env.origin, env.boot, env.seq, e.index)) {
        sm.apply(e.index, new Uint8Array(0)); // a re-submitted copy: applied once already
        this.o.events.applied(e, undefined);
        continue;
      }
      this.logBytesSinceSnapshot += e.data.length;
      const result = sm.apply(e.index, env.command);
      this.o.events.applied(e, { envelope: env, result });
    }
  }

  private async maybeSnapshot(): Promise<void> {
    let applied = this.o.stateMachine.appliedIndex;
    // Nodes take turns (SnapshotTurns): all at once slowed the leader and both followers, so every write. Asked on
    // every batch, so that the turn is judged over the indexes applied since the last batch, not since the last snapshot.
    const turn = this.o.snapshotTurn?.();
    const myTurn = turn === undefined || this.snapshotTurns.passed(applied, turn.slot, turn.slots, this.o.snapshotEntries);
    if (this.snapshotting !== undefined) return;
    if (applied - this.storage.snapshot().meta.index < this.o.snapshotEntries) return;
    // A snapshot rewrites the whole state: with 1M keys, one every 10,000 writes rewrote 300 MB per 3 MB written
    // (and stalled the process each time). Waiting until the log since the last one holds a fraction of its size
    // bounds that to snapshotLogFraction bytes of snapshot per byte of log, whatever the size of the state.
    if (this.logBytesSinceSnapshot * snapshotLogFraction < this.storage.snapshotBytes()) return;
    if (!myTurn) return;
    if (this.bug === DriverBug.truncateCommitted) {
      const st = this.raw.basicStatus();
      const commit = Math.min(st.commit, this.storage.lastIndex());
      if (commit > applied) {
        this.deferredHardState = { term: st.term, vote: st.vote, commit };
        applied = commit;
      }
    }
    // The store refuses a snapshot beyond the commit index it holds; a deferred commit-only hard state
    // (persist) may be what covers `applied`, so it is written first.
    if (this.deferredHardState) {
      await this.storage.save({ hardState: this.deferredHardState });
      this.deferredHardState = undefined;
    }
    // Frozen now (a sort of the keys and a copy of the row columns), written over the next turns of the event loop
    // while the Ready loop goes on: a large image takes seconds, longer than an election timeout.
    const image = this.bug === DriverBug.snapshotOverNewer ? this.lateImage() : beginNodeSnapshot(this.o.stateMachine, this.sessions);
    const conf = this.raw.confState();
    this.logBytesSinceSnapshot = 0;
    this.snapshotting = this.writeSnapshot(applied, conf, image).finally(() => {
      this.snapshotting = undefined;
    });
  }

  /** DriverBug.snapshotOverNewer: the image is begun only when the writer first runs, after a turn of the loop. */
  private lateImage(): NodeImageBuild {
    const begin = (): NodeImageBuild => beginNodeSnapshot(this.o.stateMachine, this.sessions);
    return {
      bytesEstimate: 1024,
      *write(w: MsgpackWriter) {
        yield; // a slice boundary: the Ready loop goes on and applies newer entries before the image is begun
        yield* begin().write(w);
      },
    };
  }

  /** Writes a begun snapshot in slices of snapshotSliceMs, then hands it to the store (file written outside the WAL's turn). */
  private async writeSnapshot(index: number, conf: ConfState, image: NodeImageBuild): Promise<void> {
    const clock = this.o.clock;
    const t0 = clock.now();
    try {
      // Streamed to the file as it is written, never whole in memory (RaftStorage.createSnapshotStreamed); null: stopped.
      const done = await this.storage.createSnapshotStreamed(index, conf, (w) => image.write(w), {
        sliceMs: snapshotSliceMs, stopped: () => this.stopping, now: () => clock.now(), yieldTurn: () => clock.yieldTurn(),
      });
      if (done === null) return;
    } catch (err) {
      // A snapshot from the leader installed meanwhile makes this one pointless, not wrong.
      if (this.storage.snapshot().meta.index >= index) return;
      this.fail(err as Error, 'snapshot failed; raft loop stopped');
      return;
    }
    this.o.metrics.snapshotsTaken++;
    this.log.info({ index, ms: Math.round(clock.now() - t0) }, 'snapshot taken; log compacted');
  }
}
