// WAL, record framing, recovery, disk errors, snapshots and the durable Raft log.
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, copyFileSync, statSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  CorruptionError,
  crc32c,
  DiskError,
  encodeRecords,
  FormatVersionError,
  nodeFs,
  RaftStorage,
  RecordDecoder,
  StoreErrorCode,
  Wal,
  type RecordInput,
  type StoreFs,
} from '../../store/index.js';
import { findValidRecordAfter } from '../../store/wal/record.js';
import { pack } from '../../store/codec.js';
import { FORMAT_VERSION } from '../../store/format.js';
import { encodeSnapshotFile, encodeSnapshotFileParts, decodeSnapshotFile, SNAPSHOT_TYPE } from '../../store/snapshot.js';
import type { Entry } from '../../raft/types.js';
import type { Storage } from '../../raft/storage.js';
import { RaftError, RaftErrorCode } from '../../raft/errors.js';

const SEED = Number(process.env.SEED ?? Date.now() % 1_000_000_007);
t.comment(`seeded properties use SEED=${SEED} (rerun: SEED=${SEED} npx tap test/store/wal.test.ts)`);
const fcOpts = (numRuns: number) => ({ seed: SEED, numRuns });

interface Got {
  type: number;
  body: Buffer;
  offset: number;
}
const collect = (out: Got[]) => (type: number, body: Uint8Array, offset: number) => out.push({ type, body: Buffer.from(body), offset });

const rec = (type: number, text: string): RecordInput => ({ type, body: Buffer.from(text) });

t.test('crc32c matches the RFC 3720 / well-known vectors and continues across pieces', async (t) => {
  const h = (b: Uint8Array) => crc32c(b);
  t.equal(h(Buffer.from('123456789')), 0xe3069283);
  t.equal(h(Buffer.alloc(32)), 0x8a9136aa);
  t.equal(h(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  t.equal(h(Buffer.from([...Array(32).keys()])), 0x46dd794e);
  t.equal(h(Buffer.from([...Array(32).keys()].reverse())), 0x113fdb5c);
  t.equal(h(new Uint8Array(0)), 0);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(300), (b, cut) => {
      const k = Math.min(cut, b.length);
      return crc32c(b.subarray(k), crc32c(b.subarray(0, k))) === crc32c(b) && crc32c(b, 0, 0, k) === crc32c(b.subarray(0, k));
    }),
    fcOpts(300),
  );
  // Inputs of 256 bytes and more take the aligned-word path: against the plain bytewise definition, at every
  // alignment of the underlying memory and with ranges that start and end anywhere.
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let b = 0; b < 8; b++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  const bytewise = (b: Uint8Array, crc: number, s: number, e: number): number => {
    let c = ~crc >>> 0;
    for (let i = s; i < e; i++) c = (c >>> 8) ^ table[(c ^ b[i]!) & 0xff]!;
    return ~c >>> 0;
  };
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 256, maxLength: 3000 }), fc.nat(7), fc.nat(40), fc.nat(40), fc.nat(), (b, shift, from, cut, seed) => {
      const mem = new Uint8Array(b.length + 8);
      mem.set(b, shift);
      const view = mem.subarray(shift, shift + b.length);
      const end = view.length - Math.min(cut, view.length);
      const start = Math.min(from, end);
      return crc32c(view, seed >>> 0, start, end) === bytewise(view, seed >>> 0, start, end);
    }),
    fcOpts(300),
  );
});

t.test('record decoder: any split, byte at a time, buffer reuse, malformed input', async (t) => {
  const records = [rec(2, 'a'), rec(3, ''), rec(4, 'x'.repeat(300)), rec(255, 'last')];
  const bytes = encodeRecords(records);
  const expected = records.map((r) => ({ type: r.type, body: Buffer.from(r.body) }));
  const strip = (g: Got[]) => g.map(({ type, body }) => ({ type, body }));

  t.test('whole, byte at a time, split at every offset', async (t) => {
    const whole: Got[] = [];
    t.equal(new RecordDecoder().push(bytes, collect(whole)), null);
    t.same(strip(whole), expected);
    t.same(whole.map((g) => g.offset), [0, 10, 19, 328]);
    const one: Got[] = [];
    const d1 = new RecordDecoder();
    for (let i = 0; i < bytes.length; i++) t.equal(d1.push(bytes.subarray(i, i + 1), collect(one)), null);
    t.same(strip(one), expected);
    t.equal(d1.pendingBytes, 0);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const got: Got[] = [];
      const d = new RecordDecoder();
      d.push(bytes.subarray(0, cut), collect(got));
      d.push(bytes.subarray(cut), collect(got));
      if (JSON.stringify(strip(got)) !== JSON.stringify(expected)) t.fail(`split at ${cut}`);
    }
    t.pass('every split decodes the same records');
  });

  t.test('buffer reuse: a later read into the same buffer does not change earlier records', async (t) => {
    const buf = Buffer.alloc(64);
    const got: Got[] = [];
    const d = new RecordDecoder();
    for (let i = 0; i < bytes.length; i += 64) {
      buf.fill(0xee);
      const n = bytes.copy(buf, 0, i, Math.min(bytes.length, i + 64));
      d.push(buf.subarray(0, n), collect(got));
    }
    t.same(strip(got), expected);
    // The decoder's own straddle buffer must also not be shared between records.
    const views: Uint8Array[] = [];
    const d2 = new RecordDecoder();
    for (let i = 0; i < bytes.length; i += 7) d2.push(bytes.subarray(i, i + 7), (_ty, body) => views.push(body));
    t.same(views.map((v) => Buffer.from(v).toString()), records.map((r) => Buffer.from(r.body).toString()));
  });

  t.test('malformed: bad CRC, type 0, oversize length, truncated', async (t) => {
    const flipped = Buffer.from(bytes);
    flipped[15] ^= 0x01; // inside the 2nd record's CRC field (bytes 14..17)
    const got: Got[] = [];
    const f = new RecordDecoder().push(flipped, collect(got));
    t.equal(got.length, 1);
    t.match(f, { offset: 10, reason: /CRC mismatch/ });
    const zero = new RecordDecoder().push(Buffer.alloc(40), () => t.fail('no record in zeros'));
    t.match(zero, { offset: 0, reason: /type 0/ });
    const big = Buffer.from(bytes);
    big.writeUInt32LE(1000, 0);
    t.match(new RecordDecoder(999).push(big, () => undefined), { offset: 0, reason: /exceeds the limit of 999/ });
    // The limit is checked before buffering: a header split from its body still fails at once.
    const d = new RecordDecoder(999);
    t.equal(d.push(big.subarray(0, 5), () => undefined), null);
    t.match(d.push(big.subarray(5, 9), () => undefined), { reason: /exceeds/ });
    t.equal(d.pendingBytes, 0);
    const tr = new RecordDecoder();
    const got2: Got[] = [];
    tr.push(bytes.subarray(0, bytes.length - 1), collect(got2));
    t.equal(got2.length, 3);
    t.equal(tr.offset, 328);
    t.equal(tr.pendingBytes, bytes.length - 1 - 328);
    // After a failure the decoder stays failed.
    const fd = new RecordDecoder();
    fd.push(flipped, () => undefined);
    t.match(fd.push(bytes, () => t.fail('no record after failure')), { offset: 10 });
  });

  t.test('seeded property: random records under random splits round-trip; random bytes never throw', async (t) => {
    const arbRecords = fc.array(fc.record({ type: fc.integer({ min: 1, max: 255 }), body: fc.uint8Array({ maxLength: 200 }) }), { maxLength: 20 });
    fc.assert(
      fc.property(arbRecords, fc.array(fc.nat(), { maxLength: 10 }), (rs, cuts) => {
        const all = encodeRecords(rs);
        const points = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
        const got: Got[] = [];
        const d = new RecordDecoder();
        let prev = 0;
        for (const p of [...points, all.length]) {
          if (d.push(all.subarray(prev, p), collect(got)) !== null) return false;
          prev = p;
        }
        return d.pendingBytes === 0 && JSON.stringify(strip(got)) === JSON.stringify(rs.map((r) => ({ type: r.type, body: Buffer.from(r.body) })));
      }),
      fcOpts(400),
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 500 }), fc.nat(500), (junk, cut) => {
        const d = new RecordDecoder(1 << 16);
        let n = 0;
        d.push(junk.subarray(0, cut), () => n++);
        d.push(junk.subarray(cut), () => n++);
        // Random bytes forming a valid CRC-32C frame is a 2^-32 event.
        return n === 0 && findValidRecordAfter(junk, -1, 1 << 16) === -1;
      }),
      fcOpts(400),
    );
  });
});

