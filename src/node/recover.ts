// Quorum-loss recovery (`membershipd cluster recover --force-new-cluster`, etcd's --force-new-cluster): one stopped
// survivor's data directory is rewritten so that the node starts as a cluster of one that holds everything its log
// held, under a new cluster incarnation; the other nodes are then added back with `cluster add`.
//
// What the rewrite keeps and why. The survivor's whole log is applied, also the entries after the commit index it
// knew: elected leader, Raft would commit them too (a leader's log wins), and an entry there may be a write the lost
// majority acknowledged before the commit index reached this node. Lost: writes acknowledged by the lost majority
// that never reached this node. The `nodes` and `config` buckets describe the old cluster (its members' identity
// keys are admin principals; `added-slots`/`removed-slots` name old slot numbers), so they are dropped as `snapshot
// restore` drops them, and the first leader writes its own. The session table (exactly-once apply of re-submitted
// proposals) is reset: every proposer of the old cluster is gone with its process.
//
// Crash safety. Nothing of the old state is modified in place. The new Raft state (one snapshot at the last index,
// conf = this node alone, as slot 1 of a one-slot table) is written to `raft.recover-new/`, the new cluster.json to
// `cluster.json.recover-new`, each fsynced; then the marker `RECOVERY` is written atomically: that is the commit
// point. Rolling forward (renaming the old `raft/` aside to `raft.before-recovery-<incarnation>`, the new one into
// place, the new cluster.json over the old) is idempotent and runs again at the next `recover` or node start while
// the marker exists. A crash before the marker leaves the old directory as it was (the leftovers are removed by the
// next `recover`); after it, the new one. The node takes the data-directory lock while rolling forward.
//
// The new incarnation keeps the old members out (transport/handshake.ts refuses a peer whose data is of another
// incarnation and names the remedy): their logs hold entries this cluster never saw and terms it may reuse.
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { applyConfChange, decodeConfChange, EntryType, type ConfState } from '../../raft/index.js';
import { encodeKvCommand, KvStateMachine, lockDir, nodeFs, RaftStorage, StoreError, StoreErrorCode } from '../../store/index.js';
import { MembershipdError } from '../errors.js';
import { clusterFilePath, incarnationPattern, readClusterFile, type ClusterFile, type RecoveryRecord } from './bootstrap.js';
import { AppliedSessions, decodeNodeSnapshot, encodeNodeSnapshot } from './sessions.js';
import { decodeEnvelope } from './wire.js';

export const RecoverErrorCode = {
  /** The node owning the data directory is running (or another recover is): stop it first. */
  running: 'ERECOVER_RUNNING',
  /** With this node, the old voters that answer are a majority: restarting it restores the cluster. */
  quorumReachable: 'ERECOVER_QUORUM_REACHABLE',
  /** The data directory holds nothing a cluster can be recovered from (no cluster.json, empty log, a lost disk). */
  state: 'ERECOVER_STATE',
} as const;
export type RecoverErrorCode = (typeof RecoverErrorCode)[keyof typeof RecoverErrorCode];

