// The control plane end to end: a real NATS server (src/nats) with bus auth enforce over the KV-backed principal
// source, the admin API attached to its service seam, and the real CLI — as a child process where the process
// boundary matters (stdin password, exit codes) and in process through main() elsewhere. Users connect with the
// real @nats-io/transport-node client; the exact -ERR of a denied publish is read off a raw socket.
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import fc from 'fast-check';
import { KvStateMachine } from '../../store/index.js';
import { createNatsServer, type NatsServerWithCluster } from '../../src/nats/index.js';
import { createLocalKvBackend, type KvBackend } from '../../src/kv/index.js';
import { createBusAuthenticator, createKeyPair, loadOrCreateIdentity, type InternalIdentity } from '../../src/auth/index.js';
import {
  attachControlApi, controlBuckets, ensureControlBuckets, KvPrincipalSource, signRequest, type ControlApi,
} from '../../src/control/index.js';
import { main, memoryOutput } from '../../src/cli/index.js';
import { parseAdminArgs, parseEnvFile, UsageError } from '../../src/cli/admin/index.js';
import { decodeValue, encodeValue, EnvelopeVerifier, validateRole, validateUser } from '../../src/control/index.js';
import { silentLogger } from '../../src/log.js';

const root = new URL('../../', import.meta.url).pathname;
const dir = t.testdir({ 'pw-alice': 'correct horse\n', 'pw-other': 'another secret\n' });
const idFile = join(dir, 'node.id');
let identity: InternalIdentity;
let backend: KvBackend;
let server: NatsServerWithCluster;
let api: ControlApi & { detach(): void };
let url: string;
const clients: NatsConnection[] = [];

t.before(async () => {
  identity = loadOrCreateIdentity(idFile);
  backend = createLocalKvBackend(new KvStateMachine());
  const created = await ensureControlBuckets(backend);
  t.same(created.sort(), Object.values(controlBuckets).sort(), 'the six buckets are created');
  t.same(await ensureControlBuckets(backend), [], 'a second ensureControlBuckets creates nothing');
  const source = new KvPrincipalSource(silentLogger());
  source.attach(backend);
  const auth = createBusAuthenticator({ mode: 'enforce', source, internalIdentityPublicKeys: [identity.publicKey], logger: silentLogger() });
  server = createNatsServer({ host: '127.0.0.1', port: 0, auth, logger: silentLogger() });
  await server.start();
  // Cheap scrypt: the test exercises hashing and verification, not their cost.
  api = attachControlApi(server, { backend, logger: silentLogger(), internalKeys: [identity.publicKey], source, scrypt: { N: 1024, r: 8, p: 1 } });
  url = `nats://127.0.0.1:${server.port}`;
});

t.teardown(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  api?.detach();
  await server?.close();
});

const conn = ['--server', () => url, '--internal-id-file', idFile] as const;
function args(...a: (string | (() => string))[]): string[] {
  return a.map((x) => (typeof x === 'function' ? x() : x));
}

async function cli(...argv: (string | (() => string))[]): Promise<{ code: number; out: string; err: string }> {
  const o = memoryOutput();
  const code = await main(args(...argv), o);
  return { code, out: o.stdout.join('\n'), err: o.stderr.join('\n') };
}

/** The real binary as a child process (killed by PID in teardown if it outlives the test). */
function child(argv: string[], stdin?: string): Promise<{ code: number | null; out: string; err: string }> {
  const p = spawn(process.execPath, ['--import', 'tsx', join(root, 'bin/membershipd.ts'), ...argv], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, INTERNAL_ID_FILE: '' } });
  t.teardown(() => {
    if (p.exitCode === null && p.pid !== undefined) process.kill(p.pid, 'SIGKILL');
  });
  let out = '';
  let err = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr.on('data', (d: Buffer) => (err += d.toString()));
  p.stdin.on('error', () => undefined); // a child that exits before reading its input: its exit code tells
  p.stdin.end(stdin ?? '');
  return new Promise((resolve) => {
    const timer = setTimeout(() => p.kill('SIGKILL'), 40_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

/** users + roles state (key → revision); "nothing changed" compares two of these. */
function principalState(): string {
  const parts: string[] = [];
  for (const b of [controlBuckets.users, controlBuckets.roles]) {
    for (const e of backend.reader.changesSince(0, b)) parts.push(`${b}/${e.key}@${e.revision}:${e.op}`);
  }
  return parts.sort().join(' ');
}

/** One raw NATS exchange: CONNECT as user/pass, run `ops`, return what the server wrote until `until` matches. */
function rawSession(user: string, pass: string, ops: string, until: RegExp): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = netConnect(server.port, '127.0.0.1');
    let buf = '';
    let sent = false;
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`raw session: no ${until} in ${JSON.stringify(buf)}`));
    }, 10_000);
    s.on('data', (d) => {
      buf += d.toString();
      if (!sent && buf.includes('\r\n')) {
        sent = true;
        s.write(`CONNECT ${JSON.stringify({ user, pass, verbose: false, pedantic: false, protocol: 1, headers: true })}\r\n${ops}`);
      }
      if (until.test(buf)) {
        clearTimeout(timer);
        s.destroy();
        resolve(buf);
      }
    });
    s.on('error', reject);
  });
}

