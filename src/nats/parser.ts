// Incremental parser of the client side of the NATS protocol, modelled on nats-server server/parser.go:
// a state machine over bytes that is correct for any split of the input across reads.
//  - Op names are matched byte by byte (case-insensitive), so garbage fails at its first wrong byte, as in
//    nats-server, without waiting for a line end.
//  - Argument lines and payloads are handed to the handler as views into the caller's buffer; a copy is made
//    only when a line or payload straddles two reads (or a read ends between a payload and its CRLF), so the
//    caller may reuse its buffer as soon as parse() returns.
//  - max_control_line and max_payload are checked before anything is buffered.
// The handler is called synchronously; it may call stop() (e.g. while CONNECT authenticates asynchronously),
// after which parse() returns the number of bytes it consumed and the caller keeps the rest.

export const parseFailure = {
  /** Unknown verb, blank line, missing separator, payload not followed by CRLF → -ERR + close. */
  unknownOp: 'unknown_op',
  /** Control line longer than maxControlLineBytes → -ERR + close. */
  controlLine: 'control_line',
  /** PUB/HPUB size over maxPayloadBytes → -ERR + close. */
  maxPayload: 'max_payload',
  /** Wrong argument count, bad number, HPUB without headers: nats-server closes without an -ERR. */
  badArgs: 'bad_args',
  /** An op other than CONNECT while CONNECT is required first → Authorization Violation + close. */
  auth: 'auth',
} as const;
export type ParseFailure = (typeof parseFailure)[keyof typeof parseFailure];

/** The arguments of the PUB/HPUB being dispatched. One instance per parser, overwritten by the next op. */
export class PubArgs {
  subject = '';
  /** Buffer holding the subject and reply bytes (the caller's buffer or the parser's scratch). */
  argBuf: Buffer = emptyBuffer;
  subjectStart = 0;
  subjectEnd = 0;
  /** -1 when the PUB had no reply subject. */
  replyStart = -1;
  replyEnd = -1;
  /** -1 for PUB; the header block size for HPUB (0 = no headers). */
  headerBytes = -1;
  /** Total bytes after the control line (headers + payload for HPUB). */
  size = 0;
  /** Buffer holding the `size` bytes from `dataStart`. */
  data: Buffer = emptyBuffer;
  dataStart = 0;
  /** The reply subject as a string; decoded on demand because the hot path only copies its bytes. */
  reply(): string | undefined {
    if (this.replyStart < 0) return undefined;
    return this.argBuf.toString('utf8', this.replyStart, this.replyEnd);
  }
}

export interface ParserHandler {
  onConnect(json: string): void;
  onPub(pub: PubArgs): void;
  onSub(subject: string, queue: string | undefined, sid: string): void;
  /** `max` is -1 when absent or unparsable (nats-server then unsubscribes at once). */
  onUnsub(sid: string, max: number): void;
  onPing(): void;
  onPong(): void;
  onParseFailure(failure: ParseFailure): void;
}

export interface ParserLimits {
  readonly maxControlLineBytes: number;
  readonly maxPayloadBytes: number;
}

const emptyBuffer = Buffer.alloc(0);

const st = {
  opStart: 0,
  opName: 1, // matching the rest of an op name
  opSpace: 2, // op name complete, one space or tab required
  skipSpace: 3, // separators before the arguments
  arg: 4, // collecting the argument line up to LF
  skipLine: 5, // PING/PONG: anything up to LF is ignored (as nats-server does)
  payload: 6,
  endR: 7,
  endN: 8,
  failed: 9,
} as const;

const op = { connect: 0, pub: 1, hpub: 2, sub: 3, unsub: 4, ping: 5, pong: 6, info: 7 } as const;
type Op = (typeof op)[keyof typeof op];
const opNames: readonly string[] = ['connect', 'pub', 'hpub', 'sub', 'unsub', 'ping', 'pong', 'info'];

const LF = 10, CR = 13, SP = 32, TAB = 9;
const maxArgs = 6;
/** nats-server parseSize accepts at most 9 digits. */
const maxSizeDigits = 9;

