// KV state machine: a model-based fast-check property test against a plain in-memory model (a
// bucket is a list of retained entries, as a JetStream stream), with snapshot/restore round trips
// in the middle of runs, determinism of the snapshot bytes, limits, and the change feed.
import t from 'tap';
import fc from 'fast-check';
import { encodeKvCommand, KvErrorCode, KvStateMachine, StoreErrorCode, type KvCommand, type KvEntry, type KvResult } from '../../store/index.js';
import { pack } from '../../store/codec.js';

const SEED = Number(process.env.SEED ?? Date.now() % 1_000_000_007);
t.comment(`seeded properties use SEED=${SEED} (rerun: SEED=${SEED} npx tap test/store/kv.test.ts)`);

const LIMITS = { bucketsMax: 3, bucketNameBytesMax: 8, historyMax: 5, keyBytesMax: 40, valueBytesMax: 64 };

interface MBucket {
  config: { history: number; valueBytesMax: number; bytesMax: number; keyBytesMax: number };
  seq: number;
  stream: KvEntry[];
}

/** The obvious reference: slow, written without looking at the state machine's data structures. */
class Model {
  buckets = new Map<string, MBucket>();
  apply(index: number, cmd: KvCommand | 'garbage' | 'noop'): { ok: boolean; code?: string; entry?: KvEntry; created?: boolean } {
    if (cmd === 'noop') return { ok: true };
    if (cmd === 'garbage') return { ok: false, code: KvErrorCode.badCommand };
    if (cmd.op === 'bucket.create') {
      if (!/^[a-zA-Z0-9_-]{1,8}$/.test(cmd.bucket)) return { ok: false, code: KvErrorCode.badBucketName };
      const c = { history: 1, valueBytesMax: 64, bytesMax: 256 * 1024 * 1024, keyBytesMax: 40, ...cmd.config };
      if (c.history < 1 || c.history > 5 || c.valueBytesMax > 64 || c.keyBytesMax < 1 || c.keyBytesMax > 40) return { ok: false, code: KvErrorCode.badConfig };
      const old = this.buckets.get(cmd.bucket);
      if (old) return JSON.stringify(old.config) === JSON.stringify(c) ? { ok: true, created: false } : { ok: false, code: KvErrorCode.bucketExists };
      if (this.buckets.size >= 3) return { ok: false, code: KvErrorCode.tooManyBuckets };
      this.buckets.set(cmd.bucket, { config: c, seq: 0, stream: [] });
      return { ok: true, created: true };
    }
    const b = this.buckets.get(cmd.bucket);
    if (!b) return { ok: false, code: KvErrorCode.bucketNotFound };
    if (cmd.op === 'bucket.delete') {
      this.buckets.delete(cmd.bucket);
      return { ok: true };
    }
    const key = cmd.key;
    const validKey = /^[-/_=.a-zA-Z0-9]+$/.test(key) && !key.startsWith('.') && !key.endsWith('.') && !key.includes('..');
    if (!validKey) return { ok: false, code: KvErrorCode.badKey };
    if (key.length > b.config.keyBytesMax) return { ok: false, code: KvErrorCode.keyTooLong };
    const mine = b.stream.filter((e) => e.key === key);
    const latest = mine[mine.length - 1];
    if (cmd.op === 'create' && latest?.op === 'PUT') return { ok: false, code: KvErrorCode.keyExists };
    if ((cmd.op === 'update' || cmd.op === 'delete' || cmd.op === 'purge') && cmd.revision !== undefined && (latest?.revision ?? 0) !== cmd.revision) {
      return { ok: false, code: KvErrorCode.wrongRevision };
    }
    const value = 'value' in cmd ? cmd.value : new Uint8Array(0);
    if (value.length > b.config.valueBytesMax) return { ok: false, code: KvErrorCode.valueTooLarge };
    const op = cmd.op === 'delete' ? 'DEL' : cmd.op === 'purge' ? 'PURGE' : 'PUT';
    const entry: KvEntry = { bucket: cmd.bucket, key, op, value, revision: index, seq: b.seq + 1, ts: cmd.ts };
    let stream = op === 'PURGE' ? b.stream.filter((e) => e.key !== key) : [...b.stream];
    stream.push(entry);
    while (stream.filter((e) => e.key === key).length > b.config.history) {
      const i = stream.findIndex((e) => e.key === key);
      stream = [...stream.slice(0, i), ...stream.slice(i + 1)];
    }
    const bytes = stream.reduce((s, e) => s + e.key.length + e.value.length, 0);
    if (bytes > b.config.bytesMax) return { ok: false, code: KvErrorCode.bucketFull };
    b.stream = stream;
    b.seq++;
    return { ok: true, entry };
  }
}

