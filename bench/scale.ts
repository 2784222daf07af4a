// npm run bench:scale — data at scale (issue 20 item 5). A 3-node membershipd cluster as separate processes in the
// deploy posture (bench/support/cluster.ts), filled with BENCH_KEYS distinct KV keys of BENCH_VALUE_BYTES through
// the real @nats-io/kv client at 64 puts in flight; then, in order:
//   memory     RSS per node (from /proc), heap used and external (the node's /metrics), bytes per key and RSS over
//              the raw data (keys + values);
//   data dir   bytes on disk per node;
//   restart    SIGKILL a follower, start it with the same data: ms until its /healthz is 200;
//   rejoin     stop a follower, delete its data dir, start it with the same flags and identity: ms until /healthz 200
//              (it installs the leader's snapshot), MB/s of raw data, and the write p99 of a sequential writer
//              during the rejoin against the same writer's quiet p99 just before;
// then the same fill, memory, data dir and restart for nats-server R3 (its JetStream KV, 3 processes, same client),
// after ours is stopped, so the two never share the CPUs.
// Env: BENCH_KEYS (default 1,000,000), BENCH_VALUE_BYTES (256), BENCH_DIR (parent of the data dirs), BENCH_NATS=0
// (skip nats-server), BENCH_PROF_DIR=<dir> (the nodes run with --cpu-prof into it, and <dir>/phases.jsonl gets the
// rejoin's window for `tsx bench/profile_summary.ts <dir> <dir>/phases.jsonl node_modules/.cache/membershipd-bench/
// membershipd_scale.mjs`: where the leader's and the rejoining node's time goes). Last line:
// BENCH scale keys=<n> rss_mib=<..> rss_per_data=<..> restart_ms=<..> rejoin_ms=<..> rejoin_mb_s=<..>
//   write_p99_during_rejoin_ms=<..> nats_rss_mib=<..>
import { appendFileSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { killChildren, stopChild } from './support/children.js';
import { adminConnection, adminRequest, findLeader, getJson, spawnNode, startBenchCluster, waitHealthy, type BenchCluster } from './support/cluster.js';
import { cpuSeconds, rssMb } from './support/process_usage.js';
import { loadAverage } from './support/probes.js';
import { formatMs as fmt, quantile, sortAscending } from './support/stats.js';
import { startNatsJsCluster, type NatsJsCluster } from './support/nats_cluster.js';

const envInt = (name: string, dflt: number, min: number, max: number): number => Math.max(min, Math.min(max, Number(process.env[name] ?? dflt)));
const KEYS = envInt('BENCH_KEYS', 1_000_000, 1000, 5_000_000);
const VALUE_BYTES = envInt('BENCH_VALUE_BYTES', 256, 1, 65_536);
const IN_FLIGHT = 64;
const root = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), 'membershipd-bench-scale-'));
const password = 'scale-password-0123456789';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const mib = (bytes: number): string => (bytes / 1048576).toFixed(1);

const keyOf = (i: number): string => `key.${i}`;
/** Raw data of the fill: every key's bytes plus every value's. */
function rawBytes(): number {
  let keyBytes = 0;
  for (let i = 0; i < KEYS; i++) keyBytes += keyOf(i).length;
  return keyBytes + KEYS * VALUE_BYTES;
}

/** Puts keys [from, to) through `kv`, IN_FLIGHT at a time; a put that fails is retried a few times (an election). */
async function fill(kv: KV, from: number, to: number): Promise<number> {
  const value = new Uint8Array(VALUE_BYTES).fill(0x61);
  let next = from;
  const t0 = performance.now();
  let lastReport = t0;
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < to) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          await kv.put(keyOf(i), value);
          break;
        } catch (e) {
          if (attempt >= 5) throw new Error(`put ${keyOf(i)}: ${String(e)}`);
          await sleep(200);
        }
      }
      if (performance.now() - lastReport > 10_000) {
        lastReport = performance.now();
        console.log(`    … ${i - from} of ${to - from} keys (${((i - from) / ((lastReport - t0) / 1000)).toFixed(0)} puts/s)`);
      }
    }
  }));
  return (to - from) / ((performance.now() - t0) / 1000);
}

