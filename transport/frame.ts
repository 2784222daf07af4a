// Route frames: `[length u32 big-endian][msgpack body]`, the body a plain msgpack array `[kind, ...fields]`
// (msgpackr with useRecords:false, so any msgpack implementation can read it). The parser is an
// incremental byte state machine (CONVENTIONS §4): any split of the input works, the length is checked
// against frameBytesMax before a single body byte is buffered, a frame that sits whole inside one chunk is
// decoded from a view, and binary fields are copied out (copyBuffers) so a caller that reuses its read
// buffer never sees an earlier frame change.
import { Packr } from 'msgpackr';
import { FrameError } from './errors.js';

export const frameHeaderBytes = 4;
/** Default limit of one frame's body: a 1 MiB bus payload plus headers, or a Raft snapshot chunk. */
export const frameBytesMaxDefault = 4 * 1024 * 1024;

/** Wire numbers of the frame kinds; stable across versions (protocol version guards semantics). */
export const frameKind = {
  hello: 1,
  auth: 2,
  refuse: 3,
  ping: 4,
  pong: 5,
  raft: 10,
  interestAdd: 11,
  interestRemove: 12,
  bus: 13,
  snapChunk: 14,
  snapAck: 15,
} as const;

/**
 * Largest `data` of one snapshot chunk frame. A chunk is read from the snapshot file, sent and written to the
 * receiver's file as one unit, so this bounds every buffer of a transfer whatever the size of the state.
 */
export const snapChunkBytesMax = 1024 * 1024;
/** Largest snapshot a transfer may announce (the record's length field is a u32 body plus its header). */
export const snapTotalBytesMax = 2 ** 32 + 64;

/** The frames a transport's owner sends and receives once a link is up. */
export type RouteFrame =
  /** A Raft message; `data` is any msgpack-encodable value (the transport does not look inside). */
  | { readonly kind: 'raft'; readonly data: unknown }
  | { readonly kind: 'interest_add'; readonly subject: string; readonly queue?: string }
  | { readonly kind: 'interest_remove'; readonly subject: string; readonly queue?: string }
  /**
   * A bus message forwarded once to a peer. The receiver delivers it to its local plain subscribers and
   * to one member of each queue group listed in `queues` (nats-server's RMSG `| queue...` semantics).
   */
  | {
      readonly kind: 'bus';
      readonly subject: string;
      readonly reply?: string;
      readonly headers?: Uint8Array;
      readonly payload: Uint8Array;
      readonly queues?: readonly string[];
    }
  /**
   * A piece of a snapshot file streamed beside Raft (etcd's snapshot stream): bytes [offset, offset+data.length) of a
   * file of `total` bytes, `crc` their CRC-32 (zlib's). `message` is the Raft message the transfer delivers once complete (opaque
   * to the transport, like a raft frame's data); `transfer` tells one transfer from a restarted one.
   */
  | {
      readonly kind: 'snap_chunk';
      readonly transfer: number;
      readonly offset: number;
      readonly total: number;
      readonly crc: number;
      readonly data: Uint8Array;
      readonly message: unknown;
    }
  /** The receiver holds `received` bytes of transfer `transfer` written; `refused` (non-empty) ends it: the sender abandons it. */
  | { readonly kind: 'snap_ack'; readonly transfer: number; readonly received: number; readonly refused: string };

export interface HelloBody {
  readonly version: number;
  readonly cluster: string;
  readonly name: string;
  /** Raw Ed25519 public key, 32 bytes. */
  readonly identity: Uint8Array;
  /** Fresh random challenge, 32 bytes: the peer signs it to prove possession of its identity key. */
  readonly nonce: Uint8Array;
  readonly clusterSize: number;
  readonly posture: Uint8Array;
  readonly user: string;
  /**
   * Which incarnation of the cluster the sender's data belongs to: '' for a cluster as it formed, a new value each
   * time `cluster recover --force-new-cluster` made a survivor a cluster of one (src/node/recover.ts). Sent as a
   * tenth field only when set, so a hello between nodes of a never-recovered cluster is what older nodes read.
   */
  readonly incarnation?: string;
}

