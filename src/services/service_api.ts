// The SERVICE verbs (`$UB.API.SERVICE.*`): REGISTER, KEEPALIVE, DEREGISTER, LIST, SHOW and WATCH, with who may ask
// (a signed envelope's key, or the connection's principal, and the roles' `services` grants). They read presence's
// table of live instances and ask it for keep-alives and change notices (PresenceTable); presence.ts keeps the table,
// its expiry and the leader relay, and routes the requests here.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { KvResult } from '../../store/index.js';
import type { Principal } from '../auth/index.js';
import { builtinAdminRole } from '../auth/index.js';
import {
  controlBuckets, decodeValue, encodeValue, EnvelopeVerifier, schemaVersion, serviceKey, validateService, type ServiceValue,
} from '../control/index.js';
import type { ServicePresenceOptions } from './presence.js';
import { endpointsField, metadataField, nameField, publicService, ServiceApiError, serviceLimits, textField } from './service_fields.js';

export const serviceApiPrefix = '$UB.API.SERVICE.';

type Reply = Record<string, unknown>;
const dec = new TextDecoder();
const leaseRe = /^[0-9a-f]{32}$/;

/** A live entry presence applied: its value and the revision a compare-and-set delete names. */
export interface Known {
  readonly value: ServiceValue;
  readonly revision: number;
}

/** What the SERVICE verbs read of presence's table, and what they ask of it. */
export interface PresenceTable {
  /** Every live entry this node applied, by key, and the lease index over them. */
  readonly known: ReadonlyMap<string, Known>;
  readonly byLease: ReadonlyMap<string, string>;
  /** Renews a lease (here when leading, else through the leader relay); the TTL in ms, undefined when not live. */
  keepAlive(lease: string): Promise<number | undefined>;
  /** Calls `listener` at the next applied change of the bucket; returns the unsubscribe. */
  onChange(listener: () => void): () => void;
}

interface Caller {
  readonly name: string;
  readonly admin: boolean;
  readonly services: readonly string[];
}

export class ServiceRequests {
  private readonly verifier: EnvelopeVerifier;

  constructor(
    private readonly o: ServicePresenceOptions,
    private readonly log: Logger,
    private readonly now: () => number,
    private readonly table: PresenceTable,
  ) {
    this.verifier = new EnvelopeVerifier(this.now);
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
    const cur = this.table.known.get(key);
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
    const ms = await this.table.keepAlive(lease);
    if (ms === undefined) throw new ServiceApiError('not_found', `lease ${lease} is not live (it expired or was deregistered); register the instance again`);
    return { result: 'updated', lease, ttl: ms / 1000 };
  }

  private async deregister(body: Record<string, unknown>, caller: Caller): Promise<Reply> {
    let key: string;
    if (body.lease !== undefined) {
      const lease = this.leaseField(body);
      await this.o.backend.readBarrier();
      const k = this.table.byLease.get(lease);
      if (k === undefined) throw new ServiceApiError('not_found', `lease ${lease} is not live (it expired or was deregistered already)`);
      key = k;
    } else {
      const service = nameField(body, 'service');
      key = serviceKey(service, nameField(body, 'instance'));
      // Without the lease, only a principal that may register the service may remove it.
      this.mayRegister(caller, service);
      await this.o.backend.readBarrier();
    }
    const k = this.table.known.get(key);
    if (k === undefined) throw new ServiceApiError('not_found', `service instance ${key} is not registered`);
    const r = await this.o.backend.propose({ op: 'delete', bucket: controlBuckets.services, key, revision: k.revision, ts: this.now() });
    if (!r.ok) throw new ServiceApiError('conflict', `${key} changed while it was being removed (${r.message}); retry`);
    this.log.info({ key, by: caller.name }, 'service instance deregistered');
    return { result: 'removed', key };
  }

  private async list(body: Record<string, unknown>): Promise<Reply> {
    const service = body.service === undefined ? undefined : nameField(body, 'service');
    if (body.stale !== true) await this.o.backend.readBarrier();
    const instances = [...this.table.known.values()].map((k) => k.value).filter((v) => service === undefined || v.service === service)
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
      const instances = [...this.table.known.values()].filter((k) => mine(serviceKey(k.value.service, k.value.instance)))
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
        const off = this.table.onChange(done);
      });
      changes = read();
    }
    const revision = changes.reduce((m, c) => Math.max(m, c.revision as number), after);
    return { changes, revision };
  }

  private async show(body: Record<string, unknown>): Promise<Reply> {
    const key = serviceKey(nameField(body, 'service'), nameField(body, 'instance'));
    if (body.stale !== true) await this.o.backend.readBarrier();
    const k = this.table.known.get(key);
    if (k === undefined) throw new ServiceApiError('not_found', `service instance ${key} is not registered`);
    return { instance: publicService(k.value) };
  }
}
