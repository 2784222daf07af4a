// The cluster side of the control plane on a Raft node:
// - the `config` bucket holds the cluster posture (bus-auth, client-tls, store, kv-replicas), created once by
//   the first leader (create-if-absent); every node compares its own posture with it and refuses service with
//   the reason when they differ (the route handshake compares the digest of the same fields: postureDigest());
// - the `nodes` bucket: every node records its own identity, URLs and version; the leader records the slots it
//   has met (identity proven in the route handshake) and keeps each record's voter/learner role current; a
//   removed member's record is deleted. The admin API accepts the identities found there;
// - `$UB.API.CLUSTER.{STATUS,TRANSFER,ADD,REMOVE}`. Membership changes are replicated intents: the
//   `removed-slots` config key lists the slots an operator removed; whichever node leads removes them from (or,
//   once the key no longer lists them, re-adds them to) the Raft configuration. So a follower needs no
//   forwarding: its write of the key goes through the leader like any other, and so does a transfer request.
import type { Logger } from 'pino';
import { encodePublicKey } from '../auth/index.js';
import { parseRoute } from '../../transport/index.js';
import type { KvBackend } from '../kv/backend.js';
import type { ClusterNode, ClusterPosture } from '../node/index.js';
import { AdminError, type AdminResult } from './admin_request.js';
import type { ControlApi } from './api.js';
import { auditKey, controlBuckets, decodeValue, encodeValue, schemaVersion, validateAudit, validateConfig, validateNode, type AuditValue, type ConfigValue, type NodeValue } from './buckets.js';

/** Keys of the `config` bucket written from the posture (postureDigest() covers the first three). */
export const postureKeys = { busAuth: 'bus-auth', clientTls: 'client-tls', store: 'store', kvReplicas: 'kv-replicas' } as const;
export const removedSlotsKey = 'removed-slots';
/**
 * Slots appended by `cluster add NAME URL` for an address outside the bootstrap table, in order:
 * `name=host:port,name=host:port`. Append-only (slot ids are never renumbered); every node grows its slot table
 * from it (ClusterNode.slotTable.setAddedSlots) when it applies the write, so the log orders it before the leader's
 * learner conf change for the new slot.
 */
export const addedSlotsKey = 'added-slots';

/** The same names `--server-name` accepts (and never `=` or `,`, which the added-slots value uses). */
const serverNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function encodeAddedSlots(list: readonly { name: string; address: string }[]): string {
  return list.map((x) => `${x.name}=${x.address}`).join(',');
}

export function decodeAddedSlots(v: string): { name: string; address: string }[] {
  if (v === '') return [];
  return v.split(',').map((e) => {
    const i = e.indexOf('=');
    return { name: e.slice(0, i), address: e.slice(i + 1) };
  }).filter((x) => serverNamePattern.test(x.name) && x.address !== '');
}

export interface ClusterControlOptions {
  readonly node: ClusterNode;
  readonly api: ControlApi;
  readonly backend: KvBackend;
  readonly logger: Logger;
  readonly posture: ClusterPosture;
  readonly version: string;
  /** This node's client and HTTP URLs (known once the listeners are up). */
  readonly urls: () => { readonly client?: string; readonly http?: string };
  /** Resolves once the six buckets exist. */
  readonly ready: Promise<void>;
  /**
   * The bus authenticator's internal-identity keys (read at every connect): the identities of the `nodes`
   * bucket are kept in it, so another node's identity file connects here too. Keys present at attach stay.
   */
  readonly trustedKeys?: string[];
  /** How often the node reconciles `nodes`/`config` (default 1000 ms). */
  readonly periodMs?: number;
}

export interface ClusterControl {
  /** One reconcile round now (tests; the timer runs them anyway). */
  sync(): Promise<void>;
  stop(): void;
}

const routeUrl = (address: string): string => `nats-route://${address}`;

/**
 * `nats-route://h:p` or `h:p` → `h:p` (lower-case host, IPv6 bracketed), as the slot address list spells it; the
 * same parser as --routes, so a URL accepted here is one the new node's peers can dial.
 */
export function normalizeRouteUrl(url: string): string {
  let r;
  try {
    r = parseRoute(url.trim());
  } catch (e) {
    throw new AdminError('bad_request', `URL ${JSON.stringify(url)}: ${(e as Error).message.replace(/^--routes entry "[^"]*" /, '')}`);
  }
  const host = r.host.toLowerCase();
  return host.includes(':') ? `[${host}]:${r.port}` : `${host}:${r.port}`;
}