const plain = (e: KvEntry | undefined) => e && { ...e, value: Buffer.from(e.value).toString('hex') };

/** Every read the state machine offers, compared with the model. Returns a description of the first mismatch. */
function compare(sm: KvStateMachine, m: Model, probeRevision: number): string | null {
  const names = [...m.buckets.keys()].sort();
  if (JSON.stringify(sm.bucketNames()) !== JSON.stringify(names)) return `buckets ${sm.bucketNames()} vs ${names}`;
  for (const name of names) {
    const b = m.buckets.get(name)!;
    const info = sm.bucketInfo(name)!;
    const bytes = b.stream.reduce((s, e) => s + e.key.length + e.value.length, 0);
    if (info.seq !== b.seq || info.values !== b.stream.length || info.bytes !== bytes || JSON.stringify(info.config) !== JSON.stringify(b.config)) {
      return `bucket ${name} info ${JSON.stringify(info)} vs seq ${b.seq} values ${b.stream.length} bytes ${bytes}`;
    }
    const keys = [...new Set(b.stream.map((e) => e.key))];
    const live = keys.filter((k) => b.stream.filter((e) => e.key === k).pop()!.op === 'PUT').sort();
    if (JSON.stringify(sm.keys(name)) !== JSON.stringify(live)) return `keys of ${name}`;
    for (const k of keys) {
      const h = b.stream.filter((e) => e.key === k);
      if (JSON.stringify(sm.history(name, k).map(plain)) !== JSON.stringify(h.map(plain))) return `history of ${name}/${k}`;
      if (JSON.stringify(plain(sm.get(name, k))) !== JSON.stringify(plain(h[h.length - 1]))) return `get ${name}/${k}`;
    }
    const feed = b.stream.filter((e) => e.revision > probeRevision).sort((a, z) => a.revision - z.revision);
    if (JSON.stringify(sm.changesSince(probeRevision, name).map(plain)) !== JSON.stringify(feed.map(plain))) return `changes of ${name} since ${probeRevision}`;
  }
  const all = [...m.buckets.values()].flatMap((b) => b.stream).filter((e) => e.revision > probeRevision).sort((a, z) => a.revision - z.revision);
  if (JSON.stringify(sm.changesSince(probeRevision).map(plain)) !== JSON.stringify(all.map(plain))) return `changes since ${probeRevision}`;
  return null;
}

function sameResult(got: KvResult, want: ReturnType<Model['apply']>): boolean {
  if (got.ok !== want.ok) return false;
  if (!got.ok) return got.code === want.code;
  if (got.kind === 'entry') return JSON.stringify(plain(got.entry)) === JSON.stringify(plain(want.entry));
  if (got.kind === 'bucket.create') return got.created === want.created;
  return true;
}

