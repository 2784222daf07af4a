// npm run bench:efficiency — issue 14's table, both systems in the same run, alternating round by round:
// membershipd as 3 processes in the deploy posture (support/cluster.ts: --store kv, bus-auth enforce, TLS client
// ports, mutual-TLS routes, WAL fdatasync per batch) and nats-server 2.9 as a 3-node JetStream cluster with the
// same posture where it has one (TLS client port, user/password, mutual-TLS routes; its file store does not
// fsync before acknowledging, ours does). Per round and system:
//   - Go client (nats.go, bench/efficiency_go) pub/sub 1→1 on one node, 128 B payloads: msgs/s, server CPU per message;
//   - Go client KV put (R3 bucket) at 64 in flight: puts/s, server CPU per put;
//   - nats.js KV put at 64 in flight: puts/s, p50/p99/p999;
//   - nats.js KV put sequential: p50;
//   - nats.js KV get at 64 in flight: gets/s, server CPU per get.
// The KV clients connect to the node that leads the bucket's stream (ours: the Raft leader). CPU is the sum of
// /proc/<pid>/stat utime+stime over the three server processes; RSS from /proc/<pid>/status (VmRSS idle, after the
// cluster formed; VmHWM, the kernel's high-water mark, at the end). membershipd's event-loop delay and GC pauses
// come from its /varz. Go parts skip with a line when go or nats.go is missing.
//
// Env: BENCH_ROUNDS (default 2), BENCH_GO_MSGS (500000), BENCH_KV_PUTS (20000 per c64 phase), BENCH_SEQ_PUTS (1000),
// BENCH_NODE_FLAGS (node flags for our three processes, e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof'),
// BENCH_ONLY=membershipd (skip the reference: for profiling), BENCH_PHASES (comma list of gopubsub, gokv, js, jsget).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { issueCertificate, writePemPair } from '../src/certs/index.js';
import { hasBinary, killChildren, spawnChild, stopChild } from './support/children.js';
import { adminConnection, adminRequest, findLeader, getJson, startBenchCluster, type BenchCluster } from './support/cluster.js';
import { freePorts, waitForPort } from './support/ports.js';
import { cpuSeconds, rssMb } from './support/process_usage.js';
import { loadAverage } from './support/probes.js';
import { formatCount, formatMs, median, quantile, sortAscending } from './support/stats.js';

const bounded = (name: string, dflt: number, min: number, max: number): number => {
  const v = Number(process.env[name] ?? dflt);
  if (!Number.isInteger(v) || v < min || v > max) throw new Error(`${name}=${process.env[name]}: want an integer in ${min}..${max}`);
  return v;
};
const ROUNDS = bounded('BENCH_ROUNDS', 2, 1, 20);
const GO_MSGS = bounded('BENCH_GO_MSGS', 500_000, 10_000, 50_000_000);
const KV_PUTS = bounded('BENCH_KV_PUTS', 20_000, 1000, 10_000_000);
const SEQ_PUTS = bounded('BENCH_SEQ_PUTS', 1000, 100, 1_000_000);
const IN_FLIGHT = 64;
const PAYLOAD = 128;
const VALUE = 128;
const USER = 'bench';
const PASSWORD = 'bench-password-0123456789';
const BUCKET = 'eff';
const nodeFlags = (process.env.BENCH_NODE_FLAGS ?? '').split(/\s+/).filter((f) => f !== '');
const onlyOurs = process.env.BENCH_ONLY === 'membershipd';
/** Which workloads run (a profile of one workload: BENCH_PHASES=gopubsub); default all three. */
const phases = new Set((process.env.BENCH_PHASES ?? 'gopubsub,gokv,js,jsget').split(','));
for (const p of phases) if (!['gopubsub', 'gokv', 'js', 'jsget'].includes(p)) throw new Error(`BENCH_PHASES: unknown phase ${p} (want gopubsub, gokv, js, jsget)`);
const repo = fileURLToPath(new URL('..', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'membershipd-bench-eff-'));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Kind = 'membershipd' | 'nats-server';

interface System {
  kind: Kind;
  children: ChildProcess[];
  urls: string[];
  /** Index of the node leading the bench bucket's stream: the KV clients connect there. */
  kvNode: number;
  rssIdle: number[];
  figures: Map<string, number[]>;
  /** membershipd: the KV leader's /metrics, for the batching figures of each phase. */
  metricsUrl?: string;
}

