// Operating errors of store/: each carries a stable `code` that callers branch on (never the message
// text) and a message that says what was wrong and what the operator can do. Broken invariants use
// assert() (store/assert.ts) instead and are never caught.

export const StoreErrorCode = {
  /** A record or file failed its CRC or framing check somewhere other than the torn tail. */
  corrupt: 'ESTORE_CORRUPT',
  /** The data directory was written by a newer (or unknown) on-disk format. */
  formatVersion: 'ESTORE_FORMAT_VERSION',
  /** The disk is full: the batch was not written; later appends may succeed once space returns. */
  noSpace: 'ESTORE_NO_SPACE',
  /** The disk reported an I/O error; the batch is not durable. */
  io: 'ESTORE_IO',
  /** The WAL could not restore a consistent state after a failed write and refuses further appends. */
  failed: 'ESTORE_FAILED',
  /** The store was closed. */
  closed: 'ESTORE_CLOSED',
  /** A caller asked for something the store does not hold (compacted or beyond the last index). */
  compacted: 'ESTORE_COMPACTED',
  unavailable: 'ESTORE_UNAVAILABLE',
  /** A caller broke the Raft storage contract (non-contiguous append, snapshot older than the log). */
  badRequest: 'ESTORE_BAD_REQUEST',
  /** Another process holds the data directory. */
  locked: 'ESTORE_LOCKED',
} as const;
export type StoreErrorCode = (typeof StoreErrorCode)[keyof typeof StoreErrorCode];

export class StoreError extends Error {
  readonly code: StoreErrorCode;
  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Damage that recovery must not repair by itself: names the file, the byte offset and the way out. */
export class CorruptionError extends StoreError {
  readonly file: string;
  readonly offset: number;
  readonly reason: string;
  constructor(file: string, offset: number, reason: string, remedy: string) {
    super(StoreErrorCode.corrupt, `${file} is damaged at byte offset ${offset}: ${reason}. ${remedy}`);
    this.file = file;
    this.offset = offset;
    this.reason = reason;
  }
}

export class FormatVersionError extends StoreError {
  readonly found: number;
  readonly supported: number;
  constructor(dir: string, found: number, supported: number) {
    super(
      StoreErrorCode.formatVersion,
      `data directory ${dir} has on-disk format version ${found}, but this membershipd supports up to ${supported}: ` +
        'run a membershipd release that supports it, or point --data-dir at another directory',
    );
    this.found = found;
    this.supported = supported;
  }
}

/** ENOSPC / EIO on a write or sync, mapped so callers branch on one code. */
export class DiskError extends StoreError {
  readonly syscall: string;
  readonly path: string;
  constructor(code: typeof StoreErrorCode.noSpace | typeof StoreErrorCode.io, syscall: string, path: string, cause: unknown) {
    const what =
      code === StoreErrorCode.noSpace
        ? 'the disk is full; free space on it and the write can be retried'
        : 'the disk reported an I/O error; check the device (dmesg) before retrying';
    super(code, `${syscall} on ${path} failed: ${what}`, { cause });
    this.syscall = syscall;
    this.path = path;
  }
}

/** Maps a node:fs error to a DiskError when it is ENOSPC/EDQUOT/EIO; anything else is returned unchanged. */
export function diskError(err: unknown, syscall: string, path: string): unknown {
  const c = (err as NodeJS.ErrnoException | undefined)?.code;
  if (c === 'ENOSPC' || c === 'EDQUOT') return new DiskError(StoreErrorCode.noSpace, syscall, path, err);
  if (c === 'EIO') return new DiskError(StoreErrorCode.io, syscall, path, err);
  return err;
}
