// A cluster node (ClusterNode): one member of the Raft meta-group with its store, its routes and its KV state
// machine. No module state: any number of nodes run in one process (tests), or one per process (production).
// This file is the composition (issue 17): it opens the store and the routes, starts Raft once the slot is known,
// ticks it, and wires the parts, each a module with a unit test of its own:
//   ready_driver.ts         the Ready loop (persist, then send, then apply), which test/sim drives
//   slot_binding.ts         the slot table, hellos and peer bindings; ClusterNode.slotTable for the control plane
//   frame_router.ts         frames in from the routes, Raft's messages out
//   replicated_kv.ts        writes in this node's session envelope, ReadIndex reads, watches: ClusterNode.kv
//   leadership.ts           who leads, and the leader-change listeners
//   membership_executor.ts  the leader's membership rounds, as membership_policy.ts decides: ClusterNode.membership
//   status_reports.ts       /raftz, /healthz, `cluster status`... (status.ts, health.ts): ClusterNode.status
//   snapshot_stream.ts      snapshots streamed to and from peers as files beside Raft
// The members left on ClusterNode are what callers need of the node itself: the service-presence surface
// (onLeaderChange, leaderName, onExtensionFrame, sendRouteFrame), route listeners, slots, the refusal, stop.
import { randomInt } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { RawNode, seededRng } from '../../raft/index.js';
import { KvStateMachine, RaftStorage, type KvResult } from '../../store/index.js';
import { createRouteTransport, type RouteFrame, type RouteTransport } from '../../transport/index.js';
import { loadOrCreateIdentity, type InternalIdentity } from '../auth/index.js';
import { createClusterBus, type ClusterBus } from '../bus/index.js';
import { silentLogger, type Logger } from '../log.js';
import { checkKvFormat } from './bootstrap.js';
import { NodeError, NodeErrorCode } from './errors.js';
import { FrameRouter } from './frame_router.js';
import { Leadership, type LeaderListener } from './leadership.js';
import { MembershipExecutor, type MembershipControl } from './membership_executor.js';
import type { NodeOptions, RouteListener } from './node_options.js';
import { ReadyDriver } from './ready_driver.js';
import { ReplicatedKv, type NodeKv } from './replicated_kv.js';
import { stoppedError } from './requests.js';
import { newNodeMetrics, peerName, type NodeMetrics, type NodeStatusView } from './status.js';
import { StatusReports, type NodeStatus } from './status_reports.js';
import { SlotBindings, type SlotTable } from './slot_binding.js';
import { raftStorageView } from './storage_adapter.js';
import { SnapshotStream } from './snapshot_stream.js';
import { SnapshotStaging } from './staged_restore.js';

export { snapshotLogFraction } from './ready_driver.js';

export type { NodeOptions, RaftKvBackend, ReadOptions, RouteListener } from './node_options.js';
export type { Health } from './health.js';
export type { ClusterStatus, JsClusterInfo, JsReplicaInfo, MemberStatus } from './status.js';
export type { NodeKv } from './replicated_kv.js';
export type { NodeStatus } from './status_reports.js';
export type { Membership, MembershipControl } from './membership_executor.js';
export type { SlotTable } from './slot_binding.js';
export type { LeaderListener } from './leadership.js';

export class ClusterNode {
  readonly serverName: string;
  readonly clusterName: string;
  readonly identity: InternalIdentity;
  readonly stateMachine = new KvStateMachine();
  readonly metrics: NodeMetrics = newNodeMetrics();

