// What a node says about itself: /raftz, /routez, /varz, /metrics, /healthz, `cluster status` and STREAM.INFO's
// `cluster`, as functions of a NodeStatusView (issue 17: observability is tested without a cluster). The node
// builds the view from its live parts (node.ts statusView); nothing here changes the node, except CatchUp, which
// remembers the first time the node was caught up, and StatusQueries, the questions asked of peers. Over 500 lines
// on purpose: every view of the node's state reads the same NodeStatusView through the same helpers (peerName,
// describeDown), and about a third of it is the /metrics series table.
import { snapshotStreamSamples, type SnapshotStream } from './snapshot_stream.js';
import { StateType, type BasicStatus, type ConfState, type Status } from '../../raft/index.js';
import type { PeerInfo, RouteTransport } from '../../transport/index.js';
import type { ClusterFile } from './bootstrap.js';
import { assessHealth, type Health, type SilentVoter } from './health.js';
import { Histogram, renderMetrics, type Sample } from './metrics.js';
import type { MemberReport } from './wire.js';

/** One row of `cluster status`: the member's own report (when it answered) and its place in the configuration. */
export interface MemberStatus {
  readonly id: number;
  readonly name: string | null;
  readonly address: string;
  /** leader | follower | candidate | learner | voter (a voter that did not answer) | removed */
  readonly role: string;
  readonly term: number | null;
  readonly leader: string | null;
  readonly commit: number | null;
  readonly applied: number | null;
  /** The leader's commit index minus this member's applied index (null when either is unknown). */
  readonly lag: number | null;
  readonly reachable: boolean;
  readonly health: string | null;
}

/** A replica in STREAM.INFO `cluster.replicas` (nats-server PeerInfo). */
export interface JsReplicaInfo {
  readonly name: string;
  readonly current: boolean;
  readonly offline?: boolean;
  readonly active: number;
  readonly lag?: number;
}

export interface JsClusterInfo {
  readonly name: string;
  readonly leader?: string;
  readonly replicas?: readonly JsReplicaInfo[];
}

export interface ClusterStatus {
  readonly cluster: string;
  /** The node that answered. */
  readonly via: string;
  readonly leader: string | null;
  readonly term: number;
  readonly kvReplicas: number;
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  readonly members: readonly MemberStatus[];
}

/** The node's counters and histograms (ClusterNode.metrics). */
export interface NodeMetrics {
  readonly proposalSeconds: Histogram;
  readonly persistSeconds: Histogram;
  leaderChanges: number;
  raftMessagesIn: number;
  raftMessagesOut: number;
  raftMessagesDropped: number;
  proposalsFailed: number;
  snapshotsTaken: number;
  snapshotsInstalled: number;
  /** Times this node caught up after losing its data. */
  recoveries: number;
  /** KV writes refused by --max-kv-bytes. */
  quotaRefusals: number;
}

export function newNodeMetrics(): NodeMetrics {
  return {
    proposalSeconds: new Histogram(), persistSeconds: new Histogram(), leaderChanges: 0, raftMessagesIn: 0, raftMessagesOut: 0, raftMessagesDropped: 0,
    proposalsFailed: 0, snapshotsTaken: 0, snapshotsInstalled: 0, recoveries: 0, quotaRefusals: 0,
  };
}

/** The parts of RawNode status reads (a RawNode is one; tests give a fixed one). */
export interface RaftStatusSource {
  status(): Status;
  basicStatus(): BasicStatus;
  confState(): ConfState;
}

/** Why the node may not serve at all, whatever Raft says (checked before anything else by nodeHealth). */
export interface NodeConditions {
  /** The Ready loop stopped on this (disk error, broken invariant). */
  readonly fatal: Error | undefined;
  /** The control plane refuses this node (its posture differs from the cluster's). */
  readonly refusal: string | undefined;
  readonly stopping: boolean;
  /** Why the bootstrap is stuck (slot tables disagree, R differs, no slot for a joiner…). */
  readonly bootstrapProblem: string | undefined;
  /** The store is empty and a peer's hello has not said yet whether this node is new or lost its data. */
  readonly verdictPending: boolean;
  /** --initial-cluster-state existing, still without a slot. */
  readonly joining: boolean;
  /** Slots an operator removed (`cluster remove`). */
  readonly removedSlots: ReadonlySet<number>;
}

