// npm run bench:services — service presence (src/services) on a 3-process cluster in the deploy posture
// (bench/support/cluster.ts: --store kv, --bus-auth enforce, TLS, mutual-TLS routes, WAL fsync on).
//
//   register   BENCH_INSTANCES (1000) leased instances registered at 64 in flight, spread over the 3 nodes;
//   steady     BENCH_STEADY_S (15) s of keep-alives for every instance at TTL/3 (TTL 30 s), spread evenly over
//              time and nodes: CPU of each node (from /proc), and Raft entries/s on the leader (its commit index):
//              keep-alives are relayed route frames, never log entries, so this should be ~0;
//   leave      BENCH_LEAVES (50) standard @nats-io/services instances, one per connection: each connection is
//              closed and the time until a @nats-io/kv watch of ub_services sees its delete is measured.
// Last line: BENCH services instances=<n> steady_cpu_pct=<busiest node> raft_entries_per_s=<..> leave_p99_ms=<..>
// register1000_ms=<..>
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm, type KvEntry } from '@nats-io/kv';
import { Svcm } from '@nats-io/services';
import { readFileSync } from 'node:fs';
import { findLeader, getJson, startBenchCluster, type BenchCluster } from './support/cluster.js';
import { killChildren, stopChild } from './support/children.js';
import { cpuSeconds } from './support/process_usage.js';
import { loadAverage } from './support/probes.js';
import { quantile, sortAscending } from './support/stats.js';

const instances = Number(process.env.BENCH_INSTANCES ?? 1000);
const steadyS = Number(process.env.BENCH_STEADY_S ?? 15);
const leaves = Number(process.env.BENCH_LEAVES ?? 50);
const ttlS = 30;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const enc = new TextEncoder();

/** A client of node i as the node's internal identity (an admin principal: may register any service). */
async function client(c: BenchCluster, i: number, name: string): Promise<NatsConnection> {
  const seed = readFileSync(c.idFiles[i]!, 'utf8').trim();
  return connect({
    servers: `tls://127.0.0.1:${c.natsPorts[i]}`, authenticator: nkeyAuthenticator(enc.encode(seed)),
    tls: { caFile: c.caFile }, reconnect: false, timeout: 10_000, name,
  });
}

async function req(nc: NatsConnection, verb: string, body: unknown): Promise<Record<string, unknown>> {
  const m = await nc.request(`$UB.API.SERVICE.${verb}`, JSON.stringify(body), { timeout: 15_000 });
  const r = m.json<Record<string, unknown>>();
  if (r.error !== undefined) throw new Error(`${verb}: ${JSON.stringify(r.error)}`);
  return r;
}

async function commitOf(c: BenchCluster, i: number): Promise<number> {
  return Number((await getJson(`http://127.0.0.1:${c.httpPorts[i]}/raftz`)).body.commit ?? NaN);
}