  private readonly opts: NodeOptions;
  private readonly log: Logger;
  private readonly tickMs: number;
  private readonly electionTicks: number;
  private readonly heartbeatTicks: number;
  private readonly snapshotEntries: number;
  private storage!: RaftStorage;
  private transport!: RouteTransport;
  /** Snapshots to and from peers, streamed as their files beside Raft (snapshot_stream.ts). */
  private snapshotStream!: SnapshotStream;
  /** The snapshot parsed while it is received: filled by the stream, taken by the driver's install (staged_restore.ts). */
  private readonly staging: SnapshotStaging;
  private raw: RawNode | undefined;
  /** The slot table and who holds each slot (slot_binding.ts). */
  private readonly binding: SlotBindings;
  /** What the control plane changes in the slot table: R, the appended slots, the recovery audit (slot_binding.ts). */
  readonly slotTable: SlotTable;
  /** Persists, sends and applies raw's Ready batches (ready_driver.ts); created with raw. */
  private driver: ReadyDriver<KvResult> | undefined;
  /** Who leads: leader changes told to the node's parts and listeners (leadership.ts). */
  private readonly leadership: Leadership;
  private tickTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private fatal: Error | undefined;
  /** The KV through Raft: writes, linearizable reads, watches, the KvBackend of src/kv (replicated_kv.ts). */
  readonly kv: NodeKv;
  /** The same, with the hooks the Ready driver and the tick report to. */
  private readonly replicated: ReplicatedKv;
  /** Frames in from the routes, Raft's messages out (frame_router.ts). */
  private readonly router: FrameRouter;
  private ticks = 0;
  private readonly startedAt = Date.now();
  /** Carries out membership changes on the leader, each tick round (membership_executor.ts). */
  private readonly executor: MembershipExecutor;
  /** The configuration, the operator's removed slots, leadership transfers (the executor's public side). */
  readonly membership: MembershipControl;
  /** Set by the control plane when this node's posture differs from the cluster's (`config` bucket). */
  private refusal: string | undefined;
  /** What the node reports about itself: /raftz, /healthz, `cluster status`... (status_reports.ts). */
  readonly status: NodeStatus;
  private readonly reports: StatusReports;
  /** The cluster-wide bus, when a NATS server was given. */
  bus: ClusterBus | undefined;

  private constructor(opts: NodeOptions, identity: InternalIdentity) {
    this.opts = opts;
    this.serverName = opts.serverName;
    this.clusterName = opts.clusterName;
    this.identity = identity;
    this.log = (opts.logger ?? silentLogger()).child({ component: 'node', server: opts.serverName });
    this.staging = new SnapshotStaging(this.log);
    this.tickMs = opts.tickMs ?? 100;
    this.electionTicks = opts.electionTicks ?? 10;
    this.heartbeatTicks = opts.heartbeatTicks ?? 1;
    this.snapshotEntries = opts.snapshotEntries ?? 10_000;
    this.membership = this.executor = new MembershipExecutor({
      raft: () => this.raw,
      slots: () => (this.binding.file ? { self: this.binding.file.id, count: this.binding.file.addresses.length } : undefined),
      replicas: () => this.binding.voters, upPeers: () => this.transport.upPeers(), peerOf: (id) => this.binding.idToPeer.get(id),
      peerName: (id) => this.peerName(id), schedule: () => this.schedule(), voterGraceMs: opts.voterGraceMs ?? 30_000, now: () => Date.now(), log: this.log,
    });
    this.kv = this.replicated = new ReplicatedKv({
      serverName: opts.serverName, boot: randomInt(1, 0xffffffff), timeoutMs: opts.requestTimeoutMs ?? 5000, maxKvBytes: opts.maxKvBytes,
      stateMachine: this.stateMachine, metrics: this.metrics, raft: () => this.raw, slot: () => this.binding.file?.id, schedule: () => this.schedule(),
      health: () => this.reports.health(), stopped: () => (this.stopping || this.fatal ? stoppedError(this.serverName, this.fatal) : undefined),
      now: () => performance.now(), log: this.log,
    });
    this.status = this.reports = new StatusReports(() => this.statusView(), (p, f) => this.transport.send(p, f), this.log);
    this.router = new FrameRouter({
      raft: () => this.raw, slotOf: (peer) => this.binding.peerToId.get(peer), peerOf: (id) => this.binding.idToPeer.get(id),
      send: (p, f) => this.transport.send(p, f),
      bindings: { peerUp: (p) => this.binding.peerUp(p), peerDown: (p) => this.binding.peerDown(p), onHello: (p, h) => this.binding.onHello(p, h) },
      selfReport: () => this.reports.selfReport(), statusAnswered: (reqId, report) => this.reports.answered(reqId, report),
      offerSnapshot: (p, m) => this.snapshotStream.offer(p, m), metrics: this.metrics, schedule: () => this.schedule(), now: () => Date.now(), log: this.log,
    });
    this.leadership = new Leadership({
      serverName: opts.serverName, raft: () => this.raw, slot: () => this.binding.file?.id, peerOf: (id) => this.binding.idToPeer.get(id),
      peerName: (id) => this.peerName(id), metrics: this.metrics, log: this.log,
      changed: (lead) => {
        this.router.leaderChanged();
        if (lead !== 0) this.replicated.leaderChanged();
      },
    });
    this.slotTable = this.binding = new SlotBindings({
      serverName: opts.serverName, clusterName: opts.clusterName, clusterPort: opts.clusterPort, dataDir: opts.dataDir,
      join: opts.join === true, kvReplicas: opts.kvReplicas, log: this.log,
      storeEmpty: () => this.storage.lastIndex() === 0 && this.storage.snapshot().meta.index === 0,
      startRaft: () => this.startRaft(),
      raft: () => this.raw,
      schedule: () => this.schedule(),
    });
  }

