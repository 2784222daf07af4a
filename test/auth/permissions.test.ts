// Compiled permission checks: worked examples of every rule, then a seeded property test against a slow,
// obvious reference built on src/nats/subject.ts's subjectMatches. Reproduce a failure with the printed
// seed: PERM_SEED=<seed> npx tap test/auth/permissions.test.ts
import t from 'tap';
import fc from 'fast-check';
import { compilePermissions, CompiledRole, PermissionSpecError, unionPermissions, type PermissionSpec } from '../../src/auth/permissions.js';
import { subjectMatches } from '../../src/nats/subject.js';
import { pause } from '../support/wait.js';

t.test('publish: allow, deny, deny wins, wildcards', async (t) => {
  const p = compilePermissions({ publish: { allow: ['foo.>', 'bar.*', 'baz'], deny: ['foo.secret', 'foo.*.hidden'] } });
  t.ok(p.canPublish('foo.a'));
  t.ok(p.canPublish('foo.a.b.c'));
  t.notOk(p.canPublish('foo'), "'>' needs at least one more token");
  t.notOk(p.canPublish('foo.secret'), 'deny wins over allow');
  t.notOk(p.canPublish('foo.x.hidden'));
  t.ok(p.canPublish('foo.x.hidden.y'));
  t.ok(p.canPublish('bar.x'));
  t.notOk(p.canPublish('bar.x.y'), "'*' is one token");
  t.ok(p.canPublish('baz'));
  t.notOk(p.canPublish('baz.q'));
  t.notOk(p.canPublish('other'));
  t.notOk(p.canPublish('fo'), 'a prefix of a literal token does not match');
  t.notOk(p.canPublish('food.a'), 'a longer token does not match');
  t.notOk(p.canPublish('foo..a'), 'an invalid subject matches nothing');
  t.equal(p.responses, null);
});

t.test('absent allow list grants nothing; a plain list is the allow list', async (t) => {
  const p = compilePermissions({ subscribe: ['a.>'] });
  t.notOk(p.canPublish('a.b'), 'no publish section: no publish');
  t.ok(p.canSubscribe('a.b', undefined));
  const onlyDeny = compilePermissions({ publish: { deny: ['x'] } });
  t.notOk(onlyDeny.canPublish('y'));
});

t.test('subscribe: a SUB must be a subset of one allow pattern', async (t) => {
  const p = compilePermissions({ subscribe: { allow: ['foo.*', 'bar.>', 'baz.*.x'] } });
  t.ok(p.canSubscribe('foo.a', undefined));
  t.ok(p.canSubscribe('foo.*', undefined));
  t.notOk(p.canSubscribe('foo.>', undefined), "foo.* does not cover foo.> (nats-server 2.9 would allow it)");
  t.ok(p.canSubscribe('bar.>', undefined));
  t.ok(p.canSubscribe('bar.*.*', undefined));
  t.ok(p.canSubscribe('bar.a.>', undefined));
  t.notOk(p.canSubscribe('bar', undefined));
  t.notOk(p.canSubscribe('*', undefined));
  t.ok(p.canSubscribe('baz.q.x', undefined));
  t.ok(p.canSubscribe('baz.*.x', undefined));
  t.notOk(p.canSubscribe('baz.*.*', undefined));
  t.notOk(p.canSubscribe('baz.>', undefined));
});

t.test('subscribe: a SUB that overlaps a deny pattern is refused', async (t) => {
  const p = compilePermissions({ subscribe: { allow: ['foo.>'], deny: ['foo.bad', 'foo.*.secret'] } });
  t.ok(p.canSubscribe('foo.good', undefined));
  t.notOk(p.canSubscribe('foo.bad', undefined));
  t.notOk(p.canSubscribe('foo.*', undefined), 'could receive foo.bad');
  t.notOk(p.canSubscribe('foo.>', undefined));
  t.notOk(p.canSubscribe('foo.x.*', undefined), 'could receive foo.x.secret');
  t.ok(p.canSubscribe('foo.x.public', undefined));
  t.ok(p.canSubscribe('foo.x.*.y', undefined));
});

