// Data types shared by raft/ and its callers (store/ persists them, transport/ carries messages).
// Entries and snapshot data are opaque bytes to Raft: the state machine owns their meaning.

export const EntryType = {
  /** An ordinary proposal; `data` is the caller's command. */
  normal: 0,
  /** A configuration change; `data` is an encoded ConfChange (see conf_change.ts). */
  confChange: 1,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

export interface Entry {
  readonly term: number;
  readonly index: number;
  readonly type: EntryType;
  /** Empty for the no-op a new leader appends (Raft thesis §6.4). */
  readonly data: Uint8Array;
}

/** What must be durable before any message that depends on it leaves (Raft paper Fig. 2, "persistent state"). */
export interface HardState {
  readonly term: number;
  /** Node id voted for in `term`, or 0 for none. */
  readonly vote: number;
  readonly commit: number;
}

/** Voters and learners of a configuration. Node ids are positive integers; 0 means "none". */
export interface ConfState {
  readonly voters: readonly number[];
  readonly learners: readonly number[];
}

export interface SnapshotMetadata {
  /** Last log index the snapshot covers. */
  readonly index: number;
  readonly term: number;
  /** The configuration in force at `index`. */
  readonly conf: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMetadata;
  /** The state machine's image at meta.index, opaque to Raft. */
  readonly data: Uint8Array;
}

export const emptyHardState: HardState = { term: 0, vote: 0, commit: 0 };