/** Everything that travels on a link, handshake and keep-alive included. */
export type WireFrame =
  | RouteFrame
  | ({ readonly kind: 'hello' } & HelloBody)
  | { readonly kind: 'auth'; readonly signature: Uint8Array; readonly passwordProof: Uint8Array }
  | { readonly kind: 'refuse'; readonly code: string; readonly reason: string }
  | { readonly kind: 'ping'; readonly seq: number }
  | { readonly kind: 'pong'; readonly seq: number };

const packr = new Packr({ useRecords: false, copyBuffers: true });

function toArray(frame: WireFrame): unknown[] {
  switch (frame.kind) {
    case 'hello':
      return [frameKind.hello, frame.version, frame.cluster, frame.name, frame.identity, frame.nonce,
        frame.clusterSize, frame.posture, frame.user, ...(frame.incarnation ? [frame.incarnation] : [])];
    case 'auth': return [frameKind.auth, frame.signature, frame.passwordProof];
    case 'refuse': return [frameKind.refuse, frame.code, frame.reason];
    case 'ping': return [frameKind.ping, frame.seq];
    case 'pong': return [frameKind.pong, frame.seq];
    // `null`, never `undefined`: msgpackr encodes undefined as an extension, which is not plain msgpack.
    case 'raft': return [frameKind.raft, frame.data === undefined ? null : frame.data];
    case 'interest_add': return [frameKind.interestAdd, frame.subject, frame.queue ?? null];
    case 'interest_remove': return [frameKind.interestRemove, frame.subject, frame.queue ?? null];
    case 'bus':
      return [frameKind.bus, frame.subject, frame.reply ?? null, frame.headers ?? null, frame.payload,
        frame.queues && frame.queues.length > 0 ? frame.queues : null];
    case 'snap_chunk':
      return [frameKind.snapChunk, frame.transfer, frame.offset, frame.total, frame.crc, frame.data,
        frame.message === undefined ? null : frame.message];
    case 'snap_ack': return [frameKind.snapAck, frame.transfer, frame.received, frame.refused];
  }
}

/** The body of a frame (msgpack, without the length prefix). */
export function encodeFrameBody(frame: WireFrame): Buffer {
  return packr.pack(toArray(frame));
}

// Bus frames are the hot path (one per forwarded message), so they are encoded and decoded by hand:
// the same plain msgpack bytes msgpackr would produce for [13, subject, reply|nil, headers|nil, payload,
// queues|nil], in one allocation, without msgpackr's generic machinery (measured about 5 µs a frame with
// msgpackr on the loaded bench machine). Anything that is not in exactly this shape goes to msgpackr.

function strSize(byteLength: number): number {
  return byteLength < 32 ? 1 + byteLength : byteLength < 0x100 ? 2 + byteLength : byteLength < 0x10000 ? 3 + byteLength : 5 + byteLength;
}
function binSize(byteLength: number): number {
  return byteLength < 0x100 ? 2 + byteLength : byteLength < 0x10000 ? 3 + byteLength : 5 + byteLength;
}
function writeStr(out: Buffer, at: number, text: string, byteLength: number): number {
  if (byteLength < 32) out[at++] = 0xa0 | byteLength;
  else if (byteLength < 0x100) { out[at++] = 0xd9; out[at++] = byteLength; }
  else if (byteLength < 0x10000) { out[at++] = 0xda; out.writeUInt16BE(byteLength, at); at += 2; }
  else { out[at++] = 0xdb; out.writeUInt32BE(byteLength, at); at += 4; }
  return at + out.write(text, at, byteLength, 'utf8');
}
function writeBin(out: Buffer, at: number, bytes: Uint8Array): number {
  const n = bytes.length;
  if (n < 0x100) { out[at++] = 0xc4; out[at++] = n; }
  else if (n < 0x10000) { out[at++] = 0xc5; out.writeUInt16BE(n, at); at += 2; }
  else { out[at++] = 0xc6; out.writeUInt32BE(n, at); at += 4; }
  out.set(bytes, at);
  return at + n;
}

