// The refusal matrix: every bad peer is refused with its reason logged (on both sides where the peer is
// a transport), the node keeps serving, and nothing leaks (connections closed, no timers left behind).
import t from 'tap';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { randomBytes } from 'node:crypto';
import {
  FrameParser, RouteAddressError, backoffDelayMs, createRouteTransport, encodeFrame, type WireFrame,
} from '../../transport/index.js';
import { captureLogger, makeFixtures, makeIdentity, makeTransport, routeTo, waitFor, type LogLine } from './helpers.js';

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
