// Issue 19 (security hardening), findings 2–6, each reproduced the way the tester found it — real clients
// (@nats-io/transport-node, @nats-io/kv) over real TLS sockets to a 3-node cluster in deploy posture (bus auth
// enforce, mutual-TLS routes) — and shown closed. Every regression test here fails on the code before the fix.
import t from 'tap';
import { join } from 'node:path';
import tls from 'node:tls';
import { writeFileSync } from 'node:fs';
import { connect, type NatsConnection, type Status } from '@nats-io/transport-node';
import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { wsconnect, type WsSocketFactory } from '@nats-io/nats-core';
import { WebSocket } from 'ws';
import { unpack } from 'msgpackr';
import { startCluster, userInboxPrefix, type LocalClusterHandle } from '../../src/index.js';
import { main, memoryOutput } from '../../src/cli/index.js';
import { signRequest } from '../../src/control/index.js';
import { readIdentity } from '../../src/auth/index.js';
import { createCertificateAuthority, issueCertificate } from '../../src/certs/index.js';
import { captureLogger, makeFixtures, makeTransport } from '../transport/helpers.js';
import { encodeKvCommand, KvErrorCode, KvStateMachine, nonceRetentionMs, type KvCommand } from '../../store/index.js';
import { waitFor as waitUntil } from '../support/wait.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
const waitMs = 15_000;

let cluster: LocalClusterHandle;
let dir: string;
const open: NatsConnection[] = [];

const roles = {
  app: { publish: ['app.>'], subscribe: ['app.>'] },
  responder: { publish: ['svc.status'], subscribe: ['app.echo'], allow_responses: true },
  // The README's old example role: every reply on the node under the shared `_INBOX.` reaches this user.
  snoop: { publish: ['snoop.x'], subscribe: ['_INBOX.>'] },
  kvapp: { publish: ['$JS.API.>', '$KV.appdata.>', '$JS.FC.>'], subscribe: [] },
};

t.before(async () => {
  cluster = await startCluster({
    nodes: 3,
    websocket: true,
    auth: {
      users: [
        { name: 'bob', password: 'bob-secret', roles: ['app'] },
        { name: 'carol', password: 'carol-secret', roles: ['responder'] },
        { name: 'eve', password: 'eve-secret', roles: ['snoop'] },
        { name: 'kim', password: 'kim-secret', roles: ['kvapp'] },
      ],
      roles,
    },
  });
  dir = cluster.dir;
  writeFileSync(join(dir, 'dave.pw'), 'dave-password-1\n', { mode: 0o600 });
});

t.teardown(async () => {
  for (const c of open) await c.close().catch(() => undefined);
  await cluster?.stop();
});

/** Connects to node `i` as `user` (the generated admin when omitted), with that user's private inbox prefix. */
async function as(i: number, user?: string, pass?: string, inboxPrefix?: string): Promise<NatsConnection> {
  const o = cluster.connectOptions;
  const nc = await connect({
    servers: cluster.urls[i]!, tls: o.tls, user: user ?? o.user, pass: pass ?? o.pass,
    inboxPrefix: inboxPrefix ?? (user === undefined ? o.inboxPrefix : userInboxPrefix(user)), reconnect: false,
  });
  open.push(nc);
  return nc;
}

/** The admin CLI, in process, against node `i` with node n(i+1)'s internal identity. */
async function cli(i: number, ...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = memoryOutput();
  const code = await main([...argv, '--server', cluster.urls[i]!, '--tls-ca', join(dir, 'ca.pem'), '--internal-id-file', join(dir, `n${i + 1}.seed`)], o);
  return { code, out: o.stdout.join('\n'), err: o.stderr.join('\n') };
}

