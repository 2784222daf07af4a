// Routes over real TLS sockets on loopback. First the refusal matrix: every bad peer is refused with its
// reason logged (on both sides where the peer is a transport) and the node keeps serving. Then link
// behaviour: three nodes exchanging frames, self-routes dropped, one link per pair when both dial at once,
// reconnect with backoff after a killed socket, dead peers found by missed pongs, and the bounded outbound
// queue (raft dropped, bus closes the link as a slow consumer). Last, nothing leaks (sockets, timers).
import t from 'tap';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { randomBytes } from 'node:crypto';
import {
  FrameParser, RouteAddressError, backoffDelayMs, createRouteTransport, encodeFrame,
  type PeerInfo, type RouteFrame, type RouteTransport, type WireFrame,
} from '../../transport/index.js';
import {
  captureLogger, makeFixtures, makeIdentity, makeTransport, routeTo, startProxy, waitFor, type LogLine, type TransportOverrides,
} from './helpers.js';

const watched = ['TLSWrap', 'TCPSocketWrap', 'TCPServerWrap', 'Timeout', 'Immediate'];
function resources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) if (watched.includes(r)) counts[r] = (counts[r] ?? 0) + 1;
  return counts;
}
const baseline = resources();

const fx = await makeFixtures(['n1', 'n2', 'n3']);
const n2Identity = makeIdentity();
const node = captureLogger();
const n1 = makeTransport(fx, 'n1', {
  logger: node.logger,
  // The `nodes` bucket binds n2 to its key; anyone else calling itself n2 is refused.
  verifyPeer: (name, key) => name === 'n2' && !Buffer.from(key).equals(Buffer.from(n2Identity.publicKey))
    ? `"n2" is registered with identity key ${Buffer.from(n2Identity.publicKey).toString('hex').slice(0, 16)}` : true,
});
await n1.start();
t.teardown(() => n1.close());

function linesSince(lines: LogLine[], from: number): LogLine[] {
  return lines.slice(from);
}

async function expectLog(lines: LogLine[], from: number, msg: string, code: string, reason: RegExp): Promise<LogLine> {
  let found: LogLine | undefined;
  await waitFor(`log "${msg}" code ${code}`, () => {
    found = linesSince(lines, from).find((l) => l.msg === msg && l.code === code && reason.test(String(l.reason)));
    return found !== undefined;
  });
  return found!;
}

/** A peer transport dialing n1 with one thing wrong; both sides must log the refusal. */
interface Asserts { pass(message: string): unknown; same(found: unknown, wanted: unknown, message: string): unknown }

async function refusedPeer(t: Asserts, overrides: Parameters<typeof makeTransport>[2], code: string, reason: RegExp,
  peerSideMsg: string, peerReason: RegExp = reason, peerCode = code) {
  const from = node.lines.length;
  const peerLog = captureLogger();
  const peer = makeTransport(fx, 'n3', { routes: routeTo(n1), logger: peerLog.logger, ...overrides });
  await peer.start();
  try {
    const own = await expectLog(node.lines, from, 'route refused', code, reason);
    t.pass(`n1 logged: ${own.reason}`);
    const theirs = await expectLog(peerLog.lines, 0, peerSideMsg, peerCode, peerReason);
    t.pass(`peer logged: ${theirs.reason}`);
    t.same(n1.upPeers(), [], "no route came up");
    t.same(peer.upPeers(), [], "the peer has no route up");
  } finally {
    await peer.close();
  }
  await waitFor('n1 connections closed', () => n1.linkCount() === 0);
  return peerLog;
}


t.test('routes with user info are refused at start-up, before any socket', async (t) => {
  const error = t.throws(() => makeTransport(fx, 'n3', { routes: '127.0.0.1:7,nats-route://route:hunter2@127.0.0.1:6222' })) as unknown as RouteAddressError;
  t.equal(error.code, 'EROUTE_USERINFO');
  t.match(error.message, /carries user info; route credentials come from --cluster-user and --cluster-pass-file/);
  t.notMatch(error.message, /hunter2/);
});

t.test('no client certificate', async (t) => {
  const from = node.lines.length;
  const socket = tlsConnect({ host: '127.0.0.1', port: n1.address().port, ca: fx.ca.cert, minVersion: 'TLSv1.3' });
  const clientError = await new Promise<Error | undefined>((resolve) => {
    socket.on('error', resolve);
    socket.on('close', () => resolve(undefined));
  });
  socket.destroy();
  const line = await expectLog(node.lines, from, 'route refused', 'tls', /no client certificate/);
  t.pass(`n1 logged: ${line.reason}`);
  t.match(String((clientError as { code?: string } | undefined)?.code), /CERTIFICATE_REQUIRED/, 'the client is told why');
  await waitFor('no connections', () => n1.linkCount() === 0);
});

