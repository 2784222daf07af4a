// WAL record framing: [length u32 LE][crc32c u32 LE][type u8][body: `length` bytes, msgpack].
// The CRC covers the length field, the type and the body, so a flipped length bit is caught even when
// the bytes it then frames happen to be readable. Type 0 is never written: a zero-filled region (the
// hole a torn append can leave) never parses as a record.
//
// The decoder is an incremental byte state machine (CONVENTIONS.md §4): any split of the input works,
// a record lying inside one chunk is handed out as a view, a record straddling chunks is assembled in
// a buffer allocated only after its length passed the limit check.
import { crc32c } from '../crc32c.js';

export const RECORD_HEADER_BYTES = 9;
/** Default limit on one record's body; a larger length field is damage, not data. */
export const RECORD_BODY_BYTES_MAX = 16 * 1024 * 1024;

export interface RecordInput {
  readonly type: number;
  readonly body: Uint8Array;
}

export function recordBytes(bodyLength: number): number {
  return RECORD_HEADER_BYTES + bodyLength;
}

function checksum(buf: Uint8Array, at: number, bodyLength: number): number {
  const c = crc32c(buf, 0, at, at + 4);
  return crc32c(buf, c, at + 8, at + RECORD_HEADER_BYTES + bodyLength);
}

/** Encodes one record into `out` at `at`; returns the position after it. */
export function encodeRecordInto(out: Uint8Array, at: number, type: number, body: Uint8Array): number {
  if (!Number.isInteger(type) || type < 1 || type > 255) throw new RangeError(`record type ${type} is not in 1..255`);
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  dv.setUint32(at, body.length, true);
  out[at + 8] = type;
  out.set(body, at + RECORD_HEADER_BYTES);
  dv.setUint32(at + 4, checksum(out, at, body.length), true);
  return at + RECORD_HEADER_BYTES + body.length;
}

/** Encodes records back to back into one buffer (one write per batch). */
export function encodeRecords(records: readonly RecordInput[]): Buffer {
  let total = 0;
  for (const r of records) total += RECORD_HEADER_BYTES + r.body.length;
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const r of records) at = encodeRecordInto(out, at, r.type, r.body);
  return out;
}

export interface DecodeFailure {
  /** Stream offset of the first byte of the record that failed. */
  readonly offset: number;
  readonly reason: string;
}

/** Called for each valid record; `body` is valid only during the call (it may view the caller's chunk). */
export type OnRecord = (type: number, body: Uint8Array, offset: number) => void;

export class RecordDecoder {
  private readonly bodyBytesMax: number;
  /** Stream offset of the first byte not yet consumed as part of a complete record. */
  private pos = 0;
  private readonly head = new Uint8Array(RECORD_HEADER_BYTES);
  private part: Uint8Array | null = null;
  private partLen = 0;
  private failure: DecodeFailure | null = null;

  constructor(bodyBytesMax = RECORD_BODY_BYTES_MAX) {
    this.bodyBytesMax = bodyBytesMax;
  }

  /** Offset of the end of the last complete record. */
  get offset(): number {
    return this.pos;
  }

  /** Bytes held for an incomplete record. */
  get pendingBytes(): number {
    return this.partLen;
  }

  get failed(): DecodeFailure | null {
    return this.failure;
  }

  private fail(reason: string): DecodeFailure {
    this.failure = { offset: this.pos, reason };
    this.part = null;
    this.partLen = 0;
    return this.failure;
  }

  private checkHeader(h: Uint8Array, at: number): string | null {
    const len = (h[at]! | (h[at + 1]! << 8) | (h[at + 2]! << 16) | (h[at + 3]! << 24)) >>> 0;
    if (h[at + 8] === 0) return 'record type 0 (zeroed or never written)';
    if (len > this.bodyBytesMax) return `record length ${len} exceeds the limit of ${this.bodyBytesMax} bytes`;
    return null;
  }

