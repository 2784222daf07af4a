// The public surface of raft/: a pure, deterministic Raft state machine. See README.md.
export { RawNode } from './raw_node.js';
export type { Ready, SoftState, Status, BasicStatus, ProgressStatus, RawNodeConfig } from './raw_node.js';
export { StateType, PlantedBug, defaultLimits } from './raft.js';
export type { Limits, RaftConfig } from './raft.js';
export { MessageType, message, emptyBytes } from './messages.js';
export type { Message, SnapshotChunk } from './messages.js';
export { ConfChangeType, encodeConfChange, decodeConfChange, applyConfChange } from './conf_change.js';
export type { ConfChange } from './conf_change.js';
export { MemoryStorage, emptySnapshot, emptyConfState } from './storage.js';
export type { Storage, InitialState } from './storage.js';
export type { ReadState } from './read_only.js';
export { ProgressState } from './progress.js';
export { committedIndex, voteResult, hasQuorum, VoteResult } from './quorum.js';
export { seededRng } from './rng.js';
export type { Rng } from './rng.js';
export { RaftError, RaftErrorCode, RaftAssertionError, assert } from './errors.js';
export { EntryType, emptyHardState } from './types.js';
export type { Entry, HardState, ConfState, Snapshot, SnapshotMetadata } from './types.js';
