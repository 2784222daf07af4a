// A minimal msgpack writer for the KV snapshot image (issue 20): the image used to be packed from a tree of JS arrays
// (one array per entry, a few hundred bytes of heap each), which for 100k keys allocated ~100 MB of short-lived heap
// per snapshot and took most of the snapshot's time; the writer emits the same msgpack shapes straight into one
// growing buffer. Canonical: every value takes its shortest form, so equal states give equal bytes. Integers of 2^32
// and beyond are written as float64 (exact up to 2^53), which every msgpack reader decodes to the same number.
import { assert } from '../assert.js';

const textEncoder = new TextEncoder();
const copyLoopBytesMax = 1024;

export class MsgpackWriter {
  private buf: Uint8Array;
  private view: DataView;
  private at = 0;

  constructor(initialBytes: number) {
    this.buf = new Uint8Array(Math.max(1024, initialBytes));
    this.view = new DataView(this.buf.buffer);
  }

  /** The bytes written so far (a view of the writer's buffer: the writer must not be used after). */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.at);
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.at + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.at));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  array(length: number): void {
    this.room(5);
    if (length < 16) this.buf[this.at++] = 0x90 | length;
    else if (length < 0x10000) {
      this.buf[this.at] = 0xdc;
      this.view.setUint16(this.at + 1, length);
      this.at += 3;
    } else {
      this.buf[this.at] = 0xdd;
      this.view.setUint32(this.at + 1, length);
      this.at += 5;
    }
  }

  uint(n: number): void {
    assert(Number.isSafeInteger(n) && n >= 0, `msgpack uint ${n}`);
    this.room(9);
    const b = this.buf;
    if (n < 0x80) b[this.at++] = n;
    else if (n < 0x100) {
      b[this.at++] = 0xcc;
      b[this.at++] = n;
    } else if (n < 0x10000) {
      b[this.at] = 0xcd;
      this.view.setUint16(this.at + 1, n);
      this.at += 3;
    } else if (n < 0x100000000) {
      b[this.at] = 0xce;
      this.view.setUint32(this.at + 1, n);
      this.at += 5;
    } else {
      b[this.at] = 0xcb;
      this.view.setFloat64(this.at + 1, n);
      this.at += 9;
    }
  }

  str(s: string): void {
    // A UTF-16 code unit takes at most 3 UTF-8 bytes: room for the worst case, then the header for the real length.
    this.room(5 + s.length * 3);
    const headerBytes = s.length * 3 < 32 ? 1 : s.length * 3 < 0x100 ? 2 : s.length * 3 < 0x10000 ? 3 : 5;
    const written = textEncoder.encodeInto(s, this.buf.subarray(this.at + headerBytes)).written;
    // Shortest header for the real length: move the bytes when the worst-case header was longer.
    const need = written < 32 ? 1 : written < 0x100 ? 2 : written < 0x10000 ? 3 : 5;
    if (need !== headerBytes) this.buf.copyWithin(this.at + need, this.at + headerBytes, this.at + headerBytes + written);
    if (need === 1) this.buf[this.at] = 0xa0 | written;
    else if (need === 2) {
      this.buf[this.at] = 0xd9;
      this.buf[this.at + 1] = written;
    } else if (need === 3) {
      this.buf[this.at] = 0xda;
      this.view.setUint16(this.at + 1, written);
    } else {
      this.buf[this.at] = 0xdb;
      this.view.setUint32(this.at + 1, written);
    }
    this.at += need + written;
  }

  /** Starts a bin32 value whose bytes the caller writes next (its length is set by endBin32); returns its mark. */
  beginBin32(): number {
    this.room(5);
    this.buf[this.at] = 0xc6;
    this.at += 5;
    return this.at;
  }

  endBin32(mark: number): void {
    this.view.setUint32(mark - 4, this.at - mark);
  }

  /** Bytes that are already msgpack, appended as they are. */
  raw(bytes: Uint8Array): void {
    this.room(bytes.length);
    this.buf.set(bytes, this.at);
    this.at += bytes.length;
  }

  /** The header of a bin value of `length` bytes, its bytes to follow elsewhere. */
  binHeader(length: number): void {
    this.room(5);
    if (length < 0x100) {
      this.buf[this.at] = 0xc4;
      this.buf[this.at + 1] = length;
      this.at += 2;
    } else if (length < 0x10000) {
      this.buf[this.at] = 0xc5;
      this.view.setUint16(this.at + 1, length);
      this.at += 3;
    } else {
      this.buf[this.at] = 0xc6;
      this.view.setUint32(this.at + 1, length);
      this.at += 5;
    }
  }

  bin(bytes: Uint8Array): void {
    this.binRange(bytes, 0, bytes.length);
  }

  /** bytes[start, end) as one bin value. */
  binRange(bytes: Uint8Array, start: number, end: number): void {
    const n = end - start;
    this.binHeader(n);
    this.room(n);
    if (n === bytes.length) this.buf.set(bytes, this.at);
    else if (n <= copyLoopBytesMax) {
      // A loop beats making a view to set() from, for the small values a KV holds.
      const out = this.buf;
      for (let i = 0, o = this.at; i < n; i++) out[o + i] = bytes[start + i]!;
    } else this.buf.set(bytes.subarray(start, end), this.at);
    this.at += n;
  }
}
