// raft/ may import nothing outside raft/, so it has its own error base. Operating errors carry a
// stable `code` that callers branch on; broken invariants go through assert() and stay on.

export const RaftErrorCode = {
  /** The proposal was not accepted: no leader known, a leader transfer is running, or the node was removed. */
  proposalDropped: 'ERAFT_PROPOSAL_DROPPED',
  /** A conf change was refused: another is pending, or it is invalid for the current configuration. */
  confChangeRefused: 'ERAFT_CONF_CHANGE_REFUSED',
  /** The requested log index lies before the storage's first index (compacted into a snapshot). */
  compacted: 'ERAFT_COMPACTED',
  /** The requested log index lies after the storage's last index. */
  unavailable: 'ERAFT_UNAVAILABLE',
  /** Bytes that should hold an encoded conf change do not. */
  badConfChange: 'ERAFT_BAD_CONF_CHANGE',
  /** A configuration option is out of range. */
  badConfig: 'ERAFT_BAD_CONFIG',
} as const;
export type RaftErrorCode = (typeof RaftErrorCode)[keyof typeof RaftErrorCode];

export class RaftError extends Error {
  readonly code: RaftErrorCode;
  constructor(code: RaftErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RaftError';
    this.code = code;
  }
}

/** A broken invariant: a bug in raft/ or in the caller's use of the Ready/advance contract. */
export class RaftAssertionError extends Error {
  readonly code = 'ERAFT_ASSERTION';
  constructor(message: string) {
    super(message);
    this.name = 'RaftAssertionError';
  }
}

export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new RaftAssertionError(message);
}
