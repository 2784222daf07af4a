// Snapshot files: snap/<index>-<term>.snap (16 digits each), one CRC-framed record holding the
// metadata and the state machine's image. Written tmp -> fsync -> rename -> fsync dir, so a crash
// leaves either the old set or the new file complete; a file that fails its CRC is renamed
// *.broken (kept for inspection) and the next newest valid one is used.
import { dirname, join } from 'node:path';
import type { ConfState, Snapshot } from '../raft/types.js';
import { copyBytes, isUint, pack, unpack } from './codec.js';
import { FormatVersionError } from './errors.js';
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
 * The CRC of a snapshot file is computed this many bytes at a time, with a turn of the event loop between two runs:
 * the table-driven CRC-32C does 120-400 MB/s here, so one run over a whole image of tens of MB held the loop for
 * 25-50 ms at 10k-50k keys (bench/tail_probe.ts under bench:efficiency's load) and seconds at 1M keys — every
 * write waiting behind it. 256 KiB is 1-2 ms of work.
 */
export const snapshotCrcSliceBytes = 256 << 10;

/** The record header and the body up to the image (everything but the image and the CRC field). */
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
  new DataView(head.buffer).setUint32(0, bodyHead.length + s.data.length, true);
  head[8] = SNAPSHOT_TYPE;
  head.set(bodyHead, RECORD_HEADER_BYTES);
  return head;
}

/**
 * The file's bytes as [record header and body up to the image, the image itself]: the same bytes as one record
 * `pack([format, index, term, voters, learners, data])`, without copying the image (tens to hundreds of MB) into a
 * body and then into a record. The CRC runs over both parts.
 */
export function encodeSnapshotFileParts(s: Snapshot): Uint8Array[] {
  const head = snapshotFileHead(s);
  // As wal/record.ts checks it: the length field, then the type and the body.
  const crc = crc32c(s.data, crc32c(head, crc32c(head, 0, 0, 4), 8, head.length));
  new DataView(head.buffer).setUint32(4, crc, true);
  return [head, s.data];
}

/** encodeSnapshotFileParts, with the CRC over the image computed snapshotCrcSliceBytes at a time between turns of the event loop. */
export async function encodeSnapshotFilePartsYielding(s: Snapshot, sliceBytes = snapshotCrcSliceBytes): Promise<Uint8Array[]> {
  const head = snapshotFileHead(s);
  let crc = crc32c(head, crc32c(head, 0, 0, 4), 8, head.length);
  for (let at = 0; at < s.data.length; at += sliceBytes) {
    if (at > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    crc = crc32c(s.data, crc, at, Math.min(s.data.length, at + sliceBytes));
  }
  new DataView(head.buffer).setUint32(4, crc, true);
  return [head, s.data];
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

  /** Keeps the `retain` newest snapshot files; removes older ones and stray temporaries. Returns the kept indexes. */
  async prune(retain: number): Promise<number[]> {
    const all = await this.fs.readdir(this.dir);
    const snaps = all.filter((n) => NAME.test(n)).sort().reverse();
    const drop = [...snaps.slice(retain), ...all.filter((n) => n.endsWith('.tmp'))];
    for (const n of drop) await this.fs.unlink(join(this.dir, n));
    if (drop.length > 0) await syncDir(this.fs, this.dir);
    return snaps.slice(0, retain).map((n) => Number(NAME.exec(n)![1]));
  }
}