/** The counters of our KV leader that say how well a write phase batched. */
const batchingSeries = ['membershipd_wal_fsync_seconds_count', 'membershipd_raft_commit_index', 'membershipd_route_writes_total',
  'membershipd_route_frames_out_total', 'membershipd_raft_messages_out_total'] as const;

async function batchingCounters(url: string): Promise<number[]> {
  try {
    const text = await (await fetch(url, { signal: AbortSignal.timeout(5000) })).text();
    return batchingSeries.map((name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN));
  } catch {
    return batchingSeries.map(() => NaN);
  }
}

/**
 * BENCH_PHASE_LOG=<file>: one JSON line per measured phase of membershipd (monotonic µs window, the clock V8's
 * --cpu-prof timestamps use; ops; CPU seconds per process from /proc), for bench/profile_summary.ts.
 */
const phaseLog = process.env.BENCH_PHASE_LOG;
async function phase<T extends { ops: number }>(s: System, name: string, run: () => Promise<T>): Promise<T> {
  const before = s.metricsUrl === undefined || name === 'gopubsub' ? undefined : await batchingCounters(s.metricsUrl);
  const cpu0 = s.children.map((ch) => cpuSeconds(ch.pid!));
  const startUs = Number(process.hrtime.bigint() / 1000n);
  const r = await run();
  const endUs = Number(process.hrtime.bigint() / 1000n);
  if (before !== undefined) {
    const d = (await batchingCounters(s.metricsUrl!)).map((v, i) => v - before[i]!);
    const [fsyncs, entries, writes, frames, raftOut] = d as [number, number, number, number, number];
    console.log(`    ${name}: KV leader per op: ${(fsyncs / r.ops).toFixed(2)} fsyncs (${(entries / fsyncs).toFixed(1)} entries each), ` +
      `${(writes / r.ops).toFixed(2)} route writes (${(frames / writes).toFixed(1)} frames each), ${(raftOut / r.ops).toFixed(2)} Raft messages sent`);
  }
  if (phaseLog !== undefined && s.kind === 'membershipd') {
    const cpu = Object.fromEntries(s.children.map((ch, i) => [String(ch.pid), cpuSeconds(ch.pid!) - cpu0[i]!]));
    appendFileSync(phaseLog, `${JSON.stringify({ phase: name, startUs, endUs, ops: r.ops, cpuSeconds: cpu, kvNodePid: s.children[s.kvNode]!.pid })}\n`);
  }
  return r;
}

function record(s: System, key: string, value: number): void {
  (s.figures.get(key) ?? s.figures.set(key, []).get(key)!).push(value);
}
const med = (s: System, key: string): number => median(s.figures.get(key) ?? []);
const clusterCpu = (s: System): number => s.children.reduce((sum, ch) => sum + cpuSeconds(ch.pid!), 0);

/** VmHWM (peak RSS) of `pid` in MiB. */
function peakRssMb(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** The Go client's RESULT fields, and the phase's operation count. */
type GoResult = Record<string, number> & { ops: number };

// ---- the Go client ----------------------------------------------------------------------------------------

/** Builds bench/efficiency_go offline in GOPATH mode; null (with the reason printed) when Go or nats.go is missing. */
function buildGo(): string | null {
  if (spawnSync('go', ['version'], { stdio: 'ignore' }).status !== 0 || !existsSync('/usr/share/gocode/src/github.com/nats-io/nats.go')) {
    console.log('  SKIP Go client figures: needs go and nats.go (apt-get install golang-go golang-github-nats-io-go-nats-dev)');
    return null;
  }
  const bin = join(root, 'effgo');
  const env = { ...process.env, GOPATH: '/usr/share/gocode', GO111MODULE: 'off', GOFLAGS: '-mod=mod', GOPROXY: 'off', GOCACHE: join(tmpdir(), 'membershipd-gocache') };
  const r = spawnSync('go', ['build', '-o', bin, join(repo, 'bench/efficiency_go/main.go')], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) {
    console.log(`  SKIP Go client figures: go build failed: ${r.stderr.toString().slice(0, 300)}`);
    return null;
  }
  return bin;
}

/** Runs the Go client to completion (killed by PID after `timeoutMs`); its RESULT object. */
function runGo(bin: string, args: string[], timeoutMs: number): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (code !== 0 || line === undefined) reject(new Error(`effgo ${args[0]} exited ${code}: ${err.slice(0, 500)}`));
      else resolve(JSON.parse(line.slice(7)) as Record<string, number>);
    });
  });
}

