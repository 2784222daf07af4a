// Service presence (DESIGN.md "Service presence"): live service instances in the `services` bucket, by one of two ties.
//  - Leased: `$UB.API.SERVICE.REGISTER` writes `<service>.<instance>` with a lease id and a TTL; KEEPALIVE renews it;
//    DEREGISTER removes it.
//  - Connection-bound: a standard NATS service (nats.js @nats-io/services, nats.go micro) subscribes to
//    `$SRV.INFO.<name>.<id>`. The node holding that connection sees the interest, asks the instance its INFO once,
//    and writes the entry; when the subscription or the connection goes, it deletes it.
//
// Liveness follows etcd's lessor (server/lease/lessor.go): keep-alives are never log entries. The leader holds every
// entry's expiry in memory; a follower relays its clients' keep-alives (and, for connection-bound entries, "I still
// hold these") to the leader in one route frame per event-loop turn. Joins, leaves and expiries are log entries, and
// only the leader expires. A new leader gives every entry a full TTL before expiring any (etcd's Promote), so a
// failover never drops a live instance; an instance whose node died leaves one TTL after the last renewal the leader
// saw. A node cut off from the majority cannot renew: its instances expire, and it writes them again when it can.
//
// This file is the table of live instances, its expiry and the leader relay, and the connection-bound ties; the
// SERVICE verbs are in service_api.ts, what a request may carry in service_fields.ts.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { KvEntry } from '../../store/index.js';
import type { Principal, PrincipalSource } from '../auth/index.js';
import type { KvBackend } from '../kv/backend.js';
import type { LocalPublish, NatsClusterPort, InterestChange } from '../nats/index.js';
import {
  controlBuckets, decodeValue, encodeValue, schemaVersion, serviceKey, validateService, type ServiceValue,
} from '../control/index.js';
import { serviceApiPrefix, ServiceRequests, type Known } from './service_api.js';
import { nameRe, parseInfo, ServiceApiError } from './service_fields.js';

/** Route-frame tag of the leader relay (src/node onExtensionFrame). */
const frameTag = 'svc';
const frameOp = { renew: 1, renewReply: 2 } as const;

/** What presence needs from the cluster node (src/node ClusterNode). */
export interface PresenceNode {
  readonly serverName: string;
  leaderName(): string | undefined;
  onLeaderChange(l: (isLeader: boolean, leaderName: string | undefined) => void): () => void;
  onExtensionFrame(tag: string, handler: (peerName: string, data: unknown[]) => void): () => void;
  sendRouteFrame(peerName: string, frame: { kind: 'raft'; data: unknown }): boolean;
}

export interface ServicePresenceOptions {
  readonly node: PresenceNode;
  readonly backend: KvBackend;
  /** The front slot of the service seam: sees local publishes before the admin API and the routes. */
  readonly port: Pick<NatsClusterPort, 'setForwarder' | 'deliverFromRoute' | 'onInterest' | 'interest'>;
  readonly logger: Logger;
  /** Users and roles: a role's `services` lists the names it may register. Undefined with bus auth off. */
  readonly source?: PrincipalSource;
  /** Internal identities ('N…'): signed requests from them are admin. */
  readonly internalKeys: () => readonly string[];
  /** TTL of connection-bound entries: how long after its node's last report an entry survives (default 10 s). */
  readonly connectionTtlMs?: number;
  /** How often a node reports the connection-bound entries it holds and re-writes missing ones (default 2 s). */
  readonly reportMs?: number;
  /** How long a standard service's subscriptions may settle before its INFO is asked (default 100 ms). */
  readonly settleMs?: number;
  readonly now?: () => number;
}

export interface ServicePresence {
  /** May this principal read the `services` bucket (KV API)? Admins, and roles granted `services_read`. */
  mayRead(principal: Principal): boolean;
  /** Live entries this node has applied (stale read). */
  entries(): ServiceValue[];
  /** Leader only: ms until `key` expires, undefined when unknown or not leader. */
  remainingMs(key: string): number | undefined;
  readonly stats: { renewalsRelayed: number; renewalsHandled: number; expired: number; autoRegistered: number; autoRemoved: number };
  stop(): void;
}

const enc = new TextEncoder();
const relayTimeoutMs = 3000;
const infoTimeoutMs = 2000;
const sweepMs = 100;

export function startServicePresence(o: ServicePresenceOptions): ServicePresence {
  return new Presence(o);
}

