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
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { KvEntry, KvResult } from '../../store/index.js';
import type { Principal, PrincipalSource } from '../auth/index.js';
import { builtinAdminRole } from '../auth/index.js';
import type { KvBackend } from '../kv/backend.js';
import type { LocalPublish, NatsClusterPort, InterestChange } from '../nats/index.js';
import { isValidSubject } from '../nats/index.js';
import {
  controlBuckets, decodeValue, encodeValue, EnvelopeVerifier, schemaVersion, serviceKey, validateService, type ServiceValue,
} from '../control/index.js';
import { MembershipdError } from '../errors.js';

export const serviceApiPrefix = '$UB.API.SERVICE.';
/** Route-frame tag of the leader relay (src/node onExtensionFrame). */
const frameTag = 'svc';
const frameOp = { renew: 1, renewReply: 2 } as const;

/** Limits on what a registration may carry: the entry is replicated to every node and held by every watcher. */
export const serviceLimits = {
  ttlSecondsMin: 1,
  ttlSecondsMax: 3600,
  endpointsMax: 64,
  endpointBytesMax: 256,
  metadataKeysMax: 32,
  metadataKeyBytesMax: 128,
  metadataValueBytesMax: 1024,
  textBytesMax: 1024,
} as const;

/** A refusal of a SERVICE request; becomes `{ error: { code, message } }` like the admin API's. */
export class ServiceApiError extends MembershipdError {
  constructor(code: 'bad_request' | 'forbidden' | 'not_found' | 'conflict' | 'unavailable', message: string) {
    super(code, message);
  }
}

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

type Reply = Record<string, unknown>;
const enc = new TextEncoder();
const dec = new TextDecoder();
const nameRe = /^[A-Za-z0-9_=-]{1,128}$/;
const leaseRe = /^[0-9a-f]{32}$/;
const relayTimeoutMs = 3000;
const infoTimeoutMs = 2000;
const sweepMs = 100;

interface Known {
  readonly value: ServiceValue;
  readonly revision: number;
}

export function startServicePresence(o: ServicePresenceOptions): ServicePresence {
  return new Presence(o);
}