/** Errors the server reported to a connection (nats.js status events of type 'error'). */
function errorsOf(nc: NatsConnection): string[] {
  const got: string[] = [];
  void (async () => {
    for await (const s of nc.status() as AsyncIterable<Status>) {
      if (s.type === 'error') got.push(String((s as { error?: unknown }).error));
    }
  })();
  return got;
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, boundMs = waitMs): Promise<void> {
  await waitUntil(cond, { what, timeoutMs: boundMs, intervalMs: 10 });
}

// ---- finding 4: a reply subject could write a reserved subject -------------------------------------------

t.test('4: a response grant never reaches $KV./$JS./$UB./$SYS./$SRV.; ordinary replies still work', async (t) => {
  const admin = await as(0);
  const kv = await new Kvm(jetstream(admin, { timeout: waitMs })).create('mybucket');
  const carol = await as(0, 'carol', 'carol-secret');
  const carolErrors = errorsOf(carol);
  const seen: string[] = [];
  carol.subscribe('app.echo', { callback: (err, m) => { if (!err) { seen.push(m.reply ?? ''); m.respond(enc.encode('pwned')); } } });
  await carol.flush();
  const bob = await as(1, 'bob', 'bob-secret');

  // The tester's attack: bob (no KV right) asks carol's ordinary responder to answer into a KV key.
  bob.publish('app.echo', 'x', { reply: '$KV.mybucket.injected' });
  await bob.flush();
  await waitFor('carol to get the request', () => seen.length === 1);
  await carol.flush(); // the server has handled carol's reply once this PONG is back
  await waitFor('carol to be told her reply was refused', () => carolErrors.some((e) => e.includes('$KV.mybucket.injected')));
  // A later write through the same node is committed after anything carol's reply could have proposed.
  await kv.put('marker', 'm');
  t.equal(await kv.get('injected'), null, 'the KV key was not written');

  for (const reply of ['$JS.API.STREAM.DELETE.KV_mybucket', '$UB.API.USER.LIST', '$SYS.REQ.SERVER.PING', '$SRV.PING']) {
    bob.publish('app.echo', 'x', { reply });
    await bob.flush();
    await waitFor(`carol to get the request with reply ${reply}`, () => seen.includes(reply));
    await carol.flush();
    await waitFor(`refusal of ${reply}`, () => carolErrors.some((e) => e.includes(reply)));
  }
  t.ok(await new Kvm(jetstream(admin, { timeout: waitMs })).open('mybucket'), 'the bucket still exists');

  // An ordinary request/reply through the response grant, into bob's private inbox, is answered.
  const r = await bob.request('app.echo', 'hi', { timeout: waitMs });
  t.equal(r.string(), 'pwned', 'allow_responses still answers a normal reply inbox');
});

// ---- finding 5: `_INBOX.>` leaked every reply on the node ------------------------------------------------