t.test('a certificate from another CA', async (t) => {
  // TLS 1.3: the listener closes without an alert, so the dialer logs its best knowledge, and its own
  // certificate check at start-up names the exact problem.
  const log = await refusedPeer(t, { tls: { ...fx.foreign, ca: fx.ca.cert } }, 'tls', /not signed by the cluster CA/,
    'route failed', /may have refused this node's certificate/, 'closed');
  await expectLog(log.lines, 0, 'route certificate will be refused by peers', 'tls', /CN=rogue\) is not signed by the cluster CA/);
});

t.test('an expired certificate', async (t) => {
  const log = await refusedPeer(t, { tls: { ...fx.expired, ca: fx.ca.cert } }, 'tls', /certificate expired/,
    'route failed', /may have refused this node's certificate/, 'closed');
  await expectLog(log.lines, 0, 'route certificate will be refused by peers', 'tls', /CN=expired\) expired on/);
});

t.test('a listener with an expired certificate is refused by the dialer', async (t) => {
  const bad = makeTransport(fx, 'n3', { tls: { ...fx.expired, ca: fx.ca.cert } });
  await bad.start();
  const log = captureLogger();
  const dialer = makeTransport(fx, 'n2', { identity: n2Identity, routes: routeTo(bad), logger: log.logger });
  await dialer.start();
  const line = await expectLog(log.lines, 0, 'route failed', 'tls', /certificate expired/);
  t.pass(`dialer logged: ${line.reason}`);
  await Promise.all([dialer.close(), bad.close()]);
});

t.test('a wrong route password', async (t) => {
  const peerLog = await refusedPeer(t, { password: 'wrong', random: () => 0.75 }, 'auth_password', /route password mismatch/, 'route refused');
  // The refused peer keeps retrying, but on the backoff schedule, never in a storm.
  const delays = peerLog.lines.filter((l) => l.msg === 'route redial scheduled');
  t.ok(delays.length >= 1, `${delays.length} redials scheduled`);
  for (const d of delays) {
    const expected = backoffDelayMs(Number(d.attempt), { baseMs: 20, maxMs: 200, random: () => 0.75 });
    t.equal(d.delayMs, expected, `attempt ${d.attempt} waits ${expected} ms`);
  }
});

t.test('a wrong route user', async (t) => {
  await refusedPeer(t, { user: 'intruder', random: () => 0.75 }, 'auth_user', /route user mismatch/, 'route refused');
});

t.test('a wrong cluster name', async (t) => {
  await refusedPeer(t, { clusterName: 'other-cluster' }, 'cluster_name', /cluster name mismatch.*other-cluster/, 'route refused');
});

t.test('a mismatched posture', async (t) => {
  await refusedPeer(t, { postureDigest: 'posture-v2' }, 'posture', /security posture mismatch/, 'route refused');
});

t.test('a mismatched cluster size', async (t) => {
  await refusedPeer(t, { clusterSize: 5 }, 'cluster_size', /cluster size mismatch.*expects 5 nodes, this node 3|expects 3 nodes, this node 5/,
    'route refused');
});

t.test('a node of another cluster incarnation (cluster recover --force-new-cluster) is refused, naming the remedy', async (t) => {
  // n1 never recovered (''); the peer's data is of a recovery: n1 is the one left behind, and both logs say so.
  await refusedPeer(t, { incarnation: `${Date.UTC(2026, 0, 1)}-0123456789abcdef` }, 'cluster_incarnation',
    /cluster incarnation mismatch.*never recovered.*this node|cluster incarnation mismatch.*"n1" belongs to an earlier incarnation.*wipe its data directory.*cluster add/,
    'route refused');
});

t.test('a joining node (cluster size 0) with no incarnation is accepted by a recovered cluster and learns its incarnation', async (t) => {
  const incarnation = `${Date.UTC(2026, 0, 1)}-00000000000000ff`;
  const recovered = makeTransport(fx, 'n5', { routes: [], clusterSize: 1, incarnation });
  await recovered.start();
  try {
    const dialer = makeTransport(fx, 'n7', { routes: routeTo(recovered), clusterSize: 0 });
    await dialer.start();
    try {
      await waitFor('n7 (joining) up with n5 (recovered)', () => recovered.upPeers().includes('n7'));
      t.equal(dialer.peers().find((p) => p.name === 'n5')?.incarnation, incarnation, 'the joiner sees the incarnation it adopts');
    } finally {
      await dialer.close();
    }
  } finally {
    await recovered.close();
  }
});