t.test('roles: add is idempotent, never overwrites; bad subjects and the built-in admin refused', async (t) => {
  const add = ['role', 'add', 'orders', '--pub-allow', 'orders.>', '--pub-deny', 'orders.secret', '--sub-allow', 'orders.>', '--sub-allow', '_INBOX.>', '--allow-responses'];
  let r = await cli(...add, ...conn);
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'role orders: created');
  r = await cli('role', 'add', 'orders', '--sub-allow', '_INBOX.>', '--pub-deny', 'orders.secret', '--sub-allow', 'orders.>', '--pub-allow', 'orders.>', '--allow-responses', ...conn);
  t.equal(r.out, 'role orders: unchanged', 'same spec in another order is unchanged');
  t.equal(r.code, 0);
  const before = principalState();
  r = await cli('role', 'add', 'orders', '--pub-allow', 'orders.>', ...conn);
  t.equal(r.code, 3, 'a different spec is a conflict');
  t.match(r.err, /already exists with different permissions.*role update orders/);
  r = await cli('role', 'add', 'bad', '--pub-allow', 'foo..bar', ...conn);
  t.equal(r.code, 2);
  t.match(r.err, /foo\.\.bar/);
  r = await cli('role', 'add', 'admin', '--pub-allow', 'x', ...conn);
  t.equal(r.code, 2);
  t.match(r.err, /built in/);
  r = await cli('role', 'add', 'bad role!', ...conn);
  t.equal(r.code, 2);
  t.match(r.err, /role name "bad role!" is not valid/);
  t.equal(principalState(), before, 'refusals changed nothing');
  r = await cli('role', 'show', 'orders', '--json', ...conn);
  const shown = JSON.parse(r.out) as { role: { publish: { allow: string[]; deny: string[] }; allow_responses: boolean } };
  t.same(shown.role.publish, { allow: ['orders.>'], deny: ['orders.secret'] });
  t.equal(shown.role.allow_responses, true);
  r = await cli('role', 'list', ...conn);
  t.match(r.out, /^NAME\s+PUBLISH/);
  t.match(r.out, /\nadmin\s+allow >/);
  t.match(r.out, /\norders\s+allow orders\.> deny orders\.secret/);
});

let alice: NatsConnection;