export function attachClusterControl(o: ClusterControlOptions): ClusterControl {
  const { node, backend, logger } = o;
  const log = logger.child({ component: 'cluster-control' });
  const period = o.periodMs ?? 1000;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  const joined = Date.now();

  const configValue = (key: string): { value: ConfigValue; revision: number } | undefined => {
    const e = backend.reader.get(controlBuckets.config, key);
    if (e === undefined || e.op !== 'PUT') return undefined;
    const value = decodeValue(e.value, validateConfig, (why) => log.error({ key, why }, 'config bucket value fails its schema'));
    return value === undefined ? undefined : { value, revision: e.revision };
  };
  const removedSlots = (): number[] => {
    const v = configValue(removedSlotsKey)?.value.value;
    if (typeof v !== 'string' || v === '') return [];
    return v.split(',').map(Number).filter((n) => Number.isSafeInteger(n) && n > 0);
  };
  const ownPosture = (): Record<string, string | number | boolean> => ({
    [postureKeys.busAuth]: o.posture.busAuth,
    [postureKeys.clientTls]: o.posture.clientTls,
    [postureKeys.store]: o.posture.store,
    [postureKeys.kvReplicas]: node.kvReplicas,
  });

  /** Compares this node's posture with the `config` bucket; refuses the node with the reason when they differ. */
  const checkPosture = (): void => {
    const diffs: string[] = [];
    // R may change on a running cluster (`cluster kv-replicas`): a node adopts the cluster's value.
    const r = configValue(postureKeys.kvReplicas)?.value.value;
    if (typeof r === 'number' && r !== node.kvReplicas) {
      try {
        node.slotTable.setKvReplicas(r);
      } catch (err) {
        diffs.push(`kv-replicas ${r} cannot apply here: ${(err as Error).message}`);
      }
    }
    for (const [key, mine] of Object.entries(ownPosture())) {
      const theirs = configValue(key)?.value.value;
      if (theirs !== undefined && theirs !== mine) diffs.push(`${key} is ${String(theirs)} in the cluster, ${String(mine)} on this node`);
    }
    node.setRefusal(diffs.length === 0 ? undefined
      : `refused: this node's posture differs from the cluster's (config bucket): ${diffs.join('; ')}; restart it with the cluster's flags`);
  };
  const addedSlots = (): { name: string; address: string }[] => {
    const v = configValue(addedSlotsKey)?.value.value;
    return typeof v === 'string' ? decodeAddedSlots(v) : [];
  };
  const applyConfig = (): void => {
    // The table first: a removed-slots entry may name an added slot.
    node.slotTable.setAddedSlots(addedSlots());
    node.membership.setRemovedSlots(removedSlots());
    checkPosture();
  };
  const unwatch = backend.watch(controlBuckets.config, 0, () => applyConfig());
  // Node identities from the `nodes` bucket join the authenticator's internal keys (and leave with the record).
  const fixedKeys = new Set(o.trustedKeys ?? []);
  const syncTrusted = (): void => {
    const keys = o.trustedKeys;
    if (keys === undefined) return;
    const recorded = new Set<string>();
    for (const e of backend.reader.changesSince(0, controlBuckets.nodes)) {
      const cur = nodeRecord(e.key);
      if (cur !== undefined) recorded.add(cur.value.identity);
    }
    for (let i = keys.length - 1; i >= 0; i--) if (!fixedKeys.has(keys[i]!) && !recorded.has(keys[i]!)) keys.splice(i, 1);
    for (const k of recorded) if (!keys.includes(k)) keys.push(k);
  };
  const unwatchNodes = backend.watch(controlBuckets.nodes, 0, () => syncTrusted());

  const isLeader = (): boolean => node.status.selfReport().state === 'leader';
  function nodeRecord(name: string): { value: NodeValue; revision: number } | undefined {
    const e = backend.reader.get(controlBuckets.nodes, name);
    if (e === undefined || e.op !== 'PUT') return undefined;
    const value = decodeValue(e.value, validateNode, (why) => log.error({ name, why }, 'nodes bucket value fails its schema'));
    return value === undefined ? undefined : { value, revision: e.revision };
  }
  const write = async (name: string, value: NodeValue, revision: number | undefined): Promise<void> => {
    validateNode(value);
    const ts = Date.now();
    const r = await backend.propose(revision === undefined
      ? { op: 'create', bucket: controlBuckets.nodes, key: name, value: encodeValue(value), ts }
      : { op: 'update', bucket: controlBuckets.nodes, key: name, value: encodeValue(value), revision, ts });
    // A lost race (another node wrote first) is settled at the next round.
    if (!r.ok) log.debug({ name, code: r.code }, `nodes record not written: ${r.message}`);
  };
  const same = (a: NodeValue, b: NodeValue): boolean => JSON.stringify(a) === JSON.stringify(b);

  /**
   * A node that `cluster recover --force-new-cluster` made a cluster of one records that in the audit bucket once it
   * leads (the only node that can, then). The key is derived from the recovery's incarnation and written with
   * `create`, so a crash between the commit and cluster.json's `audited` cannot record it twice.
   */
  const auditRecovery = async (ts: number): Promise<void> => {
    const r = node.slotTable.pendingRecoveryAudit();
    if (r === undefined) return;
    const value: AuditValue = {
      v: schemaVersion, ts, who: `node:${node.serverName}`, what: 'cluster.recover', target: node.clusterName, result: 'ok',
      detail: {
        forceNewCluster: true, incarnation: r.incarnation, recoveredAt: r.at, keptIndex: r.index, knownCommit: r.commit,
        previousSlot: r.previousSlot, previousVoters: [...r.previousVoters], reachableAtRecovery: [...r.reachable], quorumLostFlag: r.forced,
      },
    };
    validateAudit(value);
    const key = auditKey(r.at, `recover-${r.incarnation.slice(r.incarnation.indexOf('-') + 1)}`);
    const res = await backend.propose({ op: 'create', bucket: controlBuckets.audit, key, value: encodeValue(value), ts });
    if (res.ok || backend.reader.get(controlBuckets.audit, key) !== undefined) {
      node.slotTable.markRecoveryAudited();
      log.warn({ key, incarnation: r.incarnation }, 'recorded "cluster recover --force-new-cluster" in the audit bucket');
    }
  };

  const syncOnce = async (): Promise<void> => {
    applyConfig();
    const conf = node.membership.current();
    if (conf === undefined || node.id === undefined) return;
    const roleOf = (id: number): 'voter' | 'learner' | undefined => conf.voters.includes(id) ? 'voter' : conf.learners.includes(id) ? 'learner' : undefined;
    const ts = Date.now();
    if (isLeader()) {
      // The first leader writes the posture; later leaders find it (create is refused, which is fine).
      for (const [key, value] of Object.entries(ownPosture())) {
        if (configValue(key) !== undefined) continue;
        const v: ConfigValue = { v: schemaVersion, value, updated: ts, by: `node:${node.serverName}` };
        await backend.propose({ op: 'create', bucket: controlBuckets.config, key, value: encodeValue(v), ts });
      }
      await auditRecovery(ts);
      const removed = new Set(removedSlots());
      for (const s of node.slots()) {
        if (s.name === undefined || s.identity === undefined) continue;
        const existing = nodeRecord(s.name);
        const role = roleOf(s.id);
        if (removed.has(s.id) && role === undefined) {
          if (existing) await backend.propose({ op: 'delete', bucket: controlBuckets.nodes, key: s.name, revision: existing.revision, ts });
          continue;
        }
        if (role === undefined) continue;
        const identity = encodePublicKey('server', Buffer.from(s.identity, 'hex'));
        const address = s.id === node.id && s.address === 'self' ? `${node.routeAddress().host}:${node.routeAddress().port}` : s.address;
        const base: NodeValue = existing?.value ?? { v: schemaVersion, name: s.name, identity, urls: { route: routeUrl(address) }, role, version: '', joined: ts };
        const want: NodeValue = { ...base, identity, role, urls: { ...base.urls, route: routeUrl(address) } };
        if (existing === undefined || !same(existing.value, want)) await write(s.name, want, existing?.revision);
      }
    }
    // Every node: its own client/HTTP URLs and version (only it knows them). Not while catching up: the local
    // view is stale (a node that lost its data would propose creating a record that exists, and wait on it).
    if (!node.status.isCurrent()) return;
    const mine = nodeRecord(node.serverName);
    const role = roleOf(node.id);
    if (role === undefined) return;
    const urls = o.urls();
    const self = node.slots().find((s) => s.id === node.id);
    const address = self === undefined || self.address === 'self' ? `${node.routeAddress().host}:${node.routeAddress().port}` : self.address;
    const want: NodeValue = {
      v: schemaVersion, name: node.serverName, identity: node.identity.publicKey,
      urls: { route: routeUrl(address), ...(urls.client !== undefined ? { client: urls.client } : {}), ...(urls.http !== undefined ? { http: urls.http } : {}) },
      role: mine?.value.role ?? role, version: o.version, joined: mine?.value.joined ?? joined,
    };
    if (mine === undefined || !same(mine.value, want)) await write(node.serverName, want, mine?.revision);
  };

  const sync = (): Promise<void> => {
    running ??= syncOnce().catch((err: unknown) => log.debug({ err }, 'cluster reconcile round failed; retried')).finally(() => { running = undefined; });
    return running;
  };
  const loop = (): void => {
    if (stopped) return;
    void sync().then(() => {
      if (!stopped) timer = setTimeout(loop, period);
    });
  };
  void o.ready.then(loop);

  registerClusterApi(o, removedSlots, configValue, applyConfig, addedSlots);
  return {
    sync,
    stop() {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
      unwatch();
      unwatchNodes();
    },
  };
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

function registerClusterApi(o: ClusterControlOptions, removedSlots: () => number[],
  configValue: (key: string) => { value: ConfigValue; revision: number } | undefined, applyConfig: () => void,
  addedSlots: () => { name: string; address: string }[]): void {
  const { node, api, backend } = o;
  const slotByName = (name: string): { id: number; address: string; name: string | undefined } => {
    const s = node.slots().find((x) => x.name === name);
    if (s === undefined) {
      const known = node.slots().map((x) => x.name ?? `slot ${x.id}`).join(', ');
      throw new AdminError('not_found', `no cluster node named ${name} (known: ${known})`);
    }
    return s;
  };
  const nameOf = (body: Record<string, unknown>, required: boolean): string | undefined => {
    const v = body.name;
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'string' || v === '') throw new AdminError('bad_request', '"name" must be a node\'s server name');
    return v;
  };
  const setRemoved = async (ids: number[], by: string): Promise<void> => {
    const cur = configValue(removedSlotsKey);
    const ts = Date.now();
    const value = encodeValue({ v: schemaVersion, value: [...new Set(ids)].sort((a, b) => a - b).join(','), updated: ts, by } satisfies ConfigValue);
    const r = await backend.propose(cur === undefined
      ? { op: 'create', bucket: controlBuckets.config, key: removedSlotsKey, value, ts }
      : { op: 'update', bucket: controlBuckets.config, key: removedSlotsKey, value, revision: cur.revision, ts });
    if (!r.ok) throw new AdminError('conflict', `another membership change raced this one (${r.message}); retry`);
    applyConfig();
  };
  const members = (): { voters: readonly number[]; learners: readonly number[] } => {
    const m = node.membership.current();
    if (m === undefined) throw new AdminError('unavailable', `node ${node.serverName} has not joined the cluster yet (${JSON.stringify(node.status.health())}); retry`);
    return m;
  };

  api.register('CLUSTER', 'STATUS', async () => {
    const s = await node.status.clusterStatus();
    const removed = new Set(removedSlots());
    return { status: { ...s, removed: s.members.filter((m) => removed.has(m.id)).map((m) => m.name ?? `slot ${m.id}`) } };
  });

  api.register('CLUSTER', 'TRANSFER', async (body, ctx) => {
    const name = nameOf(body, false);
    return api.audited(ctx, 'cluster.transfer', name ?? '*', async () => {
      await backend.readBarrier();
      const m = members();
      const lead = node.status.selfReport().lead;
      if (lead === 0) throw new AdminError('unavailable', 'no leader at the moment (election in progress); retry');
      let target: number;
      if (name !== undefined) {
        target = slotByName(name).id;
        if (!m.voters.includes(target)) throw new AdminError('bad_request', `${name} is not a voter (only voters lead; learners are promoted when caught up)`);
        if (target === lead) return { result: 'unchanged' as AdminResult, leader: name };
      } else {
        // The most caught-up reachable voter other than the leader, from every member's own report.
        const st = await node.status.clusterStatus();
        const best = st.members.filter((x) => x.reachable && x.id !== lead && m.voters.includes(x.id)).sort((a, b) => (b.applied ?? 0) - (a.applied ?? 0))[0];
        if (best === undefined) throw new AdminError('unavailable', 'no other reachable voter to hand leadership to');
        target = best.id;
      }
      node.membership.transferLeadership(target);
      const moved = await until(() => node.status.selfReport().lead === target, 5000);
      if (!moved) throw new AdminError('unavailable', `leadership did not move to ${node.slots()[target - 1]?.name ?? `slot ${target}`} within 5 s (is it caught up and reachable?); retry`);
      return { result: 'updated' as AdminResult, leader: node.slots()[target - 1]?.name ?? `slot ${target}` };
    });
  });

  api.register('CLUSTER', 'REPLICAS', async (body, ctx) => {
    const r = body.replicas;
    if (typeof r !== 'number' || !Number.isSafeInteger(r) || r < 1) throw new AdminError('bad_request', '"replicas" must be a whole number ≥ 1');
    return api.audited(ctx, 'cluster.kv-replicas', String(r), async () => {
      await backend.readBarrier();
      const size = node.slots().length;
      if (r > size) throw new AdminError('bad_request', `--kv-replicas ${r} is greater than the cluster size ${size}`);
      const cur = configValue(postureKeys.kvReplicas);
      const m = members();
      if (cur?.value.value === r && m.voters.length === r) return { result: 'unchanged' as AdminResult, voters: m.voters.length };
      const ts = Date.now();
      const value = encodeValue({ v: schemaVersion, value: r, updated: ts, by: ctx.who } satisfies ConfigValue);
      const res = await backend.propose(cur === undefined
        ? { op: 'create', bucket: controlBuckets.config, key: postureKeys.kvReplicas, value, ts }
        : { op: 'update', bucket: controlBuckets.config, key: postureKeys.kvReplicas, value, revision: cur.revision, ts });
      if (!res.ok) throw new AdminError('conflict', `another change of kv-replicas raced this one (${res.message}); retry`);
      applyConfig();
      // One configuration change per leader round (about a second each): bounded wait for the voter count.
      const done = await until(() => node.membership.current()?.voters.length === r, 5000 + 3000 * Math.abs(r - m.voters.length));
      if (!done) throw new AdminError('unavailable', `kv-replicas is ${r} but the cluster has ${node.membership.current()?.voters.length ?? '?'} voters so far (learners are promoted only when connected and caught up); check "membershipd cluster status"`);
      return { result: 'updated' as AdminResult, voters: r };
    });
  });

  api.register('CLUSTER', 'REMOVE', async (body, ctx) => {
    const name = nameOf(body, true)!;
    return api.audited(ctx, 'cluster.remove', name, async () => {
      await backend.readBarrier();
      const slot = slotByName(name);
      const m = members();
      const removed = removedSlots();
      const isMember = m.voters.includes(slot.id) || m.learners.includes(slot.id);
      if (removed.includes(slot.id) && !isMember) return { result: 'unchanged' as AdminResult };
      if (m.voters.includes(slot.id) && m.voters.length === 1) throw new AdminError('bad_request', `${name} is the only voter; removing it would leave the cluster without a quorum`);
      await setRemoved([...removed, slot.id], ctx.who);
      const done = await until(() => {
        const now = node.membership.current();
        return now !== undefined && !now.voters.includes(slot.id) && !now.learners.includes(slot.id);
      }, 10_000);
      if (!done) throw new AdminError('unavailable', `${name} is marked removed but the leader has not applied the configuration change within 10 s; it will — check "membershipd cluster status"`);
      return { result: 'removed' as AdminResult, voters: node.membership.current()!.voters.length };
    });
  });

  api.register('CLUSTER', 'ADD', async (body, ctx) => {
    const name = nameOf(body, true)!;
    if (!serverNamePattern.test(name)) throw new AdminError('bad_request', `${JSON.stringify(name)} is not a valid server name (1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit)`);
    if (typeof body.url !== 'string') throw new AdminError('bad_request', '"url" must be the node\'s route URL (host:port of its --cluster-port)');
    const address = normalizeRouteUrl(body.url);
    return api.audited(ctx, 'cluster.add', name, async () => {
      await backend.readBarrier();
      const slots = node.slots();
      const m = members();
      const slot = slots.find((s) => s.address === address);
      if (slot === undefined) return addNewSlot(name, address, ctx.who);
      if (slot.name !== undefined && slot.name !== name) throw new AdminError('conflict', `${address} is bound to node ${slot.name}, not ${name}`);
      const removed = removedSlots();
      if (!removed.includes(slot.id) && (m.voters.includes(slot.id) || m.learners.includes(slot.id))) {
        return { result: 'unchanged' as AdminResult, role: m.voters.includes(slot.id) ? 'voter' : 'learner', slot: slot.id, ...startHint(name, slot.id, address) };
      }
      if (removed.includes(slot.id)) await setRemoved(removed.filter((id) => id !== slot.id), ctx.who);
      // The leader adds it as a learner; it is promoted once caught up while there are fewer voters than R.
      const added = await until(() => {
        const now = node.membership.current();
        return now !== undefined && (now.voters.includes(slot.id) || now.learners.includes(slot.id));
      }, 10_000);
      if (!added) throw new AdminError('unavailable', `${name} is no longer marked removed but the leader has not added it within 10 s (is it running and connected?); check "membershipd cluster status"`);
      await until(() => {
        const now = node.membership.current()!;
        return now.voters.includes(slot.id) || now.voters.length >= node.kvReplicas;
      }, 10_000);
      const now = node.membership.current()!;
      return { result: 'created' as AdminResult, role: now.voters.includes(slot.id) ? 'voter' : 'learner' };
    });
  });

  /** What the operator starts on the new node's host (the cluster's other flags as on every node). */
  const startHint = (name: string, id: number, address: string): { start: { flags: string[]; routes: string[] } } => {
    const removed = new Set(removedSlots());
    // A cluster that formed as one node names its own slot 'self' (it had no --routes): the node answering is that
    // node then, and its listener address is the route (unless it listens on every interface).
    const own = node.routeAddress();
    const selfAddress = own.host === '0.0.0.0' || own.host === '::' ? undefined : (own.host.includes(':') ? `[${own.host}]:${own.port}` : `${own.host}:${own.port}`);
    const routes = node.slots().filter((s) => s.id !== id && !removed.has(s.id))
      .map((s) => (s.address === 'self' ? selfAddress : s.address)).filter((a): a is string => a !== undefined);
    const port = address.slice(address.lastIndexOf(':') + 1);
    return {
      start: {
        routes,
        flags: ['--server-name', name, '--cluster-port', port, '--routes', routes.join(','), '--initial-cluster-state', 'existing'],
      },
    };
  };

  /**
   * A node at an address outside the slot table (like etcd's `member add`): the address is appended to the replicated
   * `added-slots` list (never renumbering a slot), so every node learns slot N+1 and a cluster of N+1; the leader
   * adds it as a learner at once (a learner never counts for quorum, so an added node that is not running yet costs
   * nothing). The node is then started with --initial-cluster-state existing: it learns its slot from its peers,
   * catches up (by snapshot when the log is compacted) and is promoted while there are fewer voters than R.
   */
  const addNewSlot = async (name: string, address: string, who: string): Promise<Record<string, unknown> & { result: AdminResult }> => {
    const taken = node.slots().find((s) => s.name === name);
    if (taken !== undefined) {
      const removed = removedSlots().includes(taken.id);
      throw new AdminError('conflict', `node name ${name} already belongs to slot ${taken.id} at ${taken.address}${removed ? ' (removed)' : ''}; `
        + (removed ? `bring it back at its own address ("membershipd cluster add ${name} ${taken.address}") or give the new node another name` : 'give the new node another name'));
    }
    const cur = configValue(addedSlotsKey);
    const list = addedSlots();
    if (list.some((x) => x.name === name || x.address === address)) {
      // Written but not yet applied to this node's table: the same add raced itself; the caller retries.
      throw new AdminError('unavailable', `${name} at ${address} is being added; retry to see the result`);
    }
    const ts = Date.now();
    const value = encodeValue({ v: schemaVersion, value: encodeAddedSlots([...list, { name, address }]), updated: ts, by: who } satisfies ConfigValue);
    const r = await backend.propose(cur === undefined
      ? { op: 'create', bucket: controlBuckets.config, key: addedSlotsKey, value, ts }
      : { op: 'update', bucket: controlBuckets.config, key: addedSlotsKey, value, revision: cur.revision, ts });
    if (!r.ok) throw new AdminError('conflict', `another membership change raced this one (${r.message}); nothing was added — retry`);
    applyConfig();
    const slot = node.slots().find((s) => s.address === address);
    if (slot === undefined) throw new AdminError('unavailable', `${address} was recorded but this node's slot table did not grow (see its log); check "membershipd cluster status"`);
    const added = await until(() => {
      const now = node.membership.current();
      return now !== undefined && (now.voters.includes(slot.id) || now.learners.includes(slot.id));
    }, 10_000);
    if (!added) throw new AdminError('unavailable', `${name} has slot ${slot.id} but the leader has not added it as a learner within 10 s; it will — check "membershipd cluster status"`);
    return { result: 'created' as AdminResult, role: 'learner', slot: slot.id, address, slots: node.slots().length, ...startHint(name, slot.id, address) };
  };
}
