// Unit tests of the KV API's parsers and decision functions: header blocks, API / KV subjects, publish headers →
// KV commands, get queries, stream and consumer configs, the local backend's watch, and the push-consumer engine's
// sequencing (contiguous consumer sequences across interest loss, flow control, heartbeats, queue overflow).
// Header blocks and subjects arrive whole (the NATS parser frames them), so "split" tests here are truncations and
// corruptions at every offset. Fuzz seeds are printed; replay with KV_SEED=<n>.
import t from 'tap';
import fc from 'fast-check';
import { KvStateMachine, type KvEntry } from '../../store/index.js';
import type { RouteMessage } from '../../src/nats/index.js';
import { createLocalKvBackend, kvCommandOf, parseApiSubject, parseHeaders, encodeHeaders, parseKvSubject } from '../../src/kv/index.js';
import { parseGetQuery } from '../../src/kv/message_get.js';
import { parseStreamCreate, bucketOverlaps } from '../../src/kv/streams.js';
import { defaultConsumerLimits, parseConsumerCreate, type ConsumerSpec } from '../../src/kv/consumer_spec.js';
import { ConsumerRegistry, type DeliveryPort } from '../../src/kv/consumers.js';
import { ackSubject, bucketOfStream, headerBlockBytesMax, headerValue, parseSeq, rfc3339, type ParsedHeaders } from '../../src/kv/wire.js';

const enc = new TextEncoder();
const seed = Number(process.env.KV_SEED ?? Date.now() % 2 ** 31);
t.comment(`fuzz seed ${seed} (replay: KV_SEED=${seed} npx tap test/kv/wire.test.ts)`);

const block = (s: string) => enc.encode(s);

t.test('parseHeaders: valid blocks, status lines, lookups', async (t) => {
  t.same(parseHeaders(new Uint8Array(0)), { status: 0, description: '', fields: [] });
  const h = parseHeaders(block('NATS/1.0\r\nKV-Operation: PURGE\r\nNats-Rollup:sub\r\nX:  a: b \r\n\r\n')) as ParsedHeaders;
  t.same(h.fields, [['KV-Operation', 'PURGE'], ['Nats-Rollup', 'sub'], ['X', 'a: b']]);
  t.equal(headerValue(h, 'kv-operation'), 'PURGE', 'names compare case-insensitively');
  t.equal(headerValue(h, 'missing'), undefined);
  t.same(parseHeaders(block('NATS/1.0 404 Message Not Found\r\n\r\n')), { status: 404, description: 'Message Not Found', fields: [] });
  t.same(parseHeaders(block('NATS/1.0 503\r\n\r\n')), { status: 503, description: '', fields: [] });
  const dup = parseHeaders(block('NATS/1.0\r\nA: 1\r\nA: 2\r\n\r\n')) as ParsedHeaders;
  t.equal(headerValue(dup, 'A'), '2', 'the last value wins');
});

t.test('parseHeaders: malformed, truncated, oversized input gets a reason, never a throw', async (t) => {
  const bad: [string, Uint8Array, RegExp][] = [
    ['no version line', block('HTTP/1.1\r\n\r\n'), /NATS\/1.0/],
    ['wrong version', block('NATS/1.1\r\n\r\n'), /NATS\/1.0/],
    ['no terminating empty line', block('NATS/1.0\r\nA: b\r\n'), /empty line/],
    ['LF only', block('NATS/1.0\nA: b\n\n'), /empty line/],
    ['line without a colon', block('NATS/1.0\r\nnocolon\r\n\r\n'), /no name/],
    ['empty name', block('NATS/1.0\r\n: v\r\n\r\n'), /no name/],
    ['bad name', block('NATS/1.0\r\nA B: v\r\n\r\n'), /invalid name/],
    ['bare CR in a value', block('NATS/1.0\r\nA: x\ry\r\n\r\n'), /bare CR/],
    ['bare LF in a value', block('NATS/1.0\r\nA: x\ny\r\n\r\n'), /bare CR or LF/],
    ['status not 3 digits', block('NATS/1.0 40\r\n\r\n'), /NATS\/1.0/],
    ['not UTF-8', Uint8Array.from([...enc.encode('NATS/1.0\r\nA: '), 0xff, 0xfe, 13, 10, 13, 10]), /UTF-8/],
    ['oversized', block(`NATS/1.0\r\nA: ${'x'.repeat(headerBlockBytesMax)}\r\n\r\n`), /exceeds/],
    ['too many fields', block(`NATS/1.0\r\n${'A: 1\r\n'.repeat(300)}\r\n`), /more than/],
  ];
  for (const [name, b, why] of bad) t.match(parseHeaders(b), why, name);
  const full = block('NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 12\r\nKV-Operation: DEL\r\n\r\n');
  for (let i = 1; i < full.length; i++) t.type(parseHeaders(full.subarray(0, i)), 'string', `truncated at ${i}`);
  for (let i = 0; i < full.length; i++) {
    for (const v of [0, 10, 13, 58, 0x80]) {
      const copy = full.slice();
      copy[i] = v;
      const r = parseHeaders(copy);
      t.ok(typeof r === 'string' || Array.isArray(r.fields), `byte ${i} := ${v} is handled`);
    }
  }
});