export type BusFrame = Extract<RouteFrame, { kind: 'bus' }>;

// Byte lengths measured by busFrameBytes() for the writeBusFrame() call that immediately follows it (both
// run synchronously back to back, so module-level scratch avoids an allocation per message).
let measuredSubject = 0;
let measuredReply = -1;
let measuredQueues: number[] | undefined;

/** Size of the whole frame (length prefix included), or -1 when it needs the generic encoder. */
export function busFrameBytes(frame: BusFrame): number {
  measuredSubject = Buffer.byteLength(frame.subject);
  measuredReply = frame.reply === undefined ? -1 : Buffer.byteLength(frame.reply);
  let size = 2 + strSize(measuredSubject) + (measuredReply < 0 ? 1 : strSize(measuredReply))
    + (frame.headers === undefined ? 1 : binSize(frame.headers.length)) + binSize(frame.payload.length) + 1;
  const queues = frame.queues;
  measuredQueues = undefined;
  if (queues && queues.length > 0) {
    if (queues.length >= 0x10000) return -1;
    measuredQueues = queues.map((q) => Buffer.byteLength(q));
    size += queues.length < 16 ? 0 : 2;
    for (const n of measuredQueues) size += strSize(n);
  }
  return frameHeaderBytes + size;
}

/** Writes the frame measured by the preceding busFrameBytes(frame) call at `at`; returns the end offset. */
export function writeBusFrame(out: Buffer, at: number, frame: BusFrame, bytes: number): number {
  out.writeUInt32BE(bytes - frameHeaderBytes, at);
  at += frameHeaderBytes;
  out[at++] = 0x96; // fixarray of 6
  out[at++] = frameKind.bus;
  at = writeStr(out, at, frame.subject, measuredSubject);
  if (measuredReply < 0) out[at++] = 0xc0;
  else at = writeStr(out, at, frame.reply!, measuredReply);
  if (frame.headers === undefined) out[at++] = 0xc0;
  else at = writeBin(out, at, frame.headers);
  at = writeBin(out, at, frame.payload);
  const queues = frame.queues;
  if (measuredQueues === undefined || !queues) out[at++] = 0xc0;
  else {
    if (queues.length < 16) out[at++] = 0x90 | queues.length;
    else { out[at++] = 0xdc; out.writeUInt16BE(queues.length, at); at += 2; }
    for (let i = 0; i < queues.length; i++) at = writeStr(out, at, queues[i]!, measuredQueues[i]!);
  }
  return at;
}

function encodeBusFrame(frame: BusFrame): Buffer {
  const bytes = busFrameBytes(frame);
  if (bytes < 0) return encodeGeneric(frame);
  const out = Buffer.allocUnsafe(bytes);
  writeBusFrame(out, 0, frame, bytes);
  return out;
}

/** Reads a msgpack str/bin/nil at `at`; returns [start, end] of its bytes, or [-1, at+1] for nil; undefined if another type. */
function readSpan(body: Uint8Array, at: number, kind: 'str' | 'bin'): [number, number] | undefined {
  if (at >= body.length) return undefined;
  const b = body[at]!;
  let start: number;
  let length: number;
  if (b === 0xc0) return [-1, at + 1];
  if (kind === 'str' && b >= 0xa0 && b <= 0xbf) { start = at + 1; length = b & 0x1f; }
  else if (b === (kind === 'str' ? 0xd9 : 0xc4)) { start = at + 2; length = body[at + 1] ?? 0; }
  else if (b === (kind === 'str' ? 0xda : 0xc5)) { start = at + 3; length = ((body[at + 1] ?? 0) << 8) | (body[at + 2] ?? 0); }
  else if (b === (kind === 'str' ? 0xdb : 0xc6)) {
    start = at + 5;
    length = (((body[at + 1] ?? 0) << 24) >>> 0) + ((body[at + 2] ?? 0) << 16) + ((body[at + 3] ?? 0) << 8) + (body[at + 4] ?? 0);
  } else return undefined;
  if (start + length > body.length) return undefined;
  return [start, start + length];
}

