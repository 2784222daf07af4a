// KV state machine: a model-based fast-check property test against a plain in-memory model (a
// bucket is a list of retained entries, as a JetStream stream), with snapshot/restore round trips
// in the middle of runs, determinism of the snapshot bytes, limits, and the change feed.
import t from 'tap';
import fc from 'fast-check';
import { decodeKvCommand, encodeKvCommand, KvErrorCode, KvStateMachine, StoreErrorCode, type KvCommand, type KvEntry, type KvResult } from '../../store/index.js';
import { pack, unpack } from '../../store/codec.js';

const SEED = Number(process.env.SEED ?? Date.now() % 1_000_000_007);
t.comment(`seeded properties use SEED=${SEED} (rerun: SEED=${SEED} npx tap test/store/kv.test.ts)`);

const LIMITS = { bucketsMax: 3, bucketNameBytesMax: 8, historyMax: 5, keyBytesMax: 40, valueBytesMax: 64 };

interface MBucket {
  config: { history: number; valueBytesMax: number; bytesMax: number; keyBytesMax: number; maxAgeMs: number; duplicateWindowMs: number };
  seq: number;
  stream: KvEntry[];
}

/** The obvious reference: slow, written without looking at the state machine's data structures. */
class Model {
  buckets = new Map<string, MBucket>();
  apply(index: number, cmd: KvCommand | 'garbage' | 'noop'): { ok: boolean; code?: string; entry?: KvEntry; entries?: KvEntry[]; created?: boolean } {
    if (cmd === 'noop') return { ok: true };
    if (cmd === 'garbage') return { ok: false, code: KvErrorCode.badCommand };
    if (cmd.op === 'txn') return this.txn(index, cmd);
    if (cmd.op === 'nonce') throw new Error('the model does not generate nonce claims (they have their own test)');
    return this.single(index, cmd);
  }

  private latest(bucket: string, key: string): KvEntry | undefined {
    return this.buckets.get(bucket)?.stream.filter((e) => e.key === key).pop();
  }

  /** Guards in order, then the writes one after another on a copy; any refusal leaves the model as it was. */
  private txn(index: number, cmd: Extract<KvCommand, { op: 'txn' }>): ReturnType<Model['apply']> {
    if (new Set(cmd.ops.map((o) => o.bucket)).size !== cmd.ops.length) return { ok: false, code: KvErrorCode.badCommand };
    for (const g of cmd.guards) {
      const b = this.buckets.get(g.bucket);
      if (!b) return { ok: false, code: KvErrorCode.bucketNotFound };
      if ('field' in g) {
        for (const k of new Set(b.stream.map((e) => e.key))) {
          const e = this.latest(g.bucket, k)!;
          if (k === g.except || e.op !== 'PUT') continue;
          let v: unknown;
          try {
            v = unpack(e.value);
          } catch {
            continue;
          }
          if (typeof v === 'object' && v !== null && !Array.isArray(v) && (v as Record<string, unknown>)[g.field] === g.equals) return { ok: false, code: KvErrorCode.valueTaken };
        }
      } else if ('present' in g) {
        const present = this.latest(g.bucket, g.key)?.op === 'PUT';
        if (present !== g.present) return { ok: false, code: g.present ? KvErrorCode.keyNotFound : KvErrorCode.keyExists };
      } else if ((this.latest(g.bucket, g.key)?.revision ?? 0) !== g.revision) {
        return { ok: false, code: KvErrorCode.wrongRevision };
      }
    }
    const saved = new Map([...this.buckets].map(([k, b]) => [k, { ...b, stream: [...b.stream] }]));
    const entries: KvEntry[] = [];
    for (const op of cmd.ops) {
      const r = this.single(index, op);
      if (!r.ok) {
        this.buckets = saved;
        return r;
      }
      entries.push(r.entry!);
    }
    return { ok: true, entries };
  }

