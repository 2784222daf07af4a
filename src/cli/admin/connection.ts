// How an admin command reaches a node: the server URL, the TLS CA and the signing identity, each from a flag or,
// failing that, from the node's cluster.env (the process environment first, then --env-file, by default
// /opt/unibus/cluster.env when it exists), so an operator on a node types only the command.
//
// Identity: --internal-id-file (the node's NKey seed: the admin principal) or --creds (a NATS creds file holding
// an NKey user seed 'SU…' of a user with an admin role). The same key authenticates the NATS connection (nonce
// challenge) and signs each request envelope (src/control/envelope.ts).
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { IdentityFileError, keyPairFromSeed, NKeyError, readIdentity, type NKeyPair } from '../../auth/index.js';
import { MembershipdError } from '../../errors.js';
import { UsageError, type ParsedCommand } from './args.js';

export const defaultEnvFile = '/opt/unibus/cluster.env';

/** Operating failure of an admin command (exit 1): no node, refused connection, timeout. */
export class AdminCommandError extends MembershipdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EADMIN', message, options);
  }
}

export const connectionFlags = {
  server: 'string', 'tls-ca': 'string', 'internal-id-file': 'string', creds: 'string', 'env-file': 'string', json: 'switch', timeout: 'string',
  // `user add … --store kv` is how operators name the live path (the first deployment's runbook); the admin API
  // always writes the replicated store, so kv is accepted and file is refused with where file users live.
  store: 'string',
} as const;

/** KEY=VALUE lines (systemd EnvironmentFile style: comments, optional quotes, optional `export`). */
export function parseEnvFile(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (m === null) continue;
    let v = m[2]!;
    if (v.length >= 2 && ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'")))) v = v.slice(1, -1);
    out.set(m[1]!, v);
  }
  return out;
}

export interface AdminConnectionSettings {
  readonly server: string;
  readonly tlsCa: string | undefined;
  readonly signer: NKeyPair;
  /** Seed text for nats.js' nkeyAuthenticator. */
  readonly seed: string;
  readonly timeoutMs: number;
  readonly source: string;
}

function readText(path: string, what: string, flag: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${flag}: cannot read the ${what} ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

export function resolveConnection(cmd: ParsedCommand, env: NodeJS.ProcessEnv = process.env): AdminConnectionSettings {
  const store = cmd.strings.get('store');
  if (store === 'file') {
    throw new UsageError('--store file: a --store file node takes its users and roles from its --users-file; edit that file and send SIGHUP (systemctl reload). The admin commands change the replicated store (--store kv)');
  }
  if (store !== undefined && store !== 'kv') throw new UsageError(`--store ${JSON.stringify(store)}: the admin commands change the replicated store; use --store kv or leave it out`);
  const envFile = cmd.strings.get('env-file') ?? (existsSync(defaultEnvFile) ? defaultEnvFile : undefined);
  const fileEnv = envFile === undefined ? new Map<string, string>() : parseEnvFile(readText(envFile, 'env file', '--env-file'));
  const fromEnv = (k: string): string | undefined => {
    const v = env[k] ?? fileEnv.get(k);
    return v === undefined || v === '' ? undefined : v;
  };
  const timeoutText = cmd.strings.get('timeout');
  const timeoutMs = timeoutText === undefined ? 15_000 : Number(timeoutText);
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 100 || timeoutMs > 600_000) throw new UsageError('--timeout: milliseconds between 100 and 600000');

  const tlsCa = cmd.strings.get('tls-ca') ?? fromEnv('TLS_CA') ?? (fromEnv('TLS_CERT') !== undefined ? fromEnv('ROUTE_TLS_CA') : undefined);
  let server = cmd.strings.get('server');
  if (server === undefined) {
    const port = fromEnv('NATS_CLIENT_PORT') ?? '4222';
    if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) throw new UsageError(`NATS_CLIENT_PORT ${JSON.stringify(port)} is not a port`);
    // The node serves TLS on its client port when cluster.env names a certificate.
    server = `${fromEnv('TLS_CERT') !== undefined || tlsCa !== undefined ? 'tls' : 'nats'}://127.0.0.1:${port}`;
  } else if (!/^(nats|tls):\/\/[^/\s]+$/.test(server) && !/^[^/\s:]+:\d+$/.test(server)) {
    throw new UsageError(`--server ${JSON.stringify(server)} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT)`);
  }
  if (tlsCa !== undefined) readText(tlsCa, 'TLS CA file', '--tls-ca');

  const creds = cmd.strings.get('creds');
  const idFile = cmd.strings.get('internal-id-file') ?? (creds === undefined ? fromEnv('INTERNAL_ID_FILE') : undefined);
  if (creds !== undefined && cmd.strings.has('internal-id-file')) throw new UsageError('give either --internal-id-file or --creds, not both');
  let seed: string;
  let source: string;
  if (creds !== undefined) {
    const text = readText(creds, 'creds file', '--creds');
    const m = /^\s*(SU[A-Z2-7]{56})\s*$/m.exec(text);
    if (m === null) throw new UsageError(`--creds: ${creds} holds no NKey user seed (a line starting with SU); admin creds are an NKey user of an admin role`);
    seed = m[1]!;
    source = `--creds ${creds}`;
  } else if (idFile !== undefined) {
    try {
      readIdentity(idFile); // existence, mode 0600 and seed format, with its own clear message
    } catch (err) {
      if (err instanceof IdentityFileError) throw new UsageError(`--internal-id-file: ${err.message}`);
      throw err;
    }
    seed = readText(idFile, 'internal identity file', '--internal-id-file').trim();
    source = `--internal-id-file ${idFile}`;
  } else {
    throw new UsageError(`no admin identity: give --internal-id-file FILE (the node's identity) or --creds FILE, or set INTERNAL_ID_FILE in the environment or ${envFile ?? defaultEnvFile}`);
  }
  let signer: NKeyPair;
  try {
    signer = keyPairFromSeed(seed, ['server', 'user']);
  } catch (err) {
    throw new UsageError(`${source}: ${err instanceof NKeyError ? err.message : String(err)}`);
  }
  return { server, tlsCa, signer, seed, timeoutMs, source };
}

const enc = new TextEncoder();

/** Connects (one attempt, no reconnect: an admin command fails fast and says why). */
export async function connectAdmin(s: AdminConnectionSettings): Promise<NatsConnection> {
  try {
    return await connect({
      servers: s.server,
      authenticator: nkeyAuthenticator(enc.encode(s.seed)),
      ...(s.tlsCa !== undefined ? { tls: { caFile: s.tlsCa } } : {}),
      name: 'membershipd-admin',
      // A random, unguessable reply prefix per connection: admin replies (users, roles, audit) must never pass
      // through the shared `_INBOX.` that any role granting subscribe `_INBOX.>` can read, and the node refuses
      // admin requests that ask for it (src/control/api.ts isSharedInbox).
      inboxPrefix: `_INBOX_${randomBytes(16).toString('hex')}`,
      reconnect: false,
      maxReconnectAttempts: 0,
      timeout: Math.min(s.timeoutMs, 5000),
    });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    const code = (err as { code?: string }).code ?? '';
    const hint = /auth/i.test(msg) ? `the node refused ${s.source}: is it this cluster's internal identity (or an admin user's creds)?`
      : `is membershipd running there? (--server, or NATS_CLIENT_PORT in cluster.env)`;
    throw new AdminCommandError(`no reachable node at ${s.server}: ${msg}${code ? ` (${code})` : ''}; ${hint}`, { cause: err });
  }
}
