// The request path between a node's pending requests (requests.ts) and its Raft: how a waiting write reaches Raft
// (in the node's session envelope), how a read batch asks for a read index, and which Ready driver events settle
// them (an applied write of this process, read states, a new leader, an advanced batch, a stopped loop). The node
// wires its PendingRequests this way, and test/sim wires each simulated node's the same way, so that the simulator's
// clients go through the code a NATS client's request goes through, not a copy of it (issue 17).
import { RaftError, type RawNode, type ReadState, type SoftState } from '../../raft/index.js';
import { PendingRequests, type PendingRequestsOptions } from './requests.js';
import type { AppliedWrite } from './ready_driver.js';
import { encodeEnvelope } from './wire.js';

/** What the request path uses of Raft. */
export type RequestRaft = Pick<RawNode, 'basicStatus' | 'propose' | 'readIndex'>;

export interface RequestPathOptions extends Omit<PendingRequestsOptions, 'propose' | 'readIndex'> {
  /** The node's Raft; undefined before it starts (requests then wait, and are retried on the next tick). */
  readonly raw: () => RequestRaft | undefined;
  /** This node's Raft id, the envelope's origin; undefined while the node does not know its slot yet. */
  readonly origin: () => number | undefined;
  /** Runs the Ready driver soon: a proposal or a read index request leaves Raft as part of a Ready. */
  readonly schedule: () => void;
  /** The state machine's applied index: reads wait until it reaches their read index. */
  readonly appliedIndex: () => number;
}

/**
 * A node's PendingRequests, wired to its Raft and fed by its Ready driver's events. Owns no state of its own but the
 * leader last seen (a new leader makes every waiting write be proposed again).
 */
export class RequestPath<R> {
  readonly requests: PendingRequests<R>;
  private readonly o: RequestPathOptions;
  private lastLead = 0;

  constructor(options: RequestPathOptions) {
    this.o = options;
    this.requests = new PendingRequests<R>({
      ...options,
      propose: (seq, command) => this.propose(seq, command),
      readIndex: (context) => this.readIndex(context),
    });
  }

  /** Hands a waiting write to Raft in this node's session envelope; false without a leader or when Raft refuses. */
  private propose(seq: number, command: Uint8Array): boolean {
    const raw = this.o.raw();
    const origin = this.o.origin();
    if (raw === undefined || origin === undefined || raw.basicStatus().lead === 0) return false;
    try {
      raw.propose(encodeEnvelope(origin, this.o.boot, seq, command));
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return false;
    }
    this.o.schedule();
    return true;
  }

  /** Asks Raft for a read index (a waiting read batch's context); false without a leader or when Raft refuses. */
  private readIndex(context: Uint8Array): boolean {
    const raw = this.o.raw();
    if (raw === undefined || raw.basicStatus().lead === 0) return false;
    try {
      raw.readIndex(context);
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return false;
    }
    this.o.schedule();
    return true;
  }

  // The Ready driver's events (DriverEvents) that concern requests.

  /** A soft state: true when the leader changed (a write submitted to the old one may be lost with it). */
  softState(ss: SoftState): boolean {
    if (ss.lead === this.lastLead) return false;
    this.lastLead = ss.lead;
    if (ss.lead !== 0) this.requests.leaderChanged();
    return true;
  }

  /** An applied write: resolves it if this process (origin and boot) proposed it. */
  applied(write: AppliedWrite<R> | undefined): void {
    if (write === undefined) return;
    const env = write.envelope;
    if (env.origin === this.o.origin() && env.boot === this.o.boot) this.requests.writeApplied(env.seq, write.result);
  }

  readStates(states: readonly ReadState[]): void {
    this.requests.readIndexesArrived(states);
  }

  /** The batch is applied and acknowledged: serves the reads whose read index is applied now. */
  advanced(): void {
    this.requests.serveReads(this.o.appliedIndex());
  }
}