/**
 * The bus fast path; undefined sends the body to the generic decoder (which also reports errors).
 * `owned`: the body lies in memory only the parser holds, so binaries may be views instead of copies.
 */
function decodeBusFrame(body: Uint8Array, owned: boolean): WireFrame | undefined {
  const view = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const subject = readSpan(view, 2, 'str');
  if (!subject || subject[0] < 0) return undefined;
  const reply = readSpan(view, subject[1], 'str');
  if (!reply) return undefined;
  const headers = readSpan(view, reply[1], 'bin');
  if (!headers) return undefined;
  const payload = readSpan(view, headers[1], 'bin');
  if (!payload || payload[0] < 0) return undefined;
  // Only the common no-queue shape is decoded here; queue lists take the generic path.
  if (payload[1] !== view.length - 1 || view[payload[1]] !== 0xc0) return undefined;
  // Binaries are copied unless the parser owns the bytes: the caller may reuse its read buffer.
  const copy = (span: [number, number]): Buffer => {
    if (owned) return view.subarray(span[0], span[1]);
    const out = Buffer.allocUnsafe(span[1] - span[0]);
    view.copy(out, 0, span[0], span[1]);
    return out;
  };
  const frame: { kind: 'bus'; subject: string; payload: Uint8Array; reply?: string; headers?: Uint8Array } = {
    kind: 'bus', subject: view.toString('utf8', subject[0], subject[1]), payload: copy(payload),
  };
  if (reply[0] >= 0) frame.reply = view.toString('utf8', reply[0], reply[1]);
  if (headers[0] >= 0) frame.headers = copy(headers);
  return frame;
}

// Raft frames carry the node's Raft messages: nested arrays of small unsigned integers, short strings, booleans,
// nulls and binaries (entries' data), a batch of up to hundreds of entries per frame. Profiled on the KV write
// path, msgpackr's generic encoder and the copy behind the length prefix were 4 % of the leader's CPU per put
// (the leader encodes each batch once per follower). These values are encoded here in two passes (size, then
// bytes straight after the prefix), as the plain msgpack msgpackr writes for them; any other value (a negative
// or fractional number, an integer of 2^32 or more, an object, depth over rawDepthMax) sends the whole frame
// to msgpackr, so the decoder sees plain msgpack either way.

const rawDepthMax = 16;

/** Encoded size of `v`, or -1 when it needs msgpackr. */
function plainSize(v: unknown, depth: number): number {
  if (v === null) return 1;
  switch (typeof v) {
    case 'boolean': return 1;
    case 'number':
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) return -1;
      return v < 0x80 ? 1 : v < 0x100 ? 2 : v < 0x10000 ? 3 : 5;
    case 'string': return strSize(Buffer.byteLength(v));
    case 'object': {
      if (v instanceof Uint8Array) return binSize(v.length);
      if (!Array.isArray(v) || depth >= rawDepthMax || v.length >= 0x10000) return -1;
      let size = v.length < 16 ? 1 : 3;
      for (let i = 0; i < v.length; i++) {
        const n = plainSize(v[i], depth + 1);
        if (n < 0) return -1;
        size += n;
      }
      return size;
    }
    default: return -1;
  }
}

/** Writes `v`, already measured by plainSize, at `at`; returns the end offset. */
function writePlain(out: Buffer, at: number, v: unknown): number {
  if (v === null) { out[at++] = 0xc0; return at; }
  switch (typeof v) {
    case 'boolean': out[at++] = v ? 0xc3 : 0xc2; return at;
    case 'number':
      if (v < 0x80) out[at++] = v;
      else if (v < 0x100) { out[at++] = 0xcc; out[at++] = v; }
      else if (v < 0x10000) { out[at++] = 0xcd; out.writeUInt16BE(v, at); at += 2; }
      else { out[at++] = 0xce; out.writeUInt32BE(v, at); at += 4; }
      return at;
    case 'string': return writeStr(out, at, v, Buffer.byteLength(v));
    default: {
      if (v instanceof Uint8Array) return writeBin(out, at, v);
      const a = v as readonly unknown[];
      if (a.length < 16) out[at++] = 0x90 | a.length;
      else { out[at++] = 0xdc; out.writeUInt16BE(a.length, at); at += 2; }
      for (let i = 0; i < a.length; i++) at = writePlain(out, at, a[i]);
      return at;
    }
  }
}