/**
 * Writes `n` records through a WAL with small segments; returns the bodies. Without preallocation: the
 * recovery tests damage the file at its end, which must be the last record's end.
 */
async function fill(dir: string, n: number, segmentBytes = 512, fs: StoreFs = nodeFs): Promise<string[]> {
  const wal = await Wal.open(dir, { segmentBytes, fs, preallocateBytes: 0 }, () => undefined);
  const bodies: string[] = [];
  for (let i = 0; i < n; i++) {
    bodies.push(`record-${i}-${'z'.repeat(i % 17)}`);
    await wal.append([rec(2, bodies[i]!)]);
  }
  await wal.close();
  return bodies;
}

async function readAll(dir: string, opts: { segmentBytes?: number } = {}): Promise<{ bodies: string[]; wal: Wal }> {
  const bodies: string[] = [];
  const wal = await Wal.open(dir, opts, (_t, body) => bodies.push(Buffer.from(body).toString()));
  return { bodies, wal };
}

function copyDir(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const n of readdirSync(from)) copyFileSync(join(from, n), join(to, n));
}

t.test('WAL: group commit shares one durable write per turn; rollover; reopen', async (t) => {
  // The durable points: fdatasync calls, or (O_DSYNC segments) the writes themselves.
  const root = t.testdir();
  for (const syncMode of ['fdatasync', 'dsync'] as const) {
    const dir = join(root, syncMode);
    let syncs = 0;
    const counting: StoreFs = syncMode === 'fdatasync'
      ? { ...nodeFs, fdatasync: (fd) => (syncs++, nodeFs.fdatasync(fd)) }
      : { ...nodeFs, write: (fd, buf, off, len, pos) => (syncs++, nodeFs.write(fd, buf, off, len, pos)) };
    const wal = await Wal.open(dir, { fs: counting, segmentBytes: 1 << 20, syncMode, preallocateBytes: 0 }, () => undefined);
    const seqs = await Promise.all(Array.from({ length: 100 }, (_, i) => wal.append([rec(2, `r${i}`)])));
    t.equal(syncs, 2, `${syncMode}: one for the new segment, one for the whole batch of 100 appends`);
    t.same(new Set(seqs), new Set([1]));
    syncs = 0;
    await wal.append([rec(2, 'lone')]);
    t.equal(syncs, 1, `${syncMode}: a lone append costs one`);
    // Appends arriving while a batch is being synced share the next sync.
    syncs = 0;
    const first = wal.append([rec(2, 'b0')]);
    await Promise.resolve();
    await Promise.resolve();
    const more = Array.from({ length: 50 }, (_, i) => wal.append([rec(2, `c${i}`)]));
    await Promise.all([first, ...more]);
    t.ok(syncs <= 3, `${syncMode}: batched while syncing (${syncs} for 51 appends)`);
    await wal.close();
    await t.rejects(wal.append([rec(2, 'x')]), { code: StoreErrorCode.closed });
    const { bodies, wal: w2 } = await readAll(dir);
    t.equal(bodies.length, 152);
    t.equal(bodies[0], 'r0');
    t.equal(bodies[151], 'c49');
    await w2.close();
  }

  const d2 = t.testdir();
  const many = await fill(d2, 120, 512);
  const segs = readdirSync(d2).filter((n) => n.endsWith('.seg'));
  t.ok(segs.length > 3, `rolled over into ${segs.length} segments`);
  t.match(segs[0], /^0000000000000001\.seg$/);
  const again = await readAll(d2);
  t.same(again.bodies, many);
  t.equal(again.wal.repaired, null);
  await again.wal.close();
});

