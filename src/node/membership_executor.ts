// Carries out the leader's membership changes (issue 17: apart from node.ts). Each round (the node's tick calls
// round() once a second) the leader gathers what it sees — the configuration, which routes are up, Raft's progress,
// the voters down past the grace period — into membership_policy.ts's view, and proposes the one change
// nextMembershipChange returns, or hands leadership over when an operator removed this leader. One change per round:
// Raft refuses a second pending one, and the next round asks again with the new configuration.
// Also here: the operator's levers on membership (the removed slots, the current configuration, a leadership
// transfer). Raft is behind a narrow seam (MembershipRaft), so test/unit/membership_executor.test.ts scripts it.
import { RaftError, StateType, type RawNode } from '../../raft/index.js';
import type { Logger } from '../log.js';
import { NodeError, NodeErrorCode } from './errors.js';
import { nextMembershipChange, promoteWindow, VoterDownWatch } from './membership_policy.js';

/** What the executor uses of Raft. */
export type MembershipRaft = Pick<RawNode, 'basicStatus' | 'confState' | 'status' | 'proposeConfChange' | 'transferLeadership'>;

export interface MembershipExecutorOptions {
  /** Raft, once started (undefined before). */
  readonly raft: () => MembershipRaft | undefined;
  /** This node's slot and the slot table's size, once the node knows its slot. */
  readonly slots: () => { readonly self: number; readonly count: number } | undefined;
  /** R, the voter count to keep (--kv-replicas as persisted). */
  readonly replicas: () => number;
  /** Server names of the peers whose route is up now. */
  readonly upPeers: () => Iterable<string>;
  /** The server name bound to a slot, if any. */
  readonly peerOf: (id: number) => string | undefined;
  /** A slot's name for the logs. */
  readonly peerName: (id: number) => string;
  /** Raft has work: run the Ready loop. */
  readonly schedule: () => void;
  /** How long a voter's route may be down before a learner replaces it (NodeOptions.voterGraceMs). */
  readonly voterGraceMs: number;
  /** Date.now() in production. */
  readonly now: () => number;
  readonly log: Logger;
}

/** The current Raft configuration, by slot. */
export interface Membership {
  readonly voters: readonly number[];
  readonly learners: readonly number[];
}

/** The executor's side for the control plane and tests (ClusterNode.membership); round() stays the node's. */
export type MembershipControl = Pick<MembershipExecutor, 'current' | 'removedSlots' | 'setRemovedSlots' | 'transferLeadership'>;

export class MembershipExecutor {
  private readonly o: MembershipExecutorOptions;
  /** Voters whose route is down, and since when (the leader replaces one down past voterGraceMs). */
  private readonly voterDown: VoterDownWatch;
  private removed: ReadonlySet<number> = new Set();

  constructor(o: MembershipExecutorOptions) {
    this.o = o;
    this.voterDown = new VoterDownWatch(o.voterGraceMs);
  }

  /** Slots an operator removed (`cluster remove`, replicated by the control plane): never re-added as learners. */
  get removedSlots(): ReadonlySet<number> {
    return this.removed;
  }

  /**
   * The slots an operator removed (replicated through the control plane's `config` bucket, so whichever node
   * leads sees the same set): the leader removes them from the configuration and never re-adds them.
   */
  setRemovedSlots(ids: Iterable<number>): void {
    this.removed = new Set(ids);
  }

  /** The current Raft configuration (voters and learners by slot), undefined before Raft starts. */
  current(): Membership | undefined {
    const raw = this.o.raft();
    if (!raw) return undefined;
    const conf = raw.confState();
    return { voters: [...conf.voters], learners: [...conf.learners] };
  }

  /**
   * One leader round: keeps the voter count at R (--kv-replicas), one conf change at a time:
   * - every slot that is not a member is added as a learner (slots beyond R at bootstrap; a replaced
   *   voter when it comes back);
   * - a voter whose route has been down longer than voterGraceMs is replaced by a caught-up, connected
   *   learner: promote first (R+1 voters), then remove the dead one, so the count never drops below R.
   * A follower does nothing.
   */
  round(): void {
    const raw = this.o.raft();
    const slots = this.o.slots();
    if (!raw || !slots) return;
    const st = raw.basicStatus();
    // Not while far behind its own commit index (the configuration read below would be stale); a small gap is
    // normal under a steady write load and must not starve membership changes (raft refuses a second pending one).
    if (st.state !== StateType.leader || st.applied + promoteWindow < st.commit) return;
    const conf = raw.confState();
    const up = new Set(this.o.upPeers());
    const isUp = (id: number): boolean => id === slots.self || up.has(this.o.peerOf(id) ?? '\0');
    const dead = this.voterDown.dead(conf.voters, isUp, this.o.now());
    const decision = nextMembershipChange({
      self: slots.self, voters: conf.voters, learners: conf.learners, slots: slots.count, replicas: this.o.replicas(),
      removed: this.removed, isUp, deadVoters: dead, progress: raw.status().progress, commit: st.commit,
    });
    if (decision === undefined) return;
    if (decision.kind === 'handOff') {
      try {
        this.transferLeadership();
        this.o.log.warn({ id: slots.self }, decision.why);
      } catch (e) {
        if (!(e instanceof NodeError)) throw e;
        this.o.log.error({ id: slots.self }, `cannot remove this node: ${e.message}`);
      }
      return;
    }
    try {
      raw.proposeConfChange({ type: decision.type, nodeId: decision.nodeId });
      const name = this.o.peerName(decision.nodeId);
      this.o.log.warn({ id: decision.nodeId, name, voters: conf.voters, learners: conf.learners, graceMs: this.o.voterGraceMs }, decision.why);
      this.o.schedule();
    } catch (e) {
      if (!(e instanceof RaftError)) throw e; // another change is pending: try again next round
    }
  }

  /** Asks the leader to hand leadership to `id` (default: the most caught-up other voter). */
  transferLeadership(id?: number): void {
    const raw = this.o.raft();
    if (!raw) throw new NodeError(NodeErrorCode.noLeader, 'raft has not started on this node yet', true);
    let target = id;
    if (target === undefined) {
      const st = raw.status();
      let best = -1;
      for (const [pid, p] of st.progress) if (pid !== st.id && !p.isLearner && p.match > best) { best = p.match; target = pid; }
      if (target === undefined) throw new NodeError(NodeErrorCode.noLeader, 'this node is not the leader, or has no other voter to transfer to', false);
    }
    raw.transferLeadership(target);
    this.o.schedule();
  }
}