/** A node as its observability sees it: read-only, built per call (maps and Raft by reference). */
export interface NodeStatusView extends NodeConditions {
  readonly serverName: string;
  readonly clusterName: string;
  /** The node's identity public key (NKey text). */
  readonly identityKey: string;
  /** The slot table; undefined while this node learns its slot. */
  readonly cluster: ClusterFile | undefined;
  /** Slots in the table (N). */
  readonly clusterSize: number;
  /** Voters the leader keeps (R). */
  readonly kvReplicas: number;
  /** Raft; undefined until it starts. */
  readonly raft: RaftStatusSource | undefined;
  readonly applied: number;
  /** KV data held, as --max-kv-bytes counts it. */
  readonly kvBytes: number;
  /** --max-kv-bytes; undefined: unlimited. */
  readonly maxKvBytes: number | undefined;
  readonly transport: Pick<RouteTransport, 'peers' | 'upPeers' | 'address' | 'linkCount'>;
  readonly idToPeer: ReadonlyMap<number, string>;
  readonly peerToId: ReadonlyMap<string, number>;
  /** Raft id → Date.now() of the last Raft message from that peer. */
  readonly peerContact: ReadonlyMap<number, number>;
  /** Date.now() of the last message from the leader. */
  readonly lastLeaderContact: number;
  /** One election timeout in ms (electionTicks × tickMs). */
  readonly electionWindowMs: number;
  /** Date.now() when the view was built. */
  readonly now: number;
  readonly startedAt: number;
  /** The Raft log on disk (functions: only /raftz reads them). */
  readonly storage: { firstIndex(): number; snapshotIndex(): number; walSegments(): number };
  readonly metrics: NodeMetrics;
  readonly pendingWrites: number;
  readonly pendingReads: number;
  /** Snapshots streamed to and from peers (snapshot_stream.ts): progress for health, /raftz and /metrics. */
  readonly snapshotStream: Pick<SnapshotStream, 'receiving' | 'sending' | 'counters'> & Partial<Pick<SnapshotStream, 'stagingCounts'>>;
  /** The process's resident set size in bytes (/varz `mem`). */
  rss(): number;
  /** The node's health (nodeHealth with its CatchUp): a function, as it is not needed by every endpoint. */
  health(): Health;
}

/** The server name of slot `id` (this node's own, a bound peer's, or "slot N" when none is bound yet). */
export function peerName(v: Pick<NodeStatusView, 'cluster' | 'serverName' | 'idToPeer'>, id: number): string {
  return id === v.cluster?.id ? v.serverName : (v.idToPeer.get(id) ?? `slot ${id}`);
}

/** A route that is not up, with the refusal or dial error that keeps it down (what to fix). */
export function describeDown(p: PeerInfo): string {
  const where = p.name ?? p.route ?? p.address;
  return p.lastError && p.lastError.code !== 'connect' ? `${where}: ${p.lastError.reason}` : where;
}

function msOrNull(s: number | null): number | null {
  return s === null ? null : Math.round(s * 100_000) / 100;
}

// ---- health ----------------------------------------------------------------------------------------------

/**
 * Until a node has applied the leader's own commit index once since it started (and, after losing its data,
 * until Raft ends its recovery), it is not current: its own commit index is clamped to what it holds, so "applied
 * all I know committed" means nothing for a node that knows little. Heartbeats carry the leader's index.
 */
export class CatchUp {
  private caughtUp = false;
  /** The leader health last saw, and since when (how long its heartbeats have said nothing of its commit). */
  private leaderSeen = { lead: 0, since: 0 };
  private readonly onLegacyLeader: (lead: number) => void;

  /** `onLegacyLeader`: called once when a leader that never tells its commit index is taken at its word. */
  constructor(onLegacyLeader: (lead: number) => void) {
    this.onLegacyLeader = onLegacyLeader;
  }