t.test('WAL recovery: torn tail at every byte offset, bit flips, damage elsewhere refused', async (t) => {
  const base = t.testdir();
  const src = join(base, 'src');
  const bodies = await fill(src, 40, 512);
  const segs = readdirSync(src).filter((n) => n.endsWith('.seg')).sort();
  const lastName = segs[segs.length - 1]!;
  const lastBytes = readFileSync(join(src, lastName));
  // Offset of the last record in the last segment.
  const offs: number[] = [];
  new RecordDecoder().push(lastBytes, (_ty, _b, off) => offs.push(off));
  const lastStart = offs[offs.length - 1]!;
  t.ok(offs.length >= 3, 'the last segment has a header and records');
  let k = 0;

  t.test('truncated at every offset inside the last record: cut back cleanly, appends go on', async (t) => {
    for (let cut = lastStart; cut < lastBytes.length; cut++) {
      const d = join(base, `cut-${k++}`);
      copyDir(src, d);
      writeFileSync(join(d, lastName), lastBytes.subarray(0, cut));
      const { bodies: got, wal } = await readAll(d);
      if (JSON.stringify(got) !== JSON.stringify(bodies.slice(0, -1))) t.fail(`cut at ${cut}: wrong records`);
      if (cut > lastStart && (wal.repaired?.offset !== lastStart || wal.repaired.droppedBytes !== cut - lastStart)) t.fail(`cut at ${cut}: repair not reported`);
      if (statSync(join(d, lastName)).size !== lastStart) t.fail(`cut at ${cut}: file not truncated`);
      if (cut % 5 === 0) {
        await wal.append([rec(2, 'after')]);
        await wal.close();
        const again = await readAll(d);
        if (JSON.stringify(again.bodies) !== JSON.stringify([...bodies.slice(0, -1), 'after'])) t.fail(`cut at ${cut}: append after repair lost`);
        await again.wal.close();
      } else await wal.close();
    }
    t.pass(`${lastBytes.length - lastStart} cut points`);
  });

  t.test('bit flips at sampled offsets of the last record: cut back cleanly', async (t) => {
    const rnd = fc.sample(fc.tuple(fc.integer({ min: lastStart, max: lastBytes.length - 1 }), fc.integer({ min: 0, max: 7 })), { seed: SEED, numRuns: 30 });
    for (const [off, bit] of rnd) {
      const d = join(base, `flip-${k++}`);
      copyDir(src, d);
      const b = Buffer.from(lastBytes);
      b[off]! ^= 1 << bit;
      writeFileSync(join(d, lastName), b);
      const { bodies: got, wal } = await readAll(d);
      if (JSON.stringify(got) !== JSON.stringify(bodies.slice(0, -1))) t.fail(`flip at ${off} bit ${bit}: wrong records`);
      if (wal.repaired?.offset !== lastStart) t.fail(`flip at ${off}: repair not at the record start`);
      await wal.close();
    }
    t.pass('30 flips');
  });

  t.test('a zero-filled tail (preallocated space, or an append the disk never wrote) is free space, not cut', async (t) => {
    const d = join(base, `zeros-${k++}`);
    copyDir(src, d);
    writeFileSync(join(d, lastName), Buffer.concat([lastBytes, Buffer.alloc(4096)]));
    const { bodies: got, wal } = await readAll(d);
    t.same(got, bodies);
    t.equal(wal.repaired, null, 'nothing reported as repaired');
    t.equal(statSync(join(d, lastName)).size, lastBytes.length + 4096, 'the space is kept');
    await wal.append([rec(2, 'into-the-zeros')]);
    await wal.close();
    const again = await readAll(d);
    t.same(again.bodies, [...bodies, 'into-the-zeros'], 'the next append lands at the end of the data');
    await again.wal.close();
  });

  t.test('a zeroed tail of an EARLIER segment is refused (only the last one may hold preallocated space)', async (t) => {
    const d = join(base, `early-zeros-${k++}`);
    copyDir(src, d);
    const firstName = segs[0]!;
    writeFileSync(join(d, firstName), Buffer.concat([readFileSync(join(src, firstName)), Buffer.alloc(512)]));
    await t.rejects(Wal.open(d, {}, () => undefined), { code: StoreErrorCode.corrupt, file: join(d, firstName), message: /later segments exist/ });
  });

  t.test('the same damage in an earlier segment is refused with file and offset', async (t) => {
    const firstName = segs[0]!;
    const firstBytes = readFileSync(join(src, firstName));
    const fo: number[] = [];
    new RecordDecoder().push(firstBytes, (_ty, _b, off) => fo.push(off));
    const victim = fo[fo.length - 1]!;
    for (const mode of ['truncate', 'flip'] as const) {
      const d = join(base, `early-${mode}-${k++}`);
      copyDir(src, d);
      const b = Buffer.from(firstBytes);
      if (mode === 'flip') b[victim + 10]! ^= 0x10;
      writeFileSync(join(d, firstName), mode === 'truncate' ? b.subarray(0, victim + 3) : b);
      const err = await Wal.open(d, {}, () => undefined).then(
        () => null,
        (e: unknown) => e,
      );
      t.ok(err instanceof CorruptionError, `${mode}: refused`);
      t.match(err, { code: StoreErrorCode.corrupt, file: join(d, firstName), offset: victim });
      t.match((err as Error).message, /damaged at byte offset \d+.*later segments exist.*data directory/s);
      t.equal(readFileSync(join(d, firstName)).length, b.length - (mode === 'truncate' ? b.length - victim - 3 : 0), 'nothing was changed on disk');
    }
  });

  t.test('damage in the last segment before valid records is refused, not cut', async (t) => {
    const d = join(base, `mid-${k++}`);
    copyDir(src, d);
    const b = Buffer.from(lastBytes);
    const victim = offs[1]!; // first record after the header
    b[victim + 12]! ^= 0x04;
    writeFileSync(join(d, lastName), b);
    await t.rejects(Wal.open(d, {}, () => undefined), { code: StoreErrorCode.corrupt, offset: victim, message: /valid record follows/ });
    t.equal(readFileSync(join(d, lastName)).length, b.length);
  });

  t.test('a missing middle segment is refused', async (t) => {
    t.ok(segs.length >= 3, 'the fixture has a middle segment');
    const d = join(base, `gap-${k++}`);
    copyDir(src, d);
    await nodeFs.unlink(join(d, segs[1]!));
    await t.rejects(Wal.open(d, {}, () => undefined), { code: StoreErrorCode.corrupt, file: join(d, segs[1]!), message: /missing/ });
  });

  t.test('a segment written by a newer format is refused', async (t) => {
    const d = join(base, `newer-${k++}`);
    mkdirSync(d);
    const { pack } = await import('../../store/codec.js');
    writeFileSync(join(d, '0000000000000001.seg'), encodeRecords([{ type: 1, body: pack({ format: 99, seq: 1 }) }]));
    await t.rejects(Wal.open(d, {}, () => undefined), FormatVersionError);
  });
});