  private single(index: number, cmd: Exclude<KvCommand, { op: 'txn' } | { op: 'nonce' }>): ReturnType<Model['apply']> {
    if (cmd.op === 'bucket.create') {
      if (!/^[a-zA-Z0-9_-]{1,8}$/.test(cmd.bucket)) return { ok: false, code: KvErrorCode.badBucketName };
      const c = { history: 1, valueBytesMax: 64, bytesMax: 256 * 1024 * 1024, keyBytesMax: 40, maxAgeMs: 0, duplicateWindowMs: 120_000, ...cmd.config };
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
    if (cmd.op === 'bucket.purge' || cmd.op === 'expire') throw new Error('the model does not generate purges');
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
    const entry: KvEntry = { bucket: cmd.bucket, key, op, value, revision: b.seq + 1, index, ts: cmd.ts, hdrBytes: 0 };
    let stream = op === 'PURGE' ? b.stream.filter((e) => e.key !== key) : [...b.stream];
    stream.push(entry);
    while (stream.filter((e) => e.key === key).length > b.config.history) {
      const i = stream.findIndex((e) => e.key === key);
      stream = [...stream.slice(0, i), ...stream.slice(i + 1)];
    }
    const bytes = stream.reduce((s, e) => s + size(e), 0);
    if (bytes > b.config.bytesMax) return { ok: false, code: KvErrorCode.bucketFull };
    b.stream = stream;
    b.seq++;
    return { ok: true, entry };
  }
}

/** nats-server's stored size of a message without headers: 22 + subject `$KV.<bucket>.<key>` + payload + 8. */
const size = (e: KvEntry): number => 22 + `$KV.${e.bucket}.${e.key}`.length + e.value.length + 8;

const plain = (e: KvEntry | undefined) => e && { ...e, value: Buffer.from(e.value).toString('hex') };

/** Every read the state machine offers, compared with the model. Returns a description of the first mismatch. */
function compare(sm: KvStateMachine, m: Model, probeRevision: number): string | null {
  const names = [...m.buckets.keys()].sort();
  if (JSON.stringify(sm.bucketNames()) !== JSON.stringify(names)) return `buckets ${sm.bucketNames()} vs ${names}`;
  for (const name of names) {
    const b = m.buckets.get(name)!;
    const info = sm.bucketInfo(name)!;
    const bytes = b.stream.reduce((s, e) => s + size(e), 0);
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
  const all = [...m.buckets.values()].flatMap((b) => b.stream).filter((e) => e.index > probeRevision).sort((a, z) => a.index - z.index || (a.bucket < z.bucket ? -1 : a.bucket > z.bucket ? 1 : 0));
  if (JSON.stringify(sm.changesSince(probeRevision).map(plain)) !== JSON.stringify(all.map(plain))) return `changes since ${probeRevision}`;
  return null;
}

function sameResult(got: KvResult, want: ReturnType<Model['apply']>): boolean {
  if (got.ok !== want.ok) return false;
  if (!got.ok) return got.code === want.code;
  if (got.kind === 'entry') return JSON.stringify(plain(got.entry)) === JSON.stringify(plain(want.entry));
  if (got.kind === 'bucket.create') return got.created === want.created;
  if (got.kind === 'txn') return JSON.stringify(got.entries.map(plain)) === JSON.stringify(want.entries?.map(plain));
  return true;
}

const rare = <T,>(usual: fc.Arbitrary<T>, odd: fc.Arbitrary<T>) => fc.oneof({ weight: 9, arbitrary: usual }, { weight: 1, arbitrary: odd });
const bucketArb = fc.oneof({ weight: 12, arbitrary: fc.constantFrom('a', 'b') }, { weight: 2, arbitrary: fc.constantFrom('c', 'd') }, { weight: 1, arbitrary: fc.constantFrom('bad name', 'toolongname') });
const keyArb = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom('k1', 'k2', 'k.3', 'sub.k', 'a/b=c_d-e', 'x'.repeat(30)) },
  { weight: 1, arbitrary: fc.constantFrom('.bad', 'bad.', 'a..b', '', 'sp ace', 'y'.repeat(41)) },
);
// Some values are msgpack maps, so txn field guards (`nk` equals 'A' or 'B') find holders.
const mapValueArb = fc.constantFrom(pack({ nk: 'A' }), pack({ nk: 'B' }), pack({ nk: 1 }), pack({ x: 'A' }), pack(['A']));
const valueArb = fc.oneof({ weight: 9, arbitrary: fc.uint8Array({ maxLength: 12 }) }, { weight: 3, arbitrary: mapValueArb }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 70 }) });
const tsArb = fc.nat(2_000_000_000);
// -1 stands for "the key's current revision", resolved against the model when the step runs, so
// that CAS succeeds often enough to matter.
const revArb = fc.oneof({ weight: 3, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(200) });
const configArb = fc.record(
  {
    history: rare(fc.integer({ min: 1, max: 5 }), fc.constantFrom(0, 6)),
    valueBytesMax: rare(fc.constantFrom(8, 32, 64), fc.constant(65)),
    bytesMax: fc.constantFrom(200, 1000, 25_000),
    keyBytesMax: rare(fc.constantFrom(10, 32, 40), fc.constantFrom(0, 41)),
  },
  { requiredKeys: [] },
);
const createArb = (bucket: fc.Arbitrary<string>) => fc.record({ op: fc.constant('bucket.create' as const), bucket, config: configArb, ts: tsArb });
type Step = { cmd: KvCommand | 'garbage' | 'noop'; snapshotAfter: boolean; probe: number };
type WriteCmd = Extract<KvCommand, { key: string }>;
const writeArb: fc.Arbitrary<WriteCmd> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constantFrom('put' as const, 'create' as const), bucket: bucketArb, key: keyArb, value: valueArb, ts: tsArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('update' as const), bucket: bucketArb, key: keyArb, value: valueArb, revision: revArb, ts: tsArb }) },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constantFrom('delete' as const, 'purge' as const), bucket: bucketArb, key: keyArb, ts: tsArb, revision: revArb }, { requiredKeys: ['op', 'bucket', 'key', 'ts'] }),
  },
);
const guardArb = fc.oneof(
  fc.record({ bucket: bucketArb, key: keyArb, present: fc.boolean() }),
  fc.record({ bucket: bucketArb, key: keyArb, revision: revArb }),
  fc.record({ bucket: bucketArb, field: fc.constant('nk'), equals: fc.constantFrom('A', 'B'), except: keyArb }, { requiredKeys: ['bucket', 'field', 'equals'] }),
);
const txnArb = fc.record({ op: fc.constant('txn' as const), ts: tsArb, guards: fc.array(guardArb, { maxLength: 3 }), ops: fc.array(writeArb, { minLength: 1, maxLength: 3 }) });
const cmdArb: fc.Arbitrary<KvCommand | 'garbage' | 'noop'> = fc.oneof(
  { weight: 1, arbitrary: createArb(bucketArb) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('bucket.delete' as const), bucket: fc.constantFrom('a', 'c', 'd', 'zz'), ts: tsArb }) },
  { weight: 12, arbitrary: writeArb },
  { weight: 6, arbitrary: txnArb },
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
  let stagedRestores = 0;
  let refusals = 0;
  let writes = 0;
  let txns = 0;
  fc.assert(
    fc.property(createArb(fc.constant('a')), createArb(fc.constant('b')), fc.array(stepArb, { minLength: 1, maxLength: 80, size: 'max' }), (ca, cb, rest) => {
      const steps: Step[] = [{ cmd: ca, snapshotAfter: false, probe: 0 }, { cmd: cb, snapshotAfter: false, probe: 0 }, ...rest];
      let sm = new KvStateMachine(LIMITS);
      const twin = new KvStateMachine(LIMITS); // same entries, never restored: snapshots must match byte for byte
      const m = new Model();
      let index = 0;
      for (const [i, s] of steps.entries()) {
        index += 1 + (i % 3); // log indexes have gaps (conf changes, no-ops); bucket revisions must not
        // Generated values are never mutated: shrinking replays them.
        const current = (bucket: string, key: string) => m.buckets.get(bucket)?.stream.filter((e) => e.key === key).pop()?.revision ?? 0;
        const resolve = <C extends { bucket: string; key?: string; revision?: number }>(c: C): C =>
          c.revision === -1 && c.key !== undefined ? { ...c, revision: current(c.bucket, c.key) } : c;
        let cmd = s.cmd;
        if (typeof cmd === 'object' && cmd.op === 'txn') cmd = { ...cmd, guards: cmd.guards.map(resolve), ops: cmd.ops.map(resolve) };
        else if (typeof cmd === 'object' && 'key' in cmd) cmd = resolve(cmd);
        const data = encode(cmd, i);
        const got = sm.apply(index, data);
        twin.apply(index, data);
        const want = m.apply(index, cmd);
        if (!got.ok) refusals++;
        else if (got.kind === 'entry') writes++;
        else if (got.kind === 'txn') txns++;
        if (!sameResult(got, want)) throw new Error(`step ${i} ${JSON.stringify(cmd)}: got ${JSON.stringify(got)}, model ${JSON.stringify(want)}`);
        const diff = compare(sm, m, s.probe);
        if (diff) throw new Error(`after step ${i}: ${diff}`);
        if (s.snapshotAfter) {
          const image = sm.snapshot();
          const restored = new KvStateMachine(LIMITS);
          if (i % 2 === 0) {
            restored.restore(image);
          } else {
            // The same image arriving in pieces (a follower parsing the leader's snapshot as it is received).
            const piece = 1 + ((i * 7919) % 23);
            const arriving = new Uint8Array(image.length);
            const staged = restored.stagedRestore(arriving);
            let done = false;
            for (let at = 0; at < image.length; at += piece) {
              const end = Math.min(image.length, at + piece);
              arriving.set(image.subarray(at, end), at);
              done = staged.advance(end);
              if (done !== (end === image.length)) throw new Error(`staged restore says done=${done} at ${end} of ${image.length} bytes`);
            }
            if (!done) throw new Error('staged restore not done with the whole image in');
            staged.install();
            stagedRestores++;
          }
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
  // The seed changes every run, so these floors say "the generator still reaches this path", not "this seed was
  // typical": each is about half the smallest count seen over 300 seeds (restores 300, staged 134, refusals 2558,
  // writes 735, txns 61). The old floor of 800 writes failed 3% of seeds.
  t.ok(restores > 150, `${restores} snapshot/restore round trips`);
  t.ok(stagedRestores > 60, `${stagedRestores} of them staged (the image fed in pieces)`);
  t.ok(refusals > 1200, `${refusals} refused commands compared`);
  t.ok(writes > 350, `${writes} successful writes compared`);
  t.ok(txns > 30, `${txns} applied txns compared`);
});

t.test('a staged restore reads only what has arrived, installs nothing before the whole image, and refuses a bad one', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  const run = (cmd: KvCommand) => sm.apply(++i, encodeKvCommand(cmd));
  run({ op: 'bucket.create', bucket: 'b', config: { history: 3 }, ts: 1 });
  for (let k = 0; k < 300; k++) run({ op: 'put', bucket: 'b', key: `k.${k % 120}`, value: Buffer.alloc(k % 50, k), ts: 10 + k });
  const image = sm.snapshot();
  const arriving = new Uint8Array(image.length);
  const target = new KvStateMachine();
  const staged = target.stagedRestore(arriving);
  t.equal(staged.advance(0), false, 'nothing arrived: not done');
  t.throws(() => staged.install(), { code: StoreErrorCode.badRequest }, 'install before the image is read whole is refused');
  const half = Math.floor(image.length / 2);
  arriving.set(image.subarray(0, half));
  t.equal(staged.advance(half), false);
  t.equal(target.appliedIndex, 0, 'the state machine is untouched until install');
  arriving.set(image.subarray(half), half);
  t.equal(staged.advance(image.length), true);
  staged.install();
  t.same(Buffer.from(target.snapshot()), Buffer.from(image), 'installed: the same state as the image');
  t.equal(target.appliedIndex, i);

  const corrupt = Uint8Array.from(image);
  corrupt[corrupt.length - 1] = 0xc1; // never used in msgpack
  const bad = new KvStateMachine().stagedRestore(corrupt);
  t.throws(() => bad.advance(corrupt.length), { code: StoreErrorCode.corrupt }, 'a bad image is refused as restore() refuses it');
});

t.test('results carry typed refusals; limits; CAS and create semantics', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  const run = (cmd: KvCommand) => sm.apply(++i, encodeKvCommand(cmd));
  t.match(run({ op: 'put', bucket: 'users', key: 'a', value: Buffer.from('x'), ts: 1 }), { ok: false, code: 'EKV_BUCKET_NOT_FOUND' });
  t.match(run({ op: 'bucket.create', bucket: 'users', config: { history: 3, valueBytesMax: 10, bytesMax: 200 }, ts: 5 }), { ok: true, created: true });
  t.match(run({ op: 'bucket.create', bucket: 'users', config: { history: 3, valueBytesMax: 10, bytesMax: 200 }, ts: 6 }), { ok: true, created: false });
  t.match(run({ op: 'bucket.create', bucket: 'users', config: { history: 4 }, ts: 6 }), { ok: false, code: 'EKV_BUCKET_EXISTS' });
  t.match(run({ op: 'bucket.create', bucket: 'h', config: { history: 65 }, ts: 6 }), { ok: false, code: 'EKV_BAD_CONFIG' });
  const put = run({ op: 'put', bucket: 'users', key: 'alice', value: Buffer.from('v1'), ts: 100 });
  t.match(put, { ok: true, kind: 'entry', entry: { op: 'PUT', revision: 1, index: 6, ts: 100 } });
  t.match(run({ op: 'create', bucket: 'users', key: 'alice', value: Buffer.from('v2'), ts: 101 }), { ok: false, code: 'EKV_KEY_EXISTS', revision: 1 });
  t.match(run({ op: 'update', bucket: 'users', key: 'alice', value: Buffer.from('v2'), revision: 5, ts: 102 }), { ok: false, code: 'EKV_WRONG_REVISION', revision: 1 });
  t.match(run({ op: 'update', bucket: 'users', key: 'alice', value: Buffer.from('v2'), revision: 1, ts: 103 }), { ok: true, entry: { revision: 2, index: 9 } });
  t.match(run({ op: 'put', bucket: 'users', key: 'alice', value: Buffer.alloc(11), ts: 104 }), { ok: false, code: 'EKV_VALUE_TOO_LARGE', message: /11 bytes exceeds the bucket's 10/ });
  t.match(run({ op: 'put', bucket: 'users', key: 'k'.repeat(1025), value: Buffer.alloc(1), ts: 104 }), { ok: false, code: 'EKV_KEY_TOO_LONG' });
  t.match(run({ op: 'put', bucket: 'users', key: 'bad key', value: Buffer.alloc(1), ts: 104 }), { ok: false, code: 'EKV_BAD_KEY' });
  t.match(run({ op: 'delete', bucket: 'users', key: 'alice', ts: 105 }), { ok: true, entry: { op: 'DEL', revision: 3 } });
  t.same(sm.keys('users'), []);
  t.match(run({ op: 'create', bucket: 'users', key: 'alice', value: Buffer.from('v3'), ts: 106 }), { ok: true, entry: { op: 'PUT', revision: 4 } }, 'create after delete');
  t.same(sm.history('users', 'alice').map((e) => e.op), ['PUT', 'DEL', 'PUT'], 'history depth 3');
  // Bucket bytes (nats-server's stored size, 22 + subject + value + 8): 200 max; alice's three entries hold 139,
  // a 10-byte value of bob 53.
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

t.test('txn: guards and writes apply all or nothing; malformed txns are refused as bad commands', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  const run = (cmd: KvCommand) => sm.apply(++i, encodeKvCommand(cmd));
  run({ op: 'bucket.create', bucket: 'users', config: {}, ts: 1 });
  run({ op: 'bucket.create', bucket: 'audit', config: {}, ts: 1 });
  run({ op: 'bucket.create', bucket: 'roles', config: {}, ts: 1 });
  run({ op: 'put', bucket: 'roles', key: 'app', value: pack({}), ts: 2 });
  const addUser = (name: string, nk: string, role = 'app') => run({
    op: 'txn', ts: 3,
    guards: [{ bucket: 'roles', key: role, present: true }, { bucket: 'users', field: 'nkey', equals: nk, except: name }],
    ops: [{ op: 'create', bucket: 'users', key: name, value: pack({ name, nkey: nk }), ts: 3 }, { op: 'put', bucket: 'audit', key: `a${i + 1}`, value: pack({ what: 'add', name }), ts: 3 }],
  });
  const ok = addUser('alice', 'UA');
  t.match(ok, { ok: true, kind: 'txn', entries: [{ bucket: 'users', key: 'alice', revision: 1, index: 5 }, { bucket: 'audit', revision: 1, index: 5 }] });
  t.match(addUser('bob', 'UA'), { ok: false, code: KvErrorCode.valueTaken, key: 'alice', message: /nkey UA already belongs to alice/ }, 'a second holder of the field is refused');
  t.match(addUser('alice', 'UB'), { ok: false, code: KvErrorCode.keyExists, key: 'alice' }, 'the create inside refuses the whole txn');
  t.match(addUser('carol', 'UC', 'nope'), { ok: false, code: KvErrorCode.keyNotFound, key: 'nope' });
  t.same(sm.keys('audit').length, 1, 'refused txns wrote no audit record');
  t.same(sm.keys('users'), ['alice']);
  t.match(run({ op: 'txn', ts: 4, guards: [{ bucket: 'users', key: 'alice', revision: 4 }], ops: [{ op: 'delete', bucket: 'users', key: 'alice', ts: 4 }] }), { ok: false, code: KvErrorCode.wrongRevision, revision: 1 });
  t.match(run({ op: 'txn', ts: 4, guards: [{ bucket: 'users', key: 'alice', revision: 1 }], ops: [{ op: 'delete', bucket: 'users', key: 'alice', ts: 4 }] }), { ok: true, kind: 'txn' });
  t.match(addUser('bob', 'UA'), { ok: true }, 'a deleted holder frees the value (the field index follows writes)');
  t.match(run({ op: 'txn', ts: 5, guards: [], ops: [{ op: 'put', bucket: 'audit', key: 'x', value: pack({}), ts: 5 }, { op: 'put', bucket: 'nope', key: 'x', value: pack({}), ts: 5 }] }), { ok: false, code: KvErrorCode.bucketNotFound });
  t.notOk(sm.get('audit', 'x'), 'a later refused write undoes nothing because nothing was written');
  // After a snapshot round trip the (derived) field index is rebuilt on demand.
  const restored = new KvStateMachine();
  restored.restore(sm.snapshot());
  t.match(restored.apply(++i, encodeKvCommand({ op: 'txn', ts: 6, guards: [{ bucket: 'users', field: 'nkey', equals: 'UA' }], ops: [{ op: 'put', bucket: 'audit', key: 'y', value: pack({}), ts: 6 }] })), { ok: false, code: KvErrorCode.valueTaken, key: 'bob' });
  const bad: [unknown, RegExp][] = [
    [{ op: 'txn', ts: 1, guards: [], ops: [] }, /ops must be a list of 1\.\.16/],
    [{ op: 'txn', ts: 1, guards: [], ops: [{ op: 'put', bucket: 'a', key: 'k', value: Buffer.from('v'), ts: 1 }, { op: 'put', bucket: 'a', key: 'j', value: Buffer.from('v'), ts: 1 }] }, /each bucket at most once/],
    [{ op: 'txn', ts: 1, guards: [], ops: [{ op: 'txn', ts: 1, guards: [], ops: [] }] }, /op 0: bucket must be a string/],
    [{ op: 'txn', ts: 1, guards: [], ops: [{ op: 'bucket.delete', bucket: 'a', ts: 1 }] }, /cannot be part of a txn/],
    [{ op: 'txn', ts: 1, guards: [{ bucket: 'a', key: 'k' }], ops: [{ op: 'put', bucket: 'a', key: 'k', value: Buffer.from('v'), ts: 1 }] }, /needs present/],
    [{ op: 'txn', ts: 1, guards: [{ bucket: 'a', field: 'f', equals: 3 }], ops: [{ op: 'put', bucket: 'a', key: 'k', value: Buffer.from('v'), ts: 1 }] }, /equals must be a string/],
    [{ op: 'txn', ts: 1, guards: new Array(65).fill({ bucket: 'a', key: 'k', present: true }), ops: [{ op: 'put', bucket: 'a', key: 'k', value: Buffer.from('v'), ts: 1 }] }, /at most 64/],
    [{ op: 'txn', guards: [], ops: [] }, /ts must be/],
  ];
  for (const [cmd, why] of bad) t.match(sm.apply(++i, pack(cmd)), { ok: false, code: KvErrorCode.badCommand, message: why });
});

t.test('fuzz: any entry bytes apply to a result or a typed refusal, never a throw; commands round-trip', async (t) => {
  // Entries come from the log: a node must apply whatever a committed entry holds the same way as every other
  // node, so the decoder sees random bytes, random msgpack values and near-miss command shapes.
  const field = fc.oneof(fc.string({ maxLength: 6 }), fc.integer(), fc.boolean(), fc.constant(null), fc.uint8Array({ maxLength: 4 }));
  const nearMiss = fc.record({
    op: fc.constantFrom('put', 'create', 'update', 'delete', 'purge', 'txn', 'bucket.create', 'bucket.delete', 'nope'),
    bucket: field, key: field, value: field, ts: field, revision: field,
    guards: fc.oneof(field, fc.array(fc.dictionary(fc.constantFrom('bucket', 'key', 'present', 'revision', 'field', 'equals', 'except'), field), { maxLength: 3 })),
    ops: fc.oneof(field, fc.array(fc.dictionary(fc.constantFrom('op', 'bucket', 'key', 'value', 'ts', 'revision'), field), { maxLength: 3 })),
  }, { requiredKeys: ['op'] });
  const input = fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.anything().map((v) => pack(v)), nearMiss.map((v) => pack(v)));
  let refused = 0;
  fc.assert(
    fc.property(fc.array(input, { minLength: 1, maxLength: 20 }), (entries) => {
      const sm = new KvStateMachine(LIMITS);
      sm.apply(1, encodeKvCommand({ op: 'bucket.create', bucket: 'a', config: {}, ts: 1 }));
      entries.forEach((bytes, i) => {
        const r = sm.apply(i + 2, bytes);
        if (!r.ok) {
          refused++;
          if (!Object.values(KvErrorCode).includes(r.code)) throw new Error(`untyped refusal ${JSON.stringify(r)}`);
        }
        const d = decodeKvCommand(bytes);
        if (typeof d !== 'string' && JSON.stringify(decodeKvCommand(encodeKvCommand(d))) !== JSON.stringify(d)) throw new Error('a decoded command does not round-trip');
      });
      return true;
    }),
    { seed: SEED, numRuns: 300 },
  );
  t.ok(refused > 800, `${refused} refusals, all typed`); // half the fewest over 300 seeds (1618)
});

t.test('change feed: read since a revision, then subscribe for new entries', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  const run = (cmd: KvCommand) => sm.apply(++i, encodeKvCommand(cmd));
  run({ op: 'bucket.create', bucket: 'a', config: { history: 2 }, ts: 1 });
  run({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 });
  for (let k = 0; k < 5; k++) run({ op: 'put', bucket: k % 2 ? 'a' : 'b', key: `k${k}`, value: Buffer.from([k]), ts: 10 + k });
  const since = sm.changesSince(4);
  t.same(since.map((e) => e.index), [5, 6, 7], 'across buckets the feed follows the log index');
  t.same(sm.changesSince(0, 'b').map((e) => e.revision), [1, 2, 3], 'within a bucket, revisions count from 1');
  t.same(sm.changesSince(0, 'a').map((e) => e.key), ['k1', 'k3']);
  t.same(sm.changesSince(0, undefined, 2).map((e) => e.index), [3, 4]);
  const seen: KvEntry[] = [];
  const off = sm.subscribe((e) => seen.push(e));
  run({ op: 'delete', bucket: 'a', key: 'k1', ts: 20 });
  run({ op: 'put', bucket: 'nope', key: 'x', value: Buffer.from([1]), ts: 21 });
  off();
  run({ op: 'put', bucket: 'a', key: 'k9', value: Buffer.from([9]), ts: 22 });
  t.same(seen.map((e) => [e.op, e.key, e.revision, e.index, e.ts]), [['DEL', 'k1', 3, 8, 20]]);
});

t.test('JetStream publish expectations, STREAM.PURGE and TTL expiry: decided at apply time, carried by snapshots', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  const run = (cmd: KvCommand) => sm.apply(++i, encodeKvCommand(cmd));
  const put = (key: string, ts: number, extra: Record<string, unknown> = {}) => run({ op: 'put', bucket: 'b', key, value: Buffer.from(key), ts, ...extra });
  run({ op: 'bucket.create', bucket: 'b', config: { history: 3, duplicateWindowMs: 1000 }, ts: 1 });
  t.match(put('a', 100, { msgId: 'm1' }), { ok: true, entry: { revision: 1 } });
  t.match(put('a', 500, { msgId: 'm1' }), { ok: true, kind: 'duplicate', revision: 1 }, 'a Msg-Id inside the window: nothing stored');
  t.equal(sm.bucketInfo('b')!.seq, 1);
  // A snapshot carries the remembered ids: a restored replica answers the same.
  const twin = new KvStateMachine();
  twin.restore(sm.snapshot());
  t.match(twin.apply(i + 1, encodeKvCommand({ op: 'put', bucket: 'b', key: 'a', value: Buffer.from('a'), ts: 600, msgId: 'm1' })), { ok: true, kind: 'duplicate', revision: 1 });
  t.match(put('a', 1200, { msgId: 'm1' }), { ok: true, entry: { revision: 2 } }, 'outside the window (by the proposer\'s ts) it is a new write');
  t.match(put('c', 1300, { expectLastSeq: 1 }), { ok: false, code: KvErrorCode.wrongLastSequence, revision: 2 });
  t.match(put('c', 1300, { expectLastSeq: 2 }), { ok: true, entry: { revision: 3 } });
  t.match(put('c', 1300, { hdrBytes: 20 }), { ok: true, entry: { revision: 4, hdrBytes: 20 } });
  t.equal(sm.bucketInfo('b')!.bytes, 3 * (22 + '$KV.b.a'.length + 1 + 8) + (22 + '$KV.b.c'.length + 1 + 8 + 4 + 20), 'stored size counts the header block');
  run({ op: 'delete', bucket: 'b', key: 'a', ts: 1400 });
  // Purge: filter + keep (PurgeDeletes' keep 1 leaves the marker), seq, both refused together.
  t.match(run({ op: 'bucket.purge', bucket: 'b', ts: 1500, subject: 'a', keep: 1 }), { ok: true, kind: 'purge', purged: 2 });
  t.same(sm.history('b', 'a').map((e) => [e.op, e.revision]), [['DEL', 5]]);
  t.match(run({ op: 'bucket.purge', bucket: 'b', ts: 1500, seq: 4, keep: 1 }), { ok: false, code: KvErrorCode.badPurge });
  t.match(run({ op: 'bucket.purge', bucket: 'b', ts: 1500, seq: 4 }), { ok: true, purged: 1 }, 'below revision 4: c@3');
  t.match(run({ op: 'bucket.purge', bucket: 'b', ts: 1500, subject: '>' }), { ok: true, purged: 2 });
  t.match(sm.bucketInfo('b'), { values: 0, bytes: 0, seq: 5, firstSeq: 6 }, 'the sequence goes on; first_seq is last + 1');
  // TTL: an expire entry drops what is at or before its cut-off, only in a bucket with max_age.
  run({ op: 'bucket.create', bucket: 't', config: { maxAgeMs: 1000 }, ts: 1 });
  for (const [k, ts] of [['x', 100], ['y', 200], ['z', 300]] as const) run({ op: 'put', bucket: 't', key: k, value: Buffer.from(k), ts });
  t.equal(sm.oldestTs('t'), 100);
  t.match(run({ op: 'expire', bucket: 't', before: 200, ts: 1200 }), { ok: true, kind: 'purge', purged: 2 });
  t.same(sm.keys('t'), ['z']);
  t.match(run({ op: 'expire', bucket: 'b', before: 99_999, ts: 1200 }), { ok: true, purged: 0 }, 'no max_age: nothing expires');
  t.match(run({ op: 'bucket.create', bucket: 'bad', config: { maxAgeMs: 1000, duplicateWindowMs: 2000 }, ts: 1 }), { ok: false, code: KvErrorCode.badConfig });
});

t.test('determinism with Msg-Id, expectations, purges and expiries: replicas and a restored snapshot stay byte-identical', async (t) => {
  // Any committed sequence of these commands, applied on two replicas (one restarting from a snapshot midway),
  // leaves the same bytes: the duplicate window, the bucket sequences and what a purge or an expiry drops depend
  // only on the entries.
  const extraArb: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
    { weight: 4, arbitrary: fc.constant({}) },
    { weight: 2, arbitrary: fc.record({ msgId: fc.constantFrom('m1', 'm2', 'm3') }) },
    { weight: 1, arbitrary: fc.record({ expectLastSeq: fc.nat(12) }) },
    { weight: 1, arbitrary: fc.record({ hdrBytes: fc.nat(60) }) },
  );
  const opArb: fc.Arbitrary<KvCommand> = fc.oneof(
    // Times within a few windows of each other, so Msg-Ids repeat inside and outside the 1 s window.
    { weight: 8, arbitrary: fc.tuple(writeArb, extraArb, fc.nat(4000)).map(([w, x, ts]) => ({ ...w, ...x, ts }) as KvCommand) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('bucket.purge' as const), bucket: fc.constantFrom('a', 'b'), ts: tsArb, subject: fc.constantFrom('k1', 'k.*', 'sub.>', '>'), keep: fc.nat(3), seq: fc.nat(10) }, { requiredKeys: ['op', 'bucket', 'ts'] }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('expire' as const), bucket: fc.constantFrom('a', 'b'), before: fc.nat(4000), ts: fc.nat(4000) }) },
  );
  let purged = 0;
  let duplicates = 0;
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 60, size: 'max' }), fc.nat(60), (ops, cut) => {
      let x = new KvStateMachine(LIMITS);
      const y = new KvStateMachine(LIMITS);
      const init: KvCommand[] = [
        { op: 'bucket.create', bucket: 'a', config: { history: 3, maxAgeMs: 5000, duplicateWindowMs: 1000 }, ts: 1 },
        { op: 'bucket.create', bucket: 'b', config: { history: 2 }, ts: 1 },
      ];
      [...init, ...ops].forEach((cmd, i) => {
        const data = encodeKvCommand(cmd);
        const r = x.apply(i + 1, data);
        y.apply(i + 1, data);
        if (r.ok && r.kind === 'purge') purged += r.purged;
        if (r.ok && r.kind === 'duplicate') duplicates++;
        if (i === cut) {
          const restored = new KvStateMachine(LIMITS);
          restored.restore(x.snapshot());
          x = restored;
        }
      });
      return Buffer.compare(Buffer.from(x.snapshot()), Buffer.from(y.snapshot())) === 0;
    }),
    { seed: SEED, numRuns: 150 },
  );
  // Half the fewest over 300 seeds (purged 269, duplicates 53): the seed changes every run.
  t.ok(purged > 130, `${purged} entries purged or expired`);
  t.ok(duplicates > 25, `${duplicates} duplicate Msg-Ids`);
});

