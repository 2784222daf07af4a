// Snapshot files: snap/<index>-<term>.snap (16 digits each), one CRC-framed record holding the
// metadata and the state machine's image. Written tmp -> fsync -> rename -> fsync dir, so a crash
// leaves either the old set or the new file complete; a file that fails its CRC is renamed
// *.broken (kept for inspection) and the next newest valid one is used.
import { dirname, join } from 'node:path';
import type { ConfState, Snapshot } from '../raft/types.js';
import { copyBytes, isUint, pack, unpack } from './codec.js';
import { FormatVersionError, StoreError, StoreErrorCode } from './errors.js';
import { FORMAT_VERSION } from './format.js';
import { type StoreFs, syncDir, writeFileDurable } from './fs.js';
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
  const head = snapshotFileHead(s);
  return [sealSnapshotFileHead(head, crc32c(s.data, crc32c(head, crc32c(head, 0, 0, 4), 8, head.length))), s.data];
}

/**
 * encodeSnapshotFileParts, with the CRC over the image run in slices of crcSliceBytes with a turn of the event loop
 * between them: at 1M keys the image is ~260 MB, and one crc32c call over it held the event loop (heartbeats, every
 * client) for most of a second each time a snapshot was taken or installed.
 */
export async function encodeSnapshotFilePartsYielding(s: Snapshot): Promise<Uint8Array[]> {
  const head = snapshotFileHead(s);
  let crc = crc32c(head, crc32c(head, 0, 0, 4), 8, head.length);
  // Bounded: data.length / crcSliceBytes slices.
  for (let at = 0; at < s.data.length; at += crcSliceBytes) {
    crc = crc32c(s.data, crc, at, Math.min(s.data.length, at + crcSliceBytes));
    if (at + crcSliceBytes < s.data.length) await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return [sealSnapshotFileHead(head, crc), s.data];
}

/** Bytes of image checksummed per turn of the event loop (a few ms of crc32c). */
const crcSliceBytes = 2 << 20;

/** The record header and the body up to the image (its CRC field still 0). */
function snapshotFileHead(s: Snapshot): Uint8Array {
  const w = new MsgpackWriter(64 + 5 * (s.meta.conf.voters.length + s.meta.conf.learners.length));
  w.array(6);
  for (const n of [FORMAT_VERSION, s.meta.index, s.meta.term]) w.uint(n);
  for (const ids of [s.meta.conf.voters, s.meta.conf.learners]) {
    w.array(ids.length);
    for (const id of ids) w.uint(id);
  }
  w.binHeader(s.data.length);
  const bodyHead = w.finish();
  const head = new Uint8Array(RECORD_HEADER_BYTES + bodyHead.length);
  const dv = new DataView(head.buffer);
  dv.setUint32(0, bodyHead.length + s.data.length, true);
  head[8] = SNAPSHOT_TYPE;
  head.set(bodyHead, RECORD_HEADER_BYTES);
  return head;
}

/** Writes the CRC (as wal/record.ts checks it: the length field, then the type and the body) into the header. */
function sealSnapshotFileHead(head: Uint8Array, crc: number): Uint8Array {
  new DataView(head.buffer, head.byteOffset, head.byteLength).setUint32(4, crc, true);
  return head;
}

/**
 * Decodes a whole snapshot file; returns the reason when it is not one valid snapshot record.
 * Throws FormatVersionError for a valid file of a newer format (never set aside as damage).
 */
export function decodeSnapshotFile(buf: Uint8Array, path = 'snapshot'): Snapshot | string {
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
    out = { meta: { index, term, conf }, data: copyBytes(data) };
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
      const decoded = decodeSnapshotFile(await this.fs.readFile(path), path);
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
    await this.fs.mkdir(this.dir);
    await syncDir(this.fs, dirname(this.dir));
    const path = join(this.dir, snapshotName(s.meta.index, s.meta.term));
    await writeFileDurable(this.fs, path, await encodeSnapshotFilePartsYielding(s));
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
