// The parts of a node's live memory that bench/memory.ts sees only summed, measured one at a time in this process
// (no cluster, no bench lock): the KV state per key, the frozen image a snapshot holds while it is written
// (KvStateMachine.beginSnapshot: sorted keys and a copy of the row columns), and one Raft log entry held in memory
// since the last snapshot (RaftStorage: an Entry object and its view on the heap, its data in a LogArena chunk).
// Each figure is heap used + external after two full GCs, per key or per entry. Needs --expose-gc:
//   node --expose-gc --import tsx bench/memory_parts.ts   (BENCH_KEYS, BENCH_ENTRIES, BENCH_VALUE_BYTES)
// Why: at 1M keys the followers of bench:memory held ~94 MiB more than the leader for ~75k more log entries; these
// parts say how much of that was entries and how much a snapshot being written when the bench sampled.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeKvCommand, KvStateMachine, RaftStorage } from '../store/index.js';

const envInt = (name: string, dflt: number, min: number, max: number): number => Math.max(min, Math.min(max, Number(process.env[name] ?? dflt)));
const KEYS = envInt('BENCH_KEYS', 200_000, 1000, 5_000_000);
const ENTRIES = envInt('BENCH_ENTRIES', 100_000, 1000, 2_000_000);
const VALUE_BYTES = envInt('BENCH_VALUE_BYTES', 256, 1, 65_536);
/** Bytes of one log entry's data in bench:memory: a put of VALUE_BYTES in its command and session envelope. */
const ENTRY_BYTES = VALUE_BYTES + 74;
const BATCH = 64;
const MiB = 1048576;

const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error('bench/memory_parts.ts needs a full GC between measurements: run it with node --expose-gc --import tsx');
const collect = gc;

function live(): { heap: number; external: number } {
  collect();
  collect();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, external: m.external };
}

async function logEntryBytes(): Promise<{ heap: number; external: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'membershipd-bench-memory-parts-'));
  try {
    const s = await RaftStorage.open(dir);
    const before = live();
    let index = 1;
    for (let b = 0; b < ENTRIES / BATCH; b++) {
      // Own buffers, as a follower's decoded MsgApp entries have (the store copies them into its arena).
      const entries = Array.from({ length: BATCH }, () => ({ term: 1, index: index++, type: 0 as const, data: new Uint8Array(ENTRY_BYTES).fill(b & 0xff) }));
      await s.save({ entries, hardState: { term: 1, vote: 1, commit: index - 1 } });
    }
    const after = live();
    if (s.lastIndex() !== index - 1) throw new Error(`log holds ${s.lastIndex()} entries, expected ${index - 1}`);
    await s.close();
    return { heap: (after.heap - before.heap) / ENTRIES, external: (after.external - before.external) / ENTRIES };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function kvBytes(): { state: { heap: number; external: number }; frozen: { heap: number; external: number } } {
  const sm = new KvStateMachine();
  let index = 0;
  sm.apply(++index, encodeKvCommand({ op: 'bucket.create', bucket: 'memory', config: { bytesMax: 2 ** 40 }, ts: 1 }));
  const before = live();
  const value = new Uint8Array(VALUE_BYTES).fill(7);
  for (let i = 0; i < KEYS; i++) sm.apply(++index, encodeKvCommand({ op: 'put', bucket: 'memory', key: `key.${i}`, value, ts: 1000 + i }));
  const filled = live();
  const image = sm.beginSnapshot();
  const frozen = live();
  if (sm.bucketInfo('memory')?.values !== KEYS || image.bytesEstimate <= 0) throw new Error('the KV state does not hold every key');
  return {
    state: { heap: (filled.heap - before.heap) / KEYS, external: (filled.external - before.external) / KEYS },
    frozen: { heap: (frozen.heap - filled.heap) / KEYS, external: (frozen.external - filled.external) / KEYS },
  };
}

const fmt = (x: { heap: number; external: number }): string => `${(x.heap + x.external).toFixed(0)} B (heap ${x.heap.toFixed(0)}, external ${x.external.toFixed(0)})`;
const kv = kvBytes();
const entry = await logEntryBytes();
console.log(`bench:memory_parts — ${KEYS} keys of ${VALUE_BYTES} B, ${ENTRIES} log entries of ${ENTRY_BYTES} B (one process, no cluster)`);
console.log(`  KV state per key                  ${fmt(kv.state)}`);
console.log(`  frozen snapshot image per key     ${fmt(kv.frozen)}   (held from beginSnapshot until the file is written)`);
console.log(`  log entry since the last snapshot ${fmt(entry)}   (reference: ${ENTRY_BYTES} B of data)`);
const at1M = (perKey: number): string => ((perKey * 1_000_000) / MiB).toFixed(1);
console.log(`  at 1M keys: KV ${at1M(kv.state.heap + kv.state.external)} MiB, frozen image ${at1M(kv.frozen.heap + kv.frozen.external)} MiB; 75k entries ${((75_000 * (entry.heap + entry.external)) / MiB).toFixed(1)} MiB`);
console.log(`BENCH memory_parts keys=${KEYS} kv_bytes_per_key=${(kv.state.heap + kv.state.external).toFixed(0)} frozen_bytes_per_key=${(kv.frozen.heap + kv.frozen.external).toFixed(0)} entry_bytes=${(entry.heap + entry.external).toFixed(0)} entry_data_bytes=${ENTRY_BYTES}`);
