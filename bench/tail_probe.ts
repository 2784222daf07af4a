// Where the slowest KV puts come from (issue 14 item 4): a 3-node membershipd cluster in the deploy posture, nats.js
// KV puts at 64 in flight, each put's wall-clock start and latency kept; the nodes' logs (info level) and their
// /varz event-loop and GC counters sampled every 250 ms. Prints the slowest puts grouped into bursts, and for each
// burst what the three nodes logged and how their stall and GC counters moved around it.
//
//   flock /tmp/membershipd-bench.lock npx tsx bench/tail_probe.ts        # PROBE_PUTS (default 60000)
//   PROBE_NODE_FLAGS='--cpu-prof --cpu-prof-dir=/tmp/tailprof' ...       # then: npx tsx bench/long_tasks.ts /tmp/tailprof
//
// Not a benchmark (no reference side): a diagnostic, whose findings are in PERFORMANCE.md ("Tail latency").
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { killChildren, stopChild } from './support/children.js';
import { adminConnection, adminRequest, findLeader, getJson, startBenchCluster } from './support/cluster.js';
import { formatMs, quantile, sortAscending } from './support/stats.js';

const PUTS = Number(process.env.PROBE_PUTS ?? 60_000);
if (!Number.isInteger(PUTS) || PUTS < 1000 || PUTS > 10_000_000) throw new Error(`PROBE_PUTS=${process.env.PROBE_PUTS}: want an integer in 1000..10000000`);
const IN_FLIGHT = 64;
const USER = 'bench';
const PASSWORD = 'bench-password-0123456789';
const root = mkdtempSync(join(tmpdir(), 'membershipd-tail-probe-'));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Sample { t: number; node: number; stalls: number; loopMax: number; gcCount: number; gcMax: number; gcTotal: number; leaderChanges: number }

