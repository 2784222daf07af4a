// Typed errors of the cluster node. `retryable` tells a caller (admin API, CLI) whether sending the
// same request again may succeed: true for elections and timeouts, false for refusals.
import { MembershipdError } from '../errors.js';

export const NodeErrorCode = {
  /** No leader is known and none appeared within the wait bound (election, or no quorum). */
  noLeader: 'ENODE_NO_LEADER',
  /** The proposal was handed to Raft but not applied within the bound: its outcome is unknown. */
  timeout: 'ENODE_TIMEOUT',
  /** The node is stopping or stopped. */
  stopped: 'ENODE_STOPPED',
  /** Options or persisted cluster state are inconsistent; the node cannot start. */
  config: 'ENODE_CONFIG',
  /** The data directory was written with an on-disk KV format this version cannot replay (see RUNBOOK). */
  dataFormat: 'ENODE_DATA_FORMAT',
  /** Too many requests are waiting for a leader. */
  overloaded: 'ENODE_OVERLOADED',
} as const;
export type NodeErrorCode = (typeof NodeErrorCode)[keyof typeof NodeErrorCode];

export class NodeError extends MembershipdError {
  readonly retryable: boolean;
  constructor(code: NodeErrorCode, message: string, retryable: boolean, options?: { cause?: unknown }) {
    super(code, message, options);
    this.retryable = retryable;
  }
}
