// npm run bench:storm — the load-bearing moments of production (issue 13), membershipd against nats-server
// 2.9.10 in the same run, with the same clients (@nats-io/transport-node, in this process) and the same TLS
// certificates. membershipd runs as 3 processes in the deploy posture (bench/support/cluster.ts: --store kv,
// --bus-auth enforce, TLS client port, mutual-TLS routes), users added through the admin API with the
// production scrypt cost (N=2^15); nats-server runs as one process with TLS and the users in its config,
// bcrypt-hashed (cost 11, as `nats server passwd` makes them) or in plain text.
//
//   cold storm      BENCH_STORM (500) clients of ONE user connect at once to a node that never saw them;
//   distinct storm  BENCH_DISTINCT (500) clients of distinct users at once to another cold node;
//   spread storm    BENCH_SPREAD (5000) clients over the 3 nodes at once;
//   NKey storm      BENCH_STORM clients of one NKey user (a signature check each, no cache) on the leader;
//   hold            BENCH_HOLD (10000) raw TLS connections, each authenticated with one SUB, on one node for
//                   BENCH_HOLD_S (60) s while a publisher fans messages out to them: dropped connections,
//                   health, RSS and RSS per connection;
//   rolling restart SIGTERM n0, n1, n2 in turn (restart, /healthz 200 everywhere, next) while 3 nats.js
//                   clients write KV (one per node) and retry only what the client reports as retryable:
//                   failed ops, lost acknowledged puts, longest write stall.
// Every figure is printed with the node's CPU seconds (from /proc) spent on it. Last line:
// BENCH storm cold500_failed=… cold500_ms=… nats_bcrypt500_ms=… conn10k_rss_mib=… rolling_restart_failed_ops=…
// rolling_restart_max_stall_ms=…
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { createUser } from '@nats-io/nkeys';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { issueCertificate, writePemPair } from '../src/certs/index.js';
import { createGeneratedPassword, hashGeneratedPassword } from '../src/auth/index.js';
import { hasBinary, killChildren, spawnChild, stopChild } from './support/children.js';
import { adminConnection, adminRequest, findLeader, getJson, spawnNode, startBenchCluster, waitHealthy, type BenchCluster } from './support/cluster.js';
import { freePorts, waitForPort } from './support/ports.js';
import { cpuSeconds, rssMb } from './support/process_usage.js';
import { loadAverage } from './support/probes.js';

const envInt = (name: string, dflt: number, max: number): number => Math.max(1, Math.min(max, Number(process.env[name] ?? dflt)));
const STORM = envInt('BENCH_STORM', 500, 20_000);
const DISTINCT = envInt('BENCH_DISTINCT', 500, 5000);
const SPREAD = envInt('BENCH_SPREAD', 5000, 15_000);
const HOLD = envInt('BENCH_HOLD', 10_000, 18_000);
const HOLD_S = envInt('BENCH_HOLD_S', 60, 600);
const root = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), 'membershipd-bench-storm-'));
const password = 'storm-password-0123456789';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const nkeyUser = createUser();

interface Storm { connected: number; failed: number; ms: number; errors: Record<string, number>; cpu: number }

/** n nats.js clients connect at once (`opts(i)` each); all connections are closed again before it returns. */
async function storm(n: number, pid: number | number[], opts: (i: number) => Record<string, unknown>): Promise<Storm> {
  const pids = Array.isArray(pid) ? pid : [pid];
  const cpu0 = pids.reduce((a, p) => a + cpuSeconds(p), 0);
  const t0 = Date.now();
  const settled = await Promise.allSettled(Array.from({ length: n }, (_, i) => connect({ reconnect: false, timeout: 20_000, ...opts(i) })));
  const ms = Date.now() - t0;
  const cpu = pids.reduce((a, p) => a + cpuSeconds(p), 0) - cpu0;
  const errors: Record<string, number> = {};
  const open: NatsConnection[] = [];
  for (const s of settled) {
    if (s.status === 'fulfilled') open.push(s.value);
    else {
      const m = (s.reason instanceof Error ? s.reason.message : String(s.reason)).slice(0, 80);
      errors[m] = (errors[m] ?? 0) + 1;
    }
  }
  await Promise.allSettled(open.map((c) => c.close()));
  return { connected: open.length, failed: n - open.length, ms, errors, cpu };
}

