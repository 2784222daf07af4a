// Slot binding and bootstrap: which Raft slot this node holds, and which peer holds each other slot. The slot
// table comes from cluster.json, from --routes (every node derives the same sorted table), from a peer's hello
// (routes listing only the others), or, joining a running cluster, from the table its peers replicate. Split out
// of node.ts (issue 17): the node asks this module whom to dial, what to present in the route handshake, and to
// whom a Raft id maps; every hello from a peer comes here. Raft itself is the node's (startRaft, raft, schedule).
import type { BasicStatus, ConfState } from '../../raft/index.js';
import { StateType } from '../../raft/index.js';
import { parseRoutes, type PeerInfo, type RouteAddress, type RouteTransport } from '../../transport/index.js';
import type { Logger } from '../log.js';
import {
  type RecoveryRecord,
  addressKey, appendSlots, findSelfRoutes, initialSize, learnAddresses, normalizeRoutes, readClusterFile, tablesAgree, writeClusterFile,
  type AddedSlot, type ClusterFile, type SlotBinding,
} from './bootstrap.js';
import { NodeError, NodeErrorCode } from './errors.js';
import { finishInterruptedRecovery } from './recover.js';
import { encodeHello, type SlotHello } from './wire.js';

/** What slot binding sends and asks of the routes. */
export type SlotTransport = Pick<RouteTransport, 'send' | 'upPeers' | 'peers' | 'updateHandshake'>;

/** What slot binding reads of Raft (a RawNode is one), to campaign when a quorum of voters is first reachable. */
export interface SlotRaft {
  basicStatus(): BasicStatus;
  confState(): ConfState;
  campaign(): void;
}

export interface SlotBindingOptions {
  readonly serverName: string;
  readonly clusterName: string;
  readonly clusterPort: number;
  /** cluster.json lives here. */
  readonly dataDir: string;
  /** --initial-cluster-state existing (NodeOptions.join). */
  readonly join: boolean;
  /** --kv-replicas, when given. */
  readonly kvReplicas: number | undefined;
  readonly log: Logger;
  /** Whether the Raft store holds nothing (no entry, no snapshot): a new node, or one that lost its data. */
  readonly storeEmpty: () => boolean;
  /** Starts Raft on the slot now known (ClusterFile.recovering says whether it lost its data). */
  readonly startRaft: () => void;
  /** Raft, once started. */
  readonly raft: () => SlotRaft | undefined;
  /** Runs the Ready loop soon (after a campaign). */
  readonly schedule: () => void;
}

/** The slot table's side for the control plane and tests (ClusterNode.slotTable); the rest stays the node's. */
export type SlotTable = Pick<SlotBindings, 'setKvReplicas' | 'setAddedSlots' | 'pendingRecoveryAudit' | 'markRecoveryAudited'>;

export class SlotBindings {
  private readonly opts: SlotBindingOptions;
  private readonly log: Logger;
  private transport: SlotTransport | undefined;
  /** The slot table as persisted in cluster.json; undefined while this node learns its slot. */
  file: ClusterFile | undefined;
  /** Own route keys (normalized), self-route excluded. */
  private ownRoutes: string[] = [];
  /** Slots in the table (N); 0 while joining. */
  size = 1;
  /** Voters the leader keeps (R as persisted). */
  voters = 1;
  private readonly idToPeerMap = new Map<number, string>();
  private readonly peerToIdMap = new Map<string, number>();
  /** Each up peer's last hello: re-read when the slot table grows (a peer may claim a slot this node had not applied yet). */
  private readonly hellos = new Map<string, SlotHello>();
  /** Why the bootstrap is stuck (health says it). */
  problem: string | undefined;
  /** The slot is known but the store is empty: a peer's hello tells a new node from one that lost its data. */
  awaitingVerdict = false;
  /** Why the replicated list of added slots could not be applied (logged once). */
  private tableProblem: string | undefined;

  constructor(opts: SlotBindingOptions) {
    this.opts = opts;
    this.log = opts.log;
  }