/** An fs whose writes and syncs fail on demand, like a full or failing disk. */
function faultyFs() {
  // `syncFailures`: how many of the next fdatasync calls fail with EIO (a transient device error).
  const state = { write: null as null | 'ENOSPC' | 'EIO', syncFailures: 0, truncate: false, partial: true };
  const err = (code: string) => Object.assign(new Error(`${code}: injected`), { code });
  const fs: StoreFs = {
    ...nodeFs,
    write: async (fd, buf, off, len, pos) => {
      if (!state.write) return nodeFs.write(fd, buf, off, len, pos);
      if (state.partial && len > 1) {
        // A full disk often takes part of a write before refusing the rest.
        await nodeFs.write(fd, buf, off, Math.floor(len / 2), pos);
        state.partial = false;
        return Math.floor(len / 2);
      }
      throw err(state.write);
    },
    fdatasync: async (fd) => {
      if (state.syncFailures > 0) {
        state.syncFailures--;
        throw err('EIO');
      }
      return nodeFs.fdatasync(fd);
    },
    ftruncate: async (fd, len) => {
      if (state.truncate) throw err('EIO');
      return nodeFs.ftruncate(fd, len);
    },
  };
  return { fs, state };
}

t.test('disk errors: ENOSPC / EIO fail the batch, leave files consistent, later appends succeed', async (t) => {
  const dir = t.testdir();
  const { fs, state } = faultyFs();
  // Exact files (no preallocation): the sizes below are the data's. write + fdatasync: a failing sync is
  // one of the injected faults (with O_DSYNC the write itself fails; the same cut-back runs).
  const wal = await Wal.open(dir, { fs, segmentBytes: 1 << 20, preallocateBytes: 0, syncMode: 'fdatasync' }, () => undefined);
  await wal.append([rec(2, 'before-1'), rec(2, 'before-2')]);
  const seg = join(dir, '0000000000000001.seg');
  const sizeBefore = statSync(seg).size;

  state.write = 'ENOSPC';
  const batch = [wal.append([rec(2, 'lost-a'.repeat(50))]), wal.append([rec(2, 'lost-b')])];
  const results = await Promise.allSettled(batch);
  for (const r of results) {
    t.equal(r.status, 'rejected');
    if (r.status === 'rejected') {
      t.ok(r.reason instanceof DiskError);
      t.match(r.reason, { code: StoreErrorCode.noSpace, path: seg, message: /disk is full/ });
    }
  }
  t.equal(statSync(seg).size, sizeBefore, 'the partial write was cut back');
  await t.rejects(wal.append([rec(2, 'still-full')]), { code: StoreErrorCode.noSpace });

  state.write = null; // space returns
  await wal.append([rec(2, 'after-space')]);

  state.syncFailures = 1;
  await t.rejects(wal.append([rec(2, 'eio')]), { code: StoreErrorCode.io, message: /I\/O error/ });
  t.equal(statSync(seg).size, sizeBefore + 9 + 'after-space'.length, 'the unsynced batch was cut back');
  await wal.append([rec(2, 'after-eio')]);
  await wal.close();

  const { bodies, wal: w2 } = await readAll(dir);
  t.same(bodies, ['before-1', 'before-2', 'after-space', 'after-eio'], 'exactly the acknowledged records');
  t.equal(w2.repaired, null);
  await w2.close();

  // When the cut-back itself fails the WAL refuses further appends until a restart re-verifies it.
  const d2 = t.testdir();
  const f2 = faultyFs();
  const w3 = await Wal.open(d2, { fs: f2.fs }, () => undefined);
  await w3.append([rec(2, 'ok')]);
  f2.state.write = 'EIO';
  f2.state.truncate = true;
  await t.rejects(w3.append([rec(2, 'x'.repeat(100))]), { code: StoreErrorCode.io });
  f2.state.write = null;
  f2.state.truncate = false;
  await t.rejects(w3.append([rec(2, 'y')]), { code: StoreErrorCode.failed, message: /restart/ });
  await w3.close();
  const again = await readAll(d2);
  t.same(again.bodies, ['ok'], 'recovery cuts the half-written record');
  t.ok(again.wal.repaired);
  await again.wal.close();

  // O_DSYNC segments (the default): the durable write itself fails; the batch is refused and cut back.
  const d4 = t.testdir();
  const f4 = faultyFs();
  const w5 = await Wal.open(d4, { fs: f4.fs, syncMode: 'dsync' }, () => undefined);
  await w5.append([rec(2, 'kept')]);
  f4.state.write = 'EIO';
  await t.rejects(w5.append([rec(2, 'z'.repeat(80))]), { code: StoreErrorCode.io });
  f4.state.write = null;
  await w5.append([rec(2, 'kept-too')]);
  await w5.close();
  const r5 = await readAll(d4);
  t.same(r5.bodies, ['kept', 'kept-too'], 'dsync: exactly the acknowledged records');
  t.equal(r5.wal.repaired, null);
  await r5.wal.close();

  // ENOSPC while creating a segment: the segment is removed, the next append creates it.
  const d3 = t.testdir();
  const f3 = faultyFs();
  const w4 = await Wal.open(d3, { fs: f3.fs }, () => undefined);
  f3.state.write = 'ENOSPC';
  f3.state.partial = false;
  await t.rejects(w4.append([rec(2, 'a')]), { code: StoreErrorCode.noSpace });
  t.same(readdirSync(d3), []);
  f3.state.write = null;
  await w4.append([rec(2, 'b')]);
  await w4.close();
  t.same((await readAll(d3)).bodies, ['b']);
});

/** Record ends of a segment file, in order (the header's included). */
function recordEnds(file: Buffer): number[] {
  const ends: number[] = [];
  new RecordDecoder().push(file, (_ty, body, off) => ends.push(off + 9 + body.length));
  return ends;
}

