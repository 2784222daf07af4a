// `membershipd user|role|audit|cluster …`: build the request, send it signed to `$UB.API.<AREA>.<VERB>` on a node, print
// the reply (a table, or JSON with --json) and map it to the exit code: 0 ok, 1 failed, 2 bad usage, 3 conflict.
import { scrypt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createGeneratedPassword, hashGeneratedPassword, hashPassword, parsePasswordHash } from '../../auth/credentials.js';
import { signRequest } from '../../control/envelope.js';
import type { CliOutput } from '../output.js';
import { parseAdminArgs, UsageError, type CommandSpec, type ParsedCommand } from './args.js';
import { AdminCommandError, connectAdmin, connectionFlags, resolveConnection } from './connection.js';

export const adminExit = { ok: 0, failure: 1, usage: 2, conflict: 3 } as const;

interface Verb {
  readonly spec: CommandSpec;
  /** The API verb when it differs from the command's (`transfer-leader` → TRANSFER). */
  readonly apiVerb?: string;
  /** The request body; may read the password (stdin / file). */
  readonly body: (cmd: ParsedCommand) => Promise<Record<string, unknown>>;
  readonly print: (reply: Record<string, unknown>, out: CliOutput) => void;
}

const credentialFlags = { 'password-stdin': 'switch', 'password-file': 'string', 'generate-password': 'switch', nkey: 'string' } as const;

/**
 * The password `--generate-password` made for a command, printed once after the node accepted it. It never goes
 * into the request: only its generated$ hash does (src/auth/credentials.ts says why a fast hash is safe for it).
 */
