// Who leads, as this node's Raft says (issue 17: apart from node.ts). The Ready driver reports Raft's soft state;
// a change of leader is counted and logged, told first to the node's own parts (`changed`: the frame router restarts
// the leader's silence count, the KV proposes its waiting writes again) and then to the listeners (the control
// plane's first-leader duties, service presence, the snapshot stream). A listener that throws is logged and the
// others still hear of the change. test/unit/leadership.test.ts scripts the soft states.
import { StateType, type RawNode, type SoftState } from '../../raft/index.js';
import type { Logger } from '../log.js';
import type { NodeMetrics } from './status.js';

export type LeaderListener = (isLeader: boolean, leaderName: string | undefined) => void;

export interface LeadershipOptions {
  readonly serverName: string;
  /** Raft, once started. */
  readonly raft: () => Pick<RawNode, 'basicStatus'> | undefined;
  /** This node's slot, once known. */
  readonly slot: () => number | undefined;
  /** The server name bound to a slot, if any. */
  readonly peerOf: (id: number) => string | undefined;
  /** A slot's name as listeners and logs show it (status.ts peerName). */
  readonly peerName: (id: number) => string;
  readonly metrics: Pick<NodeMetrics, 'leaderChanges'>;
  /** The node's parts that follow a leader change, told before the listeners; `lead` 0 when the leader was lost. */
  readonly changed: (lead: number) => void;
  readonly log: Logger;
}

export class Leadership {
  private readonly o: LeadershipOptions;
  private readonly listeners = new Set<LeaderListener>();
  private lastLead = 0;

  constructor(o: LeadershipOptions) {
    this.o = o;
  }

  /** Whether this node leads now (leader-only duties such as KV expiry proposals). */
  get isLeader(): boolean {
    return this.o.raft()?.basicStatus().state === StateType.leader;
  }

  /** The server name of the leader this node follows (itself when it leads); undefined while there is none. */
  leaderName(): string | undefined {
    const lead = this.o.raft()?.basicStatus().lead ?? 0;
    if (lead === 0) return undefined;
    return lead === this.o.slot() ? this.o.serverName : this.o.peerOf(lead);
  }

  /**
   * Called on every leader change with whether this node leads now (e.g. the first leader creates the
   * control buckets and records the slots in `nodes`). Returns the removal.
   */
  onLeaderChange(l: LeaderListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Raft's soft state from a Ready batch (ready_driver.ts `softState`): acts only when the leader changed. */
  softState(ss: SoftState): void {
    const lead = ss.lead;
    if (lead === this.lastLead) return;
    if (lead !== 0) this.o.metrics.leaderChanges++;
    this.o.log.info({ lead, state: ss.state, term: this.o.raft()?.basicStatus().term }, lead === 0 ? 'leader lost' : 'leader elected');
    this.lastLead = lead;
    this.o.changed(lead);
    const isLeader = ss.state === StateType.leader;
    const name = lead === 0 ? undefined : this.o.peerName(lead);
    for (const l of this.listeners) {
      try {
        l(isLeader, name);
      } catch (e) {
        this.o.log.error({ err: e }, 'leader listener threw');
      }
    }
  }
}