t.test('user add through the real binary: created, unchanged, conflict; the user connects with its role', async (t) => {
  let r = await child(['user', 'add', 'alice', '--password-stdin', '--role', 'orders', '--server', url, '--internal-id-file', idFile], 'correct horse\n');
  t.equal(r.code, 0, r.err);
  t.equal(r.out.trim(), 'user alice: created');
  r = await child(['user', 'add', 'alice', '--password-file', join(dir, 'pw-other'), '--role', 'orders', '--server', url, '--internal-id-file', idFile]);
  t.equal(r.code, 3, 'another password for an existing user is a conflict (exit 3)');
  t.match(r.err, /alice already exists with a different specification.*user update alice/);
  let q = await cli('user', 'add', 'alice', '--password-file', join(dir, 'pw-alice'), '--role', 'orders', ...conn);
  t.equal(q.code, 0, q.err);
  t.equal(q.out, 'user alice: unchanged', 'the same spec again is unchanged (password checked against the stored hash)');
  q = await cli('user', 'add', 'alice', '--password-file', join(dir, 'pw-alice'), ...conn);
  t.equal(q.code, 3, 'other roles: conflict');

  q = await cli('user', 'show', 'alice', '--json', ...conn);
  const u = JSON.parse(q.out) as { user: Record<string, unknown> };
  t.same(u.user.roles, ['orders']);
  t.equal(u.user.credential, 'password');
  t.notMatch(q.out, /scrypt/, 'show never shows a hash');
  q = await cli('user', 'list', ...conn);
  t.match(q.out, /^NAME\s+CREDENTIAL\s+ROLES/);
  t.match(q.out, /\nalice\s+password\s+orders\s+false/);
  t.notMatch(q.out, /scrypt/);

  alice = await connect({ servers: url, user: 'alice', pass: 'correct horse', reconnect: false });
  clients.push(alice);
  const sub = alice.subscribe('orders.>', { max: 1 });
  alice.publish('orders.new', 'one');
  for await (const m of sub) t.equal(m.subject, 'orders.new', 'a granted publish is delivered');

  const raw = await rawSession('alice', 'correct horse', 'PUB orders.secret 2\r\nno\r\nPING\r\n', /PONG|-ERR/);
  t.match(raw, /-ERR 'Permissions Violation for Publish to "orders\.secret"'\r\n/, 'the denied subject gets nats-server\'s exact -ERR');
  const admin = await rawSession('alice', 'correct horse', 'PUB $UB.API.USER.ADD _INBOX.x 2\r\n{}\r\nPING\r\n', /PONG|-ERR/);
  t.match(admin, /-ERR 'Permissions Violation for Publish to "\$UB\.API\.USER\.ADD"'/, 'a non-admin cannot even reach the admin API subjects');
});

t.test('admin API: only signed admin principals; concurrent adds create once', async (t) => {
  const enc = new TextEncoder();
  let r = await api.request('$UB.API.USER.LIST', enc.encode('{}'));
  t.match(r, { error: { code: 'forbidden' } }, 'an unsigned request is refused');
  const stranger = createKeyPair('user');
  r = await api.request('$UB.API.USER.LIST', signRequest('$UB.API.USER.LIST', {}, stranger));
  t.match(r, { error: { code: 'forbidden', message: /not an admin principal/ } }, 'a key that is not an admin is refused');
  const signed = signRequest('$UB.API.USER.LIST', {}, { publicKey: identity.publicKey, sign: identity.sign });
  t.match(await api.request('$UB.API.USER.LIST', signed), { users: [{ name: 'alice' }] });
  t.match(await api.request('$UB.API.USER.LIST', signed), { error: { code: 'forbidden', message: /replay/ } }, 'a replayed request is refused');
  r = await api.request('$UB.API.USER.ADD', signRequest('$UB.API.USER.LIST', { name: 'x' }, { publicKey: identity.publicKey, sign: identity.sign }));
  t.match(r, { error: { code: 'forbidden', message: /signature does not verify/ } }, 'a signature for another subject does not verify');
  // Envelope nonces: a changed nonce breaks the signature; an envelope without one (older CLIs) is refused.
  const env = JSON.parse(new TextDecoder().decode(signRequest('$UB.API.USER.LIST', {}, identity))) as { auth: Record<string, unknown>; body: string };
  const swapped = { ...env, auth: { ...env.auth, nonce: 'AAAAAAAAAAAAAAAAAAAAAA' } };
  t.match(await api.request('$UB.API.USER.LIST', enc.encode(JSON.stringify(swapped))), { error: { code: 'forbidden', message: /signature does not verify/ } }, 'a swapped nonce does not verify');
  t.match(await api.request('$UB.API.USER.LIST', enc.encode(JSON.stringify({ ...env, auth: { ...env.auth, nonce: 'x y' } }))), { error: { code: 'bad_request', message: /nonce/ } });
  const legacyTs = Date.now();
  const legacySig = Buffer.from(identity.sign(enc.encode(`$UB.API.USER.LIST\n${legacyTs}\n{}`))).toString('base64url');
  t.match(await api.request('$UB.API.USER.LIST', enc.encode(JSON.stringify({ auth: { key: identity.publicKey, ts: legacyTs, sig: legacySig }, body: '{}' }))), { error: { code: 'bad_request', message: /no auth\.nonce.*upgrade/ } }, 'an envelope without a nonce (older CLI) is refused: it could be replayed on another node');

  const me = { publicKey: identity.publicKey, sign: identity.sign };
  const nk = createKeyPair('user').publicKey;
  // The same millisecond on purpose: each envelope's nonce makes its (deterministic Ed25519) signature unique.
  const ts = Date.now();
  const same = await Promise.all(Array.from({ length: 6 }, () => api.request('$UB.API.USER.ADD', signRequest('$UB.API.USER.ADD', { name: 'edge', nkey: nk, roles: ['orders'] }, me, ts))));
  t.same(same.map((x) => (x as { result?: string }).result).sort(), ['created', 'unchanged', 'unchanged', 'unchanged', 'unchanged', 'unchanged'], 'concurrent identical adds: one created');
  const other = createKeyPair('user').publicKey;
  const diff = await api.request('$UB.API.USER.ADD', signRequest('$UB.API.USER.ADD', { name: 'edge', nkey: other, roles: ['orders'] }, me));
  t.match(diff, { error: { code: 'conflict' } });
  t.equal(backend.reader.history(controlBuckets.users, 'edge').length, 1, 'edge was written once');
  r = await api.request('$UB.API.CLUSTER.STATUS', signRequest('$UB.API.CLUSTER.STATUS', {}, me));
  t.match(r, { error: { code: 'not_found' } });
  const off = api.register('CLUSTER', 'STATUS', async (_b, ctx) => ({ nodes: 1, who: ctx.who }));
  t.match(await api.request('$UB.API.CLUSTER.STATUS', signRequest('$UB.API.CLUSTER.STATUS', {}, me)), { nodes: 1, who: `internal:${identity.publicKey}` }, 'registered handlers get the admin check');
  off();
});