class Presence implements ServicePresence {
  readonly stats = { renewalsRelayed: 0, renewalsHandled: 0, expired: 0, autoRegistered: 0, autoRemoved: 0 };
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly connTtlMs: number;
  private readonly settleMs: number;
  /** The SERVICE verbs (service_api.ts), reading this table. */
  private readonly api: ServiceRequests;
  /** Every live entry this node applied, and the lease index over them. */
  private readonly known = new Map<string, Known>();
  private readonly byLease = new Map<string, string>();
  /** Leader only: key → expiry (ms). */
  private readonly expiry = new Map<string, number>();
  private readonly expiring = new Set<string>();
  private leader = false;
  /** `$SRV.INFO.<name>.<id>` interest held by this node's clients: key → subscription count. */
  private readonly held = new Map<string, number>();
  private readonly settling = new Map<string, NodeJS.Timeout>();
  /** Keys whose INFO request or write is in flight (report() and a second call skip them). */
  private readonly fetching = new Set<string>();
  private readonly infoWaiters = new Map<string, (payload: Uint8Array) => void>();
  private readonly inboxPrefix: string;
  private inboxSeq = 0;
  /** Keep-alives waiting for this turn's relay frame, and relays waiting for the leader's answer. */
  private batch: { lease: string; resolve: (ms: number | undefined) => void; reject: (e: Error) => void }[] = [];
  private batchScheduled = false;
  private readonly relays = new Map<number, { leases: string[]; resolve: (ms: (number | null)[]) => void; timer: NodeJS.Timeout; reject: (e: Error) => void }>();
  private relaySeq = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly unhooks: (() => void)[] = [];
  private stopped = false;

  constructor(private readonly o: ServicePresenceOptions) {
    this.log = o.logger.child({ component: 'services' });
    this.now = o.now ?? Date.now;
    this.connTtlMs = o.connectionTtlMs ?? 10_000;
    this.settleMs = o.settleMs ?? 100;
    this.api = new ServiceRequests(o, this.log, this.now, {
      known: this.known,
      byLease: this.byLease,
      keepAlive: (lease) => this.keepAlive(lease),
      onChange: (listener) => this.onChange(listener),
    });
    this.inboxPrefix = `_INBOX.ubsrv-${randomBytes(6).toString('hex')}.`;
    o.port.setForwarder((m) => this.onPublish(m));
    this.unhooks.push(() => o.port.setForwarder(undefined));
    this.unhooks.push(o.backend.watch(controlBuckets.services, 0, (e) => this.onEntry(e)));
    if (o.backend.onReset) this.unhooks.push(o.backend.onReset(() => this.reload()));
    this.unhooks.push(o.node.onLeaderChange((isLeader) => this.setLeader(isLeader)));
    this.unhooks.push(o.node.onExtensionFrame(frameTag, (peer, data) => this.onFrame(peer, data)));
    this.unhooks.push(o.port.onInterest((c) => this.onInterest(c)));
    // Subscriptions made before presence started (none in serve; a restart of presence in tests).
    for (const i of o.port.interest()) for (let k = 0; k < i.count; k++) this.onInterest({ subject: i.subject, queue: i.queue, delta: 1 });
    this.setLeader(o.node.leaderName() === o.node.serverName);
    this.timers.push(setInterval(() => this.sweep(), sweepMs));
    this.timers.push(setInterval(() => this.report(), o.reportMs ?? 2000));
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    for (const t of this.settling.values()) clearTimeout(t);
    for (const u of this.unhooks) u();
    const gone = new Error('service presence stopped');
    for (const r of this.relays.values()) {
      clearTimeout(r.timer);
      r.reject(gone);
    }
    for (const b of this.batch) b.reject(gone);
    for (const w of [...this.changeWaiters]) w();
  }

  mayRead(p: Principal): boolean {
    if (p.admin) return true;
    const u = p.kind === 'nkey' && p.nkey !== undefined ? this.o.source?.userByNkey(p.nkey) : this.o.source?.userByName(p.name);
    if (u === undefined || u.disabled) return false;
    return u.roles.some((r) => this.o.source?.role(r)?.services_read === true);
  }

  entries(): ServiceValue[] {
    return [...this.known.values()].map((k) => k.value);
  }

  remainingMs(key: string): number | undefined {
    const e = this.expiry.get(key);
    return this.leader && e !== undefined ? Math.max(0, e - this.now()) : undefined;
  }