// ---- starting both systems --------------------------------------------------------------------------------

async function startOurs(): Promise<{ s: System; c: BenchCluster }> {
  const c = await startBenchCluster(root, { nodeFlags, bundleName: 'efficiency_cluster.mjs' });
  const leader = await findLeader(c);
  if (leader < 0) throw new Error('membershipd: no leader');
  const admin = await adminConnection(c, leader);
  for (let r = 0; ; r++) {
    const { reply } = await adminRequest(admin, '$UB.API.USER.ADD', { name: USER, password: PASSWORD, roles: ['admin'] });
    if (reply.error === undefined) break;
    if (r >= 10) throw new Error(`user add: ${JSON.stringify(reply.error)}`);
    await sleep(200);
  }
  await admin.nc.close();
  const urls = c.natsPorts.map((p) => `tls://127.0.0.1:${p}`);
  return { s: { kind: 'membershipd', children: c.children, urls, kvNode: leader, rssIdle: [], figures: new Map(), metricsUrl: `http://127.0.0.1:${c.httpPorts[leader]}/metrics` }, c };
}

async function startReference(c: BenchCluster): Promise<System> {
  const ports = await freePorts(6);
  const [clientPorts, routePorts] = [ports.slice(0, 3), ports.slice(3)];
  const children: ChildProcess[] = [];
  for (let i = 0; i < 3; i++) {
    const pair = await writePemPair(root, `ref${i}`, await issueCertificate(c.ca, { commonName: `ref${i}`, usage: 'node' }));
    const dir = join(root, `ref-${i}`);
    mkdirSync(dir, { recursive: true });
    const routes = routePorts.filter((_, j) => j !== i).map((p) => `"nats-route://route:route-secret@127.0.0.1:${p}"`);
    const conf = join(root, `ref${i}.conf`);
    writeFileSync(conf, `server_name: n${i}
listen: 127.0.0.1:${clientPorts[i]}
jetstream { store_dir: "${dir}", max_memory_store: 256MB, max_file_store: 4GB }
tls { cert_file: "${pair.certFile}", key_file: "${pair.keyFile}", timeout: 2 }
authorization { users: [ { user: ${USER}, password: "${PASSWORD}" } ] }
cluster {
  name: ref
  listen: 127.0.0.1:${routePorts[i]}
  authorization { user: route, password: route-secret }
  routes: [${routes.join(', ')}]
  tls { cert_file: "${pair.certFile}", key_file: "${pair.keyFile}", ca_file: "${c.caFile}", verify: true, timeout: 5 }
}
`);
    children.push(spawnChild('nats-server', ['-c', conf], { stdio: 'ignore' }));
  }
  await Promise.all(clientPorts.map((p, i) => waitForPort(p, children[i]!)));
  return { kind: 'nats-server', children, urls: clientPorts.map((p) => `tls://127.0.0.1:${p}`), kvNode: 0, rssIdle: [], figures: new Map() };
}

const connectTo = (s: System, node: number, caFile: string, name: string): Promise<NatsConnection> =>
  connect({ servers: s.urls[node]!, tls: { caFile }, user: USER, pass: PASSWORD, name, timeout: 20_000, maxReconnectAttempts: 0 });

/**
 * Creates the R3 bucket (retried while the JetStream meta leader or our principals are not there yet) and
 * points the KV clients at the node leading its stream.
 */
async function prepareBucket(s: System, caFile: string): Promise<void> {
  const end = Date.now() + 60_000;
  for (;;) {
    try {
      const nc = await connectTo(s, 0, caFile, 'bench-setup');
      try {
        await new Kvm(jetstream(nc, { timeout: 10_000 })).create(BUCKET, { replicas: 3, history: 1 });
        const info = await (await jetstreamManager(nc, { timeout: 10_000 })).streams.info(`KV_${BUCKET}`);
        const leader = info.cluster?.leader;
        const at = leader === undefined ? -1 : Number(/^n(\d)$/.exec(leader)?.[1] ?? -1);
        if (at >= 0) s.kvNode = at;
        return;
      } finally {
        await nc.close();
      }
    } catch (e) {
      if (Date.now() > end) throw new Error(`${s.kind}: bucket not created within 60 s: ${String(e)}`);
      await sleep(500);
    }
  }
}

