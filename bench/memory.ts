// npm run bench:memory — where a node's memory goes (issue 20 item 4, issue 14 item 3). A 3-node cluster as separate
// processes in the deploy posture (bench/support/cluster.ts), each started with the inspector on a loopback port of
// its own choosing, so this bench can force a full GC in a node and read process.memoryUsage() there: the figures
// after a GC are what the node keeps alive; the ones before it add the garbage a quiet node has not collected yet
// (V8 collects dead ArrayBuffers only with the heap, so a quiet node can hold a dead snapshot image for minutes).
// Steps, each measured on every node before and after a GC:
//   idle         after the cluster is up;
//   connections  BENCH_CONNS client connections to the leader, then BENCH_SUBS subscriptions on each: per connection
//                and per subscription (after a GC);
//   fill         BENCH_KEYS distinct keys of BENCH_VALUE_BYTES through @nats-io/kv at 64 puts in flight: per key on
//                the leader and on a follower, and the raw data (keys + values) for the 2× target of issue 20.
// BENCH_HEAP_SNAPSHOT=1 also takes a heap snapshot of the leader and of a follower after the fill and prints the
// largest classes of objects by self size (V8 heap only; external memory is in the ArrayBuffer rows' backing stores).
// Last line: BENCH memory keys=<n> leader_rss_mib=<..> follower_rss_mib=<..> leader_live_mib=<..> follower_live_mib=<..>
//   bytes_per_key=<..> rss_per_data=<..> conn_kib=<..> sub_bytes=<..>
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import WebSocket from 'ws';
import { killChildren, stopChild } from './support/children.js';
import { adminConnection, adminRequest, findLeader, getJson, startBenchCluster, type BenchCluster } from './support/cluster.js';
import { rssMb } from './support/process_usage.js';
import { loadAverage } from './support/probes.js';

const envInt = (name: string, dflt: number, min: number, max: number): number => Math.max(min, Math.min(max, Number(process.env[name] ?? dflt)));
const KEYS = envInt('BENCH_KEYS', 200_000, 1000, 5_000_000);
const VALUE_BYTES = envInt('BENCH_VALUE_BYTES', 256, 1, 65_536);
const CONNS = envInt('BENCH_CONNS', 200, 1, 2000);
const SUBS = envInt('BENCH_SUBS', 10, 1, 1000);
const IN_FLIGHT = 64;
const root = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), 'membershipd-bench-memory-'));
const password = 'memory-password-0123456789';
const MiB = 1048576;
const mib = (bytes: number): string => (bytes / MiB).toFixed(1);

interface CdpMessage { id?: number; method?: string; params?: { chunk?: string }; result?: Record<string, unknown>; error?: { message: string } }

/** A Chrome DevTools Protocol session with one node's inspector (loopback). */
class Inspector {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  private chunks: string[] = [];

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (raw: Buffer) => {
      const m = JSON.parse(raw.toString()) as CdpMessage;
      if (m.method === 'HeapProfiler.addHeapSnapshotChunk') this.chunks.push(m.params!.chunk!);
      if (m.id === undefined) return;
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error) p?.reject(new Error(m.error.message));
      else p?.resolve(m.result ?? {});
    });
  }

  static async open(url: string): Promise<Inspector> {
    const ws = new WebSocket(url, { maxPayload: 1 << 30 });
    await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
    return new Inspector(ws);
  }

  call(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  async memory(): Promise<NodeJS.MemoryUsage> {
    const r = await this.call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true });
    return JSON.parse((r.result as { value: string }).value) as NodeJS.MemoryUsage;
  }

  /** Two full GCs (the second collects what the first's weak callbacks released). */
  async gc(): Promise<void> {
    await this.call('HeapProfiler.collectGarbage');
    await this.call('HeapProfiler.collectGarbage');
  }

  async heapSnapshot(): Promise<string> {
    this.chunks = [];
    await this.call('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
    const out = this.chunks.join('');
    this.chunks = [];
    return out;
  }

  close(): void {
    this.ws.close();
  }
}

/** The inspector's WebSocket URL a node printed on stderr (it listens on a port of its own choosing). */
async function inspectorUrl(c: BenchCluster, i: number): Promise<string> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const m = /Debugger listening on (ws:\/\/127\.0\.0\.1:\d+\/[\w-]+)/.exec(c.stderr[i]!);
    if (m) return m[1]!;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`n${i} printed no inspector URL: ${c.stderr[i]}`);
}