t.test('parseHeaders: keeps no view of its input (buffer reuse)', async (t) => {
  const buf = Buffer.from('NATS/1.0\r\nKV-Operation: DEL\r\n\r\n');
  const h = parseHeaders(buf) as ParsedHeaders;
  buf.fill(0x41);
  t.same(h.fields, [['KV-Operation', 'DEL']]);
});

t.test('parseHeaders: encode/parse round trip and random bytes (fast-check)', async (t) => {
  const name = fc.stringMatching(/^[A-Za-z0-9-]{1,20}$/);
  const value = fc.stringMatching(/^[ -~]{0,40}$/).map((s) => s.trim());
  fc.assert(
    fc.property(fc.array(fc.tuple(name, value), { maxLength: 20 }), fc.option(fc.integer({ min: 100, max: 599 })), (fields, code) => {
      const status = code === null ? undefined : { code, description: 'Some Status' };
      const parsed = parseHeaders(encodeHeaders(fields, status));
      if (typeof parsed === 'string') return false;
      return JSON.stringify(parsed.fields) === JSON.stringify(fields) && parsed.status === (code ?? 0);
    }),
    { seed, numRuns: 300 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.stringMatching(/^[\r\n:A-Za-z /.0-9]{0,80}$/), (bytes, text) => {
      for (const b of [bytes, enc.encode(`NATS/1.0\r\n${text}`), enc.encode(`NATS/1.0${text}\r\n\r\n`)]) {
        const r = parseHeaders(b);
        if (typeof r !== 'string' && !Array.isArray(r.fields)) return false;
      }
      return true;
    }),
    { seed, numRuns: 500 },
  );
  t.pass('no counterexample');
});