// ---- the workloads ----------------------------------------------------------------------------------------

async function goPubsub(s: System, bin: string, caFile: string): Promise<void> {
  const cpu0 = clusterCpu(s);
  const r = await phase(s, 'gopubsub', async () => {
    const res = await runGo(bin, ['pubsub', s.urls[s.kvNode]!, caFile, USER, PASSWORD, String(GO_MSGS), String(PAYLOAD)], 120_000);
    return { ...res, ops: res.received! } as GoResult;
  });
  const cpuUs = ((clusterCpu(s) - cpu0) * 1e6) / Math.max(1, r.received!);
  if (r.received! < GO_MSGS) console.log(`  warning: ${s.kind} delivered ${r.received}/${GO_MSGS} Go messages within 30 s`);
  record(s, 'goPubsub', r.rate!);
  record(s, 'goPubsubCpu', cpuUs);
  console.log(`    Go pub/sub 1→1 ${formatCount(r.rate!).padStart(9)} msgs/s   server CPU ${cpuUs.toFixed(2)} µs/msg`);
}

async function goKvPut(s: System, bin: string, caFile: string, round: number): Promise<void> {
  const cpu0 = clusterCpu(s);
  const r = await phase(s, 'gokv', async () => {
    const res = await runGo(bin, ['kvput', s.urls[s.kvNode]!, caFile, USER, PASSWORD, BUCKET, String(KV_PUTS), String(IN_FLIGHT), String(VALUE), `go${round}`], 180_000);
    return { ...res, ops: res.puts! } as GoResult;
  });
  const cpuUs = ((clusterCpu(s) - cpu0) * 1e6) / Math.max(1, r.puts!);
  if (r.failed! > 0) console.log(`  warning: ${s.kind}: ${r.failed} Go puts failed`);
  record(s, 'goKv', r.rate!);
  record(s, 'goKvCpu', cpuUs);
  console.log(`    Go KV put R3, ${IN_FLIGHT} in flight ${formatCount(r.rate!).padStart(7)} puts/s   server CPU ${cpuUs.toFixed(1)} µs/put (3 processes)`);
}

/** nats.js KV get at 64 in flight (a DIRECT.GET request each, keys the put phases wrote): gets/s and server CPU per get. */
async function jsKvGet(s: System, kv: KV, round: number): Promise<void> {
  let next = 0;
  let found = 0;
  const end = Date.now() + 60_000;
  const t0 = performance.now();
  const cpu0 = clusterCpu(s);
  const r = await phase(s, 'jsget', async () => {
    let ops = 0;
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      while (next < KV_PUTS && Date.now() < end) {
        const i = next++;
        if ((await kv.get(`js${round}.${i % 10_000}`)) !== null) found++;
        ops++;
      }
    }));
    return { ops };
  });
  const rate = r.ops / ((performance.now() - t0) / 1000);
  const cpuUs = ((clusterCpu(s) - cpu0) * 1e6) / Math.max(1, r.ops);
  record(s, 'jsGet', rate);
  record(s, 'jsGetCpu', cpuUs);
  console.log(`    nats.js KV get, ${IN_FLIGHT} in flight ${formatCount(rate).padStart(7)} gets/s (${found} found)   server CPU ${cpuUs.toFixed(1)} µs/get`);
}

