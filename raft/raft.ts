// The Raft roles (follower, pre-candidate, candidate, leader) as one deterministic state machine,
// modelled on etcd-io/raft raft.go. Input: tick() and step(message); output: messages in `msgs`,
// read results in `readStates`, and log changes that RawNode turns into Ready batches.
// Section references are to the Raft paper (Ongaro & Ousterhout 2014) and Ongaro's thesis (2014).
import { ConfChangeType, applyConfChange, decodeConfChange, encodeConfChange } from './conf_change.js';
import type { ConfChange } from './conf_change.js';
import { RaftError, RaftErrorCode, assert } from './errors.js';
import { RaftLog, termCompacted } from './log.js';
import type { Message, MessageType as MessageTypeT } from './messages.js';
import { MessageType, campaignTransferContext, emptyBytes, entriesBytes, isCampaignTransfer, isResponseMessage, message } from './messages.js';
import { Progress, ProgressState } from './progress.js';
import { VoteResult, committedIndex, hasQuorum, voteResult } from './quorum.js';
import { ReadOnly } from './read_only.js';
import type { ReadState } from './read_only.js';
import type { Rng } from './rng.js';
import type { Storage } from './storage.js';
import type { ConfState, Entry, HardState, Snapshot } from './types.js';
import { EntryType } from './types.js';

export const StateType = {
  follower: 'follower',
  preCandidate: 'preCandidate',
  candidate: 'candidate',
  leader: 'leader',
} as const;
export type StateType = (typeof StateType)[keyof typeof StateType];

/** Named limits; every one bounds something that grows with outside input. */
export interface Limits {
  /** Entries per append message. */
  readonly msgEntriesMax: number;
  /** Payload bytes per append message (at least one entry is always sent). */
  readonly msgBytesMax: number;
  /** Append messages in flight to one follower in replicate state. */
  readonly inflightMsgsMax: number;
  /** Payload bytes in flight to one follower (0: unbounded). */
  readonly inflightBytesMax: number;
  /** Payload bytes the leader holds uncommitted before it drops proposals (0: unbounded). */
  readonly uncommittedBytesMax: number;
  /** Bytes of snapshot data per InstallSnapshot chunk. */
  readonly snapshotChunkBytesMax: number;
  /** Payload bytes of committed entries handed out per Ready. */
  readonly applyBytesMax: number;
}

export const defaultLimits: Limits = {
  msgEntriesMax: 4096,
  msgBytesMax: 1 << 20,
  inflightMsgsMax: 256,
  inflightBytesMax: 32 << 20,
  uncommittedBytesMax: 64 << 20,
  snapshotChunkBytesMax: 256 << 10,
  applyBytesMax: 64 << 20,
};

/**
 * Known bugs that test/sim plants to prove it can catch them ("teeth"). Test-only: production callers
 * never set RaftConfig.plantedBug.
 */
export const PlantedBug = {
  /** Commit by counting replicas of an entry of an older term (Raft paper §5.4.2, Figure 8). */
  commitOldTerm: 'commit-old-term',
  /** Grant votes without the candidate's-log-is-up-to-date check (§5.4.1). */
  voteNoUpToDate: 'vote-no-uptodate',
  /** Grant a second vote in the same term. */
  voteTwice: 'vote-twice',
  /** Answer ReadIndex without a heartbeat round confirming leadership (thesis §6.4 step 3). */
  readIndexNoQuorum: 'read-index-no-quorum',
  /** Commit what any single voter has, not a majority. */
  commitWithoutMajority: 'commit-without-majority',
  /** Never persist the vote, so a restarted node may vote again in the same term. */
  voteNotPersisted: 'vote-not-persisted',
  /** A node that lost its disk votes at once, as if its empty log and forgotten vote were real state. */
  recoveringVotes: 'recovering-votes',
} as const;
export type PlantedBug = (typeof PlantedBug)[keyof typeof PlantedBug];

export interface RaftConfig {
  /** This node's id, a positive integer. */
  readonly id: number;
  /** Election timeout in ticks; the randomized timeout lies in [electionTicks, 2*electionTicks). */
  readonly electionTicks: number;
  /** Leader heartbeat interval in ticks; must be less than electionTicks. */
  readonly heartbeatTicks: number;
  readonly storage: Storage;
  readonly rng: Rng;
  /**
   * Initial voters of a brand-new cluster (every node must be given the same list). Used only when
   * storage is empty; it becomes the bootstrap entry at index 1. A node joining an existing cluster
   * passes none and learns its configuration from the leader.
   */
  readonly peers?: readonly number[];
  readonly limits?: Partial<Limits>;
  /** Pre-vote (thesis §9.6); default true. */
  readonly preVote?: boolean;
  /** Check-quorum and leader lease (thesis §6.2, §9.6); default true. */
  readonly checkQuorum?: boolean;
  /**
   * This node lost its persistent state (a wiped data directory) but its id is a member: its empty log and
   * forgotten term and vote are not the promises it made. Until it has caught up (maybeFinishRecovery) it grants
   * no vote and starts no election, and its responses say `recovering`: the leader counts them for no quorum,
   * forgets the match it remembers when they reject below it (a snapshot follows). Pass no `peers` with it. The
   * caller persists the flag until `recovering` reads false (see src/node/README.md, "A wiped node").
   */
  readonly recovering?: boolean;
  /** Test-only. */
  readonly plantedBug?: PlantedBug;
}