t.test('API subjects: every form, malformed ones refused', async (t) => {
  const good: [string, unknown][] = [
    ['$JS.API.INFO', { kind: 'info' }],
    ['$JS.API.STREAM.CREATE.KV_b', { kind: 'stream.create', stream: 'KV_b' }],
    ['$JS.API.STREAM.UPDATE.KV_b', { kind: 'stream.update', stream: 'KV_b' }],
    ['$JS.API.STREAM.INFO.KV_b', { kind: 'stream.info', stream: 'KV_b' }],
    ['$JS.API.STREAM.DELETE.KV_b', { kind: 'stream.delete', stream: 'KV_b' }],
    ['$JS.API.STREAM.PURGE.KV_b', { kind: 'stream.purge', stream: 'KV_b' }],
    ['$JS.API.STREAM.NAMES', { kind: 'stream.names' }],
    ['$JS.API.STREAM.LIST', { kind: 'stream.list' }],
    ['$JS.API.STREAM.MSG.GET.KV_b', { kind: 'stream.msg.get', stream: 'KV_b' }],
    ['$JS.API.STREAM.MSG.DELETE.KV_b', { kind: 'stream.msg.delete', stream: 'KV_b' }],
    ['$JS.API.DIRECT.GET.KV_b', { kind: 'direct.get', stream: 'KV_b', subject: undefined }],
    ['$JS.API.DIRECT.GET.KV_b.$KV.b.k.x', { kind: 'direct.get', stream: 'KV_b', subject: '$KV.b.k.x' }],
    ['$JS.API.CONSUMER.CREATE.KV_b', { kind: 'consumer.create', stream: 'KV_b', name: undefined, filter: undefined }],
    ['$JS.API.CONSUMER.CREATE.KV_b.oc_1', { kind: 'consumer.create', stream: 'KV_b', name: 'oc_1', filter: undefined }],
    ['$JS.API.CONSUMER.CREATE.KV_b.oc_1.$KV.b.>', { kind: 'consumer.create', stream: 'KV_b', name: 'oc_1', filter: '$KV.b.>' }],
    ['$JS.API.CONSUMER.DURABLE.CREATE.KV_b.d', { kind: 'consumer.durable.create', stream: 'KV_b', name: 'd' }],
    ['$JS.API.CONSUMER.INFO.KV_b.c', { kind: 'consumer.info', stream: 'KV_b', name: 'c' }],
    ['$JS.API.CONSUMER.DELETE.KV_b.c', { kind: 'consumer.delete', stream: 'KV_b', name: 'c' }],
    ['$JS.API.CONSUMER.NAMES.KV_b', { kind: 'consumer.names', stream: 'KV_b' }],
    ['$JS.API.CONSUMER.LIST.KV_b', { kind: 'consumer.list', stream: 'KV_b' }],
  ];
  for (const [s, want] of good) t.same(parseApiSubject(s), want, s);
  const badSubjects = [
    '', '$JS.API', '$JS.API.', '$JS.API.INFO.x', '$JS.API.STREAM', '$JS.API.STREAM.CREATE', '$JS.API.STREAM.CREATE.a.b',
    '$JS.API.STREAM.MSG.GET', '$JS.API.STREAM.NAMES.x', '$JS.API.DIRECT.GET', '$JS.API.CONSUMER.INFO.KV_b',
    '$JS.API.CONSUMER.CREATE', '$JS.API.CONSUMER.DURABLE.CREATE.KV_b', '$JS.API..INFO', '$JS.API.STREAM..x',
    '$JS.API.ACCOUNT.PURGE.x', '$JS.API.CONSUMER.MSG.NEXT.a.b', '$JS.FOO.INFO', 'JS.API.INFO',
  ];
  for (const s of badSubjects) t.equal(parseApiSubject(s), undefined, JSON.stringify(s));
  fc.assert(fc.property(fc.string({ maxLength: 80 }), (s) => {
    const r = parseApiSubject(`$JS.API.${s}`);
    return r === undefined || typeof r.kind === 'string';
  }), { seed, numRuns: 1000 });
});

t.test('KV subjects, stream names, sequences, timestamps, ack subjects', async (t) => {
  t.same(parseKvSubject('$KV.b.k'), { bucket: 'b', key: 'k' });
  t.same(parseKvSubject('$KV.b.k.x.y'), { bucket: 'b', key: 'k.x.y' });
  for (const s of ['$KV.b', '$KV.b.', '$KV..k', '$KV.', 'KV.b.k', '$kv.b.k']) t.equal(parseKvSubject(s), undefined, s);
  t.equal(bucketOfStream('KV_b-1_x'), 'b-1_x');
  for (const s of ['KV_', 'kv_b', 'B', 'KV_a.b', 'KV_a b']) t.equal(bucketOfStream(s), undefined, s);
  t.equal(parseSeq('0'), 0);
  t.equal(parseSeq('9007199254740991'), 9007199254740991);
  for (const s of ['', '-1', '1e3', '0x10', ' 1', '12345678901234567', '1.0']) t.equal(parseSeq(s), undefined, JSON.stringify(s));
  t.equal(rfc3339(0), '0001-01-01T00:00:00Z');
  t.equal(rfc3339(1_795_736_134_638), '2026-11-26T23:35:34.638Z');
  // nats.js parseInfo: 9 tokens, stream seq at 5, consumer seq at 6, timestamp ns at 7, pending at 8.
  const a = ackSubject('KV_b1', 'oc_x_1', 3, 1, 1_795_736_134_656, 1).split('.');
  t.same(a, ['$JS', 'ACK', 'KV_b1', 'oc_x_1', '1', '3', '1', '1795736134656000000', '1']);
});

