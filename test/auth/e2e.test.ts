// Bus auth end to end: the real NATS server (src/nats) with the authenticator and a users file, driven by the
// real @nats-io/transport-node client and by raw sockets that check the exact wire texts.
import t, { type Test } from 'tap';
import { connect as netConnect, type Socket } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { createNatsServer } from '../../src/nats/index.js';
import {
  createBusAuthenticator,
  createKeyPair,
  createToken,
  encodeSignature,
  hashPassword,
  hashToken,
  loadOrCreateIdentity,
  MemorySource,
  openFileSource,
  type BusAuthenticator,
} from '../../src/auth/index.js';
import { silentLogger } from '../../src/log.js';

const enc = new TextEncoder();
const cheap = { N: 1024, r: 8, p: 1 };
const waitMs = 5000;

/** A raw client: reads the INFO, then lets a test send lines and wait for exact replies. */
class Raw {
  text = '';
  closed = false;
  private readonly waiters = new Set<() => void>();
  info: Record<string, unknown> = {};
  constructor(readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.text += d;
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => {});
  }
  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
  static async open(port: number): Promise<Raw> {
    const raw = new Raw(netConnect({ host: '127.0.0.1', port }));
    await raw.waitFor(/^INFO (.*) ?\r\n/);
    raw.info = JSON.parse(/^INFO (.*?) ?\r\n/.exec(raw.text)![1]!) as Record<string, unknown>;
    raw.text = raw.text.slice(raw.text.indexOf('\r\n') + 2);
    return raw;
  }
  get nonce(): string {
    return this.info.nonce as string;
  }
  send(s: string): void {
    this.sock.write(s);
  }
  /** Resolves when the received text matches `re` (or the socket closed when `orClose`), else rejects after waitMs. */
  waitFor(re: RegExp, orClose = false): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (re.test(this.text) || (orClose && this.closed)) done(() => resolve(this.text));
        else if (this.closed) done(() => reject(new Error(`closed before ${re}; got ${JSON.stringify(this.text)}`)));
      };
      const timer = setTimeout(() => done(() => reject(new Error(`timeout waiting for ${re}; got ${JSON.stringify(this.text)}`))), waitMs);
      const done = (f: () => void): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        f();
      };
      this.waiters.add(check);
      check();
    });
  }
  /** Sends `ops` then PING and returns everything received up to the PONG (the -ERRs of those ops). */
  async exchange(ops: string): Promise<string> {
    this.text = '';
    this.send(`${ops}PING\r\n`);
    await this.waitFor(/PONG\r\n$/);
    return this.text.replace(/PONG\r\n$/, '');
  }
  async closeAndWait(): Promise<void> {
    if (!this.closed) {
      this.sock.end();
      await this.waitFor(/(?!)/, true).catch(() => this.sock.destroy());
    }
  }
}

const connectLine = (o: Record<string, unknown>): string =>
  `CONNECT ${JSON.stringify({ verbose: false, pedantic: false, protocol: 1, headers: true, ...o })}\r\n`;
const err = (text: string): string => `-ERR '${text}'\r\n`;
const pubErr = (s: string): string => err(`Permissions Violation for Publish to "${s}"`);
const subErr = (s: string, q?: string): string => err(`Permissions Violation for Subscription to "${s}"${q !== undefined ? ` using queue "${q}"` : ''}`);

interface Fixture {
  port: number;
  path: string;
  doc: { users: Record<string, unknown>[]; roles: Record<string, unknown> };
  token: string;
  userKp: ReturnType<typeof createKeyPair>;
  identitySeedPath: string;
  reload(): Promise<{ ok: boolean }>;
  logs: string[];
  auth: BusAuthenticator;
}