t.test('5: admin CLI, admin API and KV replies never reach a `_INBOX.>` subscriber; ub_users carries no hash', async (t) => {
  const eve = await as(0, 'eve', 'eve-secret');
  const leaked: string[] = [];
  eve.subscribe('_INBOX.>', { callback: (err, m) => { if (!err) leaked.push(`${m.subject} ${m.string()}`); } });
  await eve.flush();

  let r = await cli(0, 'role', 'add', 'reader', '--sub-allow', 'app.>');
  t.equal(r.code, 0, r.err);
  r = await cli(0, 'user', 'add', 'dave', '--password-file', join(dir, 'dave.pw'), '--role', 'reader');
  t.equal(r.code, 0, r.err);
  r = await cli(0, 'user', 'list', '--json');
  t.equal(r.code, 0, r.err);
  t.match(r.out, /"dave"/);
  r = await cli(0, 'audit', 'list', '--json');
  t.equal(r.code, 0, r.err);

  // An admin request asking for its reply on the shared prefix is refused before it is acted on.
  const admin = await as(0);
  const id = readIdentity(join(dir, 'n1.seed'));
  const signer = { publicKey: id.publicKey, sign: (d: Uint8Array) => id.sign(d) };
  const shared = `_INBOX.${Math.random().toString(36).slice(2)}`;
  const reply = new Promise<string>((resolve) => {
    admin.subscribe(shared, { max: 1, callback: (_e, m) => resolve(m.string()) });
  });
  await admin.flush();
  admin.publish('$UB.API.USER.LIST', signRequest('$UB.API.USER.LIST', {}, signer), { reply: shared });
  const refusal = await reply;
  t.match(refusal, /private reply inbox/, 'refused with what to do');
  t.notMatch(refusal, /dave/, 'and nothing listed');

  // The admin reads ub_users over KV: the record has its credential kind, never the scrypt hash.
  const kv = await new Kvm(jetstream(admin, { timeout: waitMs })).open('ub_users');
  const e = await kv.get('dave');
  t.ok(e, 'the admin reads ub_users');
  const value = unpack(e!.value) as Record<string, unknown>;
  t.equal(value.name, 'dave');
  t.equal(value.credential, 'password');
  t.notOk('password' in value, 'no password hash in the KV value');
  t.notMatch(Buffer.from(e!.value).toString('latin1'), /scrypt\$/, 'no scrypt hash anywhere in the bytes');
  const watched: string[] = [];
  const it = await kv.watch({ key: 'dave' });
  for await (const w of it) {
    watched.push(Buffer.from(w.value).toString('latin1'));
    break;
  }
  t.notMatch(watched.join(), /scrypt\$/, 'a watch (consumer delivery) carries no hash either');

  // A KV user's own reads go through its private inbox (bob: KV user would need KV rights; admin is enough here).
  await admin.flush();
  await eve.flush();
  // (The refusal above went to the shared prefix the test itself chose; it carries nothing.)
  t.same(leaked.filter((x) => !x.startsWith(shared)), [], 'eve (subscribe _INBOX.>) saw no reply: no user list, no audit, no KV value');

  // Each user owns `_INBOX_<user>.>` and nobody else's.
  const bob = await as(0, 'bob', 'bob-secret');
  const bobErrors = errorsOf(bob);
  bob.subscribe(`${userInboxPrefix('carol')}.>`);
  await bob.flush();
  await waitFor('the refusal of another user\'s inbox', () => bobErrors.some((x) => x.includes(userInboxPrefix('carol'))));
  t.equal(userInboxPrefix('a.b'), '_INBOX_a~b', 'a dotted name cannot nest inside another user\'s inbox');
  t.match(cluster.connectOptions.inboxPrefix, /^_INBOX_admin_[0-9a-f]{24}$/, 'the library\'s admin replies to a random private prefix');
});

// ---- finding 3: WebSocket ignored TLS -------------------------------------------------------------------

t.test('3: --ws-port with a TLS certificate serves wss:// only, and the URL says so', async (t) => {
  const node = cluster.nodes[0]!;
  t.match(node.urls.ws, /^wss:\/\/127\.0\.0\.1:\d+$/, 'the announced URL is wss://');
  const port = Number(new URL(node.urls.ws!).port);
  // A plain ws:// client (the tester's cleartext password login) does not get a NATS session.
  const plain = await new Promise<string>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`);
    ws.on('message', () => { ws.terminate(); resolve('spoke NATS in clear text'); });
    ws.on('error', () => resolve('refused'));
    ws.on('close', () => resolve('refused'));
  });
  t.equal(plain, 'refused', 'ws:// on the port is refused');
  const ca = cluster.connectOptions.tls!.ca;
  const wsFactory: WsSocketFactory = async (u) => ({ socket: new WebSocket(u, { ca }) as never, encrypted: true });
  const w = await wsconnect({ servers: `wss://127.0.0.1:${port}`, wsFactory, user: 'bob', pass: 'bob-secret', inboxPrefix: userInboxPrefix('bob'), reconnect: false });
  t.teardown(() => w.close());
  const got = new Promise<string>((resolve) => w.subscribe('app.ws', { max: 1, callback: (_e, m) => resolve(m.string()) }));
  await w.flush();
  const bob = await as(0, 'bob', 'bob-secret');
  bob.publish('app.ws', 'over wss');
  t.equal(await got, 'over wss', 'a password user works over wss://');
});

