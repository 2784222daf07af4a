// `membershipd snapshot save FILE` (online backup through any node, over the signed admin API),
// `membershipd snapshot inspect FILE` (header, per-bucket counts, every checksum verified) and
// `membershipd snapshot restore FILE --data-dir DIR …` (the data directory of one node of a new cluster). The image travels in
// chunks, one request per chunk, because a whole image is larger than a NATS message may be (max_payload 1 MiB).
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { BackupError, KvStateMachine, RaftStorage, StoreError, decodeBackup, encodeKvCommand, type SnapshotHeader } from '../../../store/index.js';
import { checkKvFormat, findSelfRoutes, normalizeRoutes } from '../../node/bootstrap.js';
import { AppliedSessions, encodeNodeSnapshot } from '../../node/sessions.js';
import { controlBuckets } from '../../control/buckets.js';
import { signRequest } from '../../control/envelope.js';
import type { CliOutput } from '../output.js';
import { parseAdminArgs, UsageError } from './args.js';
import { adminExit } from './commands.js';
import { AdminCommandError, connectAdmin, connectionFlags, resolveConnection, type AdminConnectionSettings } from './connection.js';

/** More chunks than this is not an image a node would send (512 KiB each: 32 GiB). */
const chunksMax = 65_536;

async function call(nc: NatsConnection, s: AdminConnectionSettings, verb: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const subject = `$UB.API.SNAPSHOT.${verb}`;
  let reply: Record<string, unknown>;
  try {
    const msg = await nc.request(subject, signRequest(subject, body, s.signer), { timeout: s.timeoutMs });
    reply = JSON.parse(new TextDecoder().decode(msg.data)) as Record<string, unknown>;
  } catch (err) {
    const m = err instanceof Error ? err.message : String(err);
    const why = /no responders|503/i.test(m) ? `no admin API answers on ${s.server} (is the node running with --store kv?)`
      : /timeout/i.test(m) ? `no reply within ${s.timeoutMs} ms (is the cluster electing a leader? check /healthz); nothing was written, run it again` : m;
    throw new AdminCommandError(`snapshot save: ${why}`, { cause: err });
  }
  const error = reply['error'] as { code?: string; message?: string } | undefined;
  if (error !== undefined) throw new AdminCommandError(`snapshot save: ${error.message ?? 'failed'} (${error.code ?? 'error'})`);
  return reply;
}

/** Writes next to the target, fsyncs, renames, fsyncs the directory: FILE is either the old one or the whole new one. */
function writeAtomically(path: string, data: Buffer): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, 'w', 0o600);
    try {
      for (let o = 0; o < data.length;) o += writeSync(fd, data, o, data.length - o);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    const dir = openSync(dirname(path), 'r');
    try { fsyncSync(dir); } finally { closeSync(dir); }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new AdminCommandError(`snapshot save: cannot write ${path}: ${(err as Error).message}`, { cause: err });
  }
}

function describe(h: SnapshotHeader, bytes: number): string {
  return `snapshot of cluster "${h.cluster}" at Raft index ${h.index} (term ${h.term}), taken ${h.time} via ${h.via}, ${bytes} bytes`;
}

async function save(argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv): Promise<number> {
  const cmd = parseAdminArgs('membershipd snapshot save', { positionals: ['FILE'], flags: connectionFlags }, argv);
  const path = cmd.positionals[0]!;
  const settings = resolveConnection(cmd, env);
  const nc = await connectAdmin(settings);
  let file: Buffer;
  try {
    const started = await call(nc, settings, 'SAVE', {});
    const id = started['id'];
    const chunks = started['chunks'];
    const bytes = started['bytes'];
    if (typeof id !== 'string' || !Number.isSafeInteger(chunks) || (chunks as number) < 1 || (chunks as number) > chunksMax || !Number.isSafeInteger(bytes)) {
      throw new AdminCommandError(`snapshot save: the node's answer is not a snapshot description: ${JSON.stringify(started).slice(0, 200)}`);
    }
    const parts: Buffer[] = [];
    let offset = 0;
    for (let n = 0; n < (chunks as number); n++) {
      const c = await call(nc, settings, 'CHUNK', { id, n });
      if (c['offset'] !== offset || typeof c['data'] !== 'string') throw new AdminCommandError(`snapshot save: chunk ${n} is not the one asked for (offset ${String(c['offset'])}, expected ${offset})`);
      const data = Buffer.from(c['data'], 'base64');
      parts.push(data);
      offset += data.length;
    }
    file = Buffer.concat(parts);
    if (file.length !== bytes) throw new AdminCommandError(`snapshot save: received ${file.length} bytes, the node announced ${String(bytes)}; nothing was written, run it again`);
  } finally {
    await nc.close().catch(() => undefined);
  }
  // Verified before it replaces anything: a backup that cannot be read back is worse than none.
  const { header } = verify(file, `the image received from ${settings.server}`);
  writeAtomically(path, file);
  out.out(`${describe(header, file.length)}\nwritten to ${path} (SHA-256 of the image ${header.sha256})`);
  return adminExit.ok;
}

