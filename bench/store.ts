// Store benchmark: the raw fsync floor of the data directory's disk, then durable WAL appends of
// 256-byte records with 1, 16 and 256 concurrent writers, in the same run so the figures compare.
// c1_overhead_ratio = append_c1_p50 / fsync_p50 says what a lone durable append costs above one
// write+fdatasync; append_c256_per_s above 1/fsync_p50 shows group commit sharing syncs.
// Then three WALs appending side by side, one writer each (a leader and two followers sharing one disk),
// in each segment configuration: growing the file + fdatasync (the old default), zeroed space +
// fdatasync, zeroed space + O_DSYNC (the default); trio_*_p50_ms in the BENCH line.
// Usage: npx tsx bench/store.ts [--dir <parent>] [--seconds <per phase>]
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Wal, type WalOptions } from '../store/wal/wal.js';
import { fsyncFloor } from './support/probes.js';
import { formatMs as f, quantile, sortAscending } from './support/stats.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const parent = opt('--dir', join(process.cwd(), 'data'));
const seconds = Number(opt('--seconds', '3'));
mkdirSync(parent, { recursive: true });
const dir = mkdtempSync(join(parent, 'bench-store-'));

async function appends(writers: number, opts: WalOptions = {}, name = `wal-c${writers}`): Promise<{ lat: number[]; perSec: number }> {
  const wal = await Wal.open(join(dir, name), opts, () => undefined);
  const body = Buffer.alloc(256 - 9, 0x61); // 256 bytes on disk per record with its header
  const lat: number[] = [];
  let count = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const writer = async (): Promise<void> => {
    while (performance.now() < end && count < 2_000_000) {
      const s = performance.now();
      await wal.append([{ type: 2, body }]);
      lat.push(performance.now() - s);
      count++;
    }
  };
  await Promise.all(Array.from({ length: writers }, writer));
  const elapsed = (performance.now() - t0) / 1000;
  await wal.close();
  return { lat: sortAscending(lat), perSec: count / elapsed };
}

try {
  const floor = await fsyncFloor(dir, { roundsMax: 20_000, seconds });
  const fsyncP50 = quantile(floor, 0.5);
  console.log(`fsync floor (write+fdatasync 4 KiB) in ${dir}: n=${floor.length} p50=${f(fsyncP50)}ms p99=${f(quantile(floor, 0.99))}ms`);
  const results: Record<number, { lat: number[]; perSec: number }> = {};
  for (const c of [1, 16, 256]) {
    const r = await appends(c);
    results[c] = r;
    console.log(`append 256 B, ${c} writers: n=${r.lat.length} p50=${f(quantile(r.lat, 0.5))}ms p99=${f(quantile(r.lat, 0.99))}ms ${r.perSec.toFixed(0)}/s`);
  }
  const configs: [string, WalOptions][] = [
    ['grow', { preallocateBytes: 0, syncMode: 'fdatasync' }],
    ['zeroed', { syncMode: 'fdatasync' }],
    ['zeroed_dsync', {}],
  ];
  const trio: Record<string, number> = {};
  for (const [name, opts] of configs) {
    const rs = await Promise.all([0, 1, 2].map((k) => appends(1, opts, `trio-${name}-${k}`)));
    const all = sortAscending(rs.flatMap((r) => r.lat));
    trio[name] = quantile(all, 0.5);
    console.log(`three WALs side by side, ${name.padEnd(12)}: p50=${f(trio[name]!)}ms p90=${f(quantile(all, 0.9))}ms p99=${f(quantile(all, 0.99))}ms`);
  }
  const c1 = quantile(results[1]!.lat, 0.5);
  console.log(`1/fsync_p50 = ${(1000 / fsyncP50).toFixed(0)}/s; the machine is shared with other engineers' work, so figures are under load`);
  console.log(
    `BENCH store fsync_p50_ms=${f(fsyncP50)} append_c1_p50_ms=${f(c1)} append_c256_per_s=${results[256]!.perSec.toFixed(0)} ` +
      `c1_overhead_ratio=${(c1 / fsyncP50).toFixed(2)} fsync_p99_ms=${f(quantile(floor, 0.99))} append_c16_per_s=${results[16]!.perSec.toFixed(0)} ` +
      Object.entries(trio).map(([k, v]) => `trio_${k}_p50_ms=${f(v)}`).join(' '),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
