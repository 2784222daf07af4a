// A minimal msgpack writer for the KV snapshot image (issue 20): the image used to be packed from a tree of JS arrays
// (one array per entry, a few hundred bytes of heap each), which for 100k keys allocated ~100 MB of short-lived heap
// per snapshot and took most of the snapshot's time; the writer emits the same msgpack shapes straight into a
// growing buffer. Canonical: every value takes its shortest form, so equal states give equal bytes. Integers of 2^32
// and beyond are written as float64 (exact up to 2^53), which every msgpack reader decodes to the same number.
//
// With `chunkBytes`, the bytes go into a list of chunks of about that size instead of one buffer grown by doubling
// (issue 20 item 4): a doubled buffer holds up to twice the image, and each doubling copies it while the old one
// waits for the GC, so a 60 MB image cost up to 180 MB at its peak and kept 128 MB alive while it was written. The
// chunks are handed to the file write as they are (finishParts), never joined.
import { assert } from '../assert.js';

const textEncoder = new TextEncoder();
const copyLoopBytesMax = 1024;

/** Chunk size for a snapshot image: the size of a value slab (entry_table.ts), so freed chunks and slabs reuse each other's memory. */
export const imageChunkBytes = 1 << 20;
/** Chunks kept for reuse when a sink gives them back: the sink writes a few at a time. */
const spareChunksMax = 4;

export class MsgpackWriter {
  private buf: Uint8Array;
  private view: DataView;
  private at = 0;
  /** Chunks already filled (chunked mode), and the offset in the whole output where each starts. */
  private readonly parts: Uint8Array[] = [];
  private readonly partStarts: number[] = [];
  /** Bytes in `parts`: the offset of `buf` in the whole output. */
  private flushed = 0;
  private readonly chunkBytes: number;
  private readonly sink: ((chunk: Uint8Array) => void) | undefined;
  /** Chunk buffers the sink is done with (recycle), reused for the next chunks. */
  private readonly spare: Uint8Array[] = [];
  /** endBin32 lengths that fall in a chunk already handed to the sink: [offset in the output, length]. */
  readonly latePatches: [number, number][] = [];

  /**
   * `initialBytes`: the first buffer (an estimate of the output). `chunkBytes` (default: none): the most one buffer
   * grows to; past it, a new chunk is started (a single value larger than a chunk gets a chunk of its own size).
   * `sink`: each filled chunk is handed to it instead of kept (a file written while the image is produced); it gives
   * the buffer back with recycle() once written. A bin32 length whose chunk has gone is left in latePatches.
   */
  constructor(initialBytes: number, chunkBytes = Number.POSITIVE_INFINITY, sink?: (chunk: Uint8Array) => void) {
    assert(chunkBytes >= 1024, `msgpack writer chunk of ${chunkBytes} bytes`);
    assert(sink === undefined || Number.isFinite(chunkBytes), 'a msgpack writer with a sink writes chunks');
    this.chunkBytes = chunkBytes;
    this.sink = sink;
    this.buf = new Uint8Array(Math.max(1024, Math.min(initialBytes, chunkBytes)));
    this.view = new DataView(this.buf.buffer);
  }

  /** Bytes written so far. */
  get length(): number {
    return this.flushed + this.at;
  }

  /** The bytes written so far as one array (a view of the writer's buffer, or a join of its chunks). */
  finish(): Uint8Array {
    assert(this.sink === undefined, 'a writer with a sink has handed its chunks out: finishParts() holds only the last');
    if (this.parts.length === 0) return this.buf.subarray(0, this.at);
    const out = new Uint8Array(this.length);
    let o = 0;
    for (const p of this.finishParts()) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /**
   * The bytes written so far, as the writer's chunks in order (views: the writer must not be used after). With a
   * sink: only the last chunk, which the sink has not been given.
   */
  finishParts(): Uint8Array[] {
    return [...this.parts, this.buf.subarray(0, this.at)];
  }

  /** A chunk's buffer the sink has written and no longer needs. */
  recycle(chunk: Uint8Array): void {
    if (chunk.buffer.byteLength === this.chunkBytes && this.spare.length < spareChunksMax) this.spare.push(new Uint8Array(chunk.buffer));
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.at + n) size *= 2;
    if (size > this.chunkBytes) {
      // Close this chunk where it ends and go on in a new one: nothing already written moves.
      if (this.sink === undefined) {
        this.parts.push(this.buf.subarray(0, this.at));
        this.partStarts.push(this.flushed);
      } else {
        this.sink(this.buf.subarray(0, this.at));
      }
      this.flushed += this.at;
      this.buf = n <= this.chunkBytes ? (this.spare.pop() ?? new Uint8Array(this.chunkBytes)) : new Uint8Array(n);
      this.view = new DataView(this.buf.buffer);
      this.at = 0;
      return;
    }
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

  /**
   * Starts a bin32 value whose bytes the caller writes next (its length is set by endBin32); returns its mark, the
   * offset in the whole output where those bytes start.
   */
  beginBin32(): number {
    this.room(5); // the header stays in one chunk, so endBin32 patches one place
    this.buf[this.at] = 0xc6;
    this.at += 5;
    return this.length;
  }

  endBin32(mark: number): void {
    const bytes = this.length - mark;
    const lengthAt = mark - 4;
    if (lengthAt >= this.flushed) {
      this.view.setUint32(lengthAt - this.flushed, bytes);
      return;
    }
    if (this.sink !== undefined) {
      this.latePatches.push([lengthAt, bytes]);
      return;
    }
    let k = this.parts.length - 1;
    while (this.partStarts[k]! > lengthAt) k--;
    const part = this.parts[k]!;
    new DataView(part.buffer, part.byteOffset, part.byteLength).setUint32(lengthAt - this.partStarts[k]!, bytes);
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
