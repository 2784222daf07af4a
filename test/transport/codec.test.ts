// The route wire codec, the --routes parser, backoff and Ed25519 agreement: pure pieces, no sockets.
import t from 'tap';
import fc from 'fast-check';
import nacl from 'tweetnacl';
import { Packr } from 'msgpackr';
import { generateKeyPairSync, sign as nodeSign } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import {
  FrameParser, FrameError, RouteAddressError, backoffDelayMs, decodeFrameBody, encodeFrame, parseRoute, parseRoutes,
  verifyEd25519, snapChunkBytesMax, snapTotalBytesMax, type WireFrame,
} from '../../transport/index.js';

const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
t.comment(`fast-check seed ${seed} (replay: FC_SEED=${seed} npx tap test/transport/codec.test.ts)`);

const sample: WireFrame[] = [
  { kind: 'hello', version: 1, cluster: 'c', name: 'n1', identity: new Uint8Array(32).fill(7), nonce: new Uint8Array(32).fill(9),
    clusterSize: 3, posture: Buffer.from('posture'), user: 'route' },
  { kind: 'auth', signature: new Uint8Array(64).fill(1), passwordProof: new Uint8Array(32).fill(2) },
  { kind: 'refuse', code: 'posture', reason: 'no' },
  { kind: 'ping', seq: 1 },
  { kind: 'pong', seq: 4_000_000_000 },
  { kind: 'raft', data: { type: 'MsgApp', term: 5, entries: [{ index: 1, data: Buffer.from([1, 2, 3]) }] } },
  { kind: 'raft', data: null },
  { kind: 'interest_add', subject: 'orders.>' },
  { kind: 'interest_add', subject: 'work', queue: 'workers' },
  { kind: 'interest_remove', subject: 'work', queue: 'workers' },
  { kind: 'bus', subject: 'a.b', payload: Buffer.alloc(0) },
  { kind: 'bus', subject: 'a.b', reply: '_INBOX.1', headers: Buffer.from('NATS/1.0\r\n\r\n'), payload: Buffer.alloc(300, 0x61), queues: ['q1', 'q2'] },
  { kind: 'snap_chunk', transfer: 77, offset: 1024, total: 4096, crc: 0xdeadbeef, data: Buffer.alloc(700, 0x5a), message: [0, 'snap', 1, 2] },
  { kind: 'snap_ack', transfer: 77, received: 1724, refused: '' },
  { kind: 'snap_ack', transfer: 78, received: 0, refused: 'chunk at 0 fails its checksum' },
];

function parseAll(chunks: Uint8Array[], max?: number): WireFrame[] {
  const parser = new FrameParser(max);
  const out: WireFrame[] = [];
  for (const c of chunks) parser.push(c, (f) => out.push(f));
  return out;
}

