// Public surface of store/: everything membershipd keeps on disk, and the KV state machine.
export { StoreError, StoreErrorCode, CorruptionError, FormatVersionError, DiskError } from './errors.js';
export { AssertionError } from './assert.js';
export type { StoreFs } from './fs.js';
export { nodeFs } from './fs.js';
export type { StoreLogger } from './logger.js';
export { FORMAT_VERSION } from './format.js';
export { lockDir, LOCK_FILE } from './lock.js';
export { packOwned } from './codec.js';
export { MsgpackWriter } from './kv/msgpack_writer.js';
export { MsgpackReader, MoreBytesNeeded, ImageFormatError } from './kv/msgpack_reader.js';
export { crc32c } from './crc32c.js';
export { snapshotRefData, isSnapshotRef, snapshotFileDataRange, IncomingSnapshotFile, SnapshotFileReader } from './snapshot_transfer.js';
export { RaftStorage, type RaftStorageOptions, type RecoveryReport, type RangeErrors, type SnapshotWriteOptions } from './raft_storage.js';
export { Wal, type WalOptions, type WalSegmentInfo, type WalSyncMode } from './wal/wal.js';
export { RecordDecoder, encodeRecords, type RecordInput, type DecodeFailure } from './wal/record.js';
export type { TailRepair } from './wal/recovery.js';
export { encodeKvCommand, decodeKvCommand, nonceLimits, nonceRetentionMs, txnLimits, msgIdBytesMax, type KvCommand, type KvWriteCommand, type KvGuard, type BucketConfigInput, type NonceClaim, type WriteExtras } from './kv/command.js';
export {
  KvStateMachine,
  KvErrorCode,
  isValidKey,
  defaultKvLimits,
  defaultBucketConfig,
  storedBytes,
  type KvEntry,
  type KvOperation,
  type KvResult,
  type KvLimits,
  type KvListener,
  type BucketConfig,
  type BucketInfo,
  type StagedKvRestore,
} from './kv/state_machine.js';
export { quotaRefusal, quotaBytesOf, quotaExemptPrefix } from './kv/quota.js';
export {
  encodeBackup, decodeBackup, BackupError, BackupErrorCode, backupMagic, backupBlockBytes,
  type SnapshotHeader, type SnapshotHeaderInput, type BackupBucketCount,
} from './backup.js';