async function jsKvPut(s: System, kv: KV, round: number): Promise<void> {
  const value = new Uint8Array(VALUE).fill(118);
  const lat: number[] = [];
  let next = 0;
  const end = Date.now() + 120_000;
  const cpu0 = clusterCpu(s);
  const t0 = performance.now();
  await phase(s, 'jskv', async () => {
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      while (next < KV_PUTS && Date.now() < end) {
        const i = next++;
        const a = performance.now();
        await kv.put(`js${round}.${i % 10_000}`, value);
        lat.push(performance.now() - a);
      }
    }));
    return { ops: lat.length };
  });
  const secs = (performance.now() - t0) / 1000;
  const cpuUs = ((clusterCpu(s) - cpu0) * 1e6) / Math.max(1, lat.length);
  sortAscending(lat);
  const rate = lat.length / secs;
  record(s, 'jsKv', rate);
  record(s, 'jsKvCpu', cpuUs);
  record(s, 'jsP50', quantile(lat, 0.5));
  record(s, 'jsP99', quantile(lat, 0.99));
  record(s, 'jsP999', quantile(lat, 0.999));
  console.log(`    nats.js KV put, ${IN_FLIGHT} in flight ${formatCount(rate).padStart(7)} puts/s   p50 ${formatMs(quantile(lat, 0.5))} p99 ${formatMs(quantile(lat, 0.99))} ` +
    `p999 ${formatMs(quantile(lat, 0.999))} max ${formatMs(lat[lat.length - 1]!)} ms   server CPU ${cpuUs.toFixed(1)} µs/put`);
  const seq: number[] = [];
  const seqEnd = Date.now() + 60_000;
  await phase(s, 'jsseq', async () => {
    for (let i = 0; i < SEQ_PUTS && Date.now() < seqEnd; i++) {
      const a = performance.now();
      await kv.put(`seq${round}.${i % 1000}`, value);
      seq.push(performance.now() - a);
    }
    return { ops: seq.length };
  });
  sortAscending(seq);
  record(s, 'seqP50', quantile(seq, 0.5));
  console.log(`    nats.js KV put sequential p50 ${formatMs(quantile(seq, 0.5))} ms p99 ${formatMs(quantile(seq, 0.99))} ms (${seq.length} puts)`);
}

/** Unmeasured work first: JIT tiering of our four processes, connections, the bucket's first entries. */
async function warm(s: System, kv: KV, bin: string | null, caFile: string): Promise<void> {
  const value = new Uint8Array(VALUE);
  let next = 0;
  if (phases.has('gokv') || phases.has('js') || phases.has('jsget')) {
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      while (next < 3000) await kv.put(`warm.${next++}`, value);
    }));
  }
  if (bin !== null && phases.has('gopubsub')) await runGo(bin, ['pubsub', s.urls[s.kvNode]!, caFile, USER, PASSWORD, '100000', String(PAYLOAD)], 60_000);
}