export class RecoverError extends MembershipdError {
  constructor(code: RecoverErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

export const recoveryMarkerFile = 'RECOVERY';
const newRaftDir = 'raft.recover-new';
const newClusterFile = 'cluster.json.recover-new';
/** Probe bounds: each old voter's route port gets one TCP connect of at most this long, all at once. */
export const probeTimeoutMsDefault = 1000;
export const probeTimeoutMsMax = 10_000;

export interface RecoverOptions {
  readonly dataDir: string;
  /** --i-know-a-quorum-is-lost: go on even when a majority of the old voters answers. */
  readonly quorumLost: boolean;
  readonly probeTimeoutMs?: number;
  /** Whether something listens at `host:port` (default: a TCP connect bounded by probeTimeoutMs). */
  readonly probe?: (address: string, timeoutMs: number) => Promise<boolean>;
  readonly now?: () => number;
  /**
   * Buckets that describe the old cluster rather than its data, dropped from the kept state (the CLI passes the
   * control plane's `nodes` and `config`; src/node does not know the control plane's buckets).
   */
  readonly dropBuckets?: readonly string[];
}

export interface RecoverReport {
  readonly record: RecoveryRecord;
  readonly cluster: string;
  readonly server: string;
  readonly address: string;
  /** Voters the survivor knew and what the probe found. */
  readonly voters: readonly { readonly name: string; readonly address: string; readonly reachable: boolean | 'self' }[];
  /** An interrupted recovery was found committed and finished; nothing new was computed. */
  readonly resumed: boolean;
}

/** One TCP connect to `host:port` ([v6]:port), bounded: true when something accepts it. */
export function probeAddress(address: string, timeoutMs: number): Promise<boolean> {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  const port = Number(address.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) return Promise.resolve(false);
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function writeDurably(path: string, text: string): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/**
 * Finishes a recovery whose marker exists (idempotent; see the file comment). The caller holds the data-directory
 * lock. Returns the incarnation rolled forward, or undefined when there was nothing to do.
 */
export function rollForwardRecovery(dataDir: string): string | undefined {
  const marker = join(dataDir, recoveryMarkerFile);
  if (!existsSync(marker)) return undefined;
  let incarnation: string;
  try {
    incarnation = String((JSON.parse(readFileSync(marker, 'utf8')) as { incarnation?: unknown }).incarnation ?? '');
  } catch (err) {
    throw new RecoverError(RecoverErrorCode.state, `${marker} is not the marker "cluster recover" writes (${(err as Error).message}); it is written atomically, so the disk is damaged: restore the data directory from a copy or recover another survivor`, { cause: err });
  }
  if (!incarnationPattern.test(incarnation)) throw new RecoverError(RecoverErrorCode.state, `${marker} names no valid incarnation; recover another survivor`);
  const raft = join(dataDir, 'raft');
  if (existsSync(join(dataDir, newRaftDir))) {
    if (existsSync(raft)) renameSync(raft, join(dataDir, `raft.before-recovery-${incarnation}`));
    renameSync(join(dataDir, newRaftDir), raft);
  }
  if (existsSync(join(dataDir, newClusterFile))) renameSync(join(dataDir, newClusterFile), clusterFilePath(dataDir));
  fsyncDir(dataDir);
  unlinkSync(marker);
  fsyncDir(dataDir);
  return incarnation;
}

/** Node start: finishes an interrupted recovery under the data-directory lock. */
export async function finishInterruptedRecovery(dataDir: string): Promise<string | undefined> {
  if (!existsSync(join(dataDir, recoveryMarkerFile))) return undefined;
  const unlock = await lockDir(nodeFs, dataDir);
  try {
    return rollForwardRecovery(dataDir);
  } finally {
    await unlock();
  }
}

const slotName = (c: ClusterFile, id: number): string => (id === c.id ? c.server : c.bindings[String(id)]?.name ?? c.names?.[String(id)] ?? `slot ${id}`);

/** Rewrites a stopped survivor's data directory into a cluster of one (see the file comment). */
export async function forceNewCluster(o: RecoverOptions): Promise<RecoverReport> {
  const unlock = await lockDir(nodeFs, o.dataDir).catch((err: unknown) => {
    throw err instanceof StoreError && err.code === StoreErrorCode.locked ? new RecoverError(RecoverErrorCode.running, `another "cluster recover" or a starting node holds ${join(o.dataDir, 'LOCK')}: ${err.message}`, { cause: err }) : err;
  });
  try {
    const resumed = rollForwardRecovery(o.dataDir);
    if (resumed !== undefined) {
      const c = readClusterFile(o.dataDir)!;
      return { record: c.recovered!, cluster: c.cluster, server: c.server, address: c.addresses[0]!, voters: [], resumed: true };
    }
    rmSync(join(o.dataDir, newRaftDir), { recursive: true, force: true });
    rmSync(join(o.dataDir, newClusterFile), { force: true });
    return await rewrite(o);
  } finally {
    await unlock();
  }
}

async function openSurvivor(dataDir: string): Promise<RaftStorage> {
  try {
    return await RaftStorage.open(join(dataDir, 'raft'));
  } catch (err) {
    if (err instanceof StoreError && err.code === StoreErrorCode.locked) {
      throw new RecoverError(RecoverErrorCode.running, `the node is running: ${err.message}. Stop it (systemctl stop membershipd-cluster) and run this again`, { cause: err });
    }
    throw err;
  }
}

async function rewrite(o: RecoverOptions): Promise<RecoverReport> {
  const c = readClusterFile(o.dataDir);
  if (c === null) throw new RecoverError(RecoverErrorCode.state, `${clusterFilePath(o.dataDir)} does not exist: ${o.dataDir} is not the data directory of a cluster node (give the survivor's --data-dir)`);
  if (c.recovering === true) {
    throw new RecoverError(RecoverErrorCode.state, `this node lost its data and had not caught up again (cluster.json "recovering"): it holds no complete state; recover another survivor`);
  }
  const storage = await openSurvivor(o.dataDir);
  let built: { image: Uint8Array; index: number; term: number; commit: number; conf: ConfState };
  try {
    built = replay(storage, o.dropBuckets ?? [], o.now?.() ?? Date.now());
  } finally {
    await storage.close();
  }
  const voters = built.conf.voters.map((id) => ({ id, name: slotName(c, id), address: c.addresses[id - 1] ?? '?' }));
  if (!built.conf.voters.includes(c.id) && !built.conf.learners.includes(c.id)) {
    throw new RecoverError(RecoverErrorCode.state, `this node (slot ${c.id}) is not a member of the configuration in its log (voters ${voters.map((v) => v.name).join(', ')}): recover a survivor that was a member`);
  }
  if (built.conf.voters.length === 1 && built.conf.voters[0] === c.id) {
    throw new RecoverError(RecoverErrorCode.state, `this node is already the only voter: no quorum was lost; start it`);
  }
  const timeoutMs = o.probeTimeoutMs ?? probeTimeoutMsDefault;
  const probe = o.probe ?? probeAddress;
  const answers = await Promise.all(voters.map((v) => (v.id === c.id ? Promise.resolve<'self'>('self') : probe(v.address, timeoutMs))));
  const reachable = voters.filter((_, k) => answers[k] === true);
  const quorum = Math.floor(voters.length / 2) + 1;
  if (reachable.length + 1 >= quorum && !o.quorumLost) {
    throw new RecoverError(RecoverErrorCode.quorumReachable,
      `${reachable.length} of the ${voters.length - 1} other voters answer on their route ports (${reachable.map((v) => `${v.name} at ${v.address}`).join(', ')}): with this node they are a majority, `
      + `so starting this node brings the cluster back with nothing lost; start it instead. If those nodes must not count (they are being rebuilt, or the port answers for something else), `
      + `stop them and run this again, or add --i-know-a-quorum-is-lost (they must then be wiped and added back: their data belongs to the old cluster)`);
  }
  const at = o.now?.() ?? Date.now();
  const incarnation = `${at}-${randomBytes(8).toString('hex')}`;
  const address = c.addresses[c.id - 1]!;
  const record: RecoveryRecord = {
    incarnation, at, index: built.index, commit: built.commit, previousSlot: c.id,
    previousVoters: voters.map((v) => `${v.name}@${v.address}`), reachable: reachable.map((v) => `${v.name}@${v.address}`), forced: o.quorumLost,
  };
  const next: ClusterFile = {
    version: 1, cluster: c.cluster, server: c.server, id: 1, addresses: [address], voters: c.voters, bindings: {}, initial: 1, incarnation, recovered: record,
  };
  const fresh = await RaftStorage.open(join(o.dataDir, newRaftDir));
  try {
    await fresh.applySnapshot({ meta: { index: built.index, term: built.term, conf: { voters: [1], learners: [] } }, data: built.image });
    await fresh.save({ hardState: { term: built.term, vote: 0, commit: built.index } });
  } finally {
    await fresh.close();
  }
  writeDurably(join(o.dataDir, newClusterFile), `${JSON.stringify(next, null, 2)}\n`);
  fsyncDir(o.dataDir);
  writeDurably(join(o.dataDir, recoveryMarkerFile), `${JSON.stringify({ incarnation })}\n`);
  fsyncDir(o.dataDir);
  rollForwardRecovery(o.dataDir);
  return {
    record, cluster: c.cluster, server: c.server, address, resumed: false,
    voters: voters.map((v, k) => ({ name: v.name, address: v.address, reachable: answers[k]! })),
  };
}

/**
 * The survivor's state at its last log index: the snapshot plus every entry after it applied in order (as the node's
 * apply loop does: envelopes, exactly-once sessions, conf changes as no-ops for the KV state), the old configuration
 * folded from the snapshot's and the log's conf changes, then the old cluster's own buckets dropped.
 */
function replay(storage: RaftStorage, dropBuckets: readonly string[], ts: number): { image: Uint8Array; index: number; term: number; commit: number; conf: ConfState } {
  const snap = storage.snapshot();
  const last = storage.lastIndex();
  if (last === 0) throw new RecoverError(RecoverErrorCode.state, 'the Raft log of this data directory is empty: this node holds no data; recover another survivor');
  const kv = new KvStateMachine();
  const sessions = new AppliedSessions();
  if (snap.meta.index > 0) {
    const { kvImage, sessions: table } = decodeNodeSnapshot(snap.data);
    kv.restore(kvImage);
    sessions.restore(table);
  }
  let conf: ConfState = snap.meta.conf;
  let term = Math.max(storage.hardState().term, storage.term(last));
  for (const e of last > snap.meta.index ? storage.entries(snap.meta.index + 1, last + 1) : []) {
    if (e.type === EntryType.confChange) {
      kv.apply(e.index, new Uint8Array(0));
      try {
        const next = applyConfChange(conf, decodeConfChange(e.data));
        if (typeof next !== 'string') conf = next;
      } catch {
        // raft/ applies an undecodable change as a no-op on every node; so does this replay
      }
      continue;
    }
    const env = decodeEnvelope(e.data);
    kv.apply(e.index, sessions.admit(env.origin, env.boot, env.seq, e.index) ? env.command : new Uint8Array(0));
  }
  let index = last;
  for (const bucket of dropBuckets) {
    if (kv.bucketInfo(bucket) !== undefined) kv.apply(++index, encodeKvCommand({ op: 'bucket.delete', bucket, ts }));
  }
  term = Math.max(term, 1);
  return { image: encodeNodeSnapshot(kv.snapshot(), new AppliedSessions()), index, term, commit: storage.hardState().commit, conf };
}
