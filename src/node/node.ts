// A cluster node: the Raft core driven by a real tick timer, its Ready batches persisted through
// store/ (hard state and entries durable before that batch's messages leave), committed entries
// applied to the KV state machine, messages carried over the mutual-TLS routes. No module state: any
// number of nodes run in one process (tests), or one per process (production).
import { randomInt } from 'node:crypto';
import type { Server as NetServer } from 'node:net';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { RaftError, RawNode, StateType, MessageType, decodeConfChange, seededRng, EntryType, ConfChangeType, type BasicStatus, type ConfState, type HardState, type Message, type Ready } from '../../raft/index.js';
import { KvStateMachine, RaftStorage, type KvCommand, type KvEntry, type KvListener, type KvResult } from '../../store/index.js';
import { encodeKvCommand, MsgpackWriter, quotaRefusal } from '../../store/index.js';
import {
  createRouteTransport, parseRoutes, type LinkClose, type PeerInfo, type RouteFrame, type RouteLimits, type RouteTlsOptions, type RouteTransport,
} from '../../transport/index.js';
import { loadOrCreateIdentity, type InternalIdentity } from '../auth/index.js';
import { createClusterBus, type ClusterBus } from '../bus/index.js';
import type { NatsServerWithCluster } from '../nats/index.js';
import { silentLogger, type Logger } from '../log.js';
import {
  type RecoveryRecord,
  addressKey, appendSlots, checkKvFormat, findSelfRoutes, initialSize, learnAddresses, normalizeRoutes, readClusterFile, tablesAgree, writeClusterFile,
  type AddedSlot, type ClusterFile, type SlotBinding,
} from './bootstrap.js';
import { NodeError, NodeErrorCode } from './errors.js';
import { assessHealth, type SilentVoter } from './health.js';
import { nextMembershipChange, promoteWindow } from './membership_policy.js';
import { finishInterruptedRecovery } from './recover.js';
import { Histogram, renderMetrics, type Sample } from './metrics.js';
import { AppliedSessions, beginNodeSnapshot, decodeNodeSnapshot, SnapshotTurns, type NodeImageBuild } from './sessions.js';
import { raftStorageView } from './storage_adapter.js';
import {
  decodeEnvelope, decodeNodeFrame, encodeEnvelope, encodeHello, encodeMessage, encodeStatusReply, encodeStatusRequest, type MemberReport, type SlotHello,
} from './wire.js';

/**
 * A local snapshot waits until the log since the last one holds at least 1/snapshotLogFraction of its size in bytes
 * (as well as NodeOptions.snapshotEntries entries). The log kept in memory and replayed at restart is then at most
 * about a quarter of the state.
 */
export const snapshotLogFraction = 4;
/** A local snapshot is written in slices of this many ms of work, with a turn of the event loop between them. */
const snapshotSliceMs = 10;

export interface NodeOptions {
  /** Server name (unique in the cluster; routes and the `nodes` bucket know a node by it). */
  readonly serverName: string;
  readonly clusterName: string;
  /** Raft log, snapshots and cluster.json live here (created when absent). */
  readonly dataDir: string;
  /** The node's NKey seed file (--internal-id-file); default <dataDir>/identity.nk. Created on first start. */
  readonly identityFile?: string;
  /** Listen address of the cluster port (--bind); default 0.0.0.0. */
  readonly bind?: string;
  readonly clusterPort: number;
  /** A TCP server already listening on `clusterPort` that the route listener takes over (bind, don't probe; see transport/). */
  readonly clusterListener?: NetServer;
  /** --routes: all nodes (self included) or only the others; empty: a cluster of one. */
  readonly routes?: string | readonly string[];
  readonly tls: RouteTlsOptions;
  readonly clusterUser: string;
  readonly clusterPassword: string;
  /** Every node must present the same digest (bus-auth mode, store kind, …). */
  readonly postureDigest?: string;
  /** --kv-replicas: number of voters (default: every node). */
  readonly kvReplicas?: number;
  readonly tickMs?: number;
  readonly electionTicks?: number;
  readonly heartbeatTicks?: number;
  /** How long a write or linearizable read may wait for a leader and its apply (default 5000). */
  readonly requestTimeoutMs?: number;
  /** A voter unreachable this long is replaced by a caught-up learner (default 30000). */
  readonly voterGraceMs?: number;
  /** Applied entries between local snapshots (log compaction); default 10000. */
  readonly snapshotEntries?: number;
  /** --max-kv-bytes: a write that would take the KV data past it is refused (store/kv/quota.ts); default unlimited. */
  readonly maxKvBytes?: number;
  readonly logger?: Logger;
  readonly routeLimits?: Partial<RouteLimits>;
  /** A NATS server to join to the cluster-wide bus over this node's routes (attached before routes start). */
  readonly nats?: NatsServerWithCluster;
  /**
   * Join a running cluster (--initial-cluster-state existing, as etcd's): derive nothing from --routes (they only
   * say whom to dial); learn this node's slot from the slot table its peers replicate, where `cluster add NAME URL`
   * put it under this node's server name; no bootstrap entry. Ignored once <dataDir>/cluster.json exists.
   */
  readonly join?: boolean;
}

export type Health = { readonly status: 'ok' } | { readonly status: 'unavailable'; readonly reason: string };

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

/** Listeners for route traffic that is not Raft (the bus glue registers here). */
export interface RouteListener {
  readonly frame?: (peerName: string, frame: RouteFrame) => void;
  readonly up?: (peer: PeerInfo) => void;
  readonly down?: (peer: PeerInfo, close: LinkClose) => void;
}

export interface ReadOptions {
  /** Serve from local state without a ReadIndex round (may lag the leader). */
  readonly stale?: boolean;
}

interface PendingWrite {
  readonly seq: number;
  readonly command: Uint8Array;
  readonly started: number;
  readonly deadline: number;
  submitted: boolean;
  submittedAt: number;
  resolve(r: KvResult): void;
  reject(e: Error): void;
}

/**
 * One ReadIndex request and every read that waits on it (etcd's linearizable read loop): reads that arrive while
 * another request is in flight gather in the next one, sent when the in-flight one learns its index. So a node
 * serving thousands of linearizable reads sends one ReadIndex per round trip to the leader, not one per read,
 * and a read never joins a request sent before it arrived (that index could predate a write it must see).
 */
interface PendingRead {
  readonly key: number;
  readonly deadline: number;
  submittedAt: number;
  index: number;
  readonly waiters: { resolve(): void; reject(e: Error): void }[];
}

const waitingMax = 10_000;

/** Structurally src/kv's KvBackend (kept here so src/node does not depend on the KV API module). */
export interface RaftKvBackend {
  propose(command: KvCommand): Promise<KvResult>;
  readBarrier(): Promise<void>;
  readonly reader: KvStateMachine;
  watch(bucket: string, afterRevision: number, listener: KvListener): () => void;
  onReset(listener: () => void): () => void;
}

export class ClusterNode {
  readonly serverName: string;
  readonly clusterName: string;
  readonly identity: InternalIdentity;
  readonly stateMachine = new KvStateMachine();
  private readonly sessions = new AppliedSessions();
  readonly metrics = {
    proposalSeconds: new Histogram(),
    persistSeconds: new Histogram(),
    leaderChanges: 0,
    raftMessagesIn: 0,
    raftMessagesOut: 0,
    raftMessagesDropped: 0,
    proposalsFailed: 0,
    snapshotsTaken: 0,
    snapshotsInstalled: 0,
    /** Times this node caught up after losing its data. */
    recoveries: 0,
    /** KV writes refused by --max-kv-bytes. */
    quotaRefusals: 0,
  };