/** Bytes of every file under `dir`. */
function dirBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    n += e.isDirectory() ? dirBytes(p) : statSync(p).size;
  }
  return n;
}

/** A metric's value from the node's /metrics text (NaN when absent). */
async function metric(httpPort: number, name: string): Promise<number> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** Sequential puts of one writer until `stop()`; latencies in ms. */
function sequentialWriter(kv: KV, prefix: string): { lat: number[]; stop: () => Promise<void> } {
  const lat: number[] = [];
  let running = true;
  const done = (async () => {
    for (let i = 0; running && i < 1_000_000; i++) {
      const t0 = performance.now();
      try {
        await kv.put(`${prefix}.${i}`, 'v');
        lat.push(performance.now() - t0);
      } catch {
        await sleep(50);
      }
    }
  })();
  return { lat, stop: async () => { running = false; await done; } };
}

const p99 = (xs: number[]): number => quantile(sortAscending([...xs]), 0.99);

interface Figures { rssMib: number[]; rssPerData: number; restartMs: number; rejoinMs: number; rejoinMbS: number; quietP99: number; rejoinP99: number; putsPerS: number }

async function kvClient(url: string, caFile: string, user?: { user: string; pass: string }): Promise<{ nc: NatsConnection; kv: KV }> {
  const nc = await connect({ servers: url, tls: { caFile }, ...(user ?? {}), timeout: 20_000, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  const kv = await new Kvm(jetstream(nc, { timeout: 20_000 })).create('scale', { replicas: 3, history: 1, max_bytes: 2 ** 40 });
  return { nc, kv };
}

async function benchMembershipd(raw: number): Promise<Figures> {
  const profDir = process.env.BENCH_PROF_DIR;
  const nodeFlags = profDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', profDir];
  const c: BenchCluster = await startBenchCluster(root, { bundleName: 'membershipd_scale.mjs', nodeFlags });
  const leader = await findLeader(c);
  if (leader < 0) throw new Error('no leader');
  const admin = await adminConnection(c, leader);
  const { reply } = await adminRequest(admin, '$UB.API.USER.ADD', { name: 'scale', password, roles: ['admin'] });
  if (reply.error !== undefined) throw new Error(`user add: ${JSON.stringify(reply.error)}`);
  await admin.nc.close();
  const base = c.children.map((ch) => rssMb(ch.pid!));
  const { nc, kv } = await kvClient(`tls://127.0.0.1:${c.natsPorts[leader]}`, c.caFile, { user: 'scale', pass: password });
  const putsPerS = await fill(kv, 0, KEYS);
  await sleep(2000); // let the followers apply the tail and the last snapshot land; RSS is then what a quiet node holds
  const rssMib = c.children.map((ch) => rssMb(ch.pid!));
  const heap = await Promise.all(c.httpPorts.map((p) => metric(p, 'nodejs_heap_size_used_bytes')));
  const ext = await Promise.all(c.httpPorts.map((p) => metric(p, 'nodejs_external_memory_bytes')));
  const heapTotal = await Promise.all(c.httpPorts.map((p) => metric(p, 'nodejs_heap_size_total_bytes')));
  const disk = c.dirs.map(dirBytes);
  // Entries held in memory since each node's last snapshot (the log half of a node's memory).
  const logs = await Promise.all(c.httpPorts.map(async (p) => {
    const z = (await getJson(`http://127.0.0.1:${p}/raftz`)).body;
    return Number(z.lastIndex) - Number(z.snapshotIndex);
  }));
  const snaps = await Promise.all(c.httpPorts.map((p) => metric(p, 'membershipd_raft_snapshots_total')));
  // The idle collector (src/node/idle_gc.ts, --idle-gc): full GCs run once the fill went quiet, and their pauses.
  const idleGcs = await Promise.all(c.httpPorts.map((p) => metric(p, 'membershipd_idle_gc_total')));
  const idlePause = await Promise.all(c.httpPorts.map((p) => metric(p, 'membershipd_idle_gc_last_pause_seconds')));
  console.log(`  membershipd: ${KEYS} keys of ${VALUE_BYTES} B at ${IN_FLIGHT} in flight: ${putsPerS.toFixed(0)} puts/s; raw data ${mib(raw)} MiB`);
  for (let i = 0; i < 3; i++) {
    console.log(`    n${i}${i === leader ? ' (leader)' : ''}: RSS ${base[i]!.toFixed(0)} -> ${rssMib[i]!.toFixed(0)} MiB (${(((rssMib[i]! - base[i]!) * 1048576) / KEYS).toFixed(0)} B/key), heap used ${mib(heap[i]!)} of ${mib(heapTotal[i]!)} MiB, external ${mib(ext[i]!)} MiB, data dir ${mib(disk[i]!)} MiB, ${logs[i]} log entries since its last snapshot (${snaps[i]} taken); idle GCs ${idleGcs[i]} (last pause ${(idlePause[i]! * 1000).toFixed(1)} ms)`);
  }
  const rssPerData = Math.max(...rssMib) / (raw / 1048576);

  // Restart: kill -9 a follower, start it on the same data.
  const follower = (leader + 1) % 3;
  c.children[follower]!.kill('SIGKILL');
  await new Promise((r) => c.children[follower]!.once('exit', r));
  let t0 = Date.now();
  spawnNode(c, follower);
  await waitHealthy(c, [follower], 600_000);
  const restartMs = Date.now() - t0;
  console.log(`  restart (kill -9, same data): n${follower} healthy after ${restartMs} ms`);

  // Rejoin: a wiped follower, under a sequential writer measured quiet first.
  const quietW = sequentialWriter(kv, 'quiet');
  await sleep(5000);
  await quietW.stop();
  const other = (leader + 2) % 3;
  await stopChild(c.children[other]!, 10_000);
  rmSync(c.dirs[other]!, { recursive: true, force: true });
  // Event-loop stalls (> 20 ms, the node's own sampler in /varz) of the leader over the rejoin: what a transfer costs
  // the node every write goes through.
  const stallsOf = async (i: number): Promise<{ stalls: number; maxMs: number; gcPauses: number }> => {
    const body = (await getJson(`http://127.0.0.1:${c.httpPorts[i]}/varz`)).body;
    const d = body.event_loop_delay as { stalls_over_20ms?: number; max_ms?: number } | undefined;
    const gc = body.gc as { pauses_over_20ms?: number } | undefined;
    return { stalls: d?.stalls_over_20ms ?? NaN, maxMs: d?.max_ms ?? NaN, gcPauses: gc?.pauses_over_20ms ?? NaN };
  };
  const leaderStallsBefore = await stallsOf(leader);
  const during = sequentialWriter(kv, 'during');
  const startUs = Number(process.hrtime.bigint() / 1000n);
  const cpuBefore = c.children.map((ch, i) => (i === other ? 0 : cpuSeconds(ch.pid!)));
  t0 = Date.now();
  spawnNode(c, other);
  await waitHealthy(c, [other], 900_000);
  const rejoinMs = Date.now() - t0;
  const [leaderStallsAfter, rejoinedStalls] = [await stallsOf(leader), await stallsOf(other)];
  if (profDir !== undefined) {
    // The window V8's profile timestamps share (monotonic µs), and each node's CPU in it (/proc), per profile_summary.
    const endUs = Number(process.hrtime.bigint() / 1000n);
    const cpu = Object.fromEntries(c.children.map((ch, i) => [String(ch.pid), cpuSeconds(ch.pid!) - cpuBefore[i]!]));
    const phase = { phase: 'rejoin', startUs, endUs, ops: during.lat.length, cpuSeconds: cpu, kvNodePid: c.children[leader]!.pid };
    appendFileSync(join(profDir, 'phases.jsonl'), `${JSON.stringify(phase)}\n`);
  }
  await during.stop();
  const rejoinMbS = raw / 1048576 / (rejoinMs / 1000);
  const quietP99 = p99(quietW.lat);
  const rejoinP99 = p99(during.lat);
  console.log(`  rejoin (wiped data dir): n${other} healthy after ${rejoinMs} ms = ${rejoinMbS.toFixed(1)} MB/s of raw data; data dir ${mib(dirBytes(c.dirs[other]!))} MiB; RSS ${rssMb(c.children[other]!.pid!).toFixed(0)} MiB`);
  console.log(`    sequential write p99: quiet ${fmt(quietP99)} ms (${quietW.lat.length} puts), during the rejoin ${fmt(rejoinP99)} ms (${during.lat.length} puts)`);
  console.log(`    event-loop stalls over 20 ms during the rejoin: leader ${leaderStallsAfter.stalls - leaderStallsBefore.stalls} (GC pauses over 20 ms ${leaderStallsAfter.gcPauses - leaderStallsBefore.gcPauses}; its longest stall since start ${fmt(leaderStallsAfter.maxMs)} ms); rejoined node ${rejoinedStalls.stalls} since its start (longest ${fmt(rejoinedStalls.maxMs)} ms)`);
  await nc.close();
  await Promise.all(c.children.map((ch) => stopChild(ch, 10_000)));
  return { rssMib, rssPerData, restartMs, rejoinMs, rejoinMbS, quietP99, rejoinP99, putsPerS };
}

async function benchNats(raw: number): Promise<number> {
  const n: NatsJsCluster = await startNatsJsCluster(join(root, 'nats'));
  try {
    const nc = await connect({ servers: n.urls, timeout: 20_000, maxReconnectAttempts: -1 });
    // The JetStream meta group elects its leader a few seconds after the ports open: retry the create until then.
    let kv: KV | undefined;
    for (let attempt = 0; kv === undefined; attempt++) {
      try {
        // -1: unlimited in nats-server (a limit past the disk's free space is refused: "insufficient storage").
        kv = await new Kvm(jetstream(nc, { timeout: 5000 })).create('scale', { replicas: 3, history: 1, max_bytes: -1 });
      } catch (e) {
        if (attempt >= 30) throw new Error(`nats-server KV create: ${String(e)}`);
        await sleep(1000);
      }
    }
    const putsPerS = await fill(kv, 0, KEYS);
    await sleep(2000);
    const rss = n.children.map((ch) => rssMb(ch.pid!));
    const disk = n.dirs.map(dirBytes);
    console.log(`  nats-server R3 (plain TCP): ${putsPerS.toFixed(0)} puts/s; RSS ${rss.map((r) => r.toFixed(0)).join(', ')} MiB; data dir ${disk.map(mib).join(', ')} MiB (raw ${mib(raw)} MiB)`);
    await nc.close();
    return Math.max(...rss);
  } finally {
    await n.stop();
  }
}

async function main(): Promise<void> {
  console.log(`bench:scale — ${KEYS} keys of ${VALUE_BYTES} B, 3 membershipd processes (deploy posture), then nats-server R3; load average ${loadAverage(1)} (shared machine: figures are under load)`);
  const raw = rawBytes();
  const f = await benchMembershipd(raw);
  const natsRss = process.env.BENCH_NATS === '0' ? NaN : await benchNats(raw);
  rmSync(root, { recursive: true, force: true });
  console.log(`BENCH scale keys=${KEYS} rss_mib=${Math.max(...f.rssMib).toFixed(0)} rss_per_data=${f.rssPerData.toFixed(2)} restart_ms=${f.restartMs} rejoin_ms=${f.rejoinMs} rejoin_mb_s=${f.rejoinMbS.toFixed(1)} write_p99_during_rejoin_ms=${fmt(f.rejoinP99)} nats_rss_mib=${natsRss.toFixed(0)}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:scale failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    killChildren();
    rmSync(root, { recursive: true, force: true });
    process.exit(1);
  },
);
