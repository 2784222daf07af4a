// `membershipd snapshot save FILE` (online backup through any node, over the signed admin API) and
// `membershipd snapshot inspect FILE` (header, per-bucket counts, every checksum verified). The image travels in
// chunks, one request per chunk, because a whole image is larger than a NATS message may be (max_payload 1 MiB).
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { BackupError, KvStateMachine, StoreError, decodeBackup, type SnapshotHeader } from '../../../store/index.js';
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
  let file: Buffer;
  try {
    file = readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
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

/** `membershipd snapshot save|inspect …`; resolves with the exit code. */
export async function runSnapshot(argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv): Promise<number> {
  const verb = argv[0];
  try {
    if (verb === 'save') return await save(argv.slice(1), out, env);
    if (verb === 'inspect') return inspect(argv.slice(1), out);
  } catch (err) {
    // A damaged file is an operating error with its offset, not a crash.
    if (err instanceof BackupError) throw new AdminCommandError(err.message, { cause: err });
    throw err;
  }
  throw new UsageError(`${verb === undefined ? 'missing' : `unknown`} snapshot command${verb === undefined ? '' : ` ${JSON.stringify(verb)}`} (commands: save FILE, inspect FILE)`);
}
