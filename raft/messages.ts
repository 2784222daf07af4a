// Messages are plain data (numbers, booleans, Uint8Array, arrays of entries) so that transport/ can
// encode them with msgpack unchanged and the simulator can copy, drop, duplicate and reorder them.
import type { Entry, SnapshotMetadata } from './types.js';

export const MessageType = {
  // Local only: produced by RawNode methods, never sent on the wire.
  hup: 'hup',
  beat: 'beat',
  // Local or forwarded from a follower to the leader.
  prop: 'prop',
  readIndex: 'readIndex',
  transferLeader: 'transferLeader',
  // Wire messages.
  app: 'app',
  appResp: 'appResp',
  vote: 'vote',
  voteResp: 'voteResp',
  preVote: 'preVote',
  preVoteResp: 'preVoteResp',
  heartbeat: 'heartbeat',
  heartbeatResp: 'heartbeatResp',
  snap: 'snap',
  snapResp: 'snapResp',
  readIndexResp: 'readIndexResp',
  timeoutNow: 'timeoutNow',
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/** One piece of an InstallSnapshot transfer; `offset` is the byte offset of `data` in the snapshot data. */
export interface SnapshotChunk {
  readonly meta: SnapshotMetadata;
  readonly offset: number;
  readonly data: Uint8Array;
  /** This chunk ends the snapshot data. */
  readonly done: boolean;
  /** Bytes of the whole snapshot data (0 when the sender did not say: an older node). Progress only. */
  readonly total: number;
}

/**
 * Field meanings by type (etcd-io/raft raftpb.Message is the model):
 * - app: index/logTerm = the entry before `entries`; commit = leader's commit.
 * - appResp: index = highest index now matching (or the rejected `index`); on reject, rejectHint/logTerm
 *   are the follower's conflict hint (fast log repair, Raft paper §5.3 last paragraph).
 * - vote/preVote: index/logTerm = candidate's last entry; context = campaignTransfer when forced.
 * - heartbeat: commit = min(leader commit, follower match); context = ReadIndex round id; index = the leader's
 *   own commit index once an entry of its term is committed (0 before: a new leader's commit may still lag the
 *   cluster's, thesis §6.4), what a catching-up follower measures itself against.
 * - recovering (on appResp, heartbeatResp, snapResp): the sender lost its persistent state (a wiped disk) and has
 *   not caught up (RaftConfig.recovering). Its acknowledgements count for no quorum, and a rejection below the
 *   match the leader remembers resets that match. On a heartbeat: the leader knows it, and `index` is a commit
 *   the follower may end its recovery on (Raft.ownCommitFor).
 * - snap: snapshot = one chunk; snapResp: index = snapshot index, rejectHint = next wanted offset.
 * - readIndex/readIndexResp: context = the caller's request id; index = the read index.
 */
export interface Message {
  readonly type: MessageType;
  readonly from: number;
  readonly to: number;
  readonly term: number;
  readonly logTerm: number;
  readonly index: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
  readonly reject: boolean;
  readonly rejectHint: number;
  readonly context: Uint8Array;
  readonly snapshot: SnapshotChunk | null;
  readonly recovering: boolean;
}

export const emptyBytes: Uint8Array = new Uint8Array(0);
const noEntries: readonly Entry[] = Object.freeze([]);

/** Marks a (pre)vote sent because of a leadership transfer: voters skip their leader-lease check. */
export const campaignTransferContext: Uint8Array = Uint8Array.of(0x74);

export function isCampaignTransfer(ctx: Uint8Array): boolean {
  return ctx.length === 1 && ctx[0] === 0x74;
}



/** Builds a message with every field present (one object shape keeps V8's inline caches monomorphic). */
export function message(m: Partial<Message> & { type: MessageType }): Message {
  return {
    type: m.type,
    from: m.from ?? 0,
    to: m.to ?? 0,
    term: m.term ?? 0,
    logTerm: m.logTerm ?? 0,
    index: m.index ?? 0,
    entries: m.entries ?? noEntries,
    commit: m.commit ?? 0,
    reject: m.reject ?? false,
    rejectHint: m.rejectHint ?? 0,
    context: m.context ?? emptyBytes,
    snapshot: m.snapshot ?? null,
    recovering: m.recovering ?? false,
  };
}

const localTypes: ReadonlySet<MessageType> = new Set([MessageType.hup, MessageType.beat]);
export function isLocalMessage(t: MessageType): boolean {
  return localTypes.has(t);
}

export function isResponseMessage(t: MessageType): boolean {
  return (
    t === MessageType.appResp ||
    t === MessageType.voteResp ||
    t === MessageType.preVoteResp ||
    t === MessageType.heartbeatResp ||
    t === MessageType.snapResp ||
    t === MessageType.readIndexResp
  );
}

/** Payload bytes of entries, the unit of the byte limits (msgBytesMax, inflightBytesMax, uncommittedBytesMax). */
export function entriesBytes(ents: readonly Entry[]): number {
  let n = 0;
  for (let i = 0; i < ents.length; i++) n += ents[i]!.data.length;
  return n;
}
