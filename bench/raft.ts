// Throughput of the pure Raft core: a 3-node cluster in one process, no I/O (MemoryStorage, messages
// handed over in memory), proposals of 256-byte entries in batches. One round = every node ticks,
// the messages of the previous round are delivered, every Ready is persisted, sent and applied.
// Prints figures and ends with `BENCH raft entries_per_s=<..> p99_commit_ticks=<..>`.
// Note: the machine is shared with other engineers' builds and tests; figures are under that load.
import { MemoryStorage, RawNode, StateType, seededRng } from '../raft/index.js';
import type { Message } from '../raft/index.js';
import { cpuMicrosSince } from './support/process_usage.js';
import { quantile, sortAscending } from './support/stats.js';

const entryBytes = 256;
const batch = Number(process.env.BENCH_BATCH ?? 512);
const durationMs = Number(process.env.BENCH_MS ?? 3000);
const ids = [1, 2, 3];

interface BenchNode {
  readonly raw: RawNode;
  readonly storage: MemoryStorage;
  applied: number;
}

const nodes = new Map<number, BenchNode>();
for (const id of ids) {
  const storage = new MemoryStorage();
  const raw = new RawNode({
    id,
    storage,
    rng: seededRng(id),
    peers: ids,
    electionTicks: 10,
    heartbeatTicks: 1,
    limits: { msgEntriesMax: 4096, msgBytesMax: 4 << 20, inflightMsgsMax: 64, uncommittedBytesMax: 256 << 20 },
  });
  nodes.set(id, { raw, storage, applied: 0 });
}

let inFlight: Message[] = [];
let round = 0;
const proposedAt = new Map<number, number>(); // leader index -> round proposed (sampled)
const latencies: number[] = [];

function processReadies(): void {
  for (const n of nodes.values()) {
    if (!n.raw.hasReady()) continue;
    const rd = n.raw.ready();
    if (rd.snapshot) n.storage.applySnapshot(rd.snapshot);
    n.storage.append(rd.entries);
    if (rd.hardState) n.storage.setHardState(rd.hardState);
    for (const m of rd.messages) inFlight.push(m);
    const ce = rd.committedEntries;
    if (ce.length > 0) {
      n.applied = ce[ce.length - 1]!.index;
      if (n.raw.basicStatus().state === StateType.leader) {
        for (const e of ce) {
          const at = proposedAt.get(e.index);
          if (at !== undefined) {
            latencies.push(round - at);
            proposedAt.delete(e.index);
          }
        }
      }
    }
    n.raw.advance();
  }
}

function step(): void {
  round++;
  for (const n of nodes.values()) n.raw.tick();
  const msgs = inFlight;
  inFlight = [];
  for (const m of msgs) nodes.get(m.to)!.raw.step(m);
  processReadies();
}

// Elect a leader.
for (let i = 0; i < 200 && ![...nodes.values()].some((n) => n.raw.basicStatus().state === StateType.leader); i++) step();
const leader = [...nodes.values()].find((n) => n.raw.basicStatus().state === StateType.leader);
if (!leader) throw new Error('no leader elected');
for (let i = 0; i < 10; i++) step();

const pool = new Uint8Array(entryBytes * batch * 64);
for (let i = 0; i < pool.length; i++) pool[i] = i & 0xff;
let poolAt = 0;
function payloads(): Uint8Array[] {
  const out: Uint8Array[] = new Array(batch);
  for (let i = 0; i < batch; i++) {
    if (poolAt + entryBytes > pool.length) poolAt = 0;
    out[i] = pool.subarray(poolAt, poolAt + entryBytes);
    poolAt += entryBytes;
  }
  return out;
}

const startApplied = leader.applied;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let proposed = 0;
let rounds = 0;
while (performance.now() - t0 < durationMs) {
  leader.raw.proposeEntries(payloads());
  proposed += batch;
  // Sample the latency of the first and last entry of each batch.
  const lastIndex = leader.raw.status().lastIndex;
  proposedAt.set(lastIndex - batch + 1, round);
  proposedAt.set(lastIndex, round);
  step();
  rounds++;
  // Trim the stored logs now and then, as a snapshotting caller would, to bound memory.
  if (rounds % 64 === 0) {
    for (const n of nodes.values()) {
      const idx = n.applied - 1000;
      if (idx > n.storage.snapshot().meta.index) {
        n.storage.createSnapshot(idx, n.raw.confState(), new Uint8Array(0));
        n.storage.compact(idx);
      }
    }
  }
}
for (let i = 0; i < 20; i++) step();
const elapsed = (performance.now() - t0) / 1000;
const cpuS = cpuMicrosSince(cpu0) / 1e6;
const committed = leader.applied - startApplied;
const followersCaughtUp = [...nodes.values()].every((n) => n.applied === leader.applied);
sortAscending(latencies);
const p = (q: number): number => (latencies.length === 0 ? 0 : quantile(latencies, q));
// The machine is shared, so wall time includes waiting for a core: the headline figure is per
// CPU-second of this (single-threaded) process, i.e. what one core sustains.
const perS = Math.round(committed / cpuS);
const perWallS = Math.round(committed / elapsed);
console.log(`raft bench: 3 nodes, ${entryBytes}-byte entries, batches of ${batch}, ${rounds} rounds in ${elapsed.toFixed(2)} s (machine shared, figures under load)`);
console.log(`proposed ${proposed}, committed and applied on the leader ${committed}; followers caught up: ${followersCaughtUp}`);
console.log(`commit latency in rounds (ticks): p50=${p(0.5)} p99=${p(0.99)} max=${latencies[latencies.length - 1] ?? 0}`);
console.log(`throughput: ${perS} entries per CPU-second (${((perS * entryBytes) / 1e6).toFixed(1)} MB/s of payload); ${perWallS} entries per wall-second with ${cpuS.toFixed(2)} CPU-s in ${elapsed.toFixed(2)} s`);
console.log('reference: etcd is not driven here (its raft core is Go, in-process only); no comparable binary benchmark');
console.log(`BENCH raft entries_per_s=${perS} p99_commit_ticks=${p(0.99)}`);