  /** Raft id → server name of the peer bound to that slot. */
  get idToPeer(): ReadonlyMap<number, string> {
    return this.idToPeerMap;
  }

  /** Server name → Raft id of the slot it is bound to. */
  get peerToId(): ReadonlyMap<string, number> {
    return this.peerToIdMap;
  }

  /**
   * The slot table at start: finishes an interrupted `cluster recover`, then reads cluster.json or derives the table
   * from --routes (a node listed in them finds itself by its listen address). Returns the routes to dial. Throws a
   * config NodeError for a table that cannot be right (another cluster's data dir, R above N, self listed twice).
   */
  async configure(routes: string | readonly string[], bind: string): Promise<RouteAddress[]> {
    const opts = this.opts;
    const { list, keys } = normalizeRoutes(routes);
    const self = await findSelfRoutes(list, bind, opts.clusterPort);
    if (self.length > 1) {
      throw new NodeError(NodeErrorCode.config, `--routes lists this node under ${self.length} addresses (${self.join(', ')}); list each node once`, false);
    }
    this.ownRoutes = keys.filter((k) => !self.includes(k));
    // A `cluster recover --force-new-cluster` that was committed but interrupted before its renames is finished first.
    const rolledForward = await finishInterruptedRecovery(opts.dataDir);
    if (rolledForward !== undefined) this.log.warn({ incarnation: rolledForward }, 'finished an interrupted "cluster recover --force-new-cluster"');
    const persisted = readClusterFile(opts.dataDir);
    if (persisted) this.adopt(persisted);
    else if (opts.join) {
      // Joining a running cluster: N, R and the slot come from the peers' replicated table (onHello → joinFrom).
      this.size = 0;
      this.voters = opts.kvReplicas ?? 0;
    } else this.derive(keys, self);
    if (opts.kvReplicas !== undefined && this.voters !== 0 && opts.kvReplicas !== this.voters) {
      this.log.warn({ persisted: this.voters, flag: opts.kvReplicas }, '--kv-replicas differs from the persisted voter count; the persisted value is used (change R on the running cluster with `membershipd cluster kv-replicas R`)');
    }
    if (this.voters === 1) this.log.warn({ voters: 1 }, '--kv-replicas 1: the replicated store has a single voter, a single point of failure (dev only)');
    // Our own --routes entry is not dialed: the transport would only learn it is us after a TLS and
    // identity handshake with ourselves (70-150 ms of a booting node's CPU). An address findSelfRoutes
    // cannot recognise (NAT, a name resolving elsewhere) is still caught by that handshake.
    return this.dialList(list.filter((r) => !self.includes(addressKey(r))));
  }

  /** The persisted table, checked against this node's flags. */
  private adopt(persisted: ClusterFile): void {
    const opts = this.opts;
    if (persisted.cluster !== opts.clusterName) {
      throw new NodeError(NodeErrorCode.config, `data dir ${opts.dataDir} belongs to cluster "${persisted.cluster}", not "${opts.clusterName}"; use another --data-dir or wipe it to join this cluster`, false);
    }
    this.file = persisted;
    this.size = persisted.addresses.length;
    this.voters = persisted.voters;
    const derivedN = this.ownRoutes.length + 1;
    if (opts.join) this.log.info({ id: persisted.id }, '--initial-cluster-state existing ignored: this node already has its slot (cluster.json)');
    if (derivedN !== this.size && derivedN !== initialSize(persisted)) {
      this.log.warn({ persisted: this.size, fromRoutes: derivedN }, 'cluster size from --routes differs from the persisted configuration; the persisted one is used (membership changes go through `cluster add/remove`)');
    }
    for (const [id, b] of Object.entries(persisted.bindings)) this.bindPeer(Number(id), b.name);
    if (persisted.recovered !== undefined && persisted.recovered.audited !== true) {
      this.log.warn({ recovered: persisted.recovered }, 'starting as a cluster of one after "cluster recover --force-new-cluster"; add the other nodes back with "membershipd cluster add"');
    }
  }

