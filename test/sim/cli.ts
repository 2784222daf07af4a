// `npm run sim -- --seeds N [--nodes 3|5] [--seed S] [--plant BUG]`; `--plant list` prints the bugs (raft/'s and
// the node's Ready driver's). Every seed runs the node's own Ready driver (src/node/ready_driver.ts).
// Runs seeds S..S+N-1, prints one line per failing seed with the command that replays it, and ends with
// `SIM seeds=<N> violations=<V> linearizable=<N-failed>/<N> max_ticks_to_recover=<T>`.
// Exit code: 0 when no seed failed, 1 otherwise, 2 on a usage error.
import { PlantedBug } from '../../raft/testing.js';
import { DriverBug, reproCommand, runSim } from './sim.js';

const allBugs: string[] = [...Object.values(PlantedBug), ...Object.values(DriverBug)];

function usage(msg: string): never {
  process.stderr.write(`sim: ${msg}\nusage: npm run sim -- --seeds N [--nodes 3|5] [--seed S] [--plant BUG|list] [--verbose]\n`);
  process.exit(2);
}

interface SimArgs { seeds: number; nodes: 3 | 5; seed: number; plant?: PlantedBug | DriverBug; list: boolean; verbose: boolean }

function parseArgs(argv: string[]): SimArgs {
  let seeds = 100;
  let nodes: 3 | 5 = 3;
  let seed = 1;
  let plant: PlantedBug | DriverBug | undefined;
  let list = false;
  let verbose = false;
  const int = (flag: string, v: string | undefined, min: number): number => {
    if (v === undefined || !/^\d+$/.test(v) || Number(v) < min) usage(`${flag} needs an integer >= ${min}, got ${v ?? 'nothing'}`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    switch (a) {
      case '--seeds':
        seeds = int(a, argv[++i], 1);
        break;
      case '--seed':
        seed = int(a, argv[++i], 0);
        break;
      case '--nodes': {
        const n = int(a, argv[++i], 3);
        if (n !== 3 && n !== 5) usage(`--nodes must be 3 or 5, got ${n}`);
        nodes = n;
        break;
      }
      case '--plant': {
        const v = argv[++i];
        if (v === 'list') list = true;
        else if (v !== undefined && allBugs.includes(v)) plant = v as PlantedBug | DriverBug;
        else usage(`--plant needs one of: list, ${allBugs.join(', ')}; got ${v ?? 'nothing'}`);
        break;
      }
      case '--verbose':
        verbose = true;
        break;
      default:
        usage(`unknown argument ${a}`);
    }
  }
  return { seeds, nodes, seed, ...(plant ? { plant } : {}), list, verbose };
}

function plantOption(bug: PlantedBug | DriverBug | undefined): { plant?: PlantedBug; driverBug?: DriverBug } {
  if (bug === undefined) return {};
  return (Object.values(DriverBug) as string[]).includes(bug) ? { driverBug: bug as DriverBug } : { plant: bug as PlantedBug };
}

const args = parseArgs(process.argv.slice(2));
if (args.list) {
  for (const b of allBugs) process.stdout.write(`${b}\n`);
  process.exit(0);
}
let violations = 0;
let failedLin = 0;
let maxRecover = 0;
let firstFailing = -1;
for (let s = args.seed; s < args.seed + args.seeds; s++) {
  const r = await runSim({ seed: s, nodes: args.nodes, ...plantOption(args.plant), ...(args.verbose ? { trace: true } : {}) });
  if (!r.linearizable) failedLin++;
  maxRecover = Math.max(maxRecover, r.ticksToRecover);
  if (r.violations.length > 0) {
    violations++;
    if (firstFailing < 0) firstFailing = s;
    process.stdout.write(`seed ${s} FAILED: ${r.violations.join('; ')}\n  reproduce: ${reproCommand(s, args.nodes, args.plant)}\n`);
    // --verbose: the run's trace, without the lines about the keys whose history is not the failing one.
    const key = /history of key (\S+) /.exec(r.violations.join('; '))?.[1];
    for (const line of r.trace ?? []) {
      const k = / key=(\S+) /.exec(line)?.[1];
      if (key === undefined || k === undefined || k === key) process.stdout.write(`  ${line}\n`);
    }
  } else if (args.verbose) {
    process.stdout.write(`seed ${s} ok ops=${r.ops} ticks=${r.ticks} recover=${r.ticksToRecover} snapshots=${r.snapshotsTaken}/${r.snapshotsInstalled} mid_ready_crashes=${r.midReadyCrashes} duplicates_skipped=${r.duplicatesSkipped} cas=${r.casApplied}/${r.casRefused} reads_served=${r.readsServed} disks_lost=${r.disksLost}\n`);
  }
  const done = s - args.seed + 1;
  if (args.seeds >= 2000 && done % 1000 === 0) process.stderr.write(`sim: ${done}/${args.seeds} seeds, ${violations} failing\n`);
}
if (args.plant) process.stdout.write(`planted ${args.plant}: ${violations > 0 ? `caught first at seed ${firstFailing} (${firstFailing - args.seed + 1} seeds run)` : 'NOT caught'}\n`);
process.stdout.write(`SIM seeds=${args.seeds} violations=${violations} linearizable=${args.seeds - failedLin}/${args.seeds} max_ticks_to_recover=${maxRecover}\n`);
process.exit(violations > 0 ? 1 : 0);