interface PartialSnapshot {
  readonly from: number;
  readonly term: number;
  readonly snap: Snapshot['meta'];
  /** The data so far: one buffer of the announced size when the sender said it (no second copy at the end). */
  whole: Uint8Array | null;
  /** Otherwise (an older sender, or a size past snapshotPreallocBytesMax): the chunks, joined at the end. */
  readonly chunks: Uint8Array[];
  received: number;
  /** The sender's size of the whole data (0: not said). */
  readonly total: number;
}

/** Largest announced snapshot size received into one preallocated buffer (the size comes from the wire). */
const snapshotPreallocBytesMax = 2 ** 31;

/** The received data as one array: the preallocated buffer when it was filled exactly, else the parts joined. */
function joinSnapshotData(p: PartialSnapshot): Uint8Array {
  // Fewer bytes than announced: the data is what arrived (the sender said `done`).
  if (p.whole !== null) return p.received === p.whole.length ? p.whole : p.whole.slice(0, p.received);
  const data = new Uint8Array(p.received);
  let at = 0;
  for (const ch of p.chunks) {
    data.set(ch, at);
    at += ch.length;
  }
  return data;
}

export class Raft {
  readonly id: number;
  term = 0;
  vote = 0;
  lead = 0;
  state: StateType = StateType.follower;
  readonly raftLog: RaftLog;
  readonly prs = new Map<number, Progress>();
  conf: ConfState = { voters: [], learners: [] };
  readonly votes = new Map<number, boolean>();
  msgs: Message[] = [];
  readStates: ReadState[] = [];
  readonly limits: Limits;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
  readonly bug: PlantedBug | undefined;
  electionElapsed = 0;
  heartbeatElapsed = 0;
  randomizedElectionTimeout = 0;
  leadTransferee = 0;
  /** Index of the latest conf change (or of a new leader's no-op): no new conf change until applied. */
  pendingConfIndex = 0;
  uncommittedBytes = 0;
  private readonly rng: Rng;
  private readonly readOnly = new ReadOnly();
  private pendingReadIndexMessages: Message[] = [];
  /** Proposals were appended since the last broadcast; sent as one batch per follower at ready(). */
  private bcastPending = false;
  private partialSnap: PartialSnapshot | null = null;
  private fromNetwork = false;
  private readonly scratch: number[] = [];
  /** See RaftConfig.recovering. */
  recovering: boolean;
  /**
   * The current leader's own commit index as its heartbeats tell it (0: not known yet). A follower's `committed`
   * is clamped to what it has; this is what it has to reach to be current.
   */
  leaderCommit = 0;
  /** Recovering: the first commit index a leader that knew it revealed; the node is caught up once its log commits it. */
  private recoverTarget = 0;
  /**
   * The last index an append of the current leader proved our log to match (its (index, term) check passed), since
   * the last reset: the most a heartbeat's commit may cover while we recover (see handleHeartbeat).
   */
  private matchedThrough = 0;