async function startFixture(t: Test, mode: 'enforce' | 'warn'): Promise<Fixture> {
  const dir = t.testdir({});
  const token = createToken();
  const userKp = createKeyPair('user');
  const identitySeedPath = join(dir, 'node.seed');
  const identity = loadOrCreateIdentity(identitySeedPath);
  const doc = {
    users: [
      { name: 'alice', password: await hashPassword('pw-alice', cheap), roles: ['app'] },
      { name: 'bob', password: await hashPassword('pw-bob', cheap), roles: ['app'] },
      { name: 'tok', token: hashToken(token), roles: ['app'] },
      { name: 'nk', nkey: userKp.publicKey, roles: ['app'] },
      { name: 'matrix', password: await hashPassword('pw-matrix', cheap), roles: ['matrix'] },
      { name: 'broad', password: await hashPassword('pw-broad', cheap), roles: ['broad'] },
      { name: 'resp', password: await hashPassword('pw-resp', cheap), roles: ['responder'] },
    ] as Record<string, unknown>[],
    roles: {
      app: { publish: ['app.>', 'svc.>'], subscribe: ['app.>', '_INBOX.>'] },
      matrix: {
        publish: { allow: ['orders.>', 'metrics.*'], deny: ['orders.secret'] },
        subscribe: { allow: ['orders.*', 'metrics.>', 'work workers', '_INBOX.>'], deny: ['orders.audit', 'metrics.cpu ops'] },
      },
      broad: { publish: ['>', '$KV.b1.>'], subscribe: ['>', '$KV.b1.>'] },
      responder: { publish: [], subscribe: ['svc.>'], allow_responses: true },
    } as Record<string, unknown>,
  };
  const path = join(dir, 'users.json');
  writeFileSync(path, JSON.stringify(doc, null, 2));
  const logs: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void logs.push(s) });
  const source = await openFileSource(path, logger);
  const auth = createBusAuthenticator({ mode, source, internalIdentityPublicKeys: [identity.publicKey], logger });
  const server = createNatsServer({ host: '127.0.0.1', port: 0, auth, logger: silentLogger(), limits: { authTimeoutMs: 1500 } });
  await server.start();
  t.teardown(() => server.close());
  return { port: server.port, path, doc, token, userKp, identitySeedPath, reload: () => source.reload(), logs, auth };
}

function track(t: Test, nc: NatsConnection): NatsConnection {
  t.teardown(() => nc.close().catch(() => {}));
  return nc;
}

async function refused(p: Promise<NatsConnection>): Promise<string> {
  try {
    const nc = await p;
    await nc.close();
    return 'accepted';
  } catch (e) {
    return (e as Error).message;
  }
}

