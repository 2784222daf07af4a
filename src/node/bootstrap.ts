// Bootstrap in any start order (DESIGN.md "Raft meta-group"). Raft ids are slots: the distinct route
// addresses of the whole cluster, sorted, numbered 1..N. Every node knows N before meeting anyone
// (routes + self, minus a self-route), so every node bootstraps the identical initial voter set
// [1..R]; only "which slot am I" needs this node's own address as the peers spell it:
//  - routes listing all nodes: the route whose port is our cluster port on a local address is us;
//  - routes listing only the others: the first peer's hello carries its routes, which list us; our
//    address is the one entry of theirs that is not in ours (union = the full list, checked to be N).
// The slot, N, R and the address list are persisted in <data-dir>/cluster.json, so a restart rejoins
// with the same id without meeting anyone; peers' identities bound to slots are recorded there too.
import { lookup } from 'node:dns/promises';
import { closeSync, fsyncSync, openSync, readdirSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { parseRoutes, type RouteAddress } from '../../transport/index.js';
import { NodeError, NodeErrorCode } from './errors.js';

export function addressKey(r: RouteAddress): string {
  const host = r.host.toLowerCase();
  return isIP(host) === 6 ? `[${host}]:${r.port}` : `${host}:${r.port}`;
}

/** Distinct route addresses in canonical `host:port` form, in the given order. */
export function normalizeRoutes(routes: string | readonly string[]): { list: RouteAddress[]; keys: string[] } {
  const parsed = parseRoutes(typeof routes === 'string' ? routes : routes.join(','));
  const seen = new Set<string>();
  const list: RouteAddress[] = [];
  for (const r of parsed) {
    const k = addressKey(r);
    if (seen.has(k)) continue;
    seen.add(k);
    list.push(r);
  }
  return { list, keys: list.map(addressKey) };
}

const wildcard = new Set(['', '0.0.0.0', '::', '[::]']);

/** Addresses this host answers on for the given bind address. */
function localAddresses(bind: string): Set<string> {
  if (!wildcard.has(bind)) return new Set([bind.toLowerCase()]);
  const out = new Set<string>(['127.0.0.1', '::1']);
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(a.address.toLowerCase());
  return out;
}

/** The route entries that reach this node itself (our cluster port on one of our addresses). */
export async function findSelfRoutes(routes: readonly RouteAddress[], bind: string, port: number): Promise<string[]> {
  const local = localAddresses(bind);
  const out: string[] = [];
  for (const r of routes) {
    if (r.port !== port || port === 0) continue;
    let addrs: string[];
    if (isIP(r.host) !== 0) addrs = [r.host.toLowerCase()];
    else {
      try {
        addrs = (await lookup(r.host, { all: true })).map((a) => a.address.toLowerCase());
      } catch {
        addrs = [];
      }
    }
    if (addrs.some((a) => local.has(a))) out.push(addressKey(r));
  }
  return out;
}

export interface SlotBinding {
  readonly name: string;
  /** Hex of the Ed25519 identity key. */
  readonly key: string;
}

/** <data-dir>/cluster.json. */
export interface ClusterFile {
  readonly version: 1;
  readonly cluster: string;
  readonly server: string;
  readonly id: number;
  readonly addresses: readonly string[];
  readonly voters: number;
  readonly bindings: Readonly<Record<string, SlotBinding>>;
  /**
   * Slots at bootstrap (the N every node derived from --routes): the route handshake compares it, so it never
   * changes while `cluster add` appends slots. Absent in files written before slots could be appended: then
   * `addresses.length` (tables never grew before).
   */
  readonly initial?: number;
  /** Server names an operator gave appended slots (`cluster add NAME URL`), by slot id. */
  readonly names?: Readonly<Record<string, string>>;
  /** This node joined a running cluster (--initial-cluster-state existing): its Raft never bootstraps an init entry. */
  readonly joined?: boolean;
  /**
   * This node lost its data (it started with an empty store while a peer had its slot bound) and has not caught up
   * yet: Raft runs with `recovering` (no vote, counts for no quorum) and no init entry. Cleared once caught up.
   */
  readonly recovering?: boolean;
  /**
   * The cluster incarnation: absent for a cluster as it formed; set by `cluster recover --force-new-cluster` (a new
   * value each time) and adopted by every node that joins afterwards. The route handshake refuses a peer with data of
   * another incarnation (transport/handshake.ts), so the old members cannot rejoin with their old logs.
   */
  readonly incarnation?: string;
  /** Set by `cluster recover`; the leader records it in the audit bucket, then `audited` becomes true. */
  readonly recovered?: RecoveryRecord;
}

/** An incarnation as the route hello carries it (transport/frame.ts checks the same). */
export const incarnationPattern = /^[\x21-\x7e]{1,64}$/;

/** What `cluster recover --force-new-cluster` did to this data directory (cluster.json `recovered`). */
export interface RecoveryRecord {
  readonly incarnation: string;
  /** ms since the epoch. */
  readonly at: number;
  /** The Raft index the kept state is at (the last entry of the survivor's log). */
  readonly index: number;
  /** The commit index the survivor knew; entries after it were kept (see RUNBOOK "Quorum loss"). */
  readonly commit: number;
  readonly previousSlot: number;
  /** The voters of the old configuration, by `name@address`. */
  readonly previousVoters: readonly string[];
  /** Old voters the probe found listening (only non-empty with --i-know-a-quorum-is-lost). */
  readonly reachable: readonly string[];
  readonly forced: boolean;
  readonly audited?: boolean;
}

/** The handshake's cluster size of a persisted table (see ClusterFile.initial). */
export function initialSize(f: ClusterFile): number {
  return f.initial ?? f.addresses.length;
}

/** A slot appended by `cluster add`: the name the operator gave and the route address (`host:port`). */
export interface AddedSlot {
  readonly name: string;
  readonly address: string;
}

/**
 * The slot table grown by the replicated list of added slots (append-only: slot initial+k+1 is added[k]).
 * Returns the new table, the same object when nothing is new, or a reason when the list contradicts the
 * table (an entry already appended differs: slots are never renumbered).
 */
export function appendSlots(f: ClusterFile, added: readonly AddedSlot[]): ClusterFile | string {
  const base = initialSize(f);
  const have = f.addresses.length - base;
  for (let k = 0; k < Math.min(have, added.length); k++) {
    const id = base + k + 1;
    if (f.addresses[id - 1] !== added[k]!.address) {
      return `slot ${id} is ${f.addresses[id - 1]} here but ${added[k]!.address} in the replicated list of added slots`;
    }
  }
  if (added.length <= have) return f;
  const addresses = [...f.addresses];
  const names: Record<string, string> = { ...f.names };
  for (let k = have; k < added.length; k++) {
    if (addresses.includes(added[k]!.address)) return `added slot ${added[k]!.name} at ${added[k]!.address}: the address is already slot ${addresses.indexOf(added[k]!.address) + 1}`;
    addresses.push(added[k]!.address);
    names[String(base + k + 1)] = added[k]!.name;
  }
  return { ...f, initial: base, addresses, names };
}

/** Whether two slot tables agree on every slot both know (one may have applied more `cluster add`s). */
export function tablesAgree(a: readonly string[], b: readonly string[]): boolean {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function clusterFilePath(dataDir: string): string {
  return join(dataDir, 'cluster.json');
}

export function readClusterFile(dataDir: string): ClusterFile | null {
  const path = clusterFilePath(dataDir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new NodeError(NodeErrorCode.config, `cannot read ${path}: ${(e as Error).message}`, false, { cause: e });
  }
  let v: ClusterFile;
  try {
    v = JSON.parse(text) as ClusterFile;
  } catch (e) {
    throw new NodeError(NodeErrorCode.config, `${path} is not valid JSON (${(e as Error).message}); restore it from a backup or wipe the data directory to rejoin by snapshot`, false);
  }
  if (v.version !== 1 || !Number.isInteger(v.id) || v.id < 1 || !Array.isArray(v.addresses) || typeof v.bindings !== 'object') {
    throw new NodeError(NodeErrorCode.config, `${path} does not hold a membershipd cluster file (version 1); wipe the data directory to rejoin by snapshot`, false);
  }
  // The incarnation goes into every route handshake: a damaged one must stop the node here, not be sent.
  if (v.incarnation !== undefined && (typeof v.incarnation !== 'string' || !incarnationPattern.test(v.incarnation))) {
    throw new NodeError(NodeErrorCode.config, `${path}: "incarnation" is not 1-64 printable characters (the file is damaged); restore it from raft.before-recovery-* or wipe the data directory and add the node back`, false);
  }
  if (v.recovered !== undefined && (typeof v.recovered !== 'object' || v.recovered === null || v.recovered.incarnation !== v.incarnation)) {
    throw new NodeError(NodeErrorCode.config, `${path}: "recovered" does not describe this file's incarnation (the file is damaged); wipe the data directory and add the node back`, false);
  }
  return v;
}

/** Written to a temp file, fsynced and renamed: a crash leaves the old or the new file, never half. */
export function writeClusterFile(dataDir: string, f: ClusterFile): void {
  const path = clusterFilePath(dataDir);
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${JSON.stringify(f, null, 2)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dfd = openSync(dataDir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/**
 * Our own address learned from a peer's routes (others-only style): their routes minus ours must be
 * exactly one address, and the union must have N entries. Returns the full sorted list, or a reason.
 */
export function learnAddresses(ownRoutes: readonly string[], peerRoutes: readonly string[], n: number): { addresses: string[]; self: string } | string {
  const mine = new Set(ownRoutes);
  const extra = peerRoutes.filter((r) => !mine.has(r));
  if (extra.length !== 1) {
    return `the peer's routes [${peerRoutes.join(', ')}] and ours [${ownRoutes.join(', ')}] do not differ by exactly one address (this node's); every node must spell every address the same way`;
  }
  const all = [...new Set([...ownRoutes, ...peerRoutes])].sort();
  if (all.length !== n) return `the routes of this node and its peer name ${all.length} addresses, but the cluster has ${n} nodes`;
  return { addresses: all, self: extra[0]! };
}

/**
 * The KV numbering the data directory's log was written with. 2: revisions are per-bucket sequences. A log of
 * the earlier numbering (revisions were Raft indexes, no marker file) holds CAS commands whose expected revisions
 * mean something else now: replaying it would refuse writes that were acknowledged, so it is refused instead.
 */
export const kvFormat = 2;

export function kvFormatPath(dataDir: string): string {
  return join(dataDir, 'kv-format');
}

/**
 * Refuses a data directory whose Raft log predates per-bucket KV revisions (a `raft/` directory with files and
 * no `kv-format` marker) or carries another format; marks a fresh one. Called before the log is opened.
 */
export function checkKvFormat(dataDir: string): void {
  const path = kvFormatPath(dataDir);
  const how = 'see "Upgrading to per-bucket KV revisions" in deploy/cluster/RUNBOOK.md';
  let text: string | undefined;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new NodeError(NodeErrorCode.config, `cannot read ${path}: ${(e as Error).message}`, false, { cause: e });
  }
  if (text !== undefined) {
    if (text.trim() !== String(kvFormat)) {
      throw new NodeError(NodeErrorCode.dataFormat, `data dir ${dataDir} has KV format ${JSON.stringify(text.trim().slice(0, 20))} (${path}); this membershipd reads format ${kvFormat}: ${how}`, false);
    }
    return;
  }
  let existing: string[] = [];
  try {
    existing = readdirSync(join(dataDir, 'raft'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new NodeError(NodeErrorCode.config, `cannot list ${join(dataDir, 'raft')}: ${(e as Error).message}`, false, { cause: e });
  }
  if (existing.length > 0) {
    throw new NodeError(NodeErrorCode.dataFormat, `data dir ${dataDir} holds a Raft log written before per-bucket KV revisions (no ${path}); this membershipd cannot replay it: ${how}`, false);
  }
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${kvFormat}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