function encodeRaftFrame(frame: Extract<RouteFrame, { kind: 'raft' }>): Buffer {
  const data = frame.data === undefined ? null : frame.data;
  const dataBytes = plainSize(data, 1);
  if (dataBytes < 0) return encodeGeneric(frame);
  const body = 2 + dataBytes; // fixarray of 2, the kind (a positive fixint), the data
  const out = Buffer.allocUnsafe(frameHeaderBytes + body);
  out.writeUInt32BE(body, 0);
  out[frameHeaderBytes] = 0x92;
  out[frameHeaderBytes + 1] = frameKind.raft;
  const end = writePlain(out, frameHeaderBytes + 2, data);
  if (end !== out.length) throw new RangeError(`raft frame measured ${out.length} bytes, wrote ${end}`);
  return out;
}

function encodeGeneric(frame: WireFrame): Buffer {
  const body = encodeFrameBody(frame);
  const out = Buffer.allocUnsafe(frameHeaderBytes + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, frameHeaderBytes);
  return out;
}

/**
 * Snapshot chunks by the same plain writer as raft frames: one allocation and one copy of the chunk's MiB, where
 * msgpackr packed into its own buffer and encodeGeneric copied that again. A leader sends ~280 of them for 1M keys, and
 * every spare MiB allocated is external memory that brings the next full GC (which marks every key's table) closer.
 */
function encodePlainFrame(frame: WireFrame): Buffer {
  const a = toArray(frame);
  const body = plainSize(a, 0);
  if (body < 0) return encodeGeneric(frame);
  const out = Buffer.allocUnsafe(frameHeaderBytes + body);
  out.writeUInt32BE(body, 0);
  const end = writePlain(out, frameHeaderBytes, a);
  if (end !== out.length) throw new RangeError(`${frame.kind} frame measured ${out.length} bytes, wrote ${end}`);
  return out;
}

/** A whole frame, length prefix included, in one buffer ready for `socket.write`. */
export function encodeFrame(frame: WireFrame): Buffer {
  switch (frame.kind) {
    case 'bus': return encodeBusFrame(frame);
    case 'raft': return encodeRaftFrame(frame);
    case 'snap_chunk':
    case 'snap_ack': return encodePlainFrame(frame);
    default: return encodeGeneric(frame);
  }
}

function malformed(why: string): FrameError {
  return new FrameError('EFRAME_MALFORMED', `malformed route frame: ${why}`);
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string') throw malformed(`${field} is not a string`);
  return v;
}
function optStr(v: unknown, field: string): string | undefined {
  return v === null ? undefined : str(v, field);
}
function bin(v: unknown, field: string, length?: number): Uint8Array {
  if (!(v instanceof Uint8Array)) throw malformed(`${field} is not binary`);
  if (length !== undefined && v.length !== length) throw malformed(`${field} is ${v.length} bytes, expected ${length}`);
  return v;
}
function uint(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw malformed(`${field} is not an unsigned integer`);
  return v;
}
/** An incarnation is short printable text (recover.ts makes `<ms>-<16 hex>`); anything else is not one of ours. */
function incarnation(v: unknown): string {
  const s = str(v, 'incarnation');
  if (!/^[\x21-\x7e]{1,64}$/.test(s)) throw malformed('incarnation is not 1-64 printable characters');
  return s;
}
function arity(a: unknown[], n: number, kind: string): void {
  if (a.length !== n) throw malformed(`${kind} frame has ${a.length} fields, expected ${n}`);
}