  // ---- the replicated state ----------------------------------------------------------------------------

  private ttlOf(v: ServiceValue): number {
    return v.ttl_ms ?? this.connTtlMs;
  }

  private onEntry(e: KvEntry): void {
    if (this.changeWaiters.size > 0) for (const w of [...this.changeWaiters]) w();
    const old = this.known.get(e.key);
    if (old?.value.lease !== undefined) this.byLease.delete(old.value.lease);
    if (e.op !== 'PUT') {
      this.known.delete(e.key);
      this.expiry.delete(e.key);
      return;
    }
    const value = decodeValue(e.value, validateService, (why) => this.log.error({ key: e.key, why }, 'services bucket value fails its schema'));
    if (value === undefined) {
      this.known.delete(e.key);
      return;
    }
    this.known.set(e.key, { value, revision: e.revision });
    if (value.lease !== undefined) this.byLease.set(value.lease, e.key);
    // A (re)written entry starts a full TTL: its writer just proved it alive.
    if (this.leader) this.expiry.set(e.key, this.now() + this.ttlOf(value));
  }

  private reload(): void {
    this.known.clear();
    this.byLease.clear();
    const latest = new Map<string, KvEntry>();
    for (const e of this.o.backend.reader.changesSince(0, controlBuckets.services)) latest.set(e.key, e);
    for (const e of latest.values()) this.onEntry(e);
    if (this.leader) this.setLeader(true);
  }

  /**
   * On election every entry gets a full TTL from now (etcd lessor Promote): the old leader's renewals are lost with
   * it, and expiring on the new leader's stale view would drop instances that were kept alive a moment ago.
   */
  private setLeader(isLeader: boolean): void {
    this.expiry.clear();
    this.expiring.clear();
    this.leader = isLeader;
    if (!isLeader) return;
    const now = this.now();
    for (const [key, k] of this.known) this.expiry.set(key, now + this.ttlOf(k.value));
    this.log.info({ entries: this.known.size }, 'service presence: leading; every lease gets a full TTL');
  }

  /** Leader: one delete per expired entry, all proposed in the same turn (one Raft append and fsync). */
  private sweep(): void {
    if (!this.leader || this.stopped) return;
    const now = this.now();
    for (const [key, at] of this.expiry) {
      if (at > now || this.expiring.has(key)) continue;
      const k = this.known.get(key);
      if (k === undefined) {
        this.expiry.delete(key);
        continue;
      }
      this.expiring.add(key);
      // Guarded by revision: an instance that registered again meanwhile is a new entry and keeps its TTL.
      void this.o.backend.propose({ op: 'delete', bucket: controlBuckets.services, key, revision: k.revision, ts: now }).then((r) => {
        if (r.ok) {
          this.stats.expired++;
          this.log.info({ key, kind: k.value.kind ?? 'lease', node: k.value.node }, 'service instance expired');
        }
      }, (err: unknown) => this.log.debug({ err, key }, 'expiry not committed; retried at the next sweep')).finally(() => this.expiring.delete(key));
    }
  }

  /** Leader: renew by lease (client keep-alives) and by key (connection-bound entries their node still holds). */
  private renew(leases: readonly string[], keys: readonly string[], fromNode: string): (number | null)[] {
    const now = this.now();
    this.stats.renewalsHandled += leases.length + keys.length;
    for (const key of keys) {
      const k = this.known.get(key);
      if (k !== undefined && k.value.kind === 'connection' && k.value.node === fromNode && this.expiry.has(key)) this.expiry.set(key, now + this.ttlOf(k.value));
    }
    return leases.map((lease) => {
      const key = this.byLease.get(lease);
      const k = key === undefined ? undefined : this.known.get(key);
      if (key === undefined || k === undefined || !this.expiry.has(key) || this.expiring.has(key)) return null;
      const ttl = this.ttlOf(k.value);
      this.expiry.set(key, now + ttl);
      return ttl;
    });
  }

  // ---- the leader relay ----------------------------------------------------------------------------------