  private readonly opts: NodeOptions;
  private readonly log: Logger;
  private readonly tickMs: number;
  private readonly electionTicks: number;
  private readonly heartbeatTicks: number;
  private readonly timeoutMs: number;
  private readonly snapshotEntries: number;
  /** A local snapshot being written (writeSnapshot); stop() waits for it. */
  private snapshotting: Promise<void> | undefined;
  private readonly snapshotTurns = new SnapshotTurns();
  /** Bytes of the entries applied since the last snapshot (taken or installed): see maybeSnapshot. */
  private logBytesSinceSnapshot = 0;
  private readonly boot = randomInt(1, 0xffffffff);
  private storage!: RaftStorage;
  private transport!: RouteTransport;
  private raw: RawNode | undefined;
  private cluster: ClusterFile | undefined;
  /** Own route keys (normalized), self-route excluded. */
  private ownRoutes: string[] = [];
  private n = 1;
  private voters = 1;
  private readonly idToPeer = new Map<number, string>();
  private readonly peerToId = new Map<string, number>();
  private readonly listeners = new Set<RouteListener>();
  private readonly extensionHandlers = new Map<string, (peerName: string, data: unknown[]) => void>();
  private readonly leaderListeners = new Set<(isLeader: boolean, leaderName: string | undefined) => void>();
  private tickTimer: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private fatal: Error | undefined;
  private seq = 0;
  private readonly writes = new Map<number, PendingWrite>();
  private readonly reads = new Map<number, PendingRead>();
  /** The batch new reads join: not sent yet (a request is in flight, or no leader to send it to). */
  private openRead: PendingRead | undefined;
  private readersWaiting = 0;
  private lastLead = 0;
  private lastLeaderContact = 0;
  /** Raft id → Date.now() of the last Raft message from that peer (JetStream's replica `active`). */
  private readonly peerContact = new Map<number, number>();
  /** The leader health last saw, and since when (how long its heartbeats have said nothing of its commit). */
  private leaderSeen = { lead: 0, since: 0 };
  private ticks = 0;
  /** A commit-only hard state not yet written (see handleReady); saved with the next synced batch or at stop. */
  private deferredHardState: HardState | undefined;
  /** Called after a snapshot from the leader replaced the state machine (KvBackend.onReset). */
  private readonly resetListeners = new Set<() => void>();
  private bootstrapProblem: string | undefined;
  /** The slot is known but the store is empty: a peer's hello tells a new node from one that lost its data. */
  private verdictPending = false;
  /** Applied the leader's own commit index once since start: until then health says "catching up". */
  private caughtUp = false;
  private readonly startedAt = Date.now();
  private readonly voterGraceMs: number;
  private readonly voterDownSince = new Map<number, number>();
  /** Slots an operator removed (`cluster remove`, replicated by the control plane): never re-added as learners. */
  private removedSlots: ReadonlySet<number> = new Set();
  /** Set by the control plane when this node's posture differs from the cluster's (`config` bucket). */
  private refusal: string | undefined;
  private readonly statusWaiters = new Map<number, (r: MemberReport) => void>();
  /** Each up peer's last hello: re-read when the slot table grows (a peer may claim a slot this node had not applied yet). */
  private readonly hellos = new Map<string, SlotHello>();
  /** Why the replicated list of added slots could not be applied (logged once). */
  private tableProblem: string | undefined;
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
    const { list, keys } = normalizeRoutes(opts.routes ?? []);
    const self = await findSelfRoutes(list, bind, opts.clusterPort);
    if (self.length > 1) {
      throw new NodeError(NodeErrorCode.config, `--routes lists this node under ${self.length} addresses (${self.join(', ')}); list each node once`, false);
    }
    this.ownRoutes = keys.filter((k) => !self.includes(k));
    // A `cluster recover --force-new-cluster` that was committed but interrupted before its renames is finished first.
    const rolledForward = await finishInterruptedRecovery(opts.dataDir);
    if (rolledForward !== undefined) this.log.warn({ incarnation: rolledForward }, 'finished an interrupted "cluster recover --force-new-cluster"');
    const persisted = readClusterFile(opts.dataDir);
    if (persisted) {
      if (persisted.cluster !== opts.clusterName) {
        throw new NodeError(NodeErrorCode.config, `data dir ${opts.dataDir} belongs to cluster "${persisted.cluster}", not "${opts.clusterName}"; use another --data-dir or wipe it to join this cluster`, false);
      }
      this.cluster = persisted;
      this.n = persisted.addresses.length;
      this.voters = persisted.voters;
      const derivedN = this.ownRoutes.length + 1;
      if (opts.join) this.log.info({ id: persisted.id }, '--initial-cluster-state existing ignored: this node already has its slot (cluster.json)');
      if (derivedN !== this.n && derivedN !== initialSize(persisted)) this.log.warn({ persisted: this.n, fromRoutes: derivedN }, 'cluster size from --routes differs from the persisted configuration; the persisted one is used (membership changes go through `cluster add/remove`)');
      for (const [id, b] of Object.entries(persisted.bindings)) this.bindPeer(Number(id), b.name);
      if (persisted.recovered !== undefined && persisted.recovered.audited !== true) {
        this.log.warn({ recovered: persisted.recovered }, 'starting as a cluster of one after "cluster recover --force-new-cluster"; add the other nodes back with "membershipd cluster add"');
      }
    } else if (opts.join) {
      // Joining a running cluster: N, R and the slot come from the peers' replicated table (onHello → joinFrom).
      this.n = 0;
      this.voters = opts.kvReplicas ?? 0;
    } else {
      this.n = this.ownRoutes.length + 1;
      this.voters = opts.kvReplicas ?? this.n;
      if (this.voters > this.n) {
        throw new NodeError(NodeErrorCode.config, `--kv-replicas ${this.voters} is greater than the cluster size ${this.n} (${this.ownRoutes.length} other node(s) in --routes plus this one); use --kv-replicas ${this.n} or add routes`, false);
      }
      if (self.length === 1 || this.n === 1) {
        const addresses = this.n === 1 ? ['self'] : [...keys].sort();
        this.cluster = { version: 1, cluster: opts.clusterName, server: opts.serverName, id: this.n === 1 ? 1 : addresses.indexOf(self[0]!) + 1, addresses, voters: this.voters, bindings: {}, initial: addresses.length };
        writeClusterFile(opts.dataDir, this.cluster);
      }
    }
    if (opts.kvReplicas !== undefined && this.voters !== 0 && opts.kvReplicas !== this.voters) {
      this.log.warn({ persisted: this.voters, flag: opts.kvReplicas }, '--kv-replicas differs from the persisted voter count; the persisted value is used (change R on the running cluster with `membershipd cluster kv-replicas R`)');
    }
    if (this.voters === 1) this.log.warn({ voters: 1 }, '--kv-replicas 1: the replicated store has a single voter, a single point of failure (dev only)');

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
      // Our own --routes entry is not dialed: the transport would only learn it is us after a TLS and
      // identity handshake with ourselves (70-150 ms of a booting node's CPU). An address findSelfRoutes
      // cannot recognise (NAT, a name resolving elsewhere) is still caught by that handshake.
      routes: this.dialList(list.filter((r) => !self.includes(addressKey(r)))),
      tls: opts.tls,
      identity: { publicKey: this.identity.publicKeyBytes, sign: (d) => this.identity.sign(d) },
      user: opts.clusterUser,
      password: opts.clusterPassword,
      postureDigest: opts.postureDigest ?? '',
      // The bootstrap N (fixed while slots are appended); 0 while joining (see checkHello in transport/handshake.ts).
      clusterSize: this.cluster ? initialSize(this.cluster) : opts.join ? 0 : this.n,
      ...(this.cluster?.incarnation !== undefined ? { incarnation: this.cluster.incarnation } : {}),
      verifyPeer: (name, key) => this.verifyPeer(name, Buffer.from(key).toString('hex')),
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
    if (this.cluster) this.startOrAwaitVerdict();
    await this.transport.start();
    this.tickTimer = setInterval(() => this.onTick(), this.tickMs);
    this.log.info({ id: this.cluster?.id, n: this.n, voters: this.voters, route: this.transport.address() }, this.cluster ? 'node started' : 'node started; waiting for a peer to learn this node\'s slot');
  }

  /**
   * A store with nothing in it is either a new node or one whose data directory was wiped (a replaced disk). The two
   * look alike here and must not be confused: a wiped voter has forgotten its term, its vote and the entries it
   * acknowledged, so it must not vote or count for a quorum until it has caught up (README.md, "A wiped node").
   * Its peers remember its identity bound to its slot: the first hello from a peer that has a slot table decides.
   */
  private startOrAwaitVerdict(): void {
    const c = this.cluster!;
    const empty = this.storage.lastIndex() === 0 && this.storage.snapshot().meta.index === 0;
    if (c.recovering === true || !empty || c.addresses.length <= 1) {
      this.startRaft();
      return;
    }
    this.verdictPending = true;
    this.log.info({ id: c.id }, 'empty store: waiting for a peer\'s hello to tell whether this node is new or lost its data');
    // A peer that learns its own slot from us (routes listing only the others) needs our table first.
    this.sendHelloToAll();
  }

  private verdictFrom(peer: string, h: SlotHello): void {
    if (!this.verdictPending || h.id === 0 || h.addresses === null) return; // a peer without a table cannot know
    const c = this.cluster!;
    this.verdictPending = false;
    if (h.bound.includes(c.id)) {
      // The peer checked our identity key against the one bound to this slot in the route handshake.
      this.cluster = { ...c, recovering: true };
      writeClusterFile(this.opts.dataDir, this.cluster);
      this.log.warn({ id: c.id, from: peer }, 'this node lost its data: its store is empty but its peers know its slot; it rejoins without a vote and counts for no quorum until it has caught up');
    }
    this.startRaft();
  }

  /** Raft says the lost data is made good, in a Ready now durable: persist that the node is an ordinary member again. */
  private markRecovered(): void {
    const c = this.cluster!;
    const { recovering: _, ...rest } = c;
    this.cluster = rest;
    writeClusterFile(this.opts.dataDir, this.cluster);
    this.metrics.recoveries++;
    this.log.info({ id: c.id, applied: this.stateMachine.appliedIndex }, 'caught up after losing its data: votes and counts for quorums again');
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
    this.sendHelloToAll();
    this.schedule();
  }

  // ---- routes ----------------------------------------------------------------------------------

  private hello(): SlotHello {
    const c = this.cluster;
    if (!c) return { id: 0, routes: this.ownRoutes, addresses: null, voters: this.opts.join ? 0 : this.voters, initial: 0, names: [], bound: [] };
    const initial = initialSize(c);
    const names = c.addresses.slice(initial).map((_, k) => c.names?.[String(initial + k + 1)] ?? '');
    return { id: c.id, routes: this.ownRoutes, addresses: c.addresses, voters: this.voters, initial, names, bound: Object.keys(c.bindings).map(Number) };
  }

  /**
   * Whom the transport dials: --routes, plus (after a restart) every slot address of the persisted table that
   * --routes does not list (slots appended by `cluster add`), so a restarted member redials the added nodes too.
   */
  private dialList(routes: ReturnType<typeof normalizeRoutes>['list']): ReturnType<typeof normalizeRoutes>['list'] {
    const c = this.cluster;
    if (!c) return routes;
    const have = new Set(normalizeRoutes(routes.map((r) => r.url)).keys);
    const extra = c.addresses.filter((a, i) => i + 1 !== c.id && a !== 'self' && !have.has(a));
    if (extra.length === 0) return routes;
    try {
      return [...routes, ...parseRoutes(extra)];
    } catch (e) {
      this.log.error({ extra, err: (e as Error).message }, 'a persisted slot address does not parse as a route; not dialed');
      return routes;
    }
  }

  private sendHelloToAll(): void {
    for (const p of this.transport?.upPeers() ?? []) this.transport.send(p, { kind: 'raft', data: encodeHello(this.hello()) });
  }

  private verifyPeer(name: string, keyHex: string): string | true {
    for (const [id, b] of Object.entries(this.cluster?.bindings ?? {})) {
      if (b.name === name && b.key !== keyHex) return `"${name}" is bound to slot ${id} with identity key ${b.key.slice(0, 16)}…, this peer presents ${keyHex.slice(0, 16)}…`;
      if (b.key === keyHex && b.name !== name) return `identity key ${keyHex.slice(0, 16)}… is bound to "${b.name}" (slot ${id}), this peer calls itself "${name}"`;
    }
    return true;
  }

  private bindPeer(id: number, name: string): void {
    const old = this.idToPeer.get(id);
    if (old !== undefined && old !== name) this.peerToId.delete(old);
    this.idToPeer.set(id, name);
    this.peerToId.set(name, id);
  }

  private onPeerUp(p: PeerInfo): void {
    if (p.name !== undefined) this.transport.send(p.name, { kind: 'raft', data: encodeHello(this.hello()) });
    for (const l of this.listeners) l.up?.(p);
  }

  private onPeerDown(p: PeerInfo, c: LinkClose): void {
    if (p.name !== undefined) this.hellos.delete(p.name);
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
    if (d.kind === 'hello') return this.onHello(peer, d.hello);
    if (d.kind === 'statusRequest') {
      this.transport.send(peer, { kind: 'raft', data: encodeStatusReply(d.reqId, this.selfReport()) });
      return;
    }
    if (d.kind === 'statusReply') {
      this.statusWaiters.get(d.reqId)?.(d.report);
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

  private onHello(peer: string, h: SlotHello): void {
    const info = this.transport.peers().find((p) => p.name === peer && p.state === 'up');
    if (!info?.identity) return;
    this.hellos.set(peer, h);
    if (!this.cluster && this.opts.join) {
      this.joinFrom(peer, h);
      if (!this.cluster) return;
    }
    // 0: a node joining a running cluster, which adopts R from its peers (it has no flag value to compare).
    if (h.voters !== this.voters && h.voters !== 0) {
      this.log.error({ peer, theirs: h.voters, ours: this.voters }, 'peer disagrees on the number of voters (--kv-replicas); its raft traffic is ignored until the flags agree');
      this.bootstrapProblem = `peer "${peer}" has --kv-replicas ${h.voters}, this node ${this.voters}`;
      return;
    }
    if (!this.cluster) {
      // Only the bootstrap part of the peer's table (slots appended by `cluster add` come through the log).
      const theirs = h.addresses && h.initial > 0 ? h.addresses.slice(0, h.initial) : h.addresses;
      const learned = theirs ? learnAddresses(this.ownRoutes, theirs, this.n) : learnAddresses(this.ownRoutes, h.routes, this.n);
      if (typeof learned === 'string') {
        this.bootstrapProblem = `cannot derive this node's slot from peer "${peer}": ${learned}`;
        this.log.error({ peer }, this.bootstrapProblem);
        return;
      }
      this.cluster = {
        version: 1, cluster: this.clusterName, server: this.serverName, id: learned.addresses.indexOf(learned.self) + 1,
        addresses: learned.addresses, voters: this.voters, bindings: {}, initial: learned.addresses.length,
      };
      writeClusterFile(this.opts.dataDir, this.cluster);
      this.bootstrapProblem = undefined;
      this.log.info({ id: this.cluster.id, self: learned.self, from: peer }, 'learned this node\'s slot from a peer');
      this.startOrAwaitVerdict();
    }
    this.verdictFrom(peer, h);
    const c = this.cluster;
    // Slots are only ever appended (`cluster add`, replicated through the log), so two correct tables agree on every
    // slot both know; the shorter one has not applied the latest add yet.
    if (h.addresses && !tablesAgree(h.addresses, c.addresses)) {
      this.bootstrapProblem = `peer "${peer}" derives the node addresses [${h.addresses.join(', ')}], this node [${c.addresses.join(', ')}]: --routes disagree`;
      this.log.error({ peer }, this.bootstrapProblem);
      return;
    }
    if (h.id === 0) return;
    if (h.id === c.id) {
      this.log.error({ peer, id: h.id }, 'peer claims this node\'s slot; ignored');
      return;
    }
    if (h.id > c.addresses.length) {
      // A slot this node has not applied yet (a `cluster add` still in its log): bound when the table grows.
      this.log.debug({ peer, id: h.id, slots: c.addresses.length }, 'peer claims a slot beyond this node\'s table; bound once the table grows');
      return;
    }
    const bound: SlotBinding | undefined = c.bindings[String(h.id)];
    if (bound && bound.key !== info.identity) {
      this.bootstrapProblem = `slot ${h.id} is bound to "${bound.name}" (key ${bound.key.slice(0, 16)}…) but "${peer}" (key ${info.identity.slice(0, 16)}…) claims it`;
      this.log.error({ peer }, this.bootstrapProblem);
      return;
    }
    const reserved = c.names?.[String(h.id)];
    if (reserved !== undefined && reserved !== peer) {
      this.log.error({ peer, id: h.id, reserved }, 'peer claims a slot `cluster add` gave another name; ignored');
      return;
    }
    if (!bound) {
      this.cluster = { ...c, bindings: { ...c.bindings, [String(h.id)]: { name: peer, key: info.identity } } };
      writeClusterFile(this.opts.dataDir, this.cluster);
    }
    this.bindPeer(h.id, peer);
    this.campaignOnQuorum();
  }

  /**
   * A voter that knows no leader and has just met enough voters for a quorum campaigns now instead of
   * waiting out its randomized election timeout (1-2 s): a cold start or a restarted majority elects in
   * one round trip. Only the lowest slot among the reachable voters does so, so two nodes meeting at
   * once do not split the vote. It is a pre-vote (thesis §9.6): peers that hear from a leader ignore it
   * (leader lease), so a node joining a running cluster cannot disrupt it.
   */
  private campaignOnQuorum(): void {
    const raw = this.raw;
    const c = this.cluster;
    if (!raw || !c) return;
    const st = raw.basicStatus();
    if (st.lead !== 0 || (st.state !== StateType.follower && st.state !== StateType.preCandidate)) return;
    const voters = raw.confState().voters;
    if (!voters.includes(c.id)) return;
    const up = new Set(this.transport.upPeers());
    const reachable = voters.filter((v) => v === c.id || up.has(this.idToPeer.get(v) ?? '\0'));
    if (reachable.length < Math.floor(voters.length / 2) + 1 || Math.min(...reachable) !== c.id) return;
    this.log.info({ id: c.id, reachable }, 'quorum reachable and no leader known: campaigning now');
    raw.campaign();
    this.schedule();
  }

  /**
   * Joining a running cluster: this node's slot is the one `cluster add` appended under its server name in the
   * peer's replicated table. Until a peer's table lists it, the node waits (health says what to run).
   */
  private joinFrom(peer: string, h: SlotHello): void {
    if (h.addresses === null || h.initial === 0) return; // a peer that is itself still joining (or an older node)
    const k = h.names.indexOf(this.serverName);
    if (k < 0) {
      this.bootstrapProblem = `joining cluster "${this.clusterName}": the slot table of peer "${peer}" has no slot for ${this.serverName}; `
        + `run "membershipd cluster add ${this.serverName} <host>:${this.opts.clusterPort}" on a running node`;
      this.log.warn({ peer }, this.bootstrapProblem);
      return;
    }
    const id = h.initial + k + 1;
    const address = h.addresses[id - 1]!;
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    if (port !== this.opts.clusterPort && this.opts.clusterPort !== 0) {
      this.bootstrapProblem = `joining cluster "${this.clusterName}": slot ${id} was added for ${this.serverName} at ${address}, but this node's --cluster-port is ${this.opts.clusterPort}; `
        + `remove it ("membershipd cluster remove ${this.serverName}") and add the right address, or fix --cluster-port`;
      this.log.error({ peer }, this.bootstrapProblem);
      return;
    }
    const names: Record<string, string> = {};
    h.names.forEach((name, j) => { names[String(h.initial + j + 1)] = name; });
    // A recovered cluster's incarnation (transport/handshake.ts): a joiner has no data of its own and adopts it, so
    // after a restart it presents the cluster's and not the old members'.
    const incarnation = this.transport.peers().find((p) => p.name === peer && p.state === 'up')?.incarnation ?? '';
    this.cluster = {
      version: 1, cluster: this.clusterName, server: this.serverName, id, addresses: [...h.addresses], voters: h.voters, bindings: {},
      initial: h.initial, names, joined: true, ...(incarnation !== '' ? { incarnation } : {}),
    };
    this.voters = h.voters;
    this.n = h.addresses.length;
    writeClusterFile(this.opts.dataDir, this.cluster);
    // In a recovered cluster, from now on present what a restart would: its N and incarnation. As a joiner (N 0) this
    // node would let in a node of the old incarnation that dials its address (the old one of a lost member).
    if (incarnation !== '') this.transport.updateHandshake({ clusterSize: h.initial, incarnation });
    this.bootstrapProblem = undefined;
    this.log.info({ id, address, from: peer, slots: this.n, voters: this.voters }, 'joined a running cluster: learned this node\'s slot from a peer');
    this.startOrAwaitVerdict();
  }

  /**
   * The slots `cluster add` appended, in order (replicated by the control plane's `config` bucket, so every member
   * applies the same list at the same log position): the table grows by the new entries, persisted in
   * cluster.json; existing slots are never renumbered. The leader then adds each new slot as a learner.
   */
  setAddedSlots(added: readonly AddedSlot[]): void {
    const c = this.cluster;
    if (!c) return;
    const next = appendSlots(c, added);
    if (typeof next === 'string') {
      // The control plane re-applies the list every second: log a contradiction once, not every round.
      if (next !== this.tableProblem) this.log.error({ added }, `replicated slot list ignored: ${next}`);
      this.tableProblem = next;
      return;
    }
    this.tableProblem = undefined;
    if (next === c) return;
    this.cluster = next;
    this.n = next.addresses.length;
    writeClusterFile(this.opts.dataDir, next);
    this.log.warn({ slots: next.addresses.length, added: next.addresses.slice(c.addresses.length) }, 'slot table grew (cluster add)');
    // Joiners waiting for their slot learn it from this hello; peers' hellos held back for an unknown slot bind now.
    this.sendHelloToAll();
    const up = new Set(this.transport.upPeers());
    for (const [peer, h] of [...this.hellos]) if (up.has(peer) && h.id > c.addresses.length) this.onHello(peer, h);
  }

  /** The `cluster recover --force-new-cluster` this data directory went through, until its audit record is written. */
  pendingRecoveryAudit(): RecoveryRecord | undefined {
    const r = this.cluster?.recovered;
    return r !== undefined && r.audited !== true ? r : undefined;
  }

  /** The audit record of the recovery is committed: persist that, so no later leader writes it again. */
  markRecoveryAudited(): void {
    const c = this.cluster;
    if (c?.recovered === undefined || c.recovered.audited === true) return;
    this.cluster = { ...c, recovered: { ...c.recovered, audited: true } };
    writeClusterFile(this.opts.dataDir, this.cluster);
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
    const c = this.cluster;
    if (!c) return [];
    return c.addresses.map((address, i) => {
      const id = i + 1;
      if (id === c.id) return { id, address, name: this.serverName, identity: Buffer.from(this.identity.publicKeyBytes).toString('hex') };
      const b = c.bindings[String(id)];
      return { id, address, name: b?.name ?? c.names?.[String(id)], identity: b?.key };
    });
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
        if (lead !== 0) for (const w of this.writes.values()) w.submittedAt = 0;
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
      if (env.origin === this.cluster!.id && env.boot === this.boot) {
        const w = this.writes.get(env.seq);
        if (w) {
          this.writes.delete(env.seq);
          this.metrics.proposalSeconds.observe((performance.now() - w.started) / 1000);
          w.resolve(result);
        }
      }
    }
    for (const rs of rd.readStates) {
      if (rs.context.length !== 8) continue;
      const dv = new DataView(rs.context.buffer, rs.context.byteOffset, 8);
      if (dv.getUint32(0) !== this.boot) continue;
      const r = this.reads.get(dv.getUint32(4));
      if (r && r.index === 0) r.index = Math.max(1, rs.index);
    }
    if (rd.readStates.length > 0) this.sendOpenRead();
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
    // Nodes take turns (SnapshotTurns): all at once slowed the leader and both followers, so every write.
    if (!this.snapshotTurns.passed(applied, this.cluster?.id ?? 1, this.n, this.snapshotEntries)) return;
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
    const now = Date.now();
    for (const v of conf.voters) {
      if (isUp(v)) this.voterDownSince.delete(v);
      else if (!this.voterDownSince.has(v)) this.voterDownSince.set(v, now);
    }
    const dead = conf.voters.filter((v) => now - (this.voterDownSince.get(v) ?? now) >= this.voterGraceMs);
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
    if (this.stopping || this.fatal) return Promise.reject(this.stoppedError());
    if (this.writes.size >= waitingMax) {
      return Promise.reject(new NodeError(NodeErrorCode.overloaded, `${this.writes.size} writes are already waiting on ${this.serverName}; retry later`, true));
    }
    return new Promise<KvResult>((resolve, reject) => {
      const seq = (this.seq = (this.seq + 1) >>> 0);
      const now = performance.now();
      const w: PendingWrite = { seq, command, started: now, deadline: now + this.timeoutMs, submitted: false, submittedAt: 0, resolve, reject };
      this.writes.set(seq, w);
      this.submitWrite(w);
    });
  }

  private submitWrite(w: PendingWrite): void {
    if (!this.raw || !this.cluster || this.raw.basicStatus().lead === 0) return;
    try {
      this.raw.propose(encodeEnvelope(this.cluster.id, this.boot, w.seq, w.command));
      w.submitted = true;
      w.submittedAt = performance.now();
      this.schedule();
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
    }
  }

  /**
   * Waits until this node's state machine reflects every write committed before the call
   * (ReadIndex, Raft thesis §6.4), then returns it. With `stale`, returns at once.
   */
  async read(opts: ReadOptions = {}): Promise<KvStateMachine> {
    if (this.stopping || this.fatal) throw this.stoppedError();
    if (opts.stale) return this.stateMachine;
    if (this.readersWaiting >= waitingMax) {
      throw new NodeError(NodeErrorCode.overloaded, `${this.readersWaiting} linearizable reads are already waiting on ${this.serverName}; retry later, or read stale`, true);
    }
    await new Promise<void>((resolve, reject) => {
      let r = this.openRead;
      if (r === undefined) {
        const key = (this.seq = (this.seq + 1) >>> 0);
        r = this.openRead = { key, deadline: performance.now() + this.timeoutMs, submittedAt: 0, index: 0, waiters: [] };
        this.reads.set(key, r);
      }
      r.waiters.push({ resolve, reject });
      this.readersWaiting++;
      // After the current callback: every read it carries joins the same request.
      if (r.waiters.length === 1) queueMicrotask(() => this.sendOpenRead());
    });
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

  /** Sends the open batch unless a request is in flight (its answer sends it: see readStates). */
  private sendOpenRead(): void {
    const r = this.openRead;
    if (r === undefined) return;
    for (const other of this.reads.values()) if (other !== r && other.submittedAt !== 0 && other.index === 0) return;
    this.submitRead(r);
    if (r.submittedAt !== 0) this.openRead = undefined;
  }

  private settleRead(r: PendingRead, err?: Error): void {
    this.reads.delete(r.key);
    if (this.openRead === r) this.openRead = undefined;
    this.readersWaiting -= r.waiters.length;
    for (const w of r.waiters) if (err === undefined) w.resolve(); else w.reject(err);
  }

  private submitRead(r: PendingRead): void {
    if (!this.raw || this.raw.basicStatus().lead === 0) return;
    const ctx = new Uint8Array(8);
    const dv = new DataView(ctx.buffer);
    dv.setUint32(0, this.boot);
    dv.setUint32(4, r.key);
    try {
      this.raw.readIndex(ctx);
      r.submittedAt = performance.now();
      this.schedule();
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
    }
  }

  private serveReads(): void {
    const applied = this.stateMachine.appliedIndex;
    for (const r of this.reads.values()) {
      if (r.index > 0 && applied >= r.index) this.settleRead(r);
    }
  }

  private retryWaiting(): void {
    // A forwarded proposal (or a ReadIndex request) may be lost with a route or a leader; asking again
    // is safe: reads are idempotent and a write's copies are applied once (sessions.ts).
    const now = performance.now();
    for (const w of this.writes.values()) if (!w.submitted || now - w.submittedAt > 1000) this.submitWrite(w);
    for (const r of this.reads.values()) if (r !== this.openRead && r.index === 0 && now - r.submittedAt > 1000) this.submitRead(r);
    this.sendOpenRead();
  }

  private expire(): void {
    const now = performance.now();
    for (const w of this.writes.values()) {
      if (now < w.deadline) continue;
      this.writes.delete(w.seq);
      this.metrics.proposalsFailed++;
      const h = this.health();
      w.reject(w.submitted
        ? new NodeError(NodeErrorCode.timeout, `write not applied within ${this.timeoutMs} ms on ${this.serverName} (outcome unknown: it may still commit; retry if the command is idempotent)${h.status === 'ok' ? '' : `: ${h.reason}`}`, true)
        : new NodeError(NodeErrorCode.noLeader, `no leader within ${this.timeoutMs} ms on ${this.serverName}: ${h.status === 'ok' ? 'election in progress' : h.reason}; retry`, true));
    }
    for (const r of this.reads.values()) {
      if (now < r.deadline) continue;
      const h = this.health();
      this.settleRead(r, new NodeError(r.index === 0 ? NodeErrorCode.noLeader : NodeErrorCode.timeout, `linearizable read not served within ${this.timeoutMs} ms on ${this.serverName}${h.status === 'ok' ? '' : `: ${h.reason}`}; retry, or read stale`, true));
    }
  }

  private stoppedError(): NodeError {
    return this.fatal
      ? new NodeError(NodeErrorCode.stopped, `node ${this.serverName} stopped replicating: ${this.fatal.message}`, false)
      : new NodeError(NodeErrorCode.stopped, `node ${this.serverName} is stopping`, false);
  }

  private failAll(e: Error): void {
    for (const w of this.writes.values()) w.reject(e);
    this.writes.clear();
    for (const r of [...this.reads.values()]) this.settleRead(r, e);
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
    if (!Number.isSafeInteger(r) || r < 1 || r > this.n) {
      throw new NodeError(NodeErrorCode.config, `--kv-replicas ${r}: must be 1..${this.n} (the cluster size)`, false);
    }
    if (r === this.voters) return;
    this.log.warn({ from: this.voters, to: r }, 'number of voters (--kv-replicas) changed on the running cluster');
    this.voters = r;
    if (this.cluster) {
      this.cluster = { ...this.cluster, voters: r };
      writeClusterFile(this.opts.dataDir, this.cluster);
    }
    if (this.bootstrapProblem?.includes('--kv-replicas')) this.bootstrapProblem = undefined;
    if (r === 1) this.log.warn({ voters: 1 }, '--kv-replicas 1: the replicated store has a single voter, a single point of failure (dev only)');
    this.sendHelloToAll();
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
    const h = this.health();
    const base = { id: this.cluster?.id ?? 0, name: this.serverName, health: h.status === 'ok' ? 'ok' : h.reason };
    if (!this.raw) return { ...base, state: 'bootstrapping', term: 0, lead: 0, commit: 0, applied: this.stateMachine.appliedIndex, lastIndex: 0 };
    const st = this.raw.basicStatus();
    return { ...base, state: st.state, term: st.term, lead: st.lead, commit: st.commit, applied: this.stateMachine.appliedIndex, lastIndex: this.raw.status().lastIndex };
  }

  /**
   * Every slot with its role and indexes: this node's view plus each connected peer's own report (asked over
   * the route; a peer that does not answer within `timeoutMs` is unreachable). Lag is against the leader's
   * commit index as the leader reports it (or the highest commit seen when no leader answered).
   */
  async clusterStatus(timeoutMs = 1500): Promise<ClusterStatus> {
    const reports = new Map<number, MemberReport>();
    const self = this.selfReport();
    if (self.id !== 0) reports.set(self.id, self);
    const asked: Promise<void>[] = [];
    for (const peer of this.transport.upPeers()) {
      const reqId = (this.seq = (this.seq + 1) >>> 0);
      asked.push(new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.statusWaiters.delete(reqId);
          resolve();
        }, timeoutMs);
        this.statusWaiters.set(reqId, (r) => {
          clearTimeout(timer);
          this.statusWaiters.delete(reqId);
          if (r.id !== 0 && this.peerToId.get(peer) === r.id) reports.set(r.id, r);
          resolve();
        });
        if (!this.transport.send(peer, { kind: 'raft', data: encodeStatusRequest(reqId) })) {
          clearTimeout(timer);
          this.statusWaiters.delete(reqId);
          resolve();
        }
      }));
    }
    await Promise.all(asked);
    const conf = this.membership() ?? { voters: [], learners: [] };
    const leaderReport = [...reports.values()].find((r) => r.state === StateType.leader);
    const leaderCommit = leaderReport?.commit ?? Math.max(0, ...[...reports.values()].map((r) => r.commit));
    const members: MemberStatus[] = (this.cluster?.addresses ?? []).map((address, i) => {
      const id = i + 1;
      const r = reports.get(id);
      const learner = conf.learners.includes(id);
      const voter = conf.voters.includes(id);
      const role = !voter && !learner ? 'removed' : learner ? 'learner' : r === undefined ? 'voter' : r.state === 'preCandidate' ? 'candidate' : r.state;
      return {
        id, name: id === this.cluster?.id ? this.serverName : (this.cluster?.bindings[String(id)]?.name ?? this.cluster?.names?.[String(id)] ?? null), address, role,
        term: r?.term ?? null, leader: r === undefined || r.lead === 0 ? null : this.peerName(r.lead),
        commit: r?.commit ?? null, applied: r?.applied ?? null, lag: r === undefined ? null : Math.max(0, leaderCommit - r.applied),
        reachable: r !== undefined, health: r?.health ?? null,
      };
    });
    const st = this.raw?.basicStatus();
    return {
      cluster: this.clusterName, via: this.serverName, leader: leaderReport ? leaderReport.name : (st && st.lead !== 0 ? this.peerName(st.lead) : null),
      term: leaderReport?.term ?? st?.term ?? 0, kvReplicas: this.voters, voters: conf.voters, learners: conf.learners, members,
    };
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

  private reachableVoters(voters: readonly number[]): number {
    const up = new Set(this.transport.upPeers());
    let n = 0;
    for (const v of voters) if (v === this.cluster?.id || up.has(this.idToPeer.get(v) ?? '\0')) n++;
    return n;
  }

  /**
   * Whether this node's state machine is current: it applied the leader's own commit index since it started and
   * is not recovering lost data. Until then, what it reads locally (stale) is no basis for a write.
   */
  isCurrent(): boolean {
    const st = this.raw?.basicStatus();
    return st !== undefined && this.catchingUp(st) === undefined;
  }

  health(): Health {
    if (this.fatal) return { status: 'unavailable', reason: `replication stopped: ${this.fatal.message}` };
    if (this.refusal !== undefined) return { status: 'unavailable', reason: this.refusal };
    if (this.stopping) return { status: 'unavailable', reason: 'node is stopping' };
    if (!this.raw || !this.cluster) {
      const up = this.transport?.upPeers().length ?? 0;
      const down = this.transport?.peers().filter((p) => p.state !== 'up').map(describeDown) ?? [];
      return {
        status: 'unavailable',
        reason: this.bootstrapProblem ?? (this.verdictPending
          ? `no quorum: ${up + 1} of ${this.voters} voters reachable (this node's store is empty: a peer with a slot table tells whether it is new or lost its data${down.length ? `; not connected: ${down.join(', ')}` : ''})`
          : undefined) ?? (this.opts.join
          ? `joining cluster "${this.clusterName}": waiting for a peer's slot table (${up} peer(s) connected; not connected: ${down.join(', ')})`
          : undefined) ??
          `no quorum: ${up + 1} of ${this.voters} voters reachable (this node learns its slot from the first peer it meets; not connected: ${down.join(', ')})`,
      };
    }
    const st = this.raw.basicStatus();
    const conf = this.raw.confState();
    const self = this.cluster.id;
    const removed = this.removedSlots.has(self) && !conf.voters.includes(self) && !conf.learners.includes(self);
    const voters = conf.voters.length > 0 ? conf.voters : Array.from({ length: this.voters }, (_, i) => i + 1);
    const windowMs = this.electionTicks * this.tickMs;
    const now = Date.now();
    const silent: SilentVoter[] = [];
    for (const v of voters) {
      if (v === self) continue;
      const at = this.peerContact.get(v);
      if (now - (at ?? 0) > windowMs) silent.push({ name: this.peerName(v), silentMs: at === undefined ? undefined : now - at });
    }
    const leaderPeer = this.idToPeer.get(st.lead);
    return assessHealth({
      ...(removed ? { removed: { slot: self, serverName: this.serverName, address: this.cluster.addresses[self - 1] ?? '' } } : {}),
      voters: voters.length,
      reachable: this.reachableVoters(voters),
      notConnected: this.transport.peers().filter((p) => p.state !== 'up').map(describeDown),
      silent,
      windowMs,
      role: st.state,
      term: st.term,
      lead: st.lead,
      leaderName: this.peerName(st.lead),
      leaderConnected: leaderPeer !== undefined && this.transport.upPeers().includes(leaderPeer),
      leaderSilentMs: now - this.lastLeaderContact,
      commit: st.commit,
      applied: this.stateMachine.appliedIndex,
      ...(this.bootstrapProblem !== undefined ? { bootstrapProblem: this.bootstrapProblem } : {}),
      catchingUp: () => this.catchingUp(st),
    });
  }

  /**
   * Until this node has applied the leader's own commit index once since it started (and, after losing its data,
   * until Raft ends its recovery), it is not current: its own commit index is clamped to what it holds, so "applied
   * all I know committed" means nothing for a node that knows little. Heartbeats carry the leader's index.
   */
  private catchingUp(st: BasicStatus): Health | undefined {
    const applied = this.stateMachine.appliedIndex;
    if (!st.recovering && (this.caughtUp || (st.leaderCommit > 0 && applied >= st.leaderCommit))) {
      this.caughtUp = true;
      return undefined;
    }
    // A leader of an older version never says its commit index: after two election timeouts of silence on it,
    // "applied all this node knows committed" (checked by the caller) is the best there is, as before.
    // Timed from when health first sees this leader (Raft's state, not the Ready loop's, which may lag behind it).
    if (st.lead !== this.leaderSeen.lead) this.leaderSeen = { lead: st.lead, since: Date.now() };
    if (!st.recovering && st.leaderCommit === 0 && st.lead !== 0 && Date.now() - this.leaderSeen.since > 2 * this.electionTicks * this.tickMs) {
      this.caughtUp = true;
      this.log.warn({ lead: st.lead }, 'the leader\'s heartbeats carry no commit index (an older version?): healthy once applied reaches this node\'s own commit');
      return undefined;
    }
    const of = st.leaderCommit > 0 ? `the leader's commit ${st.leaderCommit}` : 'the leader\'s commit (not known yet)';
    const snap = st.snapshotBytes > 0 ? ` (snapshot ${Math.floor((100 * st.snapshotReceived) / st.snapshotBytes)}% received)` : '';
    const lost = st.recovering ? '; this node lost its data and votes again once caught up' : '';
    return { status: 'unavailable', reason: `catching up: applied ${applied} of ${of}${snap}${lost}` };
  }

  /**
   * STREAM.INFO `cluster` as nats-server reports a replicated stream: the cluster name, the Raft leader's server
   * name, and the other voters as replicas with `current`, `active` (ns since this node last heard from them) and
   * `lag` (entries behind). The leader knows every voter's progress; a follower knows its own and reports the
   * others from its routes only (`offline` when the route is down, `active` from the last Raft message, which
   * followers seldom exchange). Undefined with a single voter: nats-server omits `cluster` for an R1 stream on a
   * single server.
   */
  jsClusterInfo(): JsClusterInfo | undefined {
    const raw = this.raw;
    if (!raw) return undefined;
    const conf = raw.confState();
    if (conf.voters.length <= 1) return undefined;
    const st = raw.status();
    const lead = st.softState.lead;
    if (lead === 0) return { name: this.clusterName };
    const now = Date.now();
    const activeNs = (id: number): number => {
      const at = this.peerContact.get(id);
      return at === undefined ? 0 : Math.max(0, now - at) * 1_000_000;
    };
    const recent = 2 * this.electionTicks * this.tickMs;
    const up = new Set(this.transport.upPeers());
    const replicas: JsReplicaInfo[] = [];
    for (const id of conf.voters) {
      if (id === lead) continue;
      const name = this.peerName(id);
      if (id === st.id) {
        const lag = Math.max(0, st.hardState.commit - this.stateMachine.appliedIndex);
        replicas.push({ name, current: lag === 0 && now - this.lastLeaderContact <= recent, active: 0, ...(lag > 0 ? { lag } : {}) });
        continue;
      }
      const online = up.has(this.idToPeer.get(id) ?? '');
      const p = st.softState.state === StateType.leader ? st.progress.get(id) : undefined;
      const lag = p === undefined ? 0 : Math.max(0, st.lastIndex - p.match);
      const current = online && (p === undefined || (lag === 0 && now - (this.peerContact.get(id) ?? 0) <= recent));
      replicas.push({ name, current, ...(online ? {} : { offline: true }), active: activeNs(id), ...(lag > 0 ? { lag } : {}) });
    }
    return { name: this.clusterName, leader: this.peerName(lead), replicas };
  }

  private peerName(id: number): string {
    return id === this.cluster?.id ? this.serverName : (this.idToPeer.get(id) ?? `slot ${id}`);
  }

  raftz(): Record<string, unknown> {
    const raw = this.raw;
    const base = { server: this.serverName, cluster: this.clusterName, identity: this.identity.publicKey, health: this.health() };
    if (!raw || !this.cluster) return { ...base, id: null, state: 'bootstrapping', n: this.n, voters: this.voters };
    const st = raw.status();
    const basic = raw.basicStatus();
    const progress: Record<string, unknown> = {};
    for (const [id, p] of st.progress) {
      progress[this.peerName(id)] = {
        id, match: p.match, next: p.next, state: p.state, learner: p.isLearner, recentActive: p.recentActive, recovering: p.recovering,
        ...(p.snapshotBytes > 0 ? { snapshotTransfer: { ackedBytes: p.snapshotAcked, totalBytes: p.snapshotBytes } } : {}),
      };
    }
    return {
      ...base,
      id: st.id,
      state: st.softState.state,
      term: st.hardState.term,
      vote: st.hardState.vote,
      leader: st.softState.lead === 0 ? null : { id: st.softState.lead, name: this.peerName(st.softState.lead) },
      commit: st.hardState.commit,
      applied: this.stateMachine.appliedIndex,
      leaderCommit: basic.leaderCommit,
      recovering: basic.recovering,
      snapshotTransfer: basic.snapshotBytes > 0 ? { receivedBytes: basic.snapshotReceived, totalBytes: basic.snapshotBytes } : null,
      lastIndex: st.lastIndex,
      firstIndex: this.storage.firstIndex(),
      snapshotIndex: this.storage.snapshot().meta.index,
      conf: st.conf,
      slots: this.cluster.addresses.map((a, i) => ({ id: i + 1, address: a, name: this.peerName(i + 1) })),
      progress,
      pendingWrites: this.writes.size,
      pendingReads: this.readersWaiting,
      leaderChanges: this.metrics.leaderChanges,
      proposalP50Ms: msOrNull(this.metrics.proposalSeconds.quantile(0.5)),
      proposalP99Ms: msOrNull(this.metrics.proposalSeconds.quantile(0.99)),
      persistP50Ms: msOrNull(this.metrics.persistSeconds.quantile(0.5)),
      walSegments: this.storage.walSegments().length,
    };
  }

  routez(): Record<string, unknown> {
    const peers = this.transport.peers().map((p) => ({ ...p, raftId: p.name === undefined ? null : (this.peerToId.get(p.name) ?? null) }));
    return { server: this.serverName, cluster: this.clusterName, listen: this.transport.address(), numRoutes: this.transport.upPeers().length, routes: peers };
  }

  varz(): Record<string, unknown> {
    const mem = process.memoryUsage();
    return {
      server: this.serverName,
      cluster: this.clusterName,
      identity: this.identity.publicKey,
      raftId: this.cluster?.id ?? null,
      clusterSize: this.n,
      voters: this.voters,
      uptimeMs: Date.now() - this.startedAt,
      mem: mem.rss,
      routes: this.transport.upPeers().length,
      routeLinks: this.transport.linkCount(),
      health: this.health(),
    };
  }

  metricsText(): string {
    const st = this.raw?.basicStatus();
    const peers = this.transport.peers();
    let bytesIn = 0;
    let bytesOut = 0;
    let framesIn = 0;
    let framesOut = 0;
    let writes = 0;
    for (const p of peers) {
      writes += p.counters.writes;
      bytesIn += p.counters.bytesIn;
      bytesOut += p.counters.bytesOut;
      framesIn += p.counters.framesIn;
      framesOut += p.counters.framesOut;
    }
    const m = this.metrics;
    const samples: Sample[] = [
      ['membershipd_raft_term', 'gauge', 'Current Raft term', st?.term ?? 0],
      ['membershipd_raft_leader', 'gauge', '1 when this node is the Raft leader', st?.state === StateType.leader ? 1 : 0],
      ['membershipd_raft_has_leader', 'gauge', '1 when a leader is known', st && st.lead !== 0 ? 1 : 0],
      ['membershipd_raft_leader_changes_total', 'counter', 'Leader changes seen by this node', m.leaderChanges],
      ['membershipd_raft_commit_index', 'gauge', 'Raft commit index', st?.commit ?? 0],
      ['membershipd_raft_applied_index', 'gauge', 'Index applied to the KV state machine', this.stateMachine.appliedIndex],
      ['membershipd_raft_leader_commit_index', 'gauge', 'The leader\'s own commit index as its heartbeats tell it (0: not known)', st?.leaderCommit ?? 0],
      ['membershipd_raft_recovering', 'gauge', '1 while this node, having lost its data, catches up without a vote', st?.recovering ? 1 : 0],
      ['membershipd_raft_recoveries_total', 'counter', 'Times this node caught up after losing its data', m.recoveries],
      ['membershipd_raft_snapshot_received_bytes', 'gauge', 'Bytes received of the snapshot being streamed to this node', st?.snapshotReceived ?? 0],
      ['membershipd_raft_snapshot_total_bytes', 'gauge', 'Size of the snapshot being streamed to this node (0: none)', st?.snapshotBytes ?? 0],
      ['membershipd_raft_snapshots_installed_total', 'counter', 'Snapshots received from the leader and installed', m.snapshotsInstalled],
      ['membershipd_raft_messages_in_total', 'counter', 'Raft messages received', m.raftMessagesIn],
      ['membershipd_raft_messages_out_total', 'counter', 'Raft messages sent', m.raftMessagesOut],
      ['membershipd_raft_messages_dropped_total', 'counter', 'Raft messages dropped (peer down, unknown slot, queue full)', m.raftMessagesDropped],
      ['membershipd_raft_proposals_failed_total', 'counter', 'Writes that failed with a timeout or no leader', m.proposalsFailed],
      ['membershipd_raft_pending_writes', 'gauge', 'Writes waiting to be applied', this.writes.size],
      ['membershipd_raft_snapshots_total', 'counter', 'Snapshots taken locally', m.snapshotsTaken],
      ['membershipd_kv_bytes', 'gauge', 'KV data held, as --max-kv-bytes counts it (stored bytes of every bucket)', this.stateMachine.totalBytes()],
      ['membershipd_kv_quota_bytes', 'gauge', '--max-kv-bytes (0: unlimited)', this.opts.maxKvBytes ?? 0],
      ['membershipd_kv_quota_refusals_total', 'counter', 'KV writes refused because they would pass --max-kv-bytes', m.quotaRefusals],
      ['membershipd_healthy', 'gauge', '1 when /healthz answers ok', this.health().status === 'ok' ? 1 : 0],
      ['membershipd_route_connections', 'gauge', 'Route links open in any state', this.transport.linkCount()],
      ['membershipd_route_bytes_in_total', 'counter', 'Bytes received on routes', bytesIn],
      ['membershipd_route_bytes_out_total', 'counter', 'Bytes sent on routes', bytesOut],
      ['membershipd_route_frames_in_total', 'counter', 'Frames received on routes', framesIn],
      ['membershipd_route_frames_out_total', 'counter', 'Frames sent on routes', framesOut],
      ['membershipd_route_writes_total', 'counter', 'Socket writes on routes (frames out / writes = frames per write)', writes],
    ];
    if (st?.state === StateType.leader) {
      // One family after the other: a family's samples must be adjacent in the exposition format.
      const streams = [...this.raw!.status().progress].filter(([, p]) => p.snapshotBytes > 0);
      for (const [id, p] of streams) samples.push(['membershipd_raft_snapshot_acked_bytes', 'gauge', 'Leader: bytes of the snapshot being streamed that the follower acknowledged', p.snapshotAcked, { peer: this.peerName(id) }]);
      for (const [id, p] of streams) samples.push(['membershipd_raft_snapshot_sending_bytes', 'gauge', 'Leader: size of the snapshot being streamed to the follower', p.snapshotBytes, { peer: this.peerName(id) }]);
    }
    for (const p of peers) {
      samples.push(['membershipd_route_up', 'gauge', 'Route state per peer (1 up)', p.state === 'up' ? 1 : 0, { peer: p.name ?? p.route ?? p.address }]);
    }
    return renderMetrics(samples, [
      ['membershipd_raft_proposal_seconds', 'Time from a write being proposed on this node to its apply here', m.proposalSeconds],
      ['membershipd_wal_fsync_seconds', 'Time to make one Ready batch durable (WAL append + fdatasync)', m.persistSeconds],
    ]);
  }

  /** Stops timers, fails waiting requests, closes routes and the store. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.tickTimer);
    this.failAll(this.stoppedError());
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

/** A route that is not up, with the refusal or dial error that keeps it down (what to fix). */
function describeDown(p: PeerInfo): string {
  const where = p.name ?? p.route ?? p.address;
  return p.lastError && p.lastError.code !== 'connect' ? `${where}: ${p.lastError.reason}` : where;
}

function msOrNull(s: number | null): number | null {
  return s === null ? null : Math.round(s * 100_000) / 100;
}

/** Starts a cluster node (see NodeOptions). */
export function startNode(options: NodeOptions): Promise<ClusterNode> {
  return ClusterNode.start(options);
}