// ---- main -------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = Date.now();
  console.log(`bench:efficiency — ${ROUNDS} alternating rounds; Go pub/sub ${formatCount(GO_MSGS)} msgs of ${PAYLOAD} B; KV puts of ${VALUE} B: ` +
    `${formatCount(KV_PUTS)} at ${IN_FLIGHT} in flight per client, ${SEQ_PUTS} sequential; loadavg ${loadAverage(2)} ` +
    '(2 cores shared with other sessions: figures are under load, compare ratios from the same run)');
  const bin = buildGo();
  const haveRef = !onlyOurs && hasBinary('nats-server');
  if (!haveRef) console.log(`  SKIP nats-server reference: ${onlyOurs ? 'BENCH_ONLY=membershipd' : 'binary not found (apt-get install nats-server)'}; ratios are NaN`);
  const { s: ours, c } = await startOurs();
  const systems: System[] = [ours];
  if (haveRef) systems.push(await startReference(c));
  const kvs = new Map<System, { nc: NatsConnection; kv: KV }>();
  try {
    for (const s of systems) {
      await prepareBucket(s, c.caFile);
      if (s.kind === 'membershipd') s.metricsUrl = `http://127.0.0.1:${c.httpPorts[s.kvNode]}/metrics`;
      // Idle: what the processes cost with no client traffic (timers, Raft heartbeats, health checks).
      const idle0 = s.children.map((ch) => cpuSeconds(ch.pid!));
      await sleep(2000);
      const idlePct = s.children.map((ch, i) => ((cpuSeconds(ch.pid!) - idle0[i]!) / 2) * 100);
      s.rssIdle = s.children.map((ch) => rssMb(ch.pid!));
      console.log(`  ${s.kind.padEnd(11)} up; KV clients on n${s.kvNode} (leads KV_${BUCKET}); RSS idle ${s.rssIdle.map((m) => m.toFixed(1)).join(' / ')} MiB; ` +
        `idle CPU ${idlePct.map((p) => p.toFixed(1)).join(' / ')} % of a core`);
      const nc = await connectTo(s, s.kvNode, c.caFile, 'bench-js');
      const kv = await new Kvm(jetstream(nc, { timeout: 30_000 })).open(BUCKET);
      kvs.set(s, { nc, kv });
      await warm(s, kv, bin, c.caFile);
    }
    for (let round = 1; round <= ROUNDS; round++) {
      for (const s of systems) {
        console.log(`  round ${round} ${s.kind}`);
        if (bin !== null && phases.has('gopubsub')) await goPubsub(s, bin, c.caFile);
        if (bin !== null && phases.has('gokv')) await goKvPut(s, bin, c.caFile, round);
        if (phases.has('js')) await jsKvPut(s, kvs.get(s)!.kv, round);
        if (phases.has('jsget')) await jsKvGet(s, kvs.get(s)!.kv, round);
      }
    }
  } finally {
    for (const { nc } of kvs.values()) await nc.close().catch(() => undefined);
  }
  const varz = (await getJson(`http://127.0.0.1:${c.httpPorts[ours.kvNode]}/varz`)).body;
  const loop = varz.event_loop_delay as { max_ms?: number; p99_ms?: number; stalls_over_20ms?: number } | undefined;
  const gc = varz.gc as { count?: number; pause_total_ms?: number; pause_max_ms?: number } | undefined;
  for (const s of systems) {
    const peaks = s.children.map((ch) => peakRssMb(ch.pid!));
    s.figures.set('rssPeak', [Math.max(...peaks)]);
    s.figures.set('rssIdle', [Math.max(...s.rssIdle)]);
    console.log(`  ${s.kind.padEnd(11)} median: Go pub/sub ${formatCount(med(s, 'goPubsub'))} msgs/s at ${med(s, 'goPubsubCpu').toFixed(2)} µs/msg; ` +
      `Go KV put c64 ${formatCount(med(s, 'goKv'))}/s at ${med(s, 'goKvCpu').toFixed(1)} µs/put; nats.js c64 ${formatCount(med(s, 'jsKv'))}/s ` +
      `(${med(s, 'jsKvCpu').toFixed(1)} µs/put) p50 ${formatMs(med(s, 'jsP50'))} p99 ${formatMs(med(s, 'jsP99'))} p999 ${formatMs(med(s, 'jsP999'))} ms; ` +
      `nats.js get c64 ${formatCount(med(s, 'jsGet'))}/s (${med(s, 'jsGetCpu').toFixed(1)} µs/get); ` +
      `sequential p50 ${formatMs(med(s, 'seqP50'))} ms; RSS idle ${Math.max(...s.rssIdle).toFixed(1)} MiB, peak ${Math.max(...peaks).toFixed(1)} MiB (max over nodes)`);
  }
  if (loop !== undefined) {
    console.log(`  membershipd n${ours.kvNode} (KV leader) over the whole run: event-loop delay p99 ${loop.p99_ms} ms, max ${loop.max_ms} ms, ` +
      `stalls over 20 ms ${loop.stalls_over_20ms}; GC ${gc?.count} pauses, ${gc?.pause_total_ms} ms in all, longest ${gc?.pause_max_ms} ms`);
  }
  for (const s of systems) await Promise.all(s.children.map((ch) => stopChild(ch, 10_000)));
  rmSync(root, { recursive: true, force: true });
  const ref = systems[1];
  const ratio = (key: string): string => (ref === undefined ? 'NaN' : (med(ours, key) / med(ref, key)).toFixed(2));
  console.log(`  ratios (membershipd / nats-server): nats.js c64 ${ratio('jsKv')}, p999 ${ratio('jsP999')}, sequential p50 ${ratio('seqP50')}, get c64 ${ratio('jsGet')} (CPU per get ${ratio('jsGetCpu')}), ` +
    `RSS idle ${ratio('rssIdle')}, RSS peak ${ratio('rssPeak')}`);
  console.log(`total ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`BENCH efficiency go_pubsub_ratio=${ratio('goPubsub')} pubsub_cpu_per_msg_ratio=${ratio('goPubsubCpu')} ` +
    `kvput_r3_c64_ratio=${ratio('goKv')} kvput_cpu_per_op_ratio=${ratio('goKvCpu')} kvput_c64_p999_ms=${formatMs(med(ours, 'jsP999'))} ` +
    `rss_idle_mib=${med(ours, 'rssIdle').toFixed(1)} rss_peak_mib=${med(ours, 'rssPeak').toFixed(1)}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:efficiency failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    killChildren();
    rmSync(root, { recursive: true, force: true });
    process.exit(1);
  },
);