t.test('publish headers → KV commands (what each KV call sends), refusals for what we cannot honour', async (t) => {
  const cmd = (hdr: string, payload = 'v') => kvCommandOf('b', 'k', 'KV_b', block(hdr), enc.encode(payload), 7);
  t.match(cmd(''), { op: 'put', bucket: 'b', key: 'k', ts: 7 });
  t.match(cmd('NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 0\r\n\r\n'), { op: 'update', revision: 0 });
  t.match(cmd('NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 42\r\n\r\n'), { op: 'update', revision: 42 });
  // hdrBytes: the header block's length, counted in the stored size as nats-server does.
  t.same(cmd('NATS/1.0\r\nKV-Operation: DEL\r\n\r\n', ''), { op: 'delete', bucket: 'b', key: 'k', ts: 7, hdrBytes: 31 });
  t.same(cmd('NATS/1.0\r\nKV-Operation: DEL\r\nNats-Expected-Last-Subject-Sequence: 5\r\n\r\n', ''), { op: 'delete', bucket: 'b', key: 'k', ts: 7, revision: 5, hdrBytes: 71 });
  t.same(cmd('NATS/1.0\r\nKV-Operation: PURGE\r\nNats-Rollup: sub\r\n\r\n', ''), { op: 'purge', bucket: 'b', key: 'k', ts: 7, hdrBytes: 51 });
  t.match(cmd('NATS/1.0\r\nNats-Expected-Stream: KV_b\r\n\r\n'), { op: 'put' });
  t.match(cmd('NATS/1.0\r\nNats-Msg-Id: m1\r\nNats-Expected-Last-Sequence: 3\r\n\r\n'), { op: 'put', msgId: 'm1', expectLastSeq: 3 });
  const refused: [string, number, RegExp][] = [
    ['NATS/1.0\r\nNats-Expected-Stream: WRONG\r\n\r\n', 10060, /expected stream does not match/],
    ['NATS/1.0\r\nNats-Msg-Id: \r\n\r\n', 10003, /Nats-Msg-Id must be 1\.\.256/],
    ['NATS/1.0\r\nNats-Expected-Last-Sequence: x\r\n\r\n', 10003, /Nats-Expected-Last-Sequence must be a decimal/],
    ['NATS/1.0\r\nNats-Expected-Last-Msg-Id: x\r\n\r\n', 10003, /not supported/],
    ['NATS/1.0\r\nNats-TTL: 5s\r\n\r\n', 10166, /per-message TTL/],
    ['NATS/1.0\r\nKV-Operation: NOPE\r\n\r\n', 10003, /unknown KV-Operation/],
    ['NATS/1.0\r\nNats-Rollup: all\r\nKV-Operation: PURGE\r\n\r\n', 10003, /Nats-Rollup/],
    ['NATS/1.0\r\nNats-Rollup: sub\r\n\r\n', 10003, /Nats-Rollup/],
    ['NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: abc\r\n\r\n', 10003, /decimal/],
    ['NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: -1\r\n\r\n', 10003, /decimal/],
    ['garbage', 10003, /bad request: header block/],
  ];
  for (const [hdr, code, why] of refused) {
    const r = cmd(hdr);
    t.match(r, { err_code: code, description: why }, JSON.stringify(hdr));
  }
});