  /** Undefined once caught up (then always); otherwise the "catching up" health. */
  /** `snapshot`: bytes received of the snapshot streamed to this node (snapshot_stream.ts), total 0 when none. */
  check(st: BasicStatus, applied: number, now: number, electionWindowMs: number, snapshot = { received: 0, total: 0 }): Health | undefined {
    if (!st.recovering && (this.caughtUp || (st.leaderCommit > 0 && applied >= st.leaderCommit))) {
      this.caughtUp = true;
      return undefined;
    }
    // A leader of an older version never says its commit index: after two election timeouts of silence on it,
    // "applied all this node knows committed" (checked by the caller) is the best there is, as before.
    // Timed from when health first sees this leader (Raft's state, not the Ready loop's, which may lag behind it).
    if (st.lead !== this.leaderSeen.lead) this.leaderSeen = { lead: st.lead, since: now };
    if (!st.recovering && st.leaderCommit === 0 && st.lead !== 0 && now - this.leaderSeen.since > 2 * electionWindowMs) {
      this.caughtUp = true;
      this.onLegacyLeader(st.lead);
      return undefined;
    }
    const of = st.leaderCommit > 0 ? `the leader's commit ${st.leaderCommit}` : 'the leader\'s commit (not known yet)';
    const snap = snapshot.total > 0 ? ` (snapshot ${Math.floor((100 * snapshot.received) / snapshot.total)}% received)` : '';
    const lost = st.recovering ? '; this node lost its data and votes again once caught up' : '';
    return { status: 'unavailable', reason: `catching up: applied ${applied} of ${of}${snap}${lost}` };
  }
}

/** Health before Raft runs: why the node has no slot or no verdict yet, and whom it is not connected to. */
function bootstrapHealth(v: NodeStatusView): Health {
  const up = v.transport.upPeers().length;
  const down = v.transport.peers().filter((p) => p.state !== 'up').map(describeDown);
  const notConnected = down.length ? `; not connected: ${down.join(', ')}` : '';
  let reason = v.bootstrapProblem;
  if (reason === undefined && v.verdictPending) {
    reason = `no quorum: ${up + 1} of ${v.kvReplicas} voters reachable (this node's store is empty: a peer with a slot table tells whether it is new or lost its data${notConnected})`;
  }
  if (reason === undefined && v.joining) {
    reason = `joining cluster "${v.clusterName}": waiting for a peer's slot table (${up} peer(s) connected; not connected: ${down.join(', ')})`;
  }
  reason ??= `no quorum: ${up + 1} of ${v.kvReplicas} voters reachable (this node learns its slot from the first peer it meets; not connected: ${down.join(', ')})`;
  return { status: 'unavailable', reason };
}

/** What /healthz says: the node's conditions first, then (Raft running) assessHealth of what it sees. */
export function nodeHealth(v: NodeStatusView, catchUp: CatchUp): Health {
  if (v.fatal) return { status: 'unavailable', reason: `replication stopped: ${v.fatal.message}` };
  if (v.refusal !== undefined) return { status: 'unavailable', reason: v.refusal };
  if (v.stopping) return { status: 'unavailable', reason: 'node is stopping' };
  if (!v.raft || !v.cluster) return bootstrapHealth(v);
  const st = v.raft.basicStatus();
  const conf = v.raft.confState();
  const self = v.cluster.id;
  const removed = v.removedSlots.has(self) && !conf.voters.includes(self) && !conf.learners.includes(self);
  const voters = conf.voters.length > 0 ? conf.voters : Array.from({ length: v.kvReplicas }, (_, i) => i + 1);
  const silent: SilentVoter[] = [];
  for (const id of voters) {
    if (id === self) continue;
    const at = v.peerContact.get(id);
    if (v.now - (at ?? 0) > v.electionWindowMs) silent.push({ name: peerName(v, id), silentMs: at === undefined ? undefined : v.now - at });
  }
  const up = new Set(v.transport.upPeers());
  const leaderPeer = v.idToPeer.get(st.lead);
  return assessHealth({
    ...(removed ? { removed: { slot: self, serverName: v.serverName, address: v.cluster.addresses[self - 1] ?? '' } } : {}),
    voters: voters.length,
    reachable: voters.filter((id) => id === self || up.has(v.idToPeer.get(id) ?? '\0')).length,
    notConnected: v.transport.peers().filter((p) => p.state !== 'up').map(describeDown),
    silent,
    windowMs: v.electionWindowMs,
    role: st.state,
    term: st.term,
    lead: st.lead,
    leaderName: peerName(v, st.lead),
    leaderConnected: leaderPeer !== undefined && up.has(leaderPeer),
    leaderSilentMs: v.now - v.lastLeaderContact,
    commit: st.commit,
    applied: v.applied,
    ...(v.bootstrapProblem !== undefined ? { bootstrapProblem: v.bootstrapProblem } : {}),
    catchingUp: () => catchUp.check(st, v.applied, v.now, v.electionWindowMs, v.snapshotStream.receiving()),
  });
}