t.test('queue-group rules ("<subject> <queue>")', async (t) => {
  const p = compilePermissions({ subscribe: { allow: ['qq queue1', 'plain.>'], deny: ['plain.x queue2'] } });
  t.notOk(p.canSubscribe('qq', undefined), 'a subject allowed only with a queue refuses a plain SUB');
  t.ok(p.canSubscribe('qq', 'queue1'));
  t.notOk(p.canSubscribe('qq', 'queue9'));
  t.ok(p.canSubscribe('plain.x', undefined), 'a queue deny leaves plain SUBs');
  t.notOk(p.canSubscribe('plain.x', 'queue2'));
  t.ok(p.canSubscribe('plain.x', 'queue3'));
  t.notOk(p.canSubscribe('plain.*', 'queue2'));
  t.throws(() => compilePermissions({ subscribe: ['a  q'] }), PermissionSpecError);
  t.throws(() => compilePermissions({ publish: ['a q'] }), PermissionSpecError);
});

t.test('reserved subjects need an explicit grant', async (t) => {
  const broad = compilePermissions({ publish: ['>', '*.x'], subscribe: ['>'] });
  t.ok(broad.canPublish('orders.x'));
  for (const s of ['$SYS.REQ.x', '$UB.API.USER.ADD', '$JS.API.INFO', '$KV.b.k', '$KV.x']) t.notOk(broad.canPublish(s), s);
  t.ok(broad.canPublish('$KV'), 'a single token $KV is not under $KV.>');
  t.notOk(broad.canSubscribe('>', undefined), 'could receive reserved subjects');
  t.notOk(broad.canSubscribe('*.x', undefined));
  t.ok(broad.canSubscribe('*', undefined));
  t.ok(broad.canSubscribe('orders.>', undefined));
  t.notOk(broad.canSubscribe('$KV.b.>', undefined));
  const kv = compilePermissions({ publish: ['$JS.API.>', '$KV.b1.>'], subscribe: ['$KV.b1.>', '_INBOX.>'] });
  t.ok(kv.canPublish('$JS.API.STREAM.INFO.KV_b1'));
  t.ok(kv.canPublish('$KV.b1.key'));
  t.notOk(kv.canPublish('$KV.b2.key'));
  t.ok(kv.canSubscribe('$KV.b1.*', undefined));
  t.notOk(kv.canSubscribe('$KV.>', undefined));
});

t.test('allow_responses', async (t) => {
  t.same(compilePermissions({ allow_responses: true }).responses, { maxMessages: 1, expiresMs: 120000 });
  t.same(compilePermissions({ allow_responses: { max: 3, expires: '5s' } }).responses, { maxMessages: 3, expiresMs: 5000 });
  t.same(compilePermissions({ allow_responses: { expires: 0 } }).responses, { maxMessages: 1, expiresMs: 0 });
  t.equal(compilePermissions({ allow_responses: false }).responses, null);
  t.throws(() => compilePermissions({ allow_responses: { max: 0 } }), PermissionSpecError);
  t.throws(() => compilePermissions({ allow_responses: { expires: '5 minutes' } }), PermissionSpecError);
  const u = unionPermissions([new CompiledRole({ allow_responses: { max: 2, expires: '1m' } }), new CompiledRole({ allow_responses: { max: 1, expires: 0 } })]);
  t.same(u.responses, { maxMessages: 2, expiresMs: 0 }, 'the union takes the most permissive');
});

t.test('union of roles: one role’s deny does not take away another role’s grant', async (t) => {
  const reader = new CompiledRole({ subscribe: { allow: ['data.>'], deny: ['data.secret.>'] } });
  const secret = new CompiledRole({ subscribe: ['data.secret.>'] });
  t.notOk(unionPermissions([reader]).canSubscribe('data.secret.x', undefined));
  t.ok(unionPermissions([reader, secret]).canSubscribe('data.secret.x', undefined));
  t.notOk(unionPermissions([]).canPublish('x'), 'no roles: nothing');
});

t.test('malformed specs are refused with the path of the entry', async (t) => {
  const bad: unknown[] = [
    { publish: ['foo..bar'] },
    { publish: { allow: ['a'], deny: 'b' } },
    { publish: { allow: [1] } },
    { publish: { alow: ['a'] } },
    { subscribe: ['>.a'] },
    { subscribe: [' q'] },
  ];
  for (const spec of bad) {
    const err = t.throws(() => compilePermissions(spec as PermissionSpec, 'roles.r')) as PermissionSpecError;
    t.equal(err.code, 'EPERMSPEC');
    t.match(err.message, /^roles\.r\.(publish|subscribe)/);
  }
});