  /** A first start from --routes: N from the routes; the slot too when this node found itself in them. */
  private derive(keys: readonly string[], self: readonly string[]): void {
    const opts = this.opts;
    this.size = this.ownRoutes.length + 1;
    this.voters = opts.kvReplicas ?? this.size;
    if (this.voters > this.size) {
      throw new NodeError(NodeErrorCode.config, `--kv-replicas ${this.voters} is greater than the cluster size ${this.size} (${this.ownRoutes.length} other node(s) in --routes plus this one); use --kv-replicas ${this.size} or add routes`, false);
    }
    if (self.length === 1 || this.size === 1) {
      const addresses = this.size === 1 ? ['self'] : [...keys].sort();
      const id = this.size === 1 ? 1 : addresses.indexOf(self[0]!) + 1;
      const initial = addresses.length;
      this.file = { version: 1, cluster: opts.clusterName, server: opts.serverName, id, addresses, voters: this.voters, bindings: {}, initial };
      writeClusterFile(opts.dataDir, this.file);
    }
  }

  /** What the route handshake presents: the bootstrap N (fixed while slots are appended; 0 while joining) and the incarnation. */
  handshake(): { clusterSize: number; incarnation?: string } {
    // See checkHello in transport/handshake.ts.
    const clusterSize = this.file ? initialSize(this.file) : this.opts.join ? 0 : this.size;
    return { clusterSize, ...(this.file?.incarnation !== undefined ? { incarnation: this.file.incarnation } : {}) };
  }

  /** The routes are up and running: from now on hellos go out, and Raft starts once the slot is known. */
  attach(transport: SlotTransport): void {
    this.transport = transport;
    if (this.file) this.startOrAwaitVerdict();
  }

  /** A peer's route came up: it gets our hello (slot, table, R). */
  peerUp(p: PeerInfo): void {
    if (p.name !== undefined) this.transport?.send(p.name, { kind: 'raft', data: encodeHello(this.hello()) });
  }

  /** A peer's route went down: its hello no longer stands. */
  peerDown(p: PeerInfo): void {
    if (p.name !== undefined) this.hellos.delete(p.name);
  }

  /**
   * A store with nothing in it is either a new node or one whose data directory was wiped (a replaced disk). The two
   * look alike here and must not be confused: a wiped voter has forgotten its term, its vote and the entries it
   * acknowledged, so it must not vote or count for a quorum until it has caught up (README.md, "A wiped node").
   * Its peers remember its identity bound to its slot: the first hello from a peer that has a slot table decides.
   */
  private startOrAwaitVerdict(): void {
    const c = this.file!;
    if (c.recovering === true || !this.opts.storeEmpty() || c.addresses.length <= 1) {
      this.opts.startRaft();
      return;
    }
    this.awaitingVerdict = true;
    this.log.info({ id: c.id }, 'empty store: waiting for a peer\'s hello to tell whether this node is new or lost its data');
    // A peer that learns its own slot from us (routes listing only the others) needs our table first.
    this.sendHelloToAll();
  }

  private verdictFrom(peer: string, h: SlotHello): void {
    if (!this.awaitingVerdict || h.id === 0 || h.addresses === null) return; // a peer without a table cannot know
    const c = this.file!;
    this.awaitingVerdict = false;
    if (h.bound.includes(c.id)) {
      // The peer checked our identity key against the one bound to this slot in the route handshake.
      this.file = { ...c, recovering: true };
      writeClusterFile(this.opts.dataDir, this.file);
      this.log.warn({ id: c.id, from: peer }, 'this node lost its data: its store is empty but its peers know its slot; it rejoins without a vote and counts for no quorum until it has caught up');
    }
    this.opts.startRaft();
  }

  /** Raft says the lost data is made good, in a Ready now durable: persist that the node is an ordinary member again. */
  markRecovered(applied: number): void {
    const c = this.file!;
    const { recovering: _, ...rest } = c;
    this.file = rest;
    writeClusterFile(this.opts.dataDir, this.file);
    this.log.info({ id: c.id, applied }, 'caught up after losing its data: votes and counts for quorums again');
  }

