// The backup file of `membershipd snapshot save`: a point-in-time image of every KV bucket (the state machine's own
// snapshot bytes) with a header saying where it comes from, laid out so that any damage is found before anything
// is trusted, and reported with its byte offset:
//
//   offset 0   magic "MBSNAP01" (8 bytes: a file of something else is refused at offset 0)
//   offset 8   header length, u32 big-endian
//   offset 12  header: UTF-8 JSON (SnapshotHeader)
//   then       SHA-256 of the header bytes (32)
//   then       body: the KV image, `bodyBytes` long, checked in blocks of `blockBytes` against `blocks[i]` (SHA-256
//              each, so a flipped byte is located to its block) and as a whole against `sha256`
//   end        nothing may follow (a concatenation or an appended tail is refused)
import { createHash } from 'node:crypto';

export const backupMagic = 'MBSNAP01';
export const backupVersion = 1;
/** Checksum granularity of the body: small enough to locate damage, large enough to keep the header small. */
export const backupBlockBytes = 64 * 1024;
/** A header larger than this is not one of ours (the slot table of 1000 nodes is far below it). */
export const backupHeaderBytesMax = 4 * 1024 * 1024;

export interface BackupBucketCount {
  readonly name: string;
  readonly keys: number;
  readonly values: number;
  readonly bytes: number;
}

/** What `snapshot inspect` prints; the KV image itself says nothing about the cluster it came from. */
export interface SnapshotHeader {
  readonly format: 'membershipd-snapshot';
  readonly version: number;
  readonly cluster: string;
  /** The Raft index the image is at (everything committed up to it, nothing after). */
  readonly index: number;
  readonly term: number;
  /** ISO 8601 time the image was taken on `via`. */
  readonly time: string;
  /** Server name of the node that took the image. */
  readonly via: string;
  readonly membershipdVersion: string;
  /** Raft configuration at the time: voters, learners and the slot table (id, address, server name). */
  readonly conf: {
    readonly voters: readonly number[];
    readonly learners: readonly number[];
    readonly slots: readonly { readonly id: number; readonly address: string; readonly name: string | null }[];
  };
  readonly buckets: readonly BackupBucketCount[];
  readonly bodyBytes: number;
  readonly blockBytes: number;
  readonly blocks: readonly string[];
  readonly sha256: string;
}

export type SnapshotHeaderInput = Omit<SnapshotHeader, 'format' | 'version' | 'bodyBytes' | 'blockBytes' | 'blocks' | 'sha256'>;

export const BackupErrorCode = {
  /** The file is not a whole, undamaged backup; `offset` is where the problem is. */
  corrupt: 'EBACKUP_CORRUPT',
  /** A backup of a later format than this build reads. */
  version: 'EBACKUP_VERSION',
} as const;
export type BackupErrorCode = (typeof BackupErrorCode)[keyof typeof BackupErrorCode];

export class BackupError extends Error {
  readonly code: BackupErrorCode;
  readonly offset: number;
  constructor(code: BackupErrorCode, offset: number, message: string) {
    super(message);
    this.name = 'BackupError';
    this.code = code;
    this.offset = offset;
  }
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function blockHashes(body: Uint8Array, blockBytes: number): string[] {
  const out: string[] = [];
  for (let o = 0; o < body.length; o += blockBytes) out.push(sha256(body.subarray(o, Math.min(body.length, o + blockBytes))));
  return out;
}

/** The whole file for a KV image and its header fields. */
export function encodeBackup(input: SnapshotHeaderInput, body: Uint8Array): Buffer {
  const header: SnapshotHeader = {
    format: 'membershipd-snapshot', version: backupVersion, ...input,
    bodyBytes: body.length, blockBytes: backupBlockBytes, blocks: blockHashes(body, backupBlockBytes), sha256: sha256(body),
  };
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(h.length);
  return Buffer.concat([Buffer.from(backupMagic, 'latin1'), len, h, createHash('sha256').update(h).digest(), body]);
}

const isUint = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** Checks every byte of a backup file; returns its header and body (a view) or throws BackupError with the offset. */
export function decodeBackup(file: Uint8Array): { header: SnapshotHeader; body: Uint8Array } {
  const bad = (offset: number, why: string): never => {
    throw new BackupError(BackupErrorCode.corrupt, offset, `not a valid membershipd snapshot: ${why} (at byte offset ${offset} of ${file.length}); take a new one with "membershipd snapshot save FILE"`);
  };
  const buf = Buffer.from(file.buffer, file.byteOffset, file.length);
  if (buf.length < 12) bad(buf.length, `the file is ${buf.length} bytes, shorter than the 12-byte preamble (truncated)`);
  if (buf.toString('latin1', 0, 8) !== backupMagic) bad(0, `it does not start with "${backupMagic}"`);
  const headerBytes = buf.readUInt32BE(8);
  if (headerBytes === 0 || headerBytes > backupHeaderBytesMax) bad(8, `header length ${headerBytes} is out of range 1..${backupHeaderBytesMax}`);
  const bodyStart = 12 + headerBytes + 32;
  if (buf.length < bodyStart) bad(buf.length, `the file ends inside the header, which ends at byte ${bodyStart} (truncated)`);
  const h = buf.subarray(12, 12 + headerBytes);
  if (!createHash('sha256').update(h).digest().equals(buf.subarray(12 + headerBytes, bodyStart))) {
    bad(12, `the header (bytes 12..${12 + headerBytes}) does not match its SHA-256`);
  }
  let header: SnapshotHeader;
  try {
    header = JSON.parse(h.toString('utf8')) as SnapshotHeader;
  } catch (err) {
    return bad(12, `the header is not JSON (${(err as Error).message})`);
  }
  if (header?.format !== 'membershipd-snapshot') bad(12, 'the header names another format');
  if (header.version !== backupVersion) {
    throw new BackupError(BackupErrorCode.version, 12, `snapshot format version ${String(header.version)} is not ${backupVersion}, the one this membershipd reads; use the membershipd version that wrote it (${String(header.membershipdVersion)})`);
  }
  const { bodyBytes, blockBytes, blocks } = header;
  if (!isUint(bodyBytes) || !isUint(blockBytes) || blockBytes === 0 || !Array.isArray(blocks) || blocks.length !== Math.ceil(bodyBytes / blockBytes)
    || !isUint(header.index) || !isUint(header.term) || typeof header.sha256 !== 'string' || !Array.isArray(header.buckets)) {
    bad(12, 'the header misses fields or has inconsistent sizes');
  }
  const end = bodyStart + bodyBytes;
  if (buf.length < end) bad(buf.length, `the body should end at byte ${end} (truncated)`);
  if (buf.length > end) bad(end, `${buf.length - end} bytes follow the end of the body`);
  const body = buf.subarray(bodyStart, end);
  for (let i = 0; i < blocks.length; i++) {
    const o = i * blockBytes;
    if (sha256(body.subarray(o, Math.min(bodyBytes, o + blockBytes))) !== blocks[i]) {
      bad(bodyStart + o, `body block ${i} (bytes ${bodyStart + o}..${bodyStart + Math.min(bodyBytes, o + blockBytes)}) does not match its SHA-256`);
    }
  }
  if (sha256(body) !== header.sha256) bad(bodyStart, 'the body does not match its SHA-256');
  return { header, body };
}
