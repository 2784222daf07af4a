// What `/healthz` says of a node that runs Raft, as a pure function of what the node sees (issue 17: health is
// tested without TLS clusters and polling). The node gathers a HealthView (node.ts statusView, status_reports.ts health()); the order of the
// checks below is the order in which an operator should look: membership, quorum, leadership, data.
import type { StateType } from '../../raft/index.js';

export type Health = { readonly status: 'ok' } | { readonly status: 'unavailable'; readonly reason: string };

export interface SilentVoter {
  readonly name: string;
  /** undefined: never heard from since this node started. */
  readonly silentMs: number | undefined;
}

export interface HealthView {
  /** This slot is no longer a member (removed by `cluster remove`): how to add it back. */
  readonly removed?: { readonly slot: number; readonly serverName: string; readonly address: string };
  /** Voters of the configuration in force (the bootstrap slots before the first one is applied). */
  readonly voters: number;
  /** Voters with an open route, this node included. */
  readonly reachable: number;
  /** Peers whose route is not up, as `name[: reason]`. */
  readonly notConnected: readonly string[];
  /** Voters other than this node not heard from within `windowMs` (heartbeat answers, votes, appends). */
  readonly silent: readonly SilentVoter[];
  /** One election timeout. */
  readonly windowMs: number;
  readonly role: StateType;
  readonly term: number;
  /** 0: no leader known. */
  readonly lead: number;
  readonly leaderName: string;
  /** The leader's route is up (a follower's view). */
  readonly leaderConnected: boolean;
  /** Since this node last heard from its leader. */
  readonly leaderSilentMs: number;
  readonly commit: number;
  readonly applied: number;
  /** Why the bootstrap is stuck, if it is (e.g. conflicting slot tables). */
  readonly bootstrapProblem?: string;
  /**
   * Whether this node is still catching up with the leader's own commit index (status.ts CatchUp): asked last, and
   * only when every other check passed, because the node remembers the first time it is caught up.
   */
  readonly catchingUp: () => Health | undefined;
}

function unavailable(reason: string): Health {
  return { status: 'unavailable', reason };
}

export function assessHealth(v: HealthView): Health {
  if (v.removed !== undefined) {
    const r = v.removed;
    return unavailable(`removed from the cluster: slot ${r.slot} is not a member (re-add it with "membershipd cluster add ${r.serverName} ${r.address}")`);
  }
  const quorum = Math.floor(v.voters / 2) + 1;
  if (v.reachable < quorum) {
    return unavailable(`no quorum: ${v.reachable} of ${v.voters} voters reachable${v.notConnected.length ? ` (not connected: ${v.notConnected.join(', ')})` : ''}`);
  }
  // Heard from, not connected: an open route proves nothing (a stopped process, or a peer whose route accepts bytes
  // and never answers, keeps its socket open). Used where this node should be hearing from every voter: as leader
  // (responses to its heartbeats) and during an election (votes).
  const heard = v.voters - v.silent.length;
  const silentText = v.silent.map((s) => `${s.name} ${s.silentMs === undefined ? 'never heard from' : `silent for ${s.silentMs} ms`}`).join(', ');
  if (v.role === 'leader' && heard < quorum) {
    // Check-quorum for health, within one election timeout: Raft's own check steps this leader down within two, and
    // meanwhile it cannot commit while the majority may already have elected another leader.
    return unavailable(`no quorum: this leader heard from ${heard} of ${v.voters} voters within ${v.windowMs} ms (${silentText}); it cannot commit, and the others may have elected a new leader`);
  }
  if (v.lead === 0) {
    return unavailable(`no leader: election in progress (term ${v.term}, heard from ${heard} of ${v.voters} voters within ${v.windowMs} ms${v.silent.length ? `; ${silentText}` : ''})${v.bootstrapProblem ? `; ${v.bootstrapProblem}` : ''}`);
  }
  if (v.role !== 'leader') {
    if (v.role !== 'follower') return unavailable(`no leader: this node is campaigning (${v.role}, term ${v.term})`);
    if (!v.leaderConnected) return unavailable(`leader ${v.leaderName} is not connected (election pending)`);
    if (v.leaderSilentMs > 2 * v.windowMs) return unavailable(`leader ${v.leaderName} not heard from for ${v.leaderSilentMs} ms`);
  }
  if (v.applied < v.commit) return unavailable(`catching up: applied ${v.applied} of commit ${v.commit}`);
  return v.catchingUp() ?? { status: 'ok' };
}