// ---- reports ---------------------------------------------------------------------------------------------

/** This node's own view (indexes, state, health) as `cluster status` shows it. */
export function selfReport(v: NodeStatusView): MemberReport {
  const h = v.health();
  const base = { id: v.cluster?.id ?? 0, name: v.serverName, health: h.status === 'ok' ? 'ok' : h.reason };
  if (!v.raft) return { ...base, state: 'bootstrapping', term: 0, lead: 0, commit: 0, applied: v.applied, lastIndex: 0 };
  const st = v.raft.basicStatus();
  return { ...base, state: st.state, term: st.term, lead: st.lead, commit: st.commit, applied: v.applied, lastIndex: v.raft.status().lastIndex };
}

/**
 * `cluster status` from the reports gathered (this node's and each peer's that answered, by slot): every slot with
 * its role and indexes. Lag is against the leader's commit index as the leader reports it (or the highest commit
 * seen when no leader answered).
 */
export function clusterStatusFrom(v: NodeStatusView, reports: ReadonlyMap<number, MemberReport>): ClusterStatus {
  const confState = v.raft?.confState();
  const conf = confState ? { voters: [...confState.voters], learners: [...confState.learners] } : { voters: [], learners: [] };
  const leaderReport = [...reports.values()].find((r) => r.state === StateType.leader);
  const leaderCommit = leaderReport?.commit ?? Math.max(0, ...[...reports.values()].map((r) => r.commit));
  const c = v.cluster;
  const members: MemberStatus[] = (c?.addresses ?? []).map((address, i) => {
    const id = i + 1;
    const r = reports.get(id);
    const learner = conf.learners.includes(id);
    const voter = conf.voters.includes(id);
    const role = !voter && !learner ? 'removed' : learner ? 'learner' : r === undefined ? 'voter' : r.state === 'preCandidate' ? 'candidate' : r.state;
    return {
      id, name: id === c?.id ? v.serverName : (c?.bindings[String(id)]?.name ?? c?.names?.[String(id)] ?? null), address, role,
      term: r?.term ?? null, leader: r === undefined || r.lead === 0 ? null : peerName(v, r.lead),
      commit: r?.commit ?? null, applied: r?.applied ?? null, lag: r === undefined ? null : Math.max(0, leaderCommit - r.applied),
      reachable: r !== undefined, health: r?.health ?? null,
    };
  });
  const st = v.raft?.basicStatus();
  return {
    cluster: v.clusterName, via: v.serverName, leader: leaderReport ? leaderReport.name : (st && st.lead !== 0 ? peerName(v, st.lead) : null),
    term: leaderReport?.term ?? st?.term ?? 0, kvReplicas: v.kvReplicas, voters: conf.voters, learners: conf.learners, members,
  };
}

/**
 * STREAM.INFO `cluster` as nats-server reports a replicated stream: the cluster name, the Raft leader's server
 * name, and the other voters as replicas with `current`, `active` (ns since this node last heard from them) and
 * `lag` (entries behind). The leader knows every voter's progress; a follower knows its own and reports the
 * others from its routes only (`offline` when the route is down, `active` from the last Raft message, which
 * followers seldom exchange). Undefined with a single voter: nats-server omits `cluster` for an R1 stream on a
 * single server.
 */