  private onFrame(peer: string, data: unknown[]): void {
    const [, op, reqId, a, b] = data;
    if (typeof reqId !== 'number' || !Array.isArray(a)) return;
    if (op === frameOp.renew && Array.isArray(b)) {
      const leases = a.filter((x): x is string => typeof x === 'string');
      const keys = b.filter((x): x is string => typeof x === 'string');
      // Not the leader (any more): answer nothing; the relay times out and the client retries on the new leader.
      if (!this.leader) return;
      const result = this.renew(leases, keys, peer);
      if (reqId > 0) this.o.node.sendRouteFrame(peer, { kind: 'raft', data: [frameTag, frameOp.renewReply, reqId, result] });
      return;
    }
    if (op === frameOp.renewReply) {
      const r = this.relays.get(reqId);
      if (r === undefined) return;
      this.relays.delete(reqId);
      clearTimeout(r.timer);
      r.resolve(a.map((x) => (typeof x === 'number' ? x : null)));
    }
  }

  /** A keep-alive: handled here when leading, else joins this turn's relay frame to the leader. */
  private keepAlive(lease: string): Promise<number | undefined> {
    if (this.leader) return Promise.resolve(this.renew([lease], [], this.o.node.serverName)[0] ?? undefined);
    return new Promise((resolve, reject) => {
      this.batch.push({ lease, resolve, reject });
      if (!this.batchScheduled) {
        this.batchScheduled = true;
        setImmediate(() => this.flushBatch());
      }
    });
  }

  private flushBatch(): void {
    this.batchScheduled = false;
    const batch = this.batch;
    this.batch = [];
    if (batch.length === 0) return;
    const fail = (why: string): void => {
      for (const b of batch) b.reject(new ServiceApiError('unavailable', why));
    };
    if (this.leader) {
      const r = this.renew(batch.map((b) => b.lease), [], this.o.node.serverName);
      batch.forEach((b, i) => b.resolve(r[i] ?? undefined));
      return;
    }
    const leader = this.o.node.leaderName();
    if (leader === undefined) return fail('no leader at the moment (election in progress); send the keep-alive again');
    const reqId = ++this.relaySeq;
    const leases = batch.map((b) => b.lease);
    const timer = setTimeout(() => {
      this.relays.delete(reqId);
      fail(`the leader ${leader} did not confirm the keep-alive within ${relayTimeoutMs} ms; send it again`);
    }, relayTimeoutMs);
    this.relays.set(reqId, { leases, timer, reject: (e) => { for (const b of batch) b.reject(e); },
      resolve: (ms) => batch.forEach((b, i) => b.resolve(ms[i] ?? undefined)) });
    this.stats.renewalsRelayed += leases.length;
    if (!this.o.node.sendRouteFrame(leader, { kind: 'raft', data: [frameTag, frameOp.renew, reqId, leases, []] })) {
      clearTimeout(timer);
      this.relays.delete(reqId);
      fail(`the route to the leader ${leader} is down; send the keep-alive again`);
    }
  }

  /**
   * Every reportMs: tell the leader which connection-bound entries this node still holds (renews them), and write
   * again any that are missing (expired while this node was cut off, or written before a failed proposal).
   */
  private report(): void {
    if (this.stopped) return;
    const mine: string[] = [];
    for (const key of this.held.keys()) {
      if (this.settling.has(key) || this.fetching.has(key)) continue;
      const k = this.known.get(key);
      if (k === undefined) void this.fetchAndRegister(key);
      else if (k.value.node === this.o.node.serverName) mine.push(key);
      // Recorded under another node: the instance reconnected, and one of the two connections is stale (the old
      // node has not noticed yet). The newer write stands; taking it back would flap until the stale one closes.
      // If that write is the stale one, nobody renews it: it expires and the next report writes it again here.
    }
    if (mine.length === 0) return;
    if (this.leader) {
      this.renew([], mine, this.o.node.serverName);
      return;
    }
    const leader = this.o.node.leaderName();
    if (leader !== undefined) this.o.node.sendRouteFrame(leader, { kind: 'raft', data: [frameTag, frameOp.renew, 0, [], mine] });
  }

  // ---- connection-bound: standard NATS services -----------------------------------------------------------

  private onInterest(c: InterestChange): void {
    if (c.queue !== undefined || !c.subject.startsWith('$SRV.INFO.')) return;
    const t = c.subject.split('.');
    if (t.length !== 4 || !nameRe.test(t[2]!) || !nameRe.test(t[3]!)) return;
    const key = serviceKey(t[2]!, t[3]!);
    const n = (this.held.get(key) ?? 0) + c.delta;
    if (n > 0) {
      this.held.set(key, n);
      if (n === 1 && c.delta === 1) {
        // A service subscribes to PING/INFO/STATS first and adds its endpoints right after: ask INFO once they settled.
        this.settling.set(key, setTimeout(() => {
          this.settling.delete(key);
          void this.fetchAndRegister(key);
        }, this.settleMs));
      }
      return;
    }
    this.held.delete(key);
    const s = this.settling.get(key);
    if (s !== undefined) {
      clearTimeout(s);
      this.settling.delete(key);
    }
    void this.removeHeld(key);
  }