// Decoded binaries are Buffers; compare through a normal form so Uint8Array vs Buffer does not matter.
function norm(frames: WireFrame[]): unknown {
  return JSON.parse(JSON.stringify(frames, (_k, v: unknown) =>
    v instanceof Uint8Array ? `bin:${Buffer.from(v).toString('hex')}`
      : v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' ? `bin:${Buffer.from((v as { data: number[] }).data).toString('hex')}` : v));
}

const stream = Buffer.concat(sample.map((f) => encodeFrame(f)));

t.test('frames round-trip through the parser in one chunk', async (t) => {
  t.same(norm(parseAll([stream])), norm(sample));
});

t.test('byte-at-a-time', async (t) => {
  const chunks = [...stream].map((b) => Uint8Array.of(b));
  t.same(norm(parseAll(chunks)), norm(sample));
});

t.test('split at every offset', async (t) => {
  for (let i = 0; i <= stream.length; i++) {
    const got = parseAll([stream.subarray(0, i), stream.subarray(i)]);
    if (!isDeepStrictEqual(norm(got), norm(sample))) {
      t.fail(`split at ${i} changed the frames`);
      return;
    }
  }
  t.pass(`all ${stream.length + 1} splits agree`);
});

t.test('buffer reuse: a later read does not clobber an earlier frame', async (t) => {
  const buf = Buffer.from(encodeFrame({ kind: 'bus', subject: 's', payload: Buffer.from('first') }));
  const parser = new FrameParser();
  const got: WireFrame[] = [];
  parser.push(buf, (f) => got.push(f));
  buf.fill(0x41); // the caller reuses its read buffer
  const second = encodeFrame({ kind: 'bus', subject: 's', payload: Buffer.from('second') });
  // And a frame that straddles two reads of the same reused buffer.
  const scratch = Buffer.alloc(second.length);
  second.copy(scratch, 0, 0, 10);
  parser.push(scratch.subarray(0, 10), (f) => got.push(f));
  scratch.fill(0);
  second.copy(scratch, 0, 10);
  parser.push(scratch.subarray(0, second.length - 10), (f) => got.push(f));
  scratch.fill(0x42);
  t.equal(got.length, 2);
  t.equal(Buffer.from((got[0] as { payload: Uint8Array }).payload).toString(), 'first');
  t.equal(Buffer.from((got[1] as { payload: Uint8Array }).payload).toString(), 'second');
});

t.test('oversize length is refused from the header, before any body byte is buffered', async (t) => {
  const parser = new FrameParser(1024);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(1025);
  t.throws(() => parser.push(header, () => t.fail('no frame')), { code: 'EFRAME_OVERSIZE' });
  t.equal(parser.bufferedBytes, 0);
  // The stream is unrecoverable: every later push reports the same error.
  t.throws(() => parser.push(encodeFrame({ kind: 'ping', seq: 1 }), () => t.fail('no frame')), { code: 'EFRAME_OVERSIZE' });
  const huge = Buffer.alloc(4);
  huge.writeUInt32BE(0xffffffff);
  t.throws(() => new FrameParser().push(huge, () => undefined), { code: 'EFRAME_OVERSIZE' });
  t.ok(encodeFrame({ kind: 'bus', subject: 's', payload: Buffer.alloc(1000) }).length > 1000);
});

t.test('malformed and truncated input', async (t) => {
  const frame = (body: Buffer) => { const h = Buffer.alloc(4); h.writeUInt32BE(body.length); return Buffer.concat([h, body]); };
  t.throws(() => parseAll([Buffer.alloc(4)]), { code: 'EFRAME_MALFORMED', message: /zero-length/ });
  t.throws(() => parseAll([frame(Buffer.from([0xc1]))]), { code: 'EFRAME_MALFORMED' }, 'reserved msgpack byte');
  t.throws(() => parseAll([frame(Buffer.from([0x93, 0x01]))]), { code: 'EFRAME_MALFORMED' }, 'truncated array');
  t.throws(() => parseAll([frame(Buffer.from([0x91, 0x63]))]), { code: 'EFRAME_MALFORMED', message: /unknown frame kind 99/ });
  t.throws(() => parseAll([frame(Buffer.from([0x01]))]), { code: 'EFRAME_MALFORMED', message: /not a non-empty array/ });
  t.throws(() => parseAll([frame(Buffer.concat([encodeFrame({ kind: 'ping', seq: 1 }).subarray(4), Buffer.from([0])]))]),
    { code: 'EFRAME_MALFORMED' }, 'trailing bytes after the value');
  t.throws(() => decodeFrameBody(encodeFrame({ kind: 'interest_add', subject: 'x' }).subarray(4).fill(0xa1, 1, 2)),
    { code: 'EFRAME_MALFORMED' }, 'wrong field type');
  const badHello = encodeFrame({ ...(sample[0] as Extract<WireFrame, { kind: 'hello' }>), identity: new Uint8Array(31) });
  t.throws(() => parseAll([badHello]), { code: 'EFRAME_MALFORMED', message: /identity is 31 bytes/ });
  // The incarnation field (10th, only when set): round-trips; a non-string, empty, control-character or oversized one is
  // refused; an 11-field hello too.
  const hello = sample[0] as Extract<WireFrame, { kind: 'hello' }>;
  const withInc = decodeFrameBody(encodeFrame({ ...hello, incarnation: '1796658100367-e189d08bdd59f1fa' }).subarray(4));
  t.equal((withInc as { incarnation?: string }).incarnation, '1796658100367-e189d08bdd59f1fa', 'incarnation round-trips');
  t.equal((decodeFrameBody(encodeFrame(hello).subarray(4)) as { incarnation?: string }).incarnation, undefined, 'absent stays absent (9 fields)');
  const helloArray = (extra: unknown[]): Buffer => Buffer.from(new Packr({ useRecords: false }).pack([1, 1, 'c', 'n1', new Uint8Array(32), new Uint8Array(32), 3, Buffer.from('p'), 'route', ...extra]));
  t.throws(() => decodeFrameBody(helloArray([7])), { code: 'EFRAME_MALFORMED', message: /incarnation is not a string/ });
  t.throws(() => decodeFrameBody(helloArray([''])), { code: 'EFRAME_MALFORMED', message: /incarnation is not 1-64 printable/ });
  t.throws(() => decodeFrameBody(helloArray(['a b'])), { code: 'EFRAME_MALFORMED', message: /incarnation is not 1-64 printable/ });
  t.throws(() => decodeFrameBody(helloArray(['x'.repeat(65)])), { code: 'EFRAME_MALFORMED', message: /incarnation is not 1-64 printable/ });
  t.throws(() => decodeFrameBody(helloArray(['a', 'b'])), { code: 'EFRAME_MALFORMED', message: /hello frame has 11 fields, expected 9/ });
  // Truncated: nothing is delivered and the partial frame waits for more bytes.
  const parser = new FrameParser();
  let n = 0;
  parser.push(stream.subarray(0, stream.length - 1), () => n++);
  t.equal(n, sample.length - 1);
  t.ok(parser.bufferedBytes > 0);
  parser.push(stream.subarray(stream.length - 1), () => n++);
  t.equal(n, sample.length);
  t.equal(parser.bufferedBytes, 0);
});

const frameArb: fc.Arbitrary<WireFrame> = fc.oneof(
  fc.record({ kind: fc.constant('ping' as const), seq: fc.nat() }),
  fc.record({ kind: fc.constant('interest_add' as const), subject: fc.string({ maxLength: 40 }) }),
  fc.record({ kind: fc.constant('interest_remove' as const), subject: fc.string(), queue: fc.string({ maxLength: 10 }) }),
  fc.record({ kind: fc.constant('raft' as const), data: fc.oneof(fc.string(), fc.integer(), fc.array(fc.nat({ max: 1000 }))) }),
  fc.record({ kind: fc.constant('bus' as const), subject: fc.string({ minLength: 1 }), payload: fc.uint8Array({ maxLength: 700 }) },
    { requiredKeys: ['kind', 'subject', 'payload'] }),
  fc.record({ kind: fc.constant('refuse' as const), code: fc.string(), reason: fc.string() }),
  fc.record({
    transfer: fc.nat(), offset: fc.nat({ max: 1 << 30 }), crc: fc.nat({ max: 0xffffffff }), data: fc.uint8Array({ maxLength: 700 }), spare: fc.nat(),
    message: fc.oneof(fc.constant(null), fc.array(fc.nat({ max: 1000 }), { maxLength: 5 })),
  })
    .map(({ transfer, offset, crc, data, spare, message }): WireFrame => ({ kind: 'snap_chunk', transfer, offset, total: offset + data.length + spare, crc, data, message })),
  fc.record({ kind: fc.constant('snap_ack' as const), transfer: fc.nat(), received: fc.nat(), refused: fc.string({ maxLength: 40 }) }),
);

t.test('snapshot chunk and ack frames: malformed, truncated and oversized ones are refused', async (t) => {
  const pk = new Packr({ useRecords: false });
  const chunk = (fields: Partial<Record<'transfer' | 'offset' | 'total' | 'crc' | 'data' | 'message', unknown>>): Buffer =>
    Buffer.from(pk.pack([14, fields.transfer ?? 1, fields.offset ?? 0, fields.total ?? 10, fields.crc ?? 5, 'data' in fields ? fields.data : new Uint8Array(10), fields.message ?? null]));
  t.same(norm([decodeFrameBody(chunk({}))]), norm([{ kind: 'snap_chunk', transfer: 1, offset: 0, total: 10, crc: 5, data: new Uint8Array(10), message: null }]), 'a well-formed chunk decodes');
  t.throws(() => decodeFrameBody(chunk({ data: 'text' })), { code: 'EFRAME_MALFORMED', message: /data is not binary/ });
  t.throws(() => decodeFrameBody(chunk({ offset: -1 })), { code: 'EFRAME_MALFORMED', message: /offset is not an unsigned integer/ });
  t.throws(() => decodeFrameBody(chunk({ crc: 2 ** 32 })), { code: 'EFRAME_MALFORMED', message: /crc is not a u32/ });
  t.throws(() => decodeFrameBody(chunk({ offset: 5 })), { code: 'EFRAME_MALFORMED', message: /passes the end of a 10-byte snapshot/ });
  t.throws(() => decodeFrameBody(chunk({ total: snapTotalBytesMax + 1 })), { code: 'EFRAME_MALFORMED', message: /exceeds the limit/ });
  const big = new Uint8Array(snapChunkBytesMax + 1);
  t.throws(() => decodeFrameBody(chunk({ data: big, total: big.length })), { code: 'EFRAME_MALFORMED', message: /snapshot chunk of \d+ bytes exceeds the limit/ }, 'a chunk over snapChunkBytesMax');
  t.doesNotThrow(() => decodeFrameBody(chunk({ data: big.subarray(1), total: big.length })), 'a chunk of exactly snapChunkBytesMax');
  t.throws(() => decodeFrameBody(Buffer.from(pk.pack([14, 1, 0, 10, 5, new Uint8Array(10)]))), { code: 'EFRAME_MALFORMED', message: /snap_chunk frame has 6 fields, expected 7/ });
  t.throws(() => decodeFrameBody(Buffer.from(pk.pack([15, 1, 0]))), { code: 'EFRAME_MALFORMED', message: /snap_ack frame has 3 fields, expected 4/ });
  t.throws(() => decodeFrameBody(Buffer.from(pk.pack([15, 1, 0, 7]))), { code: 'EFRAME_MALFORMED', message: /refused is not a string/ });
  // The hand-written encoder writes what msgpackr writes (plain msgpack either way); a transfer id past a u32 falls back to it.
  for (const transfer of [77, 2 ** 40]) {
    const f = { kind: 'snap_chunk' as const, transfer, offset: 70_000, total: 2 ** 31, crc: 0xfffffffe, data: Buffer.alloc(70_000, 3), message: [0, 'snap', [1, 2]] };
    t.equal(Buffer.compare(encodeFrame(f).subarray(4), Buffer.from(pk.pack([14, f.transfer, f.offset, f.total, f.crc, f.data, f.message]))), 0, `snap_chunk bytes as msgpackr's (transfer ${transfer})`);
  }
  t.equal(Buffer.compare(encodeFrame({ kind: 'snap_ack', transfer: 9, received: 1 << 20, refused: 'x' }).subarray(4), Buffer.from(pk.pack([15, 9, 1 << 20, 'x']))), 0, 'snap_ack bytes as msgpackr\'s');
  // Truncated: every proper prefix of a chunk frame waits for more bytes and delivers nothing.
  const whole = encodeFrame(sample.find((f) => f.kind === 'snap_chunk')!);
  for (let cut = 1; cut < whole.length; cut += 97) {
    const parser = new FrameParser();
    let n = 0;
    parser.push(whole.subarray(0, cut), () => n++);
    t.equal(n, 0, `nothing delivered from ${cut} of ${whole.length} bytes`);
  }
});

t.test('property: any frames, any split into chunks, same frames out', async (t) => {
  fc.assert(fc.property(fc.array(frameArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 20 }), (frames, cuts) => {
    const bytes = Buffer.concat(frames.map((f) => encodeFrame(f)));
    const points = [...new Set(cuts.map((c) => (bytes.length === 0 ? 0 : c % bytes.length)))].sort((a, b) => a - b);
    const chunks: Buffer[] = [];
    let last = 0;
    for (const p of points) { chunks.push(bytes.subarray(last, p)); last = p; }
    chunks.push(bytes.subarray(last));
    return isDeepStrictEqual(norm(parseAll(chunks)), norm(frames));
  }), { seed, numRuns: 300 });
  t.pass('property held');
});

t.test('bus frames: the hand-written codec and msgpackr agree both ways', async (t) => {
  const packr = new Packr({ useRecords: false });
  const busArb = fc.record({
    subject: fc.string({ minLength: 1, maxLength: 300, unit: 'grapheme' }),
    reply: fc.option(fc.string({ maxLength: 70000 }), { nil: undefined, freq: 2 }),
    headers: fc.option(fc.uint8Array({ maxLength: 300 }), { nil: undefined }),
    payload: fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.constant(new Uint8Array(70_000).fill(3))),
    queues: fc.option(fc.array(fc.string({ minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 20 }), { nil: undefined }),
  });
  fc.assert(fc.property(busArb, (b) => {
    const frame = { kind: 'bus' as const, subject: b.subject, payload: b.payload,
      ...(b.reply === undefined ? {} : { reply: b.reply }), ...(b.headers === undefined ? {} : { headers: b.headers }),
      ...(b.queues === undefined ? {} : { queues: b.queues }) };
    const fast = encodeFrame(frame);
    if (fast.readUInt32BE(0) !== fast.length - 4) return false;
    const asArray = [13, b.subject, b.reply ?? null, b.headers ?? null, b.payload, b.queues ?? null];
    // Hand-encoded bytes are plain msgpack that msgpackr reads as the same array...
    if (!isDeepStrictEqual(norm([packr.unpack(fast.subarray(4)) as WireFrame]), norm([asArray as unknown as WireFrame]))) return false;
    // ...and msgpackr's encoding of that array decodes (fast path or generic) to the same frame.
    const generic = packr.pack(asArray);
    return isDeepStrictEqual(norm([decodeFrameBody(generic)]), norm([frame])) && isDeepStrictEqual(norm([decodeFrameBody(fast.subarray(4))]), norm([frame]));
  }), { seed, numRuns: 300 });
  // A bus frame with a field of the wrong type falls through to the generic decoder, which refuses it.
  t.throws(() => decodeFrameBody(packr.pack([13, 'subj', 5, null, Buffer.from('x'), null])), { code: 'EFRAME_MALFORMED', message: /reply/ });
  t.throws(() => decodeFrameBody(packr.pack([13, 'subj', null, null, 'not-bin', null])), { code: 'EFRAME_MALFORMED', message: /payload/ });
  t.throws(() => decodeFrameBody(Buffer.from([0x96, 13, 0xa4, 0x61])), { code: 'EFRAME_MALFORMED' }, 'truncated');
  t.pass('property held');
});

t.test('raft frames: the hand-written encoder writes the bytes msgpackr writes, and falls back to it for other values', async (t) => {
  const packr = new Packr({ useRecords: false });
  // The values the node's Raft messages are made of (src/node/wire.ts), nested as deep as the encoder takes them.
  const plain = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: 'small', withCrossShrink: true },
      fc.constant(null), fc.boolean(), fc.integer({ min: 0, max: 0xffffffff }), fc.string({ maxLength: 40, unit: 'grapheme' }),
      fc.string({ minLength: 255, maxLength: 300 }), fc.uint8Array({ maxLength: 300 }), fc.constant(new Uint8Array(70_000).fill(5)),
      fc.array(tie('value'), { maxLength: 20 })),
  })).value;
  fc.assert(fc.property(plain, (data) => {
    const fast = encodeFrame({ kind: 'raft', data });
    const reference = packr.pack([10, data]);
    return fast.readUInt32BE(0) === fast.length - 4 && Buffer.compare(fast.subarray(4), reference) === 0 &&
      isDeepStrictEqual(norm([decodeFrameBody(fast.subarray(4))]), norm([{ kind: 'raft', data } as WireFrame]));
  }), { seed, numRuns: 300 });
  // An array of 16 or more elements (array16), a 300-entry batch shaped as the node sends it.
  const batch = [0, 'app', 1, 2, 7, 7, 41, Array.from({ length: 300 }, (_, i) => [7, 42 + i, 0, new Uint8Array(200).fill(i & 0xff)]), 341, false, 0, new Uint8Array(0), null];
  t.equal(Buffer.compare(encodeFrame({ kind: 'raft', data: batch }).subarray(4), packr.pack([10, batch])), 0, 'a 300-entry append');
  // Values outside the plain subset take msgpackr for the whole frame and still decode to what was sent.
  for (const data of [[-1], [1.5], [2 ** 32], [{ a: 1 }], [2 ** 40, 'x'], deepArray(20)]) {
    const bytes = encodeFrame({ kind: 'raft', data });
    t.same(norm([decodeFrameBody(bytes.subarray(4))]), norm([{ kind: 'raft', data } as WireFrame]), `fallback ${JSON.stringify(data).slice(0, 40)}`);
  }
});

