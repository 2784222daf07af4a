// Raft hard state (term, vote, commit) as a WAL record. It travels in the same batch, and so the
// same fdatasync, as the entries of the Ready that changed it (Raft paper Fig. 2: persistent state is
// updated on stable storage before responding to RPCs), and is repeated at the start of every new
// segment so that removing older segments never loses it.
import type { HardState } from '../raft/types.js';
import { isUint, pack, unpack } from './codec.js';

export function encodeHardState(hs: HardState): Uint8Array {
  return pack([hs.term, hs.vote, hs.commit]);
}

/** Returns null when the body is not a hard state (the caller reports the file and offset). */
export function decodeHardState(body: Uint8Array): HardState | null {
  let v: unknown;
  try {
    v = unpack(body);
  } catch {
    return null;
  }
  if (!Array.isArray(v) || v.length !== 3 || !v.every(isUint)) return null;
  return { term: v[0] as number, vote: v[1] as number, commit: v[2] as number };
}

export function hardStateEqual(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