interface Sample { rss: number; heapUsed: number; heapTotal: number; external: number; arrayBuffers: number }

async function sample(c: BenchCluster, ins: Inspector, i: number, collect: boolean): Promise<Sample> {
  if (collect) await ins.gc();
  const m = await ins.memory();
  return { rss: rssMb(c.children[i]!.pid!) * MiB, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers };
}

function row(label: string, s: Sample): string {
  const rest = s.rss - s.heapTotal - s.external;
  return `${label.padEnd(34)} rss ${mib(s.rss).padStart(7)}  heap used ${mib(s.heapUsed).padStart(6)} of ${mib(s.heapTotal).padStart(6)}  external ${mib(s.external).padStart(6)} (array buffers ${mib(s.arrayBuffers).padStart(6)})  rest ${mib(rest).padStart(6)} MiB`;
}

/** The classes of objects with the most self size in a V8 heap snapshot, biggest first. */
function topClasses(json: string, n: number): string[] {
  const snap = JSON.parse(json) as { snapshot: { meta: { node_fields: string[]; node_types: [string[]] } }; nodes: number[]; strings: string[] };
  const f = snap.snapshot.meta.node_fields;
  const [typeAt, nameAt, sizeAt] = [f.indexOf('type'), f.indexOf('name'), f.indexOf('self_size')];
  const types = snap.snapshot.meta.node_types[0];
  const by = new Map<string, { count: number; bytes: number }>();
  for (let k = 0; k < snap.nodes.length; k += f.length) {
    const type = types[snap.nodes[k + typeAt]!]!;
    const name = type === 'object' || type === 'native' ? snap.strings[snap.nodes[k + nameAt]!]! : `(${type})`;
    const e = by.get(name) ?? { count: 0, bytes: 0 };
    e.count++;
    e.bytes += snap.nodes[k + sizeAt]!;
    by.set(name, e);
  }
  return [...by].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, n)
    .map(([name, e]) => `${name.slice(0, 40).padEnd(40)} ${String(e.count).padStart(9)} objects ${mib(e.bytes).padStart(7)} MiB`);
}

