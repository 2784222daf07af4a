// Link behaviour: three nodes exchanging frames over real TLS, self-routes dropped, one link per pair when
// both dial at once, reconnect with backoff after a killed socket, dead peers found by missed pongs, and
// the bounded outbound queue (raft dropped, bus closes the link as a slow consumer).
import t from 'tap';
import type { RouteFrame, RouteTransport, PeerInfo } from '../../transport/index.js';
import { captureLogger, makeFixtures, makeTransport, routeTo, startProxy, waitFor, type TransportOverrides } from './helpers.js';

const fx = await makeFixtures(['n1', 'n2', 'n3']);

interface Node {
  name: string;
  transport: RouteTransport;
  frames: Array<{ from: string; frame: RouteFrame }>;
  ups: PeerInfo[];
  downs: Array<{ peer: string | undefined; code: string }>;
  log: ReturnType<typeof captureLogger>;
}

function node(t: { teardown(fn: () => unknown): void }, name: string, overrides: TransportOverrides = {}): Node {
  const log = captureLogger();
  const n: Node = { name, frames: [], ups: [], downs: [], log, transport: undefined as unknown as RouteTransport };
  n.transport = makeTransport(fx, name, {
    logger: log.logger,
    onFrame: (from, frame) => n.frames.push({ from, frame }),
    onPeerUp: (peer) => n.ups.push(peer),
    onPeerDown: (peer, close) => n.downs.push({ peer: peer.name, code: close.code }),
    ...overrides,
  });
  t.teardown(() => n.transport.close());
  return n;
}

t.test('three transports in one process exchange frames; self-routes are dropped', async (t) => {
  // n3 listens on IPv6 loopback; every node lists all three (itself included), as a shared cluster.env would.
  const nodes = [node(t, 'n1'), node(t, 'n2'), node(t, 'n3', { host: '::1' })];
  for (const n of nodes) await n.transport.start();
  const ports = nodes.map((n) => n.transport.address().port);
  const all = nodes.map((n, i) => i === 2 ? `nats-route://[::1]:${ports[i]}` : routeTo(n.transport)).join(',');
  // Restart with the full route list now that the ports are known.
  for (const n of nodes) await n.transport.close();
  const mesh = nodes.map((n, i) => node(t, n.name, { routes: all, port: ports[i]!, ...(i === 2 ? { host: '::1' } : {}) }));
  for (const n of mesh) await n.transport.start();
  await waitFor('full mesh', () => mesh.every((n) => n.transport.upPeers().length === 2));
  for (const n of mesh) {
    t.same(n.transport.upPeers().sort(), ['n1', 'n2', 'n3'].filter((x) => x !== n.name), `${n.name} sees both others`);
    t.notOk(n.transport.peers().some((p) => p.name === n.name), `${n.name} lists no route to itself`);
    await waitFor(`${n.name} self-route dropped`, () => n.log.lines.some((l) => l.msg === 'route points at this node itself; dropped'));
  }
  // One link per pair, even though every pair dialed each other.
  await waitFor('one link per pair', () => mesh.every((n) => n.transport.linkCount() === 2));
  t.pass('each node holds exactly two links');

  const [a, b, c] = mesh as [Node, Node, Node];
  t.ok(a.transport.send('n2', { kind: 'raft', data: { term: 7, entries: [Buffer.from('x')] } }));
  t.equal(b.transport.broadcast({ kind: 'interest_add', subject: 'orders.*', queue: 'q' }), 2);
  t.ok(c.transport.send('n1', { kind: 'bus', subject: 'orders.new', reply: '_INBOX.a', payload: Buffer.from('hello'), queues: ['q'] }));
  t.notOk(a.transport.send('n9', { kind: 'raft', data: 1 }), 'unknown peer');
  await waitFor('frames delivered', () => a.frames.length >= 2 && b.frames.length >= 1 && c.frames.length >= 1);
  t.match(b.frames, [{ from: 'n1', frame: { kind: 'raft', data: { term: 7 } } }]);
  t.match(c.frames, [{ from: 'n2', frame: { kind: 'interest_add', subject: 'orders.*', queue: 'q' } }]);
  t.match(a.frames.find((f) => f.frame.kind === 'bus'), { from: 'n3', frame: { subject: 'orders.new', reply: '_INBOX.a', queues: ['q'] } });
  t.equal(Buffer.from((a.frames.find((f) => f.frame.kind === 'bus')!.frame as { payload: Uint8Array }).payload).toString(), 'hello');
  const info = a.transport.peers().find((p) => p.name === 'n2')!;
  t.match(info, { state: 'up', identity: /^[0-9a-f]{64}$/ });
  t.ok(info.counters.framesOut > 0 && info.counters.bytesIn > 0, 'counters move');
});