/** A snapshot chunk's fields, each checked: the offsets and sizes come from the wire and position writes to a file. */
function snapChunkFrom(a: unknown[]): WireFrame {
  arity(a, 7, 'snap_chunk');
  const transfer = uint(a[1], 'transfer');
  const offset = uint(a[2], 'offset');
  const total = uint(a[3], 'total');
  const crc = uint(a[4], 'crc');
  const data = bin(a[5], 'data');
  if (crc > 0xffffffff) throw malformed('crc is not a u32');
  if (total > snapTotalBytesMax) throw malformed(`snapshot of ${total} bytes exceeds the limit of ${snapTotalBytesMax}`);
  if (data.length > snapChunkBytesMax) throw malformed(`snapshot chunk of ${data.length} bytes exceeds the limit of ${snapChunkBytesMax}`);
  if (offset + data.length > total) throw malformed(`snapshot chunk [${offset}, ${offset + data.length}) passes the end of a ${total}-byte snapshot`);
  return { kind: 'snap_chunk', transfer, offset, total, crc, data, message: a[6] };
}

function fromArray(a: unknown[]): WireFrame {
  switch (a[0]) {
    case frameKind.hello:
      if (a.length !== 10) arity(a, 9, 'hello');
      return { kind: 'hello', version: uint(a[1], 'version'), cluster: str(a[2], 'cluster'), name: str(a[3], 'name'),
        identity: bin(a[4], 'identity', 32), nonce: bin(a[5], 'nonce', 32), clusterSize: uint(a[6], 'cluster size'),
        posture: bin(a[7], 'posture'), user: str(a[8], 'user'), ...(a.length === 10 ? { incarnation: incarnation(a[9]) } : {}) };
    case frameKind.auth:
      arity(a, 3, 'auth');
      return { kind: 'auth', signature: bin(a[1], 'signature', 64), passwordProof: bin(a[2], 'password proof', 32) };
    case frameKind.refuse:
      arity(a, 3, 'refuse');
      return { kind: 'refuse', code: str(a[1], 'code'), reason: str(a[2], 'reason') };
    case frameKind.ping: arity(a, 2, 'ping'); return { kind: 'ping', seq: uint(a[1], 'seq') };
    case frameKind.pong: arity(a, 2, 'pong'); return { kind: 'pong', seq: uint(a[1], 'seq') };
    case frameKind.raft: arity(a, 2, 'raft'); return { kind: 'raft', data: a[1] };
    case frameKind.interestAdd:
    case frameKind.interestRemove: {
      arity(a, 3, 'interest');
      const subject = str(a[1], 'subject');
      const queue = optStr(a[2], 'queue');
      const kind = a[0] === frameKind.interestAdd ? 'interest_add' : 'interest_remove';
      return queue === undefined ? { kind, subject } : { kind, subject, queue };
    }
    case frameKind.bus: {
      arity(a, 6, 'bus');
      const subject = str(a[1], 'subject');
      const reply = optStr(a[2], 'reply');
      const headers = a[3] === null ? undefined : bin(a[3], 'headers');
      const payload = bin(a[4], 'payload');
      let queues: string[] | undefined;
      if (a[5] !== null) {
        if (!Array.isArray(a[5])) throw malformed('queues is not an array');
        queues = a[5].map((q: unknown) => str(q, 'queue'));
      }
      return { kind: 'bus', subject, payload, ...(reply === undefined ? {} : { reply }),
        ...(headers === undefined ? {} : { headers }), ...(queues === undefined ? {} : { queues }) };
    }
    case frameKind.snapChunk: return snapChunkFrom(a);
    case frameKind.snapAck:
      arity(a, 4, 'snap_ack');
      return { kind: 'snap_ack', transfer: uint(a[1], 'transfer'), received: uint(a[2], 'received'), refused: str(a[3], 'refused') };
    default:
      throw malformed(`unknown frame kind ${JSON.stringify(a[0])}`);
  }
}

/**
 * Decodes one frame body. Throws FrameError (EFRAME_MALFORMED). Binaries in the result never alias `body`
 * unless `owned` says the caller hands its bytes over.
 */
