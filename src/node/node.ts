// A cluster node: the Raft core driven by a real tick timer, its Ready batches persisted through
// store/ (hard state and entries durable before that batch's messages leave), committed entries
// applied to the KV state machine, messages carried over the mutual-TLS routes. No module state: any
// number of nodes run in one process (tests), or one per process (production).
// ClusterNode composes the parts split out of it (issue 17): slot binding and bootstrap (slot_binding.ts), pending
// requests (requests.ts), status and health (status.ts, health.ts), membership decisions (membership_policy.ts).
// What stays here: the Ready loop, frame routing, Raft's start, and the public API, mostly one-line delegates.
// Over 500 lines until the Ready loop (onTick … writeSnapshot, about 200 lines) leaves for its own driver module,
// which the simulator is to run (issue 17 item 2); the public API's delegates are most of the rest.
import { randomInt } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { RaftError, RawNode, StateType, MessageType, decodeConfChange, seededRng, EntryType, type ConfState, type HardState, type Message, type Ready } from '../../raft/index.js';
import { KvStateMachine, RaftStorage, type KvCommand, type KvEntry, type KvListener, type KvResult } from '../../store/index.js';
import { encodeKvCommand, MsgpackWriter, quotaRefusal } from '../../store/index.js';
import {
  createRouteTransport, type LinkClose, type PeerInfo, type RouteFrame, type RouteTransport,
} from '../../transport/index.js';
import { loadOrCreateIdentity, type InternalIdentity } from '../auth/index.js';
import { createClusterBus, type ClusterBus } from '../bus/index.js';
import { silentLogger, type Logger } from '../log.js';
import { checkKvFormat, type AddedSlot, type ClusterFile, type RecoveryRecord } from './bootstrap.js';
import { NodeError, NodeErrorCode } from './errors.js';
import type { Health } from './health.js';
import { nextMembershipChange, promoteWindow, VoterDownWatch } from './membership_policy.js';
import type { NodeOptions, RaftKvBackend, ReadOptions, RouteListener } from './node_options.js';
import { AppliedSessions, beginNodeSnapshot, decodeNodeSnapshot, type NodeImageBuild } from './sessions.js';
import { PendingRequests, stoppedError } from './requests.js';
import {
  CatchUp, StatusQueries, clusterStatusFrom, jsClusterInfo, metricsText, newNodeMetrics, nodeHealth, peerName, raftz, routez, selfReport, varz,
  type ClusterStatus, type JsClusterInfo, type NodeMetrics, type NodeStatusView,
} from './status.js';
import { SlotBindings } from './slot_binding.js';
import { raftStorageView } from './storage_adapter.js';
import {
  decodeEnvelope, decodeNodeFrame, encodeEnvelope, encodeMessage, encodeStatusReply, encodeStatusRequest, type MemberReport,
} from './wire.js';

/**
 * A local snapshot waits until the log since the last one holds at least 1/snapshotLogFraction of its size in bytes
 * (as well as NodeOptions.snapshotEntries entries). The log kept in memory and replayed at restart is then at most
 * about a quarter of the state.
 */
export const snapshotLogFraction = 4;
/** A local snapshot is written in slices of this many ms of work, with a turn of the event loop between them. */
const snapshotSliceMs = 10;

export type { NodeOptions, RaftKvBackend, ReadOptions, RouteListener } from './node_options.js';
export type { Health } from './health.js';
export type { ClusterStatus, JsClusterInfo, JsReplicaInfo, MemberStatus } from './status.js';

export class ClusterNode {
  readonly serverName: string;
  readonly clusterName: string;
  readonly identity: InternalIdentity;
  readonly stateMachine = new KvStateMachine();
  private readonly sessions = new AppliedSessions();
  readonly metrics: NodeMetrics = newNodeMetrics();

