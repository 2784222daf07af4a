// Interop with the real nats.js client (@nats-io/transport-node, and nats-core's wsconnect over `ws`).
import t, { type Test } from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { wsconnect, type WsSocketFactory } from '@nats-io/nats-core';
import { WebSocket } from 'ws';
import { createNatsServer, type NatsServerWithCluster } from '../../src/nats/index.js';
import type { NatsServerOptions } from '../../src/nats/api.js';
import { createCertificateAuthority, issueCertificate } from '../../src/certs/index.js';
import { silentLogger } from '../../src/log.js';

async function startServer(t: Test, extra: Partial<NatsServerOptions> = {}): Promise<NatsServerWithCluster> {
  const s = createNatsServer({ host: '127.0.0.1', port: 0, logger: silentLogger(), ...extra });
  await s.start();
  t.teardown(() => s.close());
  return s;
}

async function nc(t: Test, s: NatsServerWithCluster, opts: Parameters<typeof connect>[0] = {}): Promise<NatsConnection> {
  const c = await connect({ servers: `127.0.0.1:${s.port}`, ...opts });
  t.teardown(() => c.close());
  return c;
}

const withTimeout = <T>(p: Promise<T>, ms = 5000): Promise<T> =>
  Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error(`timed out after ${ms} ms`)), ms))]);

t.test('pub/sub, wildcards, queue groups, headers, unsubscribe-after-N, flush', async (t) => {
  const s = await startServer(t);
  const a = await nc(t, s, { name: 'a' });
  const b = await nc(t, s, { name: 'b' });

  const star: string[] = [];
  const full: string[] = [];
  a.subscribe('orders.*', { callback: (_e, m) => { star.push(`${m.subject}=${m.string()}`); } });
  a.subscribe('orders.>', { callback: (_e, m) => { full.push(m.subject); } });
  const q = [0, 0, 0];
  const qconns = await Promise.all([nc(t, s), nc(t, s), nc(t, s)]);
  qconns.forEach((c, i) => c.subscribe('jobs', { queue: 'workers', callback: () => { q[i]!++; } }));
  const limited: string[] = [];
  const lim = a.subscribe('limited', { max: 3, callback: (_e, m) => { limited.push(m.string()); } });
  const hdrs: string[] = [];
  a.subscribe('with.headers', {
    callback: (_e, m) => { hdrs.push(`${m.headers?.get('X-Trace')}|${m.headers?.values('X-Multi').join(',')}|${m.string()}`); },
  });
  await Promise.all([a.flush(), ...qconns.map((c) => c.flush())]);

  b.publish('orders.new', 'one');
  b.publish('orders.eu.new', 'two');
  for (let i = 0; i < 90; i++) b.publish('jobs', String(i));
  for (let i = 0; i < 5; i++) b.publish('limited', String(i));
  const h = headers();
  h.set('X-Trace', 'abc');
  h.append('X-Multi', '1');
  h.append('X-Multi', '2');
  b.publish('with.headers', 'body', { headers: h });
  await b.flush();
  await a.flush();
  await Promise.all(qconns.map((c) => c.flush()));

  t.same(star, ['orders.new=one']);
  t.same(full, ['orders.new', 'orders.eu.new']);
  t.equal(q[0]! + q[1]! + q[2]!, 90, 'each job to exactly one worker');
  t.ok(q.filter((n) => n > 0).length >= 2, `workers shared the load: ${q.join(',')}`);
  t.same(limited, ['0', '1', '2']);
  t.ok(lim.isClosed(), 'subscription closed after max');
  t.same(hdrs, ['abc|1,2|body'], 'header keys and repeated values preserved');
});

t.test('request/reply with the muxed inbox, noMux, no_responders, drain', async (t) => {
  const s = await startServer(t);
  const svc = await nc(t, s);
  svc.subscribe('echo', { callback: (_e, m) => { m.respond(`re:${m.string()}`); } });
  await svc.flush();
  const c = await nc(t, s);
  const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => c.request('echo', String(i), { timeout: 2000 })));
  t.same(replies.map((r) => r.string()), Array.from({ length: 20 }, (_, i) => `re:${i}`));
  const solo = await c.request('echo', 'x', { timeout: 2000, noMux: true });
  t.equal(solo.string(), 're:x');
  await t.rejects(c.request('nobody.home', 'x', { timeout: 2000 }), /no responders/, 'immediate no responders, not a timeout');

  let drained = 0;
  svc.subscribe('work', { callback: () => { drained++; } });
  await svc.flush();
  for (let i = 0; i < 50; i++) c.publish('work', 'x');
  await c.flush();
  await svc.drain();
  t.equal(drained, 50, 'drain delivered everything in flight');
  t.ok(svc.isClosed());
  await c.drain();
});