/** What the disk holds if the process died now: a copy of `dir`, removed after the test. */
function crashImage(t: Test, dir: string): string {
  const d = `${dir}-crashed`;
  copyDir(dir, d);
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('WAL preallocation: zeroed space ahead of the data, reused after reopen, cut at rollover, ENOSPC falls back to appending', async (t) => {
  t.test('appends overwrite zeroed space; a reopen keeps the space and goes on at the data end', async (t) => {
    const dir = t.testdir();
    const wal = await Wal.open(dir, { preallocateBytes: 8192 }, () => undefined);
    const bodies = Array.from({ length: 40 }, (_, i) => `p${i}-${'q'.repeat(i * 7)}`); // ~6 KiB, more than one step
    for (const b of bodies.slice(0, 20)) await wal.append([rec(2, b)]);
    const seg = join(dir, '0000000000000001.seg');
    const file = readFileSync(seg);
    const ends = recordEnds(file);
    t.ok(file.length >= ends[ends.length - 1]! + 8192, `zeroed space ahead (${file.length} bytes in the file, data ends at ${ends[ends.length - 1]})`);
    t.ok(file.subarray(ends[ends.length - 1]!).every((b) => b === 0), 'after the data: zeros only');
    // A crash now (no close): recovery finds the zeroed space.
    const crashed = crashImage(t, dir);
    const rc = await readAll(crashed);
    t.same(rc.bodies, bodies.slice(0, 20));
    t.equal(rc.wal.repaired, null, 'the zeroed space is not a torn tail');
    t.equal(statSync(join(crashed, '0000000000000001.seg')).size, file.length, 'recovery did not cut the space');
    await rc.wal.close();
    await wal.close();
    t.equal(statSync(seg).size, ends[ends.length - 1], 'a clean close cuts the space');
    const r1 = await readAll(dir);
    t.same(r1.bodies, bodies.slice(0, 20));
    for (const b of bodies.slice(20)) await r1.wal.append([rec(2, b)]); // crosses the preallocated end at least once
    await r1.wal.close();
    const r2 = await readAll(dir);
    t.same(r2.bodies, bodies);
    await r2.wal.close();
  });

  t.test('a rollover cuts the previous segment to its data, so damage in an earlier segment stays detectable', async (t) => {
    const dir = t.testdir();
    const wal = await Wal.open(dir, { segmentBytes: 600, preallocateBytes: 4096 }, () => undefined);
    const bodies = Array.from({ length: 30 }, (_, i) => `r${i}-${'x'.repeat(40)}`);
    for (const b of bodies) await wal.append([rec(2, b)]);
    await wal.close();
    const segs = readdirSync(dir).filter((n) => n.endsWith('.seg')).sort();
    t.ok(segs.length >= 3, `${segs.length} segments`);
    for (const n of segs.slice(0, -1)) {
      const f = readFileSync(join(dir, n));
      t.equal(f.length, recordEnds(f).at(-1), `${n} ends with its last record`);
    }
    t.same((await readAll(dir)).bodies, bodies);
  });

  t.test('a stray byte in the zeroed space: cut back as a torn tail, no record lost', async (t) => {
    const live = t.testdir();
    const wal = await Wal.open(live, { preallocateBytes: 4096 }, () => undefined);
    for (let i = 0; i < 5; i++) await wal.append([rec(2, `s${i}`)]);
    const dir = crashImage(t, live); // before close, which would cut the zeroed space
    await wal.close();
    const seg = join(dir, '0000000000000001.seg');
    const f = readFileSync(seg);
    const end = recordEnds(f).at(-1)!;
    f[end + 100] = 0x5a;
    writeFileSync(seg, f);
    const r = await readAll(dir);
    t.same(r.bodies, ['s0', 's1', 's2', 's3', 's4']);
    t.equal(r.wal.repaired?.offset, end);
    await r.wal.append([rec(2, 's5')]);
    await r.wal.close();
    t.same((await readAll(dir)).bodies, ['s0', 's1', 's2', 's3', 's4', 's5']);
  });

  t.test('ENOSPC while zeroing: the batch is appended without preallocation and acknowledged', async (t) => {
    const dir = t.testdir();
    let refuseZeros = false;
    let refused = 0;
    const fs: StoreFs = {
      ...nodeFs,
      write: async (fd, buf, off, len, pos) => {
        if (refuseZeros && len >= 4096 && buf.subarray(off, off + len).every((b) => b === 0)) {
          refused++;
          throw Object.assign(new Error('ENOSPC: injected'), { code: 'ENOSPC' });
        }
        return nodeFs.write(fd, buf, off, len, pos);
      },
    };
    const wal = await Wal.open(dir, { fs, preallocateBytes: 4096 }, () => undefined);
    await wal.append([rec(2, 'first')]);
    refuseZeros = true;
    const bodies = Array.from({ length: 40 }, (_, i) => `n${i}-${'y'.repeat(300)}`); // past the zeroed 8 KiB
    for (const b of bodies) await wal.append([rec(2, b)]);
    t.equal(refused, 1, 'one refused preallocation, then appends until the next segment');
    const seg = join(dir, '0000000000000001.seg');
    const f = readFileSync(seg);
    t.equal(f.length, recordEnds(f).at(-1), 'the file holds exactly the data (the failed zeros were cut off)');
    await wal.close();
    t.same((await readAll(dir)).bodies, ['first', ...bodies]);
  });

  t.test('property: any appends, segment and preallocation sizes read back in order; only the last segment has spare space', async (t) => {
    const root = t.testdir();
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(fc.string({ maxLength: 200 }), { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 64, max: 4096 }),
        fc.integer({ min: 0, max: 3000 }),
        async (batches, segmentBytes, preallocateBytes) => {
          const dir = join(root, `p${run++}`);
          const wal = await Wal.open(dir, { segmentBytes, preallocateBytes }, () => undefined);
          await Promise.all(batches.map((b) => wal.append(b.map((x) => rec(2, x)))));
          await wal.close();
          const segs = readdirSync(dir).filter((n) => n.endsWith('.seg')).sort();
          for (const n of segs.slice(0, -1)) {
            const f = readFileSync(join(dir, n));
            if (f.length !== recordEnds(f).at(-1)) return false;
          }
          const r = await readAll(dir);
          await r.wal.close();
          return r.wal.repaired === null && JSON.stringify(r.bodies) === JSON.stringify(batches.flat());
        },
      ),
      fcOpts(60),
    );
  });
});

const ent = (index: number, term: number, text = `e${index}`): Entry => ({ index, term, type: 0, data: Buffer.from(text) });
const texts = (es: readonly Entry[]) => es.map((e) => `${e.index}/${e.term}/${Buffer.from(e.data).toString()}`);

t.test('snapshot files: CRC-checked, newest valid wins, damaged set aside', async (t) => {
  const s = { meta: { index: 7, term: 2, conf: { voters: [1, 2, 3], learners: [4] } }, data: Buffer.from('image') };
  const file = encodeSnapshotFile(s);
  const back = decodeSnapshotFile(file);
  t.same(typeof back === 'string' ? back : { ...back, data: Buffer.from(back.data) }, s);
  for (let cut = 0; cut < file.length; cut++) if (typeof decodeSnapshotFile(file.subarray(0, cut)) !== 'string') t.fail(`truncated at ${cut} accepted`);
  for (let i = 0; i < file.length; i++) {
    const b = Buffer.from(file);
    b[i]! ^= 0x20;
    if (typeof decodeSnapshotFile(b) !== 'string') t.fail(`flip at ${i} accepted`);
  }
  t.pass('every truncation and byte flip is refused');
  // The file is written in two parts (no copy of the image): the same bytes as one packed record, for every bin size.
  for (const bytes of [0, 5, 255, 256, 65_535, 65_536, 300_000]) {
    const big = { meta: { index: 2 ** 33, term: 70_000, conf: { voters: [1, 2, 3], learners: [] } }, data: Buffer.alloc(bytes, 0x5a) };
    const one = encodeRecords([{ type: SNAPSHOT_TYPE, body: pack([FORMAT_VERSION, big.meta.index, big.meta.term, [1, 2, 3], [], big.data]) }]);
    t.equal(Buffer.compare(Buffer.concat(encodeSnapshotFileParts(big)), one), 0, `${bytes}-byte image: parts equal the one-record encoding`);
  }
});