t.test("a connection's CONNECT proof stands in for the envelope signature of the same key, and only of it", async (t) => {
  const me = { publicKey: identity.publicKey, sign: identity.sign };
  const impostor = createKeyPair('server');
  // Signed by another key while claiming the internal identity: the bytes of a forged request.
  const forged = () => signRequest('$UB.API.USER.LIST', {}, { publicKey: identity.publicKey, sign: impostor.sign });
  t.match(await api.request('$UB.API.USER.LIST', forged()), { error: { code: 'forbidden', message: /signature does not verify/ } }, 'no connection key: verified, refused');
  t.match(await api.request('$UB.API.USER.LIST', forged(), impostor.publicKey), { error: { code: 'forbidden', message: /signature does not verify/ } }, 'a connection proving another key: verified, refused');
  t.match(await api.request('$UB.API.USER.LIST', forged(), identity.publicKey), { users: [{ name: 'alice' }] }, 'the connection proved this key: no second check');
  const once = signRequest('$UB.API.USER.LIST', {}, me);
  t.match(await api.request('$UB.API.USER.LIST', once, identity.publicKey), { users: [{ name: 'alice' }] });
  t.match(await api.request('$UB.API.USER.LIST', once, identity.publicKey), { error: { code: 'forbidden', message: /replay/ } }, 'replays are refused on both paths');

  // End to end: the key a real client proves at CONNECT reaches the admin API with its request.
  const seed = new TextEncoder().encode(readFileSync(idFile, 'utf8').trim());
  // A private inbox prefix, as the CLI uses: the admin API refuses replies to the shared `_INBOX.`.
  const internal = await connect({ servers: url, authenticator: nkeyAuthenticator(seed), reconnect: false, inboxPrefix: '_INBOX_test_internal' });
  clients.push(internal);
  const ask = async (nc: NatsConnection, payload: Uint8Array) => JSON.parse(new TextDecoder().decode((await nc.request('$UB.API.USER.LIST', payload, { timeout: 5000 })).data)) as unknown;
  t.match(await ask(internal, forged()), { users: [{ name: 'alice' }] }, 'the internal identity\'s connection: its own key needs no signature check');
  const ops = createKeyPair('user');
  t.match(await api.request('$UB.API.USER.ADD', signRequest('$UB.API.USER.ADD', { name: 'ops-e2e', nkey: ops.publicKey, roles: ['admin'] }, me)), { result: 'created' });
  const opsConn = await connect({ servers: url, authenticator: nkeyAuthenticator(new TextEncoder().encode(ops.seed)), reconnect: false, inboxPrefix: '_INBOX_test_ops' });
  clients.push(opsConn);
  t.match(await ask(opsConn, forged()), { error: { code: 'forbidden', message: /signature does not verify/ } }, 'an admin NKey user claiming the internal key: verified, refused');
  t.match(await ask(opsConn, signRequest('$UB.API.USER.LIST', {}, ops)), { users: [{ name: 'alice' }] }, 'its own key: accepted');
  t.match(await api.request('$UB.API.USER.REMOVE', signRequest('$UB.API.USER.REMOVE', { name: 'ops-e2e' }, me)), { result: 'removed' });
});