async function fill(kv: KV): Promise<number> {
  const value = new Uint8Array(VALUE_BYTES).fill(0x61);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < KEYS) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          await kv.put(`key.${i}`, value);
          break;
        } catch (e) {
          if (attempt >= 5) throw new Error(`put key.${i}: ${String(e)}`);
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    }
  }));
  return KEYS / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  console.log(`bench:memory — 3 membershipd processes (deploy posture, inspector on loopback), ${KEYS} keys of ${VALUE_BYTES} B; load average ${loadAverage(1)} (shared machine: other processes may share the CPUs)`);
  const c = await startBenchCluster(root, { bundleName: 'membershipd_memory.mjs', nodeFlags: ['--inspect=127.0.0.1:0'] });
  const ins = await Promise.all([0, 1, 2].map(async (i) => Inspector.open(await inspectorUrl(c, i))));
  const leader = await findLeader(c);
  if (leader < 0) throw new Error('no leader');
  const follower = (leader + 1) % 3;
  const admin = await adminConnection(c, leader);
  const { reply } = await adminRequest(admin, '$UB.API.USER.ADD', { name: 'memory', password, roles: ['admin'] });
  if (reply.error !== undefined) throw new Error(`user add: ${JSON.stringify(reply.error)}`);
  await admin.nc.close();
  const url = `tls://127.0.0.1:${c.natsPorts[leader]}`;
  const user = { user: 'memory', pass: password };

  const idle = await Promise.all([0, 1, 2].map((i) => sample(c, ins[i]!, i, true)));
  for (let i = 0; i < 3; i++) console.log(row(`n${i}${i === leader ? ' (leader)' : ''} idle, after GC`, idle[i]!));

  // Connections and subscriptions on the leader.
  const conns: NatsConnection[] = [];
  for (let k = 0; k < CONNS; k++) conns.push(await connect({ servers: url, tls: { caFile: c.caFile }, ...user, timeout: 20_000 }));
  await Promise.all(conns.map((nc) => nc.flush()));
  const withConns = await sample(c, ins[leader]!, leader, true);
  for (const nc of conns) for (let s = 0; s < SUBS; s++) nc.subscribe(`memory.${s}.>`);
  await Promise.all(conns.map((nc) => nc.flush()));
  const withSubs = await sample(c, ins[leader]!, leader, true);
  const live = (s: Sample): number => s.heapUsed + s.external;
  const connBytes = (live(withConns) - live(idle[leader]!)) / CONNS;
  const subBytes = (live(withSubs) - live(withConns)) / (CONNS * SUBS);
  console.log(row(`leader + ${CONNS} connections`, withConns));
  console.log(row(`leader + ${CONNS * SUBS} subscriptions`, withSubs));
  console.log(`  per connection ${(connBytes / 1024).toFixed(1)} KiB live (heap + external), RSS ${((withConns.rss - idle[leader]!.rss) / CONNS / 1024).toFixed(1)} KiB; per subscription ${subBytes.toFixed(0)} B live`);
  await Promise.all(conns.map((nc) => nc.close()));

  const nc = await connect({ servers: url, tls: { caFile: c.caFile }, ...user, timeout: 20_000 });
  const kv = await new Kvm(jetstream(nc, { timeout: 20_000 })).create('memory', { replicas: 3, history: 1, max_bytes: 2 ** 40 });
  const putsPerS = await fill(kv);
  await new Promise((r) => setTimeout(r, 2000)); // the followers apply the tail
  let keyBytes = 0;
  for (let i = 0; i < KEYS; i++) keyBytes += `key.${i}`.length;
  const raw = keyBytes + KEYS * VALUE_BYTES;
  console.log(`fill: ${KEYS} keys at ${putsPerS.toFixed(0)} puts/s; raw data (keys + values) ${mib(raw)} MiB`);
  const quiet = await Promise.all([0, 1, 2].map((i) => sample(c, ins[i]!, i, false)));
  const filled = await Promise.all([0, 1, 2].map((i) => sample(c, ins[i]!, i, true)));
  for (let i = 0; i < 3; i++) {
    const z = (await getJson(`http://127.0.0.1:${c.httpPorts[i]}/raftz`)).body;
    const tag = `n${i}${i === leader ? ' (leader)' : ''}`;
    console.log(row(`${tag} filled, quiet`, quiet[i]!));
    console.log(row(`${tag} filled, after GC`, filled[i]!));
    console.log(`  ${tag}: ${Number(z.lastIndex) - Number(z.snapshotIndex)} log entries since its snapshot at ${String(z.snapshotIndex)}; live per key ${((live(filled[i]!) - live(idle[i]!)) / KEYS).toFixed(0)} B (heap ${((filled[i]!.heapUsed - idle[i]!.heapUsed) / KEYS).toFixed(0)}, external ${((filled[i]!.external - idle[i]!.external) / KEYS).toFixed(0)})`);
  }
  if (process.env.BENCH_HEAP_SNAPSHOT === '1') {
    for (const i of [leader, follower]) {
      console.log(`heap snapshot of n${i}${i === leader ? ' (leader)' : ''}, largest classes by self size:`);
      const json = await ins[i]!.heapSnapshot();
      for (const line of topClasses(json, 15)) console.log(`  ${line}`);
      // Kept for a retainer analysis (Chrome DevTools, Memory tab → Load) when a directory is given.
      if (process.env.BENCH_HEAP_SNAPSHOT_DIR) writeFileSync(join(process.env.BENCH_HEAP_SNAPSHOT_DIR, `n${i}.heapsnapshot`), json);
    }
  }
  await nc.close();
  for (const x of ins) x.close();
  await Promise.all(c.children.map((ch) => stopChild(ch, 10_000)));
  rmSync(root, { recursive: true, force: true });
  const [l, f] = [filled[leader]!, filled[follower]!];
  const perKey = (live(l) - live(idle[leader]!)) / KEYS;
  const rssMax = Math.max(...quiet.map((s) => s.rss));
  console.log(`BENCH memory keys=${KEYS} leader_rss_mib=${mib(quiet[leader]!.rss)} follower_rss_mib=${mib(quiet[follower]!.rss)} leader_live_mib=${mib(live(l))} follower_live_mib=${mib(live(f))} bytes_per_key=${perKey.toFixed(0)} rss_per_data=${(rssMax / raw).toFixed(2)} conn_kib=${(connBytes / 1024).toFixed(1)} sub_bytes=${subBytes.toFixed(0)}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:memory failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    killChildren();
    rmSync(root, { recursive: true, force: true });
    process.exit(1);
  },
);