t.test('checks do not allocate: a million checks trigger no young-generation GC', async (t) => {
  const p = compilePermissions({
    publish: { allow: Array.from({ length: 50 }, (_, i) => `svc${i}.*.>`).concat(['orders.>']), deny: ['orders.secret'] },
    subscribe: { allow: ['orders.*', '_INBOX.>', 'work queue1'], deny: ['orders.bad'] },
  });
  // 1000 distinct subjects cycle through the 256 memo slots, so trie walks (misses) are measured as well as hits.
  const base = ['orders.new', 'svc49.a.b', 'orders.secret', 'nope.x', '_INBOX.abc.def'];
  const subjects = Array.from({ length: 1000 }, (_, i) => `${base[i % 5]}.${i}`);
  let ok = 0;
  for (let i = 0; i < 20_000; i++) ok += p.canPublish(subjects[i % 1000]!) ? 1 : 0; // warm up the JIT
  const { PerformanceObserver, constants } = await import('node:perf_hooks');
  let scavenges = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (((e as unknown as { detail?: { kind?: number } }).detail)?.kind === constants.NODE_PERFORMANCE_GC_MINOR) scavenges++;
  });
  obs.observe({ entryTypes: ['gc'] });
  await pause(50, 'GC entries are delivered asynchronously: reports of earlier scavenges arrive before the count is reset');
  scavenges = 0;
  // One synchronous loop: nothing but the checks runs, so any scavenge is theirs. A slice or split per check
  // (24+ bytes) would be 24 MB or more, beyond the young generation's 16 MB maximum.
  for (let i = 0; i < 500_000; i++) {
    ok += p.canPublish(subjects[i % 1000]!) ? 1 : 0;
    ok += p.canSubscribe(subjects[i % 1000]!, i % 2 === 0 ? undefined : 'queue1') ? 1 : 0;
  }
  await pause(50, 'GC entries are delivered asynchronously: a scavenge during the loop is reported before the count is read');
  obs.disconnect();
  t.ok(ok > 0);
  t.equal(scavenges, 0, 'no minor GC during 1M checks');
});

// ---- property test against a reference ------------------------------------------------------------------

const reserved = ['$SYS.>', '$UB.>', '$JS.>', '$KV.>'];

function subsumes(a: string, p: string): boolean {
  const at = a.split('.'), pt = p.split('.');
  for (let i = 0; i < at.length; i++) {
    if (at[i] === '>') return pt.length > i;
    if (i >= pt.length) return false;
    if (pt[i] === '>') return false;
    if (at[i] === '*') continue;
    if (pt[i] === '*' || at[i] !== pt[i]) return false;
  }
  return at.length === pt.length;
}

function overlaps(a: string, b: string): boolean {
  const at = a.split('.'), bt = b.split('.');
  for (let i = 0; ; i++) {
    if (i === at.length || i === bt.length) return at.length === bt.length;
    if (at[i] === '>' || bt[i] === '>') return true;
    if (at[i] === '*' || bt[i] === '*') continue;
    if (at[i] !== bt[i]) return false;
  }
}

const firstLiteral = (s: string): boolean => s.split('.')[0] !== '*' && s.split('.')[0] !== '>';

interface RefRole {
  pubAllow: string[];
  pubDeny: string[];
  subAllow: [string, string | undefined][];
  subDeny: [string, string | undefined][];
}

function refPublish(r: RefRole, s: string): boolean {
  const isReserved = reserved.some((x) => subjectMatches(x, s));
  return r.pubAllow.some((a) => subjectMatches(a, s) && (!isReserved || firstLiteral(a))) && !r.pubDeny.some((d) => subjectMatches(d, s));
}

function refSubscribe(r: RefRole, p: string, q: string | undefined): boolean {
  const touchesReserved = reserved.some((x) => overlaps(x, p));
  if (touchesReserved && !firstLiteral(p)) return false;
  const allowed = r.subAllow.some(([a, aq]) => (aq === undefined || aq === q) && subsumes(a, p) && (!touchesReserved || firstLiteral(a)));
  return allowed && !r.subDeny.some(([d, dq]) => (dq === undefined || dq === q) && overlaps(d, p));
}

const token = fc.constantFrom('a', 'b', 'ab', 'ba', 'c', '$KV', '$SYS', '$JS', '$UB', 'x');
const patternToken = fc.oneof({ weight: 4, arbitrary: token }, { weight: 1, arbitrary: fc.constant('*') });
const pattern = fc
  .tuple(fc.array(patternToken, { minLength: 1, maxLength: 4 }), fc.boolean())
  .map(([toks, tail]) => (tail ? [...toks.slice(0, 3), '>'] : toks).join('.'));
