// The library entry used the way a user's tap suite would: start in-process nodes, connect the real NATS client
// with `connect({ servers: urls, ...connectOptions })` over TLS verified against the cluster's CA, talk across
// nodes (pub/sub, request/reply, KV through @nats-io/kv), and check that stop() closes every port and removes
// the temp directory.
import t from 'tap';
import { existsSync, statSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { LibraryErrorCode, startCluster, startNode, type LocalClusterHandle } from '../../src/index.js';

/** Connections are closed in teardown too, so a failing assertion never leaves a client reconnecting. */
function tracked(t: { teardown(fn: () => unknown): void }): (c: Promise<NatsConnection>) => Promise<NatsConnection> {
  const open: NatsConnection[] = [];
  t.teardown(async () => { await Promise.allSettled(open.map((c) => c.close())); });
  return async (p) => {
    const c = await p;
    open.push(c);
    return c;
  };
}

async function firstMessage(nc: NatsConnection, subject: string, send: () => void): Promise<string> {
  const sub = nc.subscribe(subject, { max: 1, timeout: 10_000 });
  await nc.flush();
  send();
  for await (const m of sub) return m.string();
  throw new Error(`no message on ${subject}`);
}

/** After stop(): the port refuses (no reconnect attempts, one try). */
async function refuses(url: string, options: object): Promise<boolean> {
  try {
    const nc = await connect({ servers: url, ...options, reconnect: false, timeout: 2_000 });
    await nc.close();
    return false;
  } catch {
    return true;
  }
}

function tcpRefused(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const s = tcpConnect({ host: hostname, port: Number(port) });
    s.once('connect', () => { s.destroy(); resolve(false); });
    s.once('error', () => resolve(true));
  });
}

t.test('a 3-node cluster with TLS and auth: pub/sub and request/reply across nodes, KV, stop() cleans up', async (t) => {
  let cluster: LocalClusterHandle | undefined = await startCluster({
    nodes: 3,
    auth: {
      users: [{ name: 'orders', password: 'orders-secret', roles: ['orders'] }],
      roles: { orders: { publish: ['orders.>'], subscribe: ['orders.>', '_INBOX.>'] } },
    },
  });
  t.teardown(async () => { await cluster?.stop(); });
  const { urls, connectOptions, nodes, dir } = cluster;
  t.equal(urls.length, 3);
  for (const u of urls) t.match(u, /^tls:\/\/127\.0\.0\.1:\d+$/);
  t.equal(nodes.length, 3);
  t.same(nodes.map((n) => n.health()), [{ status: 'ok' }, { status: 'ok' }, { status: 'ok' }], 'startCluster resolves with every node healthy');
  t.ok(connectOptions.tls?.ca.includes('BEGIN CERTIFICATE'), 'the CA is in connectOptions');
  t.equal(connectOptions.user, 'admin');
  t.ok(statSync(dir).isDirectory());

  const open = tracked(t);
  const a = await open(connect({ servers: urls[0]!, ...connectOptions }));
  const c = await open(connect({ servers: urls[2]!, ...connectOptions }));
  t.equal(await firstMessage(c, 'greet.n3', () => a.publish('greet.n3', 'from n1')), 'from n1', 'n1 → n3');
  t.equal(await firstMessage(a, 'greet.n1', () => c.publish('greet.n1', 'from n3')), 'from n3', 'n3 → n1');

  const service = c.subscribe('svc.echo', { callback: (err, m) => { if (!err) m.respond(`echo ${m.string()}`); } });
  await c.flush();
  t.equal((await a.request('svc.echo', 'ping', { timeout: 10_000 })).string(), 'echo ping', 'request on n1, responder on n3');
  service.unsubscribe();

  // KV through the client library: written through n1, read through n3.
  const kvA = await new Kvm(jetstream(a, { timeout: 10_000 })).create('library');
  await kvA.put('greeting', 'hello');
  const kvC = await new Kvm(jetstream(c, { timeout: 10_000 })).open('library');
  t.equal((await kvC.get('greeting'))?.string(), 'hello', 'KV write on n1 read on n3');

  // The configured user connects with its own credentials and gets its role's subjects only.
  const orders = await open(connect({ servers: urls[0]!, tls: connectOptions.tls, user: 'orders', pass: 'orders-secret' }));
  t.equal(await firstMessage(orders, 'orders.new', () => a.publish('orders.new', 'o1')), 'o1');
  // Its role is enforced: a publish outside orders.> is dropped. Both ends on one node, and the marker sent after
  // it on the same connection, so seeing the marker means the dropped message would have arrived already.
  const seen: string[] = [];
  const watch = a.subscribe('>', { callback: (err, m) => { if (!err) seen.push(m.subject); } });
  const marker = firstMessage(a, 'orders.marker', () => {
    orders.publish('audit.x', 'nope');
    orders.publish('orders.marker', 'done');
  });
  t.equal(await marker, 'done');
  watch.unsubscribe();
  t.notOk(seen.includes('audit.x'), 'the orders role may not publish audit.x');
  t.ok(await refuses(urls[1]!, { tls: connectOptions.tls, user: 'orders', pass: 'wrong' }), 'a wrong password is refused');
  t.ok(await refuses(urls[1]!, { user: 'admin', pass: connectOptions.pass }), 'a client that does not trust the CA is refused');

  const handle = cluster;
  cluster = undefined;
  await Promise.all([a.close(), c.close(), orders.close()]);
  await handle.stop();
  await handle.stop();
  t.notOk(existsSync(dir), 'stop() removed the temp directory');
  for (const u of urls) t.ok(await refuses(u, connectOptions), `${u} is closed after stop()`);
  for (const n of nodes) t.ok(await tcpRefused(n.urls.http), `${n.name} HTTP port is closed`);
});

t.test('startNode: one node, plain TCP, no auth', async (t) => {
  const parent = t.testdir();
  let node: LocalClusterHandle | undefined = await startNode({ tls: false, auth: false, dir: parent });
  t.teardown(async () => { await node?.stop(); });
  const { urls, connectOptions, dir } = node;
  t.equal(urls.length, 1);
  t.ok(dir.startsWith(parent), 'the temp directory is made under options.dir');
  t.match(urls[0], /^nats:\/\/127\.0\.0\.1:\d+$/);
  t.same(connectOptions, {}, 'nothing to pass without TLS and auth');
  const open = tracked(t);
  const nc = await open(connect({ servers: urls, ...connectOptions }));
  t.equal(await firstMessage(nc, 'solo', () => nc.publish('solo', 'one')), 'one');
  const kv = await new Kvm(jetstream(nc, { timeout: 10_000 })).create('solo');
  await kv.put('k', 'v');
  t.equal((await kv.get('k'))?.string(), 'v', 'a single node has the KV API too');
  await nc.close();
  const handle = node;
  node = undefined;
  await handle.stop();
  t.notOk(existsSync(dir));
  t.ok(await refuses(urls[0]!, {}), 'closed after stop()');
});

t.test('bad options are refused before anything starts', async (t) => {
  await t.rejects(startCluster({ nodes: 0 }), { code: LibraryErrorCode.options });
  await t.rejects(startCluster({ auth: { users: [{ name: 'x', password: 'p', roles: ['nope'] }] } }), { code: LibraryErrorCode.options, message: /"nope"/ });
  await t.rejects(startCluster({ auth: { users: [{ name: 'admin', password: 'p' }] } }), { code: LibraryErrorCode.options, message: /admin/ });
});