async function main(): Promise<void> {
  const c = await startBenchCluster(root, { bundleName: 'tail_probe_cluster.mjs', logLevel: 'info', nodeFlags: (process.env.PROBE_NODE_FLAGS ?? '').split(/\s+/).filter((f) => f !== '') });
  const logs = [0, 1, 2].map((i) => join(root, `n${i}.log`));
  c.children.forEach((ch, i) => ch.stderr!.on('data', (d: Buffer) => appendFileSync(logs[i]!, d)));
  const leader = await findLeader(c);
  const admin = await adminConnection(c, leader);
  for (let r = 0; ; r++) {
    const { reply } = await adminRequest(admin, '$UB.API.USER.ADD', { name: USER, password: PASSWORD, roles: ['admin'] });
    if (reply.error === undefined) break;
    if (r >= 10) throw new Error(`user add: ${JSON.stringify(reply.error)}`);
    await sleep(200);
  }
  await admin.nc.close();
  const nc = await connect({ servers: `tls://127.0.0.1:${c.natsPorts[leader]}`, tls: { caFile: c.caFile }, user: USER, pass: PASSWORD, timeout: 20_000, maxReconnectAttempts: 0 });
  const kv = await new Kvm(jetstream(nc, { timeout: 30_000 })).create('tail', { replicas: 3, history: 1 });
  // Unmeasured, as bench:efficiency does: JIT tiering, connections, the bucket's first entries.
  const warmValue = new Uint8Array(128);
  let warmed = 0;
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (warmed < 3000) await kv.put(`warm.${warmed++}`, warmValue);
  }));
  const samples: Sample[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const t = Date.now();
      const vs = await Promise.all(c.httpPorts.map((p) => getJson(`http://127.0.0.1:${p}/varz`)));
      const rz = await Promise.all(c.httpPorts.map((p) => getJson(`http://127.0.0.1:${p}/raftz`)));
      vs.forEach((v, node) => {
        const l = v.body.event_loop_delay as { stalls_over_20ms?: number; max_ms?: number } | undefined;
        const g = v.body.gc as { count?: number; pause_max_ms?: number; pause_total_ms?: number } | undefined;
        const raft = rz[node]!.body as { leaderChanges?: number };
        samples.push({
          t, node, stalls: l?.stalls_over_20ms ?? 0, loopMax: l?.max_ms ?? 0,
          gcCount: g?.count ?? 0, gcMax: g?.pause_max_ms ?? 0, gcTotal: g?.pause_total_ms ?? 0, leaderChanges: raft.leaderChanges ?? -1,
        });
      });
      await sleep(250);
    }
  })();
  const value = new Uint8Array(128).fill(118);
  const puts: { start: number; ms: number }[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < PUTS) {
      const i = next++;
      const start = Date.now();
      const a = performance.now();
      await kv.put(`k.${i % 10_000}`, value);
      puts.push({ start, ms: performance.now() - a });
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  sampling = false;
  await sampler;
  const lat = puts.map((p) => p.ms);
  sortAscending(lat);
  console.log(`${puts.length} puts at ${IN_FLIGHT} in flight, ${(puts.length / secs).toFixed(0)} puts/s: p50 ${formatMs(quantile(lat, 0.5))} p99 ${formatMs(quantile(lat, 0.99))} ` +
    `p999 ${formatMs(quantile(lat, 0.999))} max ${formatMs(lat[lat.length - 1]!)} ms`);
  // Bursts: puts slower than the p99, grouped when they started within 200 ms of each other.
  const p99 = quantile(lat, 0.99);
  const slow = puts.filter((p) => p.ms >= Math.max(p99, 20)).sort((a, b) => a.start - b.start);
  const bursts: { from: number; to: number; n: number; worst: number }[] = [];
  for (const p of slow) {
    const b = bursts[bursts.length - 1];
    if (b && p.start - b.to < 200) {
      b.to = Math.max(b.to, p.start);
      b.n++;
      b.worst = Math.max(b.worst, p.ms);
    } else {
      bursts.push({ from: p.start, to: p.start, n: 1, worst: p.ms });
    }
  }
  bursts.sort((a, b) => b.worst - a.worst);
  const { readFileSync } = await import('node:fs');
  const lines = logs.map((f) => {
    try {
      return readFileSync(f, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { time: number; msg: string; [k: string]: unknown });
    } catch {
      return []; // a node that logged nothing at info level
    }
  });
  for (const b of bursts.slice(0, 12)) {
    console.log(`burst ${new Date(b.from).toISOString()} +${b.to - b.from} ms: ${b.n} puts over the p99, worst ${formatMs(b.worst)} ms`);
    for (let node = 0; node < 3; node++) {
      for (const l of lines[node]!) {
        if (l.time >= b.from - 1000 && l.time <= b.to + b.worst + 200) {
          const { time, msg, level, pid, hostname, ...rest } = l;
          void level; void pid; void hostname;
          console.log(`   n${node}${node === leader ? '*' : ' '} ${time - b.from} ms: ${msg} ${JSON.stringify(rest)}`);
        }
      }
      const before = samples.filter((s) => s.node === node && s.t <= b.from).pop();
      const after = samples.find((s) => s.node === node && s.t >= b.to + b.worst + 300);
      if (before && after) {
        console.log(`   n${node}${node === leader ? '*' : ' '} stalls>20ms +${after.stalls - before.stalls} (max so far ${after.loopMax} ms), GC +${after.gcCount - before.gcCount} pauses ` +
          `+${(after.gcTotal - before.gcTotal).toFixed(1)} ms (longest so far ${after.gcMax} ms), leader changes +${after.leaderChanges - before.leaderChanges}`);
      }
    }
  }
  const last = [0, 1, 2].map((node) => samples.filter((s) => s.node === node).pop());
  for (const [node, s] of last.entries()) {
    if (s) console.log(`n${node}${node === leader ? '*' : ' '} over the run: stalls>20ms ${s.stalls}, loop max ${s.loopMax} ms; GC ${s.gcCount} pauses ${s.gcTotal} ms, longest ${s.gcMax} ms; leader changes ${s.leaderChanges}`);
  }
  for (let node = 0; node < 3; node++) {
    const v = (await getJson(`http://127.0.0.1:${c.httpPorts[node]}/varz`)).body;
    console.log(`n${node}${node === leader ? '*' : ' '} GC by kind ${JSON.stringify((v.gc as { by_kind?: unknown } | undefined)?.by_kind)}`);
  }
  await nc.close();
  await Promise.all(c.children.map((ch) => stopChild(ch, 10_000)));
  if (process.env.PROBE_KEEP === undefined) rmSync(root, { recursive: true, force: true });
  else console.log(`kept ${root}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`tail_probe failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    killChildren();
    process.exit(1);
  },
);
