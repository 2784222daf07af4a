// Snapshot files: snap/<index>-<term>.snap (16 digits each), one CRC-framed record holding the
// metadata and the state machine's image. Written tmp -> fsync -> rename -> fsync dir, so a crash
// leaves either the old set or the new file complete; a file that fails its CRC is renamed
// *.broken (kept for inspection) and the next newest valid one is used.
import { dirname, join } from 'node:path';
import type { ConfState, Snapshot, SnapshotMetadata } from '../raft/types.js';
import { copyBytes, isUint, pack, unpack } from './codec.js';
import { FormatVersionError, StoreError, StoreErrorCode } from './errors.js';
import { FORMAT_VERSION } from './format.js';
import { type StoreFs, syncDir, writeAll, writeFileDurable } from './fs.js';
import type { StoreLogger } from './logger.js';
import { crc32c } from './crc32c.js';
import { MsgpackWriter } from './kv/msgpack_writer.js';
import { RECORD_HEADER_BYTES, RecordDecoder } from './wal/record.js';

export const SNAPSHOT_TYPE = 5;
const NAME = /^(\d{16})-(\d{16})\.snap$/;

export function snapshotName(index: number, term: number): string {
  return `${String(index).padStart(16, '0')}-${String(term).padStart(16, '0')}.snap`;
}

export function encodeSnapshotFile(s: Snapshot): Buffer {
  return Buffer.concat(encodeSnapshotFileParts(s));
}

/**
 * The file's bytes as [record header and body up to the image, the image itself]: the same bytes as one record
 * `pack([format, index, term, voters, learners, data])`, without copying the image (tens to hundreds of MB) into a
 * body and then into a record. The CRC runs over both parts.
 */
export function encodeSnapshotFileParts(s: Snapshot): Uint8Array[] {
  return encodeSnapshotFileFrom(s.meta, [s.data]);
}

/** The record body up to the image: [format, index, term, voters, learners, (the image's bin header follows)]. */
function snapshotBodyHead(meta: SnapshotMetadata): MsgpackWriter {
  const w = new MsgpackWriter(64 + 5 * (meta.conf.voters.length + meta.conf.learners.length));
  w.array(6);
  for (const n of [FORMAT_VERSION, meta.index, meta.term]) w.uint(n);
  for (const ids of [meta.conf.voters, meta.conf.learners]) {
    w.array(ids.length);
    for (const id of ids) w.uint(id);
  }
  return w;
}

/** encodeSnapshotFileParts for an image given as chunks (MsgpackWriter.finishParts): written as they are. */
export function encodeSnapshotFileFrom(meta: SnapshotMetadata, data: readonly Uint8Array[]): Uint8Array[] {
  let dataBytes = 0;
  for (const d of data) dataBytes += d.length;
  const w = snapshotBodyHead(meta);
  w.binHeader(dataBytes);
  const bodyHead = w.finish();
  const head = new Uint8Array(RECORD_HEADER_BYTES + bodyHead.length);
  const dv = new DataView(head.buffer);
  dv.setUint32(0, bodyHead.length + dataBytes, true);
  head[8] = SNAPSHOT_TYPE;
  head.set(bodyHead, RECORD_HEADER_BYTES);
  // As wal/record.ts checks it: the length field, then the type and the body.
  let crc = crc32c(head, crc32c(head, 0, 0, 4), 8, head.length);
  for (const d of data) crc = crc32c(d, crc);
  dv.setUint32(4, crc, true);
  return [head, ...data];
}

/** Bytes of each read when a streamed snapshot file is read back for its CRC. */
const crcReadBytes = 1 << 20;

/**
 * A snapshot file written while its image is produced (issue 20 item 4): the image never exists whole in memory,
 * only the chunk being filled and those being written. The file has the layout of encodeSnapshotFileFrom, except
 * that the image's bin header is always bin32 (its length is not known when the header is written; any msgpack
 * reader accepts a longer form). Lengths that were unknown when their bytes were written are patched in place at the
 * end, and the record's CRC is then computed by reading the file back (from the page cache: a read, not a second
 * image in memory). Written to a .tmp file, fsynced, renamed, the directory fsynced, like any snapshot file.
 */
export class SnapshotFileWriter {
  private position: number;
  private pending: Promise<void> = Promise.resolve();
  private failure: unknown;
  private closed = false;

  private constructor(
    private readonly fs: StoreFs,
    private readonly fd: number,
    readonly path: string,
    /** File offset of the image's first byte. */
    private readonly dataStart: number,
  ) {
    this.position = dataStart;
  }

  static async create(fs: StoreFs, dir: string, meta: SnapshotMetadata): Promise<SnapshotFileWriter> {
    await fs.mkdir(dir);
    await syncDir(fs, dirname(dir));
    const path = join(dir, snapshotName(meta.index, meta.term));
    const w = snapshotBodyHead(meta);
    w.beginBin32(); // the image's length, patched by finish()
    const bodyHead = w.finish();
    const head = new Uint8Array(RECORD_HEADER_BYTES + bodyHead.length);
    head[8] = SNAPSHOT_TYPE;
    head.set(bodyHead, RECORD_HEADER_BYTES);
    const fd = await fs.open(`${path}.tmp`, 'w+');
    const file = new SnapshotFileWriter(fs, fd, path, head.length);
    try {
      await writeAll(fs, fd, head, 0);
    } catch (err) {
      await file.abort();
      throw err;
    }
    return file;
  }