function verify(file: Buffer, what: string): { header: SnapshotHeader; kv: KvStateMachine } {
  const { header, body } = decodeBackup(file);
  const kv = new KvStateMachine();
  try {
    kv.restore(body);
  } catch (err) {
    if (err instanceof StoreError) throw new AdminCommandError(`${what}: the checksums match but the KV image does not decode: ${err.message}`, { cause: err });
    throw err;
  }
  if (kv.appliedIndex !== header.index) throw new AdminCommandError(`${what}: the KV image is at index ${kv.appliedIndex}, the header says ${header.index}`);
  return { header, kv };
}

function inspect(argv: readonly string[], out: CliOutput): number {
  const cmd = parseAdminArgs('membershipd snapshot inspect', { positionals: ['FILE'], flags: { json: 'switch' } }, argv);
  const path = cmd.positionals[0]!;
  const file = readBackupFile(path);
  const { header, kv } = verify(file, path);
  // Counts from the image itself, not from the header: this is what a restore would get.
  const buckets = kv.bucketNames().map((name) => {
    const b = kv.bucketInfo(name)!;
    return { name, keys: kv.keys(name).length, values: b.values, bytes: b.bytes };
  });
  if (cmd.switches.has('json')) {
    const { blocks: _blocks, ...rest } = header;
    out.out(JSON.stringify({ ...rest, buckets, checksum: 'ok' }, null, 2));
    return adminExit.ok;
  }
  const slots = header.conf.slots.map((s) => `${s.name ?? `slot ${s.id}`}=${s.address}${header.conf.learners.includes(s.id) ? ' (learner)' : header.conf.voters.includes(s.id) ? '' : ' (removed)'}`);
  const rows = [['BUCKET', 'KEYS', 'VALUES', 'BYTES'], ...buckets.map((b) => [b.name, String(b.keys), String(b.values), String(b.bytes)])];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  out.out([
    describe(header, file.length),
    `format ${header.format} v${header.version}, written by membershipd ${header.membershipdVersion}`,
    `members: ${slots.join(', ')}`,
    `checksum: ok (SHA-256 ${header.sha256}, ${header.blocks.length} blocks)`,
    ...rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')),
  ].join('\n'));
  return adminExit.ok;
}

/**
 * Buckets that describe the cluster the image came from, not its data: its members (whose identity keys are admin
 * principals) and its posture. A new cluster fills both itself (its first leader), so they are dropped on restore.
 */
const clusterOwnBuckets = [controlBuckets.nodes, controlBuckets.config] as const;