t.test('entry table: chains, values and slab compaction match a plain model; handed-out values never change', async (t) => {
  // Values of up to 300 KiB, so a few dozen writes fill 1 MiB slabs, leave them sparse (compaction moves the live
  // values) and take a slab of their own (> 256 KiB); a handed-out value is checked against its bytes at the end.
  const { EntryTable, slabBytes } = await import('../../store/kv/entry_table.js');
  const sizeArb = fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 64 }), fc.integer({ min: 40_000, max: 200_000 }), fc.integer({ min: 260_000, max: 300_000 }));
  const opArb = fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('append' as const), key: fc.constantFrom('a', 'b', 'c', 'd', 'e'), size: sizeArb, depth: fc.integer({ min: 1, max: 3 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), key: fc.constantFrom('a', 'b', 'c', 'd', 'e'), parity: fc.nat(1) }) },
  );
  let checked = 0;
  fc.assert(fc.property(fc.array(opArb, { minLength: 1, maxLength: 60 }), (ops) => {
    const table = new EntryTable();
    const model = new Map<string, { rev: number; value: Uint8Array }[]>();
    const handedOut: { view: Uint8Array; copy: Uint8Array }[] = [];
    let rev = 0;
    for (const op of ops) {
      const chain = model.get(op.key) ?? [];
      if (op.kind === 'append') {
        rev++;
        const value = new Uint8Array(op.size).fill(rev & 0xff);
        const drop = Math.max(0, chain.length + 1 - op.depth);
        table.append(op.key, { op: 0, value, revision: rev, index: rev, ts: rev, hdrBytes: 0 }, drop);
        chain.splice(0, drop);
        chain.push({ rev, value });
        model.set(op.key, chain);
        const view = table.value(table.latest(op.key));
        handedOut.push({ view, copy: view.slice() });
      } else {
        table.removeWhere(op.key, (row) => table.rev(row) % 2 === op.parity);
        const kept = chain.filter((e) => e.rev % 2 !== op.parity);
        if (kept.length === 0) model.delete(op.key);
        else model.set(op.key, kept);
      }
      for (const [k, want] of model) {
        const rows = table.chain(k);
        if (rows.length !== want.length) return false;
        for (let i = 0; i < rows.length; i++) {
          if (table.rev(rows[i]!) !== want[i]!.rev || !Buffer.from(table.value(rows[i]!)).equals(want[i]!.value)) return false;
        }
      }
      if (table.size !== model.size) return false;
      const lowest = Math.min(...[...model.values()].map((c) => c[0]!.rev));
      if (table.lowestRevision() !== lowest) return false;
      let live = 0;
      for (const c of model.values()) for (const e of c) live += e.value.length;
      // Compaction keeps slabs within twice the live values, plus the slab being filled and the one being left.
      if (table.slabBytesHeld() > 2 * live + 2 * slabBytes + 300_000) return false;
    }
    for (const h of handedOut) if (!Buffer.from(h.view).equals(h.copy)) return false;
    checked++;
    return true;
  }), { seed: SEED, numRuns: 150 });
  t.equal(checked, 150, 'every run matched the model');
});

