// One msgpack configuration for everything store/ writes: plain msgpack (no msgpackr record
// extension), so the bytes are interoperable and deterministic for a given value.
import { Packr } from 'msgpackr';

export const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, variableMapSize: true });

/** msgpackr packs into one reused buffer; past this size it is replaced (see packOwned). */
const reusedBufferBytesMax = 1 << 20;
const reusedBufferBytesInitial = 64 << 10;

/**
 * `p.pack(value)`, leaving `p` a fresh small buffer when this pack grew its reused one. msgpackr returns views into
 * that buffer and goes on packing into it: after one snapshot image (tens of MB) every later small value — a Raft
 * entry kept in the log until the next compaction — viewed the image's buffer and kept it alive. Measured (issue 20):
 * ~190 MiB of external memory per node at 100k keys, 7× the data, was old images held this way.
 */
export function packOwned(p: Packr, value: unknown): Uint8Array {
  const out = p.pack(value);
  if (out.buffer.byteLength > reusedBufferBytesMax) p.useBuffer(Buffer.allocUnsafeSlow(reusedBufferBytesInitial));
  return out;
}

export function pack(value: unknown): Uint8Array {
  return packOwned(packr, value);
}

/** Decodes; Buffers in the result view `bytes`, so copy them before keeping them past the input's life. */
export function unpack(bytes: Uint8Array): unknown {
  return packr.unpack(bytes);
}

export function isUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** A standalone copy of a decoded byte view (decoded Buffers share the input buffer). */
export function copyBytes(v: Uint8Array): Uint8Array {
  return Uint8Array.prototype.slice.call(v);
}