function show(what: string, s: Storm): string {
  const errs = Object.keys(s.errors).length > 0 ? ` errors ${JSON.stringify(s.errors)}` : '';
  // Connections per server CPU-second: with TLS on, mostly what a node can take per second on one core.
  return `  ${what}: ${s.connected}/${s.connected + s.failed} connected, ${s.failed} failed, all settled in ${s.ms} ms, server CPU ${s.cpu.toFixed(2)} s (${(s.connected / Math.max(0.01, s.cpu)).toFixed(0)} connections per CPU-s)${errs}`;
}

// ---- raw holders for the 10k phase ------------------------------------------------------------------------

/**
 * A raw client socket to the node that reads INFO in plain text (nats-server 2.9's order), then upgrades to TLS
 * and hands the TLS socket to `onSecure` once it is encrypted. Returns the TCP socket (destroy it to close both).
 */
function tlsAfterInfo(port: number, ca: string, localAddress: string | undefined, onSecure: (secure: TLSSocket) => void): Socket {
  const tcp = netConnect({ host: '127.0.0.1', port, ...(localAddress !== undefined ? { localAddress } : {}) });
  tcp.on('error', () => {});
  let text = '';
  const onInfo = (d: Buffer): void => {
    text += d.toString();
    if (!text.includes('\r\n')) return;
    tcp.off('data', onInfo);
    const secure = tlsConnect({ socket: tcp, ca, checkServerIdentity: () => undefined });
    secure.on('error', () => {});
    secure.once('secureConnect', () => onSecure(secure));
  };
  tcp.on('data', onInfo);
  return tcp;
}

interface Holder { socket: Socket; ready: Promise<boolean>; received: number; closed: boolean }

/** One raw NATS client over TLS: CONNECT + SUB + PING; answers PINGs; counts MSG lines. */
function holder(port: number, ca: string, user: string, pass: string, subject: string): Holder {
  let settle: (ok: boolean) => void = () => undefined;
  const ready = new Promise<boolean>((resolve) => { settle = resolve; });
  const timer = setTimeout(() => settle(false), 120_000);
  const socket = tlsAfterInfo(port, ca, undefined, (secure) => {
    let seen = '';
    let up = false;
    secure.on('data', (chunk: Buffer) => {
      const s = chunk.toString('latin1');
      if (!up) {
        seen += s;
        if (seen.includes('PONG\r\n')) { up = true; clearTimeout(timer); settle(true); }
        if (seen.includes('-ERR')) { clearTimeout(timer); settle(false); }
      }
      if (s.includes('PING\r\n')) secure.write('PONG\r\n');
      for (let i = s.indexOf('MSG '); i >= 0; i = s.indexOf('MSG ', i + 4)) h.received++;
    });
    secure.write(`CONNECT ${JSON.stringify({ user, pass, verbose: false, pedantic: false, protocol: 1 })}\r\nSUB ${subject} 1\r\nPING\r\n`);
  });
  const h: Holder = { socket, ready, received: 0, closed: false };
  socket.on('close', () => { h.closed = true; clearTimeout(timer); settle(false); });
  return h;
}

interface Hold { held: number; failed: number; dropped: number; received: number; rssBefore: number; rssAfter: number; healthyThroughout: boolean; openMs: number }

async function hold(n: number, port: number, pid: number, ca: string, user: string, pass: string, health: (() => Promise<boolean>) | undefined, pubUrl: string, pubOpts: Record<string, unknown>): Promise<Hold> {
  const rssBefore = rssMb(pid);
  const holders: Holder[] = [];
  const t0 = Date.now();
  // Opened in waves of 500: the bench client is one process too, and its own TLS handshakes share the cores.
  for (let i = 0; i < n; i += 500) {
    const wave = Array.from({ length: Math.min(500, n - i) }, (_, k) => holder(port, ca, user, pass, `hold.${(i + k) % 100}`));
    holders.push(...wave);
    await Promise.all(wave.map((h) => h.ready));
  }
  const openMs = Date.now() - t0;
  const results = await Promise.all(holders.map((h) => h.ready));
  const held = results.filter(Boolean).length;
  const pub = await connect({ servers: pubUrl, ...pubOpts, reconnect: false });
  let healthyThroughout = true;
  const end = Date.now() + HOLD_S * 1000;
  let k = 0;
  while (Date.now() < end) {
    for (let s = 0; s < 100; s++) pub.publish(`hold.${s}`, 'tick');
    await pub.flush();
    if (health !== undefined && k++ % 10 === 0 && !(await health())) healthyThroughout = false;
    await sleep(500);
  }
  const rssAfter = rssMb(pid);
  await pub.close();
  const dropped = holders.filter((h, i) => results[i] && h.closed).length;
  const received = holders.reduce((a, h) => a + h.received, 0);
  for (const h of holders) h.socket.destroy();
  return { held, failed: n - held, dropped, received, rssBefore, rssAfter, healthyThroughout, openMs };
}