t.test('a snapshot written over time equals the state when it began, whatever is applied meanwhile', async (t) => {
  // Values up to 200 KiB so the writes after the freeze fill, free and compact slabs the frozen rows point into.
  const { MsgpackWriter } = await import('../../store/kv/msgpack_writer.js');
  const opArb = fc.oneof(
    { weight: 6, arbitrary: fc.record({ op: fc.constant('put' as const), key: fc.constantFrom('a', 'b.c', 'd', 'e/f', 'g'), size: fc.oneof(fc.nat(40), fc.integer({ min: 50_000, max: 200_000 })) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constantFrom('delete' as const, 'purge' as const), key: fc.constantFrom('a', 'b.c', 'd') }) },
    { weight: 1, arbitrary: fc.constant({ op: 'bucket.purge' as const }) },
  );
  const apply = (sm: KvStateMachine, bucket: string, o: { op: string; key?: string; size?: number }, ts: number) => {
    const cmd: KvCommand = o.op === 'put' ? { op: 'put', bucket, key: o.key!, value: new Uint8Array(o.size!).fill(ts & 0xff), ts }
      : o.op === 'bucket.purge' ? { op: 'bucket.purge', bucket, ts } : { op: o.op as 'delete' | 'purge', bucket, key: o.key!, ts };
    sm.apply(sm.appliedIndex + 1, encodeKvCommand(cmd));
  };
  let runs = 0;
  fc.assert(fc.property(fc.array(opArb, { maxLength: 30 }), fc.array(opArb, { maxLength: 30 }), fc.boolean(), (before, after, deleteBucket) => {
    const sm = new KvStateMachine({ valueBytesMax: 256 * 1024 });
    for (const [b, history] of [['x', 3], ['y', 1]] as const) sm.apply(sm.appliedIndex + 1, encodeKvCommand({ op: 'bucket.create', bucket: b, config: { history, valueBytesMax: 256 * 1024, bytesMax: 1e9 }, ts: 1 }));
    before.forEach((o, i) => apply(sm, i % 2 === 0 ? 'x' : 'y', o, i));
    const expected = sm.snapshot();
    const build = sm.beginSnapshot();
    const w = new MsgpackWriter(16);
    const steps = build.write(w, 1);
    after.forEach((o, i) => {
      apply(sm, i % 2 === 0 ? 'x' : 'y', o, 1000 + i);
      steps.next(); // interleave: part of the image is written between writes
    });
    if (deleteBucket) sm.apply(sm.appliedIndex + 1, encodeKvCommand({ op: 'bucket.delete', bucket: 'x', ts: 9 }));
    while (!steps.next().done);
    runs++;
    return Buffer.compare(Buffer.from(w.finish()), Buffer.from(expected)) === 0;
  }), { seed: SEED, numRuns: 100 });
  t.equal(runs, 100, 'every image written over time equals the one taken at its start');
});