t.test('a cleartext password through the API is hashed on the API\'s scrypt worker and authenticates a real client', async (t) => {
  const me = { publicKey: identity.publicKey, sign: identity.sign };
  const add = (password: string) => api.request('$UB.API.USER.ADD', signRequest('$UB.API.USER.ADD', { name: 'clear', password, roles: ['orders'] }, me));
  t.match(await add('clear text secret'), { result: 'created' });
  const stored = decodeValue(backend.reader.history(controlBuckets.users, 'clear').at(-1)!.value!, validateUser)!;
  t.match(stored.password, /^scrypt\$\d+\$8\$1\$/, 'stored as an scrypt hash, never the password');
  t.match(await add('clear text secret'), { result: 'unchanged' }, 'the same password again: verified against the stored hash (also on the worker)');
  t.match(await add('another one'), { error: { code: 'conflict' } }, 'another password is a conflict');
  const nc = await connect({ servers: url, user: 'clear', pass: 'clear text secret', reconnect: false });
  clients.push(nc);
  await nc.flush();
  t.pass('a nats.js client authenticates with the password sent in clear to the API');
  await nc.close();
  t.match(await api.request('$UB.API.USER.REMOVE', signRequest('$UB.API.USER.REMOVE', { name: 'clear' }, me)), { result: 'removed' });
});

t.test('bad input: clear error, non-zero exit, nothing changed', async (t) => {
  const before = principalState();
  const cases: [string[], number, RegExp][] = [
    [['user', 'show', 'bob'], 1, /user bob does not exist \(not_found\)/],
    [['user', 'remove', 'bob'], 1, /user bob does not exist/],
    [['user', 'update', 'bob', '--disable'], 1, /user bob does not exist.*user add bob/],
    [['user', 'add', 'bob', '--password-file', join(dir, 'pw-alice'), '--role', 'bad role!'], 2, /role name "bad role!" is not valid/],
    [['user', 'add', 'bob', '--password-file', join(dir, 'pw-alice'), '--role', 'nosuch'], 1, /role nosuch does not exist.*role add nosuch/],
    [['user', 'add', 'bad/name', '--password-file', join(dir, 'pw-alice')], 2, /user name "bad\/name" is not valid/],
    [['user', 'add', 'bob', '--password', 'hunter2'], 2, /--password: a password is never taken from the command line.*--password-stdin or --password-file/],
    [['user', 'add', 'bob'], 2, /a credential is required/],
    [['user', 'add', 'bob', '--nkey', 'UNOTAKEY'], 2, /not an NKey user public key/],
    [['user', 'add', 'bob', '--password-file', join(dir, 'nope')], 2, /--password-file: cannot read .*nope \(ENOENT\)/],
    [['user', 'frob'], 2, /unknown user command "frob"/],
    [['user', 'add', 'bob', '--bogus', 'x'], 2, /unknown flag --bogus/],
    [['user', 'add', 'bob', '--password-file', join(dir, 'pw-alice'), '--store', 'file'], 2, /--store file: .*--users-file.*SIGHUP/],
    [['user', 'add', 'bob', '--password-file', join(dir, 'pw-alice'), '--store', 'etcd'], 2, /--store "etcd": .*use --store kv/],
  ];
  for (const [argv, code, pattern] of cases) {
    const r = await cli(...argv, ...conn);
    t.equal(r.code, code, `${argv.join(' ')} → exit ${code}`);
    t.match(r.err, pattern, argv.join(' '));
    t.notMatch(r.out + r.err, /hunter2/, 'the argv password is never echoed');
  }
  // Connection problems: unreadable identity file, a group-readable one, no reachable node, no identity at all.
  const loose = join(dir, 'loose.id');
  writeFileSync(loose, readFileSync(idFile));
  chmodSync(loose, 0o644);
  const conns: [string[], number, RegExp][] = [
    [['--server', url, '--internal-id-file', join(dir, 'missing.id')], 2, /--internal-id-file: internal identity file .*missing\.id does not exist/],
    [['--server', url, '--internal-id-file', loose], 2, /readable or writable by group\/others.*chmod 600/],
    [['--server', 'nats://127.0.0.1:1', '--internal-id-file', idFile], 1, /no reachable node at nats:\/\/127\.0\.0\.1:1/],
    [['--server', url, '--env-file', join(dir, 'none.env')], 2, /--env-file: cannot read/],
  ];
  for (const [c, code, pattern] of conns) {
    const r = await cli('user', 'add', 'bob', '--password-file', join(dir, 'pw-alice'), ...c);
    t.equal(r.code, code, c.join(' '));
    t.match(r.err, pattern);
  }
  const stranger = join(dir, 'stranger.id');
  loadOrCreateIdentity(stranger);
  const r = await cli('user', 'add', 'bob', '--password-file', join(dir, 'pw-alice'), '--server', url, '--internal-id-file', stranger);
  t.equal(r.code, 1, 'another node\'s identity is refused by enforce mode');
  t.match(r.err, /no reachable node.*refused|not an admin/i);
  t.equal(principalState(), before, 'no bad input changed users or roles');

  // The env file fallback: the operator on a node types only the command.
  writeFileSync(join(dir, 'cluster.env'), `# cluster.env\nNATS_CLIENT_PORT=${server.port}\nINTERNAL_ID_FILE="${idFile}"\n`);
  const viaEnv = await cli('user', 'show', 'alice', '--env-file', join(dir, 'cluster.env'));
  t.equal(viaEnv.code, 0, viaEnv.err);
  t.match(viaEnv.out, /name\s+alice/);
});