const generatedPasswords = new WeakMap<ParsedCommand, string>();
const roleFlags = {
  'pub-allow': 'list', 'pub-deny': 'list', 'sub-allow': 'list', 'sub-deny': 'list', 'allow-responses': 'switch', admin: 'switch',
  // Service presence: names the role may register (repeatable, `*` = every name) and read access to ub_services.
  service: 'list', 'services-read': 'switch',
} as const;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of process.stdin) {
    chunks.push(c as Buffer);
    size += (c as Buffer).length;
    if (size > 4096) throw new UsageError('--password-stdin: more than 4096 bytes on stdin; a password is one line');
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** One trailing newline (echo, here-strings) is not part of the password. */
function stripNewline(s: string): string {
  return s.replace(/\r?\n$/, '');
}

async function credential(cmd: ParsedCommand, required: boolean): Promise<Record<string, string>> {
  const given = ['password-stdin', 'password-file', 'generate-password', 'nkey'].filter((f) => cmd.switches.has(f) || cmd.strings.has(f));
  if (given.length > 1) throw new UsageError(`give one credential, not ${given.map((g) => `--${g}`).join(' and ')}`);
  if (given.length === 0) {
    if (required) throw new UsageError('a credential is required: --password-stdin, --password-file FILE, --generate-password or --nkey PUBKEY');
    return {};
  }
  if (cmd.strings.has('nkey')) return { nkey: cmd.strings.get('nkey')! };
  if (cmd.switches.has('generate-password')) {
    const password = createGeneratedPassword();
    generatedPasswords.set(cmd, password);
    return { password_hash: hashGeneratedPassword(password) };
  }
  let text: string;
  if (cmd.switches.has('password-stdin')) {
    if (process.stdin.isTTY) throw new UsageError('--password-stdin: stdin is a terminal; pipe the password in (e.g. from a secret file or a password manager)');
    text = await readStdin();
  } else {
    const f = cmd.strings.get('password-file')!;
    try {
      text = readFileSync(f, 'utf8');
    } catch (err) {
      throw new UsageError(`--password-file: cannot read ${f} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
  }
  const password = stripNewline(text);
  if (password.length === 0) throw new UsageError('the password is empty');
  return { password };
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

const list = (v: unknown): string => (Array.isArray(v) && v.length > 0 ? v.join(',') : '-');

function printUser(u: Record<string, unknown>, out: CliOutput): void {
  out.out(table([
    ['name', String(u.name)], ['credential', String(u.credential)], ...(u.nkey !== undefined ? [['nkey', String(u.nkey)]] : []),
    ['roles', list(u.roles)], ['disabled', String(u.disabled)], ['created', String(u.created)], ['updated', String(u.updated)], ['by', String(u.by)],
  ]));
}

function rules(r: unknown): string {
  const x = r as { allow?: string[]; deny?: string[] } | undefined;
  return `allow ${list(x?.allow)} deny ${list(x?.deny)}`;
}

function printRole(r: Record<string, unknown>, out: CliOutput): void {
  out.out(table([
    ['name', String(r.name)], ['publish', rules(r.publish)], ['subscribe', rules(r.subscribe)], ['allow_responses', String(r.allow_responses)],
    ['admin', String(r.admin)], ...(r.services !== undefined ? [['services', list(r.services)]] : []), ...(r.services_read === true ? [['services_read', 'true']] : []),
    ...(r.builtin === true ? [['builtin', 'true']] : [['updated', String(r.updated)], ['by', String(r.by)]]),
  ]));
}

const resultLine = (area: string) => (reply: Record<string, unknown>, out: CliOutput): void => {
  const obj = (reply[area] ?? {}) as Record<string, unknown>;
  out.out(`${area} ${String(obj.name)}: ${String(reply.result)}`);
};

const nameOnly: CommandSpec = { positionals: ['NAME'], flags: connectionFlags };

function roleBody(cmd: ParsedCommand, forUpdate: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = { name: cmd.positionals[0] };
  for (const [flag, field] of [['pub-allow', 'pub_allow'], ['pub-deny', 'pub_deny'], ['sub-allow', 'sub_allow'], ['sub-deny', 'sub_deny']] as const) {
    const v = cmd.lists.get(flag);
    if (v !== undefined) body[field] = v;
    else if (forUpdate && cmd.switches.has(`no-${flag}`)) body[field] = [];
    else if (!forUpdate) body[field] = [];
  }
  if (cmd.switches.has('allow-responses') && cmd.switches.has('no-allow-responses')) throw new UsageError('--allow-responses and --no-allow-responses contradict each other');
  if (cmd.switches.has('allow-responses')) body.allow_responses = true;
  else if (cmd.switches.has('no-allow-responses') || !forUpdate) body.allow_responses = false;
  if (cmd.switches.has('admin')) body.admin = true;
  else if (cmd.switches.has('no-admin') || !forUpdate) body.admin = false;
  const services = cmd.lists.get('service');
  if (services !== undefined) body.services = services;
  else if (forUpdate && cmd.switches.has('no-service')) body.services = [];
  if (cmd.switches.has('services-read')) body.services_read = true;
  else if (cmd.switches.has('no-services-read')) body.services_read = false;
  return body;
}

export const adminVerbs: Readonly<Record<string, Readonly<Record<string, Verb>>>> = {
  user: {
    add: {
      spec: { positionals: ['NAME'], flags: { ...connectionFlags, ...credentialFlags, role: 'list' } },
      body: async (cmd) => ({ name: cmd.positionals[0], ...(await credential(cmd, true)), roles: cmd.lists.get('role') ?? [] }),
      print: resultLine('user'),
    },
    update: {
      spec: { positionals: ['NAME'], flags: { ...connectionFlags, ...credentialFlags, role: 'list', 'no-roles': 'switch', disable: 'switch', enable: 'switch' } },
      body: async (cmd) => {
        if (cmd.switches.has('disable') && cmd.switches.has('enable')) throw new UsageError('--disable and --enable contradict each other');
        if (cmd.switches.has('no-roles') && cmd.lists.has('role')) throw new UsageError('--no-roles and --role contradict each other');
        return {
          name: cmd.positionals[0], ...(await credential(cmd, false)),
          ...(cmd.lists.has('role') ? { roles: cmd.lists.get('role') } : cmd.switches.has('no-roles') ? { roles: [] } : {}),
          ...(cmd.switches.has('disable') ? { disabled: true } : cmd.switches.has('enable') ? { disabled: false } : {}),
        };
      },
      print: resultLine('user'),
    },
    remove: { spec: nameOnly, body: async (cmd) => ({ name: cmd.positionals[0] }), print: resultLine('user') },
    show: { spec: nameOnly, body: async (cmd) => ({ name: cmd.positionals[0] }), print: (r, out) => printUser(r.user as Record<string, unknown>, out) },
    list: {
      spec: { positionals: [], flags: connectionFlags },
      body: async () => ({}),
      print: (r, out) => {
        const users = r.users as Record<string, unknown>[];
        out.out(table([['NAME', 'CREDENTIAL', 'ROLES', 'DISABLED', 'UPDATED', 'BY'],
          ...users.map((u) => [String(u.name), String(u.credential), list(u.roles), String(u.disabled), String(u.updated), String(u.by)])]));
      },
    },
  },
  role: {
    add: { spec: { positionals: ['NAME'], flags: { ...connectionFlags, ...roleFlags } }, body: async (cmd) => roleBody(cmd, false), print: resultLine('role') },
    update: {
      spec: {
        positionals: ['NAME'],
        flags: { ...connectionFlags, ...roleFlags, 'no-pub-allow': 'switch', 'no-pub-deny': 'switch', 'no-sub-allow': 'switch', 'no-sub-deny': 'switch', 'no-allow-responses': 'switch', 'no-admin': 'switch', 'no-service': 'switch', 'no-services-read': 'switch' },
      },
      body: async (cmd) => roleBody(cmd, true),
      print: resultLine('role'),
    },
    remove: { spec: nameOnly, body: async (cmd) => ({ name: cmd.positionals[0] }), print: resultLine('role') },
    show: { spec: nameOnly, body: async (cmd) => ({ name: cmd.positionals[0] }), print: (r, out) => printRole(r.role as Record<string, unknown>, out) },
    list: {
      spec: { positionals: [], flags: connectionFlags },
      body: async () => ({}),
      print: (r, out) => {
        const roles = r.roles as Record<string, unknown>[];
        out.out(table([['NAME', 'PUBLISH', 'SUBSCRIBE', 'RESPONSES', 'ADMIN'],
          ...roles.map((x) => [String(x.name), rules(x.publish), rules(x.subscribe), String(x.allow_responses), String(x.admin)])]));
      },
    },
  },
  cluster: {
    status: {
      spec: { positionals: [], flags: connectionFlags },
      body: async () => ({}),
      print: (r, out) => printClusterStatus(r.status as Record<string, unknown>, out),
    },
    'transfer-leader': {
      spec: { positionals: [], optional: ['NAME'], flags: connectionFlags },
      apiVerb: 'TRANSFER',
      body: async (cmd) => (cmd.positionals[0] === undefined ? {} : { name: cmd.positionals[0] }),
      print: (r, out) => out.out(`leader: ${String(r.leader)} (${String(r.result)})`),
    },
    add: {
      spec: { positionals: ['NAME', 'URL'], flags: connectionFlags },
      body: async (cmd) => ({ name: cmd.positionals[0], url: cmd.positionals[1] }),
      print: (r, out) => {
        out.out(`node: ${String(r.result)}, ${String(r.role)}${r.slot !== undefined ? ` (slot ${String(r.slot)})` : ''}`);
        // A new address: what to start on the new host (like etcd's `member add` printing ETCD_INITIAL_CLUSTER…).
        const start = r.start as { flags?: unknown } | undefined;
        if (r.result === 'created' && Array.isArray(start?.flags)) {
          out.out('start it on its host with the flags every node of this cluster has (--cluster-name, --cluster-user, --cluster-pass-file,');
          out.out('--route-tls-*, --store kv, --bus-auth, …) plus:');
          out.out(`  ${start.flags.map(String).join(' ')}`);
          out.out('it learns its slot from its peers, joins as a learner, catches up, and becomes a voter while the cluster has fewer voters than --kv-replicas');
        }
      },
    },
    'kv-replicas': {
      spec: { positionals: ['R'], flags: connectionFlags },
      apiVerb: 'REPLICAS',
      body: async (cmd) => {
        const r = cmd.positionals[0]!;
        if (!/^[1-9]\d{0,2}$/.test(r)) throw new UsageError(`kv-replicas: ${JSON.stringify(r)} is not a number of voters (1..999)`);
        return { replicas: Number(r) };
      },
      print: (r, out) => out.out(`kv-replicas: ${String(r.result)}, ${String(r.voters)} voters`),
    },
    remove: {
      spec: nameOnly,
      body: async (cmd) => ({ name: cmd.positionals[0] }),
      print: (r, out) => out.out(`node: ${String(r.result)}${r.voters !== undefined ? ` (${String(r.voters)} voters left)` : ''}`),
    },
  },
  service: {
    ls: {
      spec: { positionals: [], optional: ['NAME'], flags: connectionFlags },
      apiVerb: 'LIST',
      body: async (cmd) => (cmd.positionals[0] === undefined ? {} : { service: cmd.positionals[0] }),
      print: (r, out) => printServices(r.instances as Record<string, unknown>[], out),
    },
    show: {
      spec: { positionals: ['NAME.INSTANCE'], flags: connectionFlags },
      body: async (cmd) => serviceKeyBody(cmd.positionals[0]!),
      print: (r, out) => printService(r.instance as Record<string, unknown>, out),
    },
  },
  audit: {
    list: {
      spec: { positionals: [], flags: { ...connectionFlags, limit: 'string' } },
      body: async (cmd) => {
        const l = cmd.strings.get('limit');
        if (l !== undefined && !/^[1-9]\d{0,4}$/.test(l)) throw new UsageError('--limit: a number 1..99999');
        return l === undefined ? {} : { limit: Number(l) };
      },
      print: (r, out) => {
        const recs = r.audit as Record<string, unknown>[];
        out.out(table([['SEQ', 'TIME', 'WHO', 'WHAT', 'TARGET', 'RESULT'],
          ...recs.map((a) => [String(a.seq), String(a.ts), String(a.who), String(a.what), String(a.target), String(a.result)])]));
      },
    },
  },
};

const dash = (v: unknown): string => (v === null || v === undefined ? '-' : String(v));

/** `orders.a1` → { service, instance } (the key of the `services` bucket). */
export function serviceKeyBody(key: string): Record<string, string> {
  const i = key.indexOf('.');
  if (i <= 0 || i === key.length - 1) throw new UsageError(`${JSON.stringify(key)} is not NAME.INSTANCE (e.g. orders.a1; see "membershipd service ls")`);
  return { service: key.slice(0, i), instance: key.slice(i + 1) };
}

export function printServices(instances: readonly Record<string, unknown>[], out: CliOutput): void {
  out.out(table([['INSTANCE', 'KIND', 'NODE', 'VERSION', 'ENDPOINTS', 'REGISTERED'],
    ...instances.map((x) => [String(x.key), dash(x.kind), dash(x.node), dash(x.version), list(x.endpoints), dash(x.registered)])]));
}

function printService(x: Record<string, unknown>, out: CliOutput): void {
  const meta = Object.entries((x.metadata ?? {}) as Record<string, string>).map(([k, v]) => `${k}=${v}`);
  out.out(table([
    ['instance', String(x.key)], ['kind', dash(x.kind)], ['node', dash(x.node)], ['version', dash(x.version)], ['description', dash(x.description)],
    ['endpoints', list(x.endpoints)], ['metadata', meta.length > 0 ? meta.join(',') : '-'], ['ttl_ms', dash(x.ttl_ms)],
    ['registered', dash(x.registered)], ['by', dash(x.by)],
  ]));
}

function printClusterStatus(s: Record<string, unknown>, out: CliOutput): void {
  const members = s.members as Record<string, unknown>[];
  out.out(`cluster ${String(s.cluster)}: leader ${dash(s.leader)}, term ${String(s.term)}, ${(s.voters as unknown[]).length} voters of ${String(s.kvReplicas)} (--kv-replicas), via ${String(s.via)}`);
  out.out(table([['NODE', 'ROLE', 'TERM', 'LEADER', 'COMMIT', 'APPLIED', 'LAG', 'REACHABLE', 'ADDRESS'],
    ...members.map((m) => [dash(m.name), String(m.role), dash(m.term), dash(m.leader), dash(m.commit), dash(m.applied), dash(m.lag), m.reachable === true ? 'yes' : 'no', String(m.address)])]));
}

export function exitFor(code: string): number {
  switch (code) {
    case 'bad_request': return adminExit.usage;
    case 'conflict': return adminExit.conflict;
    default: return adminExit.failure;
  }
}

/**
 * Replaces the request's cleartext `password` with `password_hash`: the password never leaves the CLI (a request
 * crosses the bus, where any `$UB.API.>` subscriber can read it). The hash reuses the user's stored salt and scrypt
 * parameters when there is one (USER.SALT), so the same password gives the same hash and `user add` of an
 * unchanged spec stays `unchanged`; a new user gets a fresh random salt (hashPassword).
 */
async function hashBeforeSending(body: Record<string, unknown>,
  ask: (subject: string, body: Record<string, unknown>) => Promise<Record<string, unknown>>): Promise<Record<string, unknown> | undefined> {
  const password = body.password as string;
  const r = await ask('$UB.API.USER.SALT', { name: body.name });
  if (r.error !== undefined) return r;
  delete body.password;
  body.password_hash = typeof r.salt === 'string' ? await hashWithSalt(password, r.salt) : await hashPassword(password);
  return undefined;
}

/** scrypt of `password` with the salt and parameters of `prefix` (`scrypt$N$r$p$salt`), in the stored format. */
async function hashWithSalt(password: string, prefix: string): Promise<string> {
  // parsePasswordHash checks the parameters' bounds; the placeholder hash only completes the format.
  const { params, salt } = parsePasswordHash(`${prefix}$${Buffer.alloc(32).toString('base64url')}`);
  const key = await new Promise<Buffer>((resolve, reject) => {
    scrypt(password, salt, 32, { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r + 1024 * 1024 }, (e, k) => (e ? reject(e) : resolve(k)));
  });
  return `${prefix}$${key.toString('base64url')}`;
}

/** `membershipd user|role|audit VERB …`; resolves with the exit code. */
export async function runApiCommand(area: string, argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const verbs = adminVerbs[area]!;
  const verbName = argv[0];
  const verb = verbName === undefined ? undefined : verbs[verbName];
  if (verb === undefined) {
    throw new UsageError(`${verbName === undefined ? 'missing' : `unknown`} ${area} command${verbName === undefined ? '' : ` ${JSON.stringify(verbName)}`} (commands: ${Object.keys(verbs).join(', ')})`);
  }
  const usage = `membershipd ${area} ${verbName}`;
  const cmd = parseAdminArgs(usage, verb.spec, argv.slice(1));
  const settings = resolveConnection(cmd, env);
  const body = await verb.body(cmd);
  const subject = `$UB.API.${area.toUpperCase()}.${verb.apiVerb ?? verbName!.toUpperCase()}`;
  const nc = await connectAdmin(settings);
  let reply: Record<string, unknown>;
  try {
    const ask = async (subj: string, b: Record<string, unknown>): Promise<Record<string, unknown>> => {
      const msg = await nc.request(subj, signRequest(subj, b, settings.signer), { timeout: settings.timeoutMs });
      return JSON.parse(new TextDecoder().decode(msg.data)) as Record<string, unknown>;
    };
    // A refused USER.SALT (a bad name, no admin right) is the command's answer: its error maps to the exit code.
    const refused = typeof body.password === 'string' ? await hashBeforeSending(body, ask) : undefined;
    reply = refused ?? await ask(subject, body);
  } catch (err) {
    const m = err instanceof Error ? err.message : String(err);
    const why = /no responders|503/i.test(m) ? `no admin API answers on ${settings.server} (is the node running with --store kv?)`
      : /timeout/i.test(m) ? `no reply within ${settings.timeoutMs} ms (is the cluster electing a leader? check /healthz); the change may still be applied — re-run the same command, it is idempotent`
        : /permission/i.test(m) ? `the node refused ${subject} for ${settings.source}: it is not an admin principal`
          : m;
    throw new AdminCommandError(`${usage}: ${why}`, { cause: err });
  } finally {
    await nc.close().catch(() => undefined);
  }
  const error = reply.error as { code?: string; message?: string } | undefined;
  if (error !== undefined) {
    if (cmd.switches.has('json')) out.out(JSON.stringify(reply));
    out.err(`membershipd: ${usage}: ${error.message ?? 'failed'} (${error.code ?? 'error'})`);
    return exitFor(error.code ?? '');
  }
  const generated = generatedPasswords.get(cmd);
  if (cmd.switches.has('json')) out.out(JSON.stringify(generated === undefined ? reply : { ...reply, generated_password: generated }, null, 2));
  else {
    verb.print(reply, out);
    if (generated !== undefined) out.out(`password: ${generated}\n(generated for this user and shown only now: store it in the client's secret store)`);
  }
  return adminExit.ok;
}