t.test('reconnect after the server restarts on the same port', async (t) => {
  const s1 = createNatsServer({ host: '127.0.0.1', port: 0, logger: silentLogger() });
  await s1.start();
  const port = s1.port;
  const c = await connect({ servers: `127.0.0.1:${port}`, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
  t.teardown(() => c.close());
  const got: string[] = [];
  c.subscribe('after', { callback: (_e, m) => { got.push(m.string()); } });
  await c.flush();
  let reconnected!: () => void;
  const reconnectedP = new Promise<void>((r) => (reconnected = r));
  void (async () => {
    for await (const st of c.status()) if (st.type === 'reconnect') reconnected();
  })();
  await s1.close();
  const s2 = createNatsServer({ host: '127.0.0.1', port, logger: silentLogger() });
  await s2.start();
  t.teardown(() => s2.close());
  await withTimeout(reconnectedP, 10_000);
  c.publish('after', 'restart');
  await c.flush();
  t.same(got, ['restart'], 'the subscription was replayed on the new server');
  t.equal(s2.stats().subscriptions, 1);
});

t.test('TLS: CA-verified certificate, 2.9 upgrade after INFO and handshake-first; mutual TLS', async (t) => {
  const ca = await createCertificateAuthority('nats-test-ca');
  const leaf = await issueCertificate(ca, { commonName: 'localhost' });
  const s = await startServer(t, { tls: { cert: leaf.cert, key: leaf.key } });
  const c = await nc(t, s, { tls: { ca: ca.cert } });
  const sub = c.subscribe('secure', { max: 1 });
  c.publish('secure', 'over tls');
  await c.flush();
  for await (const m of sub) t.equal(m.string(), 'over tls');
  t.equal(c.info?.tls_required, true);

  const first = await nc(t, s, { tls: { ca: ca.cert, handshakeFirst: true } });
  const r = first.subscribe('hf', { max: 1 });
  first.publish('hf', 'tls first');
  for await (const m of r) t.equal(m.string(), 'tls first');

  const other = await createCertificateAuthority('other-ca');
  await t.rejects(connect({ servers: `127.0.0.1:${s.port}`, tls: { ca: other.cert }, reconnect: false, timeout: 3000 }),
    'a client trusting another CA refuses the server');

  // Plain text CONNECT after a tls_required INFO: the handshake fails and the socket closes.
  const raw = net.connect(s.port, '127.0.0.1');
  let seen = '';
  raw.setEncoding('latin1');
  raw.on('data', (d: string) => {
    seen += d;
    if (seen.includes('\r\n')) raw.write('CONNECT {}\r\nPING\r\n');
  });
  raw.on('error', () => {});
  await withTimeout(new Promise((r) => raw.on('close', r)));
  t.match(seen, /"tls_required":true/);
  t.notMatch(seen, /PONG/);

  const clientCert = await issueCertificate(ca, { commonName: 'client', usage: 'client' });
  const m = await startServer(t, { tls: { cert: leaf.cert, key: leaf.key, ca: ca.cert } });
  const mc = await nc(t, m, { tls: { ca: ca.cert, cert: clientCert.cert, key: clientCert.key } });
  t.equal(mc.info?.tls_verify, true);
  await mc.flush();
  const refused = tls.connect({ port: m.port, host: '127.0.0.1', ca: ca.cert });
  refused.on('error', () => {});
  await withTimeout(new Promise((r) => refused.on('close', r)));
  t.pass('mutual TLS refuses a client without a certificate');
});

t.test('WebSocket with wsconnect', async (t) => {
  const s = await startServer(t, { wsPort: 0 });
  t.type(s.wsPort, 'number');
  const wsFactory: WsSocketFactory = async (u) => ({ socket: new WebSocket(u) as never, encrypted: false });
  const w = await wsconnect({ servers: `ws://127.0.0.1:${s.wsPort}`, wsFactory });
  t.teardown(() => w.close());
  const tcp = await nc(t, s);
  const got: string[] = [];
  w.subscribe('ws.>', { callback: (_e, m) => { got.push(`${m.subject}:${m.string()}`); } });
  w.subscribe('ws.svc', { callback: (_e, m) => { m.respond('from-ws'); } });
  await w.flush();
  tcp.publish('ws.a', 'hello');
  const rep = await tcp.request('ws.svc', 'q', { timeout: 2000 });
  t.equal(rep.string(), 'from-ws');
  const big = 'y'.repeat(200_000);
  tcp.publish('ws.big', big);
  await tcp.flush();
  await w.flush();
  t.same(got.slice(0, 2), ['ws.a:hello', 'ws.svc:q']);
  t.equal(got[2], `ws.big:${big}`, 'a large message crosses frames intact');
  const back = await w.request('ws.svc', 'again', { timeout: 2000 });
  t.equal(back.string(), 'from-ws');
});