// ---- finding 2: admin envelopes could be replayed ----------------------------------------------------------

t.test('2: a signed admin request is accepted once cluster-wide; non-canonical signatures are refused', async (t) => {
  const id = readIdentity(join(dir, 'n1.seed'));
  const signer = { publicKey: id.publicKey, sign: (d: Uint8Array) => id.sign(d) };
  writeFileSync(join(dir, 'frank.pw'), 'frank-password-1\n', { mode: 0o600 });
  let r = await cli(0, 'user', 'add', 'frank', '--password-file', join(dir, 'frank.pw'));
  t.equal(r.code, 0, r.err);
  const n1 = await as(0);
  const n2 = await as(1);
  const ask = async (nc: NatsConnection, subject: string, payload: Uint8Array): Promise<Record<string, unknown>> =>
    JSON.parse(dec.decode((await nc.request(subject, payload, { timeout: waitMs })).data)) as Record<string, unknown>;

  // The tester's capture: `user update frank --disable` on n1 ...
  const captured = signRequest('$UB.API.USER.UPDATE', { name: 'frank', disabled: true }, signer);
  t.match(await ask(n1, '$UB.API.USER.UPDATE', captured), { result: 'updated' });
  r = await cli(0, 'user', 'update', 'frank', '--enable');
  t.equal(r.code, 0, r.err);
  // ... replayed verbatim on n2 (and on n3, and on n1 again): refused everywhere, nothing changed.
  t.match(await ask(n2, '$UB.API.USER.UPDATE', captured), { error: { code: 'forbidden', message: /replay/ } }, 'replay on another node refused');
  const n3 = await as(2);
  t.match(await ask(n3, '$UB.API.USER.UPDATE', captured), { error: { code: 'forbidden', message: /replay/ } }, 'and on a third');
  t.match(await ask(n1, '$UB.API.USER.UPDATE', captured), { error: { code: 'forbidden', message: /replay/ } }, 'and on the first');
  r = await cli(1, 'user', 'show', 'frank', '--json');
  t.match(JSON.parse(r.out), { user: { disabled: false } }, 'frank is still enabled');
  r = await cli(2, 'audit', 'list', '--json');
  const audit = (JSON.parse(r.out) as { audit: { what: string; target: string; result: string }[] }).audit.filter((a) => a.target === 'frank' && a.what === 'user.update');
  // n2's and n3's refusals come from the replicated record and are audited as refusals; n1 refuses from its own
  // memory of the nonce before the request reaches a handler (logged, not audited).
  t.same(audit.map((a) => a.result), ['updated', 'updated', 'error:forbidden', 'error:forbidden'], 'the replays are audited as refusals, not as changes');

  // A change of another area (cluster.*) is claimed through the log before its handler runs.
  const replicas = signRequest('$UB.API.CLUSTER.REPLICAS', { replicas: 3 }, signer);
  const first = await ask(n1, '$UB.API.CLUSTER.REPLICAS', replicas);
  t.notMatch(JSON.stringify(first), /replay/, 'the first kv-replicas request is not a replay');
  t.match(await ask(n2, '$UB.API.CLUSTER.REPLICAS', replicas), { error: { code: 'forbidden', message: /replay/ } }, 'its replay on n2 is refused');

  // Same node, the signature's spare low bits flipped: the same signature spelled differently is refused.
  const env = JSON.parse(dec.decode(signRequest('$UB.API.USER.LIST', {}, signer))) as { auth: { sig: string } & Record<string, unknown>; body: string };
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const last = env.auth.sig.slice(-1);
  const flipped = env.auth.sig.slice(0, -1) + alphabet[alphabet.indexOf(last) ^ 1]!;
  t.same(Buffer.from(flipped, 'base64url'), Buffer.from(env.auth.sig, 'base64url'), 'the flipped spelling decodes to the same signature bytes');
  const respelled = enc.encode(JSON.stringify({ ...env, auth: { ...env.auth, sig: flipped } }));
  t.match(await ask(n1, '$UB.API.USER.LIST', enc.encode(JSON.stringify(env))), { users: [] });
  t.match(await ask(n1, '$UB.API.USER.LIST', respelled), { error: { code: 'forbidden', message: /canonical/ } }, 'non-canonical base64 refused');
});

