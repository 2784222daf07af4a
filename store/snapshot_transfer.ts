// A snapshot streamed between nodes as its file, beside Raft (etcd's model: the raft snapshot message carries the
// metadata, the db file travels as a stream). store/ owns every byte on disk, so the two ends of a transfer live
// here: the sender reads the leader's snapshot file in bounded pieces (SnapshotFileReader), the receiver writes
// them to `<index>-<term>.snap.recv` and, once the whole file is there and its record CRC checks, renames it
// `.recvd` (IncomingSnapshotFile); RaftStorage.applySnapshot then adopts that file when Raft installs the snapshot.
//
// Raft itself never holds the image any more: what it carries as a snapshot's `data` is a reference
// (snapshotRefData), a few bytes that say "the file of this snapshot's index and term".
import { join } from 'node:path';
import { crc32c } from './crc32c.js';
import { CorruptionError, StoreError, StoreErrorCode } from './errors.js';
import { type StoreFs, syncDir, writeAll } from './fs.js';
import { ImageFormatError, MoreBytesNeeded, MsgpackReader } from './kv/msgpack_reader.js';
import { snapshotName, SNAPSHOT_TYPE } from './snapshot.js';
import { RECORD_HEADER_BYTES } from './wal/record.js';

/**
 * A snapshot's `data` standing for its file. 0xc1 is the one byte msgpack never uses, so no real image (a msgpack
 * value) starts with it: an image and a reference cannot be mistaken for each other.
 */
export const snapshotRefData: Uint8Array = Uint8Array.from([0xc1, ...new TextEncoder().encode('membershipd-snapshot-file')]);

export function isSnapshotRef(data: Uint8Array): boolean {
  if (data.length !== snapshotRefData.length) return false;
  for (let i = 0; i < data.length; i++) if (data[i] !== snapshotRefData[i]) return false;
  return true;
}

/** Name of a complete, verified received snapshot file waiting for Raft to install it. */
export function receivedSnapshotName(index: number, term: number): string {
  return `${snapshotName(index, term)}.recvd`;
}

/**
 * Where Raft's snapshot data (the node's image) lies in the bytes of a snapshot file of which the first `available`
 * have arrived: [start, end), or undefined while its header is not all here. For a follower parsing the image as it
 * is received (src/node/staged_restore.ts); the file's record CRC is still checked whole by IncomingSnapshotFile.
 * Throws ImageFormatError when the bytes are not a snapshot record.
 */
export function snapshotFileDataRange(file: Uint8Array, available: number): { start: number; end: number } | undefined {
  if (available < RECORD_HEADER_BYTES) return undefined;
  if (file[8] !== SNAPSHOT_TYPE) throw new ImageFormatError(`record type ${file[8]} is not a snapshot`);
  const r = new MsgpackReader(file.subarray(RECORD_HEADER_BYTES));
  r.setLimit(available - RECORD_HEADER_BYTES);
  try {
    if (r.array() !== 6) throw new ImageFormatError('snapshot record is not [format, index, term, voters, learners, data]');
    for (let k = 0; k < 3; k++) r.uint(); // format, index, term
    for (let k = 0; k < 2; k++) for (let n = r.array(); n > 0; n--) r.uint(); // voters, learners
    const bytes = r.binLength();
    const start = RECORD_HEADER_BYTES + r.offset;
    return { start, end: start + bytes };
  } catch (err) {
    if (err instanceof MoreBytesNeeded) return undefined;
    throw err;
  }
}

/** The leader's side: one snapshot file open for reading, in pieces (never the whole file in memory). */
export class SnapshotFileReader {
  private constructor(private readonly fs: StoreFs, private readonly fd: number, readonly bytes: number, readonly path: string) {}

  static async open(fs: StoreFs, path: string): Promise<SnapshotFileReader> {
    const fd = await fs.open(path, 'r');
    try {
      return new SnapshotFileReader(fs, fd, await fs.fstatSize(fd), path);
    } catch (err) {
      await fs.close(fd);
      throw err;
    }
  }

  /**
   * Bytes [offset, offset+length), in `into` when given (a buffer the caller reuses once it has copied them out: one
   * allocation per transfer rather than per chunk), else in a buffer of their own.
   */
  async read(offset: number, length: number, into?: Buffer): Promise<Uint8Array> {
    const n = Math.min(length, this.bytes - offset, into?.length ?? Infinity);
    const buf = into === undefined ? Buffer.allocUnsafe(n) : into.subarray(0, n);
    let done = 0;
    // Bounded: each read returns at least one byte or the file shrank (a short file is damage).
    while (done < n) {
      const got = await this.fs.read(this.fd, buf, done, n - done, offset + done);
      if (got <= 0) throw new CorruptionError(this.path, offset + done, `snapshot file ends at ${offset + done}, expected ${this.bytes} bytes`, 'the leader takes a new snapshot; restart it if this repeats');
      done += got;
    }
    return buf;
  }

  close(): Promise<void> {
    return this.fs.close(this.fd);
  }
}

/**
 * The follower's side: the file being received. Pieces arrive in order (one route connection, the sender's window),
 * are written at their offset, and the record CRC (wal/record.ts: over the length field, then type and body) runs
 * along so finish() needs no second pass over hundreds of MB.
 */