t.test('enforce', async (t) => {
  const f = await startFixture(t, 'enforce');
  const port = f.port;

  t.test('INFO asks for auth and carries a fresh nonce per connection', async (t) => {
    const a = await Raw.open(port);
    const b = await Raw.open(port);
    t.teardown(() => Promise.all([a.closeAndWait(), b.closeAndWait()]));
    t.equal(a.info.auth_required, true);
    t.match(a.nonce, /^[A-Za-z0-9_-]{11,}$/);
    t.not(a.nonce, b.nonce);
  });

  t.test('each credential kind with the real client, accepted and refused', async (t) => {
    const pw = track(t, await connect({ port, user: 'alice', pass: 'pw-alice', reconnect: false }));
    await pw.flush();
    t.equal(await refused(connect({ port, user: 'alice', pass: 'pw-wrong', reconnect: false })), 'Authorization Violation', 'wrong password');
    t.equal(await refused(connect({ port, user: 'nobody', pass: 'pw-alice', reconnect: false })), 'Authorization Violation', 'unknown user');
    const tk = track(t, await connect({ port, token: f.token, reconnect: false }));
    await tk.flush();
    t.equal(await refused(connect({ port, token: `${f.token}x`, reconnect: false })), 'Authorization Violation', 'wrong token');
    const nk = track(t, await connect({ port, authenticator: nkeyAuthenticator(enc.encode(f.userKp.seed)), reconnect: false }));
    await nk.flush();
    const stranger = createKeyPair('user');
    t.equal(await refused(connect({ port, authenticator: nkeyAuthenticator(enc.encode(stranger.seed)), reconnect: false })), 'Authorization Violation', 'unknown nkey');
    t.equal(await refused(connect({ port, reconnect: false })), 'Authorization Violation', 'no credentials');
    // The user works within its role.
    const sub = pw.subscribe('app.>', { max: 1 });
    tk.publish('app.hello', 'hi');
    for await (const m of sub) t.equal(m.string(), 'hi');
  });

  t.test('NKey challenge over raw sockets: good, another nonce, replay, malformed key', async (t) => {
    const a = await Raw.open(port);
    const sigA = encodeSignature(f.userKp.sign(enc.encode(a.nonce)));
    t.equal(await a.exchange(connectLine({ nkey: f.userKp.publicKey, sig: sigA })), '', 'signed nonce accepted');
    await a.closeAndWait();

    const b = await Raw.open(port);
    b.send(connectLine({ nkey: f.userKp.publicKey, sig: sigA }) + 'PING\r\n');
    t.equal(await b.waitFor(/\r\n/, true).then(() => b.waitFor(/(?!)/, true)), err('Authorization Violation'), 'replayed signature refused and closed');
    t.ok(b.closed);

    const c = await Raw.open(port);
    const other = encodeSignature(f.userKp.sign(enc.encode(`${c.nonce}x`)));
    c.send(connectLine({ nkey: f.userKp.publicKey, sig: other }) + 'PING\r\n');
    t.equal(await c.waitFor(/(?!)/, true), err('Authorization Violation'), 'signature of another nonce');

    const d = await Raw.open(port);
    const bad = f.userKp.publicKey.slice(0, 54) + (f.userKp.publicKey[54] === 'A' ? 'BA' : 'AA');
    d.send(connectLine({ nkey: bad, sig: encodeSignature(f.userKp.sign(enc.encode(d.nonce))) }) + 'PING\r\n');
    t.equal(await d.waitFor(/(?!)/, true), err('Authorization Violation'), 'malformed public key (bad checksum)');

    const e = await Raw.open(port);
    e.send(connectLine({ nkey: f.userKp.publicKey }) + 'PING\r\n');
    t.equal(await e.waitFor(/(?!)/, true), err('Authorization Violation'), 'nkey without sig');
  });

  t.test('ops before CONNECT and silent clients', async (t) => {
    const a = await Raw.open(port);
    a.send('PING\r\n');
    t.equal(await a.waitFor(/(?!)/, true), err('Authorization Violation'));
    const b = await Raw.open(port);
    t.equal(await b.waitFor(/(?!)/, true), err('Authentication Timeout'), 'auth timeout closes a silent client');
  });

  t.test('the internal identity is the admin principal', async (t) => {
    const { readFileSync } = await import('node:fs');
    const seed = readFileSync(f.identitySeedPath, 'utf8').trim();
    const adm = track(t, await connect({ port, authenticator: nkeyAuthenticator(enc.encode(seed)), reconnect: false }));
    const sub = adm.subscribe('>', { max: 2 });
    adm.publish('$SYS.REQ.SERVER.PING', 'x');
    adm.publish('$UB.API.USER.LIST', 'y');
    const got: string[] = [];
    for await (const m of sub) got.push(m.subject);
    t.same(got, ['$SYS.REQ.SERVER.PING', '$UB.API.USER.LIST']);
    const other = createKeyPair('server');
    t.equal(await refused(connect({ port, authenticator: nkeyAuthenticator(enc.encode(other.seed)), reconnect: false })), 'Authorization Violation', 'another server key is not admin');
  });

  t.test('permission matrix against the exact -ERR texts', async (t) => {
    const m = await Raw.open(port);
    t.teardown(() => m.closeAndWait());
    t.equal(await m.exchange(connectLine({ user: 'matrix', pass: 'pw-matrix' })), '');
    const cases: [string, string][] = [
      ['PUB orders.new 1\r\nx\r\n', ''], // allow orders.>
      ['PUB orders.a.b 1\r\nx\r\n', ''], // '>' spans tokens
      ['PUB orders.secret 1\r\nx\r\n', pubErr('orders.secret')], // deny wins
      ['PUB orders 1\r\nx\r\n', pubErr('orders')], // '>' needs a token
      ['PUB metrics.cpu 1\r\nx\r\n', ''], // '*'
      ['PUB metrics.cpu.0 1\r\nx\r\n', pubErr('metrics.cpu.0')], // '*' is one token
      ['PUB other 1\r\nx\r\n', pubErr('other')],
      ['SUB orders.new 1\r\n', ''],
      ['SUB orders.* 2\r\n', subErr('orders.*')], // overlaps deny orders.audit
      ['SUB orders.> 3\r\n', subErr('orders.>')], // broader than the grant orders.*
      ['SUB orders.audit 4\r\n', subErr('orders.audit')],
      ['SUB metrics.> 5\r\n', ''],
      ['SUB metrics.cpu ops 6\r\n', subErr('metrics.cpu', 'ops')], // queue deny
      ['SUB metrics.cpu dev 7\r\n', ''], // other queue fine
      ['SUB work 8\r\n', subErr('work')], // allowed only with queue "workers"
      ['SUB work workers 9\r\n', ''],
      ['SUB work others 10\r\n', subErr('work', 'others')],
      ['SUB $KV.b1.k 11\r\n', subErr('$KV.b1.k')],
      ['PUB $JS.API.INFO 1\r\nx\r\n', pubErr('$JS.API.INFO')],
    ];
    for (const [op, want] of cases) t.equal(await m.exchange(op), want, op.split('\r\n')[0]!);
    t.notOk(m.closed, 'violations keep the connection open');

    const b = await Raw.open(port);
    t.teardown(() => b.closeAndWait());
    t.equal(await b.exchange(connectLine({ user: 'broad', pass: 'pw-broad' })), '');
    const broad: [string, string][] = [
      ['PUB anything.at.all 1\r\nx\r\n', ''],
      ['PUB $SYS.REQ.X 1\r\nx\r\n', pubErr('$SYS.REQ.X')], // reserved: '>' does not grant it
      ['PUB $UB.API.USER.ADD 1\r\nx\r\n', pubErr('$UB.API.USER.ADD')],
      ['PUB $KV.b2.k 1\r\nx\r\n', pubErr('$KV.b2.k')],
      ['PUB $KV.b1.k 1\r\nx\r\n', ''], // explicit grant
      ['SUB > 1\r\n', subErr('>')], // could receive reserved subjects
      ['SUB *.x 2\r\n', subErr('*.x')],
      ['SUB app.> 3\r\n', ''],
      ['SUB $KV.b1.> 4\r\n', ''],
      ['SUB $KV.> 5\r\n', subErr('$KV.>')],
    ];
    for (const [op, want] of broad) t.equal(await b.exchange(op), want, `broad: ${op.split('\r\n')[0]!}`);

    // Denied messages are dropped, allowed ones delivered: the matrix user's SUB orders.new saw one message.
    t.equal(await m.exchange('PUB orders.new 2\r\nok\r\nPUB orders.secret 2\r\nno\r\n'), `MSG orders.new 1 2\r\nok\r\n${pubErr('orders.secret')}`);
  });

  t.test('allow_responses: one reply per request, the second is a violation', async (t) => {
    const r = await Raw.open(port);
    t.teardown(() => r.closeAndWait());
    t.equal(await r.exchange(connectLine({ user: 'resp', pass: 'pw-resp' }) + 'SUB svc.> 1\r\n'), '');
    const nc = track(t, await connect({ port, user: 'alice', pass: 'pw-alice', reconnect: false }));
    const reply = nc.request('svc.echo', 'q', { timeout: waitMs });
    const msg = await r.waitFor(/MSG svc\.echo 1 (\S+) 1\r\nq\r\n/);
    const inbox = /MSG svc\.echo 1 (\S+) 1\r\n/.exec(msg)![1]!;
    t.equal(await r.exchange(`PUB ${inbox} 2\r\nr1\r\nPUB ${inbox} 2\r\nr2\r\n`), pubErr(inbox));
    t.equal((await reply).string(), 'r1');
    t.equal(await r.exchange('PUB svc.other 1\r\nx\r\n'), pubErr('svc.other'), 'no publish grant of its own');
  });

  t.test('live revocation and users-file reload', async (t) => {
    const alice = track(t, await connect({ port, user: 'alice', pass: 'pw-alice', reconnect: false }));
    const bob = track(t, await connect({ port, user: 'bob', pass: 'pw-bob', reconnect: false }));
    const bobSub = bob.subscribe('app.>');
    await bob.flush();
    const aliceClosed = alice.closed();

    // A malformed file on reload keeps the previous state and every connection.
    writeFileSync(f.path, '{"users": [');
    const bad = await f.reload();
    t.equal(bad.ok, false);
    t.ok(f.logs.some((l) => l.includes('users file reload failed') && l.includes('"line":1')), 'logged with line/column');
    await alice.flush();
    await bob.flush();

    // Remove alice, narrow bob's role: alice is disconnected, bob stays but loses the subscription.
    const doc = structuredClone(f.doc);
    doc.users = doc.users.filter((u) => u.name !== 'alice');
    doc.users.push({ name: 'carol', password: await hashPassword('pw-carol', cheap), roles: ['app'] });
    (doc.roles as Record<string, { subscribe: string[] }>).app!.subscribe = ['app.x', '_INBOX.>'];
    writeFileSync(f.path, JSON.stringify(doc));
    t.ok((await f.reload()).ok);
    const why = await aliceClosed;
    t.match(String(why), /Authorization Violation/, 'revoked user disconnected');
    const subErrText = await bobSub.closed.then((e) => String(e));
    t.match(subErrText, /Permissions Violation for Subscription to "app.>"/, 'no-longer-allowed subscription cancelled with the violation');
    await bob.flush();
    t.notOk(bob.isClosed(), 'a user that stays valid keeps its connection');
    const carol = track(t, await connect({ port, user: 'carol', pass: 'pw-carol', reconnect: false }));
    await carol.flush();
    t.equal(await refused(connect({ port, user: 'alice', pass: 'pw-alice', reconnect: false })), 'Authorization Violation', 'removed user cannot reconnect');
    writeFileSync(f.path, JSON.stringify(f.doc));
    t.ok((await f.reload()).ok);
  });
});

