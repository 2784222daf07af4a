// npm run bench:cluster — a 3-node membershipd cluster as separate processes on loopback (the deploy unit's
// flags: --store kv, --bus-auth enforce, TLS client port, TLS routes; the WAL fsyncs every batch, as in
// production), driven through the admin API exactly as `membershipd user add NAME --nkey PUBKEY` does it:
// a signed envelope (src/control/envelope.ts) over a TLS NATS connection authenticated with the node's
// internal identity. NKey users, so no scrypt: the figure is the replication path (leader WAL fsync,
// AppendEntries round trip, follower fsync, commit, apply, reply).
//
// Figures: sequential adds (one in flight) p50/p99, 64 in flight (adds per second), and in the same run the
// floor a replicated write cannot beat: the disk's fsync (write + fdatasync of 4 KiB in the data dir's file
// system) plus a loopback TCP round trip. c1_over_floor = write_c1_p50 / (fsync_p50 + rtt_p50).
//
// Env: BENCH_DIR (parent of the data dirs; default the OS temp dir), BENCH_C1 (sequential adds, default 300),
// BENCH_C64 (adds at 64 in flight, default 2000), BENCH_VIA=leader|follower (default leader), BENCH_NODE_FLAGS.
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../src/certs/index.js';
import { signRequest } from '../src/control/envelope.js';
import { createKeyPair, keyPairFromSeed } from '../src/auth/index.js';
import { killChildren, nodeEntryArgs, spawnChild, stopChild } from './support/children.js';
import { freePorts } from './support/ports.js';
import { diskFsyncFloor, loadAverage, loopbackRtt } from './support/probes.js';
import { formatMs as fmt, quantile, sortAscending } from './support/stats.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const C1 = Math.max(20, Math.min(100_000, Number(process.env.BENCH_C1 ?? 300)));
const C64_TOTAL = Math.max(128, Math.min(1_000_000, Number(process.env.BENCH_C64 ?? 2000)));
const IN_FLIGHT = 64;
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
interface Cluster { natsPorts: number[]; httpPorts: number[]; dirs: string[]; idFiles: string[]; caFile: string; stderr: string[] }

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
  const c: Cluster = { natsPorts, httpPorts, dirs, idFiles, caFile, stderr };
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
  });
  return { nc, signer: keyPairFromSeed(seed, ['server', 'user']) };
}

let userSeq = 0;
const subject = '$UB.API.USER.ADD';
/** One `user add NAME --nkey PUBKEY` of a new user; the latency in ms. Throws on an error reply. */
async function addUser(a: Admin, prefix: string): Promise<number> {
  const name = `${prefix}-${userSeq++}`;
  // Key generation and signing are the client's cost, outside the timing (node:crypto Ed25519, ~0.05 ms
  // each; with tweetnacl's ~5-30 ms they were what limited the 64-in-flight phase, not the cluster).
  const body = { name, nkey: createKeyPair('user').publicKey, roles: [] as string[] };
  const payload = signRequest(subject, body, a.signer);
  const t0 = process.hrtime.bigint();
  const msg = await a.nc.request(subject, payload, { timeout: 15_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const reply = JSON.parse(new TextDecoder().decode(msg.data)) as { result?: string; error?: { code?: string; message?: string } };
  if (reply.error !== undefined || reply.result !== 'created') throw new Error(`${name}: ${JSON.stringify(reply)}`);
  return ms;
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

  for (let i = 0; i < 30; i++) await addUser(a, 'warm'); // JIT, connections, buckets

  const c1: number[] = [];
  const c1End = Date.now() + 120_000;
  for (let i = 0; i < C1 && Date.now() < c1End; i++) c1.push(await addUser(a, 'c1'));
  // The cost per add as the users bucket grows (an O(users) step per add shows up as a rising p50).
  const head = sortAscending(c1.slice(0, 100));
  const tail = sortAscending(c1.slice(-100));
  sortAscending(c1);
  console.log(`  sequential: ${c1.length} adds  p50 ${fmt(quantile(c1, 0.5))} ms  p99 ${fmt(quantile(c1, 0.99))} ms  max ${fmt(c1[c1.length - 1]!)} ms`);
  console.log(`    first 100 p50 ${fmt(quantile(head, 0.5))} ms, last 100 p50 ${fmt(quantile(tail, 0.5))} ms (users ${30}..${30 + c1.length})`);

  const lat: number[] = [];
  const doneAt: number[] = [];
  let next = 0;
  const c64End = Date.now() + 90_000;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < C64_TOTAL && Date.now() < c64End) {
      next++;
      lat.push(await addUser(a, 'c64'));
      doneAt.push(Date.now());
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  sortAscending(lat);
  const perS = lat.length / secs;
  console.log(`  ${IN_FLIGHT} in flight: ${lat.length} adds in ${secs.toFixed(2)} s = ${perS.toFixed(0)}/s  p50 ${fmt(quantile(lat, 0.5))} ms  p99 ${fmt(quantile(lat, 0.99))} ms`);
  if (doneAt.length >= 8) {
    const q = Math.floor(doneAt.length / 4);
    const rate = (from: number, to: number): string => ((to - from) / ((doneAt[to]! - doneAt[from]!) / 1000)).toFixed(0);
    console.log(`    first quarter ${rate(0, q)}/s, last quarter ${rate(doneAt.length - 1 - q, doneAt.length - 1)}/s (users ${30 + c1.length}..${30 + c1.length + lat.length})`);
  }
  await a.nc.close();

  const raftz = await getJson(`http://127.0.0.1:${c.httpPorts[leader]}/raftz`);
  console.log(`  leader /raftz: commit ${String(raftz.body.commit)} applied ${String(raftz.body.applied)} proposal p50 ${String(raftz.body.proposalP50Ms)} ms`);

  // The floor: write + fdatasync of 4 KiB in the data dir's file system, and a loopback TCP round trip.
  const fs = diskFsyncFloor(c.dirs[leader]!, 300);
  const rtt = await loopbackRtt();
  const fsyncP50 = quantile(fs, 0.5);
  const rttP50 = quantile(rtt, 0.5);
  console.log(`  fsync floor (write + fdatasync 4 KiB, ${fs.length} rounds in the data dir): p50 ${fmt(fsyncP50)} ms  p99 ${fmt(quantile(fs, 0.99))} ms`);
  console.log(`  loopback TCP round trip (${rtt.length} ping-pongs): p50 ${fmt(rttP50)} ms  p99 ${fmt(quantile(rtt, 0.99))} ms`);

  // Stop: SIGTERM (graceful drain), SIGKILL after 10 s.
  await Promise.all(children.map((ch) => stopChild(ch, 10_000)));
  rmSync(root, { recursive: true, force: true });

  const floor = fsyncP50 + rttP50;
  const c1p50 = quantile(c1, 0.5);
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
