// npm run bench:cluster — a 3-node membershipd cluster as separate processes on loopback (the deploy unit's
// flags: --store kv, --bus-auth enforce, TLS client port, TLS routes; the WAL fsyncs every batch, as in
// production), driven through the admin API exactly as `membershipd user add NAME --nkey PUBKEY` does it:
// a signed envelope (src/control/envelope.ts) over a TLS NATS connection authenticated with the node's
// internal identity. NKey users, so no scrypt: the figure is the replication path (leader WAL fsync,
// AppendEntries round trip, follower fsync, commit, apply, reply).
//
// Figures: sequential adds (one in flight) p50/p99, 64 in flight (adds per second), and in the same run the
// floor a replicated write cannot beat: the disk's fsync (write + fdatasync of 4 KiB into zeroed space in the
// data dir's file system) plus a loopback TCP round trip. c1_over_floor = write_c1_p50 / (fsync_p50 + rtt_p50).
//
// What a write costs beyond the request path: the same signed request as a stale read (`user show --stale`:
// envelope check, no Raft) and as a linearizable read (one ReadIndex quorum round, no fsync), sequential p50.
// Then, in the same run, the reference: etcd (Debian's binary) as 3 members with the same TLS posture
// (support/etcd.ts): put p50, serializable and linearizable range p50, puts at 64 in flight. Our cluster is
// stopped first, so the two never share the CPUs. The consensus part of a write is write p50 minus
// stale-read p50, for both systems.
//
// Env: BENCH_DIR (parent of the data dirs; default the OS temp dir), BENCH_C1 (sequential adds, default 300),
// BENCH_C64 (adds at 64 in flight, default 2000), BENCH_VIA=leader|follower (default leader), BENCH_NODE_FLAGS,
// BENCH_WARM (unmeasured adds first, default 2000), BENCH_ETCD=0 (skip the etcd reference).
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { type CertificateAuthority, createCertificateAuthority, issueCertificate, writePemPair } from '../src/certs/index.js';
import { signRequest } from '../src/control/envelope.js';
import { createKeyPair, keyPairFromSeed } from '../src/auth/index.js';
import { killChildren, nodeEntryArgs, spawnChild, stopChild } from './support/children.js';
import { freePorts } from './support/ports.js';
import { cpuMicrosSince, cpuSeconds } from './support/process_usage.js';
import { etcdVersion, startEtcdCluster } from './support/etcd.js';
import { diskFsyncFloor, loadAverage, loopbackRtt } from './support/probes.js';
import { formatMs as fmt, quantile, sortAscending } from './support/stats.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const C1 = Math.max(20, Math.min(100_000, Number(process.env.BENCH_C1 ?? 300)));
const C64_TOTAL = Math.max(128, Math.min(1_000_000, Number(process.env.BENCH_C64 ?? 2000)));
const IN_FLIGHT = 64;
const WARM = Math.max(1, Math.min(100_000, Number(process.env.BENCH_WARM ?? 2000)));
/** Extra node flags for the three nodes, e.g. BENCH_NODE_FLAGS='--cpu-prof --cpu-prof-dir=/tmp/prof'. */
const nodeFlags = (process.env.BENCH_NODE_FLAGS ?? '').split(/\s+/).filter((f) => f !== '');
const via = process.env.BENCH_VIA === 'follower' ? 'follower' : 'leader';
const root = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), 'membershipd-bench-cluster-'));
const children: ChildProcess[] = [];

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The node runs from plain JavaScript bundled by esbuild, as it would from dist/. */
function nodeCommand(): string[] {
  return nodeEntryArgs('bin/membershipd.ts', 'membershipd_cluster.mjs', 'esbuild bundle failed; running the nodes under tsx');
}

async function getJson(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  } catch (e) {
    return { status: 0, body: { error: String(e) } };
  }
}

// ---- the cluster ----
interface Cluster { natsPorts: number[]; httpPorts: number[]; dirs: string[]; idFiles: string[]; ca: CertificateAuthority; caFile: string; stderr: string[] }