t.test('get queries, stream configs, consumer configs', async (t) => {
  t.same(parseGetQuery({ seq: 3 }), { seq: 3 });
  t.same(parseGetQuery({ last_by_subj: '$KV.b.k' }), { last_by_subj: '$KV.b.k' });
  t.same(parseGetQuery({ next_by_subj: '$KV.b.>', seq: 2 }), { next_by_subj: '$KV.b.>', seq: 2 });
  for (const q of [null, [], 'x', { seq: -1 }, { seq: 1.5 }, { seq: '1' }, { last_by_subj: 1 }, { last_by_subj: 'a', seq: 1 }]) {
    t.equal(parseGetQuery(q), 'Bad Request', JSON.stringify(q));
  }
  t.equal(parseGetQuery({}), 'Empty Request');
  t.equal(parseGetQuery({ seq: 0 }), 'Empty Request');

  // What nats.js and nats.go send.
  const js = { name: 'KV_b1', retention: 'limits', max_msgs_per_subject: 5, max_bytes: -1, max_msg_size: -1, storage: 'file', subjects: ['$KV.b1.>'], discard: 'new', allow_direct: true, num_replicas: 1, allow_rollup_hdrs: true };
  const lim = { replicasMax: 1, ttl: false };
  t.match(parseStreamCreate('KV_b1', js, lim), { bucket: 'b1', config: { history: 5, maxAgeMs: 0, duplicateWindowMs: 120_000 } });
  // The config kept and echoed: the request plus nats-server's defaults, flags only as asked.
  t.same((parseStreamCreate('KV_b1', js, lim) as { stream: unknown }).stream, {
    name: 'KV_b1', subjects: ['$KV.b1.>'], retention: 'limits', max_consumers: -1, max_msgs: -1, max_bytes: -1, max_age: 0, max_msgs_per_subject: 5,
    max_msg_size: -1, discard: 'new', storage: 'file', num_replicas: 1, duplicate_window: 120e9, sealed: false, deny_delete: false, deny_purge: false,
    allow_rollup_hdrs: true, allow_direct: true, mirror_direct: false,
  }, 'nothing is added that was not asked');
  const go = { ...js, max_consumers: -1, max_msgs: -1, max_age: 0, duplicate_window: 120e9, deny_delete: true, mirror_direct: false, max_msg_size: 1024, max_bytes: 4096 };
  t.match(parseStreamCreate('KV_b1', go, lim), { bucket: 'b1', config: { history: 5, valueBytesMax: 1024, bytesMax: 4096 }, stream: { deny_delete: true, deny_purge: false, max_bytes: 4096 } });
  t.match(parseStreamCreate('KV_b1', { ...js, num_replicas: 3 }, { replicasMax: 3, ttl: false }), { stream: { num_replicas: 3 } });
  const refusals: [string, unknown, number][] = [
    ['KV_b1', 'x', 10025],
    ['KV_b1', { ...js, name: 'KV_b2' }, 10056],
    ['ORDERS', { name: 'ORDERS', subjects: ['orders.>'] }, 10052],
    ['KV_b1', { ...js, subjects: ['$KV.b1.x.>'] }, 10052],
    ['KV_b1', { ...js, max_age: 1e9 }, 10052],
    ['KV_b1', { ...js, max_msgs: 10 }, 10052],
    ['KV_b1', { ...js, mirror: { name: 'KV_x' } }, 10052],
    ['KV_b1', { ...js, retention: 'workqueue' }, 10052],
    ['KV_b1', { ...js, max_msgs_per_subject: 'five' }, 10052],
    ['KV_b1', { ...js, allow_msg_ttl: true }, 10052],
    ['KV_b1', { ...js, num_replicas: 3 }, 10074],
    ['KV_b1', { ...js, duplicate_window: -1 }, 10052],
  ];
  for (const [name, body, code] of refusals) t.match(parseStreamCreate(name, body, lim), { err_code: code }, JSON.stringify(body).slice(0, 60));
  t.match(parseStreamCreate('KV_b1', { ...js, num_replicas: 5 }, { replicasMax: 3, ttl: false }), { err_code: 10023 });

  const limits = { inactiveThresholdMs: 5000 };
  const name = () => 'GENERATD';
  const oc = {
    stream_name: 'KV_b', action: 'create', pedantic: false,
    config: { deliver_policy: 'last_per_subject', ack_policy: 'none', filter_subject: '$KV.b.>', flow_control: true, idle_heartbeat: 30e9, headers_only: true, inactive_threshold: 300e9, num_replicas: 1, max_deliver: 1, name: 'oc_x_1', deliver_subject: '_INBOX.d.1' },
  };
  const spec = parseConsumerCreate('KV_b', 'b', oc, 'oc_x_1', '$KV.b.>', name, limits) as ConsumerSpec;
  t.match(spec, { name: 'oc_x_1', policy: 'last_per_subject', heartbeatMs: 30000, inactiveMs: 300000, headersOnly: true, flowControl: true, filter: '$KV.b.>' });
  t.match(parseConsumerCreate('KV_b', 'b', { stream_name: 'KV_b', config: { deliver_subject: 'd', ack_policy: 'none' } }, undefined, undefined, name, limits), { name: 'GENERATD', filter: '>', policy: 'all', inactiveMs: 5000 });
  const c = (over: Record<string, unknown>, nameIn?: string, filterIn?: string) =>
    parseConsumerCreate('KV_b', 'b', { ...oc, config: { ...oc.config, ...over } }, nameIn, filterIn, name, limits);
  const bad: [Record<string, unknown>, number, string?, string?][] = [
    [{ deliver_subject: undefined }, 10012],
    [{ deliver_subject: '_INBOX.*' }, 10079],
    [{ ack_policy: 'explicit' }, 10012],
    [{ durable_name: 'd' }, 10012],
    [{ filter_subject: '$KV.other.>' }, 10093],
    [{}, 10131, 'oc_x_1', '$KV.b.k'],
    [{}, 10012, 'other_name'],
    [{ idle_heartbeat: 50e6 }, 10083],
    [{ idle_heartbeat: 0 }, 10108],
    [{ deliver_policy: 'by_start_sequence' }, 10012],
    [{ deliver_policy: 'sometimes' }, 10012],
    [{ name: 'a.b' }, 10012],
    [{ filter_subjects: ['$KV.b.a', '$KV.b.c'], filter_subject: undefined }, 10012],
  ];
  for (const [over, code, nameIn, filterIn] of bad) t.match(c(over, nameIn, filterIn), { err_code: code }, JSON.stringify(over));
  t.match(parseConsumerCreate('KV_b', 'b', { stream_name: 'KV_x', config: {} }, undefined, undefined, name, limits), { err_code: 10056 });
  t.match(parseConsumerCreate('KV_b', 'b', 'nope', undefined, undefined, name, limits), { err_code: 10025 });

  t.ok(bucketOverlaps('b', '$KV.b.k'));
  t.ok(bucketOverlaps('b', '$KV.*.k'));
  t.ok(bucketOverlaps('b', '>'));
  t.ok(bucketOverlaps('b', '$KV.>'));
  t.notOk(bucketOverlaps('b', '$KV.b'));
  t.notOk(bucketOverlaps('b', '$KV.c.>'));
  t.notOk(bucketOverlaps('b', 'other.>'));
});