t.test('warn mode: never blocks, logs would-be refusals and violations', async (t) => {
  const f = await startFixture(t, 'warn');
  const info = await Raw.open(f.port);
  t.equal(info.info.auth_required, undefined, 'no auth_required');
  t.type(info.nonce, 'string', 'a nonce so NKey clients can still authenticate');
  await info.closeAndWait();

  const anon = track(t, await connect({ port: f.port, reconnect: false }));
  const failed = track(t, await connect({ port: f.port, user: 'alice', pass: 'wrong', reconnect: false }));
  const alice = track(t, await connect({ port: f.port, user: 'alice', pass: 'pw-alice', reconnect: false }));
  const sub = anon.subscribe('secret.>', { max: 2 });
  await anon.flush();
  alice.publish('secret.a', '1');
  failed.publish('secret.b', '2');
  const got: string[] = [];
  for await (const m of sub) got.push(m.subject);
  t.same(got, ['secret.a', 'secret.b'], 'violations are delivered');
  const logs = f.logs.map((l) => JSON.parse(l) as { msg: string; principal?: string; subject?: string });
  t.ok(logs.some((l) => /would refuse this client/.test(l.msg) && /bad user name or password/.test(JSON.stringify(l))), 'failed login logged');
  t.ok(logs.some((l) => l.principal === 'anonymous' && l.subject === 'secret.>' && /Subscription to "secret.>"/.test(l.msg)));
  t.ok(logs.some((l) => l.principal === 'alice' && l.subject === 'secret.a' && /Publish to "secret.a"/.test(l.msg)));
  t.notOk(f.logs.some((l) => l.includes('pw-alice')), 'no password in logs');
});