async function startCluster(): Promise<Cluster> {
  const ca = await createCertificateAuthority('bench-ca');
  const caFile = join(root, 'ca.pem');
  writeFileSync(caFile, ca.cert);
  const passFile = join(root, 'route.pass');
  writeFileSync(passFile, 'route-secret\n', { mode: 0o600 });
  const ports = await freePorts(9);
  const [routePorts, natsPorts, httpPorts] = [ports.slice(0, 3), ports.slice(3, 6), ports.slice(6)];
  const routes = routePorts.map((p) => `127.0.0.1:${p}`).join(',');
  const cmd = nodeCommand();
  const dirs: string[] = [];
  const idFiles: string[] = [];
  const stderr = ['', '', ''];
  for (let i = 0; i < 3; i++) {
    const pair = await writePemPair(root, `n${i}`, await issueCertificate(ca, { commonName: `n${i}`, usage: 'node' }));
    const dataDir = join(root, `data-${i}`);
    mkdirSync(dataDir, { recursive: true });
    dirs.push(dataDir);
    idFiles.push(join(root, `id-${i}.nk`));
    const args = [
      'serve', '--bind', '127.0.0.1', '--bus-auth', 'enforce', '--http-port', String(httpPorts[i]), '--nats-port', String(natsPorts[i]),
      '--tls-cert', pair.certFile, '--tls-key', pair.keyFile,
      '--cluster-name', 'bench', '--server-name', `n${i}`, '--cluster-port', String(routePorts[i]), '--routes', routes,
      '--cluster-user', 'route', '--cluster-pass-file', passFile,
      '--route-tls-cert', pair.certFile, '--route-tls-key', pair.keyFile, '--route-tls-ca', caFile,
      '--internal-id-file', idFiles[i]!, '--store', 'kv', '--kv-replicas', '3', '--data-dir', dataDir, '--log-level', 'error',
    ];
    const child = spawnChild(process.execPath, [...nodeFlags, ...cmd, ...args], { cwd: repo, stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d: Buffer) => { stderr[i] = (stderr[i] + d.toString()).slice(-4000); });
    children.push(child);
  }
  const c: Cluster = { natsPorts, httpPorts, dirs, idFiles, ca, caFile, stderr };
  const t0 = Date.now();
  for (let k = 0; k < 1200; k++) {
    const hs = await Promise.all(httpPorts.map((p) => getJson(`http://127.0.0.1:${p}/healthz`)));
    if (hs.every((h) => h.status === 200)) {
      console.log(`  cluster healthy ${Date.now() - t0} ms after spawning 3 processes`);
      return c;
    }
    children.forEach((ch, i) => {
      if (ch.exitCode !== null) throw new Error(`n${i} exited ${ch.exitCode}: ${stderr[i]}`);
    });
    if (Date.now() - t0 > 60_000) throw new Error(`cluster not healthy within 60 s: ${JSON.stringify(hs.map((h) => h.body))}`);
    await sleep(100);
  }
  throw new Error('cluster not healthy');
}

interface Admin { nc: NatsConnection; signer: ReturnType<typeof keyPairFromSeed> }

async function admin(c: Cluster, i: number): Promise<Admin> {
  const seed = readFileSync(c.idFiles[i]!, 'utf8').trim();
  const nc = await connect({
    servers: `tls://127.0.0.1:${c.natsPorts[i]}`, authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
    tls: { caFile: c.caFile }, reconnect: false, maxReconnectAttempts: 0, timeout: 10_000, name: 'bench-admin',
    // A private reply prefix, as the CLI uses: the admin API refuses replies to the shared `_INBOX.`.
    inboxPrefix: `_INBOX_bench_admin_${i}`,
  });
  return { nc, signer: keyPairFromSeed(seed, ['server', 'user']) };
}

type Reply = { result?: string; user?: unknown; error?: { code?: string; message?: string } };