export class IncomingSnapshotFile {
  private received = 0;
  private crc = 0;
  private readonly head = new Uint8Array(RECORD_HEADER_BYTES);
  private closed = false;

  private constructor(
    private readonly fs: StoreFs,
    private readonly fd: number,
    readonly path: string,
    private readonly dir: string,
    readonly index: number,
    readonly term: number,
    readonly total: number,
  ) {}

  /**
   * Starts a file for snapshot index/term of `total` bytes in `dir`, removing partial ones left by broken transfers.
   * `transfer` names the file, so a transfer being abandoned never removes the file of the one replacing it.
   */
  static async create(fs: StoreFs, dir: string, index: number, term: number, total: number, transfer: number): Promise<IncomingSnapshotFile> {
    await fs.mkdir(dir);
    for (const name of await fs.readdir(dir)) if (name.endsWith('.recv')) await fs.unlink(join(dir, name)).catch(() => undefined);
    const path = join(dir, `${snapshotName(index, term)}.${transfer}.recv`);
    const fd = await fs.open(path, 'w');
    return new IncomingSnapshotFile(fs, fd, path, dir, index, term, total);
  }

  get bytesReceived(): number {
    return this.received;
  }

  /** Appends the piece at `offset` (which must be the bytes received so far: the sender sends in order). */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.closed) throw new StoreError(StoreErrorCode.badRequest, `snapshot transfer into ${this.path} already ended`);
    if (offset !== this.received || offset + data.length > this.total) {
      throw new StoreError(StoreErrorCode.badRequest, `snapshot piece at ${offset} (+${data.length}) does not follow the ${this.received} bytes received of ${this.total}`);
    }
    // The record header's bytes 4..8 hold the CRC itself: kept aside, and left out of the running CRC.
    for (let i = offset; i < Math.min(RECORD_HEADER_BYTES, offset + data.length); i++) this.head[i] = data[i - offset]!;
    const crcGap0 = Math.max(0, 4 - offset);
    const crcGap1 = Math.max(0, Math.min(data.length, 8 - offset));
    if (crcGap0 > 0) this.crc = crc32c(data, this.crc, 0, Math.min(crcGap0, data.length));
    this.crc = crc32c(data, this.crc, Math.max(crcGap0, crcGap1), data.length);
    await writeAll(this.fs, this.fd, data, offset);
    this.received += data.length;
  }

  /**
   * All bytes are in: checks the record (length field, type, CRC over every byte), makes it
   * durable, and renames it `<name>.recvd` for RaftStorage.applySnapshot to adopt. Throws CorruptionError when the
   * file is not the snapshot announced (the transfer is then abandoned and Raft's resend starts a new one).
   */
  async finish(): Promise<string> {
    if (this.received !== this.total) throw new StoreError(StoreErrorCode.badRequest, `snapshot transfer finished at ${this.received} of ${this.total} bytes`);
    const dv = new DataView(this.head.buffer);
    const bodyBytes = dv.getUint32(0, true);
    const refuse = (why: string): never => {
      throw new CorruptionError(this.path, 0, `received snapshot refused: ${why}`, 'the transfer restarts from the leader; nothing to do unless this repeats');
    };
    if (this.total < RECORD_HEADER_BYTES || RECORD_HEADER_BYTES + bodyBytes !== this.total) refuse(`length field says ${bodyBytes} body bytes, the file has ${this.total} bytes`);
    if (this.head[8] !== SNAPSHOT_TYPE) refuse(`record type ${this.head[8]} is not a snapshot`);
    if (dv.getUint32(4, true) !== this.crc) refuse('record CRC does not match its bytes');
    await this.fs.fsync(this.fd);
    await this.close();
    const done = join(this.dir, receivedSnapshotName(this.index, this.term));
    await this.fs.rename(this.path, done);
    await syncDir(this.fs, this.dir);
    return done;
  }

  /** Ends an unfinished transfer and removes its file (a broken link, a leader change, a refused piece). */
  async abandon(): Promise<void> {
    if (this.closed) return;
    await this.close();
    await this.fs.unlink(this.path).catch(() => undefined);
  }

  private async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fs.close(this.fd);
  }
}

/**
 * The state machine's image inside a snapshot file, read without blocking the event loop (an async read) and
 * without a copy (a view into the read buffer). The file's CRC was checked when it was written or received.
 */
export async function readSnapshotImage(fs: StoreFs, path: string): Promise<Uint8Array> {
  const buf = await fs.readFile(path);
  try {
    const r = new MsgpackReader(buf.subarray(RECORD_HEADER_BYTES));
    if (buf[8] !== SNAPSHOT_TYPE || r.array() !== 6) throw new Error('not a snapshot record');
    for (let k = 0; k < 3; k++) r.uint(); // format, index, term
    for (let k = 0; k < 2; k++) for (let n = r.array(); n > 0; n--) r.uint(); // voters, learners
    return r.bin();
  } catch (cause) {
    throw new CorruptionError(path, 0, `snapshot file unreadable: ${(cause as Error).message}`, 'remove the data directory and let the node rejoin by snapshot');
  }
}