  constructor(cfg: RaftConfig) {
    assert(Number.isInteger(cfg.id) && cfg.id > 0, `node id ${cfg.id} must be a positive integer`);
    if (!(cfg.heartbeatTicks > 0 && cfg.electionTicks > cfg.heartbeatTicks)) {
      throw new RaftError(RaftErrorCode.badConfig, `need 0 < heartbeatTicks (${cfg.heartbeatTicks}) < electionTicks (${cfg.electionTicks})`);
    }
    this.id = cfg.id;
    this.rng = cfg.rng;
    this.limits = { ...defaultLimits, ...cfg.limits };
    this.electionTicks = cfg.electionTicks;
    this.heartbeatTicks = cfg.heartbeatTicks;
    this.preVote = cfg.preVote ?? true;
    this.checkQuorum = cfg.checkQuorum ?? true;
    this.bug = cfg.plantedBug;
    this.recovering = cfg.recovering ?? false;
    this.raftLog = new RaftLog(cfg.storage);
    const st = cfg.storage.initialState();
    let hs = st.hardState;
    const fresh = cfg.storage.lastIndex() === 0 && cfg.storage.snapshot().meta.index === 0;
    if (fresh && cfg.peers && cfg.peers.length > 0) {
      // Bootstrap (like etcd's initial-cluster): an identical committed entry at index 1 on every node.
      const data = encodeInit(cfg.peers);
      this.raftLog.append([{ term: 1, index: 1, type: EntryType.confChange, data }]);
      hs = { term: 1, vote: 0, commit: 1 };
    }
    if (hs.commit > 0 || hs.term > 0) {
      assert(hs.commit >= this.raftLog.committed && hs.commit <= this.raftLog.lastIndex(), `hard state commit ${hs.commit} outside the stored log [${this.raftLog.committed}, ${this.raftLog.lastIndex()}]`);
      this.raftLog.committed = hs.commit;
      this.term = hs.term;
      this.vote = hs.vote;
    }
    this.switchToConfig(st.confState);
    this.becomeFollower(this.term, 0);
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.raftLog.committed };
  }

  promotable(): boolean {
    return this.conf.voters.includes(this.id);
  }

  /**
   * A recovering node is caught up once its log commits the first leader commit index it learned. The leader
   * reveals one only when it committed, without this node, an entry appended after it learned that this node
   * lost its disk (ownCommitFor): then the leader's term is at least every term this node voted or acknowledged
   * in before, and its log holds every entry committed with this node's lost acknowledgements (leader
   * completeness, §5.4). Holding that log in that term, the node keeps the promises its lost state held.
   * The vote is pinned to the leader it follows: it may have voted in this term before it lost its disk, and the
   * leader is the one candidate a second vote cannot harm (it has won already).
   */
  private maybeFinishRecovery(): void {
    if (!this.recovering || this.lead === 0 || this.recoverTarget === 0) return;
    if (this.raftLog.committed < this.recoverTarget) return;
    this.recovering = false;
    if (this.vote === 0) this.vote = this.lead;
  }

  // ---- role transitions (§5.2) ----

  private reset(term: number): void {
    if (term !== this.term) {
      this.term = term;
      this.vote = 0;
    }
    this.lead = 0;
    this.leaderCommit = 0;
    this.matchedThrough = 0;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.electionTicks + this.rng.int(this.electionTicks);
    this.leadTransferee = 0;
    this.votes.clear();
    const last = this.raftLog.lastIndex();
    for (const [id, pr] of this.prs) {
      const fresh = new Progress(last + 1, pr.isLearner, this.limits.inflightMsgsMax, this.limits.inflightBytesMax);
      if (id === this.id) fresh.match = last;
      this.prs.set(id, fresh);
    }
    this.pendingConfIndex = 0;
    this.uncommittedBytes = 0;
    this.readOnly.reset();
    this.pendingReadIndexMessages = [];
    this.bcastPending = false;
  }

  becomeFollower(term: number, lead: number): void {
    this.reset(term);
    this.lead = lead;
    this.state = StateType.follower;
  }

  private becomePreCandidate(): void {
    assert(this.state !== StateType.leader, 'leader -> pre-candidate');
    // Pre-vote changes neither term nor vote (thesis §9.6): a partitioned node cannot disrupt.
    this.votes.clear();
    this.lead = 0;
    this.state = StateType.preCandidate;
  }

  private becomeCandidate(): void {
    assert(this.state !== StateType.leader, 'leader -> candidate');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.state = StateType.candidate;
  }

  private becomeLeader(): void {
    assert(this.state !== StateType.follower, 'follower -> leader');
    this.reset(this.term);
    this.lead = this.id;
    this.state = StateType.leader;
    const self = this.prs.get(this.id);
    if (self) {
      self.becomeReplicate();
      self.recentActive = true;
    }
    // The no-op of the new term (thesis §6.4): entries of older terms commit only with it (§5.4.2).
    this.appendEntries([{ term: 0, index: 0, type: EntryType.normal, data: emptyBytes }]);
    // No conf change until the no-op is applied: the single-server-change fix (thesis errata, 2015).
    this.pendingConfIndex = this.raftLog.lastIndex();
  }

  // ---- time ----

  tick(): void {
    if (this.state === StateType.leader) this.tickHeartbeat();
    else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && !this.recovering && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup(false);
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTicks) {
      this.electionElapsed = 0;
      if (this.checkQuorum && !this.quorumActive()) {
        this.becomeFollower(this.term, 0);
        return;
      }
      if (this.leadTransferee !== 0) this.leadTransferee = 0; // transfer took longer than an election timeout
    }
    if (this.heartbeatElapsed >= this.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  /** Check-quorum: did a majority of voters answer since the last round? Resets the marks. */
  private quorumActive(): boolean {
    const ok = hasQuorum(this.conf.voters, (id) => {
      const pr = this.prs.get(id);
      return id === this.id || (pr !== undefined && pr.recentActive && !pr.recovering);
    });
    for (const [id, pr] of this.prs) if (id !== this.id) pr.recentActive = false;
    return ok;
  }

  // ---- elections ----

  /** Starts an election if allowed; `transfer` skips pre-vote (the leader asked us to campaign). */
  hup(transfer: boolean): void {
    if (this.state === StateType.leader) return;
    if (!this.promotable() || this.recovering) return;
    if (this.hasUnappliedConfChanges()) return;
    this.campaign(transfer || !this.preVote ? 'election' : 'pre', transfer);
  }

  private hasUnappliedConfChanges(): boolean {
    const log = this.raftLog;
    if (log.applied >= log.committed) return false;
    const ents = log.slice(Math.max(log.applied + 1, log.firstIndex()), log.committed + 1, Number.MAX_SAFE_INTEGER);
    return ents.some((e) => e.type === EntryType.confChange);
  }

  private campaign(kind: 'pre' | 'election', transfer: boolean): void {
    let term: number;
    let type: typeof MessageType.vote | typeof MessageType.preVote;
    if (kind === 'pre') {
      this.becomePreCandidate();
      type = MessageType.preVote;
      term = this.term + 1;
    } else {
      this.becomeCandidate();
      type = MessageType.vote;
      term = this.term;
    }
    if (this.poll(this.id, true) === VoteResult.won) {
      if (kind === 'pre') this.campaign('election', transfer);
      else this.becomeLeader();
      return;
    }
    const index = this.raftLog.lastIndex();
    const logTerm = this.raftLog.lastTerm();
    const context = transfer ? campaignTransferContext : emptyBytes;
    for (const id of this.conf.voters) {
      if (id === this.id) continue;
      this.msgs.push(message({ type, from: this.id, to: id, term, index, logTerm, context }));
    }
  }

  private poll(id: number, granted: boolean): VoteResult {
    if (!this.votes.has(id)) this.votes.set(id, granted);
    return voteResult(this.conf.voters, this.votes);
  }

  // ---- the message dispatcher ----

  /** `fromNetwork`: the message came from a peer, so a drop is silent (the asker times out). */
  step(m: Message, fromNetwork = false): void {
    this.fromNetwork = fromNetwork;
    try {
      this.stepInner(m);
    } finally {
      this.fromNetwork = false;
    }
  }

  private stepInner(m: Message): void {
    if (m.term === 0) {
      // local message, or one a follower forwarded (prop, readIndex, transferLeader)
    } else if (m.term > this.term) {
      if (m.type === MessageType.vote || m.type === MessageType.preVote) {
        // Leader lease (thesis §4.2.3): ignore a (pre)vote while we hear from a current leader, unless
        // the leader itself asked for the election (transfer).
        const inLease = this.checkQuorum && this.lead !== 0 && this.electionElapsed < this.electionTicks;
        if (!isCampaignTransfer(m.context) && inLease) return;
      }
      if (m.type === MessageType.preVote) {
        // A pre-vote never changes our term.
      } else if (m.type === MessageType.preVoteResp && !m.reject) {
        // A granted pre-vote carries the future term; the candidate's term changes when it campaigns.
      } else if (m.type === MessageType.app || m.type === MessageType.heartbeat || m.type === MessageType.snap) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, 0);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === MessageType.heartbeat || m.type === MessageType.app)) {
        // A stale leader learns our term and steps down; otherwise with check-quorum or pre-vote it
        // could keep a partitioned-then-healed follower from ever being heard (etcd-io/raft).
        this.send({ type: MessageType.appResp, to: m.from });
      } else if (m.type === MessageType.preVote) {
        this.send({ type: MessageType.preVoteResp, to: m.from, term: this.term, reject: true });
      }
      return;
    }

    switch (m.type) {
      case MessageType.hup:
        this.hup(false);
        return;
      case MessageType.vote:
      case MessageType.preVote:
        this.handleVoteRequest(m);
        return;
    }
    switch (this.state) {
      case StateType.leader:
        this.stepLeader(m);
        return;
      case StateType.candidate:
      case StateType.preCandidate:
        this.stepCandidate(m);
        return;
      case StateType.follower:
        this.stepFollower(m);
        return;
    }
  }

  private handleVoteRequest(m: Message): void {
    const respType = m.type === MessageType.vote ? MessageType.voteResp : MessageType.preVoteResp;
    // §5.2: at most one vote per term; a pre-vote for a future term may be granted regardless.
    let canVote = this.vote === m.from || (this.vote === 0 && this.lead === 0) || (m.type === MessageType.preVote && m.term > this.term);
    if (this.bug === PlantedBug.voteTwice && m.type === MessageType.vote && this.state !== StateType.leader) canVote = true;
    const upToDate = this.bug === PlantedBug.voteNoUpToDate || this.raftLog.isUpToDate(m.index, m.logTerm);
    // A node that lost its disk abstains: its log and vote record are not what it promised (maybeFinishRecovery).
    if (canVote && upToDate && (!this.recovering || this.bug === PlantedBug.recoveringVotes)) {
      this.send({ type: respType, to: m.from, term: m.term });
      if (m.type === MessageType.vote) {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: respType, to: m.from, term: this.term, reject: true });
    }
  }

  /** Queues an outgoing message; `from` defaults to us and `term` to our term (forwarded ones keep 0). */
  private send(m: Partial<Message> & { type: MessageTypeT }): void {
    const recovering = this.recovering && isResponseMessage(m.type);
    this.msgs.push(message({ from: this.id, term: isForwardable(m.type) ? 0 : this.term, recovering, ...m }));
  }

  // ---- leader ----

  private stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.beat:
        this.bcastHeartbeat();
        return;
      case MessageType.prop:
        this.leaderPropose(m);
        return;
      case MessageType.readIndex:
        this.leaderReadIndex(m);
        return;
      case MessageType.transferLeader:
        this.leaderTransfer(m.index);
        return;
    }
    const pr = this.prs.get(m.from);
    if (!pr) return;
    if (m.recovering !== pr.recovering) {
      // Responses of one incarnation arrive in order (one route connection each, and the wiped node's old one
      // closed before it restarted), so the flag follows the follower's own state.
      pr.recovering = m.recovering;
      pr.recoverFloor = m.recovering ? this.raftLog.lastIndex() + 1 : 0;
      // A quiet cluster would append nothing at or above the floor: a no-op does, so the follower can finish.
      if (m.recovering) this.appendEntries([{ term: 0, index: 0, type: EntryType.normal, data: emptyBytes }]);
    }
    switch (m.type) {
      case MessageType.appResp:
        this.handleAppendResponse(m, pr);
        return;
      case MessageType.heartbeatResp:
        this.handleHeartbeatResponse(m, pr);
        return;
      case MessageType.snapResp:
        pr.recentActive = true;
        if (pr.state !== ProgressState.snapshot || pr.snapshot?.meta.index !== m.index) return;
        pr.snapWaits = 0;
        if (m.reject) pr.becomeProbe();
        else if (m.rejectHint !== pr.snapOffset || m.rejectHint < pr.snapshot.data.length) {
          pr.snapOffset = Math.min(m.rejectHint, pr.snapshot.data.length);
          this.sendSnapshotChunk(m.from, pr);
        }
        return;
    }
  }

  private dropProposal(_m: Message, why: string, code: RaftErrorCode = RaftErrorCode.proposalDropped): void {
    // A local caller learns at once; a forwarded proposal is dropped silently (the client times out).
    if (!this.fromNetwork) throw new RaftError(code, why);
  }

  private leaderPropose(m: Message): void {
    assert(m.entries.length > 0, 'empty proposal');
    if (!this.prs.has(this.id)) return this.dropProposal(m, `node ${this.id} is no longer a member`);
    if (this.leadTransferee !== 0) return this.dropProposal(m, `leadership is being transferred to ${this.leadTransferee}`);
    const bytes = entriesBytes(m.entries);
    if (this.limits.uncommittedBytesMax > 0 && this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.limits.uncommittedBytesMax) {
      return this.dropProposal(m, `uncommitted entries exceed uncommittedBytesMax (${this.limits.uncommittedBytesMax})`);
    }
    let ents = m.entries;
    for (let i = 0; i < ents.length; i++) {
      const e = ents[i]!;
      if (e.type !== EntryType.confChange) continue;
      const refused = this.confChangeRefusal(e.data);
      if (refused !== null) {
        this.dropProposal(m, refused, RaftErrorCode.confChangeRefused);
        // Forwarded: keep the batch's shape, turn the change into a no-op (etcd-io/raft does the same).
        if (ents === m.entries) ents = ents.slice();
        (ents as Entry[])[i] = { term: 0, index: 0, type: EntryType.normal, data: emptyBytes };
      } else {
        this.pendingConfIndex = this.raftLog.lastIndex() + i + 1;
      }
    }
    this.appendEntries(ents);
  }

  private confChangeRefusal(data: Uint8Array): string | null {
    if (this.pendingConfIndex > this.raftLog.applied) {
      return `a conf change (or the new leader's no-op) at index ${this.pendingConfIndex} is not applied yet (applied ${this.raftLog.applied}); retry later`;
    }
    let cc: ConfChange;
    try {
      cc = decodeConfChange(data);
    } catch (e) {
      return (e as Error).message;
    }
    if (cc.type === ConfChangeType.init) return 'init is only for bootstrap';
    const next = applyConfChange(this.conf, cc);
    return typeof next === 'string' ? next : null;
  }

  private appendEntries(es: readonly Entry[]): void {
    let li = this.raftLog.lastIndex();
    const ents: Entry[] = new Array(es.length);
    for (let i = 0; i < es.length; i++) ents[i] = { term: this.term, index: ++li, type: es[i]!.type, data: es[i]!.data };
    this.uncommittedBytes += entriesBytes(ents);
    this.raftLog.append(ents);
    const self = this.prs.get(this.id);
    if (self) self.maybeUpdate(this.raftLog.lastIndex());
    this.maybeCommit();
    this.bcastPending = true;
  }

  /** Sends appends batched since the last call (RawNode calls it when building a Ready). */
  flushBroadcast(): void {
    if (!this.bcastPending) return;
    this.bcastPending = false;
    if (this.state === StateType.leader) this.bcastAppend();
  }

  hasPendingBroadcast(): boolean {
    return this.bcastPending;
  }

  private maybeCommit(): boolean {
    let mci: number;
    if (this.bug === PlantedBug.commitWithoutMajority) {
      mci = 0;
      for (const id of this.conf.voters) mci = Math.max(mci, this.prs.get(id)?.match ?? 0);
      mci = Math.min(mci, this.raftLog.lastIndex());
    } else {
      // A follower that lost its disk counts for no commit until it caught up (ownCommitFor says why that is safe).
      mci = committedIndex(this.conf.voters, (id) => {
        const pr = this.prs.get(id);
        return pr === undefined || pr.recovering ? 0 : pr.match;
      }, this.scratch);
    }
    // §5.4.2: only an entry of the current term commits by counting replicas.
    if (mci > this.raftLog.committed && (this.bug === PlantedBug.commitOldTerm || this.raftLog.term(mci) === this.term)) {
      this.raftLog.commitTo(mci);
      return true;
    }
    return false;
  }

  private bcastAppend(): void {
    for (const id of this.prs.keys()) {
      if (id === this.id) continue;
      if (this.maybeSendAppend(id, true)) while (this.maybeSendAppend(id, false));
    }
  }

  private bcastHeartbeat(): void {
    const ctx = this.readOnly.lastPendingRound() ?? emptyBytes;
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      // The commit sent is at most the follower's match: it may not have the entries beyond it.
      const commit = Math.min(pr.match, this.raftLog.committed);
      this.send({ type: MessageType.heartbeat, to: id, commit, context: ctx, index: this.ownCommitFor(pr), recovering: pr.recovering });
    }
  }

  /**
   * The commit index a heartbeat reveals to a follower (0: none yet). Complete only once an entry of this term is
   * committed (§6.4). To a follower that lost its disk, only once an entry appended after we learned so is
   * committed: that quorum did not count it, so it shares a member with every quorum the follower was part of
   * before (a vote, an acknowledgement); that member had raised its term before our entry existed, and accepted
   * it, so our term is at least every term the follower made a promise in. Following us, it keeps them all.
   */
  private ownCommitFor(pr: Progress): number {
    const c = this.raftLog.committed;
    if (this.raftLog.term(c) !== this.term) return 0;
    return pr.recovering && c < pr.recoverFloor ? 0 : c;
  }

  /** Sends the next append (or snapshot) to `to`; false if nothing was sent. */
  private maybeSendAppend(to: number, sendIfEmpty: boolean): boolean {
    const pr = this.prs.get(to)!;
    if (pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.raftLog.term(prevIndex);
    if (prevTerm === termCompacted || pr.next < this.raftLog.firstIndex()) return this.sendSnapshot(to, pr);
    const ents = this.raftLog.entriesFrom(pr.next, this.limits.msgEntriesMax, this.limits.msgBytesMax);
    if (ents.length === 0 && !sendIfEmpty) return false;
    this.send({ type: MessageType.app, to, index: prevIndex, logTerm: prevTerm, entries: ents, commit: this.raftLog.committed });
    pr.sentEntries(ents.length, prevIndex + ents.length, entriesBytes(ents));
    return true;
  }

  private sendSnapshot(to: number, pr: Progress): boolean {
    if (!pr.recentActive) return false;
    const snap = this.raftLog.snapshot();
    assert(snap.meta.index > 0, 'need a snapshot but the log has none');
    pr.becomeSnapshot(snap);
    this.sendSnapshotChunk(to, pr);
    return true;
  }

  private sendSnapshotChunk(to: number, pr: Progress): void {
    const snap = pr.snapshot!;
    const offset = pr.snapOffset;
    const end = Math.min(snap.data.length, offset + this.limits.snapshotChunkBytesMax);
    const chunk = { meta: snap.meta, offset, data: snap.data.subarray(offset, end), done: end >= snap.data.length, total: snap.data.length };
    this.send({ type: MessageType.snap, to, snapshot: chunk });
  }

  private handleAppendResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    if (m.reject && m.recovering && m.rejectHint < pr.match) {
      // The follower lost what it acknowledged (a wiped disk): its rejections would otherwise look stale for ever
      // (maybeDecrTo never goes below match). Not from a delayed message: a follower marks rejections only while
      // it recovers, and then it holds at most what it received since, so an earlier reset is merely repeated.
      pr.resetLostLog(m.rejectHint);
      this.maybeSendAppend(m.from, true);
      return;
    }
    if (m.reject) {
      let hint = m.rejectHint;
      if (m.logTerm > 0) hint = this.raftLog.findConflictByTerm(m.rejectHint, m.logTerm)[0];
      if (pr.maybeDecrTo(m.index, hint)) {
        if (pr.state === ProgressState.replicate) pr.becomeProbe();
        this.maybeSendAppend(m.from, false);
      }
      return;
    }
    const oldPaused = pr.isPaused();
    const updated = pr.maybeUpdate(m.index);
    if (pr.state === ProgressState.snapshot) {
      // The follower has the snapshot (or already had its index): resume appends, or send a newer
      // snapshot if the log was compacted past it meanwhile.
      const caughtUp = pr.match + 1 >= this.raftLog.firstIndex();
      if (!caughtUp && pr.match < pr.snapshot!.meta.index) return;
      pr.becomeProbe();
      if (caughtUp) pr.becomeReplicate();
    } else if (!updated) {
      return;
    } else if (pr.state === ProgressState.probe) {
      pr.becomeReplicate();
    } else {
      pr.inflights.freeLE(m.index);
    }

    if (this.maybeCommit()) {
      this.releasePendingReadIndexMessages();
      this.bcastAppend();
    } else if (oldPaused) {
      this.maybeSendAppend(m.from, false);
    }
    while (this.maybeSendAppend(m.from, false));
    if (m.from === this.leadTransferee && pr.match === this.raftLog.lastIndex()) this.sendTimeoutNow(m.from);
  }

  private handleHeartbeatResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    pr.probeSent = false;
    if (pr.state === ProgressState.snapshot) {
      // Chunks are acknowledged one by one; one unanswered for a whole heartbeat round is resent.
      if (++pr.snapWaits >= 2) {
        pr.snapWaits = 0;
        this.sendSnapshotChunk(m.from, pr);
      }
    } else {
      // A lost append may have left the window full with nothing coming back: free one slot.
      if (pr.state === ProgressState.replicate && pr.inflights.full()) pr.inflights.freeFirstOne();
      // An empty append is enough: a follower that lost entries rejects it, and repair starts.
      if (pr.match < this.raftLog.lastIndex()) this.maybeSendAppend(m.from, true);
    }
    // A follower that lost its disk may follow us in a term older than one it promised elsewhere: its
    // acknowledgement proves nothing about our leadership.
    if (m.context.length === 0 || pr.recovering) return;
    const acks = this.readOnly.recvAck(m.from, m.context);
    if (!acks || !hasQuorum(this.conf.voters, (id) => acks.has(id))) return;
    for (const rs of this.readOnly.advance(m.context)) this.respondToReadIndex(rs.from, rs.context, rs.index);
  }

  private leaderReadIndex(m: Message): void {
    if (this.conf.voters.length === 1 && this.conf.voters[0] === this.id) {
      this.respondToReadIndex(m.from, m.context, this.raftLog.committed);
      return;
    }
    // Thesis §6.4 step 1: the leader's commit index is current only once an entry of its term committed.
    if (this.raftLog.term(this.raftLog.committed) !== this.term) {
      this.pendingReadIndexMessages.push(m);
      return;
    }
    this.sendReadIndex(m);
  }

  private sendReadIndex(m: Message): void {
    if (this.bug === PlantedBug.readIndexNoQuorum) {
      this.respondToReadIndex(m.from, m.context, this.raftLog.committed);
      return;
    }
    // The heartbeats carry the round's name, not the caller's context (read_only.ts: a resent request reuses it).
    const round = this.readOnly.addRequest(this.raftLog.committed, m.from, m.context);
    this.readOnly.recvAck(this.id, round);
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      const commit = Math.min(pr.match, this.raftLog.committed);
      this.send({ type: MessageType.heartbeat, to: id, commit, context: round, index: this.ownCommitFor(pr), recovering: pr.recovering });
    }
  }

  private releasePendingReadIndexMessages(): void {
    if (this.pendingReadIndexMessages.length === 0) return;
    if (this.raftLog.term(this.raftLog.committed) !== this.term) return;
    const msgs = this.pendingReadIndexMessages;
    this.pendingReadIndexMessages = [];
    for (const m of msgs) this.sendReadIndex(m);
  }

  private respondToReadIndex(from: number, context: Uint8Array, index: number): void {
    if (from === this.id || from === 0) this.readStates.push({ index, context });
    else this.send({ type: MessageType.readIndexResp, to: from, index, context });
  }

  private leaderTransfer(transferee: number): void {
    const pr = this.prs.get(transferee);
    if (!pr || pr.isLearner || !this.conf.voters.includes(transferee)) return;
    if (this.leadTransferee !== 0) {
      if (this.leadTransferee === transferee) return;
      this.leadTransferee = 0;
    }
    if (transferee === this.id) return;
    // Thesis §3.10: catch the target up, then tell it to campaign; give up after an election timeout.
    this.electionElapsed = 0;
    this.leadTransferee = transferee;
    if (pr.match === this.raftLog.lastIndex()) this.sendTimeoutNow(transferee);
    else this.maybeSendAppend(transferee, true);
  }

  private sendTimeoutNow(to: number): void {
    this.send({ type: MessageType.timeoutNow, to });
  }

  // ---- candidate ----

  private stepCandidate(m: Message): void {
    const myResp = this.state === StateType.preCandidate ? MessageType.preVoteResp : MessageType.voteResp;
    switch (m.type) {
      case MessageType.prop:
        this.dropProposal(m, `no leader at term ${this.term} (an election is running)`);
        return;
      case MessageType.readIndex:
        this.dropProposal(m, `no leader at term ${this.term} for a read index`);
        return;
      case MessageType.app:
        this.becomeFollower(m.term, m.from);
        this.handleAppend(m);
        return;
      case MessageType.heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageType.snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        return;
      case MessageType.voteResp:
      case MessageType.preVoteResp: {
        if (m.type !== myResp) return;
        const r = this.poll(m.from, !m.reject);
        if (r === VoteResult.won) {
          if (this.state === StateType.preCandidate) this.campaign('election', false);
          else {
            this.becomeLeader();
            this.bcastAppend();
            this.bcastPending = false;
          }
        } else if (r === VoteResult.lost) {
          this.becomeFollower(this.term, 0);
        }
        return;
      }
    }
  }

  // ---- follower ----

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.prop:
        if (this.lead === 0) return this.dropProposal(m, `no leader known at term ${this.term}`);
        this.send({ ...m, to: this.lead, from: m.from || this.id, term: 0 });
        return;
      case MessageType.readIndex:
        if (this.lead === 0) return this.dropProposal(m, `no leader known at term ${this.term} for a read index`);
        this.send({ ...m, to: this.lead, from: m.from || this.id, term: 0 });
        return;
      case MessageType.transferLeader:
        if (this.lead !== 0) this.send({ ...m, to: this.lead, from: this.id, term: 0 });
        return;
      case MessageType.app:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        this.maybeFinishRecovery();
        return;
      case MessageType.heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageType.snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        this.maybeFinishRecovery();
        return;
      case MessageType.timeoutNow:
        this.hup(true);
        return;
      case MessageType.readIndexResp:
        this.readStates.push({ index: m.index, context: m.context });
        return;
    }
  }

  private handleAppend(m: Message): void {
    const log = this.raftLog;
    if (m.index < log.committed) {
      this.send({ type: MessageType.appResp, to: m.from, index: log.committed });
      return;
    }
    const lastNew = log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastNew >= 0) {
      // One leader per term, and it never rewrites its own log: what matched it stays matched until the next reset.
      this.matchedThrough = Math.max(this.matchedThrough, lastNew);
      this.send({ type: MessageType.appResp, to: m.from, index: lastNew });
      return;
    }
    // Fast log repair: the largest index <= min(m.index, our last) whose term is <= m.logTerm.
    const [hintIndex, hintTerm] = log.findConflictByTerm(Math.min(m.index, log.lastIndex()), m.logTerm);
    this.send({ type: MessageType.appResp, to: m.from, index: m.index, reject: true, rejectHint: hintIndex, logTerm: hintTerm });
  }

  private handleHeartbeat(m: Message): void {
    const last = this.raftLog.lastIndex();
    if (this.recovering && m.commit > last) {
      // The leader's commit for us is clamped to the match it remembers, so it believes we hold m.commit: in a
      // quiet cluster it would never send an append for us to reject. Say what we have instead.
      this.send({ type: MessageType.appResp, to: m.from, index: m.commit, reject: true, rejectHint: last, logTerm: this.raftLog.lastTerm() });
    }
    // Recovering, a heartbeat's commit counts only as far as an append of this leader proved our log matches its
    // own. The commit is clamped to the match the leader remembers, which may be from before we lost our disk (even
    // once it knows we did, until a rejection resets it), and what we now hold at those indexes may be another
    // leader's: a stale leader of an older term can have sent us entries the cluster never committed.
    this.raftLog.commitTo(Math.min(m.commit, last, this.recovering ? this.matchedThrough : last));
    // Recovering, only a leader that knows we lost our disk chose its index for that (ownCommitFor); the first
    // heartbeats after our restart come from one that still holds our old progress.
    if (m.index > this.leaderCommit && (!this.recovering || m.recovering)) this.leaderCommit = m.index;
    if (this.recovering && m.recovering && m.index > 0 && this.recoverTarget === 0) this.recoverTarget = m.index;
    this.maybeFinishRecovery();
    this.send({ type: MessageType.heartbeatResp, to: m.from, context: m.context });
  }

  private handleSnapshot(m: Message): void {
    const c = m.snapshot;
    assert(c !== null, 'snap message without a chunk');
    const log = this.raftLog;
    if (c.meta.index <= log.committed) {
      this.partialSnap = null;
      this.send({ type: MessageType.appResp, to: m.from, index: log.committed });
      return;
    }
    let p = this.partialSnap;
    if (!p || p.from !== m.from || p.term !== m.term || p.snap.index !== c.meta.index || p.snap.term !== c.meta.term) {
      if (c.offset !== 0) {
        this.send({ type: MessageType.snapResp, to: m.from, index: c.meta.index, rejectHint: 0 });
        return;
      }
      const whole = c.total > 0 && c.total <= snapshotPreallocBytesMax ? new Uint8Array(c.total) : null;
      p = this.partialSnap = { from: m.from, term: m.term, snap: c.meta, whole, chunks: [], received: 0, total: c.total };
    }
    if (c.offset === p.received) {
      // Copied either way: a transport may hand us a view into a buffer it reuses.
      if (p.whole !== null && p.received + c.data.length <= p.whole.length) {
        p.whole.set(c.data, p.received);
      } else {
        // More than announced: what the buffer holds becomes the first part, and parts are joined at the end.
        if (p.whole !== null) p.chunks.push(p.whole.subarray(0, p.received));
        p.whole = null;
        p.chunks.push(c.data.slice());
      }
      p.received += c.data.length;
      if (c.done) {
        this.partialSnap = null;
        const data = joinSnapshotData(p);
        const restored = this.restore({ meta: c.meta, data });
        const index = restored ? log.lastIndex() : log.committed;
        this.send({ type: MessageType.appResp, to: m.from, index });
        return;
      }
    }
    this.send({ type: MessageType.snapResp, to: m.from, index: c.meta.index, rejectHint: p.received });
  }

  /** RawNode.reportSnapshotFailure: the pending snapshot is forgotten first, so probing starts at match + 1 (etcd). */
  reportSnapshotFailure(id: number): void {
    const pr = this.prs.get(id);
    if (this.state !== StateType.leader || pr === undefined || pr.state !== ProgressState.snapshot) return;
    pr.snapshot = null;
    pr.becomeProbe();
  }

  /** Bytes received of the snapshot being streamed to this node, and its size (0, 0 when none is). */
  snapshotTransfer(): { received: number; total: number } {
    const p = this.partialSnap;
    return p ? { received: p.received, total: p.total } : { received: 0, total: 0 };
  }

  /** Installs a snapshot received from the leader; false if it is stale or the log already has it. */
  restore(s: Snapshot): boolean {
    if (s.meta.index <= this.raftLog.committed) return false;
    assert(this.state === StateType.follower, `restore as ${this.state}`);
    if (this.raftLog.matchTerm(s.meta.index, s.meta.term)) {
      this.raftLog.commitTo(s.meta.index);
      return false;
    }
    this.raftLog.restore(s);
    this.prs.clear();
    this.switchToConfig(s.meta.conf);
    return true;
  }

  // ---- configuration ----

  /** Applies a committed conf change entry (RawNode calls this from advance()). */
  applyConfChangeEntry(e: Entry): void {
    let cc: ConfChange;
    try {
      cc = decodeConfChange(e.data);
    } catch {
      return; // refused at proposal time, so only a corrupt entry gets here; identical on every node
    }
    const next = applyConfChange(this.conf, cc);
    if (typeof next !== 'string') this.switchToConfig(next);
  }

  switchToConfig(cs: ConfState): void {
    this.conf = { voters: [...cs.voters], learners: [...cs.learners] };
    const members = new Set([...cs.voters, ...cs.learners]);
    for (const id of [...this.prs.keys()]) if (!members.has(id)) this.prs.delete(id);
    const last = this.raftLog.lastIndex();
    for (const id of members) {
      const isLearner = cs.learners.includes(id);
      const pr = this.prs.get(id);
      if (pr) pr.isLearner = isLearner;
      else {
        const fresh = new Progress(last + 1, isLearner, this.limits.inflightMsgsMax, this.limits.inflightBytesMax);
        if (id === this.id) fresh.match = last;
        fresh.recentActive = true; // a new member gets one check-quorum round before it counts as silent
        this.prs.set(id, fresh);
      }
    }
    if (this.state !== StateType.leader) return;
    if (!this.promotable()) {
      // The leader removed itself (thesis §4.2.2): hand over to a caught-up voter, then step down.
      const last = this.raftLog.lastIndex();
      const heir = this.conf.voters.find((id) => this.prs.get(id)?.match === last);
      if (heir !== undefined) this.sendTimeoutNow(heir);
      this.becomeFollower(this.term, 0);
      return;
    }
    if (this.leadTransferee !== 0 && !this.conf.voters.includes(this.leadTransferee)) this.leadTransferee = 0;
    if (this.maybeCommit()) this.releasePendingReadIndexMessages();
    this.bcastAppend();
  }

  /** Committed entries were handed to the caller: they no longer count as uncommitted. */
  reduceUncommitted(ents: readonly Entry[]): void {
    if (this.state !== StateType.leader) return;
    this.uncommittedBytes = Math.max(0, this.uncommittedBytes - entriesBytes(ents));
  }
}

function isForwardable(t: Message['type']): boolean {
  return t === MessageType.prop || t === MessageType.readIndex || t === MessageType.transferLeader;
}

function encodeInit(peers: readonly number[]): Uint8Array {
  return encodeConfChange({ type: ConfChangeType.init, nodeId: 0, voters: [...peers].sort((a, b) => a - b) });
}
