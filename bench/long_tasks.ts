// Long tasks in V8 CPU profiles (issue 14 item 4): stretches where the main thread ran JavaScript, GC or natives
// without returning to the event loop's idle state for more than LONG_MS, and gaps where the sampler itself got
// no turn (the process was descheduled: CPU starvation, not our code). For each long stretch: its length, what
// callback it ran under (the frame below the first JS function of its heaviest stack) and its top self-time
// functions.
//
//   npx tsx bench/long_tasks.ts <dir of .cpuprofile files> [LONG_MS=20]
//
// A stretch is cut at every "(idle)" or "(program)" sample with no JS on the stack: V8 reports the thread waiting in
// epoll as idle, so a run of non-idle samples is time the loop could not serve anything else.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface CallFrame { functionName: string; url: string; lineNumber: number }
interface ProfileNode { id: number; callFrame: CallFrame; parent?: number; children?: number[] }
interface Profile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }

const dir = process.argv[2];
if (dir === undefined) throw new Error('usage: long_tasks.ts <dir of .cpuprofile files> [LONG_MS]');
const longMs = Number(process.argv[3] ?? 20);

function label(f: CallFrame): string {
  const file = f.url.split('/').pop() ?? '';
  return `${f.functionName || '(anonymous)'}${file ? ` ${file}:${f.lineNumber + 1}` : ''}`;
}

for (const name of readdirSync(dir).filter((n) => n.endsWith('.cpuprofile')).sort()) {
  const p = JSON.parse(readFileSync(join(dir, name), 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  for (const n of p.nodes) for (const c of n.children ?? []) byId.get(c)!.parent = n.id;
  const isIdle = (id: number): boolean => {
    const fn = byId.get(id)!.callFrame.functionName;
    return fn === '(idle)' || fn === '(program)';
  };
  // Per-sample timestamps (µs, the profile's monotonic clock).
  const ts: number[] = [];
  let t = p.startTime;
  for (const d of p.timeDeltas) ts.push((t += d));
  const stretches: { from: number; to: number; samples: number[] }[] = [];
  let cur: { from: number; to: number; samples: number[] } | undefined;
  let gaps = 0;
  let gapMs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    if (i > 0 && ts[i]! - ts[i - 1]! > longMs * 1000) {
      gaps++;
      gapMs += (ts[i]! - ts[i - 1]!) / 1000;
    }
    if (isIdle(id)) {
      if (cur && cur.to - cur.from > longMs * 1000) stretches.push(cur);
      cur = undefined;
      continue;
    }
    if (!cur) cur = { from: ts[i - 1] ?? ts[i]!, to: ts[i]!, samples: [] };
    cur.to = ts[i]!;
    cur.samples.push(i);
  }
  if (cur && cur.to - cur.from > longMs * 1000) stretches.push(cur);
  const totalMs = (p.endTime - p.startTime) / 1000;
  console.log(`${name}: ${(totalMs / 1000).toFixed(1)} s profiled, ${stretches.length} stretches over ${longMs} ms without an idle sample; ` +
    `${gaps} sampler gaps over ${longMs} ms (${gapMs.toFixed(0)} ms: descheduled)`);
  stretches.sort((a, b) => b.to - b.from - (a.to - a.from));
  for (const s of stretches.slice(0, 15)) {
    const self = new Map<string, number>();
    const roots = new Map<string, number>();
    for (const i of s.samples) {
      const dt = (ts[i]! - ts[i - 1]!) / 1000;
      const node = byId.get(p.samples[i]!)!;
      self.set(label(node.callFrame), (self.get(label(node.callFrame)) ?? 0) + dt);
      // The outermost named JS frames: what the event loop called.
      const chain: CallFrame[] = [];
      for (let n: ProfileNode | undefined = node; n; n = n.parent === undefined ? undefined : byId.get(n.parent)) chain.push(n.callFrame);
      const named = chain.reverse().filter((f) => f.url !== '' && !f.url.startsWith('node:'));
      const root = named.slice(0, 3).map((f) => f.functionName || '(anon)').join(' > ') || chain.map((f) => f.functionName).slice(0, 3).join(' > ');
      roots.set(root, (roots.get(root) ?? 0) + dt);
    }
    const top = (m: Map<string, number>, n: number): string => [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => `${v.toFixed(1)} ${k}`).join('; ');
    console.log(`  ${((s.to - s.from) / 1000).toFixed(1)} ms at +${((s.from - p.startTime) / 1e6).toFixed(2)} s, ${s.samples.length} samples`);
    console.log(`    under: ${top(roots, 4)}`);
    console.log(`    self:  ${top(self, 6)}`);
  }
}