  /** Opens the data dir (recovery), derives the slot, starts routes and the tick timer. */
  static async start(opts: NodeOptions): Promise<ClusterNode> {
    mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
    const identity = loadOrCreateIdentity(opts.identityFile ?? join(opts.dataDir, 'identity.nk'));
    const node = new ClusterNode(opts, identity);
    await node.init();
    return node;
  }

  private async init(): Promise<void> {
    const opts = this.opts;
    const bind = opts.bind ?? '0.0.0.0';
    const routes = await this.binding.configure(opts.routes ?? [], bind);

    checkKvFormat(opts.dataDir);
    this.storage = await RaftStorage.open(join(opts.dataDir, 'raft'), { logger: this.log });
    const rec = this.storage.recovery;
    this.log.info({ firstIndex: rec.firstIndex, lastIndex: rec.lastIndex, hardState: rec.hardState, snapshot: rec.snapshotFile, walRepaired: rec.walRepaired }, 'raft storage recovered');

    this.transport = createRouteTransport({
      clusterName: opts.clusterName,
      serverName: opts.serverName,
      host: bind,
      port: opts.clusterPort,
      ...(opts.clusterListener !== undefined ? { listener: opts.clusterListener } : {}),
      routes,
      tls: opts.tls,
      identity: { publicKey: this.identity.publicKeyBytes, sign: (d) => this.identity.sign(d) },
      user: opts.clusterUser,
      password: opts.clusterPassword,
      postureDigest: opts.postureDigest ?? '',
      ...this.binding.handshake(),
      verifyPeer: (name, key) => this.binding.verifyPeer(name, Buffer.from(key).toString('hex')),
      logger: opts.logger ?? silentLogger(),
      limits: { backoffMaxMs: 2000, ...opts.routeLimits },
      onPeerUp: (p) => this.router.peerUp(p),
      onPeerDown: (p, c) => this.router.peerDown(p, c),
      onFrame: (name, f) => this.router.frame(name, f),
    });
    const stream = this.snapshotStream = new SnapshotStream({ storage: this.storage, staging: this.staging, send: (p, f) => this.transport.send(p, f), deliver: (p, data) => this.router.frame(p, { kind: 'raft', data }), log: this.log,
      reportFailure: (m) => { this.raw?.reportSnapshotFailure(m.to); this.schedule(); } });
    this.addRouteListener({ down: (p) => { if (p.name !== undefined) stream.peerDown(p.name); }, frame: (p, f) => { stream.onFrame(p, f); } });
    this.onLeaderChange((isLeader) => { if (!isLeader) stream.leaderLost(); });
    if (opts.nats) {
      const bus = createClusterBus({ nats: opts.nats.cluster, routes: this.transport, logger: opts.logger ?? silentLogger() });
      this.bus = bus;
      this.addRouteListener({
        up: (p) => { if (p.name !== undefined) bus.peerUp(p.name); },
        down: (p) => { if (p.name !== undefined) bus.peerDown(p.name); },
        frame: (peer, frame) => { bus.handleFrame(peer, frame); },
      });
    }
    this.binding.attach(this.transport);
    await this.transport.start();
    this.tickTimer = setInterval(() => this.onTick(), this.tickMs);
    this.log.info({ id: this.binding.file?.id, n: this.binding.size, voters: this.binding.voters, route: this.transport.address() }, this.binding.file ? 'node started' : 'node started; waiting for a peer to learn this node\'s slot');
  }

