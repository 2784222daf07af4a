// The caller's handle on one Raft node (etcd-io/raft rawnode.go). Drive it with tick(), step(),
// propose(), readIndex(), proposeConfChange(), transferLeadership(); collect work with ready(); do it
// in order (persist snapshot/entries/hard state, then send messages, then apply committed entries);
// acknowledge with advance(). The contract is asserted: a second ready() before advance() throws.
import { encodeConfChange } from './conf_change.js';
import type { ConfChange } from './conf_change.js';
import { assert } from './errors.js';
import type { Message } from './messages.js';
import { MessageType, isLocalMessage, isResponseMessage, message } from './messages.js';
import type { ProgressState } from './progress.js';
import { Raft, StateType } from './raft.js';
import type { RaftConfig } from './raft.js';
import type { ReadState } from './read_only.js';
import type { ConfState, Entry, HardState, Snapshot } from './types.js';
import { EntryType } from './types.js';

export interface SoftState {
  readonly lead: number;
  readonly state: StateType;
}

export interface Ready {
  /** Leader or role changed (volatile; not persisted). */
  readonly softState: SoftState | null;
  /** Persist before sending `messages` (term and vote make a node's promises durable, §5.2). */
  readonly hardState: HardState | null;
  /** Persist (replacing the log up to its index) and load into the state machine; before `entries`. */
  readonly snapshot: Snapshot | null;
  /** Append to the stored log before sending `messages`; an entry at an existing index replaces it and everything after. */
  readonly entries: readonly Entry[];
  /** Apply to the state machine in order, after persisting this Ready. */
  readonly committedEntries: readonly Entry[];
  /** Send after persisting this Ready. Loss, duplication and reordering are tolerated. */
  readonly messages: readonly Message[];
  /** Results of readIndex(): serve the read once the state machine has applied up to `index`. */
  readonly readStates: readonly ReadState[];
  /** hardState term/vote or entries changed: the write must be synced (fsync) before sending. */
  readonly mustSync: boolean;
}

export interface ProgressStatus {
  readonly match: number;
  readonly next: number;
  readonly state: ProgressState;
  readonly isLearner: boolean;
  readonly recentActive: boolean;
  /** The follower lost its disk and has not caught up: it counts for no quorum. */
  readonly recovering: boolean;
  /** In snapshot state: bytes of the snapshot the follower acknowledged, of its size (both 0 otherwise). */
  readonly snapshotAcked: number;
  readonly snapshotBytes: number;
}

export interface Status {
  readonly id: number;
  readonly hardState: HardState;
  readonly softState: SoftState;
  readonly applied: number;
  readonly lastIndex: number;
  readonly conf: ConfState;
  readonly leadTransferee: number;
  /** Only on the leader: its view of every member, itself included. */
  readonly progress: ReadonlyMap<number, ProgressStatus>;
}

export type RawNodeConfig = RaftConfig;

/** The cheap part of Status (no allocation per member), for callers that poll it often. */
export interface BasicStatus {
  readonly id: number;
  readonly term: number;
  readonly vote: number;
  readonly commit: number;
  readonly lead: number;
  readonly state: StateType;
  readonly applied: number;
  /** RaftConfig.recovering: true until this node, having lost its disk, holds the leader's commit index. */
  readonly recovering: boolean;
  /** The leader's own commit index as its heartbeats tell it (0: not known); on the leader, its commit index. */
  readonly leaderCommit: number;
  /** Snapshot bytes received of `snapshotBytes` while one is streamed to this node (both 0 otherwise). */
  readonly snapshotReceived: number;
  readonly snapshotBytes: number;
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

export class RawNode {
  private readonly raft: Raft;
  private prevHardState: HardState;
  private prevSoftState: SoftState;
  private outstanding: Ready | null = null;
  private outstandingHardState: HardState | null = null;

  constructor(cfg: RawNodeConfig) {
    this.raft = new Raft(cfg);
    this.prevHardState = cfg.storage.initialState().hardState;
    this.prevSoftState = { lead: this.raft.lead, state: this.raft.state };
  }

  /** Advances logical time by one tick (election and heartbeat timers count ticks). */
  tick(): void {
    this.raft.tick();
  }

  /** Starts an election now (pre-vote first when enabled). */
  campaign(): void {
    this.raft.step(message({ type: MessageType.hup, from: this.raft.id }));
  }

  /** Proposes a command. Throws RaftError ERAFT_PROPOSAL_DROPPED when this node cannot take it. */
  propose(data: Uint8Array): void {
    this.proposeEntries([data]);
  }

  /** Proposes several commands as one batch (one append message per follower). */
  proposeEntries(datas: readonly Uint8Array[]): void {
    const entries: Entry[] = datas.map((data) => ({ term: 0, index: 0, type: EntryType.normal, data }));
    this.raft.step(message({ type: MessageType.prop, from: this.raft.id, entries }));
  }

  /** Proposes a membership change; it takes effect on each node when the entry is applied. */
  proposeConfChange(cc: ConfChange): void {
    const entries: Entry[] = [{ term: 0, index: 0, type: EntryType.confChange, data: encodeConfChange(cc) }];
    this.raft.step(message({ type: MessageType.prop, from: this.raft.id, entries }));
  }

  /** Feeds a message received from a peer. Local-only kinds and responses from non-members are ignored. */
  step(m: Message): void {
    if (isLocalMessage(m.type)) return;
    if (isResponseMessage(m.type) && !this.raft.prs.has(m.from) && this.raft.state === StateType.leader) return;
    this.raft.step(m, true);
  }