// ---- hostile storm ----------------------------------------------------------------------------------------

/** A raw TLS login from a chosen loopback address with a wrong password; resolves when answered or closed. */
function wrongLogin(port: number, ca: string, localAddress: string, user: string): { done: Promise<void>; socket: Socket } {
  let settle: () => void = () => undefined;
  const done = new Promise<void>((resolve) => { settle = resolve; });
  const timer = setTimeout(() => settle(), 120_000);
  const socket = tlsAfterInfo(port, ca, localAddress, (secure) => {
    secure.on('data', (c: Buffer) => { if (c.toString().includes('-ERR')) { clearTimeout(timer); settle(); } });
    secure.write(`CONNECT ${JSON.stringify({ user, pass: 'a-guess', verbose: false, pedantic: false })}\r\nPING\r\n`);
  });
  socket.on('close', () => { clearTimeout(timer); settle(); });
  return { done, socket };
}

const pct = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))] ?? NaN;

interface Hostile { quietP50: number; quietP99: number; stormP50: number; stormP99: number; termChanged: boolean; legitMs: number; stormMs: number }

/** 200 wrong logins (unknown names: a default-cost scrypt each) from 200 addresses at the leader while KV puts run. */
async function hostile(c: BenchCluster, leader: number, tls: { caFile: string }): Promise<Hostile> {
  const url = `tls://127.0.0.1:${c.natsPorts[leader]}`;
  const nc = await connect({ servers: url, tls, user: 'storm', pass: password });
  const kv = await new Kvm(jetstream(nc)).create('hostile', { replicas: 3 });
  const timedPuts = async (n: number, prefix: string): Promise<number[]> => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await kv.put(`${prefix}.${i}`, 'v');
      out.push(performance.now() - t0);
    }
    return out;
  };
  await timedPuts(200, 'warm');
  const quiet = await timedPuts(500, 'quiet');
  const term0 = (await getJson(`http://127.0.0.1:${c.httpPorts[leader]}/raftz`)).body.term;
  const t0 = Date.now();
  const attackers = Array.from({ length: 200 }, (_, i) => wrongLogin(c.natsPorts[leader]!, c.ca.cert, `127.0.${1 + Math.floor(i / 250)}.${(i % 250) + 2}`, `mallory-${i}`));
  const during = timedPuts(500, 'storm');
  const l0 = Date.now();
  const legit = await connect({ servers: url, tls, user: 'storm', pass: password, timeout: 20_000 }).then((x) => { const ms = Date.now() - l0; void x.close(); return ms; }, () => -1);
  const storm = await during;
  await Promise.all(attackers.map((a) => a.done));
  const stormMs = Date.now() - t0;
  const term1 = (await getJson(`http://127.0.0.1:${c.httpPorts[leader]}/raftz`)).body.term;
  await nc.close();
  return { quietP50: pct(quiet, 0.5), quietP99: pct(quiet, 0.99), stormP50: pct(storm, 0.5), stormP99: pct(storm, 0.99), termChanged: term0 !== term1, legitMs: legit, stormMs };
}

// ---- membershipd ------------------------------------------------------------------------------------------

interface Figures { hostileP99Ratio: number; cold: Storm; distinct: Storm; spread: Storm; hold: Hold; rollingFailed: number; rollingLost: number; rollingStallMs: number; rollingOps: number }

