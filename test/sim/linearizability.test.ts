// The linearizability checker against known linearizable and known non-linearizable histories, and a
// property: every history an atomic register can produce is accepted, and a corrupted one is refused.
import t from 'tap';
import fc from 'fast-check';
import { checkHistory, checkRegister } from './linearizability.js';
import type { Op } from './linearizability.js';

const fcSeed = Number(process.env.FC_SEED ?? 20261127);
const w = (client: number, value: string, call: number, ret: number, key = 'k'): Op => ({ client, kind: 'write', key, value, call, ret });
const r = (client: number, value: string | null, call: number, ret: number, key = 'k'): Op => ({ client, kind: 'read', key, value, call, ret });
/** A compare-and-set of `expect` to `value`; `ok` is its answer (ignored when it never answered). */
const cas = (client: number, expect: string | null, value: string, ok: boolean, call: number, ret: number): Op => ({ client, kind: 'cas', key: 'k', value, expect, ok, call, ret });

t.test('known linearizable histories', (t) => {
  const ok: Array<[string, Op[]]> = [
    ['empty', []],
    ['read of the initial value', [r(1, null, 0, 1)]],
    ['write then read', [w(1, 'a', 0, 1), r(2, 'a', 2, 3)]],
    ['read concurrent with a write sees the old value', [w(1, 'a', 0, 10), r(2, null, 1, 2)]],
    ['read concurrent with a write sees the new value', [w(1, 'a', 0, 10), r(2, 'a', 1, 2)]],
    ['concurrent writes in either order', [w(1, 'a', 0, 5), w(2, 'b', 1, 6), r(3, 'a', 7, 8)]],
    ['a write with unknown outcome that took effect', [w(1, 'a', 0, Infinity), r(2, 'a', 5, 6)]],
    ['a write with unknown outcome that never took effect', [w(1, 'a', 0, Infinity), r(2, null, 5, 6)]],
    ['a read that never returned constrains nothing', [w(1, 'a', 0, 1), r(2, 'zzz', 2, Infinity)]],
    ['operations touching at one instant are concurrent', [w(1, 'a', 0, 5), r(2, null, 5, 6)]],
    ['a CAS that matched took effect', [w(1, 'a', 0, 1), cas(2, 'a', 'b', true, 2, 3), r(3, 'b', 4, 5)]],
    ['a CAS that did not match left the value', [w(1, 'a', 0, 1), cas(2, 'x', 'b', false, 2, 3), r(3, 'a', 4, 5)]],
    ['a CAS concurrent with the write it expects may come after it', [w(1, 'a', 0, 10), cas(2, 'a', 'b', true, 1, 2), r(3, 'b', 11, 12)]],
    ['a CAS with unknown outcome whose comparison held took effect', [w(1, 'a', 0, 1), cas(2, 'a', 'b', false, 2, Infinity), r(3, 'b', 4, 5)]],
  ];
  for (const [name, h] of ok) t.ok(checkRegister(h).ok, name);
  t.end();
});

t.test('known non-linearizable histories', (t) => {
  const bad: Array<[string, Op[]]> = [
    ['read of a value never written', [r(1, 'a', 0, 1)]],
    ['read sees a write that had not started', [r(1, 'a', 0, 1), w(2, 'a', 2, 3)]],
    ['stale read after a newer write completed', [w(1, 'a', 0, 1), w(1, 'b', 2, 3), r(2, 'a', 4, 5)]],
    ['reads see two concurrent writes in both orders', [w(1, 'a', 0, 10), w(2, 'b', 0, 10), r(3, 'a', 11, 12), r(3, 'b', 13, 14), r(4, 'a', 15, 16)]],
    ['a lost acknowledged write', [w(1, 'a', 0, 1), r(2, null, 2, 3)]],
    ['a value reappears after being overwritten', [w(1, 'a', 0, 1), r(2, 'a', 2, 3), w(1, 'b', 4, 5), r(2, 'b', 6, 7), r(3, 'a', 8, 9)]],
    ['a CAS answered success although the value differed', [w(1, 'a', 0, 1), cas(2, 'x', 'b', true, 2, 3)]],
    ['a CAS answered failure although the value matched', [w(1, 'a', 0, 1), cas(2, 'a', 'b', false, 2, 3)]],
    ['a successful CAS whose write is then lost', [w(1, 'a', 0, 1), cas(2, 'a', 'b', true, 2, 3), r(3, 'a', 4, 5)]],
  ];
  for (const [name, h] of bad) {
    const res = checkRegister(h);
    t.notOk(res.ok, name);
    t.notOk(res.exhausted, `${name}: decided, not cut off`);
  }
  t.end();
});

t.test('histories are checked per key and the failing key is named', (t) => {
  const h = [w(1, 'x', 0, 1, 'a'), r(2, 'x', 2, 3, 'a'), w(1, 'y', 0, 1, 'b'), r(2, null, 2, 3, 'b')];
  const res = checkHistory(h);
  t.notOk(res.ok);
  t.equal(res.key, 'b');
  t.ok(checkHistory(h.slice(0, 2)).ok);
  t.end();
});

t.test('a search over its step budget reports exhausted, not linearizable', (t) => {
  // Many concurrent writes and a contradictory read at the end: the search must backtrack a lot.
  const h: Op[] = [];
  for (let i = 0; i < 14; i++) h.push(w(i, `v${i}`, 0, 100));
  h.push(r(99, 'v0', 101, 102), r(99, 'v1', 103, 104), r(99, 'v0', 105, 106));
  const res = checkRegister(h, null, 500);
  t.notOk(res.ok);
  t.ok(res.exhausted);
  t.notOk(checkRegister(h).exhausted, 'with the default budget it is decided');
  t.end();
});

/** A history produced by an atomic register: each op takes effect at an instant inside [call, ret]. */
const registerHistory = fc
  .array(fc.record({ client: fc.integer({ min: 1, max: 4 }), write: fc.boolean(), before: fc.nat(6), after: fc.nat(6), pending: fc.integer({ min: 0, max: 9 }) }), { maxLength: 24 })
  .map((specs) => {
    let state: string | null = null;
    const ops: Op[] = [];
    specs.forEach((s, i) => {
      const at = 10 * (i + 1); // the linearization point
      const call = at - s.before;
      const ret = s.write && s.pending === 0 ? Infinity : at + s.after;
      if (s.write) {
        state = `v${i}`;
        ops.push(w(s.client, state, call, ret));
      } else ops.push(r(s.client, state, call, ret));
    });
    return ops;
  });

t.test('every history of an atomic register is accepted (property)', (t) => {
  fc.assert(fc.property(registerHistory, (h) => checkRegister(h).ok), { seed: fcSeed, numRuns: 500 });
  t.pass(`500 histories (FC_SEED=${fcSeed})`);
  t.end();
});

t.test('a completed read changed to a value never written is refused (property)', (t) => {
  fc.assert(
    fc.property(registerHistory, fc.nat(), (h, pick) => {
      const reads = h.map((o, i) => [o, i] as const).filter(([o]) => o.kind === 'read');
      if (reads.length === 0) return true;
      const [o, i] = reads[pick % reads.length]!;
      const bad = h.slice();
      bad[i] = { ...o, value: 'never-written' };
      return !checkRegister(bad).ok;
    }),
    { seed: fcSeed, numRuns: 500 },
  );
  t.pass(`500 histories (FC_SEED=${fcSeed})`);
  t.end();
});