function readBackupFile(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

/**
 * Prepares the data directory of one node of a new cluster from a backup: a Raft snapshot holding the image, with
 * the bootstrap configuration every node of the new cluster derives from its --routes (voters 1..R), at term 1. The
 * node then starts as usual and learns its slot from its routes; the log continues after the image's index.
 */
async function restore(argv: readonly string[], out: CliOutput): Promise<number> {
  const cmd = parseAdminArgs('membershipd snapshot restore', {
    positionals: ['FILE'],
    flags: { 'data-dir': 'string', 'server-name': 'string', 'cluster-name': 'string', 'cluster-port': 'string', routes: 'list', bind: 'string', 'kv-replicas': 'string' },
  }, argv);
  const need = (flag: string, why: string): string => {
    const v = cmd.strings.get(flag);
    if (v === undefined || v === '') throw new UsageError(`--${flag} is required (${why})`);
    return v;
  };
  const dataDir = resolve(need('data-dir', 'the new node\'s data directory; it must not exist or be empty'));
  const serverName = need('server-name', 'the node this data directory is for');
  const clusterName = need('cluster-name', 'the new cluster\'s name, different from the backup\'s');
  const portText = need('cluster-port', 'this node\'s cluster port, as given to serve: it finds this node in --routes');
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535) throw new UsageError(`--cluster-port ${JSON.stringify(portText)} is not a port`);
  const routes = (cmd.lists.get('routes') ?? []).flatMap((r) => r.split(',')).filter((r) => r !== '');
  // Everything is checked before anything is written: a damaged backup leaves no directory behind.
  const file = readBackupFile(cmd.positionals[0]!);
  const { header, kv } = verify(file, cmd.positionals[0]!);
  if (clusterName === header.cluster) {
    throw new UsageError(`--cluster-name ${JSON.stringify(clusterName)} is the backup's own cluster name: a restore makes a new cluster, and the route handshake only keeps the old members (which may still run, or come back) out of it when the names differ; pick a new name`);
  }
  let list: ReturnType<typeof normalizeRoutes>;
  try {
    list = normalizeRoutes(routes);
  } catch (err) {
    throw new UsageError(`--routes: ${(err as Error).message}`);
  }
  const self = await findSelfRoutes(list.list, cmd.strings.get('bind') ?? '0.0.0.0', port);
  if (self.length > 1) throw new UsageError(`--routes lists this node under ${self.length} addresses (${self.join(', ')}); list each node once`);
  const n = list.keys.filter((k) => !self.includes(k)).length + 1;
  const rText = cmd.strings.get('kv-replicas');
  const voters = rText === undefined ? n : Number(rText);
  if (!Number.isSafeInteger(voters) || voters < 1 || voters > n) throw new UsageError(`--kv-replicas ${String(rText)}: a number of voters from 1 to the cluster size ${n}`);
  if (existsSync(dataDir) && readdirSync(dataDir).length > 0) {
    throw new UsageError(`--data-dir ${dataDir} is not empty; a restore only prepares a new node (stop nothing, wipe nothing: give an empty or new directory)`);
  }

  let index = kv.appliedIndex;
  for (const bucket of clusterOwnBuckets) {
    if (kv.bucketInfo(bucket) !== undefined) kv.apply(++index, encodeKvCommand({ op: 'bucket.delete', bucket, ts: Date.parse(header.time) }));
  }
  const conf = { voters: Array.from({ length: voters }, (_, i) => i + 1), learners: [] };
  // Built next to the target and renamed into place: an interrupted restore leaves no half-made data directory.
  const tmp = `${dataDir}.restore-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    // The KV numbering marker first, on the still empty directory: without it the node refuses the log as
    // one written before per-bucket revisions.
    mkdirSync(tmp, { recursive: true });
    checkKvFormat(tmp);
    const storage = await RaftStorage.open(join(tmp, 'raft'));
    try {
      await storage.applySnapshot({ meta: { index, term: 1, conf }, data: encodeNodeSnapshot(kv.snapshot(), new AppliedSessions()) });
      await storage.save({ hardState: { term: 1, vote: 0, commit: index } });
    } finally {
      await storage.close();
    }
    if (existsSync(dataDir)) rmSync(dataDir, { recursive: true });
    renameSync(tmp, dataDir);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw new AdminCommandError(`snapshot restore: cannot write ${dataDir}: ${(err as Error).message}`, { cause: err });
  }
  out.out([
    `${dataDir} prepared for ${serverName} of the new cluster "${clusterName}" (${n} nodes, ${voters} voters)`,
    `from the ${describe(header, file.length)}`,
    `start ${serverName} with --data-dir ${dataDir} --cluster-name ${clusterName} and the same --routes on every node; the`,
    `nodes and config buckets start empty (the new cluster registers its own members and posture)`,
  ].join('\n'));
  return adminExit.ok;
}

/** `membershipd snapshot save|inspect|restore …`; resolves with the exit code. */
export async function runSnapshot(argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv): Promise<number> {
  const verb = argv[0];
  try {
    if (verb === 'save') return await save(argv.slice(1), out, env);
    if (verb === 'inspect') return inspect(argv.slice(1), out);
    if (verb === 'restore') return await restore(argv.slice(1), out);
  } catch (err) {
    // A damaged file is an operating error with its offset, not a crash.
    if (err instanceof BackupError) throw new AdminCommandError(err.message, { cause: err });
    throw err;
  }
  throw new UsageError(`${verb === undefined ? 'missing' : `unknown`} snapshot command${verb === undefined ? '' : ` ${JSON.stringify(verb)}`} (commands: save FILE, inspect FILE, restore FILE --data-dir DIR …)`);
}