const rare = <T,>(usual: fc.Arbitrary<T>, odd: fc.Arbitrary<T>) => fc.oneof({ weight: 9, arbitrary: usual }, { weight: 1, arbitrary: odd });
const bucketArb = fc.oneof({ weight: 12, arbitrary: fc.constantFrom('a', 'b') }, { weight: 2, arbitrary: fc.constantFrom('c', 'd') }, { weight: 1, arbitrary: fc.constantFrom('bad name', 'toolongname') });
const keyArb = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom('k1', 'k2', 'k.3', 'sub.k', 'a/b=c_d-e', 'x'.repeat(30)) },
  { weight: 1, arbitrary: fc.constantFrom('.bad', 'bad.', 'a..b', '', 'sp ace', 'y'.repeat(41)) },
);
const valueArb = rare(fc.uint8Array({ maxLength: 12 }), fc.uint8Array({ maxLength: 70 }));
const tsArb = fc.nat(2_000_000_000);
// -1 stands for "the key's current revision", resolved against the model when the step runs, so
// that CAS succeeds often enough to matter.
const revArb = fc.oneof({ weight: 3, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(200) });
const configArb = fc.record(
  {
    history: rare(fc.integer({ min: 1, max: 5 }), fc.constantFrom(0, 6)),
    valueBytesMax: rare(fc.constantFrom(8, 32, 64), fc.constant(65)),
    bytesMax: fc.constantFrom(80, 400, 10_000),
    keyBytesMax: rare(fc.constantFrom(10, 32, 40), fc.constantFrom(0, 41)),
  },
  { requiredKeys: [] },
);
const createArb = (bucket: fc.Arbitrary<string>) => fc.record({ op: fc.constant('bucket.create' as const), bucket, config: configArb, ts: tsArb });
type Step = { cmd: KvCommand | 'garbage' | 'noop'; snapshotAfter: boolean; probe: number };
const cmdArb: fc.Arbitrary<KvCommand | 'garbage' | 'noop'> = fc.oneof(
  { weight: 1, arbitrary: createArb(bucketArb) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('bucket.delete' as const), bucket: fc.constantFrom('a', 'c', 'd', 'zz'), ts: tsArb }) },
  { weight: 6, arbitrary: fc.record({ op: fc.constantFrom('put' as const, 'create' as const), bucket: bucketArb, key: keyArb, value: valueArb, ts: tsArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('update' as const), bucket: bucketArb, key: keyArb, value: valueArb, revision: revArb, ts: tsArb }) },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constantFrom('delete' as const, 'purge' as const), bucket: bucketArb, key: keyArb, ts: tsArb, revision: revArb }, { requiredKeys: ['op', 'bucket', 'key', 'ts'] }),
  },
  { weight: 1, arbitrary: fc.constantFrom('garbage' as const, 'noop' as const) },
);
const stepArb: fc.Arbitrary<Step> = fc.record({ cmd: cmdArb, snapshotAfter: fc.integer({ min: 0, max: 11 }).map((x) => x === 0), probe: fc.nat(60) });

function encode(cmd: Step['cmd'], i: number): Uint8Array {
  if (cmd === 'noop') return new Uint8Array(0);
  if (cmd === 'garbage') {
    const junk = [pack({ op: 'put', bucket: 'a' }), pack([1, 2, 3]), Buffer.from([0xc1]), pack({ op: 'explode', bucket: 'a', ts: 1 }), pack({ op: 'put', bucket: 'a', key: 'k', value: 'str', ts: 1 })];
    return junk[i % junk.length]!;
  }
  return encodeKvCommand(cmd);
}