t.test('update and remove: a disabled or removed user is disconnected at once; audit records everything', async (t) => {
  let r = await cli('user', 'update', 'alice', '--role', 'orders', ...conn);
  t.equal(r.out, 'user alice: unchanged');
  const closed = alice.closed();
  r = await cli('user', 'remove', 'alice', ...conn);
  t.equal(r.code, 0, r.err);
  t.equal(r.out, 'user alice: removed');
  const outcome = await Promise.race([closed.then(() => 'closed'), new Promise((res) => setTimeout(() => res('still open'), 10_000))]);
  t.equal(outcome, 'closed', 'the removed user\'s live connection is closed');
  await t.rejects(connect({ servers: url, user: 'alice', pass: 'correct horse', reconnect: false }), 'the removed user cannot connect');
  r = await cli('user', 'remove', 'alice', ...conn);
  t.equal(r.code, 1, 'removing again: not found');

  r = await cli('user', 'add', 'erin', '--password-file', join(dir, 'pw-other'), '--role', 'orders', ...conn);
  t.equal(r.out, 'user erin: created');
  const erin = await connect({ servers: url, user: 'erin', pass: 'another secret', reconnect: false });
  clients.push(erin);
  const erinClosed = erin.closed();
  r = await cli('user', 'update', 'erin', '--disable', ...conn);
  t.equal(r.out, 'user erin: updated');
  t.equal(await Promise.race([erinClosed.then(() => 'closed'), new Promise((res) => setTimeout(() => res('still open'), 10_000))]), 'closed', 'disabling closes the live connection');
  await t.rejects(connect({ servers: url, user: 'erin', pass: 'another secret', reconnect: false }), 'a disabled user cannot connect');
  r = await cli('user', 'update', 'erin', '--enable', '--password-file', join(dir, 'pw-alice'), ...conn);
  t.equal(r.out, 'user erin: updated');
  const again = await connect({ servers: url, user: 'erin', pass: 'correct horse', reconnect: false });
  clients.push(again);
  t.pass('enabled with a new password, erin connects with it');
  r = await cli('user', 'remove', 'erin', ...conn);
  t.equal(r.out, 'user erin: removed');

  r = await cli('role', 'remove', 'orders', ...conn);
  t.equal(r.code, 1, 'a role still given to a user is not removed');
  t.match(r.err, /still given to 1 user\(s\) \(edge\)/);

  r = await cli('audit', 'list', '--json', '--limit', '500', ...conn);
  t.equal(r.code, 0, r.err);
  const audit = (JSON.parse(r.out) as { audit: { who: string; what: string; target: string; result: string }[] }).audit;
  const who = `internal:${identity.publicKey}`;
  const has = (what: string, target: string, result: string): boolean => audit.some((a) => a.what === what && a.target === target && a.result === result && a.who === who);
  t.ok(has('role.add', 'orders', 'created'));
  t.ok(has('role.add', 'orders', 'unchanged'));
  t.ok(has('role.add', 'orders', 'error:conflict'));
  t.ok(has('user.add', 'alice', 'created'));
  t.ok(has('user.add', 'alice', 'unchanged'));
  t.ok(has('user.add', 'alice', 'error:conflict'));
  t.ok(has('user.remove', 'alice', 'removed'));
  t.ok(has('role.remove', 'orders', 'error:in_use'));
  t.notMatch(r.out, /correct horse|scrypt/, 'no secret in the audit');
});