export function jsClusterInfo(v: NodeStatusView): JsClusterInfo | undefined {
  const raft = v.raft;
  if (!raft) return undefined;
  const conf = raft.confState();
  if (conf.voters.length <= 1) return undefined;
  const st = raft.status();
  const lead = st.softState.lead;
  if (lead === 0) return { name: v.clusterName };
  const now = v.now;
  const recent = 2 * v.electionWindowMs;
  const up = new Set(v.transport.upPeers());
  const replicas: JsReplicaInfo[] = [];
  for (const id of conf.voters) {
    if (id === lead) continue;
    const name = peerName(v, id);
    if (id === st.id) {
      const lag = Math.max(0, st.hardState.commit - v.applied);
      replicas.push({ name, current: lag === 0 && now - v.lastLeaderContact <= recent, active: 0, ...(lag > 0 ? { lag } : {}) });
      continue;
    }
    const online = up.has(v.idToPeer.get(id) ?? '');
    const p = st.softState.state === StateType.leader ? st.progress.get(id) : undefined;
    const lag = p === undefined ? 0 : Math.max(0, st.lastIndex - p.match);
    const current = online && (p === undefined || (lag === 0 && now - (v.peerContact.get(id) ?? 0) <= recent));
    const at = v.peerContact.get(id);
    const active = at === undefined ? 0 : Math.max(0, now - at) * 1_000_000;
    replicas.push({ name, current, ...(online ? {} : { offline: true }), active, ...(lag > 0 ? { lag } : {}) });
  }
  return { name: v.clusterName, leader: peerName(v, lead), replicas };
}

/**
 * `cluster status` questions to peers over the routes (a statusRequest frame each; the peer answers with its
 * selfReport). A question gets a request id; a reply is matched to it, and a peer that does not answer within the
 * bound is left out (unreachable in the table).
 */
export class StatusQueries {
  private seq = 0;
  private readonly waiting = new Map<number, (r: MemberReport) => void>();
  /** Sends the question `reqId` to `peer`; false when its route is not up. */
  private readonly send: (peer: string, reqId: number) => boolean;

  constructor(send: (peer: string, reqId: number) => boolean) {
    this.send = send;
  }

  /**
   * Asks each of `peers`; resolves once each answered or `timeoutMs` passed, with the reports added to `into` by
   * slot. A report is kept only from the peer bound to the slot it claims (`peerToId`).
   */
  async ask(
    peers: readonly string[], peerToId: ReadonlyMap<string, number>, timeoutMs: number, into: Map<number, MemberReport>,
  ): Promise<Map<number, MemberReport>> {
    await Promise.all(peers.map((peer) => new Promise<void>((resolve) => {
      const reqId = (this.seq = (this.seq + 1) >>> 0);
      const timer = setTimeout(() => {
        this.waiting.delete(reqId);
        resolve();
      }, timeoutMs);
      this.waiting.set(reqId, (r) => {
        clearTimeout(timer);
        this.waiting.delete(reqId);
        if (r.id !== 0 && peerToId.get(peer) === r.id) into.set(r.id, r);
        resolve();
      });
      if (!this.send(peer, reqId)) {
        clearTimeout(timer);
        this.waiting.delete(reqId);
        resolve();
      }
    })));
    return into;
  }

  /** A peer's answer to question `reqId` (ignored when the question timed out or was never asked). */
  answered(reqId: number, report: MemberReport): void {
    this.waiting.get(reqId)?.(report);
  }

  /** Questions still waiting for an answer. */
  get pending(): number {
    return this.waiting.size;
  }
}

// ---- monitoring endpoints --------------------------------------------------------------------------------