export function decodeFrameBody(body: Uint8Array, owned = false): WireFrame {
  if (body.length > 2 && body[0] === 0x96 && body[1] === frameKind.bus) {
    const fast = decodeBusFrame(body, owned);
    if (fast) return fast;
  }
  let value: unknown;
  try {
    value = packr.unpack(body);
  } catch (cause) {
    throw new FrameError('EFRAME_MALFORMED',
      `malformed route frame: ${body.length}-byte body is not one msgpack value (${(cause as Error).message.slice(0, 80)})`,
      { cause });
  }
  if (!Array.isArray(value) || value.length === 0) throw malformed('body is not a non-empty array');
  return fromArray(value);
}

/**
 * Incremental parser of a route byte stream. `push` may be given any slice of the stream; it calls
 * `onFrame` for every complete frame, in order. After it has thrown a FrameError the stream is
 * unrecoverable (frame boundaries are lost) and every later push throws the same error.
 */
export class FrameParser {
  readonly frameBytesMax: number;
  readonly #header = Buffer.alloc(frameHeaderBytes);
  #headerHave = 0;
  /** Body length of the frame being read; -1 while the header is being read. */
  #bodyLength = -1;
  #body: Buffer | undefined;
  #bodyHave = 0;
  #failed: FrameError | undefined;
  #stopped = false;

  constructor(frameBytesMax: number = frameBytesMaxDefault) {
    this.frameBytesMax = frameBytesMax;
  }

  /** Bytes held for an incomplete frame (header or body). */
  get bufferedBytes(): number {
    return this.#bodyLength < 0 ? this.#headerHave : this.#bodyHave;
  }

  /** Stops delivering frames (the rest of the current chunk and later pushes are ignored). */
  stop(): void {
    this.#stopped = true;
  }

  push(chunk: Uint8Array, onFrame: (frame: WireFrame) => void): void {
    if (this.#failed) throw this.#failed;
    try {
      this.#push(chunk, onFrame);
    } catch (error) {
      if (error instanceof FrameError) this.#failed = error;
      throw error;
    }
  }

  #push(input: Uint8Array, onFrame: (frame: WireFrame) => void): void {
    const n = input.length;
    let i = 0;
    // Whole frames are decoded from one private copy of the chunk (one allocation per read instead of one
    // per binary field): their payloads can then be views, and the caller may still reuse `input`.
    const chunk = input;
    let own: Buffer | undefined;
    let base = 0;
    while (i < n && !this.#stopped) {
      if (this.#bodyLength < 0) {
        let length: number;
        if (this.#headerHave === 0 && n - i >= frameHeaderBytes) {
          length = ((chunk[i]! << 24) >>> 0) + (chunk[i + 1]! << 16) + (chunk[i + 2]! << 8) + chunk[i + 3]!;
          i += frameHeaderBytes;
        } else {
          const take = Math.min(n - i, frameHeaderBytes - this.#headerHave);
          this.#header.set(chunk.subarray(i, i + take), this.#headerHave);
          this.#headerHave += take;
          i += take;
          if (this.#headerHave < frameHeaderBytes) return;
          this.#headerHave = 0;
          length = this.#header.readUInt32BE(0);
        }
        if (length === 0) throw malformed('zero-length frame');
        if (length > this.frameBytesMax) {
          throw new FrameError('EFRAME_OVERSIZE',
            `route frame of ${length} bytes exceeds the limit of ${this.frameBytesMax} bytes`);
        }
        if (n - i >= length) {
          if (own === undefined) {
            own = Buffer.allocUnsafe(n - i);
            own.set(input.subarray(i));
            base = i; // `own` starts at this offset of `input`
          }
          const frame = decodeFrameBody(own.subarray(i - base, i - base + length), true);
          i += length;
          onFrame(frame);
          continue;
        }
        this.#bodyLength = length;
        this.#body = Buffer.allocUnsafe(length);
        this.#bodyHave = 0;
      }
      const body = this.#body!;
      const take = Math.min(n - i, this.#bodyLength - this.#bodyHave);
      body.set(chunk.subarray(i, i + take), this.#bodyHave);
      this.#bodyHave += take;
      i += take;
      if (this.#bodyHave === this.#bodyLength) {
        this.#bodyLength = -1;
        this.#body = undefined;
        onFrame(decodeFrameBody(body, true));
      }
    }
  }
}