function deepArray(depth: number): unknown[] {
  let v: unknown[] = [1];
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

t.test('fuzz: random bytes give frames or a FrameError, never another exception', async (t) => {
  let errors = 0;
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat({ max: 299 }), (bytes, cut) => {
    try {
      parseAll([bytes.subarray(0, cut), bytes.subarray(cut)], 4096);
    } catch (error) {
      if (!(error instanceof FrameError)) return false;
      errors++;
    }
    return true;
  }), { seed, numRuns: 2000 });
  t.ok(errors > 0, `${errors} inputs refused with FrameError`);
});

t.test('--routes parsing', async (t) => {
  t.same(parseRoutes('127.0.0.1:6222, nats-route://[::1]:7222,node-3.example.com:6222'), [
    { host: '127.0.0.1', port: 6222, url: 'nats-route://127.0.0.1:6222' },
    { host: '::1', port: 7222, url: 'nats-route://[::1]:7222' },
    { host: 'node-3.example.com', port: 6222, url: 'nats-route://node-3.example.com:6222' },
  ]);
  t.same(parseRoutes(''), []);
  t.equal(parseRoutes('a:1,nats-route://a:1/').length, 1, 'duplicates kept once');
  t.same(parseRoute('[::1]:1'), { host: '::1', port: 1, url: 'nats-route://[::1]:1' });
  for (const bad of ['nats-route://user:s3cret@127.0.10.1:6222', 'route:s3cret@127.0.10.1:6222', 'nats-route://user@h:1']) {
    const error = t.throws(() => parseRoutes(`127.0.0.1:1,${bad}`)) as unknown as RouteAddressError;
    t.equal(error.code, 'EROUTE_USERINFO', bad);
    t.match(error.message, /--cluster-user and --cluster-pass-file/);
    t.notMatch(error.message, /s3cret/, 'the password is never echoed');
  }
  for (const [bad, why] of [['h', /no port/], ['::1:6222', /without brackets/], ['[::1]6222', /without "\]:port"/],
    ['[127.0.10.1]:1', /not an IPv6/], ['h:0', /outside/], ['h:65536', /outside/], ['h:x', /no valid port/],
    ['nats://h:1', /unsupported scheme/], ['nats-route://h:1/path', /path/], ['a:1,,b:1', /empty/], ['bad_host!:1', /invalid host/],
  ] as const) {
    t.throws(() => parseRoutes(bad), { code: 'EROUTE_ADDRESS', message: why }, bad);
  }
});

