// Where a node's CPU goes per operation: reads the V8 CPU profiles (--cpu-prof) of bench:efficiency's membershipd
// processes and the phase log it wrote (BENCH_PHASE_LOG), keeps the samples inside each measured phase's window,
// attributes each sample's self time to a stage (the source module, from the `// path` comments esbuild leaves in
// the bundle; Node's own modules, natives, GC), and scales the stage shares by the CPU the process really used in
// that phase (/proc: the profile counts wall time of a busy thread, which on a loaded machine includes time waiting
// for a core). Prints µs of CPU per operation per stage, per process.
//
// Usage: tsx bench/profile_summary.ts <profile dir> <phase log> [bundle] [top N]
// (PERFORMANCE.md has the full command line.)
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame { functionName: string; url: string; lineNumber: number }
interface ProfileNode { id: number; callFrame: CallFrame; children?: number[] }
interface CpuProfile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }
interface PhaseRecord { phase: string; startUs: number; endUs: number; ops: number; cpuSeconds: Record<string, number>; kvNodePid: number }

const [dir, logFile, bundleArg, topArg] = process.argv.slice(2);
if (dir === undefined || logFile === undefined) {
  process.stderr.write('usage: tsx bench/profile_summary.ts <profile dir> <phase log> [bundle] [top N]\n');
  process.exit(2);
}
const bundle = bundleArg ?? fileURLToPath(new URL('../node_modules/.cache/membershipd-bench/efficiency_cluster.mjs', import.meta.url));
const top = Math.max(1, Math.min(200, Number(topArg ?? 12)));

/** Line ranges of the bundle's modules: esbuild writes `// src/nats/parser.ts` before each module's code. */
const moduleStarts: { line: number; path: string }[] = [];
readFileSync(bundle, 'utf8').split('\n').forEach((text, i) => {
  const m = /^\/\/ ((?:src|raft|store|transport|bin)\/[\w/.-]+\.ts)$/.exec(text);
  if (m) moduleStarts.push({ line: i, path: m[1]! });
});

