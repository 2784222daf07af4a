// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI (RFC 3720), ext4 and etcd's
// WAL. Node 20 has no built-in crc32c, so this is a slicing-by-8 table implementation: eight bytes per
// step through eight 256-entry tables, about 4-5x the byte-at-a-time loop in V8.

const POLY = 0x82f63b78;

const TABLES: Uint32Array[] = (() => {
  const t: Uint32Array[] = [];
  for (let k = 0; k < 8; k++) t.push(new Uint32Array(256));
  const t0 = t[0]!;
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let b = 0; b < 8; b++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t0[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = t0[n]!;
    for (let k = 1; k < 8; k++) {
      c = (c >>> 8) ^ t0[c & 0xff]!;
      t[k]![n] = c >>> 0;
    }
  }
  return t;
})();
const [T0, T1, T2, T3, T4, T5, T6, T7] = TABLES as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];

/** Words are read in the machine's byte order: the word path below is for little-endian machines only. */
const littleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
/** Below this many bytes the word path's view costs more than it saves (a WAL record of a small put). */
const wordPathFrom = 256;

/**
 * Continues a CRC-32C over buf[start, end). Pass the previous result as `crc` to checksum
 * discontiguous pieces; start with 0.
 */
export function crc32c(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  let c = ~crc >>> 0;
  let i = start;
  if (littleEndian && end - start >= wordPathFrom) {
    // The same eight table lookups per eight bytes, with the bytes read as two aligned 32-bit words instead of eight
    // byte loads and shifts: 1.4-2x on 1 MiB inputs (a rejoining follower checks a whole snapshot file, 300 MB at
    // 1M keys, and a snapshot written is read back for its CRC). Up to a 4-byte boundary of the memory, byte by byte.
    while (((buf.byteOffset + i) & 3) !== 0) c = (c >>> 8) ^ T0[(c ^ buf[i++]!) & 0xff]!;
    const words = new Uint32Array(buf.buffer, buf.byteOffset + i, (end - i) >>> 3 << 1);
    for (let w = 0; w < words.length; w += 2) {
      const lo = (c ^ words[w]!) >>> 0;
      const hi = words[w + 1]!;
      c = T7[lo & 0xff]! ^ T6[(lo >>> 8) & 0xff]! ^ T5[(lo >>> 16) & 0xff]! ^ T4[lo >>> 24]!
        ^ T3[hi & 0xff]! ^ T2[(hi >>> 8) & 0xff]! ^ T1[(hi >>> 16) & 0xff]! ^ T0[hi >>> 24]!;
    }
    i += words.length << 2;
  }
  for (; i + 8 <= end; i += 8) {
    const lo = (c ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24))) >>> 0;
    c =
      T7[lo & 0xff]! ^
      T6[(lo >>> 8) & 0xff]! ^
      T5[(lo >>> 16) & 0xff]! ^
      T4[lo >>> 24]! ^
      T3[buf[i + 4]!]! ^
      T2[buf[i + 5]!]! ^
      T1[buf[i + 6]!]! ^
      T0[buf[i + 7]!]!;
  }
  for (; i < end; i++) c = (c >>> 8) ^ T0[(c ^ buf[i]!) & 0xff]!;
  return ~c >>> 0;
}