/** /raftz: Raft state, progress of each member, pending requests, latencies. */
export function raftz(v: NodeStatusView): Record<string, unknown> {
  const base = { server: v.serverName, cluster: v.clusterName, identity: v.identityKey, health: v.health() };
  if (!v.raft || !v.cluster) return { ...base, id: null, state: 'bootstrapping', n: v.clusterSize, voters: v.kvReplicas };
  const st = v.raft.status();
  const basic = v.raft.basicStatus();
  const progress: Record<string, unknown> = {};
  for (const [id, p] of st.progress) {
    progress[peerName(v, id)] = {
      id, match: p.match, next: p.next, state: p.state, learner: p.isLearner, recentActive: p.recentActive, recovering: p.recovering,
      ...((tx) => (tx ? { snapshotTransfer: tx } : {}))(v.snapshotStream.sending(peerName(v, id))),
    };
  }
  const m = v.metrics;
  return {
    ...base,
    id: st.id,
    state: st.softState.state,
    term: st.hardState.term,
    vote: st.hardState.vote,
    leader: st.softState.lead === 0 ? null : { id: st.softState.lead, name: peerName(v, st.softState.lead) },
    commit: st.hardState.commit,
    applied: v.applied,
    leaderCommit: basic.leaderCommit,
    recovering: basic.recovering,
    snapshotTransfer: ((rx) => (rx.total > 0 ? { receivedBytes: rx.received, totalBytes: rx.total } : null))(v.snapshotStream.receiving()),
    lastIndex: st.lastIndex,
    firstIndex: v.storage.firstIndex(),
    snapshotIndex: v.storage.snapshotIndex(),
    conf: st.conf,
    slots: v.cluster.addresses.map((a, i) => ({ id: i + 1, address: a, name: peerName(v, i + 1) })),
    progress,
    pendingWrites: v.pendingWrites,
    pendingReads: v.pendingReads,
    leaderChanges: m.leaderChanges,
    proposalP50Ms: msOrNull(m.proposalSeconds.quantile(0.5)),
    proposalP99Ms: msOrNull(m.proposalSeconds.quantile(0.99)),
    persistP50Ms: msOrNull(m.persistSeconds.quantile(0.5)),
    walSegments: v.storage.walSegments(),
  };
}

/** /routez: each route with the Raft slot bound to its peer. */
export function routez(v: NodeStatusView): Record<string, unknown> {
  const peers = v.transport.peers().map((p) => ({ ...p, raftId: p.name === undefined ? null : (v.peerToId.get(p.name) ?? null) }));
  return { server: v.serverName, cluster: v.clusterName, listen: v.transport.address(), numRoutes: v.transport.upPeers().length, routes: peers };
}

/** /varz: who the node is, its size, uptime, memory, routes and health. */
export function varz(v: NodeStatusView): Record<string, unknown> {
  return {
    server: v.serverName,
    cluster: v.clusterName,
    identity: v.identityKey,
    raftId: v.cluster?.id ?? null,
    clusterSize: v.clusterSize,
    voters: v.kvReplicas,
    uptimeMs: v.now - v.startedAt,
    mem: v.rss(),
    routes: v.transport.upPeers().length,
    routeLinks: v.transport.linkCount(),
    health: v.health(),
  };
}

/** The route counters summed over every peer. */
function routeTotals(peers: readonly PeerInfo[]): { bytesIn: number; bytesOut: number; framesIn: number; framesOut: number; writes: number } {
  const t = { bytesIn: 0, bytesOut: 0, framesIn: 0, framesOut: 0, writes: 0 };
  for (const p of peers) {
    t.writes += p.counters.writes;
    t.bytesIn += p.counters.bytesIn;
    t.bytesOut += p.counters.bytesOut;
    t.framesIn += p.counters.framesIn;
    t.framesOut += p.counters.framesOut;
  }
  return t;
}