export function parseSize(buf: Uint8Array, start: number, end: number): number {
  const len = end - start;
  if (len === 0 || len > maxSizeDigits) return -1;
  let n = 0;
  for (let i = start; i < end; i++) {
    const d = buf[i]! - 48;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}

export class Parser {
  /** When true, any op but CONNECT fails with `auth` (auth required and CONNECT not yet received). */
  connectRequired = false;
  /** HPUB is accepted only after a CONNECT with headers:true. */
  headersAllowed = false;
  readonly pub = new PubArgs();

  private state: number = st.opStart;
  private op: Op = op.ping;
  private opPos = 0;
  private stopped = false;
  /** Partial argument line carried across reads, or PUB args detached from a reused buffer. */
  private scratch: Buffer | null = null;
  private scratchLen = 0;
  private argInScratch = false;
  private lineStart = 0;
  /** Payload copied across reads; null while the payload is a view into the current buffer. */
  private msgBuf: Buffer | null = null;
  private msgLen = 0;
  private readonly argS = new Int32Array(maxArgs + 1);
  private readonly argE = new Int32Array(maxArgs + 1);
  private nonAscii = false;
  private readonly lastSubjectBytes = Buffer.allocUnsafe(128);
  private lastSubjectLen = -1;
  private lastSubject = '';

  constructor(
    private readonly handler: ParserHandler,
    private readonly limits: ParserLimits,
  ) {}

  /** Makes parse() return right after the op being dispatched. */
  stop(): void {
    this.stopped = true;
  }

  private halted(): boolean {
    return this.stopped || this.state === st.failed;
  }

  get failed(): boolean {
    return this.state === st.failed;
  }

  /** Consumes `buf` (or a prefix of it when stop() was called); returns the number of bytes consumed. */
  parse(buf: Buffer): number {
    this.stopped = false;
    const n = buf.length;
    let i = 0;
    while (i < n) {
      switch (this.state) {
        case st.opStart: {
          const b = buf[i]! | 0x20;
          if (this.connectRequired && b !== 0x63 /* c */) return this.fail(parseFailure.auth, i);
          if (!this.startOp(b)) return this.fail(parseFailure.unknownOp, i);
          i++;
          break;
        }
        case st.opName: {
          const b = buf[i]! | 0x20;
          if (this.op === op.pub && this.opPos === 1) {
            // 'P' is shared by PUB, PING and PONG: the second byte decides.
            if (b === 0x69) this.op = op.ping;
            else if (b === 0x6f) this.op = op.pong;
            else if (b !== 0x75) return this.fail(parseFailure.unknownOp, i);
          } else if (b !== opNames[this.op]!.charCodeAt(this.opPos)) {
            return this.fail(parseFailure.unknownOp, i);
          }
          i++;
          if (++this.opPos === opNames[this.op]!.length) {
            this.state = this.op === op.ping || this.op === op.pong ? st.skipLine : st.opSpace;
          }
          break;
        }
        case st.opSpace: {
          const b = buf[i]!;
          if (b !== SP && b !== TAB) return this.fail(parseFailure.unknownOp, i);
          if (this.op === op.hpub && !this.headersAllowed) return this.fail(parseFailure.badArgs, i);
          this.state = st.skipSpace;
          i++;
          break;
        }
        case st.skipSpace: {
          const b = buf[i]!;
          if (b === SP || b === TAB) {
            i++;
            break;
          }
          this.state = st.arg;
          this.lineStart = i;
          this.scratchLen = 0;
          this.argInScratch = false;
          break;
        }
        case st.arg: {
          const r = this.scanArg(buf, i);
          if (r < 0) return n; // the line continues in the next read (buffered), or failed
          i = r;
          if (this.halted()) return i;
          break;
        }
        case st.skipLine: {
          const lf = buf.indexOf(LF, i);
          if (lf < 0) return n;
          i = lf + 1;
          this.state = st.opStart;
          if (this.op === op.ping) this.handler.onPing();
          else this.handler.onPong();
          if (this.halted()) return i;
          break;
        }
        case st.payload: {
          i = this.readPayload(buf, i);
          break;
        }
        case st.endR: {
          if (buf[i] !== CR) return this.fail(parseFailure.unknownOp, i);
          this.state = st.endN;
          i++;
          break;
        }
        case st.endN: {
          if (buf[i] !== LF) return this.fail(parseFailure.unknownOp, i);
          i++;
          this.state = st.opStart;
          if (this.msgBuf !== null) {
            this.pub.data = this.msgBuf;
            this.pub.dataStart = 0;
            this.msgBuf = null;
          }
          this.handler.onPub(this.pub);
          if (this.halted()) return i;
          break;
        }
        default:
          return n; // failed: ignore everything after the error
      }
    }
    if (this.state === st.payload || this.state === st.endR || this.state === st.endN) this.detach(buf);
    return n;
  }

  private startOp(b: number): boolean {
    this.opPos = 1;
    this.state = st.opName;
    switch (b) {
      case 0x63: this.op = op.connect; return true;
      case 0x70: this.op = op.pub; return true; // or ping/pong, decided by the next byte
      case 0x68: this.op = op.hpub; return true;
      case 0x73: this.op = op.sub; return true;
      case 0x75: this.op = op.unsub; return true;
      case 0x69: this.op = op.info; return true;
      default: return false;
    }
  }

  private fail(failure: ParseFailure, i: number): number {
    this.state = st.failed;
    this.msgBuf = null;
    this.handler.onParseFailure(failure);
    return i;
  }

  /** Returns the index after the LF, or -1 when the line continues past this read. */
  private scanArg(buf: Buffer, i: number): number {
    const max = this.limits.maxControlLineBytes;
    const lf = buf.indexOf(LF, i);
    if (lf < 0) {
      const more = buf.length - i;
      if (this.scratchLen + more > max + 1) {
        this.fail(parseFailure.controlLine, i);
        return -1;
      }
      const s = this.ensureScratch();
      buf.copy(s, this.scratchLen, i, buf.length);
      this.scratchLen += more;
      this.argInScratch = true;
      return -1;
    }
    let argBuf: Buffer;
    let start: number;
    let end: number;
    if (this.argInScratch) {
      const more = lf - i;
      if (this.scratchLen + more > max + 1) return this.fail(parseFailure.controlLine, i), -1;
      const s = this.ensureScratch();
      buf.copy(s, this.scratchLen, i, lf);
      this.scratchLen += more;
      argBuf = s;
      start = 0;
      end = this.scratchLen;
    } else {
      argBuf = buf;
      start = this.lineStart;
      end = lf;
    }
    if (end > start && argBuf[end - 1] === CR) end--;
    if (end - start > max) return this.fail(parseFailure.controlLine, i), -1;
    this.argInScratch = false;
    this.scratchLen = 0;
    this.state = st.opStart;
    this.dispatchArg(argBuf, start, end);
    return lf + 1;
  }

  private ensureScratch(): Buffer {
    if (this.scratch === null) this.scratch = Buffer.allocUnsafe(this.limits.maxControlLineBytes + 1);
    return this.scratch;
  }

  private split(buf: Buffer, start: number, end: number): number {
    let count = 0;
    let i = start;
    let high = 0;
    while (i < end) {
      let b = buf[i]!;
      while (i < end && (b === SP || b === TAB || b === CR || b === LF)) b = buf[++i]!;
      if (i >= end) break;
      if (count === maxArgs) return maxArgs + 1;
      this.argS[count] = i;
      while (i < end) {
        b = buf[i]!;
        if (b === SP || b === TAB || b === CR || b === LF) break;
        high |= b;
        i++;
      }
      this.argE[count++] = i;
    }
    this.nonAscii = high >= 0x80;
    return count;
  }

  private str(buf: Buffer, k: number): string {
    return buf.toString(this.nonAscii ? 'utf8' : 'latin1', this.argS[k]!, this.argE[k]!);
  }

  /**
   * Publishers mostly repeat subjects: reusing the previous string when the bytes are equal avoids an allocation
   * and lets the subject trie's cache lookup use the string's already computed hash.
   */
  private subjectString(buf: Buffer): string {
    const s = this.argS[0]!, e = this.argE[0]!;
    const len = e - s;
    const last = this.lastSubjectBytes;
    if (len === this.lastSubjectLen) {
      let i = 0;
      while (i < len && buf[s + i] === last[i]) i++;
      if (i === len) return this.lastSubject;
    }
    const str = this.str(buf, 0);
    if (len <= last.length) {
      buf.copy(last, 0, s, e);
      this.lastSubjectLen = len;
      this.lastSubject = str;
    } else {
      this.lastSubjectLen = -1;
    }
    return str;
  }

  private dispatchArg(buf: Buffer, start: number, end: number): void {
    switch (this.op) {
      case op.connect:
        this.handler.onConnect(buf.toString('utf8', start, end));
        return;
      case op.info:
        return; // clients may send INFO; nats-server ignores it for client connections
      case op.pub:
      case op.hpub:
        this.pubArgs(buf, start, end);
        return;
      case op.sub: {
        const c = this.split(buf, start, end);
        if (c !== 2 && c !== 3) return void this.fail(parseFailure.badArgs, 0);
        const subject = this.str(buf, 0);
        const queue = c === 3 ? this.str(buf, 1) : undefined;
        this.handler.onSub(subject, queue, this.str(buf, c - 1));
        return;
      }
      case op.unsub: {
        const c = this.split(buf, start, end);
        if (c !== 1 && c !== 2) return void this.fail(parseFailure.badArgs, 0);
        const max = c === 2 ? parseSize(buf, this.argS[1]!, this.argE[1]!) : -1;
        this.handler.onUnsub(this.str(buf, 0), max);
        return;
      }
      default:
        return;
    }
  }

  private pubArgs(buf: Buffer, start: number, end: number): void {
    const c = this.split(buf, start, end);
    const p = this.pub;
    const hpub = this.op === op.hpub;
    const min = hpub ? 3 : 2;
    if (c !== min && c !== min + 1) return void this.fail(parseFailure.badArgs, 0);
    const last = c - 1;
    const size = parseSize(buf, this.argS[last]!, this.argE[last]!);
    let headerBytes = -1;
    if (hpub) {
      headerBytes = parseSize(buf, this.argS[last - 1]!, this.argE[last - 1]!);
      if (headerBytes < 0 || size < 0 || headerBytes > size) return void this.fail(parseFailure.badArgs, 0);
    } else if (size < 0) {
      return void this.fail(parseFailure.badArgs, 0);
    }
    if (size > this.limits.maxPayloadBytes) return void this.fail(parseFailure.maxPayload, 0);
    p.argBuf = buf;
    p.subjectStart = this.argS[0]!;
    p.subjectEnd = this.argE[0]!;
    if (c === min + 1) {
      p.replyStart = this.argS[1]!;
      p.replyEnd = this.argE[1]!;
    } else {
      p.replyStart = p.replyEnd = -1;
    }
    p.subject = this.subjectString(buf);
    p.headerBytes = headerBytes;
    p.size = size;
    this.msgBuf = null;
    this.msgLen = 0;
    this.state = size === 0 ? st.endR : st.payload;
    p.data = emptyBuffer;
    p.dataStart = 0;
  }

  private readPayload(buf: Buffer, i: number): number {
    const p = this.pub;
    if (this.msgBuf === null) {
      if (buf.length - i >= p.size) {
        p.data = buf;
        p.dataStart = i;
        this.state = st.endR;
        return i + p.size;
      }
      // The payload straddles reads: the only case where it is copied (size already checked).
      this.msgBuf = Buffer.allocUnsafe(p.size);
      this.msgLen = 0;
    }
    const take = Math.min(p.size - this.msgLen, buf.length - i);
    buf.copy(this.msgBuf, this.msgLen, i, i + take);
    this.msgLen += take;
    if (this.msgLen === p.size) this.state = st.endR;
    return i + take;
  }

  /** The read ends inside a message: copy whatever still points into the caller's buffer. */
  private detach(buf: Buffer): void {
    const p = this.pub;
    if (p.argBuf === buf) {
      const s = this.ensureScratch();
      const from = p.subjectStart;
      const to = p.replyStart >= 0 ? p.replyEnd : p.subjectEnd;
      buf.copy(s, 0, from, to);
      p.argBuf = s;
      p.subjectStart -= from;
      p.subjectEnd -= from;
      if (p.replyStart >= 0) {
        p.replyStart -= from;
        p.replyEnd -= from;
      }
    }
    if (this.msgBuf === null && p.data === buf) {
      // Payload complete in this read but its CRLF is not: keep a copy.
      this.msgBuf = Buffer.from(buf.subarray(p.dataStart, p.dataStart + p.size));
      this.msgLen = p.size;
      p.data = emptyBuffer;
    }
  }
}