t.test('local backend: revisions count per bucket; watch replays then follows with no gap', async (t) => {
  const sm = new KvStateMachine();
  const be = createLocalKvBackend(sm);
  t.match(await be.propose({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }), { ok: true, kind: 'bucket.create' });
  await be.propose({ op: 'bucket.create', bucket: 'other', config: {}, ts: 1 });
  const r = await be.propose({ op: 'put', bucket: 'b', key: 'k', value: enc.encode('1'), ts: 2 });
  t.match(r, { ok: true, entry: { revision: 1, index: 3 } }, 'the first write of a bucket is its revision 1, whatever the log index');
  await be.propose({ op: 'put', bucket: 'other', key: 'k', value: enc.encode('x'), ts: 2 });
  const seen: number[] = [];
  const stop = be.watch('b', 0, (e) => seen.push(e.revision));
  await be.propose({ op: 'put', bucket: 'b', key: 'j', value: enc.encode('2'), ts: 3 });
  stop();
  await be.propose({ op: 'put', bucket: 'b', key: 'j', value: enc.encode('3'), ts: 3 });
  t.same(seen, [1, 2], 'replayed revision 1, live revision 2, nothing of the other bucket, nothing after stop');
  t.equal(sm.appliedIndex, 6);
});

/** A delivery port whose subscriber can be switched off, recording what a client would receive. */
class RecordingPort implements DeliveryPort {
  subscribed = false;
  readonly got: RouteMessage[] = [];
  deliverAs(_subject: string, msg: RouteMessage): number {
    if (!this.subscribed) return 0;
    this.got.push(msg);
    return 1;
  }
  hasInterest(): boolean {
    return this.subscribed;
  }
}

const turn = () => new Promise((r) => setImmediate(r));
const seqs = (msgs: RouteMessage[]) => msgs.filter((m) => m.reply?.startsWith('$JS.ACK.')).map((m) => m.reply!.split('.').slice(5, 7).map(Number));

