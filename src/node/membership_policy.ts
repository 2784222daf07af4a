// Which configuration change the leader makes next to keep R voters (--kv-replicas), as a pure function of what
// it sees (issue 17: membership policy tested without clusters). The leader (membership_executor.ts round) gathers
// the view, proposes the change, and asks again on its next round: one change at a time, as Raft requires.
//
// - An operator's `cluster remove` comes first (a leader removed by the operator hands leadership over instead).
// - A voter whose route has been down longer than the grace period is replaced by a caught-up, connected
//   learner: promote first (R+1 voters), then remove the dead one, so the count never drops below R.
// - R lowered: the least caught-up voter that does not lead steps down (re-added as a learner next).
// - R raised or a voter removed: a replicating learner within promoteWindow of the commit index is promoted.
// - Every slot that is not a member (slots beyond R at bootstrap, a replaced voter coming back) becomes a learner.
import { ConfChangeType } from '../../raft/index.js';

/** A learner within this many entries of the commit index is caught up enough to become a voter (R raised). */
export const promoteWindow = 256;
/** The dead-voter replacement must not wait: a learner within this many entries of the commit replaces it. */
const replaceWindow = 16;

export interface MemberProgress {
  readonly match: number;
  /** Raft's progress state: 'probe' | 'replicate' | 'snapshot'. */
  readonly state: string;
}

export interface MembershipView {
  /** This node's slot (the leader). */
  readonly self: number;
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  /** Slots in the slot table (1..slots): every one is a member unless an operator removed it. */
  readonly slots: number;
  /** R, the voter count to keep. */
  readonly replicas: number;
  /** Slots an operator removed (`cluster remove`). */
  readonly removed: ReadonlySet<number>;
  /** The route to this slot is up (always true for `self`). */
  readonly isUp: (id: number) => boolean;
  /** Voters whose route has been down for at least the grace period, in configuration order. */
  readonly deadVoters: readonly number[];
  readonly progress: ReadonlyMap<number, MemberProgress>;
  readonly commit: number;
}

export type MembershipDecision =
  | { readonly kind: 'handOff'; readonly why: string }
  | { readonly kind: 'change'; readonly type: ConfChangeType; readonly nodeId: number; readonly why: string };

const change = (type: ConfChangeType, nodeId: number, why: string): MembershipDecision => ({ kind: 'change', type, nodeId, why });

export function nextMembershipChange(v: MembershipView): MembershipDecision | undefined {
  const match = (id: number): number => v.progress.get(id)?.match ?? 0;
  const removed = [...v.voters, ...v.learners].find((id) => v.removed.has(id));
  if (removed !== undefined) {
    if (removed === v.self) return { kind: 'handOff', why: 'this node was removed by an operator: handing leadership over first' };
    return change(ConfChangeType.remove, removed, 'removing a member an operator removed');
  }
  const dead = v.deadVoters;
  if (v.voters.length > v.replicas && dead.length > 0) return change(ConfChangeType.remove, dead[0]!, 'removing a dead voter replaced by a promoted learner');
  if (v.voters.length === v.replicas && dead.length > 0) {
    let best: number | undefined;
    for (const l of v.learners) {
      // Caught up: within a small margin of the commit index (it keeps receiving appends).
      if (v.isUp(l) && match(l) + replaceWindow >= v.commit && (best === undefined || match(l) > match(best))) best = l;
    }
    if (best !== undefined) return change(ConfChangeType.promote, best, `voter ${dead[0]} unreachable: promoting a caught-up learner`);
  }
  if (v.voters.length > v.replicas) {
    const drop = v.voters.filter((id) => id !== v.self).sort((a, b) => match(a) - match(b))[0];
    if (drop !== undefined) return change(ConfChangeType.remove, drop, `${v.voters.length} voters, R is ${v.replicas}: a voter steps down to learner`);
  }
  if (v.voters.length < v.replicas) {
    // Under a steady write load a healthy learner trails by what is in flight, so the margin is wider than the
    // dead-voter replacement's.
    const best = v.learners.filter((l) => v.isUp(l) && v.progress.get(l)?.state === 'replicate' && match(l) + promoteWindow >= v.commit)
      .sort((a, b) => match(b) - match(a))[0];
    if (best !== undefined) return change(ConfChangeType.promote, best, `${v.voters.length} of ${v.replicas} voters: promoting a caught-up learner`);
  }
  for (let id = 1; id <= v.slots; id++) {
    if (v.voters.includes(id) || v.learners.includes(id) || v.removed.has(id)) continue;
    return change(ConfChangeType.addLearner, id, 'adding a learner');
  }
  return undefined;
}

/**
 * When each voter's route went down, as the leader saw it round after round: a voter down for at least the grace
 * period (--voter-grace, NodeOptions.voterGraceMs) is dead, and nextMembershipChange replaces it. A voter seen up
 * again starts afresh: a flapping route never adds up to the grace period.
 */
export class VoterDownWatch {
  private readonly since = new Map<number, number>();
  private readonly graceMs: number;

  constructor(graceMs: number) {
    this.graceMs = graceMs;
  }

  /** Records which `voters` are up at `now`; returns those down for at least the grace period, in their order. */
  dead(voters: readonly number[], isUp: (id: number) => boolean, now: number): number[] {
    for (const v of voters) {
      if (isUp(v)) this.since.delete(v);
      else if (!this.since.has(v)) this.since.set(v, now);
    }
    return voters.filter((v) => now - (this.since.get(v) ?? now) >= this.graceMs);
  }
}
