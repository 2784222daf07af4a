// Segment files: wal/NNNNNNNNNNNNNNNN.seg, the number being the segment's sequence (16 decimal
// digits, so lexical order is numeric order). Every segment starts with a header record naming its
// format version and sequence, so a renamed or foreign file is caught rather than replayed.
import { Packr } from 'msgpackr';
import { FORMAT_VERSION } from '../format.js';

export const SEGMENT_SUFFIX = '.seg';
/** Record type of the segment header; the WAL owns it, callers use 2..255. */
export const HEADER_TYPE = 1;

const packr = new Packr({ useRecords: false });

export function segmentName(seq: number): string {
  return `${String(seq).padStart(16, '0')}${SEGMENT_SUFFIX}`;
}

export function parseSegmentName(name: string): number | null {
  const m = /^(\d{16})\.seg$/.exec(name);
  return m ? Number(m[1]) : null;
}

export interface SegmentHeader {
  readonly format: number;
  readonly seq: number;
}

export function encodeHeader(seq: number): Uint8Array {
  return packr.pack({ format: FORMAT_VERSION, seq });
}

export function decodeHeader(body: Uint8Array): SegmentHeader | null {
  try {
    const v = packr.unpack(body) as Partial<SegmentHeader> | null;
    if (v && typeof v.format === 'number' && typeof v.seq === 'number') return { format: v.format, seq: v.seq };
  } catch {
    // fall through: not a header
  }
  return null;
}
