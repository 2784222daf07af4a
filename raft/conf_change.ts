// Membership changes, one server at a time (Raft thesis §4.1). A conf change travels as the data of
// an EntryType.confChange entry and takes effect on every node when that entry is applied (after the
// caller has handed it to advance()), as etcd-io/raft does. Safety rests on three rules enforced by
// raft.ts: at most one conf change is pending (proposed but not applied) at a time; a new leader
// proposes none until its own no-op has been applied (the fix for the single-server-change bug the
// thesis errata describe); and a node does not campaign while committed conf changes are unapplied.
import { RaftError, RaftErrorCode } from './errors.js';
import type { ConfState } from './types.js';

export const ConfChangeType = {
  /** Add a node that replicates the log but neither votes nor counts toward quorum. */
  addLearner: 0,
  /** Turn a learner into a voter. */
  promote: 1,
  /** Remove a voter or learner (the leader may remove itself). */
  remove: 2,
  /** The bootstrap entry at index 1: the initial voters, identical on every node of a new cluster. */
  init: 3,
} as const;
export type ConfChangeType = (typeof ConfChangeType)[keyof typeof ConfChangeType];

export interface ConfChange {
  readonly type: ConfChangeType;
  /** The node changed (0 for init). */
  readonly nodeId: number;
  /** For init: the initial voters. */
  readonly voters?: readonly number[];
  /** Opaque to Raft (e.g. the node's name and identity key); carried to every node with the change. */
  readonly context?: Uint8Array;
}

const version = 1;
const idMax = 0xffffffff;

function checkId(id: number, what: string): void {
  if (!Number.isInteger(id) || id <= 0 || id > idMax) {
    throw new RaftError(RaftErrorCode.badConfChange, `${what} ${id} is not a node id (an integer in 1..${idMax})`);
  }
}

/** Layout: [version u8][type u8][nodeId u32 BE][voter count u16 BE][voters u32 BE…][context…]. */
export function encodeConfChange(cc: ConfChange): Uint8Array {
  const voters = cc.voters ?? [];
  if (cc.type === ConfChangeType.init) {
    if (voters.length === 0) throw new RaftError(RaftErrorCode.badConfChange, 'init needs at least one voter');
    for (const v of voters) checkId(v, 'voter');
  } else checkId(cc.nodeId, 'nodeId');
  const ctx = cc.context ?? new Uint8Array(0);
  const out = new Uint8Array(8 + 4 * voters.length + ctx.length);
  const dv = new DataView(out.buffer);
  out[0] = version;
  out[1] = cc.type;
  dv.setUint32(2, cc.type === ConfChangeType.init ? 0 : cc.nodeId);
  dv.setUint16(6, voters.length);
  voters.forEach((v, i) => dv.setUint32(8 + 4 * i, v));
  out.set(ctx, 8 + 4 * voters.length);
  return out;
}

export function decodeConfChange(b: Uint8Array): ConfChange {
  const bad = (why: string): never => {
    throw new RaftError(RaftErrorCode.badConfChange, `conf change entry data is malformed: ${why}`);
  };
  if (b.length < 8) bad(`${b.length} bytes, need at least 8`);
  if (b[0] !== version) bad(`version ${b[0]}, expected ${version}`);
  const type = b[1]!;
  if (type > ConfChangeType.init) bad(`unknown type ${type}`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const nodeId = dv.getUint32(2);
  const n = dv.getUint16(6);
  if (b.length < 8 + 4 * n) bad(`${n} voters announced but ${b.length} bytes present`);
  const voters: number[] = [];
  for (let i = 0; i < n; i++) voters.push(dv.getUint32(8 + 4 * i));
  const cc: ConfChange = {
    type: type as ConfChangeType,
    nodeId,
    voters,
    context: b.slice(8 + 4 * n),
  };
  if (type === ConfChangeType.init) {
    if (n === 0) bad('init without voters');
  } else if (nodeId === 0) bad('nodeId 0');
  return cc;
}

/**
 * The configuration after `cc`, or a reason why `cc` does not apply to `cs`. Pure: used both by the
 * leader to refuse invalid proposals and by every node when the entry is applied (where an invalid
 * change is a no-op, identically on all nodes).
 */
export function applyConfChange(cs: ConfState, cc: ConfChange): ConfState | string {
  const isVoter = cs.voters.includes(cc.nodeId);
  const isLearner = cs.learners.includes(cc.nodeId);
  switch (cc.type) {
    case ConfChangeType.init:
      if (cs.voters.length > 0 || cs.learners.length > 0) return 'init on a configured node';
      return { voters: [...new Set(cc.voters ?? [])].sort((a, b) => a - b), learners: [] };
    case ConfChangeType.addLearner:
      if (isVoter || isLearner) return `node ${cc.nodeId} is already a member`;
      return { voters: cs.voters, learners: [...cs.learners, cc.nodeId].sort((a, b) => a - b) };
    case ConfChangeType.promote:
      if (!isLearner) return `node ${cc.nodeId} is not a learner`;
      return {
        voters: [...cs.voters, cc.nodeId].sort((a, b) => a - b),
        learners: cs.learners.filter((id) => id !== cc.nodeId),
      };
    case ConfChangeType.remove:
      if (!isVoter && !isLearner) return `node ${cc.nodeId} is not a member`;
      if (isVoter && cs.voters.length === 1) return `removing node ${cc.nodeId} would leave no voter`;
      return {
        voters: cs.voters.filter((id) => id !== cc.nodeId),
        learners: cs.learners.filter((id) => id !== cc.nodeId),
      };
  }
}