t.test('2: the replicated nonce record is deterministic, snapshotted, bounded in time', async (t) => {
  const a = new KvStateMachine();
  const b = new KvStateMachine();
  let index = 0;
  const apply = (cmd: KvCommand) => {
    index++;
    const r = a.apply(index, encodeKvCommand(cmd));
    t.same(b.apply(index, encodeKvCommand(cmd)), r, `replicas agree on entry ${index}`);
    return r;
  };
  const t0 = 1_800_000_000_000;
  t.match(apply({ op: 'bucket.create', bucket: 'ub_users', config: {}, ts: t0 }), { ok: true });
  t.match(apply({ op: 'nonce', ts: t0, claim: { id: 'N1:abc', at: t0 } }), { ok: true });
  t.match(apply({ op: 'nonce', ts: t0 + 5, claim: { id: 'N1:abc', at: t0 } }), { ok: false, code: KvErrorCode.nonceSeen });
  // A txn refused by its guard does not record its claim (the handler retries with the same nonce) ...
  const put = { op: 'put' as const, bucket: 'ub_users', key: 'k', value: new Uint8Array([1]), ts: t0 };
  t.match(apply({ op: 'txn', ts: t0, guards: [{ bucket: 'ub_users', key: 'k', revision: 99 }], ops: [put], claim: { id: 'N1:def', at: t0 } }), { ok: false, code: KvErrorCode.wrongRevision });
  t.match(apply({ op: 'txn', ts: t0, guards: [], ops: [put], claim: { id: 'N1:def', at: t0 } }), { ok: true, kind: 'txn' });
  // ... and a replayed txn writes nothing.
  t.match(apply({ op: 'txn', ts: t0, guards: [], ops: [put], claim: { id: 'N1:def', at: t0 } }), { ok: false, code: KvErrorCode.nonceSeen });
  t.equal(a.history('ub_users', 'k').length, 1);
  // The snapshot carries the record: a node restored from it refuses the same replays.
  const image = a.snapshot();
  t.same(Buffer.from(image), Buffer.from(b.snapshot()), 'byte-identical snapshots');
  const c = new KvStateMachine();
  c.restore(image);
  t.same(Buffer.from(c.snapshot()), Buffer.from(image), 'restore(snapshot) keeps the bytes');
  t.match(c.apply(index + 1, encodeKvCommand({ op: 'nonce', ts: t0, claim: { id: 'N1:abc', at: t0 } })), { ok: false, code: KvErrorCode.nonceSeen });
  // Past the retention window the claim is forgotten, and a request that old is refused outright.
  const later = t0 + nonceRetentionMs + 1;
  t.match(apply({ op: 'nonce', ts: later, claim: { id: 'N1:new', at: later } }), { ok: true });
  t.match(apply({ op: 'nonce', ts: later, claim: { id: 'N1:abc', at: t0 } }), { ok: false, code: KvErrorCode.nonceExpired });
  t.same(Buffer.from(a.snapshot()), Buffer.from(b.snapshot()));
  // A state that never saw a claim writes the format without the nonce record (2: per-bucket revisions);
  // with claims it is 3.
  const plain = new KvStateMachine();
  plain.apply(1, encodeKvCommand({ op: 'bucket.create', bucket: 'x', config: {}, ts: t0 }));
  t.equal((unpack(plain.snapshot()) as unknown[])[0], 2);
  t.equal((unpack(a.snapshot()) as unknown[])[0], 3);
  // Malformed claims are refused as bad commands on every node alike.
  t.match(a.apply(++index, encodeKvCommand({ op: 'nonce', ts: t0, claim: { id: '', at: t0 } } as KvCommand)), { ok: false, code: KvErrorCode.badCommand });
});

