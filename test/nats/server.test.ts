// Raw-socket tests of the NATS server: every op, every -ERR of the catalogue (reference/nats-protocol.md §1.9)
// and whether it closes, limits, pings, slow consumers, the auth hooks and the cluster seams.
import t, { type Test } from 'tap';
import net from 'node:net';
import { createNatsServer, type NatsServerWithCluster, type InterestChange } from '../../src/nats/index.js';
import type { NatsLimits } from '../../src/nats/api.js';
import type { AuthOutcome, AuthRequest, BusAuthenticator, Permissions, Principal } from '../../src/auth/types.js';
import { silentLogger } from '../../src/log.js';
import { pause, waitFor } from '../support/wait.js';

const waitMs = 5000;

class Raw {
  buf = '';
  /** Answer server PINGs at once (like a real client). */
  autoPong = false;
  pongsSent = 0;
  closed = false;
  private readonly sock: net.Socket;
  private waiters: (() => void)[] = [];
  readonly closedP: Promise<void>;
  constructor(port: number) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.setEncoding('latin1');
    this.sock.on('data', (d: string) => {
      this.buf += d;
      if (this.autoPong && this.buf.includes('PING\r\n')) {
        this.pongsSent += this.buf.split('PING\r\n').length - 1;
        this.buf = this.buf.replaceAll('PING\r\n', '');
        this.sock.write('PONG\r\n');
      }
      this.wake();
    });
    this.sock.on('error', () => {});
    this.closedP = new Promise((resolve) => this.sock.on('close', () => {
      this.closed = true;
      this.wake();
      resolve();
    }));
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  send(s: string | Buffer): void {
    this.sock.write(s);
  }
  pause(): void {
    this.sock.pause();
  }
  resume(): void {
    this.sock.resume();
  }
  /** Waits until the received text contains `what` (consumes up to and including it); returns the consumed text. */
  async expect(what: string | RegExp): Promise<string> {
    const end = Date.now() + waitMs;
    for (;;) {
      const idx = typeof what === 'string' ? this.buf.indexOf(what) : this.buf.search(what);
      if (idx >= 0) {
        const len = typeof what === 'string' ? what.length : (this.buf.match(what)![0].length);
        const got = this.buf.slice(0, idx + len);
        this.buf = this.buf.slice(idx + len);
        return got;
      }
      if (this.closed || Date.now() > end) {
        throw new Error(`expected ${String(what)}; got ${JSON.stringify(this.buf.slice(0, 300))} (closed=${this.closed})`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }
  /** Sends PING and waits for a PONG: everything sent before has been processed. */
  async sync(): Promise<string> {
    this.send('PING\r\n');
    return this.expect('PONG\r\n');
  }
  async waitClosed(): Promise<void> {
    await Promise.race([this.closedP, new Promise((_, rej) => setTimeout(() => rej(new Error('not closed')), waitMs))]);
  }
  destroy(): void {
    this.sock.destroy();
  }
}

async function startServer(t: Test, extra: { limits?: Partial<NatsLimits>; auth?: BusAuthenticator; connectUrls?: () => string[] } = {}): Promise<NatsServerWithCluster> {
  const s = createNatsServer({ host: '127.0.0.1', port: 0, logger: silentLogger(), ...extra });
  await s.start();
  t.teardown(() => s.close());
  return s;
}

/** Connects, reads INFO, sends CONNECT (non-verbose unless given), waits for PONG. */
async function client(t: Test, s: NatsServerWithCluster, connect: Record<string, unknown> = {}): Promise<Raw> {
  const c = new Raw(s.port);
  t.teardown(() => c.destroy());
  await c.expect(/INFO .*\r\n/);
  c.send(`CONNECT ${JSON.stringify({ verbose: false, pedantic: false, ...connect })}\r\nPING\r\n`);
  await c.expect('PONG\r\n');
  return c;
}

async function expectErrClose(c: Raw, text: string): Promise<void> {
  await c.expect(`-ERR '${text}'\r\n`);
  await c.waitClosed();
}


t.test('INFO', async (t) => {
  const s = await startServer(t, { connectUrls: () => ['127.0.10.2:4222'] });
  const c = new Raw(s.port);
  t.teardown(() => c.destroy());
  const line = await c.expect(/INFO .*\r\n/);
  t.match(line, /^INFO \{.*\} \r\n$/, 'INFO {json} then a space and CRLF, as nats-server');
  const info = JSON.parse(line.slice(5).trim()) as Record<string, unknown>;
  t.match(info.server_id, /^N[A-Z2-7]{55}$/);
  t.equal(info.server_id, s.serverId);
  t.equal(info.server_name, s.serverName);
  t.equal(info.proto, 1);
  t.equal(info.headers, true);
  t.equal(info.max_payload, 1048576);
  t.equal(info.port, s.port);
  t.equal(info.client_ip, '127.0.0.1');
  t.type(info.client_id, 'number');
  t.same(info.connect_urls, ['127.0.10.2:4222']);
  t.notOk('auth_required' in info);
  t.notOk('nonce' in info);
  t.notOk('tls_required' in info);
  const [maj, min, patch] = String(info.version).split('.').map(Number);
  t.ok(maj! > 2 || (maj === 2 && (min! > 9 || (min === 9 && patch! >= 4))), 'version ≥ 2.9.4 (nats.js KV watch)');
});

t.test('async INFO with new connect_urls goes to protocol 1 clients only', async (t) => {
  let urls = ['127.0.10.2:4222'];
  const s = await startServer(t, { connectUrls: () => urls });
  const p1 = await client(t, s, { protocol: 1 });
  const p0 = await client(t, s);
  urls = ['127.0.10.2:4222', '127.0.10.3:4222'];
  s.announceConnectUrls();
  const info = await p1.expect(/INFO .*\r\n/);
  t.same((JSON.parse(info.slice(5)) as { connect_urls: string[] }).connect_urls, urls);
  t.equal(await p0.sync(), 'PONG\r\n', 'a protocol 0 client gets no async INFO');
});

t.test('before CONNECT without auth: PING and PUB work, verbose defaults to true', async (t) => {
  const s = await startServer(t);
  const c = new Raw(s.port);
  t.teardown(() => c.destroy());
  await c.expect(/INFO .*\r\n/);
  c.send('PING\r\n');
  await c.expect('PONG\r\n');
  c.send('PUB a 1\r\nx\r\n');
  await c.expect('+OK\r\n');
  c.send('CONNECT {}\r\n');
  await c.expect('+OK\r\n');
  c.send('ping\r\n');
  t.equal(await c.expect('PONG\r\n'), 'PONG\r\n', 'no +OK after PING');
  c.send('CONNECT {"verbose":false}\r\nSUB a 1\r\n');
  t.equal(await c.sync(), 'PONG\r\n', 'no +OK once verbose is false');
});

t.test('PUB/SUB/MSG, reply subjects, wildcards, one delivery per matching sid, duplicate sid', async (t) => {
  const s = await startServer(t);
  const c = await client(t, s);
  c.send('SUB foo.* 1\r\nSUB foo.> 2\r\nSUB foo.bar 3\r\nsub foo.bar 3\r\n');
  await c.sync();
  c.send('PUB foo.bar 5\r\nhello\r\n');
  const got = await c.sync();
  t.equal(got.match(/MSG foo\.bar \d 5\r\nhello\r\n/g)?.length, 3, 'three subscriptions, three copies (duplicate sid ignored)');
  c.send('PUB foo.a.b reply.x 2\r\nhi\r\n');
  t.equal(await c.sync(), 'MSG foo.a.b 2 reply.x 2\r\nhi\r\nPONG\r\n', 'only > matches two tokens; reply carried');
  c.send('PUB\tfoo.bar \t 0\r\n\r\n');
  t.match(await c.sync(), /MSG foo\.bar 1 0\r\n\r\n/, 'zero-length payload, tabs as separators');
});

t.test('queue groups: each message to exactly one member, plain subscribers get all', async (t) => {
  const s = await startServer(t);
  const members = await Promise.all([client(t, s), client(t, s), client(t, s)]);
  for (const m of members) {
    m.send('SUB work q1 7\r\n');
    await m.sync();
  }
  const plain = await client(t, s);
  plain.send('SUB work 1\r\n');
  await plain.sync();
  const pub = await client(t, s);
  for (let i = 0; i < 60; i++) pub.send(`PUB work 2\r\n${String(i).padStart(2, '0')}\r\n`);
  await pub.sync();
  // Each member's PING is answered after the messages queued to it: sync until the 60 have arrived somewhere.
  const counts = members.map(() => 0);
  await waitFor(async () => {
    for (const [i, m] of members.entries()) counts[i]! += ((await m.sync()).match(/MSG work 7 2/g) ?? []).length;
    return counts.reduce((a, b) => a + b, 0) >= 60;
  }, { what: () => `60 queue-group messages delivered (${counts.join(',')} so far)`, timeoutMs: 10_000 });
  t.equal(counts.reduce((a, b) => a + b, 0), 60, 'every message to one member');
  t.ok(counts.filter((n) => n > 0).length >= 2, `spread over members: ${counts.join(',')}`);
  t.equal(((await plain.sync()).match(/MSG work 1 2/g) ?? []).length, 60);
});

t.test('UNSUB with max, immediate UNSUB, unknown sid', async (t) => {
  const s = await startServer(t);
  const c = await client(t, s);
  c.send('SUB x 1\r\nUNSUB 1 2\r\n');
  for (let i = 0; i < 4; i++) c.send('PUB x 1\r\nz\r\n');
  t.equal(((await c.sync()).match(/MSG x 1 1/g) ?? []).length, 2, 'auto-unsubscribed after 2');
  t.equal(s.stats().subscriptions, 0);
  c.send('SUB y 2\r\nPUB y 1\r\na\r\nPUB y 1\r\nb\r\nUNSUB 2 1\r\nPUB y 1\r\nc\r\n');
  t.equal(((await c.sync()).match(/MSG y 2 1/g) ?? []).length, 2, 'max already reached: removed at once');
  c.send('CONNECT {"verbose":true}\r\nUNSUB 99\r\n');
  await c.expect('+OK\r\n+OK\r\n');
});

t.test('headers: HPUB → HMSG, header-less subscribers get MSG without headers, hdr 0', async (t) => {
  const s = await startServer(t);
  const h = await client(t, s, { headers: true });
  const plain = await client(t, s);
  h.send('SUB h 1\r\n');
  plain.send('SUB h 1\r\n');
  await h.sync();
  await plain.sync();
  const hdr = 'NATS/1.0\r\nX-A: 1\r\n\r\n';
  h.send(`HPUB h r ${hdr.length} ${hdr.length + 2}\r\n${hdr}hi\r\n`);
  t.match(await h.sync(), `HMSG h 1 r ${hdr.length} ${hdr.length + 2}\r\n${hdr}hi\r\n`);
  t.match(await plain.sync(), 'MSG h 1 r 2\r\nhi\r\n');
  h.send('HPUB h 0 2\r\nv1\r\n');
  t.match(await h.sync(), 'MSG h 1 2\r\nv1\r\n', 'zero-length header block is delivered as MSG');
  plain.send('HPUB h 0 2\r\nv1\r\n');
  await plain.waitClosed();
  t.notMatch(plain.buf, /-ERR/, 'HPUB without headers support closes without -ERR');
});

t.test('echo false suppresses own messages', async (t) => {
  const s = await startServer(t);
  const c = await client(t, s, { echo: false });
  c.send('SUB e 1\r\nPUB e 1\r\nx\r\n');
  t.equal(await c.sync(), 'PONG\r\n');
  const d = await client(t, s);
  d.send('SUB e 1\r\nPUB e 1\r\nx\r\n');
  t.match(await d.sync(), 'MSG e 1 1\r\nx\r\n');
});

t.test('no_responders', async (t) => {
  const s = await startServer(t);
  const c = await client(t, s, { headers: true, no_responders: true });
  c.send('SUB _INBOX.abc.* 3\r\nPUB nobody.home _INBOX.abc.x1 1\r\nx\r\n');
  t.equal(await c.sync(), 'HMSG _INBOX.abc.x1 3 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPONG\r\n');
  c.send('PUB nobody.home _INBOX.other 1\r\nx\r\n');
  t.equal(await c.sync(), 'PONG\r\n', 'no matching subscription of the publisher: nothing sent');
  const plain = await client(t, s, { headers: true });
  plain.send('SUB _INBOX.p.* 1\r\nPUB nobody _INBOX.p.1 1\r\nx\r\n');
  t.equal(await plain.sync(), 'PONG\r\n', 'only when the client asked for it');
  const echoOff = await client(t, s, { headers: true, no_responders: true, echo: false });
  echoOff.send('SUB svc 1\r\nSUB _INBOX.q.* 2\r\nPUB svc _INBOX.q.1 1\r\nx\r\n');
  t.match(await echoOff.sync(), 'HMSG _INBOX.q.1 2 16 16', 'own subscription does not count with echo off');
});

t.test('CONNECT errors', async (t) => {
  const s = await startServer(t);
  const cases: [string, string | null][] = [
    ['{"no_responders":true}', 'no responders requires headers support'],
    ['{"protocol":2}', 'invalid client protocol'],
    ['{not json', null],
    ['{"verbose":"yes"}', null],
    ['[1,2]', null],
  ];
  for (const [json, err] of cases) {
    const c = new Raw(s.port);
    t.teardown(() => c.destroy());
    await c.expect(/INFO .*\r\n/);
    c.send(`CONNECT ${json}\r\nPING\r\n`);
    if (err === null) {
      await c.waitClosed();
      t.equal(c.buf, '', `${json}: closed without -ERR`);
    } else {
      await expectErrClose(c, err);
      t.pass(`${json}: -ERR '${err}' and close`);
    }
  }
});

t.test('protocol errors and limits', async (t) => {
  const s = await startServer(t, { limits: { maxPayloadBytes: 64, maxControlLineBytes: 128, maxSubscriptions: 2 } });
  const closing: [string, string, string | null][] = [
    ['unknown op', 'FOO bar\r\n', 'Unknown Protocol Operation'],
    ['blank line', '\r\n', 'Unknown Protocol Operation'],
    ['payload length mismatch', 'PUB a 2\r\nabc\r\n', 'Unknown Protocol Operation'],
    ['max payload', 'PUB a 65\r\n', 'Maximum Payload Violation'],
    ['max control line', `SUB ${'a'.repeat(200)} 1\r\n`, 'maximum control line exceeded'],
    ['bad arg count', 'PUB a 1 2 3\r\n', null],
    ['negative size', 'PUB a -1\r\n', null],
  ];
  for (const [name, input, err] of closing) {
    const c = await client(t, s);
    c.send(input);
    if (err === null) {
      await c.waitClosed();
      t.equal(c.buf, '', `${name}: closed without -ERR`);
    } else {
      await expectErrClose(c, err);
      t.pass(`${name}: -ERR and close`);
    }
  }
  const c = await client(t, s, { pedantic: true });
  c.send('SUB a..b 1\r\n');
  await c.expect("-ERR 'Invalid Subject'\r\n");
  c.send('PUB a.* 1\r\nx\r\n');
  await c.expect("-ERR 'Invalid Publish Subject'\r\n");
  c.send('SUB s1 1\r\nSUB s2 2\r\nSUB s3 3\r\n');
  await c.expect("-ERR 'maximum subscriptions exceeded'\r\n");
  c.send('PUB a.$GNR.x $GNR.a.b 1\r\nx\r\n');
  await c.expect(`-ERR 'Permissions Violation for Publish with Reply of "$GNR.a.b"'\r\n`);
  await c.sync();
  t.notOk(c.closed, 'these errors keep the connection open');
  const quiet = await client(t, s);
  quiet.send('SUB w 1\r\nPUB w.* 1\r\nx\r\nPUB a..b 1\r\nx\r\n');
  t.equal(await quiet.sync(), 'PONG\r\n', 'without pedantic a wildcard publish is dropped silently');
});

t.test('max connections: INFO, then -ERR and close', async (t) => {
  const s = await startServer(t, { limits: { maxConnections: 1 } });
  await client(t, s);
  const c = new Raw(s.port);
  t.teardown(() => c.destroy());
  await c.expect(/INFO .*\r\n/);
  await expectErrClose(c, 'maximum connections exceeded');
  t.equal(s.stats().connections, 1);
});

t.test('server PINGs; unanswered PINGs end in Stale Connection', async (t) => {
  const s = await startServer(t, { limits: { pingIntervalMs: 100, pingMax: 2 } });
  const stale = await client(t, s);
  const alive = await client(t, s);
  alive.autoPong = true;
  await stale.expect('PING\r\n');
  await stale.expect('PING\r\n');
  await expectErrClose(stale, 'Stale Connection');
  // Past the point where an unanswering client is cut (pingMax 2): three PINGs answered, still connected.
  await waitFor(() => alive.pongsSent >= 3 || alive.closed, { what: () => `three server PINGs answered (${alive.pongsSent} so far)`, timeoutMs: 10_000 });
  t.notOk(alive.closed, 'a client that answers stays connected');
  t.ok(alive.pongsSent >= 3, `answered ${alive.pongsSent} server PINGs`);
});

t.test('slow consumer is closed without -ERR and counted', async (t) => {
  const s = await startServer(t, { limits: { maxPendingBytes: 256 * 1024 } });
  const slow = await client(t, s);
  slow.send('SUB big 1\r\n');
  await slow.sync();
  slow.pause();
  const pub = await client(t, s);
  const chunk = 'x'.repeat(60_000);
  for (let i = 0; i < 400 && !slow.closed; i++) {
    pub.send(`PUB big ${chunk.length}\r\n${chunk}\r\n`);
    if (i % 20 === 19) await pub.sync();
  }
  slow.resume();
  await slow.waitClosed();
  t.equal(s.stats().slowConsumers, 1);
  t.notMatch(slow.buf, /-ERR/, 'no -ERR for a slow consumer');
  await pub.sync();
  t.notOk(pub.closed, 'the publisher is unaffected');
});

// ---- auth hooks (a small authenticator written here; the real one lives in src/auth) ----

function perms(opts: { pubDeny?: string[]; subDeny?: string[]; subDenyQueue?: [string, string][]; responses?: Permissions['responses'] }): Permissions {
  const match = (p: string, s: string): boolean => {
    const pt = p.split('.'), st = s.split('.');
    for (let i = 0; i < pt.length; i++) {
      if (pt[i] === '>') return st.length > i;
      if (i >= st.length || (pt[i] !== '*' && pt[i] !== st[i])) return false;
    }
    return pt.length === st.length;
  };
  return {
    canPublish: (subject) => !(opts.pubDeny ?? []).some((p) => match(p, subject)),
    canSubscribe: (subject, queue) => !(opts.subDeny ?? []).some((p) => match(p, subject)) &&
      !(opts.subDenyQueue ?? []).some(([p, q]) => q === queue && match(p, subject)),
    responses: opts.responses ?? null,
  };
}

class TestAuth implements BusAuthenticator {
  readonly mode = 'enforce' as const;
  readonly authRequired = true;
  readonly nonceRequired = true;
  users = new Map<string, { pass: string; permissions: Permissions }>();
  requests: AuthRequest[] = [];
  delayMs = 0;
  private listeners = new Set<() => void>();
  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    this.requests.push(req);
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    const u = this.users.get(req.credentials.user ?? '');
    if (u === undefined || u.pass !== req.credentials.pass) return { ok: false, reason: 'bad credentials' };
    return { ok: true, principal: { name: req.credentials.user!, kind: 'user', admin: false, permissions: u.permissions } };
  }
  revalidate(p: Principal): Principal | null {
    const u = this.users.get(p.name);
    return u === undefined ? null : { ...p, permissions: u.permissions };
  }
  onChange(l: () => void): () => void {
    this.listeners.add(l);
    return () => void this.listeners.delete(l);
  }
  changed(): void {
    for (const l of this.listeners) l();
  }
}

t.test('auth: INFO, ops before CONNECT, timeout, bad credentials, async ordering', async (t) => {
  const auth = new TestAuth();
  auth.users.set('alice', { pass: 'pw', permissions: perms({}) });
  const s = await startServer(t, { auth, limits: { authTimeoutMs: 300 } });

  const c1 = new Raw(s.port);
  t.teardown(() => c1.destroy());
  const info = JSON.parse((await c1.expect(/INFO .*\r\n/)).slice(5)) as Record<string, unknown>;
  t.equal(info.auth_required, true);
  t.match(info.nonce, /^[A-Za-z0-9_-]{15}$/);
  c1.send('PING\r\n');
  await expectErrClose(c1, 'Authorization Violation');

  const c2 = new Raw(s.port);
  t.teardown(() => c2.destroy());
  await c2.expect(/INFO .*\r\n/);
  await expectErrClose(c2, 'Authentication Timeout');

  const c3 = new Raw(s.port);
  t.teardown(() => c3.destroy());
  await c3.expect(/INFO .*\r\n/);
  auth.delayMs = 50;
  c3.send('CONNECT {"verbose":false,"user":"alice","pass":"nope"}\r\nPING\r\n');
  await expectErrClose(c3, 'Authorization Violation');
  t.notMatch(c3.buf, /PONG/, 'the PING after a failed CONNECT is never answered');

  const c4 = new Raw(s.port);
  t.teardown(() => c4.destroy());
  const info4 = JSON.parse((await c4.expect(/INFO .*\r\n/)).slice(5)) as Record<string, unknown>;
  auth.delayMs = 150;
  c4.send('CONNECT {"verbose":false,"user":"alice","pass":"pw","name":"c4"}\r\nSUB a 1\r\nPUB a 2\r\nok\r\nPING\r\n');
  t.equal(await c4.expect('PONG\r\n'), 'MSG a 1 2\r\nok\r\nPONG\r\n', 'ops in the CONNECT write wait for authenticate()');
  const req = auth.requests.at(-1)!;
  t.equal(req.nonce, info4.nonce, 'the request carries the INFO nonce');
  t.equal(req.clientName, 'c4');
  t.equal(req.remoteAddress, '127.0.0.1');
  t.equal(req.tls, false);
  await pause(400, 'an absence: longer than the auth timeout, which must not fire after a successful CONNECT');
  t.notOk(c4.closed, 'no auth timeout after a successful CONNECT');
});

t.test('auth: permissions, deny filtering, allow_responses, live changes', async (t) => {
  const auth = new TestAuth();
  auth.users.set('bob', { pass: 'pw', permissions: perms({ pubDeny: ['secret.>'], subDeny: ['foo.bad', 'hidden'], subDenyQueue: [['work', 'q2']] }) });
  auth.users.set('svc', { pass: 'pw', permissions: perms({ pubDeny: ['>'], responses: { maxMessages: 1, expiresMs: 0 } }) });
  auth.users.set('admin', { pass: 'pw', permissions: perms({}) });
  const s = await startServer(t, { auth });
  const bob = await client(t, s, { user: 'bob', pass: 'pw' });
  bob.send('PUB secret.x 1\r\nx\r\n');
  await bob.expect(`-ERR 'Permissions Violation for Publish to "secret.x"'\r\n`);
  bob.send('SUB hidden 1\r\n');
  await bob.expect(`-ERR 'Permissions Violation for Subscription to "hidden"'\r\n`);
  bob.send('SUB work q2 2\r\n');
  await bob.expect(`-ERR 'Permissions Violation for Subscription to "work" using queue "q2"'\r\n`);
  bob.send('SUB work q1 3\r\nSUB foo.* 4\r\n');
  await bob.sync();
  t.notOk(bob.closed, 'violations keep the connection open');
  t.equal(s.stats().subscriptions, 2);

  const admin = await client(t, s, { user: 'admin', pass: 'pw' });
  admin.send('PUB foo.bad 1\r\nx\r\nPUB foo.ok 1\r\ny\r\nPUB work 1\r\nw\r\n');
  await admin.sync();
  const got = await bob.sync();
  t.match(got, 'MSG foo.ok 4 1\r\ny\r\n');
  t.notMatch(got, /foo\.bad/, 'a wildcard SUB does not receive a denied subject');
  t.match(got, 'MSG work 3 1\r\nw\r\n');

  const svc = await client(t, s, { user: 'svc', pass: 'pw' });
  svc.send('SUB api 1\r\n');
  await svc.sync();
  admin.send('SUB _INBOX.r 9\r\nPUB api _INBOX.r 3\r\nreq\r\n');
  await admin.sync();
  await svc.expect('MSG api 1 _INBOX.r 3\r\nreq\r\n');
  svc.send('PUB _INBOX.r 2\r\nr1\r\n');
  await svc.sync();
  t.match(await admin.sync(), 'MSG _INBOX.r 9 2\r\nr1\r\n', 'allow_responses lets the reply through');
  svc.send('PUB _INBOX.r 2\r\nr2\r\n');
  await svc.expect(`-ERR 'Permissions Violation for Publish to "_INBOX.r"'\r\n`);
  svc.send('PUB other 1\r\nx\r\n');
  await svc.expect(`-ERR 'Permissions Violation for Publish to "other"'\r\n`);

  // Live change: bob may no longer subscribe to foo.*; then bob is removed.
  auth.users.set('bob', { pass: 'pw', permissions: perms({ subDeny: ['foo.*'] }) });
  auth.changed();
  await bob.expect(`-ERR 'Permissions Violation for Subscription to "foo.*"'\r\n`);
  await bob.sync();
  t.equal(s.stats().subscriptions, 3, 'foo.* cancelled; work q1, api and _INBOX.r remain');
  bob.send('PUB secret.x 1\r\nx\r\n');
  t.equal(await bob.sync(), 'PONG\r\n', 'new permissions swapped in');
  auth.users.delete('bob');
  auth.changed();
  await expectErrClose(bob, 'Authorization Violation');
  t.notOk(admin.closed);
});

// ---- cluster seams ----

t.test('cluster port: interest stream, forwarder, delivery from a route', async (t) => {
  const s = await startServer(t);
  const changes: InterestChange[] = [];
  const off = s.cluster.onInterest((c) => changes.push(c));
  const c = await client(t, s, { headers: true, no_responders: true });
  c.send('SUB a.* 1\r\nSUB b q 2\r\nUNSUB 1\r\n');
  await c.sync();
  t.same(changes, [
    { subject: 'a.*', queue: undefined, delta: 1 },
    { subject: 'b', queue: 'q', delta: 1 },
    { subject: 'a.*', queue: undefined, delta: -1 },
  ]);
  t.same(s.cluster.interest(), [{ subject: 'b', queue: 'q', count: 1 }]);
  const conns = s.connections();
  t.equal(conns.length, 1);
  t.match(conns[0], { kind: 'tcp', ip: '127.0.0.1', subscriptions: 1, inMsgs: 0, user: undefined });
  off();

  const forwarded: string[] = [];
  s.cluster.setForwarder((m) => {
    forwarded.push(`${m.subject}|${m.reply}|${Buffer.from(m.headers).toString()}|${Buffer.from(m.payload).toString()}`);
    return m.subject === 'remote.svc';
  });
  c.send('SUB _INBOX.z.* 5\r\nPUB remote.svc _INBOX.z.1 2\r\nhi\r\nPUB none _INBOX.z.2 2\r\nhi\r\n');
  const got = await c.sync();
  t.same(forwarded, ['remote.svc|_INBOX.z.1||hi', 'none|_INBOX.z.2||hi']);
  t.notMatch(got, /_INBOX\.z\.1/, 'remote interest suppresses no_responders');
  t.match(got, 'HMSG _INBOX.z.2 5 16 16', 'no interest anywhere: 503');
  s.cluster.setForwarder(undefined);

  const other = await client(t, s, { headers: true });
  other.send('SUB b q 1\r\nSUB b 2\r\n');
  await other.sync();
  t.equal(s.cluster.deliverFromRoute({ subject: 'b', payload: Buffer.from('p') }), 1, 'no queues listed: plain only');
  t.equal(s.cluster.deliverFromRoute({ subject: 'b', reply: 'r.1', headers: Buffer.from('NATS/1.0\r\n\r\n'), payload: Buffer.from('p'), queues: ['q'] }), 2);
  const o = await other.sync();
  t.match(o, 'MSG b 2 1\r\np\r\n');
  t.match(o, 'HMSG b 2 r.1 12 13\r\nNATS/1.0\r\n\r\np\r\n');
  const inC = ((await c.sync()).match(/HMSG b 2 r\.1/g) ?? []).length;
  const inOther = (o.match(/HMSG b 1 r\.1/g) ?? []).length;
  t.equal(inC + inOther, 1, 'one member of queue q got the routed message');
});

t.test('cluster port: the forwarder picks queue groups first; routed messages are delivered from views', async (t) => {
  const s = await startServer(t);
  const member = await client(t, s);
  member.send('SUB job w 1\r\nSUB job w 2\r\nSUB job.\u00fc 3\r\nSUB job 4\r\n');
  await member.sync();
  const seen: string[] = [];
  let claim = false;
  s.cluster.setForwarder((m) => {
    seen.push(`${[...(m.localQueues ?? new Map<string, number>())].join(';')}|${m.remoteQueues === undefined ? 'none' : 'set'}`);
    if (claim) m.remoteQueues?.add('w');
    return claim;
  });
  const pub = await client(t, s);
  pub.send('PUB job 1\r\na\r\n');
  await pub.sync();
  claim = true;
  pub.send('PUB job 1\r\nb\r\nPUB other 1\r\nc\r\n');
  await pub.sync();
  s.cluster.setForwarder(undefined);
  t.same(seen, ['w,2|set', 'w,2|set', '|none'], 'local member counts offered with the claim set; none without groups');
  const got = await member.sync();
  t.equal((got.match(/MSG job [12] 1\r\na/g) ?? []).length, 1, 'not claimed: one local member');
  t.equal((got.match(/MSG job [12] 1\r\nb/g) ?? []).length, 0, 'claimed by the forwarder: no local member');
  t.equal((got.match(/MSG job 4 1\r\nb/g) ?? []).length, 1, 'plain subscribers are unaffected by a claim');

  // A payload that is a view into a larger buffer, changed right after the call: delivery copied it in time.
  const backing = new Uint8Array(64).fill(120);
  const view = backing.subarray(8, 13);
  view.set(Buffer.from('hello'));
  for (let i = 0; i < 3; i++) {
    t.equal(s.cluster.deliverFromRoute({ subject: 'job.\u00fc', reply: i === 1 ? 'r.\u00e9' : undefined, payload: view }), 1);
    view.fill(63);
    view.set(Buffer.from('hello'));
  }
  view.fill(33);
  const routed = await member.sync();
  // The raw test client reads bytes as latin1: compare with the UTF-8 bytes seen the same way.
  const bytes = (x: string): string => Buffer.from(x).toString('latin1');
  t.equal(routed.split(bytes('MSG job.\u00fc 3 5\r\nhello\r\n')).length - 1, 2, 'UTF-8 subject (cached bytes), payload intact');
  t.match(routed, bytes('MSG job.\u00fc 3 r.\u00e9 5\r\nhello\r\n'), 'reply with multi-byte characters');
  t.notMatch(routed, /[?!]/, 'no byte written after the call reached a subscriber');

  // deliverAs (push consumers): matched on the deliver subject, the message's own subject on the MSG line.
  member.send('SUB push.inbox 9\r\n');
  await member.sync();
  t.equal(s.cluster.deliverAs!('push.inbox', { subject: 'orders.1', reply: '$JS.ACK.x', payload: view.fill(107) }), 1);
  t.equal(s.cluster.deliverAs!('nobody.listens', { subject: 'orders.1', payload: view }), 0);
  t.match(await member.sync(), 'MSG orders.1 9 $JS.ACK.x 5\r\nkkkkk\r\n');
});

t.test('close() flushes and closes every client', async (t) => {
  const s = createNatsServer({ host: '127.0.0.1', port: 0, logger: silentLogger() });
  await s.start();
  const c = await client(t, s as NatsServerWithCluster);
  await s.close();
  await c.waitClosed();
  t.equal(s.stats().connections, 0);
});