async function benchMembershipd(): Promise<{ f: Figures; c: BenchCluster }> {
  const c = await startBenchCluster(root);
  const leader = await findLeader(c);
  if (leader < 0) throw new Error('no leader');
  const [a, b] = [(leader + 1) % 3, (leader + 2) % 3];
  const admin = await adminConnection(c, leader);
  const url = (i: number): string => `tls://127.0.0.1:${c.natsPorts[i]}`;
  const tls = { caFile: c.caFile };
  const pids = c.children.map((ch) => ch.pid!);

  let t0 = Date.now();
  const add = async (name: string, pass: string): Promise<void> => {
    for (let r = 0; ; r++) {
      const { reply } = await adminRequest(admin, '$UB.API.USER.ADD', { name, password: pass, roles: ['admin'] });
      if (reply.error === undefined) return;
      if (reply.error.code !== 'unavailable' || r >= 5) throw new Error(`user add ${name}: ${JSON.stringify(reply.error)}`);
    }
  };
  await add('storm', password);
  // The distinct users are machine accounts with node-generated passwords (`user add --generate-password`:
  // the CLI sends a generated$ hash, checked with one HMAC); a storm of distinct scrypt users costs ~0.1 s of
  // CPU each by design (see the RUNBOOK).
  const generated = Array.from({ length: DISTINCT }, () => createGeneratedPassword());
  for (let i = 0; i < DISTINCT; i += 16) {
    await Promise.all(Array.from({ length: Math.min(16, DISTINCT - i) }, async (_, k) => {
      const { reply } = await adminRequest(admin, '$UB.API.USER.ADD', { name: `d${i + k}`, password_hash: hashGeneratedPassword(generated[i + k]!), roles: ['admin'] });
      if (reply.error !== undefined) throw new Error(`user add d${i + k}: ${JSON.stringify(reply.error)}`);
    }));
  }
  console.log(`  membershipd: leader n${leader}; 1 scrypt user and ${DISTINCT} generated-password users added in ${Date.now() - t0} ms`);
  await sleep(1000); // the users reach every node's principal source

  const cold = await storm(STORM, pids[a]!, () => ({ servers: url(a), tls, user: 'storm', pass: password }));
  console.log(show(`cold storm, ${STORM} clients of one user on n${a}`, cold));
  const distinct = await storm(DISTINCT, pids[b]!, (i) => ({ servers: url(b), tls, user: `d${i}`, pass: generated[i] }));
  console.log(show(`cold storm, ${DISTINCT} distinct users (generated passwords) on n${b}`, distinct));
  // Before the spread storm: its 5000 client handshakes keep this process busy for a while after it settles.
  {
    const { reply } = await adminRequest(admin, '$UB.API.USER.ADD', { name: 'nk', nkey: nkeyUser.getPublicKey(), roles: ['admin'] });
    if (reply.error !== undefined) throw new Error(`user add nk: ${JSON.stringify(reply.error)}`);
    await sleep(500);
    const nk = await storm(STORM, pids[leader]!, () => ({ servers: url(leader), tls, authenticator: nkeyAuthenticator(nkeyUser.getSeed()) }));
    console.log(show(`NKey storm, ${STORM} clients of one NKey user on n${leader}`, nk));
  }
  const spread = await storm(SPREAD, pids, (i) => ({ servers: url(i % 3), tls, user: 'storm', pass: password }));
  console.log(show(`spread storm, ${SPREAD} clients over 3 nodes`, spread));

  const hs = await hostile(c, leader, tls);
  console.log(`  hostile storm at the leader n${leader}: 200 wrong logins from 200 addresses (unknown names, a scrypt each) answered in ${hs.stormMs} ms; KV put p50/p99 quiet ${hs.quietP50.toFixed(2)}/${hs.quietP99.toFixed(2)} ms, during ${hs.stormP50.toFixed(2)}/${hs.stormP99.toFixed(2)} ms (p99 ${(hs.stormP99 / hs.quietP99).toFixed(2)}x); election: ${hs.termChanged ? 'YES' : 'no'}; a legitimate login from another address took ${hs.legitMs} ms`);

  const health = async (): Promise<boolean> => (await getJson(`http://127.0.0.1:${c.httpPorts[a]}/healthz`)).status === 200;
  const h = await hold(HOLD, c.natsPorts[a]!, pids[a]!, c.ca.cert, 'storm', password, health, url(b), { tls, user: 'storm', pass: password });
  console.log(`  hold: ${h.held}/${HOLD} connections authenticated with a SUB on n${a} in ${h.openMs} ms, held ${HOLD_S} s under fan-out: ${h.dropped} dropped, ${h.received} messages delivered, healthy throughout: ${h.healthyThroughout}; RSS ${h.rssBefore.toFixed(0)} -> ${h.rssAfter.toFixed(0)} MiB (${(((h.rssAfter - h.rssBefore) * 1024) / Math.max(1, h.held)).toFixed(1)} KiB per connection)`);
  await admin.nc.close();
  await sleep(2000);

  // Rolling restart under KV writes.
  t0 = Date.now();
  const conns: NatsConnection[] = [];
  const client = async (i: number): Promise<NatsConnection> => {
    const nc = await connect({ servers: [i, (i + 1) % 3, (i + 2) % 3].map(url), noRandomize: true, tls, user: 'storm', pass: password, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
    conns.push(nc);
    return nc;
  };
  await new Kvm(jetstream(await client(0))).create('rolling', { replicas: 3 });
  const acked = new Map<string, string>();
  let failed = 0;
  let stall = 0;
  let stopping = false;
  let ops = 0;
  const retryable = (e: unknown): boolean => /timeout|disconnect|no responders|503|jetstream is not enabled|closed|leader/i.test(String(e));
  const writers = [0, 1, 2].map(async (i) => {
    const kv = await new Kvm(jetstream(await client(i), { timeout: 3000 })).open('rolling');
    for (let k = 0; k < 1_000_000 && !stopping; k++) {
      const key = `w${i}.${k}`;
      const ts = Date.now();
      let done = false;
      for (let r = 0; r < 50 && !done; r++) {
        ops++;
        try {
          await kv.put(key, `v${k}`);
          done = true;
        } catch (e) {
          if (!retryable(e)) break;
          await sleep(100);
        }
      }
      if (done) acked.set(key, `v${k}`);
      else failed++;
      stall = Math.max(stall, Date.now() - ts);
    }
  });
  await sleep(2000);
  for (let i = 0; i < 3; i++) {
    const ts = Date.now();
    await stopChild(c.children[i]!, 10_000);
    spawnNode(c, i);
    await waitHealthy(c, [0, 1, 2], 60_000);
    console.log(`  rolling restart: n${i} SIGTERM -> healthy everywhere in ${Date.now() - ts} ms`);
    await sleep(2000);
  }
  stopping = true;
  await Promise.race([Promise.all(writers), sleep(20_000)]);
  const check = await new Kvm(jetstream(conns[1]!, { timeout: 5000 })).open('rolling');
  let lost = 0;
  for (const [key, value] of acked) {
    const e = await check.get(key);
    if (e === null || e.string() !== value) lost++;
  }
  await Promise.allSettled(conns.map((nc) => nc.close()));
  console.log(`  rolling restart under KV writes (${((Date.now() - t0) / 1000).toFixed(1)} s): ${acked.size} puts acknowledged in ${ops} attempts, ${failed} failed, ${lost} acknowledged puts missing afterwards, longest write ${stall} ms`);
  return { f: { hostileP99Ratio: hs.stormP99 / hs.quietP99, cold, distinct, spread, hold: h, rollingFailed: failed, rollingLost: lost, rollingStallMs: stall, rollingOps: acked.size }, c };
}

// ---- nats-server ------------------------------------------------------------------------------------------

async function benchNatsServer(c: BenchCluster, mode: 'bcrypt' | 'plain'): Promise<{ cold: Storm; distinct: Storm; hold: Hold | undefined }> {
  const [port] = await freePorts(1);
  const pair = await writePemPair(root, `nats-${mode}`, await issueCertificate(c.ca, { commonName: 'localhost', usage: 'node' }));
  // One bcrypt hash (cost 11) serves every distinct user: each connection still pays one bcrypt compare.
  const secret = (p: string): string => (mode === 'bcrypt' ? bcrypt.hashSync(p, 11) : p);
  const shared = secret(`${password}-d`);
  const users = [`{ nkey: ${nkeyUser.getPublicKey()} }`, `{ user: storm, password: "${secret(password)}" }`, ...Array.from({ length: DISTINCT }, (_, i) => `{ user: d${i}, password: "${shared}" }`)];
  const conf = join(root, `nats-${mode}.conf`);
  // TLS timeout 2 s, as membershipd's (nats-server's default is 0.5 s, which cut half of a plain-password
  // 500-client TLS storm here with EPIPE).
  writeFileSync(conf, `tls { cert_file: "${pair.certFile}", key_file: "${pair.keyFile}", timeout: 2 }\nauthorization { users: [\n${users.join('\n')}\n] }\n`);
  const child: ChildProcess = spawnChild('nats-server', ['-c', conf, '-a', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  try {
    await waitForPort(port!, child, 20_000);
    const url = `tls://127.0.0.1:${port}`;
    const tls = { caFile: c.caFile };
    const cold = await storm(STORM, child.pid!, () => ({ servers: url, tls, user: 'storm', pass: password }));
    console.log(show(`nats-server (${mode}): ${STORM} clients of one user`, cold));
    const distinct = await storm(DISTINCT, child.pid!, (i) => ({ servers: url, tls, user: `d${i}`, pass: `${password}-d` }));
    console.log(show(`nats-server (${mode}): ${DISTINCT} distinct users`, distinct));
    if (mode === 'plain') {
      const nk = await storm(STORM, child.pid!, () => ({ servers: url, tls, authenticator: nkeyAuthenticator(nkeyUser.getSeed()) }));
      console.log(show(`nats-server: ${STORM} clients of one NKey user`, nk));
      // The spread storm's client load on one server: what this one bench process can open over TLS at once.
      const spread = await storm(SPREAD, child.pid!, () => ({ servers: url, tls, user: 'storm', pass: password }));
      console.log(show(`nats-server (plain): ${SPREAD} clients at once (membershipd's spread storm, on one server)`, spread));
    }
    let h: Hold | undefined;
    if (mode === 'plain') {
      h = await hold(HOLD, port!, child.pid!, c.ca.cert, 'storm', password, undefined, url, { tls, user: 'storm', pass: password });
      console.log(`  nats-server hold: ${h.held}/${HOLD} in ${h.openMs} ms, ${h.dropped} dropped, ${h.received} delivered; RSS ${h.rssBefore.toFixed(0)} -> ${h.rssAfter.toFixed(0)} MiB (${(((h.rssAfter - h.rssBefore) * 1024) / Math.max(1, h.held)).toFixed(1)} KiB per connection)`);
    }
    return { cold, distinct, hold: h };
  } finally {
    await stopChild(child, 5000);
  }
}

async function main(): Promise<void> {
  console.log(`bench:storm — membershipd (3 processes, deploy posture) and nats-server, same clients, TLS; load average ${loadAverage(1)}`);
  console.log(`  storm ${STORM}, distinct ${DISTINCT}, spread ${SPREAD}, hold ${HOLD} connections for ${HOLD_S} s`);
  const { f, c } = await benchMembershipd();
  const rss = c.children.map((ch) => `n${c.children.indexOf(ch)} ${rssMb(ch.pid!).toFixed(0)} MiB`).join(', ');
  console.log(`  membershipd RSS at the end: ${rss}`);
  await Promise.all(c.children.map((ch) => stopChild(ch, 10_000)));
  let natsBcrypt = NaN;
  if (!hasBinary('nats-server')) console.log('  reference: nats-server not installed (apt-get install nats-server): skipped');
  else {
    const b = await benchNatsServer(c, 'bcrypt');
    natsBcrypt = b.cold.ms;
    await benchNatsServer(c, 'plain');
  }
  rmSync(root, { recursive: true, force: true });
  console.log(`BENCH storm cold500_failed=${f.cold.failed} cold500_ms=${f.cold.ms} nats_bcrypt500_ms=${Number.isNaN(natsBcrypt) ? 'skipped' : natsBcrypt} distinct_failed=${f.distinct.failed} spread_failed=${f.spread.failed} conn10k_rss_mib=${f.hold.rssAfter.toFixed(0)} conn10k_dropped=${f.hold.dropped} hostile_put_p99_ratio=${f.hostileP99Ratio.toFixed(2)} rolling_restart_failed_ops=${f.rollingFailed + f.rollingLost} rolling_restart_max_stall_ms=${f.rollingStallMs}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:storm failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    killChildren();
    rmSync(root, { recursive: true, force: true });
    process.exit(1);
  },
);
