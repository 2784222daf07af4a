// bench:nats — the same @nats-io/transport-node workload against membershipd's NATS server and, when the
// nats-server binary is installed, against nats-server, one after the other: 1→1 pub/sub (128-byte payloads),
// 1→4 fan-out, request/reply latency, and each server's RSS with 1,000 idle connections. Both servers run as
// child processes so that neither shares the client's CPU. Figures are taken on a shared, loaded machine.
import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import { connect } from '@nats-io/transport-node';
import { freePort } from '../test/support/free_port.js';
import { hasBinary, nodeEntryArgs, spawnChild, stopChild } from './support/children.js';
import { publishInSlices } from './support/nats_load.js';
import { waitForPort } from './support/ports.js';
import { cpuSeconds, rssMb } from './support/process_usage.js';
import { loadAverage } from './support/probes.js';
import { formatCount, median, quantile, sortAscending } from './support/stats.js';

const payload = new Uint8Array(128).fill(97);
const pubsubMsgs = Number(process.env.BENCH_MSGS ?? 200_000);
const fanoutMsgs = Math.floor(pubsubMsgs / 2);
const requests = Number(process.env.BENCH_REQUESTS ?? 3000);
const idleConns = 1000;
const phaseTimeoutMs = 30_000;
/** Extra node flags for the membershipd process (experiments, e.g. BENCH_NODE_FLAGS=--single-threaded). */
const nodeFlags = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter((f) => f !== '');

/** membershipd runs bundled, as from dist/: RSS is a headline figure here and tsx alone adds about 30 MB. */
function membershipdCommand(): string[] {
  return nodeEntryArgs('bench/support/nats_server_main.ts', 'nats_server_main.mjs',
    'esbuild bundle failed; running membershipd under tsx (adds ~30 MB RSS)');
}

async function startServer(kind: 'membershipd' | 'nats-server'): Promise<{ child: ChildProcess; port: number }> {
  const port = await freePort();
  const child = kind === 'membershipd'
    ? spawnChild(process.execPath, [...nodeFlags, ...membershipdCommand(), String(port)], { stdio: ['ignore', 'ignore', 'inherit'] })
    : spawnChild('nats-server', ['-a', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  await waitForPort(port, child);
  return { child, port };
}

async function throughput(port: number, subscribers: number, count: number): Promise<number> {
  const servers = `127.0.0.1:${port}`;
  const subs = await Promise.all(Array.from({ length: subscribers }, () => connect({ servers })));
  const pub = await connect({ servers });
  const subject = `bench.${subscribers}`;
  let received = 0;
  const expected = count * subscribers;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  for (const nc of subs) {
    nc.subscribe(subject, { callback: () => { if (++received === expected) done(); } });
    await nc.flush();
  }
  const start = performance.now();
  await publishInSlices(pub, [subject], payload, count);
  const timeout = new Promise<void>((r) => setTimeout(r, phaseTimeoutMs).unref());
  await Promise.race([all, timeout]);
  const secs = (performance.now() - start) / 1000;
  if (received < expected) console.log(`  warning: ${received}/${expected} received before the ${phaseTimeoutMs} ms limit`);
  await Promise.all([...subs, pub].map((nc) => nc.close()));
  return received / secs;
}

/**
 * Server-bound throughput: a raw socket writes PUBs as fast as the server reads them and another raw socket counts
 * MSG bytes, so no client library is in the way. Shows the server's own speed, which the nats.js figures hide.
 */
async function rawThroughput(port: number, count: number): Promise<number> {
  const open = (): Promise<net.Socket> => new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.on('error', reject);
  });
  const [sub, pub] = await Promise.all([open(), open()]);
  const msgBytes = `MSG raw 1 ${payload.length}\r\n`.length + payload.length + 2;
  const expected = count * msgBytes;
  let received = -1;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  let start = 0;
  const one = Buffer.concat([Buffer.from(`PUB raw ${payload.length}\r\n`), payload, Buffer.from('\r\n')]);
  const batch = Buffer.concat(Array.from({ length: 500 }, () => one));
  const publish = async (): Promise<void> => {
    start = performance.now();
    for (let sent = 0; sent < count; sent += 500) if (!pub.write(batch)) await new Promise((r) => pub.once('drain', r));
  };
  let pending = '';
  sub.on('data', (d: Buffer) => {
    if (received < 0) {
      pending += d.toString('latin1');
      const at = pending.indexOf('PONG\r\n');
      if (at < 0) return;
      received = pending.length - at - 6;
      void publish();
    } else {
      received += d.length;
    }
    if (received >= expected) done();
  });
  pub.write('CONNECT {"verbose":false,"pedantic":false}\r\n');
  sub.write('CONNECT {"verbose":false,"pedantic":false}\r\nSUB raw 1\r\nPING\r\n');
  await Promise.race([all, new Promise((r) => setTimeout(r, phaseTimeoutMs).unref())]);
  const rate = Math.max(0, received) / msgBytes / ((performance.now() - start) / 1000);
  sub.destroy();
  pub.destroy();
  return rate;
}

async function requestReply(port: number): Promise<{ p50: number; p99: number }> {
  const servers = `127.0.0.1:${port}`;
  const svc = await connect({ servers });
  svc.subscribe('bench.rr', { callback: (_e, m) => { m.respond(m.data); } });
  await svc.flush();
  const nc = await connect({ servers });
  const lat: number[] = [];
  const small = payload.subarray(0, 16);
  for (let i = 0; i < 200; i++) await nc.request('bench.rr', small, { timeout: 5000 }); // warm-up
  for (let i = 0; i < requests; i++) {
    const t0 = performance.now();
    await nc.request('bench.rr', small, { timeout: 5000 });
    lat.push(performance.now() - t0);
  }
  await Promise.all([svc.close(), nc.close()]);
  sortAscending(lat);
  return { p50: quantile(lat, 0.5) * 1000, p99: quantile(lat, 0.99) * 1000 };
}