t.test('failed attempts are rate-limited per address; NKey clients are not', async (t) => {
  const userKp = createKeyPair('user');
  const source = new MemorySource(
    [
      { name: 'u', password: await hashPassword('pw-u', cheap), roles: ['r'], disabled: false },
      { name: 'k', nkey: userKp.publicKey, roles: ['r'], disabled: false },
    ],
    [{ name: 'r', permissions: { publish: ['x'] }, admin: false }],
  );
  const auth = createBusAuthenticator({ mode: 'enforce', source, logger: silentLogger(), rateLimit: { burst: 2, refillPerSecond: 0.01 } });
  const server = createNatsServer({ host: '127.0.0.1', port: 0, auth, logger: silentLogger() });
  await server.start();
  t.teardown(() => server.close());
  const port = server.port;
  const ok = track(t, await connect({ port, user: 'u', pass: 'pw-u', reconnect: false }));
  await ok.flush();
  t.equal(await refused(connect({ port, user: 'u', pass: 'guess1', reconnect: false })), 'Authorization Violation');
  t.equal(await refused(connect({ port, user: 'u', pass: 'guess2', reconnect: false })), 'Authorization Violation');
  t.equal(await refused(connect({ port, user: 'u', pass: 'pw-u', reconnect: false })), 'Authorization Violation', 'throttled: even the right password is not checked');
  const nk = track(t, await connect({ port, authenticator: nkeyAuthenticator(enc.encode(userKp.seed)), reconnect: false }));
  await nk.flush();
  await ok.flush();
  t.notOk(ok.isClosed(), 'connections already authenticated are untouched');
});

t.test('off mode: everyone allowed, no nonce', async (t) => {
  const auth = createBusAuthenticator({ mode: 'off', logger: silentLogger() });
  const server = createNatsServer({ host: '127.0.0.1', port: 0, auth, logger: silentLogger() });
  await server.start();
  t.teardown(() => server.close());
  const raw = await Raw.open(server.port);
  t.equal(raw.info.auth_required, undefined);
  t.equal(raw.info.nonce, undefined);
  t.equal(await raw.exchange(connectLine({}) + 'SUB > 1\r\nPUB $SYS.x 1\r\nx\r\n'), 'MSG $SYS.x 1 1\r\nx\r\n', 'anonymous may use reserved subjects');
  await raw.closeAndWait();
  const nc = track(t, await connect({ port: server.port, user: 'whoever', pass: 'x', reconnect: false }));
  await nc.flush();
});
