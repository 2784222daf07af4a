// Recovery scan of the WAL directory. Every record of every segment is CRC-checked.
// - A torn or bad record at the tail of the LAST segment is cut off: group commit acknowledges a
//   record only after its fdatasync, and the last batch is the only one whose sync can have been cut
//   short, so nothing acknowledged is lost.
// - Zeros from a record boundary to the end of the LAST segment are its preallocated space (wal.ts),
//   not damage: the data ends there and nothing is cut (the space is reused).
// - Damage anywhere else (an earlier segment, a missing segment, or a bad record in the last segment
//   that valid records follow) is refused with the file, the byte offset and what to do: repairing it
//   would silently drop acknowledged data.
import { join } from 'node:path';
import { CorruptionError, FormatVersionError } from '../errors.js';
import { FORMAT_VERSION } from '../format.js';
import { type StoreFs, syncDir } from '../fs.js';
import type { StoreLogger } from '../logger.js';
import { type DecodeFailure, findValidRecordAfter, RecordDecoder } from './record.js';
import { decodeHeader, HEADER_TYPE, parseSegmentName, segmentName } from './segment.js';

export const CORRUPTION_REMEDY =
  'The store will not guess which data is good. Stop this node, move its data directory aside (keep it for ' +
  'inspection) and start the node with an empty one: it rejoins and receives a snapshot from the leader, as ' +
  'the other voters hold every acknowledged write. On a single-node cluster restore the directory from a backup.';

export interface SegmentState {
  readonly seq: number;
  readonly path: string;
  /** Bytes of valid records (after any tail repair). */
  size: number;
}

export interface TailRepair {
  readonly file: string;
  readonly offset: number;
  readonly droppedBytes: number;
  readonly reason: string;
}

export interface WalRecovery {
  readonly segments: SegmentState[];
  /** The torn tail that was cut off, if any. */
  readonly repaired: TailRepair | null;
  /**
   * Sequence for the next new segment: after the last one kept. A last segment removed for holding
   * nothing valid (killed between its create and its header) gives its number back, or the next
   * rollover would leave a gap that the following recovery refuses as a missing segment.
   */
  readonly nextSeq: number;
}

/** Called for each valid non-header record, in log order. `body` is valid only during the call. */
export type OnWalRecord = (type: number, body: Uint8Array, seq: number, offset: number) => void;

interface ScanResult {
  readonly failure: DecodeFailure | null;
  readonly buf: Buffer;
}

function scanSegment(buf: Buffer, path: string, seq: number, bodyBytesMax: number, on: OnWalRecord): ScanResult {
  const dec = new RecordDecoder(bodyBytesMax);
  let sawHeader = false;
  let headerProblem: string | null = null;
  const failure = dec.push(buf, (type, body, offset) => {
    if (headerProblem) return;
    if (!sawHeader) {
      sawHeader = true;
      const h = type === HEADER_TYPE ? decodeHeader(body) : null;
      if (!h) headerProblem = 'the first record is not a segment header';
      else if (h.format > FORMAT_VERSION) throw new FormatVersionError(path, h.format, FORMAT_VERSION);
      else if (h.seq !== seq) headerProblem = `the header names segment ${h.seq}, the file name says ${seq}`;
      return;
    }
    on(type, body, seq, offset);
  });
  if (headerProblem) return { failure: { offset: 0, reason: headerProblem }, buf };
  if (failure) return { failure, buf };
  if (dec.pendingBytes > 0) {
    return { failure: { offset: dec.offset, reason: `incomplete record (${dec.pendingBytes} bytes of it present)` }, buf };
  }
  if (!sawHeader) return { failure: { offset: 0, reason: 'empty segment (no header)' }, buf };
  return { failure: null, buf };
}

function allZeroFrom(buf: Buffer, from: number): boolean {
  for (let i = from; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

export async function recoverSegments(
  fs: StoreFs,
  walDir: string,
  opts: { bodyBytesMax: number; logger: StoreLogger },
  on: OnWalRecord,
): Promise<WalRecovery> {
  const seqs = (await fs.readdir(walDir))
    .map(parseSegmentName)
    .filter((s): s is number => s !== null)
    .sort((a, b) => a - b);
  const segments: SegmentState[] = [];
  let repaired: TailRepair | null = null;
  let removedSeq: number | null = null;
  for (let k = 0; k < seqs.length; k++) {
    const seq = seqs[k]!;
    const path = join(walDir, segmentName(seq));
    if (k > 0 && seq !== seqs[k - 1]! + 1) {
      throw new CorruptionError(join(walDir, segmentName(seqs[k - 1]! + 1)), 0, 'this segment is missing between two present ones', CORRUPTION_REMEDY);
    }
    const isLast = k === seqs.length - 1;
    const { failure, buf } = scanSegment(await fs.readFile(path), path, seq, opts.bodyBytesMax, on);
    if (!failure) {
      segments.push({ seq, path, size: buf.length });
      continue;
    }
    if (!isLast) throw new CorruptionError(path, failure.offset, `${failure.reason}, and later segments exist`, CORRUPTION_REMEDY);
    if (failure.offset > 0 && allZeroFrom(buf, failure.offset)) {
      segments.push({ seq, path, size: failure.offset });
      continue;
    }
    const next = findValidRecordAfter(buf, failure.offset, opts.bodyBytesMax);
    if (next >= 0) {
      throw new CorruptionError(
        path,
        failure.offset,
        `${failure.reason}, and a valid record follows at offset ${next}, so this is not a torn tail`,
        CORRUPTION_REMEDY,
      );
    }
    repaired = { file: path, offset: failure.offset, droppedBytes: buf.length - failure.offset, reason: failure.reason };
    opts.logger.warn(repaired, 'WAL: cutting off a torn tail of the last segment (it was never acknowledged)');
    if (failure.offset === 0) {
      await fs.unlink(path);
      await syncDir(fs, walDir);
      removedSeq = seq;
    } else {
      const fd = await fs.open(path, 'r+');
      try {
        await fs.ftruncate(fd, failure.offset);
        await fs.fdatasync(fd);
      } finally {
        await fs.close(fd);
      }
      segments.push({ seq, path, size: failure.offset });
    }
  }
  const last = segments[segments.length - 1];
  return { segments, repaired, nextSeq: removedSeq ?? (last ? last.seq + 1 : 1) };
}