t.test('consumer engine: waiting keeps the initial batch; interest loss drops the queue and refills from the cursor', async (t) => {
  const sm = new KvStateMachine();
  const be = createLocalKvBackend(sm);
  await be.propose({ op: 'bucket.create', bucket: 'b', config: { history: 5 }, ts: 1 });
  for (const k of ['a', 'b', 'a']) await be.propose({ op: 'put', bucket: 'b', key: k, value: enc.encode(k), ts: 2 });
  const port = new RecordingPort();
  const reg = new ConsumerRegistry(be, port, { ...defaultConsumerLimits, tickMs: 10_000 });
  t.teardown(() => reg.close());
  const spec = parseConsumerCreate('KV_b', 'b', { config: { deliver_subject: 'd', deliver_policy: 'last_per_subject', idle_heartbeat: 1e9 } }, undefined, undefined, () => 'C1', defaultConsumerLimits) as ConsumerSpec;
  const c = reg.create(spec);
  if ('err_code' in c) throw new Error(c.description);
  await turn();
  t.equal(port.got.length, 0, 'nobody subscribed yet');
  await be.propose({ op: 'put', bucket: 'b', key: 'c', value: enc.encode('c'), ts: 3 });
  port.subscribed = true;
  reg.onInterest('d', 1);
  await turn();
  // last_per_subject at creation (b@2, a@3) then the later write c@4; pending counts down to 0.
  t.same(seqs(port.got), [[2, 1], [3, 2], [4, 3]]);
  t.same(port.got.map((m) => m.reply!.split('.')[8]), ['2', '1', '0']);
  // The subscriber goes away; writes meanwhile are not queued; a new subscriber gets them, consumer seqs contiguous.
  port.subscribed = false;
  reg.onInterest('d', -1);
  t.equal(c.state, 'detached', 'the heartbeat probe found no subscriber');
  await be.propose({ op: 'put', bucket: 'b', key: 'x', value: enc.encode('x'), ts: 4 });
  await be.propose({ op: 'delete', bucket: 'b', key: 'a', ts: 4 });
  t.equal(c.queue, null, 'no queue kept while detached');
  port.subscribed = true;
  reg.onInterest('d', 1);
  await turn();
  t.same(seqs(port.got).slice(3), [[5, 4], [6, 5]]);
  t.equal(port.got.at(-1)?.headers !== undefined && new TextDecoder().decode(port.got.at(-1)!.headers), 'NATS/1.0\r\nKV-Operation: DEL\r\n\r\n');
  // After a wholesale state replacement (snapshot install) the consumer re-reads from its cursor: nothing twice.
  await be.propose({ op: 'put', bucket: 'b', key: 'y', value: enc.encode('y'), ts: 5 });
  reg.resync();
  await turn();
  t.same(seqs(port.got).slice(5), [[7, 6]]);
});

t.test('consumer engine: entries purged or expired after they were queued are not delivered', async (t) => {
  const sm = new KvStateMachine();
  const be = createLocalKvBackend(sm);
  await be.propose({ op: 'bucket.create', bucket: 'b', config: { history: 5 }, ts: 1 });
  for (const k of ['a', 'b', 'a', 'c']) await be.propose({ op: 'put', bucket: 'b', key: k, value: enc.encode(k), ts: 2 });
  const port = new RecordingPort();
  const reg = new ConsumerRegistry(be, port, { ...defaultConsumerLimits, tickMs: 10_000 });
  t.teardown(() => reg.close());
  const spec = parseConsumerCreate('KV_b', 'b', { config: { deliver_subject: 'd' } }, undefined, undefined, () => 'C2', defaultConsumerLimits) as ConsumerSpec;
  const c = reg.create(spec);
  if ('err_code' in c) throw new Error(c.description);
  await turn();
  t.equal(port.got.length, 0, 'queued, nobody subscribed yet');
  t.match(await be.propose({ op: 'bucket.purge', bucket: 'b', subject: 'a', ts: 3 }), { ok: true, purged: 2 });
  port.subscribed = true;
  reg.onInterest('d', 1);
  await turn();
  t.same(seqs(port.got), [[2, 1], [4, 2]], 'b@2 and c@4 only; consumer sequences stay contiguous');
});