/** /metrics in the Prometheus text format (0.0.4). */
export function metricsText(v: NodeStatusView): string {
  const st = v.raft?.basicStatus();
  const peers = v.transport.peers();
  const r = routeTotals(peers);
  const m = v.metrics;
  const samples: Sample[] = [
    ['membershipd_raft_term', 'gauge', 'Current Raft term', st?.term ?? 0],
    ['membershipd_raft_leader', 'gauge', '1 when this node is the Raft leader', st?.state === StateType.leader ? 1 : 0],
    ['membershipd_raft_has_leader', 'gauge', '1 when a leader is known', st && st.lead !== 0 ? 1 : 0],
    ['membershipd_raft_leader_changes_total', 'counter', 'Leader changes seen by this node', m.leaderChanges],
    ['membershipd_raft_commit_index', 'gauge', 'Raft commit index', st?.commit ?? 0],
    ['membershipd_raft_applied_index', 'gauge', 'Index applied to the KV state machine', v.applied],
    ['membershipd_raft_leader_commit_index', 'gauge', 'The leader\'s own commit index as its heartbeats tell it (0: not known)', st?.leaderCommit ?? 0],
    ['membershipd_raft_recovering', 'gauge', '1 while this node, having lost its data, catches up without a vote', st?.recovering ? 1 : 0],
    ['membershipd_raft_recoveries_total', 'counter', 'Times this node caught up after losing its data', m.recoveries],
    ['membershipd_raft_snapshot_received_bytes', 'gauge', 'Bytes received of the snapshot being streamed to this node', v.snapshotStream.receiving().received],
    ['membershipd_raft_snapshot_total_bytes', 'gauge', 'Size of the snapshot being streamed to this node (0: none)', v.snapshotStream.receiving().total],
    ...snapshotStreamSamples(v.snapshotStream.counters, v.snapshotStream.stagingCounts),
    ['membershipd_raft_snapshots_installed_total', 'counter', 'Snapshots received from the leader and installed', m.snapshotsInstalled],
    ['membershipd_raft_messages_in_total', 'counter', 'Raft messages received', m.raftMessagesIn],
    ['membershipd_raft_messages_out_total', 'counter', 'Raft messages sent', m.raftMessagesOut],
    ['membershipd_raft_messages_dropped_total', 'counter', 'Raft messages dropped (peer down, unknown slot, queue full)', m.raftMessagesDropped],
    ['membershipd_raft_proposals_failed_total', 'counter', 'Writes that failed with a timeout or no leader', m.proposalsFailed],
    ['membershipd_raft_pending_writes', 'gauge', 'Writes waiting to be applied', v.pendingWrites],
    ['membershipd_raft_snapshots_total', 'counter', 'Snapshots taken locally', m.snapshotsTaken],
    ['membershipd_kv_bytes', 'gauge', 'KV data held, as --max-kv-bytes counts it (stored bytes of every bucket)', v.kvBytes],
    ['membershipd_kv_quota_bytes', 'gauge', '--max-kv-bytes (0: unlimited)', v.maxKvBytes ?? 0],
    ['membershipd_kv_quota_refusals_total', 'counter', 'KV writes refused because they would pass --max-kv-bytes', m.quotaRefusals],
    ['membershipd_healthy', 'gauge', '1 when /healthz answers ok', v.health().status === 'ok' ? 1 : 0],
    ['membershipd_route_connections', 'gauge', 'Route links open in any state', v.transport.linkCount()],
    ['membershipd_route_bytes_in_total', 'counter', 'Bytes received on routes', r.bytesIn],
    ['membershipd_route_bytes_out_total', 'counter', 'Bytes sent on routes', r.bytesOut],
    ['membershipd_route_frames_in_total', 'counter', 'Frames received on routes', r.framesIn],
    ['membershipd_route_frames_out_total', 'counter', 'Frames sent on routes', r.framesOut],
    ['membershipd_route_writes_total', 'counter', 'Socket writes on routes (frames out / writes = frames per write)', r.writes],
  ];
  if (st?.state === StateType.leader) {
    // One family after the other: a family's samples must be adjacent in the exposition format.
    const streams = [...v.raft!.status().progress.keys()].map((id) => [peerName(v, id), v.snapshotStream.sending(peerName(v, id))] as const);
    for (const [peer, tx] of streams) if (tx) samples.push(['membershipd_raft_snapshot_acked_bytes', 'gauge', 'Leader: bytes of the snapshot being streamed that the follower acknowledged', tx.ackedBytes, { peer }]);
    for (const [peer, tx] of streams) if (tx) samples.push(['membershipd_raft_snapshot_sending_bytes', 'gauge', 'Leader: size of the snapshot being streamed to the follower', tx.totalBytes, { peer }]);
  }
  for (const p of peers) {
    samples.push(['membershipd_route_up', 'gauge', 'Route state per peer (1 up)', p.state === 'up' ? 1 : 0, { peer: p.name ?? p.route ?? p.address }]);
  }
  return renderMetrics(samples, [
    ['membershipd_raft_proposal_seconds', 'Time from a write being proposed on this node to its apply here', m.proposalSeconds],
    ['membershipd_wal_fsync_seconds', 'Time to make one Ready batch durable (WAL append + fdatasync)', m.persistSeconds],
  ]);
}