t.test('id init/show and certs ca|node|client: files, modes, and a mutual TLS handshake', async (t) => {
  const idPath = join(dir, 'ids', 'n1.id');
  let r = await cli('id', 'init', '--internal-id-file', idPath);
  t.equal(r.code, 0, r.err);
  const key = /public key (N[A-Z2-7]{55})/.exec(r.out)?.[1];
  t.ok(key, r.out);
  t.equal(statSync(idPath).mode & 0o777, 0o600);
  r = await cli('id', 'init', '--internal-id-file', idPath, '--json');
  t.match(JSON.parse(r.out), { result: 'exists', public_key: key }, 'init again keeps the identity');
  r = await cli('id', 'show', '--internal-id-file', join(dir, 'ids', 'none.id'));
  t.equal(r.code, 2);
  t.match(r.err, /does not exist/);

  const certs = join(dir, 'pki');
  t.equal((await cli('certs', 'ca', '--out', certs)).code, 0);
  r = await cli('certs', 'node', 'n1', '--ca', certs, '--out', certs, '--ip', '127.0.10.7', '--dns', 'n1.example.org');
  t.equal(r.code, 0, r.err);
  t.equal((await cli('certs', 'client', 'admin', '--ca', certs, '--out', certs)).code, 0);
  for (const f of ['ca.key', 'n1.key', 'admin.key']) t.equal(statSync(join(certs, f)).mode & 0o777, 0o600, `${f} is 0600`);
  const caBefore = readFileSync(join(certs, 'ca.pem'), 'utf8');
  r = await cli('certs', 'ca', '--out', certs);
  t.match(r.out, /exists/);
  t.equal(readFileSync(join(certs, 'ca.pem'), 'utf8'), caBefore, 'an existing CA is never overwritten');
  r = await cli('certs', 'node', 'n2', '--ca', certs, '--out', certs, '--ip', 'not-an-ip');
  t.equal(r.code, 2);
  t.match(r.err, /--ip "not-an-ip" is not an IP address/);
  const nodeCert = new (await import('node:crypto')).X509Certificate(readFileSync(join(certs, 'n1.pem')));
  t.match(nodeCert.subjectAltName, /IP Address:127\.0\.10\.7/);
  t.match(nodeCert.subjectAltName, /DNS:n1\.example\.org/);

  const read = (f: string): string => readFileSync(join(certs, f), 'utf8');
  const srv = tls.createServer({ cert: read('n1.pem'), key: read('n1.key'), ca: read('ca.pem'), requestCert: true, rejectUnauthorized: true }, (s) => {
    s.end(`hello ${s.getPeerCertificate().subject.CN}`);
  });
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => srv.close());
  const port = (srv.address() as { port: number }).port;
  const hello = await new Promise<string>((res, rej) => {
    const c = tls.connect({ host: '127.0.0.1', port, ca: read('ca.pem'), cert: read('admin.pem'), key: read('admin.key') }, () => undefined);
    let got = '';
    c.on('data', (d) => (got += d.toString()));
    c.on('end', () => res(got));
    c.on('error', rej);
  });
  t.equal(hello, 'hello admin', 'mutual TLS: the client cert is verified by the node, the node cert by the client');
  // A client without a certificate is refused by the node.
  const refused = await new Promise<string>((res) => {
    const c = tls.connect({ host: '127.0.0.1', port, ca: read('ca.pem') });
    c.on('data', () => res('data'));
    c.on('error', (e) => res(`error ${e.message}`));
    c.on('close', () => res('closed'));
  });
  t.not(refused, 'data', 'no client certificate: no data');
});