  private readonly opts: NodeOptions;
  private readonly log: Logger;
  private readonly tickMs: number;
  private readonly electionTicks: number;
  private readonly heartbeatTicks: number;
  private readonly timeoutMs: number;
  private readonly snapshotEntries: number;
  /** A local snapshot being written (writeSnapshot); stop() waits for it. */
  private snapshotting: Promise<void> | undefined;
  /** Bytes of the entries applied since the last snapshot (taken or installed): see maybeSnapshot. */
  private logBytesSinceSnapshot = 0;
  private readonly boot = randomInt(1, 0xffffffff);
  private storage!: RaftStorage;
  private transport!: RouteTransport;
  private raw: RawNode | undefined;
  /** The slot table and who holds each slot (slot_binding.ts). */
  private readonly binding: SlotBindings;
  private readonly listeners = new Set<RouteListener>();
  private readonly extensionHandlers = new Map<string, (peerName: string, data: unknown[]) => void>();
  private readonly leaderListeners = new Set<(isLeader: boolean, leaderName: string | undefined) => void>();
  private tickTimer: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private fatal: Error | undefined;
  /** Waiting writes and linearizable reads (requests.ts); the Ready driver reports what Raft said of them. */
  private readonly requests: PendingRequests<KvResult>;
  private lastLead = 0;
  private lastLeaderContact = 0;
  /** Raft id → Date.now() of the last Raft message from that peer (JetStream's replica `active`). */
  private readonly peerContact = new Map<number, number>();
  private ticks = 0;
  /** A commit-only hard state not yet written (see handleReady); saved with the next synced batch or at stop. */
  private deferredHardState: HardState | undefined;
  /** Called after a snapshot from the leader replaced the state machine (KvBackend.onReset). */
  private readonly resetListeners = new Set<() => void>();
  /** Applied the leader's own commit index once since start: until then health says "catching up". */
  private readonly catchUp = new CatchUp((lead) => this.log.warn({ lead }, 'the leader\'s heartbeats carry no commit index (an older version?): healthy once applied reaches this node\'s own commit'));
  private readonly startedAt = Date.now();
  private readonly voterGraceMs: number;
  /** Voters whose route is down, and since when (the leader replaces one down past voterGraceMs). */
  private readonly voterDown: VoterDownWatch;
  /** Slots an operator removed (`cluster remove`, replicated by the control plane): never re-added as learners. */
  private removedSlots: ReadonlySet<number> = new Set();
  /** Set by the control plane when this node's posture differs from the cluster's (`config` bucket). */
  private refusal: string | undefined;
  /** `cluster status` questions this node asked its peers. */
  private readonly statusQueries = new StatusQueries((peer, reqId) => this.transport.send(peer, { kind: 'raft', data: encodeStatusRequest(reqId) }));
  /** The cluster-wide bus, when a NATS server was given. */
  bus: ClusterBus | undefined;

  private constructor(opts: NodeOptions, identity: InternalIdentity) {
    this.opts = opts;
    this.serverName = opts.serverName;
    this.clusterName = opts.clusterName;
    this.identity = identity;
    this.log = (opts.logger ?? silentLogger()).child({ component: 'node', server: opts.serverName });
    this.tickMs = opts.tickMs ?? 100;
    this.electionTicks = opts.electionTicks ?? 10;
    this.heartbeatTicks = opts.heartbeatTicks ?? 1;
    this.timeoutMs = opts.requestTimeoutMs ?? 5000;
    this.snapshotEntries = opts.snapshotEntries ?? 10_000;
    this.voterGraceMs = opts.voterGraceMs ?? 30_000;
    this.voterDown = new VoterDownWatch(this.voterGraceMs);
    this.requests = new PendingRequests<KvResult>({
      serverName: opts.serverName,
      boot: this.boot,
      timeoutMs: this.timeoutMs,
      now: () => performance.now(),
      propose: (seq, command) => this.proposeToRaft(seq, command),
      readIndex: (context) => this.askReadIndex(context),
      health: () => this.health(),
      stopped: () => (this.stopping || this.fatal ? stoppedError(this.serverName, this.fatal) : undefined),
      metrics: this.metrics,
    });
    this.binding = new SlotBindings({
      serverName: opts.serverName, clusterName: opts.clusterName, clusterPort: opts.clusterPort, dataDir: opts.dataDir,
      join: opts.join === true, kvReplicas: opts.kvReplicas, log: this.log,
      storeEmpty: () => this.storage.lastIndex() === 0 && this.storage.snapshot().meta.index === 0,
      startRaft: () => this.startRaft(),
      raft: () => this.raw,
      schedule: () => this.schedule(),
    });
  }

  // What slot_binding.ts holds, read where node.ts read its own fields before the split.
  private get cluster(): ClusterFile | undefined {
    return this.binding.file;
  }

  private get idToPeer(): ReadonlyMap<number, string> {
    return this.binding.idToPeer;
  }

  private get peerToId(): ReadonlyMap<string, number> {
    return this.binding.peerToId;
  }

  private get n(): number {
    return this.binding.size;
  }