t.test('RaftStorage: append, conflicting suffix, hard state, restart, compaction, install', async (t) => {
  const dir = t.testdir();
  let st = await RaftStorage.open(dir, { segmentBytes: 400 });
  t.same([st.firstIndex(), st.lastIndex()], [1, 0]);
  t.same(st.initialState().hardState, { term: 0, vote: 0, commit: 0 });
  await st.save({ entries: [ent(1, 1), ent(2, 1), ent(3, 1), ent(4, 1)], hardState: { term: 1, vote: 1, commit: 2 } });
  // Log repair: a new leader's entry 3 in term 2 replaces 3..4.
  await st.save({ entries: [ent(3, 2, 'new3')], hardState: { term: 2, vote: 2, commit: 2 } });
  t.same(texts(st.entries(1, 4)), ['1/1/e1', '2/1/e2', '3/2/new3']);
  t.equal(st.term(3), 2);
  t.throws(() => st.term(4), { code: StoreErrorCode.unavailable });
  await t.rejects(st.save({ entries: [ent(9, 2)] }), { code: StoreErrorCode.badRequest });
  for (let i = 4; i <= 60; i++) await st.save({ entries: [ent(i, 2, `v${i}-${'p'.repeat(20)}`)], hardState: { term: 2, vote: 2, commit: i - 1 } });
  t.same(st.entries(10, 20, 60).length, 2, 'bytesMax limits the batch (at least one)');
  await st.close();

  st = await RaftStorage.open(dir, { segmentBytes: 400 });
  t.same(st.initialState().hardState, { term: 2, vote: 2, commit: 59 });
  t.same([st.firstIndex(), st.lastIndex()], [1, 60]);
  t.same(texts(st.entries(2, 4)), ['2/1/e2', '3/2/new3']);
  const segsBefore = st.walSegments().length;
  t.ok(segsBefore > 4, `${segsBefore} segments`);

  // Compaction: two snapshots (2 retained); segments wholly covered by the older one go.
  await st.createSnapshot(30, { voters: [1, 2, 3], learners: [] }, Buffer.from('sm@30'));
  await st.createSnapshot(50, { voters: [1, 2, 3], learners: [] }, Buffer.from('sm@50'));
  t.same([st.firstIndex(), st.lastIndex()], [51, 60]);
  t.throws(() => st.entries(50, 52), { code: StoreErrorCode.compacted });
  t.equal(st.term(50), 2);
  const segsAfter = st.walSegments().length;
  t.ok(segsAfter < segsBefore, `segments removed: ${segsBefore} -> ${segsAfter}`);
  await t.rejects(st.createSnapshot(60, { voters: [1], learners: [] }, Buffer.from('x')), { code: StoreErrorCode.badRequest }, 'not beyond commit');
  await st.close();

  st = await RaftStorage.open(dir, { segmentBytes: 400 });
  t.same([st.firstIndex(), st.lastIndex()], [51, 60]);
  t.equal(Buffer.from(st.snapshot().data).toString(), 'sm@50');
  t.same(st.initialState().confState, { voters: [1, 2, 3], learners: [] });
  await st.close();

  // The newest snapshot damaged: the older one wins, as the WAL still continues it.
  const snapDir = join(dir, 'snap');
  const newest = readdirSync(snapDir).filter((n) => n.endsWith('.snap')).sort().pop()!;
  const b = readFileSync(join(snapDir, newest));
  b[b.length - 2]! ^= 1;
  writeFileSync(join(snapDir, newest), b);
  st = await RaftStorage.open(dir, { segmentBytes: 400 });
  t.equal(Buffer.from(st.snapshot().data).toString(), 'sm@30');
  t.same([st.firstIndex(), st.lastIndex()], [31, 60]);
  t.ok(existsSync(join(snapDir, `${newest}.broken`)), 'damaged snapshot kept as .broken');

  // Install a leader snapshot that conflicts with the log: the log is void, old segments go.
  await st.applySnapshot({ meta: { index: 80, term: 5, conf: { voters: [1, 2], learners: [3] } }, data: Buffer.from('leader@80') });
  t.same([st.firstIndex(), st.lastIndex()], [81, 80]);
  t.equal(st.hardState().commit, 80);
  await st.save({ entries: [ent(81, 5), ent(82, 5)], hardState: { term: 5, vote: 0, commit: 81 } });
  await st.close();
  st = await RaftStorage.open(dir, { segmentBytes: 400 });
  t.same(texts(st.entries(81, 83)), ['81/5/e81', '82/5/e82']);
  t.equal(st.snapshot().meta.index, 80);
  t.same(st.initialState(), { hardState: { term: 5, vote: 0, commit: 81 }, confState: { voters: [1, 2], learners: [3] } });
  // A snapshot whose index and term the log holds keeps the entries after it.
  await st.applySnapshot({ meta: { index: 81, term: 5, conf: { voters: [1, 2], learners: [] } }, data: Buffer.from('leader@81') });
  t.same(texts(st.entries(82, 83)), ['82/5/e82']);
  await t.rejects(st.applySnapshot({ meta: { index: 70, term: 5, conf: { voters: [1], learners: [] } }, data: Buffer.from('old') }), { code: StoreErrorCode.badRequest });
  await st.close();
  st = await RaftStorage.open(dir, { segmentBytes: 400 });
  t.same(texts(st.entries(82, 83)), ['82/5/e82']);
  await st.close();
});