t.test('simultaneous dial keeps exactly one link, the one dialed by the smaller name', async (t) => {
  for (let round = 0; round < 4; round++) {
    const a = node(t, 'n1');
    const b = node(t, 'n2');
    await a.transport.start();
    await b.transport.start();
    // Now restart both with routes to each other, started in the same turn so both dials race.
    const [pa, pb] = [a.transport.address().port, b.transport.address().port];
    await Promise.all([a.transport.close(), b.transport.close()]);
    const x = node(t, 'n1', { port: pa, routes: `127.0.0.1:${pb}` });
    const y = node(t, 'n2', { port: pb, routes: `127.0.0.1:${pa}` });
    await Promise.all([x.transport.start(), y.transport.start()]);
    await waitFor('settled', () => x.transport.linkCount() === 1 && y.transport.linkCount() === 1
      && x.transport.upPeers().length === 1 && y.transport.upPeers().length === 1);
    t.equal(x.transport.peers().find((p) => p.name === 'n2')?.direction, 'outbound', `round ${round}: n1 keeps its own dial`);
    t.equal(y.transport.peers().find((p) => p.name === 'n1')?.direction, 'inbound', `round ${round}: n2 keeps n1's dial`);
    // Every peer-up was matched by a peer-down, except the surviving link's.
    t.equal(x.ups.length - x.downs.length, 1, `round ${round}: n1 ends with one peer up`);
    t.equal(y.ups.length - y.downs.length, 1, `round ${round}: n2 ends with one peer up`);
    t.ok(y.transport.send('n1', { kind: 'raft', data: round }));
    await waitFor('frame over the kept link', () => x.frames.length === 1);
    await Promise.all([x.transport.close(), y.transport.close()]);
  }
});

t.test('a killed link reconnects with backoff and re-emits peer-up', async (t) => {
  const b = node(t, 'n2');
  await b.transport.start();
  const proxy = await startProxy(b.transport.address().port);
  t.teardown(() => proxy.close());
  const a = node(t, 'n1', { routes: `127.0.0.1:${proxy.port}`, random: () => 0.5 });
  await a.transport.start();
  await waitFor('up', () => a.ups.length === 1 && b.ups.length === 1);
  for (let kill = 1; kill <= 2; kill++) {
    proxy.killAll();
    await waitFor(`down ${kill}`, () => a.downs.length === kill && b.downs.length === kill);
    await waitFor(`up again ${kill}`, () => a.ups.length === kill + 1 && b.ups.length === kill + 1);
  }
  t.same(a.downs.map((d) => d.peer), ['n2', 'n2']);
  t.match(a.log.lines.filter((l) => l.msg === 'route lost'), [{ code: 'closed' }, { code: 'closed' }]);
  t.match(a.log.lines.filter((l) => l.msg === 'route redial scheduled'), [{ attempt: 1, delayMs: 20 }, { attempt: 1, delayMs: 20 }],
    'redial after a loss waits on the backoff schedule (attempts reset once a link is up)');
  t.ok(a.transport.send('n2', { kind: 'interest_add', subject: 'resent.>' }));
  await waitFor('frame after reconnect', () => b.frames.some((f) => f.frame.kind === 'interest_add'));
  t.pass('frames flow over the new link');
});

t.test('a dead peer is found by missed pongs and the route comes back', async (t) => {
  const limits = { pingIntervalMs: 100, pingsOutstandingMax: 2, closeGraceMs: 200, backoffBaseMs: 20, backoffMaxMs: 200, handshakeTimeoutMs: 3000 };
  const b = node(t, 'n2', { limits });
  await b.transport.start();
  const proxy = await startProxy(b.transport.address().port);
  t.teardown(() => proxy.close());
  const a = node(t, 'n1', { routes: `127.0.0.1:${proxy.port}`, limits });
  await a.transport.start();
  await waitFor('rtt measured', () => a.transport.peers()[0]?.rttMs !== undefined);
  t.ok(a.transport.peers()[0]!.rttMs! >= 0, 'rtt reported for /routez');
  proxy.blackholeExisting();
  // Whichever side misses its pongs first closes; the other then sees the connection go (via the proxy).
  await waitFor('the dead peer detected', () => a.downs.length + b.downs.length >= 2
    && [...a.downs, ...b.downs].some((d) => d.code === 'dead_peer'));
  t.match([...a.log.lines, ...b.log.lines].find((l) => l.code === 'dead_peer'), { msg: 'route closed', reason: /no pong for 2 pings/ });
  await waitFor('reconnected', () => a.ups.length === 2 && b.ups.length === 2);
  t.pass('a fresh link replaced the dead one');
});

t.test('bounded outbound queue: raft frames dropped, bus frames close a slow consumer', async (t) => {
  const limits = { queueFramesMax: 10, backoffBaseMs: 20, backoffMaxMs: 200 };
  const b = node(t, 'n2', { limits });
  await b.transport.start();
  const a = node(t, 'n1', { routes: routeTo(b.transport), limits });
  await a.transport.start();
  await waitFor('up', () => a.ups.length === 1 && b.ups.length === 1);
  // The queue is flushed once per event-loop turn, so 15 frames in one turn overflow a 10-frame queue.
  const accepted = Array.from({ length: 15 }, (_, i) => a.transport.send('n2', { kind: 'raft', data: i })).filter(Boolean).length;
  t.equal(accepted, 10, 'ten raft frames queued, five dropped');
  t.equal(a.transport.peers()[0]!.counters.raftDropped, 5);
  await waitFor('ten delivered', () => b.frames.length === 10);
  t.same(b.frames.map((f) => (f.frame as { data: number }).data), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'in order');
  t.equal(a.downs.length, 0, 'dropping raft frames keeps the link');

  const sent = Array.from({ length: 11 }, () => a.transport.send('n2', { kind: 'bus', subject: 's', payload: Buffer.alloc(8) }));
  t.same(sent.slice(0, 10), Array(10).fill(true));
  t.equal(sent[10], false, 'the eleventh bus frame does not fit');
  t.match(a.downs, [{ peer: 'n2', code: 'slow_consumer' }]);
  await waitFor('the peer logs the reason', () => b.log.lines.some((l) => l.msg === 'route refused by peer' && l.code === 'slow_consumer'));
  await waitFor('re-established', () => a.ups.length === 2 && b.ups.length === 2);
  t.pass('the slow-consumer route was re-established and peer-up re-emitted');
});