  /** Appends image bytes; `done` runs once they are written (the buffer may then be reused). Writes are in order. */
  append(bytes: Uint8Array, done?: () => void): void {
    const at = this.position;
    this.position += bytes.length;
    this.pending = this.pending.then(async () => {
      if (this.failure !== undefined) return;
      try {
        await writeAll(this.fs, this.fd, bytes, at);
        done?.();
      } catch (err) {
        this.failure = err;
      }
    });
  }

  /** Resolves once every append so far is written; throws the first write error. */
  async drain(): Promise<void> {
    await this.pending;
    if (this.failure !== undefined) throw this.failure;
  }

  /**
   * Writes the late lengths ([offset in the image, uint32 value], MsgpackWriter.latePatches), the image's and the
   * record's lengths and the CRC; makes the file durable under its name. Returns the image's length in bytes.
   */
  async finish(latePatches: readonly (readonly [number, number])[]): Promise<number> {
    await this.drain();
    const dataBytes = this.position - this.dataStart;
    const u32 = (v: number, littleEndian = false): Uint8Array => {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, v, littleEndian);
      return b;
    };
    for (const [offset, value] of latePatches) await writeAll(this.fs, this.fd, u32(value), this.dataStart + offset);
    await writeAll(this.fs, this.fd, u32(dataBytes), this.dataStart - 4);
    await writeAll(this.fs, this.fd, u32(this.position - RECORD_HEADER_BYTES, true), 0);
    // As wal/record.ts checks it: the length field, then the type and the body (everything after the CRC field).
    const buf = new Uint8Array(Math.min(crcReadBytes, this.position));
    let crc = 0;
    for (let at = 0; at < this.position;) {
      const n = await this.fs.read(this.fd, buf, 0, Math.min(buf.length, this.position - at), at);
      if (n <= 0) throw Object.assign(new Error(`snapshot file ${this.path}.tmp ended at ${at} of ${this.position} bytes`), { code: 'EIO' });
      const from = at === 0 ? 8 : 0;
      if (at === 0) crc = crc32c(buf, 0, 0, 4);
      crc = crc32c(buf, crc, from, n);
      at += n;
    }
    await writeAll(this.fs, this.fd, u32(crc, true), 4);
    await this.fs.fsync(this.fd);
    this.closed = true;
    await this.fs.close(this.fd);
    await this.fs.rename(`${this.path}.tmp`, this.path);
    await syncDir(this.fs, dirname(this.path));
    return dataBytes;
  }

  /** Closes and removes the unfinished file (a snapshot abandoned: the node stopping, or a write error). */
  async abort(): Promise<void> {
    await this.pending;
    if (!this.closed) {
      this.closed = true;
      await this.fs.close(this.fd);
    }
    await this.fs.unlink(`${this.path}.tmp`).catch(() => undefined);
  }
}

/**
 * Decodes a whole snapshot file; returns the reason when it is not one valid snapshot record.
 * Throws FormatVersionError for a valid file of a newer format (never set aside as damage). `owned`: `buf` was read
 * for this call and nothing else refers to it, so the image may be a view of it instead of a copy.
 */
export function decodeSnapshotFile(buf: Uint8Array, path = 'snapshot', owned = false): Snapshot | string {
  let newer = 0;
  const dec = new RecordDecoder(buf.length);
  let out: Snapshot | string = 'no record';
  let count = 0;
  const failure = dec.push(buf, (type, body) => {
    count++;
    if (type !== SNAPSHOT_TYPE) {
      out = `record type ${type} is not a snapshot`;
      return;
    }
    let v: unknown;
    try {
      v = unpack(body);
    } catch (err) {
      out = `undecodable body: ${String(err)}`;
      return;
    }
    if (!Array.isArray(v) || v.length !== 6) {
      out = 'malformed body';
      return;
    }
    const [format, index, term, voters, learners, data] = v as unknown[];
    if (isUint(format) && format > FORMAT_VERSION) {
      newer = format;
      return;
    }
    if (!isUint(format) || format < 1) {
      out = `format version ${String(format)} is not valid`;
      return;
    }
    const ids = (x: unknown): x is number[] => Array.isArray(x) && x.every(isUint);
    if (!isUint(index) || !isUint(term) || !ids(voters) || !ids(learners) || !(data instanceof Uint8Array)) {
      out = 'malformed body';
      return;
    }
    const conf: ConfState = { voters, learners };
    // A file read for this call is owned: its image is kept as a view (no second copy of tens of MB).
    out = { meta: { index, term, conf }, data: owned ? data : copyBytes(data) };
  });
  if (failure) return `${failure.reason} at offset ${failure.offset}`;
  if (newer > 0) throw new FormatVersionError(path, newer, FORMAT_VERSION);
  if (dec.pendingBytes > 0) return `truncated (${dec.pendingBytes} bytes of an incomplete record)`;
  if (count !== 1) return count === 0 ? 'empty file' : `${count} records, expected 1`;
  return out;
}