  /**
   * Asks for a linearizable read; `context` identifies the request (unique per caller: the leader tells callers
   * apart, and a resent request may reuse it; read_only.ts). The answer arrives as a ReadState in a later Ready.
   * Throws when no leader is known.
   */
  readIndex(context: Uint8Array): void {
    this.raft.step(message({ type: MessageType.readIndex, from: this.raft.id, context }));
  }

  /**
   * The snapshot being sent to `id` outside Raft (a stream beside it) failed: etcd's ReportSnapshot(SnapshotFailure).
   * The leader probes the follower again from its match, and sends the then-newest snapshot when the log no longer
   * reaches it; without this a failed stream would be offered again with the snapshot it started with, which a newer
   * local snapshot may have replaced. No-op unless this node leads and `id` is in the snapshot state.
   */
  reportSnapshotFailure(id: number): void {
    this.raft.reportSnapshotFailure(id);
  }

  /** Asks the leader to hand leadership to `transferee` (forwarded if this node is a follower). */
  transferLeadership(transferee: number): void {
    this.raft.step(message({ type: MessageType.transferLeader, from: this.raft.id, index: transferee }));
  }

  hasReady(): boolean {
    if (this.outstanding) return false;
    const r = this.raft;
    if (r.msgs.length > 0 || r.readStates.length > 0 || r.hasPendingBroadcast()) return true;
    if (r.raftLog.unstable.entries.length > 0 || r.raftLog.unstable.snapshot !== null) return true;
    if (r.raftLog.hasNextCommittedEntries()) return true;
    if (!sameHardState(r.hardState(), this.prevHardState)) return true;
    return r.lead !== this.prevSoftState.lead || r.state !== this.prevSoftState.state;
  }

  ready(): Ready {
    assert(this.outstanding === null, 'ready() called again before advance(): the Ready/advance contract is broken');
    const r = this.raft;
    r.flushBroadcast();
    const hs = r.hardState();
    let hardState: HardState | null = sameHardState(hs, this.prevHardState) ? null : hs;
    this.outstandingHardState = hardState;
    if (hardState && r.bug === 'vote-not-persisted') hardState = { ...hardState, vote: 0 };
    const soft = r.lead !== this.prevSoftState.lead || r.state !== this.prevSoftState.state ? { lead: r.lead, state: r.state } : null;
    const entries = r.raftLog.unstableEntries().slice();
    const rd: Ready = {
      softState: soft,
      hardState,
      snapshot: r.raftLog.unstable.snapshot,
      entries,
      committedEntries: r.raftLog.nextCommittedEntries(r.limits.applyBytesMax),
      messages: r.msgs,
      readStates: r.readStates,
      mustSync: entries.length > 0 || (hardState !== null && (hardState.term !== this.prevHardState.term || hardState.vote !== this.prevHardState.vote)),
    };
    r.msgs = [];
    r.readStates = [];
    this.outstanding = rd;
    return rd;
  }

  /** The last ready() has been done: persisted, sent and applied. */
  advance(): void {
    const rd = this.outstanding;
    assert(rd !== null, 'advance() without a ready(): the Ready/advance contract is broken');
    this.outstanding = null;
    const r = this.raft;
    if (this.outstandingHardState) this.prevHardState = this.outstandingHardState;
    if (rd.softState) this.prevSoftState = rd.softState;
    if (rd.snapshot) {
      r.raftLog.stableSnapTo(rd.snapshot.meta.index);
      if (rd.snapshot.meta.index > r.raftLog.applied) r.raftLog.applied = rd.snapshot.meta.index;
    }
    if (rd.entries.length > 0) {
      const last = rd.entries[rd.entries.length - 1]!;
      r.raftLog.stableTo(last.index, last.term);
    }
    const ce = rd.committedEntries;
    if (ce.length > 0) {
      r.raftLog.appliedTo(ce[ce.length - 1]!.index);
      for (const e of ce) if (e.type === EntryType.confChange) r.applyConfChangeEntry(e);
      r.reduceUncommitted(ce);
      // A configuration of one voter, this node: it elects itself at once (no one else can vote).
      const v = r.conf.voters;
      if (v.length === 1 && v[0] === r.id && r.state !== StateType.leader) r.hup(false);
    }
  }

  /** The configuration as of the last applied entry (what a snapshot taken now must record). */
  confState(): ConfState {
    return this.raft.conf;
  }

  basicStatus(): BasicStatus {
    const r = this.raft;
    const snap = r.snapshotTransfer();
    return {
      id: r.id, term: r.term, vote: r.vote, commit: r.raftLog.committed, lead: r.lead, state: r.state, applied: r.raftLog.applied,
      recovering: r.recovering, leaderCommit: r.state === StateType.leader ? r.raftLog.committed : r.leaderCommit,
      snapshotReceived: snap.received, snapshotBytes: snap.total,
    };
  }

  status(): Status {
    const r = this.raft;
    const progress = new Map<number, ProgressStatus>();
    if (r.state === StateType.leader) {
      for (const [id, p] of r.prs) progress.set(id, { match: p.match, next: p.next, state: p.state, isLearner: p.isLearner, recentActive: p.recentActive, recovering: p.recovering,
        snapshotAcked: p.snapshot ? p.snapOffset : 0, snapshotBytes: p.snapshot?.data.length ?? 0 });
    }
    return {
      id: r.id,
      hardState: r.hardState(),
      softState: { lead: r.lead, state: r.state },
      applied: r.raftLog.applied,
      lastIndex: r.raftLog.lastIndex(),
      conf: r.conf,
      leadTransferee: r.leadTransferee,
      progress,
    };
  }
}