// ---- finding 6: the lower-severity ones ------------------------------------------------------------------

t.test('6: max_subscriptions per connection, with nats-server\'s error text', async (t) => {
  const bob = await as(2, 'bob', 'bob-secret');
  const errors = errorsOf(bob);
  for (let i = 0; i < 10_001; i++) bob.subscribe(`app.s.${i}`);
  await bob.flush();
  await waitFor('the refusal of subscription 10 001', () => errors.some((e) => /maximum subscriptions exceeded/i.test(e)));
  t.notOk(bob.isClosed(), 'the connection stays open, as with nats-server');
  t.pass('the 10 001st subscription is refused');
});

t.test('6: a KV consumer delivers only where its creator may publish; $JS.API.INFO counts only visible buckets', async (t) => {
  const admin = await as(1);
  await new Kvm(jetstream(admin, { timeout: waitMs })).create('appdata');
  const kim = await as(1, 'kim', 'kim-secret');
  const kv = await new Kvm(jetstream(kim, { timeout: waitMs })).open('appdata');
  await kv.put('k1', 'v1');
  const keys: string[] = [];
  for await (const k of await kv.keys()) keys.push(k);
  t.same(keys, ['k1'], 'a KV watch through the user\'s private inbox works');
  const jsm = await jetstreamManager(kim, { timeout: waitMs });
  await t.rejects(jsm.consumers.add('KV_appdata', { deliver_subject: 'app.commands', ack_policy: AckPolicy.None }), /deliver subject app\.commands/,
    'a deliver subject the creator may not publish to is refused');
  await t.rejects(jsm.consumers.add('KV_appdata', { deliver_subject: `${userInboxPrefix('bob')}.stolen`, ack_policy: AckPolicy.None }), /deliver subject/,
    'another user\'s inbox is refused');

  const mine = await jsm.getAccountInfo();
  const all = await (await jetstreamManager(admin, { timeout: waitMs })).getAccountInfo();
  const names: string[] = [];
  for await (const n of (await jetstreamManager(admin, { timeout: waitMs })).streams.names()) names.push(n);
  const hidden = names.filter((n) => n.startsWith('KV_ub_')).length;
  t.ok(hidden >= 6, 'the admin sees the control buckets');
  t.equal(all.streams, names.length, 'the admin counts everything');
  t.equal(mine.streams, names.length - hidden, 'kim counts only the buckets she can see');
});