  /** What this node tells each peer of its slot, its table and R. */
  hello(): SlotHello {
    const c = this.file;
    if (!c) return { id: 0, routes: this.ownRoutes, addresses: null, voters: this.opts.join ? 0 : this.voters, initial: 0, names: [], bound: [] };
    const initial = initialSize(c);
    const names = c.addresses.slice(initial).map((_, k) => c.names?.[String(initial + k + 1)] ?? '');
    return { id: c.id, routes: this.ownRoutes, addresses: c.addresses, voters: this.voters, initial, names, bound: Object.keys(c.bindings).map(Number) };
  }

  /**
   * Whom the transport dials: --routes, plus (after a restart) every slot address of the persisted table that
   * --routes does not list (slots appended by `cluster add`), so a restarted member redials the added nodes too.
   */
  private dialList(routes: RouteAddress[]): RouteAddress[] {
    const c = this.file;
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

  sendHelloToAll(): void {
    for (const p of this.transport?.upPeers() ?? []) this.transport!.send(p, { kind: 'raft', data: encodeHello(this.hello()) });
  }

  /** The route handshake's check: a peer must present the identity key bound to its name, and no other's. */
  verifyPeer(name: string, keyHex: string): string | true {
    for (const [id, b] of Object.entries(this.file?.bindings ?? {})) {
      if (b.name === name && b.key !== keyHex) return `"${name}" is bound to slot ${id} with identity key ${b.key.slice(0, 16)}…, this peer presents ${keyHex.slice(0, 16)}…`;
      if (b.key === keyHex && b.name !== name) return `identity key ${keyHex.slice(0, 16)}… is bound to "${b.name}" (slot ${id}), this peer calls itself "${name}"`;
    }
    return true;
  }

  private bindPeer(id: number, name: string): void {
    const old = this.idToPeer.get(id);
    if (old !== undefined && old !== name) this.peerToIdMap.delete(old);
    this.idToPeerMap.set(id, name);
    this.peerToIdMap.set(name, id);
  }

  /** A peer's hello: learn or check the slot table, bind the peer's slot to its name and key, maybe campaign. */
  onHello(peer: string, h: SlotHello): void {
    const info = this.transport?.peers().find((p) => p.name === peer && p.state === 'up');
    if (!info?.identity) return;
    this.hellos.set(peer, h);
    if (!this.file && this.opts.join) {
      this.joinFrom(peer, h);
      if (!this.file) return;
    }
    // 0: a node joining a running cluster, which adopts R from its peers (it has no flag value to compare).
    if (h.voters !== this.voters && h.voters !== 0) {
      this.log.error({ peer, theirs: h.voters, ours: this.voters }, 'peer disagrees on the number of voters (--kv-replicas); its raft traffic is ignored until the flags agree');
      this.problem = `peer "${peer}" has --kv-replicas ${h.voters}, this node ${this.voters}`;
      return;
    }
    if (!this.file) {
      // Only the bootstrap part of the peer's table (slots appended by `cluster add` come through the log).
      const theirs = h.addresses && h.initial > 0 ? h.addresses.slice(0, h.initial) : h.addresses;
      const learned = theirs ? learnAddresses(this.ownRoutes, theirs, this.size) : learnAddresses(this.ownRoutes, h.routes, this.size);
      if (typeof learned === 'string') {
        this.problem = `cannot derive this node's slot from peer "${peer}": ${learned}`;
        this.log.error({ peer }, this.problem);
        return;
      }
      this.file = {
        version: 1, cluster: this.opts.clusterName, server: this.opts.serverName, id: learned.addresses.indexOf(learned.self) + 1,
        addresses: learned.addresses, voters: this.voters, bindings: {}, initial: learned.addresses.length,
      };
      writeClusterFile(this.opts.dataDir, this.file);
      this.problem = undefined;
      this.log.info({ id: this.file.id, self: learned.self, from: peer }, 'learned this node\'s slot from a peer');
      this.startOrAwaitVerdict();
    }
    this.verdictFrom(peer, h);
    const c = this.file;
    // Slots are only ever appended (`cluster add`, replicated through the log), so two correct tables agree on every
    // slot both know; the shorter one has not applied the latest add yet.
    if (h.addresses && !tablesAgree(h.addresses, c.addresses)) {
      this.problem = `peer "${peer}" derives the node addresses [${h.addresses.join(', ')}], this node [${c.addresses.join(', ')}]: --routes disagree`;
      this.log.error({ peer }, this.problem);
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
      this.problem = `slot ${h.id} is bound to "${bound.name}" (key ${bound.key.slice(0, 16)}…) but "${peer}" (key ${info.identity.slice(0, 16)}…) claims it`;
      this.log.error({ peer }, this.problem);
      return;
    }
    const reserved = c.names?.[String(h.id)];
    if (reserved !== undefined && reserved !== peer) {
      this.log.error({ peer, id: h.id, reserved }, 'peer claims a slot `cluster add` gave another name; ignored');
      return;
    }
    if (!bound) {
      this.file = { ...c, bindings: { ...c.bindings, [String(h.id)]: { name: peer, key: info.identity } } };
      writeClusterFile(this.opts.dataDir, this.file);
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
    const raw = this.opts.raft();
    const c = this.file;
    if (!raw || !c) return;
    const st = raw.basicStatus();
    if (st.lead !== 0 || (st.state !== StateType.follower && st.state !== StateType.preCandidate)) return;
    const voters = raw.confState().voters;
    if (!voters.includes(c.id)) return;
    const up = new Set(this.transport?.upPeers());
    const reachable = voters.filter((v) => v === c.id || up.has(this.idToPeer.get(v) ?? '\0'));
    if (reachable.length < Math.floor(voters.length / 2) + 1 || Math.min(...reachable) !== c.id) return;
    this.log.info({ id: c.id, reachable }, 'quorum reachable and no leader known: campaigning now');
    raw.campaign();
    this.opts.schedule();
  }

  /**
   * Joining a running cluster: this node's slot is the one `cluster add` appended under its server name in the
   * peer's replicated table. Until a peer's table lists it, the node waits (health says what to run).
   */
  private joinFrom(peer: string, h: SlotHello): void {
    if (h.addresses === null || h.initial === 0) return; // a peer that is itself still joining (or an older node)
    const k = h.names.indexOf(this.opts.serverName);
    if (k < 0) {
      this.problem = `joining cluster "${this.opts.clusterName}": the slot table of peer "${peer}" has no slot for ${this.opts.serverName}; `
        + `run "membershipd cluster add ${this.opts.serverName} <host>:${this.opts.clusterPort}" on a running node`;
      this.log.warn({ peer }, this.problem);
      return;
    }
    const id = h.initial + k + 1;
    const address = h.addresses[id - 1]!;
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    if (port !== this.opts.clusterPort && this.opts.clusterPort !== 0) {
      this.problem = `joining cluster "${this.opts.clusterName}": slot ${id} was added for ${this.opts.serverName} at ${address}, but this node's --cluster-port is ${this.opts.clusterPort}; `
        + `remove it ("membershipd cluster remove ${this.opts.serverName}") and add the right address, or fix --cluster-port`;
      this.log.error({ peer }, this.problem);
      return;
    }
    const names: Record<string, string> = {};
    h.names.forEach((name, j) => { names[String(h.initial + j + 1)] = name; });
    // A recovered cluster's incarnation (transport/handshake.ts): a joiner has no data of its own and adopts it, so
    // after a restart it presents the cluster's and not the old members'.
    const incarnation = this.transport?.peers().find((p) => p.name === peer && p.state === 'up')?.incarnation ?? '';
    this.file = {
      version: 1, cluster: this.opts.clusterName, server: this.opts.serverName, id, addresses: [...h.addresses], voters: h.voters, bindings: {},
      initial: h.initial, names, joined: true, ...(incarnation !== '' ? { incarnation } : {}),
    };
    this.voters = h.voters;
    this.size = h.addresses.length;
    writeClusterFile(this.opts.dataDir, this.file);
    // In a recovered cluster, from now on present what a restart would: its N and incarnation. As a joiner (N 0) this
    // node would let in a node of the old incarnation that dials its address (the old one of a lost member).
    if (incarnation !== '') this.transport?.updateHandshake({ clusterSize: h.initial, incarnation });
    this.problem = undefined;
    this.log.info({ id, address, from: peer, slots: this.size, voters: this.voters }, 'joined a running cluster: learned this node\'s slot from a peer');
    this.startOrAwaitVerdict();
  }

  /**
   * The slots `cluster add` appended, in order (replicated by the control plane's `config` bucket, so every member
   * applies the same list at the same log position): the table grows by the new entries, persisted in
   * cluster.json; existing slots are never renumbered. The leader then adds each new slot as a learner.
   */
  setAddedSlots(added: readonly AddedSlot[]): void {
    const c = this.file;
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
    this.file = next;
    this.size = next.addresses.length;
    writeClusterFile(this.opts.dataDir, next);
    this.log.warn({ slots: next.addresses.length, added: next.addresses.slice(c.addresses.length) }, 'slot table grew (cluster add)');
    // Joiners waiting for their slot learn it from this hello; peers' hellos held back for an unknown slot bind now.
    this.sendHelloToAll();
    const up = new Set(this.transport?.upPeers());
    for (const [peer, h] of [...this.hellos]) if (up.has(peer) && h.id > c.addresses.length) this.onHello(peer, h);
  }

  /** The `cluster recover --force-new-cluster` this data directory went through, until its audit record is written. */
  pendingRecoveryAudit(): RecoveryRecord | undefined {
    const r = this.file?.recovered;
    return r !== undefined && r.audited !== true ? r : undefined;
  }

  /** The audit record of the recovery is committed: persist that, so no later leader writes it again. */
  markRecoveryAudited(): void {
    const c = this.file;
    if (c?.recovered === undefined || c.recovered.audited === true) return;
    this.file = { ...c, recovered: { ...c.recovered, audited: true } };
    writeClusterFile(this.opts.dataDir, this.file);
  }

  /**
   * Changes R on a running cluster (every node gets the same value from the control plane's `config` bucket):
   * persisted in cluster.json (a restart keeps it, whatever its --kv-replicas flag says), announced in the hello,
   * and the leader converges one configuration change at a time: caught-up learners are promoted while there
   * are fewer voters than R; above R, the least caught-up voter that does not lead is removed and comes back
   * as a learner. Throws a config error for R outside 1..N.
   */
  setKvReplicas(r: number): void {
    if (!Number.isSafeInteger(r) || r < 1 || r > this.size) {
      throw new NodeError(NodeErrorCode.config, `--kv-replicas ${r}: must be 1..${this.size} (the cluster size)`, false);
    }
    if (r === this.voters) return;
    this.log.warn({ from: this.voters, to: r }, 'number of voters (--kv-replicas) changed on the running cluster');
    this.voters = r;
    if (this.file) {
      this.file = { ...this.file, voters: r };
      writeClusterFile(this.opts.dataDir, this.file);
    }
    if (this.problem?.includes('--kv-replicas')) this.problem = undefined;
    if (r === 1) this.log.warn({ voters: 1 }, '--kv-replicas 1: the replicated store has a single voter, a single point of failure (dev only)');
    this.sendHelloToAll();
  }

  /** The slots of the cluster: Raft id, address, and the server name + identity key bound to it (if met). */
  slots(identityHex: string): { id: number; address: string; name: string | undefined; identity: string | undefined }[] {
    const c = this.file;
    if (!c) return [];
    return c.addresses.map((address, i) => {
      const id = i + 1;
      if (id === c.id) return { id, address, name: this.opts.serverName, identity: identityHex };
      const b = c.bindings[String(id)];
      return { id, address, name: b?.name ?? c.names?.[String(id)], identity: b?.key };
    });
  }

}
