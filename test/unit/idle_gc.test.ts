// The idle collector (src/node/idle_gc.ts), one rule per test: a clock, a memory figure and an activity counter the
// test sets, and a collect() that counts calls, so each rule is checked without waiting or a real GC. One test runs
// V8's own gc() once, to show the function it obtains is callable in this process.
import t from 'tap';
import { silentLogger } from '../../src/log.js';
import { fullGc, IdleCollector } from '../../src/node/idle_gc.js';

const MiB = 1024 * 1024;

function rig(minGarbageBytes = 32 * MiB) {
  const s = { now: 0, activity: 0, heapUsed: 100 * MiB, external: 50 * MiB, collections: 0 };
  const c = new IdleCollector({
    quietMs: 1000, minGarbageBytes, logger: silentLogger(),
    activity: () => s.activity, now: () => s.now,
    memory: () => ({ heapUsed: s.heapUsed, external: s.external }),
    // A collection frees what grew beyond 120 + 60 MiB (the live set the test pretends to hold).
    collect: () => { s.collections++; s.heapUsed = Math.min(s.heapUsed, 120 * MiB); s.external = Math.min(s.external, 60 * MiB); },
  });
  return { s, c };
}

t.test('a quiet node with enough garbage is collected once, and not again until it churns again', async (t) => {
  const { s, c } = rig();
  s.heapUsed += 40 * MiB;
  s.external += 30 * MiB;
  s.now = 1000;
  t.equal(c.check(), true, 'quiet for quietMs with 70 MiB grown: collects');
  t.equal(s.collections, 1);
  t.equal(c.stats.collections, 1, 'counted for /metrics');
  t.equal(c.stats.freedBytesTotal, 40 * MiB, 'freed: heap used + external 140 + 80 before, 120 + 60 after');
  s.now = 5000;
  t.equal(c.check(), false, 'still quiet, nothing grown since: no second pause');
  t.match(c.metricsText(), /^membershipd_idle_gc_total 1$/m);
});

t.test('activity restarts the quiet window: no collection inside a burst', async (t) => {
  const { s, c } = rig();
  s.heapUsed += 100 * MiB;
  for (let i = 1; i <= 20; i++) {
    s.now = i * 250;
    s.activity++;
    t.equal(c.check(), false, `write at ${s.now} ms: not quiet`);
  }
  s.now += 999;
  t.equal(c.check(), false, 'quiet 999 ms of 1000: waits');
  s.now += 1;
  t.equal(c.check(), true, 'quiet 1000 ms: collects');
});

t.test('a quiet node that grew less than minGarbageBytes is never paused', async (t) => {
  const { s, c } = rig();
  s.heapUsed += 31 * MiB;
  s.now = 60_000;
  t.equal(c.check(), false);
  t.equal(s.collections, 0);
});

t.test('quietMs 0 is refused: off means no collector', async (t) => {
  t.throws(() => new IdleCollector({ quietMs: 0, logger: silentLogger(), activity: () => 0, collect: () => {} }), RangeError);
});

t.test('fullGc returns V8\'s gc, callable without --expose-gc on the command line, and leaves globalThis without gc', async (t) => {
  const gc = fullGc();
  t.type(gc, 'function');
  gc();
  t.equal(fullGc(), gc, 'obtained once');
  t.equal((globalThis as { gc?: unknown }).gc, undefined, 'the process globals gain no gc');
});