t.test('updateHandshake after a join: a link from an old-incarnation peer is closed and its redial refused; a member\'s stays', async (t) => {
  const incarnation = `${Date.UTC(2026, 0, 1)}-00000000000000aa`;
  const joiner = makeTransport(fx, 'n5', { routes: [], clusterSize: 0 });
  await joiner.start();
  const member = makeTransport(fx, 'n6', { routes: routeTo(joiner), clusterSize: 1, incarnation });
  const staleLog = captureLogger();
  const stale = makeTransport(fx, 'n7', { routes: routeTo(joiner), clusterSize: 3, logger: staleLog.logger });
  await member.start();
  await stale.start();
  try {
    await waitFor('both linked to the joiner', () => joiner.upPeers().includes('n6') && joiner.upPeers().includes('n7'));
    joiner.updateHandshake({ clusterSize: 1, incarnation });
    await waitFor('the stale link closed', () => !joiner.upPeers().includes('n7'));
    t.same(joiner.upPeers(), ['n6'], 'the member of the same incarnation stays linked');
    const refused = await expectLog(staleLog.lines, 0, 'route refused', 'cluster_incarnation', /cluster incarnation mismatch/);
    t.match(refused.reason, /wipe its data directory/, `the stale peer is told: ${String(refused.reason).slice(0, 120)}…`);
  } finally {
    await stale.close();
    await member.close();
    await joiner.close();
  }
});

t.test('a joining node (cluster size 0: --initial-cluster-state existing) is accepted; it learns N from its peers', async (t) => {
  const peer = makeTransport(fx, 'n3', { routes: routeTo(n1), clusterSize: 0 });
  await peer.start();
  try {
    await waitFor('n3 (joining) up', () => n1.upPeers().includes('n3') && peer.upPeers().includes('n1'));
    t.pass('n1 (N=3) and a joining n3 (N=0) linked');
  } finally {
    await peer.close();
  }
  await waitFor('n1 sees n3 gone', () => n1.upPeers().length === 0 && n1.linkCount() === 0);
});

t.test('a peer claiming another node\'s name with a different identity key', async (t) => {
  await refusedPeer(t, { serverName: 'n2', identity: makeIdentity() }, 'identity', /"n2" is registered with identity key/,
    'route refused by peer');
});