t.test('RaftStorage: a snapshot streamed to its file as it is written equals one built in memory', async (t) => {
  const { MsgpackWriter } = await import('../../store/kv/msgpack_writer.js');
  // ~3.5 MiB in pieces, with bin32 values whose length is patched after their chunk (1 MiB) went to the file.
  function* image(w: InstanceType<typeof MsgpackWriter>): Generator<void, void, void> {
    w.array(40);
    for (let i = 0; i < 40; i++) {
      const mark = w.beginBin32();
      for (let k = 0; k < 30; k++) w.bin(Buffer.alloc(3000, (i * 31 + k) & 0xff));
      w.endBin32(mark);
      yield;
    }
  }
  const expected = new MsgpackWriter(16);
  for (const _ of image(expected));
  const dir = t.testdir();
  let st = await RaftStorage.open(dir);
  await st.save({ entries: [ent(1, 1), ent(2, 1), ent(3, 1)], hardState: { term: 1, vote: 1, commit: 3 } });
  const conf = { voters: [1, 2, 3], learners: [] };
  t.equal(await st.createSnapshotStreamed(2, conf, image, { sliceMs: 0, stopped: () => true }), null, 'stopped: no snapshot');
  t.same(readdirSync(join(dir, 'snap')), [], 'a stopped snapshot leaves no file, not even its .tmp');
  const snap = await st.createSnapshotStreamed(2, conf, image, { sliceMs: 0, stopped: () => false });
  t.same(snap?.meta, { index: 2, term: 1, conf });
  t.same([st.firstIndex(), st.lastIndex()], [3, 3]);
  t.equal(Buffer.compare(Buffer.from(st.snapshot().data), Buffer.from(expected.finish())), 0, 'the image read back from the file is the one written');
  await st.close();
  st = await RaftStorage.open(dir);
  t.equal(st.snapshot().meta.index, 2, 'recovery takes the streamed file (its CRC checks)');
  t.equal(Buffer.compare(Buffer.from(st.snapshot().data), Buffer.from(expected.finish())), 0);
  await st.close();
});

t.test('RaftStorage: crash between writing an installed snapshot and its WAL marker', async (t) => {
  const dir = t.testdir();
  let st = await RaftStorage.open(dir);
  await st.save({ entries: [ent(1, 1), ent(2, 1), ent(3, 1)], hardState: { term: 1, vote: 1, commit: 1 } });
  await st.close();
  // The snapshot file is durable but the node died before the marker: the conflicting entries
  // after it must not survive (term 1 at index 2 != the snapshot's term 3).
  const { SnapshotFiles } = await import('../../store/snapshot.js');
  await new SnapshotFiles(nodeFs, join(dir, 'snap'), { info: () => undefined, warn: () => undefined }).save({
    meta: { index: 2, term: 3, conf: { voters: [1], learners: [] } },
    data: Buffer.from('s'),
  });
  st = await RaftStorage.open(dir);
  t.same([st.firstIndex(), st.lastIndex()], [3, 2]);
  t.equal(st.hardState().commit, 2);
  await st.close();
});

t.test('format marker: created, checked, a newer version refused with a clear message', async (t) => {
  const dir = t.testdir();
  const st = await RaftStorage.open(dir);
  await st.close();
  t.match(readFileSync(join(dir, 'FORMAT'), 'utf8'), /"format":1/);
  writeFileSync(join(dir, 'FORMAT'), JSON.stringify({ format: 2 }));
  const err = await RaftStorage.open(dir).catch((e: unknown) => e);
  t.ok(err instanceof FormatVersionError);
  t.match(err, { code: StoreErrorCode.formatVersion, found: 2, message: /format version 2.*supports up to 1/ });
  writeFileSync(join(dir, 'FORMAT'), 'garbage');
  await t.rejects(RaftStorage.open(dir), { code: StoreErrorCode.formatVersion, message: /not a valid format marker/ });
  const other = t.testdir({ 'unrelated.txt': 'x' });
  await t.rejects(RaftStorage.open(other), { code: StoreErrorCode.formatVersion, message: /no FORMAT marker/ });
});

t.test('limits: an oversize record is refused before it is queued', async (t) => {
  const wal = await Wal.open(t.testdir(), { bodyBytesMax: 100 }, () => undefined);
  await t.rejects(wal.append([rec(2, 'x'.repeat(101))]), { code: StoreErrorCode.badRequest, message: /101 bytes exceeds the limit of 100/ });
  await wal.append([rec(2, 'x'.repeat(100))]);
  await wal.close();
});

t.test('a real full disk: a 64 KiB tmpfs (root only; skipped otherwise)', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const { rmSync, mkdtempSync, rmdirSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  // Not t.testdir(): its removal would run before the unmount.
  const mnt = mkdtempSync(join(tmpdir(), 'membershipd-enospc-'));
  try {
    if (process.getuid?.() !== 0) throw new Error('not root');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { stdio: 'ignore' });
  } catch (err) {
    rmdirSync(mnt);
    // A skip, not a pass: the summary counts it as skipped, with the reason.
    t.skip(`cannot mount a tmpfs here (${String(err).slice(0, 80)}); the injected-fs test covers ENOSPC`, () => {});
    return;
  }
  t.teardown(() => {
    execFileSync('umount', [mnt], { stdio: 'ignore' });
    rmdirSync(mnt);
  });
  writeFileSync(join(mnt, 'filler'), Buffer.alloc(32 * 1024));
  const dir = join(mnt, 'wal');
  const wal = await Wal.open(dir, {}, () => undefined);
  const acked: string[] = [];
  let failure: unknown = null;
  for (let i = 0; i < 10_000 && !failure; i++) {
    const body = `r${i}-${'p'.repeat(500)}`;
    await wal.append([rec(2, body)]).then(
      () => acked.push(body),
      (e: unknown) => (failure = e),
    );
  }
  t.match(failure, { code: StoreErrorCode.noSpace });
  t.ok(acked.length > 10, `${acked.length} records fitted before ENOSPC`);
  const seg = join(dir, '0000000000000001.seg');
  const onDisk = readFileSync(seg);
  const d = new RecordDecoder();
  let n = 0;
  t.equal(d.push(onDisk, () => n++), null);
  t.same([d.offset, d.pendingBytes, n], [onDisk.length, 0, acked.length + 1], 'the segment holds exactly the header and the acknowledged records');
  await t.rejects(wal.append([rec(2, 'still full '.repeat(100))]), { code: StoreErrorCode.noSpace });
  rmSync(join(mnt, 'filler'));
  await wal.append([rec(2, 'after-space')]);
  await wal.close();
  const { bodies, wal: w2 } = await readAll(dir);
  t.same(bodies, [...acked, 'after-space'], 'exactly the acknowledged records, then the one after space returned');
  t.equal(w2.repaired, null, 'nothing torn: the failed batches were cut back');
  await w2.close();
});

