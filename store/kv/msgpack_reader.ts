// A cursor over msgpack bytes for the KV snapshot image (issue 20): the state machine reads the image field by field
// straight into its entry tables instead of unpacking a tree of JS arrays first (1M keys: ~10 s and a few hundred MB
// of short-lived heap), and can stop between keys to let the event loop run. Every read checks the type byte and the
// bounds first; a mismatch throws ImageFormatError naming the offset, which the state machine turns into
// ESTORE_CORRUPT. Binary values are returned as views of the input.

export class ImageFormatError extends Error {
  readonly code = 'EIMAGE_FORMAT';
}

/**
 * A read went past the bytes available so far (setLimit) but not past the image's end: the image is still arriving
 * (a follower parsing the leader's snapshot while it is received). The caller rewinds (seek) to where the unit it
 * was reading began and reads it again once more bytes are in. One instance, thrown without a fresh stack: it is
 * control flow, raised once per arriving chunk.
 */
export class MoreBytesNeeded extends Error {
  readonly code = 'EIMAGE_MORE';
}
const moreBytesNeeded = new MoreBytesNeeded('the image is not all here yet');

const textDecoder = new TextDecoder('utf-8', { fatal: true });

export class MsgpackReader {
  private readonly view: DataView;
  private at = 0;
  /** Bytes of the input that may be read now; the whole input unless setLimit lowered it. */
  private limit: number;

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.limit = bytes.length;
  }

  /** Only the first `available` bytes are there yet: a read past them throws MoreBytesNeeded. */
  setLimit(available: number): void {
    this.limit = Math.max(0, Math.min(available, this.bytes.length));
  }

  /** Moves the cursor back to an offset read before (after MoreBytesNeeded). */
  seek(offset: number): void {
    if (offset < 0 || offset > this.limit) throw new RangeError(`seek to ${offset} outside the ${this.limit} bytes available`);
    this.at = offset;
  }

  get offset(): number {
    return this.at;
  }

  get done(): boolean {
    return this.at === this.bytes.length;
  }

  private fail(what: string): never {
    throw new ImageFormatError(`${what} at byte ${this.at} of ${this.bytes.length}`);
  }

  private need(n: number): void {
    if (this.at + n <= this.limit) return;
    if (this.at + n <= this.bytes.length) throw moreBytesNeeded;
    this.fail(`truncated (${n} bytes needed)`);
  }

  private byte(): number {
    this.need(1);
    return this.bytes[this.at++]!;
  }

  /** An array header; its length. */
  array(): number {
    const t = this.byte();
    if ((t & 0xf0) === 0x90) return t & 0x0f;
    if (t === 0xdc) {
      this.need(2);
      this.at += 2;
      return this.view.getUint16(this.at - 2);
    }
    if (t === 0xdd) {
      this.need(4);
      this.at += 4;
      return this.view.getUint32(this.at - 4);
    }
    this.at--;
    return this.fail('expected an array');
  }

  /** A non-negative safe integer (uint forms, or a float64 holding one). */
  uint(): number {
    const t = this.byte();
    if (t < 0x80) return t;
    let n: number;
    if (t === 0xcc) {
      this.need(1);
      n = this.bytes[this.at]!;
      this.at += 1;
    } else if (t === 0xcd) {
      this.need(2);
      n = this.view.getUint16(this.at);
      this.at += 2;
    } else if (t === 0xce) {
      this.need(4);
      n = this.view.getUint32(this.at);
      this.at += 4;
    } else if (t === 0xcf) {
      this.need(8);
      n = Number(this.view.getBigUint64(this.at));
      this.at += 8;
    } else if (t === 0xcb) {
      this.need(8);
      n = this.view.getFloat64(this.at);
      this.at += 8;
    } else {
      this.at--;
      return this.fail('expected a non-negative integer');
    }
    if (!Number.isSafeInteger(n) || n < 0) this.fail('expected a non-negative safe integer');
    return n;
  }

  str(): string {
    const t = this.byte();
    let n: number;
    if ((t & 0xe0) === 0xa0) n = t & 0x1f;
    else if (t === 0xd9) n = this.byte();
    else if (t === 0xda) {
      this.need(2);
      n = this.view.getUint16(this.at);
      this.at += 2;
    } else if (t === 0xdb) {
      this.need(4);
      n = this.view.getUint32(this.at);
      this.at += 4;
    } else {
      this.at--;
      return this.fail('expected a string');
    }
    this.need(n);
    let s: string;
    try {
      s = textDecoder.decode(this.bytes.subarray(this.at, this.at + n));
    } catch {
      return this.fail('invalid UTF-8 in a string');
    }
    this.at += n;
    return s;
  }

  /** Only the header of binary bytes: their length; the cursor is left at their first byte. */
  binLength(): number {
    const t = this.byte();
    let n: number;
    if (t === 0xc4) n = this.byte();
    else if (t === 0xc5) {
      this.need(2);
      n = this.view.getUint16(this.at);
      this.at += 2;
    } else if (t === 0xc6) {
      this.need(4);
      n = this.view.getUint32(this.at);
      this.at += 4;
    } else {
      this.at--;
      return this.fail('expected binary bytes');
    }
    if (this.at + n > this.bytes.length) this.fail(`truncated (${n} bytes of binary announced)`);
    return n;
  }

  /** Binary bytes (bin8/16/32), as a view of the input. */
  bin(): Uint8Array {
    const n = this.binLength();
    this.at += n;
    return this.bytes.subarray(this.at - n, this.at);
  }
}