  private verify(buf: Uint8Array, at: number, len: number, on: OnRecord): DecodeFailure | null {
    const stored = (buf[at + 4]! | (buf[at + 5]! << 8) | (buf[at + 6]! << 16) | (buf[at + 7]! << 24)) >>> 0;
    const actual = checksum(buf, at, len);
    if (stored !== actual) return this.fail(`CRC mismatch (stored ${stored.toString(16)}, computed ${actual.toString(16)})`);
    on(buf[at + 8]!, buf.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + len), this.pos);
    this.pos += RECORD_HEADER_BYTES + len;
    return null;
  }

  /** Feeds bytes; returns a failure (and stops) at the first damaged record. */
  push(chunk: Uint8Array, on: OnRecord): DecodeFailure | null {
    if (this.failure) return this.failure;
    let i = 0;
    if (this.partLen > 0) {
      i = this.continuePartial(chunk, on);
      if (this.failure) return this.failure;
      if (this.partLen > 0) return null;
    }
    while (chunk.length - i >= RECORD_HEADER_BYTES) {
      const bad = this.checkHeader(chunk, i);
      if (bad) return this.fail(bad);
      const len = (chunk[i]! | (chunk[i + 1]! << 8) | (chunk[i + 2]! << 16) | (chunk[i + 3]! << 24)) >>> 0;
      if (chunk.length - i < RECORD_HEADER_BYTES + len) break;
      if (this.verify(chunk, i, len, on)) return this.failure;
      i += RECORD_HEADER_BYTES + len;
    }
    if (i < chunk.length) this.startPartial(chunk.subarray(i));
    return null;
  }

  private startPartial(rest: Uint8Array): void {
    if (rest.length < RECORD_HEADER_BYTES) {
      this.head.set(rest, 0);
      this.part = null;
    } else {
      const len = (rest[0]! | (rest[1]! << 8) | (rest[2]! << 16) | (rest[3]! << 24)) >>> 0;
      this.part = new Uint8Array(RECORD_HEADER_BYTES + len);
      this.part.set(rest, 0);
    }
    this.partLen = rest.length;
  }

  /** Completes a record that straddles chunks; returns how many bytes of `chunk` it used. */
  private continuePartial(chunk: Uint8Array, on: OnRecord): number {
    let i = 0;
    if (this.part === null) {
      const n = Math.min(RECORD_HEADER_BYTES - this.partLen, chunk.length);
      this.head.set(chunk.subarray(0, n), this.partLen);
      this.partLen += n;
      i = n;
      if (this.partLen < RECORD_HEADER_BYTES) return i;
      const bad = this.checkHeader(this.head, 0);
      if (bad) {
        this.fail(bad);
        return i;
      }
      const len = (this.head[0]! | (this.head[1]! << 8) | (this.head[2]! << 16) | (this.head[3]! << 24)) >>> 0;
      this.part = new Uint8Array(RECORD_HEADER_BYTES + len);
      this.part.set(this.head, 0);
    }
    const part = this.part;
    const n = Math.min(part.length - this.partLen, chunk.length - i);
    part.set(chunk.subarray(i, i + n), this.partLen);
    this.partLen += n;
    i += n;
    if (this.partLen < part.length) return i;
    this.part = null;
    this.partLen = 0;
    this.verify(part, 0, part.length - RECORD_HEADER_BYTES, on);
    return i;
  }
}

/**
 * Looks for any valid record starting after `from` (a resynchronisation scan). Recovery uses it to
 * tell a torn tail (nothing valid follows the damage) from damage in the middle of written data.
 */
export function findValidRecordAfter(buf: Uint8Array, from: number, bodyBytesMax = RECORD_BODY_BYTES_MAX): number {
  for (let p = from + 1; p + RECORD_HEADER_BYTES <= buf.length; p++) {
    if (buf[p + 8] === 0) continue;
    const len = (buf[p]! | (buf[p + 1]! << 8) | (buf[p + 2]! << 16) | (buf[p + 3]! << 24)) >>> 0;
    if (len > bodyBytesMax || p + RECORD_HEADER_BYTES + len > buf.length) continue;
    const stored = (buf[p + 4]! | (buf[p + 5]! << 8) | (buf[p + 6]! << 16) | (buf[p + 7]! << 24)) >>> 0;
    if (stored === checksum(buf, p, len)) return p;
  }
  return -1;
}