class Presence implements ServicePresence {
  readonly stats = { renewalsRelayed: 0, renewalsHandled: 0, expired: 0, autoRegistered: 0, autoRemoved: 0 };
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly connTtlMs: number;
  private readonly settleMs: number;
  private readonly verifier: EnvelopeVerifier;
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
    this.verifier = new EnvelopeVerifier(this.now);
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
    void this.request(s.slice(serviceApiPrefix.length), payload, m.principal).then((r) => {
      if (!this.stopped) this.o.port.deliverFromRoute({ subject: reply, payload: enc.encode(JSON.stringify(r)), flushNow: true });
    });
    return true;
  }

  /** One request end to end; never rejects. */
  async request(verb: string, payload: Uint8Array, principal: Principal | undefined): Promise<Reply> {
    try {
      const { body, caller } = this.parse(`${serviceApiPrefix}${verb}`, payload, principal);
      switch (verb) {
        case 'REGISTER': return await this.register(body, caller);
        case 'KEEPALIVE': return await this.keepAliveRequest(body);
        case 'DEREGISTER': return await this.deregister(body, caller);
        case 'LIST': return await this.list(body);
        case 'SHOW': return await this.show(body);
        case 'WATCH': return await this.watchRequest(body);
        default: throw new ServiceApiError('not_found', `no service API ${serviceApiPrefix}${verb} (known: REGISTER, KEEPALIVE, DEREGISTER, LIST, SHOW, WATCH)`);
      }
    } catch (err) {
      if (err instanceof ServiceApiError) return { error: { code: err.code, message: err.message } };
      this.log.error({ err, verb }, 'service request failed');
      return { error: { code: 'unavailable', message: `the change could not be committed: ${err instanceof Error ? err.message : String(err)}; retry` } };
    }
  }

  /**
   * Who asks: a signed envelope (as the admin API's, e.g. from the membershipd CLI) names its key; a plain JSON body
   * is the connection's authenticated principal (a service connects with its own user and password or NKey).
   */
  private parse(subject: string, payload: Uint8Array, principal: Principal | undefined): { body: Record<string, unknown>; caller: Caller } {
    let doc: unknown;
    try {
      doc = JSON.parse(dec.decode(payload));
    } catch {
      throw new ServiceApiError('bad_request', 'the request is not JSON: send a JSON object such as {"service":"orders","instance":"a1","ttl":10}');
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ServiceApiError('bad_request', 'the request body must be a JSON object');
    const d = doc as Record<string, unknown>;
    if (typeof d.auth === 'object' && typeof d.body === 'string') {
      const v = this.verifier.verify(subject, payload, principal?.nkey);
      if (!v.ok) throw new ServiceApiError(v.code, v.message);
      if (typeof v.body !== 'object' || v.body === null || Array.isArray(v.body)) throw new ServiceApiError('bad_request', 'the request body must be a JSON object');
      return { body: v.body as Record<string, unknown>, caller: this.callerOfKey(v.key, v.role) };
    }
    return { body: d, caller: this.callerOf(principal) };
  }

  private callerOfKey(key: string, role: 'server' | 'user'): Caller {
    if (role === 'server') {
      if (this.o.internalKeys().includes(key)) return { name: `internal:${key}`, admin: true, services: [] };
      throw new ServiceApiError('forbidden', `key ${key} is not this cluster's internal identity`);
    }
    const u = this.o.source?.userByNkey(key);
    if (u === undefined || u.disabled) throw new ServiceApiError('forbidden', `no enabled user has NKey ${key}`);
    return this.callerOfUser(u.name, u.roles);
  }

  private callerOf(p: Principal | undefined): Caller {
    // Bus auth off: nobody is authenticated and every subject is open, so is presence (as `$SRV` itself is).
    if (p === undefined) return { name: 'anonymous', admin: true, services: [] };
    if (p.admin) return { name: p.name, admin: true, services: [] };
    const u = p.kind === 'nkey' && p.nkey !== undefined ? this.o.source?.userByNkey(p.nkey) : this.o.source?.userByName(p.name);
    if (u === undefined || u.disabled) return { name: p.name, admin: false, services: [] };
    return this.callerOfUser(u.name, u.roles);
  }

  private callerOfUser(name: string, roles: readonly string[]): Caller {
    const services: string[] = [];
    let admin = false;
    for (const r of roles) {
      if (r === builtinAdminRole) admin = true; // the built-in role is not in the source
      const rec = this.o.source?.role(r);
      if (rec?.admin === true) admin = true;
      services.push(...(rec?.services ?? []));
    }
    return { name, admin, services };
  }

  private mayRegister(c: Caller, service: string): void {
    if (c.admin || c.services.includes('*') || c.services.includes(service)) return;
    throw new ServiceApiError('forbidden', `${c.name} may not register service ${service}: none of its roles lists it in "services" (${c.services.length > 0 ? `it may register ${c.services.join(', ')}` : 'it may register none'}); ask an admin to add it to a role's "services"`);
  }

  private async register(body: Record<string, unknown>, caller: Caller): Promise<Reply> {
    const service = nameField(body, 'service');
    const instance = nameField(body, 'instance');
    const ttl = body.ttl;
    if (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < serviceLimits.ttlSecondsMin || ttl > serviceLimits.ttlSecondsMax) {
      throw new ServiceApiError('bad_request', `"ttl" must be a whole number of seconds from ${serviceLimits.ttlSecondsMin} to ${serviceLimits.ttlSecondsMax}, got ${JSON.stringify(ttl)}`);
    }
    const endpoints = endpointsField(body.endpoints);
    const metadata = metadataField(body.metadata);
    const version = textField(body, 'version');
    const description = textField(body, 'description');
    this.mayRegister(caller, service);
    const key = serviceKey(service, instance);
    const cur = this.known.get(key);
    if (cur?.value.kind === 'connection') {
      throw new ServiceApiError('conflict', `${key} is a connection-bound instance held by node ${cur.value.node ?? '?'} (a standard NATS service); choose another instance name`);
    }
    const now = this.now();
    const lease = randomBytes(16).toString('hex');
    const value: ServiceValue = {
      v: schemaVersion, service, instance, endpoints, metadata, lease_expires: now + ttl * 1000,
      kind: 'lease', lease, ttl_ms: ttl * 1000, node: this.o.node.serverName, registered: now, by: caller.name,
      ...(version !== undefined ? { version } : {}), ...(description !== undefined ? { description } : {}),
    };
    validateService(value);
    // Registering again (an instance restarted) replaces the entry and its lease: the old lease id stops working.
    const r: KvResult = await this.o.backend.propose({ op: 'put', bucket: controlBuckets.services, key, value: encodeValue(value), ts: now });
    if (!r.ok) throw new ServiceApiError('unavailable', `${key} was not registered: ${r.message}; retry`);
    this.log.info({ key, ttl, by: caller.name }, 'service instance registered');
    return { result: cur === undefined ? 'created' : 'updated', key, lease, ttl };
  }

  private leaseField(body: Record<string, unknown>): string {
    const lease = body.lease;
    if (typeof lease !== 'string' || !leaseRe.test(lease)) throw new ServiceApiError('bad_request', '"lease" must be the lease id REGISTER returned (32 hex digits)');
    return lease;
  }

  private async keepAliveRequest(body: Record<string, unknown>): Promise<Reply> {
    const lease = this.leaseField(body);
    const ms = await this.keepAlive(lease);
    if (ms === undefined) throw new ServiceApiError('not_found', `lease ${lease} is not live (it expired or was deregistered); register the instance again`);
    return { result: 'updated', lease, ttl: ms / 1000 };
  }

  private async deregister(body: Record<string, unknown>, caller: Caller): Promise<Reply> {
    let key: string;
    if (body.lease !== undefined) {
      const lease = this.leaseField(body);
      await this.o.backend.readBarrier();
      const k = this.byLease.get(lease);
      if (k === undefined) throw new ServiceApiError('not_found', `lease ${lease} is not live (it expired or was deregistered already)`);
      key = k;
    } else {
      const service = nameField(body, 'service');
      key = serviceKey(service, nameField(body, 'instance'));
      // Without the lease, only a principal that may register the service may remove it.
      this.mayRegister(caller, service);
      await this.o.backend.readBarrier();
    }
    const k = this.known.get(key);
    if (k === undefined) throw new ServiceApiError('not_found', `service instance ${key} is not registered`);
    const r = await this.o.backend.propose({ op: 'delete', bucket: controlBuckets.services, key, revision: k.revision, ts: this.now() });
    if (!r.ok) throw new ServiceApiError('conflict', `${key} changed while it was being removed (${r.message}); retry`);
    this.log.info({ key, by: caller.name }, 'service instance deregistered');
    return { result: 'removed', key };
  }

  private async list(body: Record<string, unknown>): Promise<Reply> {
    const service = body.service === undefined ? undefined : nameField(body, 'service');
    if (body.stale !== true) await this.o.backend.readBarrier();
    const instances = [...this.known.values()].map((k) => k.value).filter((v) => service === undefined || v.service === service)
      .sort((a, b) => (a.service === b.service ? a.instance.localeCompare(b.instance) : a.service.localeCompare(b.service))).map(publicService);
    return { instances };
  }

  /**
   * A long poll over the bucket's change feed (for the CLI, which has no KV client): without `after`, the live
   * instances and the revision they are as of; with it, the joins (PUT) and leaves (DEL) applied after that
   * revision, waiting up to `wait_ms` for the first. A key changed twice in between shows its latest operation,
   * as a KV watch does after a reconnect.
   */
  private async watchRequest(body: Record<string, unknown>): Promise<Reply> {
    const service = body.service === undefined ? undefined : nameField(body, 'service');
    const after = body.after;
    const waitMs = body.wait_ms === undefined ? 10_000 : body.wait_ms;
    if (typeof waitMs !== 'number' || !Number.isInteger(waitMs) || waitMs < 0 || waitMs > 30_000) throw new ServiceApiError('bad_request', '"wait_ms" must be a whole number of ms from 0 to 30000');
    const mine = (key: string): boolean => service === undefined || key.startsWith(`${service}.`);
    if (after === undefined) {
      await this.o.backend.readBarrier();
      const instances = [...this.known.values()].filter((k) => mine(serviceKey(k.value.service, k.value.instance)))
        .map((k) => ({ op: 'PUT', revision: k.revision, ...publicService(k.value) }));
      // The bucket's own last revision (per-bucket stream sequence), which the next WATCH continues from.
      return { changes: instances, revision: this.o.backend.reader.bucketInfo(controlBuckets.services)?.seq ?? 0 };
    }
    if (typeof after !== 'number' || !Number.isSafeInteger(after) || after < 0) throw new ServiceApiError('bad_request', '"after" must be the revision a previous WATCH reply returned');
    const read = (): Record<string, unknown>[] => this.o.backend.reader.changesSince(after, controlBuckets.services).filter((e) => mine(e.key)).map((e) => {
      const v = e.op === 'PUT' ? decodeValue(e.value, validateService) : undefined;
      return { op: e.op === 'PUT' ? 'PUT' : 'DEL', key: e.key, revision: e.revision, ...(v !== undefined ? publicService(v) : {}) };
    });
    let changes = read();
    if (changes.length === 0 && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, waitMs);
        function done(): void {
          clearTimeout(timer);
          off();
          resolve();
        }
        const off = this.onChange(done);
      });
      changes = read();
    }
    const revision = changes.reduce((m, c) => Math.max(m, c.revision as number), after);
    return { changes, revision };
  }

  private readonly changeWaiters = new Set<() => void>();

  private onChange(l: () => void): () => void {
    this.changeWaiters.add(l);
    return () => void this.changeWaiters.delete(l);
  }

  private async show(body: Record<string, unknown>): Promise<Reply> {
    const key = serviceKey(nameField(body, 'service'), nameField(body, 'instance'));
    if (body.stale !== true) await this.o.backend.readBarrier();
    const k = this.known.get(key);
    if (k === undefined) throw new ServiceApiError('not_found', `service instance ${key} is not registered`);
    return { instance: publicService(k.value) };
  }
}

