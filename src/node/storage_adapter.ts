// store/'s RaftStorage speaks StoreError; raft/ recognises only RaftError codes for "compacted" (send a
// snapshot instead) and "unavailable". This adapter translates at the seam so raft/ stays pure.
import { RaftError, RaftErrorCode, type InitialState, type Storage } from '../../raft/index.js';
import type { Entry, Snapshot } from '../../raft/index.js';
import { snapshotRefData, StoreError, StoreErrorCode, type RaftStorage } from '../../store/index.js';

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
  // Raft is handed a reference to the snapshot's file, never its image: a MsgSnap then carries a few bytes, and the
  // file itself is streamed beside Raft (src/node/snapshot_stream.ts). Reading `data` read the whole file back
  // synchronously on the leader's event loop (hundreds of ms at 1M keys), once per transfer.
  let ref: Snapshot | undefined;
  const snapshot = (): Snapshot => {
    const snap = s.snapshot();
    if (snap.meta.index === 0) return snap;
    if (ref?.meta !== snap.meta) ref = { meta: snap.meta, data: snapshotRefData };
    return ref;
  };
  return {
    initialState: (): InitialState => s.initialState(),
    entries: (lo: number, hi: number, bytesMax: number): Entry[] => translate(() => s.entries(lo, hi, bytesMax)),
    term: (i: number): number => translate(() => s.term(i)),
    firstIndex: (): number => s.firstIndex(),
    lastIndex: (): number => s.lastIndex(),
    snapshot,
  };
}