async function main(): Promise<void> {
  console.log(`bench:services — ${instances} instances, ${steadyS} s steady state, ${leaves} leaves; load ${loadAverage()}`);
  const root = mkdtempSync(join(tmpdir(), 'bench-services-'));
  const c = await startBenchCluster(root, { bundleName: 'membershipd_services.mjs' });
  const conns: NatsConnection[] = [];
  try {
    for (let i = 0; i < 3; i++) conns.push(await client(c, i, `bench-services-${i}`));
    const leader = await findLeader(c);
    console.log(`  leader n${leader}`);

    // register: 64 in flight, round robin over the nodes (two of three requests go through a follower).
    const leases: { lease: string; node: number }[] = [];
    let next = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: 64 }, async () => {
      for (;;) {
        const k = next++;
        if (k >= instances) return;
        const r = await req(conns[k % 3]!, 'REGISTER', { service: 'bench', instance: `i${k}`, ttl: ttlS, endpoints: [`bench.i${k}`] });
        leases.push({ lease: r.lease as string, node: k % 3 });
      }
    }));
    const registerMs = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(`  register: ${instances} instances in ${registerMs.toFixed(0)} ms (${(instances / (registerMs / 1000)).toFixed(0)}/s)`);

    // steady: every instance keeps alive at TTL/3, spread evenly; CPU per node and the leader's commit index.
    const periodMs = (ttlS * 1000) / 3;
    const cpu0 = c.children.map((ch) => cpuSeconds(ch.pid!));
    const commit0 = await commitOf(c, leader);
    const s0 = Date.now();
    let kept = 0;
    let failed = 0;
    const end = s0 + steadyS * 1000;
    const pending: Promise<void>[] = [];
    for (let k = 0; Date.now() < end; k = (k + 1) % leases.length) {
      // Instance k's turn comes at k/N of each period.
      const due = s0 + Math.floor(periodMs * (k / leases.length)) + periodMs * Math.floor((Date.now() - s0) / periodMs);
      if (due > Date.now()) await sleep(due - Date.now());
      if (Date.now() >= end) break;
      const l = leases[k]!;
      pending.push(req(conns[l.node]!, 'KEEPALIVE', { lease: l.lease }).then(() => { kept++; }, () => { failed++; }));
      if (pending.length > 1000) await Promise.all(pending.splice(0));
    }
    await Promise.all(pending);
    const secs = (Date.now() - s0) / 1000;
    const cpuPct = c.children.map((ch, i) => ((cpuSeconds(ch.pid!) - cpu0[i]!) / secs) * 100);
    const entries = ((await commitOf(c, leader)) - commit0) / secs;
    console.log(`  steady: ${kept} keep-alives (${(kept / secs).toFixed(0)}/s, ${failed} failed) over ${secs.toFixed(1)} s`);
    console.log(`  CPU per node: ${cpuPct.map((p, i) => `n${i}${i === leader ? ' (leader)' : ''} ${p.toFixed(1)}%`).join(', ')}`);
    console.log(`  Raft entries on the leader: ${entries.toFixed(2)}/s`);

    // leave: standard services, one per connection, closed one at a time; a KV watch times the delete.
    const kv = await new Kvm(jetstream(conns[leader]!, { timeout: 15_000 })).open('ub_services');
    const seen = new Map<string, number>();
    const w = await kv.watch();
    void (async () => { for await (const e of w as AsyncIterable<KvEntry>) seen.set(`${e.operation} ${e.key}`, Date.now()); })();
    const svcs: { nc: NatsConnection; key: string }[] = [];
    for (let k = 0; k < leaves; k++) {
      const node = (leader + 1 + (k % 2)) % 3;
      const nc = await client(c, node, `bench-svc-${k}`);
      const srv = await new Svcm(nc as never).add({ name: 'leave', version: '1.0.0' });
      svcs.push({ nc, key: `leave.${srv.info().id}` });
    }
    const joinEnd = Date.now() + 30_000;
    while (svcs.some((s) => !seen.has(`PUT ${s.key}`)) && Date.now() < joinEnd) await sleep(20);
    const lat: number[] = [];
    for (const s of svcs) {
      const t = Date.now();
      await s.nc.close();
      const bound = Date.now() + 10_000;
      while (!seen.has(`DEL ${s.key}`) && Date.now() < bound) await sleep(2);
      const at = seen.get(`DEL ${s.key}`);
      if (at !== undefined) lat.push(at - t);
    }
    w.stop();
    const sorted = sortAscending(lat);
    const p50 = sorted.length > 0 ? quantile(sorted, 0.5) : NaN;
    const p99 = sorted.length > 0 ? quantile(sorted, 0.99) : NaN;
    console.log(`  leave on connection close (${lat.length} of ${leaves} seen): p50 ${p50.toFixed(0)} ms, p99 ${p99.toFixed(0)} ms`);

    const register1000 = registerMs * (1000 / instances);
    console.log(`BENCH services instances=${instances} steady_cpu_pct=${Math.max(...cpuPct).toFixed(1)} raft_entries_per_s=${entries.toFixed(2)} leave_p99_ms=${p99.toFixed(0)} register1000_ms=${register1000.toFixed(0)}`);
  } finally {
    await Promise.allSettled(conns.map((nc) => nc.close()));
    await Promise.all(c.children.map((ch) => stopChild(ch, 10_000)));
    rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  killChildren();
  process.exitCode = 1;
});