  /** Raft says the lost data is made good, in a Ready now durable: persist that the node is an ordinary member again. */
  private markRecovered(): void {
    this.binding.markRecovered(this.stateMachine.appliedIndex);
    this.metrics.recoveries++;
  }

  private startRaft(): void {
    const c = this.binding.file!;
    const peers: number[] = [];
    // A node that joined a running cluster has no bootstrap entry: the leader sends it the log (or a snapshot), whose
    // configuration changes tell it the members. Bootstrapping [1..R] here could differ from the cluster's index 1.
    // Nor has a node that lost its data: R or the slot table may have changed since the cluster's index 1.
    const recovering = c.recovering === true;
    if (!c.joined && !recovering) for (let i = 1; i <= c.voters; i++) peers.push(i);
    this.raw = new RawNode({
      id: c.id,
      electionTicks: this.electionTicks,
      heartbeatTicks: this.heartbeatTicks,
      storage: raftStorageView(this.storage),
      rng: seededRng(randomInt(0, 0xffffffff)),
      peers,
      preVote: true,
      checkQuorum: true,
      recovering,
    });
    this.driver = this.createDriver(this.raw);
    this.driver.restoreStoredSnapshot();
    this.log.info({ id: c.id, addresses: c.addresses, voters: peers, recovering }, 'raft started');
    this.binding.sendHelloToAll();
    this.schedule();
  }

  // ---- what callers use of the node itself (service presence, the bus, the control plane) ------

  /** Registers a listener for non-Raft route frames and peer events; returns its removal. */
  addRouteListener(l: RouteListener): () => void {
    return this.router.addRouteListener(l);
  }

  /**
   * Called on every leader change with whether this node leads now (e.g. the first leader creates the
   * control buckets and records the slots in `nodes`). Returns the removal.
   */
  onLeaderChange(l: LeaderListener): () => void {
    return this.leadership.onLeaderChange(l);
  }

  /** The slots of the cluster: Raft id, address, and the server name + identity key bound to it (if met). */
  slots(): { id: number; address: string; name: string | undefined; identity: string | undefined }[] {
    return this.binding.slots(Buffer.from(this.identity.publicKeyBytes).toString('hex'));
  }

  /** Handles raft frames `[tag, ...]` of an in-process service (frame_router.ts onExtensionFrame). Returns the removal. */
  onExtensionFrame(tag: string, handler: (peerName: string, data: unknown[]) => void): () => void {
    return this.router.onExtensionFrame(tag, handler);
  }

  /** The server name of the leader this node follows (itself when it leads); undefined while there is none. */
  leaderName(): string | undefined {
    return this.leadership.leaderName();
  }

  /** Sends a non-Raft frame to a peer (bus glue); false when the peer is not up. */
  sendRouteFrame(peerName: string, frame: RouteFrame): boolean {
    return this.transport.send(peerName, frame);
  }

  // ---- the tick and the Ready loop ------------------------------------------------------------

  private onTick(): void {
    if (this.stopping || this.fatal) return;
    this.ticks++;
    if (this.raw) {
      this.raw.tick();
      this.replicated.retryWaiting();
      if (this.ticks % 10 === 0) this.executor.round();
      this.schedule();
    }
    this.replicated.expire();
  }

  private schedule(): void {
    if (this.stopping || this.fatal) return;
    this.driver?.schedule();
  }

