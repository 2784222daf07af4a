// The simulator in CI: fixed seed ranges on 3 and 5 nodes must show no violation and linearizable
// histories, a seed must replay identically, and every planted bug must be caught within a bounded
// number of seeds ("teeth"). A failure prints the one command that replays it.
import t from 'tap';
import { PlantedBug } from '../../raft/index.js';
import { DriverBug, recoverTicksMax, reproCommand, runSim } from './sim.js';
import type { SimResult } from './sim.js';

const seeds3 = Number(process.env.SIM_SEEDS_3 ?? 500);
const seeds5 = Number(process.env.SIM_SEEDS_5 ?? 100);
/** A planted bug must be caught within this many seeds (3-node clusters, seeds 1, 2, ...). */
const plantSeedsMax = 400;

function sweep(nodes: 3 | 5, count: number): { failed: SimResult[]; maxRecover: number; unrecovered: number; ops: number; lost: number; rejoined: number; production: number } {
  const failed: SimResult[] = [];
  let maxRecover = 0;
  let unrecovered = 0;
  let ops = 0;
  let lost = 0;
  let rejoined = 0;
  let production = 0;
  for (let s = 1; s <= count; s++) {
    const r = runSim({ seed: s, nodes });
    if (r.driver === 'production') production++;
    if (r.violations.length > 0 || !r.linearizable) failed.push(r);
    maxRecover = Math.max(maxRecover, r.ticksToRecover);
    if (r.ticksToRecover < 0) unrecovered++; // -1: no leader with every member caught up in time
    ops += r.ops;
    lost += r.disksLost;
    rejoined += r.disksRecovered;
  }
  return { failed, maxRecover, unrecovered, ops, lost, rejoined, production };
}

for (const [nodes, count] of [
  [3, seeds3],
  [5, seeds5],
] as const) {
  t.test(`${count} seeds on ${nodes} nodes: no invariant violated, every history linearizable, recovery bounded`, (t) => {
    const { failed, maxRecover, unrecovered, ops, lost, rejoined, production } = sweep(nodes, count);
    // Both ways of driving a Ready ran: the production driver's (node.ts: early sends, deferred commit-only hard states) and the textbook one.
    t.ok(production > 0 && production < count, `${production} of ${count} seeds ran the production driver, the rest the textbook one`);
    for (const r of failed) t.fail(`seed ${r.seed}: ${r.violations.join('; ')}; reproduce: ${reproCommand(r.seed, nodes)}`);
    t.equal(failed.length, 0, 'no failing seed');
    // Was `maxRecover >= 0`, which held even when a seed never recovered (-1): count those instead.
    t.equal(unrecovered, 0, `every seed recovered after its faults healed (max ${maxRecover} ticks)`);
    t.ok(maxRecover <= recoverTicksMax, `recovery within ${recoverTicksMax} ticks (max ${maxRecover})`);
    // A fault that never fires tests nothing: nodes lost their disks and came back as voters.
    t.ok(lost > 0 && rejoined > 0, `disks lost ${lost}, lost-disk nodes caught up and voting again ${rejoined}`);
    t.comment(`SIM seeds=${count} nodes=${nodes} violations=${failed.length} linearizable=${count - failed.filter((r) => !r.linearizable).length}/${count} max_ticks_to_recover=${maxRecover} client_ops=${ops} disks_lost=${lost} disks_rejoined=${rejoined}`);
    t.end();
  });
}

t.test('one seed replays the same run', (t) => {
  const a = runSim({ seed: 4242, nodes: 5 });
  const b = runSim({ seed: 4242, nodes: 5 });
  t.same(b, a);
  t.ok(a.ops > 0, `clients ran operations (${a.ops})`);
  t.end();
});

t.test('every planted bug is caught (raft/ and the production driver)', (t) => {
  const bugs = [...Object.values(PlantedBug).map((b) => ({ bug: b, opts: { plant: b } })), ...Object.values(DriverBug).map((b) => ({ bug: b, opts: { driverBug: b } }))];
  for (const { bug, opts } of bugs) {
    let caughtAt = 0;
    let why = '';
    for (let s = 1; s <= plantSeedsMax && caughtAt === 0; s++) {
      const r = runSim({ seed: s, nodes: 3, ...opts });
      if (r.violations.length > 0) {
        caughtAt = s;
        why = r.violations[0]!;
      }
    }
    t.ok(caughtAt > 0, `${bug}: caught at seed ${caughtAt || 'never'} of at most ${plantSeedsMax}${caughtAt ? ` (${why}; replay: ${reproCommand(caughtAt, 3, bug)})` : ''}`);
  }
  t.end();
});