/** One signed admin request; the latency in ms (signing is the client's cost, outside it) and the reply. */
async function adminRequest(a: Admin, subject: string, body: Record<string, unknown>): Promise<{ ms: number; reply: Reply }> {
  const payload = signRequest(subject, body, a.signer);
  const t0 = process.hrtime.bigint();
  const msg = await a.nc.request(subject, payload, { timeout: 15_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ms, reply: JSON.parse(new TextDecoder().decode(msg.data)) as Reply };
}

let userSeq = 0;
/**
 * The users' public keys, generated before the timed phases: an operator passes `--nkey PUBKEY`, so making the
 * key is not part of an add, and the bench client shares the two cores with the cluster (generating one
 * inside the timed loops took ~1.3 ms of its CPU per add, when the nodes needed those cores). Signing stays in: the CLI signs.
 */
const userKeys: string[] = [];
/** One `user add NAME --nkey PUBKEY` of a new user; the latency in ms. Throws on an error reply. */
async function addUser(a: Admin, prefix: string): Promise<number> {
  const name = `${prefix}-${userSeq++}`;
  const { ms, reply } = await adminRequest(a, '$UB.API.USER.ADD', { name, nkey: userKeys.pop() ?? createKeyPair('user').publicKey, roles: [] as string[] });
  if (reply.error !== undefined || reply.result !== 'created') throw new Error(`${name}: ${JSON.stringify(reply)}`);
  return ms;
}

/** `user show NAME` (stale: served by the node it reaches; otherwise after a ReadIndex round); ms. */
async function showUser(a: Admin, name: string, stale: boolean): Promise<number> {
  const { ms, reply } = await adminRequest(a, '$UB.API.USER.SHOW', { name, stale });
  if (reply.error !== undefined || reply.user === undefined) throw new Error(`show ${name}: ${JSON.stringify(reply)}`);
  return ms;
}

/** p50 of `rounds` sequential calls (after `warm` unmeasured ones), bounded by `seconds`. */
async function sequentialP50(rounds: number, seconds: number, op: () => Promise<number>, warm = 20): Promise<number> {
  for (let i = 0; i < warm; i++) await op();
  const out: number[] = [];
  const end = Date.now() + seconds * 1000;
  while (out.length < rounds && Date.now() < end) out.push(await op());
  return quantile(sortAscending(out), 0.5);
}

/**
 * CPU per add of each node and of this client since the call, as one line: steadier than wall time on a
 * shared machine, and with four processes on two cores every CPU-ms a hop costs can also be a wait for a
 * core on the next hop.
 */
function cpuMeter(leader: number): (adds: number) => string {
  const nodes0 = children.map((ch) => cpuSeconds(ch.pid!));
  const client0 = process.cpuUsage();
  return (adds) => {
    const n = Math.max(1, adds);
    const nodes = children.map((ch, i) => `n${i}${i === leader ? ' (leader)' : ''} ${fmt(((cpuSeconds(ch.pid!) - nodes0[i]!) * 1000) / n)} ms`);
    return `${nodes.join(', ')}, bench client ${fmt(cpuMicrosSince(client0) / 1000 / n)} ms`;
  };
}

interface EtcdFigures { putP50: number; serialP50: number; linearP50: number; putPerS: number }

/** The reference, measured the way our cluster is: sequential p50s, then puts at 64 in flight. */
async function benchEtcd(c: Cluster): Promise<EtcdFigures> {
  const ports = await freePorts(6);
  const etcd = await startEtcdCluster(root, c.ca, c.caFile, ports);
  try {
    const e = etcd.client;
    let seq = 0;
    const value = 'x'.repeat(200); // about the size of a user record with its audit entry
    const timed = async (op: () => Promise<void>): Promise<number> => {
      const t0 = process.hrtime.bigint();
      await op();
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    // Go has no JIT to warm, but connections and etcd's caches do: a few hundred unmeasured puts first.
    const putP50 = await sequentialP50(C1, 60, () => timed(() => e.put(`user-${seq++}`, value)), 300);
    const serialP50 = await sequentialP50(C1, 30, () => timed(() => e.get('user-1', true)));
    const linearP50 = await sequentialP50(C1, 30, () => timed(() => e.get('user-1', false)));
    let done = 0;
    const end = Date.now() + 60_000;
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      while (done < C64_TOTAL && Date.now() < end) {
        done++;
        await e.put(`c64-${seq++}`, value);
      }
    }));
    const putPerS = done / (Number(process.hrtime.bigint() - t0) / 1e9);
    return { putP50, serialP50, linearP50, putPerS };
  } finally {
    await etcd.stop();
  }
}