t.test('consumer engine: flow control pauses at the window and resumes on the reply; heartbeat names the stall', async (t) => {
  const sm = new KvStateMachine();
  const be = createLocalKvBackend(sm);
  await be.propose({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 });
  const big = new Uint8Array(1000);
  for (let i = 0; i < 10; i++) await be.propose({ op: 'put', bucket: 'b', key: `k${i}`, value: big, ts: 2 });
  const port = new RecordingPort();
  port.subscribed = true;
  const reg = new ConsumerRegistry(be, port, { ...defaultConsumerLimits, flowWindowBytes: 4000, tickMs: 10_000 });
  t.teardown(() => reg.close());
  const spec = parseConsumerCreate('KV_b', 'b', { config: { deliver_subject: 'd', flow_control: true, idle_heartbeat: 1e9 } }, undefined, undefined, () => 'FC', defaultConsumerLimits) as ConsumerSpec;
  const c = reg.create(spec);
  if ('err_code' in c) throw new Error(c.description);
  for (let i = 0; i < 5; i++) await turn();
  const data = () => port.got.filter((m) => m.reply?.startsWith('$JS.ACK.')).length;
  const fcReqs = () => port.got.filter((m) => m.reply?.startsWith('$JS.FC.'));
  t.equal(data(), 4, 'paused once 4000 bytes are unanswered');
  t.equal(fcReqs().length, 1, 'one flow-control request at half the window');
  t.equal(new TextDecoder().decode(fcReqs()[0]!.headers), 'NATS/1.0 100 FlowControl Request\r\n\r\n');
  c.heartbeat();
  const hb = new TextDecoder().decode(port.got.at(-1)!.headers);
  t.match(hb, /^NATS\/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 4\r\nNats-Last-Stream: \d+\r\nNats-Consumer-Stalled: \$JS\.FC\.KV_b\.FC\.1\r\n\r\n$/);
  reg.onFlowControl('$JS.FC.KV_b.FC.nope');
  for (let i = 0; i < 3; i++) await turn();
  t.equal(data(), 4, 'a reply to an unknown request changes nothing');
  let rounds = 0;
  while (data() < 10 && rounds++ < 20) {
    reg.onFlowControl(fcReqs().at(-1)!.reply!);
    for (let i = 0; i < 3; i++) await turn();
  }
  t.equal(data(), 10, 'everything delivered after the replies');
  t.same(seqs(port.got).map((s) => s[1]), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

t.test('consumer engine: a queue over its limit is dropped and refilled from the cursor, in order', async (t) => {
  const sm = new KvStateMachine();
  const be = createLocalKvBackend(sm);
  await be.propose({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 });
  const port = new RecordingPort();
  port.subscribed = true;
  const reg = new ConsumerRegistry(be, port, { ...defaultConsumerLimits, queueEntriesMax: 3, tickMs: 10_000 });
  t.teardown(() => reg.close());
  const spec = parseConsumerCreate('KV_b', 'b', { config: { deliver_subject: 'd', deliver_policy: 'new' } }, undefined, undefined, () => 'Q', defaultConsumerLimits) as ConsumerSpec;
  const c = reg.create(spec);
  if ('err_code' in c) throw new Error(c.description);
  for (let i = 0; i < 8; i++) await be.propose({ op: 'put', bucket: 'b', key: `k${i}`, value: enc.encode(String(i)), ts: 2 });
  t.equal(c.queue, null, 'overflowed');
  await turn();
  t.same(port.got.map((m) => m.subject), [0, 1, 2, 3, 4, 5, 6, 7].map((i) => `$KV.b.k${i}`));
  t.same(seqs(port.got).map((s) => s[1]), [1, 2, 3, 4, 5, 6, 7, 8]);
  // A bucket that disappears takes its consumers with it.
  await be.propose({ op: 'bucket.delete', bucket: 'b', ts: 3 });
  reg.deleteBucket('b');
  t.equal(reg.size, 0);
  const entries: KvEntry[] = sm.changesSince(0);
  t.equal(entries.length, 0);
});