async function idleRss(port: number, pid: number): Promise<{ base: number; loaded: number }> {
  await new Promise((r) => setTimeout(r, 300));
  const base = rssMb(pid);
  const sockets: net.Socket[] = [];
  const handshake = Buffer.from('CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nPING\r\n');
  for (let i = 0; i < idleConns; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, idleConns - i) }, () => new Promise<void>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1');
      let seen = '';
      s.on('data', (d) => {
        seen += d.toString('latin1');
        if (seen.includes('PONG')) resolve();
        else if (seen.includes('INFO') && !s.writableEnded && seen.indexOf('\n') > 0 && !seen.includes('#sent')) {
          seen += '#sent';
          s.write(handshake);
        }
      });
      s.on('error', reject);
      sockets.push(s);
    })));
  }
  await new Promise((r) => setTimeout(r, 1000));
  const loaded = rssMb(pid);
  for (const s of sockets) s.destroy();
  return { base, loaded };
}

interface Running {
  kind: 'membershipd' | 'nats-server'; child: ChildProcess; port: number;
  pubsub: number[]; fanout: number[]; p50: number[]; p99: number[];
  /** Server CPU µs per delivered message in the throughput phases: less noisy than rates on a loaded machine. */
  cpuPerMsg: number[];
  raw: number[];
}

/** One round of the three workloads against one server; rounds alternate between servers to spread the load noise. */
async function round(r: Running, n: number): Promise<void> {
  const cpu0 = cpuSeconds(r.child.pid!);
  const pubsub = await throughput(r.port, 1, pubsubMsgs);
  const fanout = await throughput(r.port, 4, fanoutMsgs);
  const cpuUs = ((cpuSeconds(r.child.pid!) - cpu0) * 1e6) / (pubsubMsgs + 4 * fanoutMsgs);
  r.cpuPerMsg.push(cpuUs);
  const rr = await requestReply(r.port);
  const raw = await rawThroughput(r.port, pubsubMsgs * 2);
  r.raw.push(raw);
  r.pubsub.push(pubsub);
  r.fanout.push(fanout);
  r.p50.push(rr.p50);
  r.p99.push(rr.p99);
  console.log(`  round ${n} ${r.kind.padEnd(11)} pub/sub 1→1 ${formatCount(pubsub).padStart(9)} msgs/s   ` +
    `fan-out 1→4 ${formatCount(fanout).padStart(9)} deliveries/s   request/reply p50 ${rr.p50.toFixed(0)} µs p99 ${rr.p99.toFixed(0)} µs   ` +
    `server CPU ${cpuUs.toFixed(2)} µs/msg   raw-socket 1→1 ${formatCount(raw)} msgs/s`);
}

/** RSS of a fresh server process, idle and then holding 1,000 idle connections. */
async function rssPhase(kind: 'membershipd' | 'nats-server'): Promise<{ base: number; loaded: number }> {
  const { child, port } = await startServer(kind);
  try {
    const r = await idleRss(port, child.pid!);
    console.log(`  ${kind.padEnd(11)} RSS ${r.base.toFixed(1)} MB fresh → ${r.loaded.toFixed(1)} MB with ${idleConns} idle connections`);
    return r;
  } finally {
    await stopChild(child);
  }
}

const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const started = Date.now();
console.log(`bench:nats — ${pubsubMsgs} msgs of ${payload.length} B (1→1), ${fanoutMsgs} msgs (1→4), ${requests} requests, ` +
  `${rounds} alternating rounds (median); loadavg ${loadAverage(1)} (shared machine: figures under load)`);
const hasNatsServer = hasBinary('nats-server');
if (!hasNatsServer) console.log('  SKIP nats-server: binary not found (apt-get install nats-server); ratios are reported as NaN');
const running: Running[] = [];
try {
  for (const kind of hasNatsServer ? (['membershipd', 'nats-server'] as const) : (['membershipd'] as const)) {
    const { child, port } = await startServer(kind);
    running.push({ kind, child, port, pubsub: [], fanout: [], p50: [], p99: [], cpuPerMsg: [], raw: [] });
    await throughput(port, 1, 20_000); // warm-up (JIT, connections)
  }
  for (let n = 1; n <= rounds; n++) for (const r of running) await round(r, n);
} finally {
  for (const r of running) await stopChild(r.child);
}
const ours = running[0]!;
const ref = running[1];
for (const r of running) {
  console.log(`  ${r.kind.padEnd(11)} median: pub/sub ${formatCount(median(r.pubsub))} msgs/s, ` +
    `fan-out ${formatCount(median(r.fanout))} deliveries/s, p50 ${median(r.p50).toFixed(0)} µs, p99 ${median(r.p99).toFixed(0)} µs, ` +
    `server CPU ${median(r.cpuPerMsg).toFixed(2)} µs/msg, raw-socket 1→1 ${formatCount(median(r.raw))} msgs/s`);
}
const oursRss = await rssPhase('membershipd');
if (hasNatsServer) await rssPhase('nats-server');
const ratio = (f: (r: Running) => number[]): string => (ref === undefined ? 'NaN' : (median(f(ours)) / median(f(ref))).toFixed(2));
console.log(`total ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(`BENCH nats pubsub_ratio=${ratio((r) => r.pubsub)} fanout_ratio=${ratio((r) => r.fanout)} ` +
  `rr_p50_ratio=${ratio((r) => r.p50)} rss_1k_conns_mb=${oursRss.loaded.toFixed(1)}`);
process.exit(0);