function moduleOf(line: number): string {
  let lo = 0;
  let hi = moduleStarts.length - 1;
  let found = 'bundle (before the first module)';
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (moduleStarts[mid]!.line <= line) { found = moduleStarts[mid]!.path; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

/** The stage a sample's self time belongs to. */
function stageOf(f: CallFrame): string | null {
  if (f.functionName === '(idle)') return null;
  if (f.functionName === '(garbage collector)') return 'GC';
  if (f.functionName === '(program)') return 'V8/native (program)';
  if (f.url === '') return `native ${f.functionName || '(anonymous)'}`;
  if (f.url.endsWith(bundle.split('/').pop()!)) return moduleOf(f.lineNumber);
  if (f.url.includes('/node_modules/')) return `dep ${/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(f.url)?.[1] ?? f.url}`;
  if (f.url.startsWith('node:')) {
    const u = f.url;
    if (/tls|crypto/.test(u)) return 'node tls/crypto';
    if (/net|stream|buffer/.test(u)) return 'node net/streams';
    if (/timers|task_queues|async_hooks|promise/.test(u)) return 'node timers/microtasks';
    return 'node other';
  }
  return f.url;
}

/** The stage of a KV put or a published message a module's (or native's) self time belongs to. */
function groupOf(stage: string): string {
  if (stage.startsWith('src/nats/parser')) return 'NATS protocol parse';
  if (stage.startsWith('src/nats/sublist') || stage.startsWith('src/nats/subject')) return 'subject match (trie, syntax)';
  if (stage.startsWith('src/nats/')) return 'NATS client/server (routing, MSG building, buffers)';
  if (/^src\/(control|services|bus)\//.test(stage)) return 'forwarder chain (admin API, services, bus routes)';
  if (stage.startsWith('src/kv/')) return 'JetStream KV API (subjects, headers, replies)';
  if (stage.startsWith('src/node/')) return 'node driver (Ready loop, envelopes, sessions)';
  if (stage.startsWith('raft/')) return 'Raft';
  if (stage.startsWith('store/kv/')) return 'KV state machine (apply, command decode)';
  if (stage.startsWith('store/')) return 'WAL and storage (records, CRC, entry encoding)';
  if (stage.startsWith('transport/')) return 'route frames and links';
  if (stage === 'dep msgpackr') return 'msgpack (msgpackr)';
  if (stage === 'native writeBuffer' || stage === 'native writev' || stage === 'node net/streams' || stage === 'node tls/crypto') return 'socket I/O (TLS write, streams)';
  if (stage === 'GC') return 'GC (main thread)';
  if (stage === 'node timers/microtasks' || stage === 'native runMicrotasks') return 'timers, promises, microtasks';
  return 'other (V8, natives, http, pino)';
}

function loadProfiles(): Map<string, CpuProfile[]> {
  const byPid = new Map<string, CpuProfile[]>();
  for (const name of readdirSync(dir!)) {
    const m = /^CPU\.\d+\.\d+\.(\d+)\.\d+\.\d+\.cpuprofile$/.exec(name);
    if (!m) continue;
    const p = JSON.parse(readFileSync(join(dir!, name), 'utf8')) as CpuProfile;
    (byPid.get(m[1]!) ?? byPid.set(m[1]!, []).get(m[1]!)!).push(p);
  }
  return byPid;
}

/** Sample counts by stage and by function, inside [startUs, endUs]. */
function count(profiles: CpuProfile[], startUs: number, endUs: number): { stages: Map<string, number>; fns: Map<string, number>; total: number } {
  const stages = new Map<string, number>();
  const fns = new Map<string, number>();
  let total = 0;
  for (const p of profiles) {
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    let t = p.startTime;
    for (let i = 0; i < p.samples.length; i++) {
      t += p.timeDeltas[i]!;
      if (t < startUs || t > endUs) continue;
      const node = byId.get(p.samples[i]!)!;
      const stage = stageOf(node.callFrame);
      if (stage === null) continue;
      total++;
      stages.set(stage, (stages.get(stage) ?? 0) + 1);
      const fn = `${node.callFrame.functionName || '(anonymous)'} ${stage.startsWith('native') ? '' : stage}`;
      fns.set(fn, (fns.get(fn) ?? 0) + 1);
    }
  }
  return { stages, fns, total };
}

/**
 * PROFILE_SCALE="gopubsub=1.3,gokv=218": the unprofiled CPU per op (all three processes) of a bench run, per phase;
 * every µs figure of that phase is scaled by it over the profiled run's own (the profiler costs CPU too).
 */
const scaleTo = new Map((process.env.PROFILE_SCALE ?? '').split(',').filter((x) => x.includes('=')).map((x) => {
  const [k, v] = x.split('=') as [string, string];
  return [k.trim(), Number(v)] as const;
}));

const profiles = loadProfiles();
const phases = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as PhaseRecord);
for (const ph of phases) {
  const allCpu = Object.values(ph.cpuSeconds).reduce((a, b) => a + b, 0);
  const profiledUs = (allCpu * 1e6) / ph.ops;
  const target = scaleTo.get(ph.phase);
  const factor = target === undefined || !(target > 0) ? 1 : target / profiledUs;
  console.log(`\n== ${ph.phase}: ${ph.ops} ops in ${((ph.endUs - ph.startUs) / 1e6).toFixed(2)} s; CPU of the 3 processes ${profiledUs.toFixed(2)} µs/op (/proc)` +
    (factor === 1 ? '' : `; scaled to ${target} µs/op (PROFILE_SCALE)`));
  for (const [pid, cpu] of Object.entries(ph.cpuSeconds)) {
    const ps = profiles.get(pid);
    const usPerOp = ((cpu * 1e6) / ph.ops) * factor;
    const role = Number(pid) === ph.kvNodePid ? 'client node (KV leader)' : 'other node';
    if (ps === undefined) {
      console.log(`  pid ${pid} (${role}): ${usPerOp.toFixed(2)} µs/op, no profile`);
      continue;
    }
    const { stages, fns, total } = count(ps, ph.startUs, ph.endUs);
    console.log(`  pid ${pid} (${role}): ${usPerOp.toFixed(2)} µs/op${factor === 1 ? ' from /proc' : ' (scaled)'}, ${total} busy samples in the window`);
    if (total === 0) continue;
    const share = (n: number): string => `${((n / total) * usPerOp).toFixed(2).padStart(7)} µs/op ${((100 * n) / total).toFixed(1).padStart(5)} %`;
    const groups = new Map<string, number>();
    for (const [stage, n] of stages) groups.set(groupOf(stage), (groups.get(groupOf(stage)) ?? 0) + n);
    console.log('    by stage:');
    for (const [g, n] of [...groups].sort((a, b) => b[1] - a[1])) console.log(`    ${share(n)}  ${g}`);
    console.log('    by module:');
    for (const [stage, n] of [...stages].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`    ${share(n)}  ${stage}`);
    console.log('    top functions (self):');
    for (const [fn, n] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`    ${share(n)}  ${fn}`);
  }
}