t.test('6: a route needs a node certificate (route role), refusals log the real address, a claimed name is not kept', async (t) => {
  const fx = await makeFixtures(['a', 'b']);
  const client = await issueCertificate(fx.ca, { commonName: 'app-client', usage: 'client' });
  const { logger, lines } = captureLogger();
  const a = makeTransport(fx, 'a', { logger });
  await a.start();
  t.teardown(() => a.close());
  const { port } = a.address();
  const dial = (pem: { cert: string; key: string }) => new Promise<string>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, cert: pem.cert, key: pem.key, ca: fx.ca.cert, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    let local = '';
    s.on('connect', () => { local = `${s.localAddress}:${s.localPort}`; });
    s.on('secureConnect', () => s.write('x'));
    s.on('error', () => undefined);
    s.on('close', () => resolve(local));
  });

  // A client certificate of the very same CA (what `membershipd certs client` issues to an application).
  const from = await dial(client);
  const refused = () => lines.filter((l) => l.msg === 'route refused');
  await waitFor('the refusal of the client certificate', () => refused().length === 1);
  t.match(refused()[0], { code: 'tls', reason: /lacks the route role/, address: from }, 'refused for its role, logged with its address');

  // A certificate of another CA: the log names the address it came from, not "undefined:undefined".
  const rogue = await dial(fx.foreign);
  await waitFor('the refusal of the foreign certificate', () => refused().length === 2);
  t.match(refused()[1], { reason: /not signed by the cluster CA/, address: rogue });

  // The dialing side checks the listener's certificate the same way.
  const ca2 = await createCertificateAuthority('role-ca');
  const clientOnly = await issueCertificate(ca2, { commonName: 'c', usage: 'client' });
  const node = await issueCertificate(ca2, { commonName: 'n' });
  const { logger: logB, lines: linesB } = captureLogger();
  const listener = makeTransport({ ...fx, ca: ca2, certs: { l: clientOnly } }, 'l');
  await listener.start();
  t.teardown(() => listener.close());
  const dialer = makeTransport({ ...fx, ca: ca2, certs: { d: node } }, 'd', { logger: logB, routes: `127.0.0.1:${listener.address().port}` });
  await dialer.start();
  t.teardown(() => dialer.close());
  await waitFor('the dialer to refuse the listener', () => linesB.some((l) => l.code === 'tls' && /route role/.test(String(l.reason))));
  t.pass('a listener with a client certificate is refused by the dialer');

  // A peer this node refuses (here: its own peer check says no) does not get its claimed name onto the route.
  const { logger: logC, lines: linesC } = captureLogger();
  const b = makeTransport(fx, 'b');
  await b.start();
  t.teardown(() => b.close());
  const c = makeTransport(fx, 'a', { logger: logC, routes: `127.0.0.1:${b.address().port}`, verifyPeer: () => 'not a member of this cluster' });
  await c.start();
  t.teardown(() => c.close());
  await waitFor('the peer check to refuse b', () => linesC.some((l) => /not a member/.test(String(l.reason))));
  t.same(c.peers().map((p) => p.name), [undefined], 'the refused route shows no peer name');
});

t.test('6: the CLI sends a scrypt hash, never the password; the same spec stays unchanged', async (t) => {
  const admin = await as(2);
  const requests: string[] = [];
  admin.subscribe('$UB.API.USER.>', { callback: (err, m) => { if (!err) requests.push(m.string()); } });
  await admin.flush();
  writeFileSync(join(dir, 'gina.pw'), 'gina-password-1\n', { mode: 0o600 });
  let r = await cli(2, 'user', 'add', 'gina', '--password-file', join(dir, 'gina.pw'));
  t.equal(r.code, 0, r.err);
  t.match(r.out, /created/);
  r = await cli(1, 'user', 'add', 'gina', '--password-file', join(dir, 'gina.pw'));
  t.equal(r.code, 0, r.err);
  t.match(r.out, /unchanged/, 'the same password again is unchanged (hashed with the stored salt)');
  writeFileSync(join(dir, 'gina.pw'), 'another-password\n', { mode: 0o600 });
  r = await cli(2, 'user', 'add', 'gina', '--password-file', join(dir, 'gina.pw'));
  t.equal(r.code, 3, 'a different password is a conflict');
  r = await cli(2, 'user', 'update', 'gina', '--password-file', join(dir, 'gina.pw'));
  t.equal(r.code, 0, r.err);
  t.match(r.out, /updated/);
  await admin.flush();
  await waitFor('the CLI requests to be seen', () => requests.filter((x) => x.includes('gina')).length >= 4);
  const all = requests.join('\n');
  t.notMatch(all, /gina-password-1|another-password/, 'no request carried a cleartext password');
  t.match(all, /password_hash/, 'they carried scrypt hashes');
});