  private get voters(): number {
    return this.binding.voters;
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
      onPeerUp: (p) => this.onPeerUp(p),
      onPeerDown: (p, c) => this.onPeerDown(p, c),
      onFrame: (name, f) => this.onFrame(name, f),
    });
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
    this.log.info({ id: this.cluster?.id, n: this.n, voters: this.voters, route: this.transport.address() }, this.cluster ? 'node started' : 'node started; waiting for a peer to learn this node\'s slot');
  }

  /** Raft says the lost data is made good, in a Ready now durable: persist that the node is an ordinary member again. */
  private markRecovered(): void {
    this.binding.markRecovered(this.stateMachine.appliedIndex);
    this.metrics.recoveries++;
  }

  private startRaft(): void {
    const c = this.cluster!;
    const snap = this.storage.snapshot();
    if (snap.meta.index > 0) this.restoreSnapshot(snap.data);
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
    this.log.info({ id: c.id, addresses: c.addresses, voters: peers, recovering }, 'raft started');
    this.binding.sendHelloToAll();
    this.schedule();
  }

  // ---- routes ----------------------------------------------------------------------------------

  private onPeerUp(p: PeerInfo): void {
    this.binding.peerUp(p);
    for (const l of this.listeners) l.up?.(p);
  }

  private onPeerDown(p: PeerInfo, c: LinkClose): void {
    this.binding.peerDown(p);
    for (const l of this.listeners) l.down?.(p, c);
  }

  private onFrame(peer: string, frame: RouteFrame): void {
    if (frame.kind !== 'raft') {
      for (const l of this.listeners) l.frame?.(peer, frame);
      return;
    }
    // Node-to-node traffic of in-process services (service presence, src/services) rides raft frames tagged
    // with a string: a node without the handler drops it in decodeNodeFrame with a warning, as any unknown tag.
    const ext = Array.isArray(frame.data) && typeof frame.data[0] === 'string' ? this.extensionHandlers.get(frame.data[0]) : undefined;
    if (ext !== undefined) {
      ext(peer, frame.data as unknown[]);
      return;
    }
    const d = decodeNodeFrame(frame.data);
    if (typeof d === 'string') {
      this.log.warn({ peer, reason: d }, 'dropped a malformed raft frame');
      return;
    }
    if (d.kind === 'hello') return this.binding.onHello(peer, d.hello);
    if (d.kind === 'statusRequest') {
      this.transport.send(peer, { kind: 'raft', data: encodeStatusReply(d.reqId, this.selfReport()) });
      return;
    }
    if (d.kind === 'statusReply') {
      this.statusQueries.answered(d.reqId, d.report);
      return;
    }
    const m = d.message;
    if (this.peerToId.get(peer) !== m.from || this.raw === undefined) {
      this.metrics.raftMessagesDropped++;
      return;
    }
    this.metrics.raftMessagesIn++;
    this.peerContact.set(m.from, Date.now());
    if (m.from === this.raw.basicStatus().lead || m.type === 'app' || m.type === 'heartbeat' || m.type === 'snap') this.lastLeaderContact = Date.now();
    try {
      this.raw.step(m);
    } catch (e) {
      // A forwarded proposal this node cannot take (no leader, transfer running): the proposer times
      // out and reports a retryable error; nothing else is lost.
      if (!(e instanceof RaftError)) throw e;
      this.log.debug({ peer, type: m.type, err: e.message }, 'raft refused a message');
    }
    this.schedule();
  }

  /**
   * The slots `cluster add` appended, in order (replicated by the control plane's `config` bucket): see
   * SlotBindings.setAddedSlots.
   */
  setAddedSlots(added: readonly AddedSlot[]): void {
    this.binding.setAddedSlots(added);
  }

  /** The `cluster recover --force-new-cluster` this data directory went through, until its audit record is written. */
  pendingRecoveryAudit(): RecoveryRecord | undefined {
    return this.binding.pendingRecoveryAudit();
  }

  /** The audit record of the recovery is committed: persist that, so no later leader writes it again. */
  markRecoveryAudited(): void {
    this.binding.markRecoveryAudited();
  }

  /** Registers a listener for non-Raft route frames and peer events; returns its removal. */
  addRouteListener(l: RouteListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /**
   * Called on every leader change with whether this node leads now (e.g. the first leader creates the
   * control buckets and records the slots in `nodes`). Returns the removal.
   */
  onLeaderChange(l: (isLeader: boolean, leaderName: string | undefined) => void): () => void {
    this.leaderListeners.add(l);
    return () => this.leaderListeners.delete(l);
  }

  /** The slots of the cluster: Raft id, address, and the server name + identity key bound to it (if met). */
  slots(): { id: number; address: string; name: string | undefined; identity: string | undefined }[] {
    return this.binding.slots(Buffer.from(this.identity.publicKeyBytes).toString('hex'));
  }

  /**
   * Handles raft frames whose data is `[tag, ...]` with a string `tag` (node-to-node messages of an in-process
   * service; send them with sendRouteFrame(peer, { kind: 'raft', data: [tag, ...] })). Returns the removal.
   */
  onExtensionFrame(tag: string, handler: (peerName: string, data: unknown[]) => void): () => void {
    if (this.extensionHandlers.has(tag)) throw new RangeError(`extension frame tag ${tag} already has a handler`);
    this.extensionHandlers.set(tag, handler);
    return () => void this.extensionHandlers.delete(tag);
  }

  /** The server name of the leader this node follows (itself when it leads); undefined while there is none. */
  leaderName(): string | undefined {
    const lead = this.raw?.basicStatus().lead ?? 0;
    if (lead === 0) return undefined;
    return lead === this.cluster?.id ? this.serverName : this.idToPeer.get(lead);
  }

  /** Sends a non-Raft frame to a peer (bus glue); false when the peer is not up. */
  sendRouteFrame(peerName: string, frame: RouteFrame): boolean {
    return this.transport.send(peerName, frame);
  }

  // ---- the Ready loop --------------------------------------------------------------------------

  private onTick(): void {
    if (this.stopping || this.fatal) return;
    this.ticks++;
    if (this.raw) {
      this.raw.tick();
      this.retryWaiting();
      if (this.ticks % 10 === 0) this.manageMembership();
      this.schedule();
    }
    this.expire();
  }

  private schedule(): void {
    if (this.loop || this.stopping || !this.raw || this.fatal) return;
    // A microtask, not setImmediate: the loop starts as soon as the current callback (a socket read holding
    // any number of frames, a parsed batch of client requests, a tick) has stepped everything it carries, so
    // batching is kept, without waiting for the event loop's check phase on every hop of a write.
    this.loop = Promise.resolve().then(() => this.runLoop()).finally(() => {
      this.loop = undefined;
      if (this.raw?.hasReady()) this.schedule();
    });
  }

  private async runLoop(): Promise<void> {
    const raw = this.raw!;
    try {
      while (!this.stopping && raw.hasReady()) {
        const rd = raw.ready();
        // Read with the Ready: if recovery ended, the vote it pinned is in rd.hardState, durable once handled.
        const recovered = this.cluster?.recovering === true && !raw.basicStatus().recovering;
        await this.handleReady(rd);
        if (recovered) this.markRecovered();
        raw.advance();
        this.serveReads();
        await this.maybeSnapshot();
      }
    } catch (e) {
      // A disk error or a broken invariant: stop driving Raft (never send what is not durable) and
      // say so in health; the operator restarts after fixing the cause.
      this.fatal = e as Error;
      this.log.fatal({ err: e }, 'raft loop stopped');
      this.failAll(new NodeError(NodeErrorCode.stopped, `node ${this.serverName} stopped replicating: ${(e as Error).message}`, false));
    }
  }

  private async handleReady(rd: Ready): Promise<void> {
    if (rd.softState) {
      const lead = rd.softState.lead;
      if (lead !== this.lastLead) {
        if (lead !== 0) this.metrics.leaderChanges++;
        this.log.info({ lead, state: rd.softState.state, term: this.raw!.basicStatus().term }, lead === 0 ? 'leader lost' : 'leader elected');
        this.lastLead = lead;
        this.lastLeaderContact = Date.now();
        if (lead !== 0) this.requests.leaderChanged();
        const isLeader = rd.softState.state === StateType.leader;
        const name = lead === 0 ? undefined : this.peerName(lead);
        for (const l of this.leaderListeners) {
          try {
            l(isLeader, name);
          } catch (e) {
            this.log.error({ err: e }, 'leader listener threw');
          }
        }
      }
    }
    if (rd.snapshot) {
      await this.storage.applySnapshot(rd.snapshot);
      // Yielding: a large image takes seconds to read, and the process keeps answering its routes and health.
      const { kvImage, sessions } = decodeNodeSnapshot(rd.snapshot.data);
      await this.stateMachine.restoreYielding(kvImage);
      this.sessions.restore(sessions);
      this.logBytesSinceSnapshot = 0;
      this.metrics.snapshotsInstalled++;
      this.log.info({ index: rd.snapshot.meta.index }, 'installed a snapshot from the leader');
      // A copy: a listener may re-subscribe itself (KvPrincipalSource re-attaches).
      for (const l of [...this.resetListeners]) {
        try {
          l();
        } catch (err) {
          this.log.error({ err }, 'snapshot-install listener threw');
        }
      }
    }
    // Raft thesis §10.2.1: a leader may send AppendEntries while its own write is in flight, so its
    // fsync and the followers' overlap instead of adding up. Safe because (1) the leader counts itself
    // towards a commit only through this loop, which applies nothing before the save below resolves,
    // and (2) a message leaves early only if the commit index it reveals is already durable here, so no
    // follower or learner can apply an entry this leader could still lose in a crash. Votes, responses
    // and everything a follower sends wait for the save, as the Ready contract requires.
    let late: readonly Message[] = rd.messages;
    if (rd.messages.length > 0 && this.raw!.basicStatus().state === StateType.leader) {
      const durable = this.storage.lastIndex();
      const held: Message[] = [];
      for (const m of rd.messages) {
        if ((m.type === MessageType.app || m.type === MessageType.heartbeat) && m.commit <= durable) this.sendMessage(m);
        else held.push(m);
      }
      late = held;
    }
    if (rd.mustSync || rd.entries.length > 0) {
      const t0 = performance.now();
      await this.storage.save({ hardState: rd.hardState ?? this.deferredHardState, entries: rd.entries });
      this.deferredHardState = undefined;
      this.metrics.persistSeconds.observe((performance.now() - t0) / 1000);
    } else if (rd.hardState) {
      // Only the commit index moved: it need not be durable (a restarted node relearns it from the
      // leader, as etcd's MustSync rule has it), so it rides along with the next synced write
      // instead of costing an fdatasync of its own on every node for every commit.
      this.deferredHardState = rd.hardState;
    }
    for (const m of late) this.sendMessage(m);
    for (const e of rd.committedEntries) {
      if (e.index <= this.stateMachine.appliedIndex) continue;
      if (e.type === EntryType.confChange) {
        this.stateMachine.apply(e.index, new Uint8Array(0));
        try {
          const cc = decodeConfChange(e.data);
          this.log.info({ index: e.index, type: cc.type, nodeId: cc.nodeId, voters: cc.voters }, 'configuration change applied');
        } catch {
          /* raft/ treats an undecodable change as a no-op on every node */
        }
        continue;
      }
      const env = decodeEnvelope(e.data);
      if (!this.sessions.admit(env.origin, env.boot, env.seq, e.index)) {
        this.stateMachine.apply(e.index, new Uint8Array(0)); // a re-submitted copy: applied once already
        continue;
      }
      this.logBytesSinceSnapshot += e.data.length;
      const result = this.stateMachine.apply(e.index, env.command);
      if (env.origin === this.cluster!.id && env.boot === this.boot) this.requests.writeApplied(env.seq, result);
    }
    this.requests.readIndexesArrived(rd.readStates);
  }

  private restoreSnapshot(data: Uint8Array): void {
    const { kvImage, sessions } = decodeNodeSnapshot(data);
    this.stateMachine.restore(kvImage);
    this.sessions.restore(sessions);
  }

  private sendMessage(m: Message): void {
    const peer = this.idToPeer.get(m.to);
    if (peer === undefined || !this.transport.send(peer, { kind: 'raft', data: encodeMessage(m) })) {
      this.metrics.raftMessagesDropped++;
      return;
    }
    this.metrics.raftMessagesOut++;
  }

  private async maybeSnapshot(): Promise<void> {
    if (this.snapshotting !== undefined) return;
    const applied = this.stateMachine.appliedIndex;
    if (applied - this.storage.snapshot().meta.index < this.snapshotEntries) return;
    // A snapshot rewrites the whole state: with 1M keys, one every 10,000 writes rewrote 300 MB per 3 MB written
    // (and stalled the process each time). Waiting until the log since the last one holds a fraction of its size
    // bounds that to snapshotLogFraction bytes of snapshot per byte of log, whatever the size of the state.
    if (this.logBytesSinceSnapshot * snapshotLogFraction < this.storage.snapshotBytes()) return;
    // The store refuses a snapshot beyond the commit index it holds; a deferred commit-only hard state
    // (handleReady) may be what covers `applied`, so it is written first.
    if (this.deferredHardState) {
      await this.storage.save({ hardState: this.deferredHardState });
      this.deferredHardState = undefined;
    }
    // Frozen now (a sort of the keys and a copy of the row columns), written over the next turns of the event loop
    // while the Ready loop goes on: a large image takes seconds, longer than an election timeout.
    const image = beginNodeSnapshot(this.stateMachine, this.sessions);
    const conf = this.raw!.confState();
    this.logBytesSinceSnapshot = 0;
    this.snapshotting = this.writeSnapshot(applied, conf, image).finally(() => {
      this.snapshotting = undefined;
    });
  }

  /** Writes a begun snapshot in slices of snapshotSliceMs, then hands it to the store (file written outside the WAL's turn). */
  private async writeSnapshot(index: number, conf: ConfState, image: NodeImageBuild): Promise<void> {
    const t0 = performance.now();
    try {
      const w = new MsgpackWriter(image.bytesEstimate);
      const steps = image.write(w);
      let sliceEnd = performance.now() + snapshotSliceMs;
      while (!steps.next().done) {
        if (performance.now() < sliceEnd) continue;
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (this.stopping) return;
        sliceEnd = performance.now() + snapshotSliceMs;
      }
      await this.storage.createSnapshot(index, conf, w.finish());
    } catch (err) {
      // A snapshot from the leader installed meanwhile makes this one pointless, not wrong.
      if (this.storage.snapshot().meta.index >= index) return;
      this.fatal = err as Error;
      this.log.fatal({ err }, 'snapshot failed; raft loop stopped');
      this.failAll(new NodeError(NodeErrorCode.stopped, `node ${this.serverName} stopped replicating: ${(err as Error).message}`, false));
      return;
    }
    this.metrics.snapshotsTaken++;
    this.log.info({ index, ms: Math.round(performance.now() - t0) }, 'snapshot taken; log compacted');
  }

  /**
   * The leader keeps the voter count at R (--kv-replicas), one conf change at a time:
   * - every slot that is not a member is added as a learner (slots beyond R at bootstrap; a replaced
   *   voter when it comes back);
   * - a voter whose route has been down longer than voterGraceMs is replaced by a caught-up, connected
   *   learner: promote first (R+1 voters), then remove the dead one, so the count never drops below R.
   */
  private manageMembership(): void {
    const raw = this.raw!;
    const st = raw.basicStatus();
    const c = this.cluster;
    // Not while far behind its own commit index (the configuration read below would be stale); a small gap is
    // normal under a steady write load and must not starve membership changes (raft refuses a second pending one).
    if (st.state !== StateType.leader || !c || st.applied + promoteWindow < st.commit) return;
    const conf = raw.confState();
    const up = new Set(this.transport.upPeers());
    const isUp = (id: number): boolean => id === c.id || up.has(this.idToPeer.get(id) ?? '\0');
    const dead = this.voterDown.dead(conf.voters, isUp, Date.now());
    const decision = nextMembershipChange({
      self: c.id, voters: conf.voters, learners: conf.learners, slots: c.addresses.length, replicas: this.voters,
      removed: this.removedSlots, isUp, deadVoters: dead, progress: raw.status().progress, commit: st.commit,
    });
    if (decision === undefined) return;
    if (decision.kind === 'handOff') {
      try {
        this.transferLeadership();
        this.log.warn({ id: c.id }, decision.why);
      } catch (e) {
        if (!(e instanceof NodeError)) throw e;
        this.log.error({ id: c.id }, `cannot remove this node: ${e.message}`);
      }
      return;
    }
    try {
      raw.proposeConfChange({ type: decision.type, nodeId: decision.nodeId });
      this.log.warn({ id: decision.nodeId, name: this.peerName(decision.nodeId), voters: conf.voters, learners: conf.learners, graceMs: this.voterGraceMs }, decision.why);
      this.schedule();
    } catch (e) {
      if (!(e instanceof RaftError)) throw e; // another change is pending: try again next round
    }
  }

  // ---- writes and reads ------------------------------------------------------------------------

  /** Replicates a KV command; resolves with its result once applied on this node. */
  propose(cmd: KvCommand): Promise<KvResult> {
    if (this.opts.maxKvBytes !== undefined) {
      const refused = quotaRefusal(cmd, this.stateMachine.totalBytes(), this.opts.maxKvBytes);
      if (refused !== undefined) {
        this.metrics.quotaRefusals++;
        return Promise.resolve(refused);
      }
    }
    return this.proposeBytes(encodeKvCommand(cmd));
  }

  proposeBytes(command: Uint8Array): Promise<KvResult> {
    return this.requests.submitWrite(command);
  }

  /** Hands a waiting write to Raft in this node's session envelope; false without a leader or when Raft refuses. */
  private proposeToRaft(seq: number, command: Uint8Array): boolean {
    if (!this.raw || !this.cluster || this.raw.basicStatus().lead === 0) return false;
    try {
      this.raw.propose(encodeEnvelope(this.cluster.id, this.boot, seq, command));
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return false;
    }
    this.schedule();
    return true;
  }

  /** Asks Raft for a read index (a waiting read batch's context); false without a leader or when Raft refuses. */
  private askReadIndex(context: Uint8Array): boolean {
    if (!this.raw || this.raw.basicStatus().lead === 0) return false;
    try {
      this.raw.readIndex(context);
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return false;
    }
    this.schedule();
    return true;
  }

  /**
   * Waits until this node's state machine reflects every write committed before the call
   * (ReadIndex, Raft thesis §6.4), then returns it. With `stale`, returns at once.
   */
  async read(opts: ReadOptions = {}): Promise<KvStateMachine> {
    if (this.stopping || this.fatal) throw stoppedError(this.serverName, this.fatal);
    if (opts.stale) return this.stateMachine;
    await this.requests.submitRead();
    return this.stateMachine;
  }

  /** Resolves once the state machine reflects every write committed before the call (ReadIndex). */
  async readBarrier(): Promise<void> {
    await this.read();
  }

  /**
   * The bucket's retained entries after `afterRevision`, then every entry applied later, until the
   * returned function is called. Entries absorbed by installing a snapshot are not replayed.
   */
  watch(bucket: string, afterRevision: number, listener: KvListener): () => void {
    for (const e of this.stateMachine.changesSince(afterRevision, bucket)) listener(e);
    return this.stateMachine.subscribe((e: KvEntry) => {
      if (e.bucket === bucket) listener(e);
    });
  }

  /** The Raft-backed KvBackend of src/kv (propose / readBarrier / reader / watch). */
  kvBackend(): RaftKvBackend {
    return {
      propose: (c) => this.propose(c),
      readBarrier: () => this.readBarrier(),
      reader: this.stateMachine,
      watch: (b, r, l) => this.watch(b, r, l),
      onReset: (l) => {
        this.resetListeners.add(l);
        return () => this.resetListeners.delete(l);
      },
    };
  }

  // The Ready driver's and the tick's hooks into the pending requests (requests.ts).
  private serveReads(): void {
    this.requests.serveReads(this.stateMachine.appliedIndex);
  }

  private retryWaiting(): void {
    this.requests.retryWaiting();
  }

  private expire(): void {
    this.requests.expire();
  }

  private failAll(e: Error): void {
    this.requests.failAll(e);
  }

  /** Asks the leader to hand leadership to `id` (default: the most caught-up other voter). */
  transferLeadership(id?: number): void {
    const raw = this.raw;
    if (!raw) throw new NodeError(NodeErrorCode.noLeader, 'raft has not started on this node yet', true);
    let target = id;
    if (target === undefined) {
      const st = raw.status();
      let best = -1;
      for (const [pid, p] of st.progress) if (pid !== st.id && !p.isLearner && p.match > best) { best = p.match; target = pid; }
      if (target === undefined) throw new NodeError(NodeErrorCode.noLeader, 'this node is not the leader, or has no other voter to transfer to', false);
    }
    raw.transferLeadership(target);
    this.schedule();
  }

  // ---- membership (cluster add/remove/status) -------------------------------------------------------

  /** The current Raft configuration (voters and learners by slot), undefined before Raft starts. */
  membership(): { voters: readonly number[]; learners: readonly number[] } | undefined {
    if (!this.raw) return undefined;
    const conf = this.raw.confState();
    return { voters: [...conf.voters], learners: [...conf.learners] };
  }

  /** Whether this node leads the meta-group now (leader-only duties such as KV expiry proposals). */
  get isLeader(): boolean {
    return this.raw !== undefined && this.raw.basicStatus().state === StateType.leader;
  }

  /** The number of voters the leader keeps (--kv-replicas as persisted). */
  get kvReplicas(): number {
    return this.voters;
  }

  /**
   * Changes R on a running cluster (every node gets the same value from the control plane's `config` bucket):
   * persisted in cluster.json (a restart keeps it, whatever its --kv-replicas flag says), announced in the hello,
   * and the leader converges one configuration change at a time: caught-up learners are promoted while there
   * are fewer voters than R; above R, the least caught-up voter that does not lead is removed and comes back
   * as a learner. Throws a config error for R outside 1..N.
   */
  setKvReplicas(r: number): void {
    this.binding.setKvReplicas(r);
  }

  /**
   * The slots an operator removed (replicated through the control plane's `config` bucket, so whichever node
   * leads sees the same set): the leader removes them from the configuration and never re-adds them.
   */
  setRemovedSlots(ids: Iterable<number>): void {
    this.removedSlots = new Set(ids);
  }

  /** Refuses service with a reason (`/healthz` says it) until called with undefined. */
  setRefusal(reason: string | undefined): void {
    if (reason !== this.refusal) {
      if (reason !== undefined) this.log.error({ reason }, 'node refused');
      else if (this.refusal !== undefined) this.log.info('node refusal lifted');
    }
    this.refusal = reason;
  }

  /** This node's own view (indexes, state, health) as `cluster status` shows it. */
  selfReport(): MemberReport {
    return selfReport(this.statusView());
  }

  /**
   * Every slot with its role and indexes: this node's view plus each connected peer's own report (asked over
   * the route; a peer that does not answer within `timeoutMs` is unreachable). Lag is against the leader's
   * commit index as the leader reports it (or the highest commit seen when no leader answered).
   */
  async clusterStatus(timeoutMs = 1500): Promise<ClusterStatus> {
    const self = this.selfReport();
    const reports = new Map<number, MemberReport>(self.id !== 0 ? [[self.id, self]] : []);
    await this.statusQueries.ask(this.transport.upPeers(), this.peerToId, timeoutMs, reports);
    return clusterStatusFrom(this.statusView(), reports);
  }

  // ---- observability ---------------------------------------------------------------------------

  /** The Raft id (slot) of this node, undefined while it is still learning it. */
  get id(): number | undefined {
    return this.cluster?.id;
  }

  /** Bound address of the cluster port. */
  routeAddress(): { host: string; port: number } {
    return this.transport.address();
  }

  /**
   * Whether this node's state machine is current: it applied the leader's own commit index since it started and
   * is not recovering lost data. Until then, what it reads locally (stale) is no basis for a write.
   */
  isCurrent(): boolean {
    const st = this.raw?.basicStatus();
    return st !== undefined && this.catchUp.check(st, this.stateMachine.appliedIndex, Date.now(), this.electionTicks * this.tickMs) === undefined;
  }

  health(): Health {
    return nodeHealth(this.statusView(), this.catchUp);
  }

  /** STREAM.INFO `cluster` (status.ts jsClusterInfo); undefined with a single voter. */
  jsClusterInfo(): JsClusterInfo | undefined {
    return jsClusterInfo(this.statusView());
  }

  private peerName(id: number): string {
    return peerName({ cluster: this.cluster, serverName: this.serverName, idToPeer: this.idToPeer }, id);
  }

  raftz(): Record<string, unknown> {
    return raftz(this.statusView());
  }

  routez(): Record<string, unknown> {
    return routez(this.statusView());
  }

  varz(): Record<string, unknown> {
    return varz(this.statusView());
  }

  metricsText(): string {
    return metricsText(this.statusView());
  }

  /** What status.ts reads of this node, now (Raft, transport and maps by reference). */
  private statusView(): NodeStatusView {
    return {
      serverName: this.serverName, clusterName: this.clusterName, identityKey: this.identity.publicKey, cluster: this.cluster,
      clusterSize: this.n, kvReplicas: this.voters, raft: this.raw, applied: this.stateMachine.appliedIndex,
      kvBytes: this.stateMachine.totalBytes(), maxKvBytes: this.opts.maxKvBytes, transport: this.transport,
      idToPeer: this.idToPeer, peerToId: this.peerToId, peerContact: this.peerContact, lastLeaderContact: this.lastLeaderContact,
      electionWindowMs: this.electionTicks * this.tickMs, now: Date.now(), startedAt: this.startedAt,
      storage: {
        firstIndex: () => this.storage.firstIndex(),
        snapshotIndex: () => this.storage.snapshot().meta.index,
        walSegments: () => this.storage.walSegments().length,
      },
      metrics: this.metrics, pendingWrites: this.requests.writesWaiting, pendingReads: this.requests.readersWaiting,
      fatal: this.fatal, refusal: this.refusal, stopping: this.stopping, bootstrapProblem: this.binding.problem,
      verdictPending: this.binding.awaitingVerdict, joining: this.opts.join === true, removedSlots: this.removedSlots,
      rss: () => process.memoryUsage().rss,
      health: () => this.health(),
    };
  }

  /** Stops timers, fails waiting requests, closes routes and the store. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.tickTimer);
    this.failAll(stoppedError(this.serverName, this.fatal));
    await this.loop;
    await this.snapshotting;
    if (this.deferredHardState && !this.fatal) {
      // A clean stop leaves the latest commit index on disk, so a restart re-applies up to it at once.
      await this.storage.save({ hardState: this.deferredHardState }).catch((err: unknown) => this.log.warn({ err }, 'could not save the commit index at stop'));
    }
    this.bus?.close();
    await this.transport.close();
    await this.storage.close();
    this.log.info('node stopped');
  }
}

/** Starts a cluster node (see NodeOptions). */
export function startNode(options: NodeOptions): Promise<ClusterNode> {
  return ClusterNode.start(options);
}