t.test('one process per data directory: LOCK refuses a live owner, takes over a dead one', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const dir = t.testdir();
  const a = await RaftStorage.open(dir);
  await t.rejects(RaftStorage.open(dir), { code: StoreErrorCode.locked, message: new RegExp(`in use by process ${process.pid}`) });
  await a.close();
  t.notOk(existsSync(join(dir, 'LOCK')), 'released on close');
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  writeFileSync(join(dir, 'LOCK'), `${dead}\n`);
  const b = await RaftStorage.open(dir);
  t.equal(readFileSync(join(dir, 'LOCK'), 'utf8'), `${process.pid}\n`, 'a stale lock of a dead process is taken over');
  await b.close();
  // A store that refuses to start releases the lock it took.
  writeFileSync(join(dir, 'wal', '0000000000000001.seg'), 'garbage that is not a segment');
  writeFileSync(join(dir, 'wal', '0000000000000002.seg'), 'more');
  await t.rejects(RaftStorage.open(dir), { code: StoreErrorCode.corrupt });
  t.notOk(existsSync(join(dir, 'LOCK')));
});

t.test('RaftStorage is the read-only Storage raft/ reads, with raft/ range errors injected', async (t) => {
  const st = await RaftStorage.open(t.testdir(), {
    rangeErrors: { compacted: (m) => new RaftError(RaftErrorCode.compacted, m), unavailable: (m) => new RaftError(RaftErrorCode.unavailable, m) },
  });
  await st.save({ entries: [ent(1, 1), ent(2, 1), ent(3, 2)], hardState: { term: 2, vote: 1, commit: 2 } });
  await st.createSnapshot(1, { voters: [1], learners: [] }, Buffer.from('s'));
  const view: Storage = st; // a type error here means the two contracts drifted apart
  t.same([view.firstIndex(), view.lastIndex(), view.term(1), view.term(3)], [2, 3, 1, 2]);
  t.throws(() => view.term(0), { code: RaftErrorCode.compacted });
  t.ok((() => { try { view.entries(1, 2, 100); } catch (e) { return e instanceof RaftError; } return false; })(), 'compacted entries throw a RaftError');
  t.throws(() => view.entries(2, 5, 100), { code: RaftErrorCode.unavailable });
  t.same(texts(view.entries(2, 4, 0)), ['2/1/e2'], 'at least one entry whatever bytesMax');
  await st.close();
});

t.test('the vote survives a rollover cut after its header, then compaction of every older segment', async (t) => {
  const { encodeHeader, segmentName } = await import('../../store/wal/segment.js');
  const dir = t.testdir();
  let st = await RaftStorage.open(dir, { segmentBytes: 300, snapshotsRetained: 1 });
  for (let i = 1; i <= 20; i++) await st.save({ entries: [ent(i, 3)], hardState: { term: 3, vote: 2, commit: i } });
  const last = st.walSegments().pop()!.seq;
  await st.close();
  // A crash right after the new segment's header reached the disk, before its preamble did.
  writeFileSync(join(dir, 'wal', segmentName(last + 1)), encodeRecords([{ type: 1, body: encodeHeader(last + 1) }]));
  st = await RaftStorage.open(dir, { segmentBytes: 1 << 20, snapshotsRetained: 1 });
  await st.createSnapshot(20, { voters: [1, 2, 3], learners: [] }, Buffer.from('sm'));
  t.same(st.walSegments().map((s) => s.seq), [last + 1], 'every older segment removed');
  await st.close();
  st = await RaftStorage.open(dir);
  t.same(st.hardState(), { term: 3, vote: 2, commit: 20 });
  t.same([st.firstIndex(), st.lastIndex()], [21, 20]);
  await st.close();
});

t.test('a snapshot file of a newer format is refused, not set aside', async (t) => {
  const { pack } = await import('../../store/codec.js');
  const dir = t.testdir();
  const st = await RaftStorage.open(dir);
  await st.close();
  mkdirSync(join(dir, 'snap'), { recursive: true });
  const name = '0000000000000005-0000000000000001.snap';
  writeFileSync(join(dir, 'snap', name), encodeRecords([{ type: 5, body: pack([2, 5, 1, [1], [], Buffer.from('x')]) }]));
  await t.rejects(RaftStorage.open(dir), { code: StoreErrorCode.formatVersion, found: 2 });
  t.ok(existsSync(join(dir, 'snap', name)), 'left in place');
});

t.test('a batch torn after entries of a newer term: the term is adopted without a vote', async (t) => {
  const dir = t.testdir();
  let st = await RaftStorage.open(dir);
  await st.save({ entries: [ent(1, 1), ent(2, 1), ent(3, 1)], hardState: { term: 1, vote: 1, commit: 1 } });
  await st.save({ entries: [ent(3, 2, 'x3'), ent(4, 2, 'x4')], hardState: { term: 2, vote: 0, commit: 1 } });
  const seg = st.walSegments().pop()!.path;
  await st.close();
  const bytes = readFileSync(seg);
  const ends: number[] = [];
  new RecordDecoder().push(bytes, (_ty, body, off) => ends.push(off + 9 + body.length));
  // Records: header, hard state (written at open), e1 e2 e3 hs, e3' e4' hs'. Cut inside e4'.
  const cutAt = ends[ends.length - 3]! + 4; // inside e4'
  writeFileSync(seg, bytes.subarray(0, cutAt));
  st = await RaftStorage.open(dir);
  t.same(texts(st.entries(1, 4)), ['1/1/e1', '2/1/e2', '3/2/x3']);
  t.same(st.hardState(), { term: 2, vote: 0, commit: 1 });
  t.ok(st.recovery.walRepaired, 'the torn record was cut');
  await st.close();
});

t.test('a segment killed between its create and its header is removed and its number reused', async (t) => {
  const dir = t.testdir();
  await fill(dir, 30, 512);
  const segs = readdirSync(dir).filter((n) => n.endsWith('.seg')).sort();
  const next = Number(segs[segs.length - 1]!.slice(0, 16)) + 1;
  const empty = join(dir, `${String(next).padStart(16, '0')}.seg`);
  writeFileSync(empty, '');
  const { bodies, wal } = await readAll(dir, { segmentBytes: 512 });
  t.equal(bodies.length, 30);
  t.match(wal.repaired, { file: empty, offset: 0 });
  t.notOk(existsSync(empty));
  for (let i = 0; i < 30; i++) await wal.append([rec(2, `more-${i}-${'q'.repeat(30)}`)]);
  await wal.close();
  t.ok(existsSync(empty), 'the next rollover reused the number');
  const again = await readAll(dir);
  t.equal(again.bodies.length, 60, 'no gap: everything replays');
  await again.wal.close();
});