export interface StoredSnapshot {
  readonly snapshot: Snapshot;
  readonly path: string;
}

export class SnapshotFiles {
  readonly dir: string;
  private readonly fs: StoreFs;
  private readonly logger: StoreLogger;

  constructor(fs: StoreFs, dir: string, logger: StoreLogger) {
    this.fs = fs;
    this.dir = dir;
    this.logger = logger;
  }

  /** Snapshot file names, newest (highest index, then term) first. */
  async names(): Promise<string[]> {
    return (await this.fs.readdir(this.dir)).filter((n) => NAME.test(n)).sort().reverse();
  }

  /**
   * Valid snapshots, newest first, read lazily: a damaged file is renamed *.broken, logged, and
   * skipped, so the next newest valid one wins.
   */
  async *valid(): AsyncGenerator<StoredSnapshot> {
    for (const name of await this.names()) {
      const path = join(this.dir, name);
      const decoded = decodeSnapshotFile(await this.fs.readFile(path), path, true);
      const m = NAME.exec(name)!;
      if (typeof decoded !== 'string' && (decoded.meta.index !== Number(m[1]) || decoded.meta.term !== Number(m[2]))) {
        this.logger.warn({ file: path }, 'snapshot: contents do not match the file name; ignored');
        continue;
      }
      if (typeof decoded === 'string') {
        this.logger.warn({ file: path, reason: decoded }, 'snapshot: damaged file set aside as .broken; trying an older one');
        await this.fs.rename(path, `${path}.broken`);
        await syncDir(this.fs, this.dir);
        continue;
      }
      yield { snapshot: decoded, path };
    }
  }

  async save(s: Snapshot): Promise<string> {
    return this.saveParts(s.meta, [s.data]);
  }

  /** A file for the snapshot `meta`, its image to be appended as it is produced (SnapshotFileWriter). */
  begin(meta: SnapshotMetadata): Promise<SnapshotFileWriter> {
    return SnapshotFileWriter.create(this.fs, this.dir, meta);
  }

  /** save() of an image given as chunks, written as they are (never joined into one buffer). */
  async saveParts(meta: SnapshotMetadata, data: readonly Uint8Array[]): Promise<string> {
    await this.fs.mkdir(this.dir);
    await syncDir(this.fs, dirname(this.dir));
    const path = join(this.dir, snapshotName(meta.index, meta.term));
    await writeFileDurable(this.fs, path, encodeSnapshotFileFrom(meta, data));
    return path;
  }

  /**
   * Moves a received snapshot file (checked by IncomingSnapshotFile.finish) to its place as the snapshot `meta` names.
   * Throws ESTORE_BAD_REQUEST when it is not there: Raft was handed a reference to a file never received.
   */
  async adopt(received: string, meta: Snapshot['meta']): Promise<string> {
    if (!(await this.fs.exists(received))) {
      throw new StoreError(StoreErrorCode.badRequest, `snapshot ${meta.index}/${meta.term} was to be installed from ${received}, which was never received`);
    }
    const path = join(this.dir, snapshotName(meta.index, meta.term));
    await this.fs.rename(received, path);
    await syncDir(this.fs, this.dir);
    return path;
  }

  /** Bytes of a snapshot file's record body: its image and the few bytes of metadata before it (for size heuristics). */
  async imageBytes(path: string): Promise<number> {
    const fd = await this.fs.open(path, 'r');
    try {
      const head = new Uint8Array(RECORD_HEADER_BYTES);
      await this.fs.read(fd, head, 0, head.length, 0);
      return new DataView(head.buffer).getUint32(0, true);
    } finally {
      await this.fs.close(fd);
    }
  }

  /** Keeps the `retain` newest snapshot files; removes older ones and stray temporaries. Returns the kept indexes. */
  async prune(retain: number): Promise<number[]> {
    const all = await this.fs.readdir(this.dir);
    const snaps = all.filter((n) => NAME.test(n)).sort().reverse();
    // A received file left unused (its transfer was overtaken by a newer snapshot) is dropped with the old ones.
    const newest = snaps.length > 0 ? Number(NAME.exec(snaps[0]!)![1]) : 0;
    const stale = all.filter((n) => n.endsWith('.snap.recvd') && Number(n.slice(0, 16)) <= newest);
    const drop = [...snaps.slice(retain), ...all.filter((n) => n.endsWith('.tmp')), ...stale];
    for (const n of drop) await this.fs.unlink(join(this.dir, n));
    if (drop.length > 0) await syncDir(this.fs, this.dir);
    return snaps.slice(0, retain).map((n) => Number(NAME.exec(n)![1]));
  }
}
