// store/'s RaftStorage speaks StoreError; raft/ recognises only RaftError codes for "compacted" (send a
// snapshot instead) and "unavailable". This adapter translates at the seam so raft/ stays pure.
import { RaftError, RaftErrorCode, type InitialState, type Storage } from '../../raft/index.js';
import type { Entry, Snapshot } from '../../raft/index.js';
import { StoreError, StoreErrorCode, type RaftStorage } from '../../store/index.js';

function translate<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof StoreError && e.code === StoreErrorCode.compacted) throw new RaftError(RaftErrorCode.compacted, e.message, { cause: e });
    if (e instanceof StoreError && e.code === StoreErrorCode.unavailable) throw new RaftError(RaftErrorCode.unavailable, e.message, { cause: e });
    throw e;
  }
}

export function raftStorageView(s: RaftStorage): Storage {
  return {
    initialState: (): InitialState => s.initialState(),
    entries: (lo: number, hi: number, bytesMax: number): Entry[] => translate(() => s.entries(lo, hi, bytesMax)),
    term: (i: number): number => translate(() => s.term(i)),
    firstIndex: (): number => s.firstIndex(),
    lastIndex: (): number => s.lastIndex(),
    snapshot: (): Snapshot => s.snapshot(),
  };
}