t.test('model-based: the state machine matches the reference model, across snapshot/restore', async (t) => {
  let restores = 0;
  let refusals = 0;
  let writes = 0;
  fc.assert(
    fc.property(createArb(fc.constant('a')), createArb(fc.constant('b')), fc.array(stepArb, { minLength: 1, maxLength: 80, size: 'max' }), (ca, cb, rest) => {
      const steps: Step[] = [{ cmd: ca, snapshotAfter: false, probe: 0 }, { cmd: cb, snapshotAfter: false, probe: 0 }, ...rest];
      let sm = new KvStateMachine(LIMITS);
      const twin = new KvStateMachine(LIMITS); // same entries, never restored: snapshots must match byte for byte
      const m = new Model();
      let index = 0;
      for (const [i, s] of steps.entries()) {
        index += 1 + (i % 3); // revisions are log indexes: gaps (conf changes, no-ops elsewhere) are normal
        let cmd = s.cmd; // generated values are never mutated: shrinking replays them
        if (typeof cmd === 'object' && 'revision' in cmd && cmd.revision === -1) {
          const key = cmd.key;
          const h = m.buckets.get(cmd.bucket)?.stream.filter((e) => e.key === key);
          cmd = { ...cmd, revision: h?.[h.length - 1]?.revision ?? 0 };
        }
        const data = encode(cmd, i);
        const got = sm.apply(index, data);
        twin.apply(index, data);
        const want = m.apply(index, cmd);
        if (!got.ok) refusals++;
        else if (got.kind === 'entry') writes++;
        if (!sameResult(got, want)) throw new Error(`step ${i} ${JSON.stringify(cmd)}: got ${JSON.stringify(got)}, model ${JSON.stringify(want)}`);
        const diff = compare(sm, m, s.probe);
        if (diff) throw new Error(`after step ${i}: ${diff}`);
        if (s.snapshotAfter) {
          const image = sm.snapshot();
          const restored = new KvStateMachine(LIMITS);
          restored.restore(image);
          restores++;
          if (Buffer.compare(Buffer.from(restored.snapshot()), Buffer.from(image)) !== 0) throw new Error('restore(snapshot) changed the bytes');
          if (restored.appliedIndex !== index) throw new Error('applied index not restored');
          const d2 = compare(restored, m, s.probe);
          if (d2) throw new Error(`restored after step ${i}: ${d2}`);
          sm = restored;
        }
        if (Buffer.compare(Buffer.from(sm.snapshot()), Buffer.from(twin.snapshot())) !== 0) throw new Error(`step ${i}: replicas diverge`);
      }
      return true;
    }),
    { seed: SEED, numRuns: 120 },
  );
  t.ok(restores > 20, `${restores} snapshot/restore round trips`);
  t.ok(refusals > 100, `${refusals} refused commands compared`);
  t.ok(writes > 1000, `${writes} successful writes compared`);
});