  /** The Ready driver over this node's store, routes and KV state machine (ready_driver.ts). */
  private createDriver(raw: RawNode): ReadyDriver<KvResult> {
    return new ReadyDriver<KvResult>({
      raw,
      storage: this.storage,
      staging: this.staging,
      sink: { send: (m) => this.router.sendMessage(m) },
      stateMachine: this.stateMachine,
      clock: { now: () => performance.now(), yieldTurn: () => new Promise<void>((resolve) => setImmediate(resolve)) },
      metrics: this.metrics,
      logger: this.log,
      snapshotEntries: this.snapshotEntries,
      snapshotTurn: () => ({ slot: this.binding.file?.id ?? 1, slots: this.binding.size }),
      events: {
        softState: (ss) => this.leadership.softState(ss),
        applied: (_entry, write) => { if (write) this.replicated.writeApplied(write); },
        readStates: (states) => this.replicated.readStates(states),
        advanced: () => this.replicated.applied(),
        snapshotInstalled: () => this.replicated.snapshotInstalled(),
        recoveringOnDisk: () => this.binding.file?.recovering === true,
        recovered: () => this.markRecovered(),
        fatal: (err) => {
          this.fatal = err;
          this.replicated.failAll(new NodeError(NodeErrorCode.stopped, `node ${this.serverName} stopped replicating: ${err.message}`, false));
        },
      },
    });
  }

  // ---- leadership, R and the refusal (the KV TTL, the control plane) -----------------------------

  /** Whether this node leads the meta-group now (leader-only duties such as KV expiry proposals). */
  get isLeader(): boolean {
    return this.leadership.isLeader;
  }

  /** The number of voters the leader keeps (--kv-replicas as persisted). */
  get kvReplicas(): number {
    return this.binding.voters;
  }

  /** Refuses service with a reason (`/healthz` says it) until called with undefined. */
  setRefusal(reason: string | undefined): void {
    if (reason !== this.refusal) {
      if (reason !== undefined) this.log.error({ reason }, 'node refused');
      else if (this.refusal !== undefined) this.log.info('node refusal lifted');
    }
    this.refusal = reason;
  }

  // ---- identity and the status view -------------------------------------------------------------

  /** The Raft id (slot) of this node, undefined while it is still learning it. */
  get id(): number | undefined {
    return this.binding.file?.id;
  }

  /** Bound address of the cluster port. */
  routeAddress(): { host: string; port: number } {
    return this.transport.address();
  }

  private peerName(id: number): string {
    return peerName({ cluster: this.binding.file, serverName: this.serverName, idToPeer: this.binding.idToPeer }, id);
  }

  /** What status.ts reads of this node, now (Raft, transport and maps by reference). */
  private statusView(): Omit<NodeStatusView, 'health'> {
    return {
      serverName: this.serverName, clusterName: this.clusterName, identityKey: this.identity.publicKey, cluster: this.binding.file,
      clusterSize: this.binding.size, kvReplicas: this.binding.voters, raft: this.raw, applied: this.stateMachine.appliedIndex,
      kvBytes: this.stateMachine.totalBytes(), maxKvBytes: this.opts.maxKvBytes, transport: this.transport,
      idToPeer: this.binding.idToPeer, peerToId: this.binding.peerToId, peerContact: this.router.peerContact, lastLeaderContact: this.router.lastLeaderContact,
      electionWindowMs: this.electionTicks * this.tickMs, now: Date.now(), startedAt: this.startedAt,
      storage: {
        firstIndex: () => this.storage.firstIndex(),
        snapshotIndex: () => this.storage.snapshot().meta.index,
        walSegments: () => this.storage.walSegments().length,
      },
      metrics: this.metrics, pendingWrites: this.replicated.writesWaiting, pendingReads: this.replicated.readersWaiting, snapshotStream: this.snapshotStream,
      fatal: this.fatal, refusal: this.refusal, stopping: this.stopping, bootstrapProblem: this.binding.problem,
      verdictPending: this.binding.awaitingVerdict, joining: this.opts.join === true, removedSlots: this.membership.removedSlots,
      rss: () => process.memoryUsage().rss,
    };
  }

  /** Stops timers, fails waiting requests, closes routes and the store. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.tickTimer);
    this.replicated.failAll(stoppedError(this.serverName, this.fatal));
    await this.driver?.stop();
    this.bus?.close();
    await this.snapshotStream?.close();
    await this.transport.close();
    await this.storage.close();
    this.log.info('node stopped');
  }
}

/** Starts a cluster node (see NodeOptions). */
export function startNode(options: NodeOptions): Promise<ClusterNode> {
  return ClusterNode.start(options);
}