const literal = fc.array(token, { minLength: 1, maxLength: 5 }).map((t) => t.join('.'));
const queue = fc.option(fc.constantFrom('q1', 'q2'), { nil: undefined });
const roleArb = fc.record({
  pubAllow: fc.array(pattern, { maxLength: 5 }),
  pubDeny: fc.array(pattern, { maxLength: 3 }),
  subAllow: fc.array(fc.tuple(pattern, queue), { maxLength: 5 }),
  subDeny: fc.array(fc.tuple(pattern, queue), { maxLength: 3 }),
});

function specOf(r: RefRole): PermissionSpec {
  const entry = ([s, q]: [string, string | undefined]): string => (q === undefined ? s : `${s} ${q}`);
  return { publish: { allow: r.pubAllow, deny: r.pubDeny }, subscribe: { allow: r.subAllow.map(entry), deny: r.subDeny.map(entry) } };
}

const seed = process.env.PERM_SEED !== undefined ? Number(process.env.PERM_SEED) : (Date.now() ^ (Math.random() * 2 ** 31)) | 0;

t.test(`compiled checks agree with the reference matcher (PERM_SEED=${seed})`, async (t) => {
  t.comment(`reproduce: PERM_SEED=${seed} npx tap test/auth/permissions.test.ts`);
  fc.assert(
    fc.property(fc.array(roleArb, { minLength: 1, maxLength: 3 }), fc.array(literal, { minLength: 1, maxLength: 8 }), fc.array(fc.tuple(pattern, queue), { minLength: 1, maxLength: 8 }), (roles, pubs, subs) => {
      const compiled = unionPermissions(roles.map((r) => new CompiledRole(specOf(r))));
      // Twice over, with fresh string copies the second time, so that memo hits are checked as well as misses.
      for (const copy of [false, true]) {
        for (const s0 of pubs) {
          const s = copy ? [...s0].join('') : s0;
          const want = roles.some((r) => refPublish(r, s));
          if (compiled.canPublish(s) !== want) throw new Error(`canPublish(${s}) = ${!want}, reference says ${want}`);
        }
        for (const [p0, q] of subs) {
          const p = copy ? [...p0].join('') : p0;
          const want = roles.some((r) => refSubscribe(r, p, q));
          if (compiled.canSubscribe(p, q) !== want) throw new Error(`canSubscribe(${p}, ${q}) = ${!want}, reference says ${want}`);
        }
      }
    }),
    { seed, numRuns: 1000 },
  );
  t.pass('1000 random rule sets agree');
});

t.test('the reference itself agrees with subjectMatches on literal SUBs', async (t) => {
  fc.assert(
    fc.property(pattern, literal, (a, s) => subsumes(a, s) === subjectMatches(a, s) && overlaps(a, s) === subjectMatches(a, s)),
    { seed, numRuns: 2000 },
  );
  t.pass('subsumes/overlaps reduce to matching for literal subjects');
});

t.test('the memo never answers for another subject (slot collisions, many subjects)', async (t) => {
  const p = compilePermissions({ publish: { allow: ['even.>'] }, subscribe: ['even.>'] });
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 5000; i++) {
      const s = `${i % 2 === 0 ? 'even' : 'odd'}.${i}`;
      if (p.canPublish(s) !== (i % 2 === 0)) return t.fail(`canPublish(${s})`);
      if (p.canSubscribe(s, undefined) !== (i % 2 === 0)) return t.fail(`canSubscribe(${s})`);
    }
  }
  t.pass('10000 subjects through 256 slots, all answered right');
});

t.test('tokens whose hashes collide are still told apart', async (t) => {
  // Two tokens with the same 30-bit FNV-1a hash as the trie computes it (found once by a birthday search).
  const fnv = (s: string): number => {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
    return h & 0x3fffffff;
  };
  const pair: [string, string] = ['t7pfs', 'tovja'];
  t.equal(fnv(pair[0]), fnv(pair[1]), 'the pair collides');
  const [a, b] = pair;
  const p = compilePermissions({ publish: { allow: [`x.${a}`, `y.${a}`, `y.${b}.z`], deny: [`y.${b}.z`] }, subscribe: [`${a}.>`] });
  t.ok(p.canPublish(`x.${a}`));
  t.notOk(p.canPublish(`x.${b}`), `${b} collides with ${a} but is another token`);
  t.ok(p.canPublish(`y.${a}`));
  t.notOk(p.canPublish(`y.${b}.z`));
  t.ok(p.canSubscribe(`${a}.q`, undefined));
  t.notOk(p.canSubscribe(`${b}.q`, undefined));
});