t.test('a peer claiming this node\'s own name', async (t) => {
  // Each side sees the other claim its own name: both refuse, each with its own reason.
  await refusedPeer(t, { serverName: 'n1' }, 'identity', /claims this node's name "n1"/, 'route refused');
});

t.test('the genuine n2 is accepted by the same node', async (t) => {
  const peer = makeTransport(fx, 'n2', { identity: n2Identity, routes: routeTo(n1) });
  await peer.start();
  await waitFor('n2 up', () => n1.upPeers().includes('n2') && peer.upPeers().includes('n1'));
  t.pass('n1 and n2 linked');
  await peer.close();
  await waitFor('n1 sees n2 gone', () => n1.upPeers().length === 0 && n1.linkCount() === 0);
});

t.test('a listener bound before start (port 0) is taken over: its port is known before any --routes is written', async (t) => {
  const { bindListeners } = await import('../../src/node/index.js');
  const [pre, other] = await bindListeners(2);
  const peer = makeTransport(fx, 'n2', { identity: n2Identity, port: pre!.port, listener: pre!.server });
  await peer.start();
  t.equal(peer.address().port, pre!.port, 'the route listener listens on the handed-over socket');
  // n1 dials the port that was known before the peer started (nothing probed, nothing released in between).
  const dialer = makeTransport(fx, 'n3', { routes: `127.0.0.1:${pre!.port}` });
  await dialer.start();
  await waitFor('n3 and n2 linked through the handed-over port', () => dialer.upPeers().includes('n2') && peer.upPeers().includes('n3'));
  t.same([dialer.upPeers(), peer.upPeers()], [['n2'], ['n3']], 'the handed-over listener accepts routes');
  await dialer.close();
  await peer.close();
  await t.rejects(new Promise<void>((resolve, reject) => {
    const probe = netConnect({ host: '127.0.0.1', port: pre!.port }, () => { probe.destroy(); resolve(); });
    probe.once('error', reject);
  }), { code: 'ECONNREFUSED' }, 'closing the transport closes the handed-over socket');

  const wrongPort = makeTransport(fx, 'n2', { identity: n2Identity, port: pre!.port, listener: other!.server });
  await t.rejects(wrongPort.start(), /listens on port \d+, not the cluster port/, 'a listener on another port than the cluster port is refused');
  other!.server.close();
  const closed = makeTransport(fx, 'n2', { identity: n2Identity, port: other!.port, listener: other!.server });
  await t.rejects(closed.start(), /not listening \(closed already, or never bound\)/, 'a closed listener is refused');
});

t.test('plain TCP garbage before the TLS handshake', async (t) => {
  const from = node.lines.length;
  const socket = netConnect({ host: '127.0.0.1', port: n1.address().port });
  socket.on('error', () => undefined);
  socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await new Promise((resolve) => socket.on('close', resolve));
  const line = await expectLog(node.lines, from, 'route refused', 'tls', /not a TLS route client/);
  t.pass(`n1 logged: ${line.reason}`);
});

/** A TLS client with a valid certificate that then speaks raw bytes instead of the handshake. */
async function rawRouteClient(bytes: Buffer): Promise<WireFrame[]> {
  const socket: TLSSocket = tlsConnect({
    host: '127.0.0.1', port: n1.address().port, ca: fx.ca.cert, cert: fx.certs.n2!.cert, key: fx.certs.n2!.key,
    minVersion: 'TLSv1.3',
  });
  const frames: WireFrame[] = [];
  const parser = new FrameParser();
  socket.on('data', (chunk: Buffer) => parser.push(chunk, (f) => frames.push(f)));
  socket.on('error', () => undefined);
  socket.once('secureConnect', () => socket.write(bytes));
  await new Promise((resolve) => socket.on('close', resolve));
  return frames;
}

t.test('an oversize frame is refused from its length prefix', async (t) => {
  const from = node.lines.length;
  const header = Buffer.alloc(4);
  header.writeUInt32BE(64 * 1024 * 1024);
  const frames = await rawRouteClient(Buffer.concat([header, randomBytes(1024)]));
  const line = await expectLog(node.lines, from, 'route refused', 'frame_oversize', /exceeds the limit/);
  t.pass(`n1 logged: ${line.reason}`);
  t.match(frames.find((f) => f.kind === 'refuse'), { code: 'frame_oversize' }, 'the client received the refusal');
});

t.test('a frame of random bytes', async (t) => {
  const from = node.lines.length;
  const body = randomBytes(64);
  body[0] = 0xc1; // msgpack "never used": random bytes can by chance be valid msgpack, this one never is
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  const frames = await rawRouteClient(Buffer.concat([header, body]));
  const line = await expectLog(node.lines, from, 'route refused', 'frame_malformed', /malformed route frame/);
  t.pass(`n1 logged: ${line.reason}`);
  t.match(frames.find((f) => f.kind === 'refuse'), { code: 'frame_malformed' });
});

t.test('a valid frame that is not the hello', async (t) => {
  const from = node.lines.length;
  const frames = await rawRouteClient(encodeFrame({ kind: 'bus', subject: 'x', payload: Buffer.from('early') }));
  await expectLog(node.lines, from, 'route refused', 'protocol', /expected a hello frame first, got bus/);
  t.match(frames.find((f) => f.kind === 'refuse'), { code: 'protocol' });
});

t.test('a hello with another protocol version', async (t) => {
  const from = node.lines.length;
  const frames = await rawRouteClient(encodeFrame({
    kind: 'hello', version: 99, cluster: 'test-cluster', name: 'n2', identity: n2Identity.publicKey,
    nonce: randomBytes(32), clusterSize: 3, posture: Buffer.from('posture-v1'), user: 'route',
  }));
  await expectLog(node.lines, from, 'route refused', 'version', /route protocol version 99 from "n2", this node speaks 3/);
  t.match(frames.find((f) => f.kind === 'refuse'), { code: 'version' });
});

t.test('a TLS peer that never sends its hello times out', async (t) => {
  const from = node.lines.length;
  const frames = await rawRouteClient(Buffer.alloc(0));
  await expectLog(node.lines, from, 'route refused', 'handshake_timeout', /not finished within/);
  t.equal(frames[0]?.kind, 'hello', 'n1 spoke first');
  t.match(frames.at(-1), { kind: 'refuse', code: 'handshake_timeout' });
});

t.test('a failed transport start leaks nothing, and n1 still serves', async (t) => {
  const busy = createRouteTransport({
    clusterName: 'test-cluster', serverName: 'n9', host: '127.0.0.1', port: n1.address().port, routes: '',
    tls: { cert: fx.certs.n3!.cert, key: fx.certs.n3!.key, ca: fx.ca.cert }, identity: makeIdentity(), user: 'route',
    password: 'x', postureDigest: 'p', clusterSize: 3, logger: captureLogger().logger,
  });
  await t.rejects(busy.start(), { code: 'EADDRINUSE' });
  await busy.close();
  await waitFor('n1 connections closed', () => n1.linkCount() === 0);
  const peer = makeTransport(fx, 'n2', { identity: n2Identity, routes: routeTo(n1) });
  await peer.start();
  await waitFor('n2 up', () => n1.upPeers().includes('n2'));
  t.pass('n1 still accepts a genuine peer after the whole matrix');
  await peer.close();
  await waitFor('n1 connections closed', () => n1.linkCount() === 0);
});


// ---- link behaviour: mesh, self-routes, simultaneous dial, reconnect, dead peers, bounded queue ----
interface LinkNode {
  name: string;
  transport: RouteTransport;
  frames: Array<{ from: string; frame: RouteFrame }>;
  ups: PeerInfo[];
  downs: Array<{ peer: string | undefined; code: string }>;
  log: ReturnType<typeof captureLogger>;
}

function mk(t: { teardown(fn: () => unknown): void }, name: string, overrides: TransportOverrides = {}): LinkNode {
  const log = captureLogger();
  const n: LinkNode = { name, frames: [], ups: [], downs: [], log, transport: undefined as unknown as RouteTransport };
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
  const nodes = [mk(t, 'n1'), mk(t, 'n2'), mk(t, 'n3', { host: '::1' })];
  for (const n of nodes) await n.transport.start();
  const ports = nodes.map((n) => n.transport.address().port);
  const all = nodes.map((n, i) => i === 2 ? `nats-route://[::1]:${ports[i]}` : routeTo(n.transport)).join(',');
  // Restart with the full route list now that the ports are known.
  for (const n of nodes) await n.transport.close();
  const mesh = nodes.map((n, i) => mk(t, n.name, { routes: all, port: ports[i]!, ...(i === 2 ? { host: '::1' } : {}) }));
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

  const [a, b, c] = mesh as [LinkNode, LinkNode, LinkNode];
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
    const a = mk(t, 'n1');
    const b = mk(t, 'n2');
    await a.transport.start();
    await b.transport.start();
    // Now restart both with routes to each other, started in the same turn so both dials race.
    const [pa, pb] = [a.transport.address().port, b.transport.address().port];
    await Promise.all([a.transport.close(), b.transport.close()]);
    const x = mk(t, 'n1', { port: pa, routes: `127.0.0.1:${pb}` });
    const y = mk(t, 'n2', { port: pb, routes: `127.0.0.1:${pa}` });
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
  const b = mk(t, 'n2');
  await b.transport.start();
  const proxy = await startProxy(b.transport.address().port);
  t.teardown(() => proxy.close());
  const a = mk(t, 'n1', { routes: `127.0.0.1:${proxy.port}`, random: () => 0.5 });
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
  const b = mk(t, 'n2', { limits });
  await b.transport.start();
  const proxy = await startProxy(b.transport.address().port);
  t.teardown(() => proxy.close());
  const a = mk(t, 'n1', { routes: `127.0.0.1:${proxy.port}`, limits });
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
  const b = mk(t, 'n2', { limits });
  await b.transport.start();
  const a = mk(t, 'n1', { routes: routeTo(b.transport), limits });
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

t.test('nothing leaks once every transport is closed', async (t) => {
  await n1.close();
  await waitFor('resources released', () => {
    const now = resources();
    return watched.every((k) => (now[k] ?? 0) <= (baseline[k] ?? 0));
  }, 5000).catch(() => undefined);
  const now = resources();
  for (const k of watched) t.ok((now[k] ?? 0) <= (baseline[k] ?? 0), `${k}: ${now[k] ?? 0} open (baseline ${baseline[k] ?? 0})`);
  t.equal(node.lines.filter((l) => l.level >= 50).length, 0, 'no error-level log lines');
});