t.test('backoff: exponential ceiling with full jitter, capped', async (t) => {
  const opts = (r: number) => ({ baseMs: 100, maxMs: 5000, random: () => r });
  t.same([1, 2, 3, 4, 5, 6, 7].map((a) => backoffDelayMs(a, opts(0.999999))), [199, 399, 799, 1599, 3199, 4999, 4999]);
  t.same([1, 2, 3].map((a) => backoffDelayMs(a, opts(0.5))), [100, 200, 400]);
  t.equal(backoffDelayMs(1000, opts(0.5)), 2500, 'huge attempt counts stay capped');
  t.equal(backoffDelayMs(3, opts(0)), 0);
});

t.test('Ed25519: tweetnacl signatures verify with node:crypto and vice versa', async (t) => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 300 }), (s, msg) => {
    const pair = nacl.sign.keyPair.fromSeed(s);
    const sig = nacl.sign.detached(msg, pair.secretKey);
    if (!verifyEd25519(pair.publicKey, msg, sig)) return false;
    const tampered = Uint8Array.from(sig);
    tampered[0]! ^= 1;
    if (verifyEd25519(pair.publicKey, msg, tampered)) return false;
    return nacl.sign.detached.verify(msg, sig, pair.publicKey);
  }), { seed, numRuns: 20 });
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(12);
  const msg = Buffer.from('route nonce');
  const sig = nodeSign(null, msg, privateKey);
  t.ok(nacl.sign.detached.verify(msg, sig, raw), 'node signature verifies with tweetnacl');
  t.ok(verifyEd25519(raw, msg, sig));
  t.notOk(verifyEd25519(raw.subarray(1), msg, sig), 'short key refused');
  t.notOk(verifyEd25519(raw, msg, sig.subarray(1)), 'short signature refused');
});