  private async removeHeld(key: string): Promise<void> {
    const k = this.known.get(key);
    if (k === undefined || k.value.kind !== 'connection' || k.value.node !== this.o.node.serverName) return;
    try {
      const r = await this.o.backend.propose({ op: 'delete', bucket: controlBuckets.services, key, revision: k.revision, ts: this.now() });
      if (r.ok) {
        this.stats.autoRemoved++;
        this.log.info({ key }, 'service instance left (subscription or connection closed)');
      }
    } catch (err) {
      // Not committed (no leader): the leader expires it after its TTL, since this node no longer reports it.
      this.log.warn({ err, key }, 'service instance removal not committed; it expires after its TTL');
    }
  }

  private requestInfo(subject: string): Promise<Uint8Array | undefined> {
    const inbox = `${this.inboxPrefix}${++this.inboxSeq}`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.infoWaiters.delete(inbox);
        resolve(undefined);
      }, infoTimeoutMs);
      this.infoWaiters.set(inbox, (payload) => {
        clearTimeout(timer);
        this.infoWaiters.delete(inbox);
        resolve(payload);
      });
      this.o.port.deliverFromRoute({ subject, reply: inbox, payload: new Uint8Array(0), flushNow: true });
    });
  }

  private async fetchAndRegister(key: string): Promise<void> {
    if (this.stopped || !this.held.has(key) || this.settling.has(key) || this.fetching.has(key)) return;
    this.fetching.add(key);
    try {
      const [name, id] = key.split('.') as [string, string];
      const payload = await this.requestInfo(`$SRV.INFO.${name}.${id}`);
      if (this.stopped || !this.held.has(key)) return;
      const info = payload === undefined ? undefined : parseInfo(payload);
      if (info === undefined) this.log.warn({ key }, 'service instance did not answer $SRV.INFO (or not as a micro service); registered by name only');
      const now = this.now();
      const value: ServiceValue = {
        v: schemaVersion, service: name, instance: id,
        endpoints: info?.endpoints ?? [], metadata: info?.metadata ?? {},
        lease_expires: now + this.connTtlMs, kind: 'connection', ttl_ms: this.connTtlMs, node: this.o.node.serverName, registered: now,
        ...(info?.version !== undefined ? { version: info.version } : {}), ...(info?.description !== undefined ? { description: info.description } : {}),
      };
      const r = await this.o.backend.propose({ op: 'put', bucket: controlBuckets.services, key, value: encodeValue(value), ts: now });
      if (!r.ok) throw new Error(r.message);
      this.stats.autoRegistered++;
      this.log.info({ key, endpoints: value.endpoints.length }, 'service instance joined (connection-bound)');
      // Unsubscribed while the write was in flight: take it out again.
      if (!this.held.has(key)) await this.removeHeld(key);
    } catch (err) {
      this.log.warn({ err, key }, 'service instance not registered yet; retried at the next report');
    } finally {
      this.fetching.delete(key);
    }
  }

  // ---- the API ---------------------------------------------------------------------------------------------

  /** The forwarder: SERVICE requests and INFO replies stop here; everything else goes on (false). */
  private onPublish(m: LocalPublish): boolean {
    const s = m.subject;
    if (s.charCodeAt(0) === 95 /* _ */ && s.startsWith(this.inboxPrefix)) {
      this.infoWaiters.get(s)?.(m.payload.slice());
      return true;
    }
    if (s.charCodeAt(0) !== 36 /* $ */ || !s.startsWith(serviceApiPrefix)) return false;
    if (m.reply === undefined || this.stopped) return true;
    const reply = m.reply;
    const payload = m.payload.slice();
    void this.api.request(s.slice(serviceApiPrefix.length), payload, m.principal).then((r) => {
      if (!this.stopped) this.o.port.deliverFromRoute({ subject: reply, payload: enc.encode(JSON.stringify(r)), flushNow: true });
    });
    return true;
  }

  private readonly changeWaiters = new Set<() => void>();

  private onChange(l: () => void): () => void {
    this.changeWaiters.add(l);
    return () => void this.changeWaiters.delete(l);
  }
}