interface Caller {
  readonly name: string;
  readonly admin: boolean;
  readonly services: readonly string[];
}

/** The entry as shown: never the lease id (it is the capability to keep the instance alive or remove it). */
export function publicService(v: ServiceValue): Record<string, unknown> {
  const { lease: _lease, v: _v, ...rest } = v;
  return { ...rest, key: serviceKey(v.service, v.instance), lease_expires: new Date(v.lease_expires).toISOString(), ...(v.registered !== undefined ? { registered: new Date(v.registered).toISOString() } : {}) };
}

function nameField(body: Record<string, unknown>, field: string): string {
  const v = body[field];
  if (typeof v !== 'string' || !nameRe.test(v)) {
    throw new ServiceApiError('bad_request', `"${field}" must be 1..128 of A-Z a-z 0-9 _ = - (it is a token of the key <service>.<instance>), got ${JSON.stringify(typeof v === 'string' ? v.slice(0, 140) : v)}`);
  }
  return v;
}

function textField(body: Record<string, unknown>, field: string): string | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || Buffer.byteLength(v) > serviceLimits.textBytesMax) throw new ServiceApiError('bad_request', `"${field}" must be a string of at most ${serviceLimits.textBytesMax} bytes`);
  return v;
}

function endpointsField(v: unknown): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ServiceApiError('bad_request', '"endpoints" must be a list of subjects');
  if (v.length > serviceLimits.endpointsMax) throw new ServiceApiError('bad_request', `"endpoints" has ${v.length} entries; at most ${serviceLimits.endpointsMax}`);
  return v.map((s, i) => {
    if (typeof s !== 'string' || !isValidSubject(s)) throw new ServiceApiError('bad_request', `"endpoints"[${i}] must be a NATS subject, got ${JSON.stringify(typeof s === 'string' ? s.slice(0, 80) : s)}`);
    if (Buffer.byteLength(s) > serviceLimits.endpointBytesMax) throw new ServiceApiError('bad_request', `"endpoints"[${i}] is ${Buffer.byteLength(s)} bytes; at most ${serviceLimits.endpointBytesMax}`);
    return s;
  });
}