t.test('a snapshot image written in chunks has the bytes of one written in a single buffer', async (t) => {
  // Chunks of 1 KiB (the smallest allowed) so that values and bin32 headers fall across chunk boundaries, and values
  // over a chunk (up to 3 KiB) get chunks of their own.
  const { MsgpackWriter } = await import('../../store/kv/msgpack_writer.js');
  const item = fc.oneof(
    fc.record({ kind: fc.constant('uint' as const), n: fc.oneof(fc.nat(300), fc.maxSafeNat()) }),
    fc.record({ kind: fc.constant('str' as const), s: fc.string({ maxLength: 300 }) }),
    fc.record({ kind: fc.constant('bin' as const), size: fc.oneof(fc.nat(100), fc.integer({ min: 900, max: 3000 })) }),
    fc.record({ kind: fc.constant('nested' as const), size: fc.nat(2500) }),
  );
  let runs = 0;
  fc.assert(fc.property(fc.array(item, { maxLength: 60 }), (items) => {
    const write = (w: InstanceType<typeof MsgpackWriter>): void => {
      w.array(items.length);
      items.forEach((it, i) => {
        if (it.kind === 'uint') w.uint(it.n);
        else if (it.kind === 'str') w.str(it.s);
        else if (it.kind === 'bin') w.bin(new Uint8Array(it.size).fill(i & 0xff));
        else {
          const mark = w.beginBin32();
          w.raw(new Uint8Array(it.size).fill(0xc0));
          w.endBin32(mark);
        }
      });
    };
    const single = new MsgpackWriter(16);
    write(single);
    const chunked = new MsgpackWriter(16, 1024);
    write(chunked);
    const parts = chunked.finishParts();
    runs++;
    return chunked.length === single.length && Buffer.compare(Buffer.concat(parts), Buffer.from(single.finish())) === 0
      && Buffer.compare(Buffer.from(chunked.finish()), Buffer.from(single.finish())) === 0
      && parts.every((p, i) => i === parts.length - 1 || p.length <= 3100);
  }), { seed: SEED, numRuns: 200 });
  t.equal(runs, 200, 'every chunked image equals the single-buffer one');
});