t.test('results carry typed refusals; limits; CAS and create semantics', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  const run = (cmd: KvCommand) => sm.apply(++i, encodeKvCommand(cmd));
  t.match(run({ op: 'put', bucket: 'users', key: 'a', value: Buffer.from('x'), ts: 1 }), { ok: false, code: 'EKV_BUCKET_NOT_FOUND' });
  t.match(run({ op: 'bucket.create', bucket: 'users', config: { history: 3, valueBytesMax: 10, bytesMax: 40 }, ts: 5 }), { ok: true, created: true });
  t.match(run({ op: 'bucket.create', bucket: 'users', config: { history: 3, valueBytesMax: 10, bytesMax: 40 }, ts: 6 }), { ok: true, created: false });
  t.match(run({ op: 'bucket.create', bucket: 'users', config: { history: 4 }, ts: 6 }), { ok: false, code: 'EKV_BUCKET_EXISTS' });
  t.match(run({ op: 'bucket.create', bucket: 'h', config: { history: 65 }, ts: 6 }), { ok: false, code: 'EKV_BAD_CONFIG' });
  const put = run({ op: 'put', bucket: 'users', key: 'alice', value: Buffer.from('v1'), ts: 100 });
  t.match(put, { ok: true, kind: 'entry', entry: { op: 'PUT', revision: 6, seq: 1, ts: 100 } });
  t.match(run({ op: 'create', bucket: 'users', key: 'alice', value: Buffer.from('v2'), ts: 101 }), { ok: false, code: 'EKV_KEY_EXISTS', revision: 6 });
  t.match(run({ op: 'update', bucket: 'users', key: 'alice', value: Buffer.from('v2'), revision: 5, ts: 102 }), { ok: false, code: 'EKV_WRONG_REVISION', revision: 6 });
  t.match(run({ op: 'update', bucket: 'users', key: 'alice', value: Buffer.from('v2'), revision: 6, ts: 103 }), { ok: true, entry: { revision: 9, seq: 2 } });
  t.match(run({ op: 'put', bucket: 'users', key: 'alice', value: Buffer.alloc(11), ts: 104 }), { ok: false, code: 'EKV_VALUE_TOO_LARGE', message: /11 bytes exceeds the bucket's 10/ });
  t.match(run({ op: 'put', bucket: 'users', key: 'k'.repeat(1025), value: Buffer.alloc(1), ts: 104 }), { ok: false, code: 'EKV_KEY_TOO_LONG' });
  t.match(run({ op: 'put', bucket: 'users', key: 'bad key', value: Buffer.alloc(1), ts: 104 }), { ok: false, code: 'EKV_BAD_KEY' });
  t.match(run({ op: 'delete', bucket: 'users', key: 'alice', ts: 105 }), { ok: true, entry: { op: 'DEL', seq: 3 } });
  t.same(sm.keys('users'), []);
  t.match(run({ op: 'create', bucket: 'users', key: 'alice', value: Buffer.from('v3'), ts: 106 }), { ok: true, entry: { op: 'PUT', seq: 4 } }, 'create after delete');
  t.same(sm.history('users', 'alice').map((e) => e.op), ['PUT', 'DEL', 'PUT'], 'history depth 3');
  // Bucket bytes: 40 max; key 'bob' (3) + 10-byte values.
  t.match(run({ op: 'put', bucket: 'users', key: 'bob', value: Buffer.alloc(10), ts: 107 }), { ok: true });
  t.match(run({ op: 'put', bucket: 'users', key: 'bob', value: Buffer.alloc(10), ts: 108 }), { ok: false, code: 'EKV_BUCKET_FULL' });
  t.match(run({ op: 'purge', bucket: 'users', key: 'alice', ts: 109 }), { ok: true, entry: { op: 'PURGE' } });
  t.same(sm.history('users', 'alice').map((e) => e.op), ['PURGE']);
  t.match(run({ op: 'put', bucket: 'users', key: 'bob', value: Buffer.alloc(10), ts: 110 }), { ok: true }, 'purge freed space');
  t.match(sm.apply(++i, Buffer.from([0xc1])), { ok: false, code: 'EKV_BAD_COMMAND' });
  t.match(sm.apply(++i, new Uint8Array(0)), { ok: true, kind: 'noop' });
  t.throws(() => sm.apply(i, new Uint8Array(0)), /applied once, in order/, 'an index applied twice is a broken invariant');
  t.throws(() => new KvStateMachine().restore(Buffer.from([1, 2, 3])), { code: StoreErrorCode.corrupt });
  t.match(run({ op: 'bucket.delete', bucket: 'users', ts: 111 }), { ok: true, kind: 'bucket.delete' });
  t.same(sm.bucketNames(), []);
});

t.test('change feed: read since a revision, then subscribe for new entries', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  const run = (cmd: KvCommand) => sm.apply(++i, encodeKvCommand(cmd));
  run({ op: 'bucket.create', bucket: 'a', config: { history: 2 }, ts: 1 });
  run({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 });
  for (let k = 0; k < 5; k++) run({ op: 'put', bucket: k % 2 ? 'a' : 'b', key: `k${k}`, value: Buffer.from([k]), ts: 10 + k });
  const since = sm.changesSince(4);
  t.same(since.map((e) => e.revision), [5, 6, 7]);
  t.same(sm.changesSince(0, 'a').map((e) => e.key), ['k1', 'k3']);
  t.same(sm.changesSince(0, undefined, 2).map((e) => e.revision), [3, 4]);
  const seen: KvEntry[] = [];
  const off = sm.subscribe((e) => seen.push(e));
  run({ op: 'delete', bucket: 'a', key: 'k1', ts: 20 });
  run({ op: 'put', bucket: 'nope', key: 'x', value: Buffer.from([1]), ts: 21 });
  off();
  run({ op: 'put', bucket: 'a', key: 'k9', value: Buffer.from([9]), ts: 22 });
  t.same(seen.map((e) => [e.op, e.key, e.revision, e.ts]), [['DEL', 'k1', 8, 20]]);
});