function metadataField(v: unknown): Record<string, string> {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ServiceApiError('bad_request', '"metadata" must be an object of string values');
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > serviceLimits.metadataKeysMax) throw new ServiceApiError('bad_request', `"metadata" has ${entries.length} keys; at most ${serviceLimits.metadataKeysMax}`);
  const out: Record<string, string> = {};
  for (const [k, s] of entries) {
    if (k.length === 0 || Buffer.byteLength(k) > serviceLimits.metadataKeyBytesMax) throw new ServiceApiError('bad_request', `"metadata" keys have 1..${serviceLimits.metadataKeyBytesMax} bytes`);
    if (typeof s !== 'string' || Buffer.byteLength(s) > serviceLimits.metadataValueBytesMax) throw new ServiceApiError('bad_request', `"metadata".${k} must be a string of at most ${serviceLimits.metadataValueBytesMax} bytes`);
    out[k] = s;
  }
  return out;
}

interface InfoResponse {
  readonly endpoints: string[];
  readonly metadata: Record<string, string>;
  readonly version?: string;
  readonly description?: string;
}

/** The micro protocol's INFO response (`io.nats.micro.v1.info_response`, or the experimental one), cut to the bucket's limits. */
function parseInfo(payload: Uint8Array): InfoResponse | undefined {
  let d: unknown;
  try {
    d = JSON.parse(dec.decode(payload));
  } catch {
    return undefined;
  }
  if (typeof d !== 'object' || d === null) return undefined;
  const i = d as Record<string, unknown>;
  // nats.go's experimental micro (≤ 1.22, what Debian ships) answers without `type`, with one endpoint as `subject`.
  const experimental = i.type === undefined && typeof i.name === 'string' && typeof i.id === 'string' && typeof i.subject === 'string';
  if (i.type !== 'io.nats.micro.v1.info_response' && !experimental) return undefined;
  const listed: unknown[] = experimental ? [{ subject: i.subject }] : Array.isArray(i.endpoints) ? i.endpoints : [];
  const endpoints = listed
    .map((e: unknown) => (typeof e === 'object' && e !== null ? (e as Record<string, unknown>).subject : undefined))
    .filter((s): s is string => typeof s === 'string' && isValidSubject(s) && Buffer.byteLength(s) <= serviceLimits.endpointBytesMax)
    .slice(0, serviceLimits.endpointsMax);
  const metadata: Record<string, string> = {};
  if (typeof i.metadata === 'object' && i.metadata !== null) {
    for (const [k, v] of Object.entries(i.metadata as Record<string, unknown>).slice(0, serviceLimits.metadataKeysMax)) {
      if (typeof v === 'string' && k.length > 0 && k.length <= serviceLimits.metadataKeyBytesMax) metadata[k] = v.slice(0, serviceLimits.metadataValueBytesMax);
    }
  }
  const text = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v.slice(0, serviceLimits.textBytesMax) : undefined);
  return { endpoints, metadata, ...(text(i.version) !== undefined ? { version: text(i.version)! } : {}), ...(text(i.description) !== undefined ? { description: text(i.description)! } : {}) };
}