t.test('parsers: admin argv, env files, signed envelopes and bucket values never throw unexpectedly (seeded)', async (t) => {
  const seed = Number(process.env.SEED ?? (Date.now() % 2_147_483_647));
  t.comment(`seed=${seed} (replay: SEED=${seed} npx tap test/control/admin.test.ts)`);
  const spec = { positionals: ['NAME'], flags: { role: 'list', json: 'switch', server: 'string' } } as const;
  const token = fc.oneof(fc.constantFrom('--role', '--json', '--server', '--password', '--json=1', '--role=', '--', 'alice', '-x', '--bogus'), fc.string({ maxLength: 8 }));
  fc.assert(fc.property(fc.array(token, { maxLength: 8 }), (argv) => {
    try {
      const p = parseAdminArgs('membershipd user add', spec, argv);
      if (p.positionals.length !== 1) throw new Error('positional count not enforced');
    } catch (err) {
      if (!(err instanceof UsageError)) throw err;
      if (/[\r\n]/.test(err.message)) throw new Error(`multi-line message for ${JSON.stringify(argv)}`);
      // Problems are found left to right: a leading --password is always the one named.
      if (argv[0] === '--password' && !/never taken from the command line/.test(err.message)) throw new Error(`--password not named: ${err.message}`);
    }
  }), { seed, numRuns: 1500 });

  // Env files: any text parses to a map; a KEY=VALUE line written by us reads back whole-line at any position.
  fc.assert(fc.property(fc.array(fc.string({ maxLength: 20 }), { maxLength: 8 }), fc.stringMatching(/^[A-Z_][A-Z0-9_]{0,10}$/), fc.stringMatching(/^[^\r\n"'#]{0,20}$/), fc.nat(8),
    (lines, key, value, at) => {
      const text = [...lines.slice(0, at), `${key}=${value}`, ...lines.slice(at)].join('\n');
      const env = parseEnvFile(text);
      const last = [...text.split('\n')].reverse().find((l) => new RegExp(`^\\s*(export\\s+)?${key}\\s*=`).test(l));
      if (last === `${key}=${value}` && env.get(key) !== value.trim()) throw new Error(`${key} read as ${String(env.get(key))}`);
    }), { seed, numRuns: 500 });

  // Envelopes: random bytes and every single-byte mutation of a valid envelope are refused, never thrown.
  const verifier = new EnvelopeVerifier();
  const me = { publicKey: identity.publicKey, sign: identity.sign };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
    const v = verifier.verify('$UB.API.USER.ADD', bytes);
    if (v.ok) throw new Error('random bytes accepted');
  }), { seed, numRuns: 500 });
  const good = signRequest('$UB.API.USER.ADD', { name: 'zed', nkey: 'x' }, me);
  let refusedMutations = 0;
  for (let i = 0; i < good.length; i++) {
    const m = Uint8Array.from(good);
    m[i] = m[i]! ^ 0x01;
    const v = new EnvelopeVerifier().verify('$UB.API.USER.ADD', m);
    if (!v.ok) refusedMutations++;
    else if (JSON.stringify(v.body) !== JSON.stringify({ name: 'zed', nkey: 'x' })) t.fail(`mutation at ${i} accepted with another body`);
  }
  t.ok(refusedMutations > good.length * 0.9, `${refusedMutations}/${good.length} single-bit mutations refused; none accepted with a changed body`);
  t.ok(new EnvelopeVerifier().verify('$UB.API.USER.ADD', good).ok, 'the unmutated envelope verifies');

  // Bucket values: random msgpack-ish bytes decode to undefined or a value that passes its schema again.
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
    for (const validate of [validateUser, validateRole] as ((v: unknown) => unknown)[]) {
      const v = decodeValue(bytes, validate);
      if (v !== undefined) validate(v);
    }
  }), { seed, numRuns: 1000 });
  fc.assert(fc.property(fc.record({ v: fc.constantFrom(1, 2), name: fc.string({ maxLength: 10 }), roles: fc.array(fc.string({ maxLength: 6 }), { maxLength: 3 }),
    disabled: fc.oneof(fc.boolean(), fc.constant('no')), created: fc.integer(), updated: fc.nat(), by: fc.string(), nkey: fc.constant(createKeyPair('user').publicKey) }, { requiredKeys: [] }), (rec) => {
    const v = decodeValue(encodeValue(rec), validateUser);
    if (v !== undefined && (v.name !== rec.name || v.v !== 1)) throw new Error('a user value changed in decoding');
  }), { seed, numRuns: 500 });
});