async function main(): Promise<void> {
  console.log(`bench:cluster — 3 membershipd processes on loopback, fsync on, data in ${root}`);
  console.log(`  load average ${loadAverage(1)} (the machine is shared: figures are under load)`);
  const c = await startCluster();
  let leader = -1;
  for (let k = 0; k < 100 && leader < 0; k++) {
    for (let i = 0; i < 3; i++) if ((await getJson(`http://127.0.0.1:${c.httpPorts[i]}/raftz`)).body.state === 'leader') leader = i;
    if (leader < 0) await sleep(100);
  }
  if (leader < 0) throw new Error('no leader');
  const target = via === 'leader' ? leader : (leader + 1) % 3;
  console.log(`  admin API through n${target} (${via}; leader n${leader}), NKey users, one TLS connection`);
  const a = await admin(c, target);
  for (let i = WARM + C1 + C64_TOTAL; i > 0; i--) userKeys.push(createKeyPair('user').publicKey);

  // Warm-up: connections, buckets, and V8 tiering up the hot paths of all four processes, which takes the
  // first thousand or two writes (measured: sequential p50 4.6 ms at adds 300-400, 2.0 ms by add 3000; CPU
  // per add halves). The figures are for a node that has been running; "first 100 / last 100" below shows
  // whether the run was still warming up.
  for (let i = 0; i < WARM; i++) await addUser(a, 'warm');

  const c1: number[] = [];
  const c1End = Date.now() + 120_000;
  const c1Cpu = cpuMeter(leader);
  for (let i = 0; i < C1 && Date.now() < c1End; i++) c1.push(await addUser(a, 'c1'));
  const c1CpuLine = c1Cpu(c1.length);
  // The cost per add as the users bucket grows (an O(users) step per add shows up as a rising p50).
  const head = sortAscending(c1.slice(0, 100));
  const tail = sortAscending(c1.slice(-100));
  sortAscending(c1);
  console.log(`  sequential: ${c1.length} adds  p50 ${fmt(quantile(c1, 0.5))} ms  p99 ${fmt(quantile(c1, 0.99))} ms  max ${fmt(c1[c1.length - 1]!)} ms`);
  console.log(`    first 100 p50 ${fmt(quantile(head, 0.5))} ms, last 100 p50 ${fmt(quantile(tail, 0.5))} ms (users ${WARM}..${WARM + c1.length})`);
  console.log(`    CPU per sequential add: ${c1CpuLine}`);

  const lat: number[] = [];
  const doneAt: number[] = [];
  let next = 0;
  const c64End = Date.now() + 90_000;
  const c64Cpu = cpuMeter(leader);
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < C64_TOTAL && Date.now() < c64End) {
      next++;
      lat.push(await addUser(a, 'c64'));
      doneAt.push(Date.now());
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const c64CpuLine = c64Cpu(lat.length);
  sortAscending(lat);
  const perS = lat.length / secs;
  console.log(`  ${IN_FLIGHT} in flight: ${lat.length} adds in ${secs.toFixed(2)} s = ${perS.toFixed(0)}/s  p50 ${fmt(quantile(lat, 0.5))} ms  p99 ${fmt(quantile(lat, 0.99))} ms`);
  if (doneAt.length >= 8) {
    const q = Math.floor(doneAt.length / 4);
    const rate = (from: number, to: number): string => ((to - from) / ((doneAt[to]! - doneAt[from]!) / 1000)).toFixed(0);
    console.log(`    CPU per add: ${c64CpuLine}`);
    console.log(`    first quarter ${rate(0, q)}/s, last quarter ${rate(doneAt.length - 1 - q, doneAt.length - 1)}/s (users ${WARM + c1.length}..${WARM + c1.length + lat.length})`);
  }
  const staleP50 = await sequentialP50(C1, 30, () => showUser(a, 'warm-0', true));
  const linearP50 = await sequentialP50(C1, 30, () => showUser(a, 'warm-0', false));
  console.log(`  user show, sequential p50: stale ${fmt(staleP50)} ms, linearizable (ReadIndex) ${fmt(linearP50)} ms; consensus part of a write (add - stale show) ${fmt(quantile(c1, 0.5) - staleP50)} ms`);
  await a.nc.close();

  const raftz = await getJson(`http://127.0.0.1:${c.httpPorts[leader]}/raftz`);
  console.log(`  leader /raftz: commit ${String(raftz.body.commit)} applied ${String(raftz.body.applied)} proposal p50 ${String(raftz.body.proposalP50Ms)} ms`);

  // The floor: write + fdatasync of 4 KiB in the data dir's file system, and a loopback TCP round trip.
  const fs = diskFsyncFloor(c.dirs[leader]!, 300);
  const rtt = await loopbackRtt();
  const fsyncP50 = quantile(fs, 0.5);
  const rttP50 = quantile(rtt, 0.5);
  console.log(`  fsync floor (write + fdatasync 4 KiB in zeroed space, ${fs.length} rounds in the data dir): p50 ${fmt(fsyncP50)} ms  p99 ${fmt(quantile(fs, 0.99))} ms`);
  console.log(`  loopback TCP round trip (${rtt.length} ping-pongs): p50 ${fmt(rttP50)} ms  p99 ${fmt(quantile(rtt, 0.99))} ms`);

  // Stop: SIGTERM (graceful drain), SIGKILL after 10 s.
  await Promise.all(children.map((ch) => stopChild(ch, 10_000)));

  const c1p50 = quantile(c1, 0.5);
  const etcdBinary = process.env.BENCH_ETCD === '0' ? null : etcdVersion();
  if (etcdBinary === null) {
    console.log('  reference: etcd skipped (BENCH_ETCD=0 or no etcd on PATH: apt-get install etcd-server)');
  } else {
    console.log(`  reference: ${etcdBinary}, 3 members, mutual TLS, v3 JSON gateway over one keep-alive HTTPS connection`);
    const r = await benchEtcd(c);
    console.log(`    put p50 ${fmt(r.putP50)} ms, serializable range p50 ${fmt(r.serialP50)} ms, linearizable range p50 ${fmt(r.linearP50)} ms, 64 in flight ${r.putPerS.toFixed(0)} puts/s; consensus part of a put ${fmt(r.putP50 - r.serialP50)} ms`);
    console.log(`BENCH cluster_reference etcd_put_p50_ms=${fmt(r.putP50)} etcd_put_c64_per_s=${r.putPerS.toFixed(0)} etcd_put_over_floor=${(r.putP50 / (fsyncP50 + rttP50)).toFixed(2)} etcd_consensus_ms=${fmt(r.putP50 - r.serialP50)} ours_consensus_ms=${fmt(c1p50 - staleP50)}`);
  }
  rmSync(root, { recursive: true, force: true });

  const floor = fsyncP50 + rttP50;
  console.log(`BENCH cluster write_c1_p50_ms=${fmt(c1p50)} write_c64_per_s=${perS.toFixed(0)} floor_ms=${fmt(floor)} c1_over_floor=${(c1p50 / floor).toFixed(2)}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:cluster failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    killChildren();
    rmSync(root, { recursive: true, force: true });
    process.exit(1);
  },
);
