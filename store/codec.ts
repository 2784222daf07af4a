// One msgpack configuration for everything store/ writes: plain msgpack (no msgpackr record
// extension), so the bytes are interoperable and deterministic for a given value.
import { Packr } from 'msgpackr';

export const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, variableMapSize: true });

export function pack(value: unknown): Uint8Array {
  return packr.pack(value);
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
