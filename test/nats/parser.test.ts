// Parser, subject trie and NKey encoding: the pure pieces under the NATS server.
// Property tests are seeded: a failure prints the seed; rerun with FC_SEED=<seed> npx tap test/nats/parser.test.ts
import t from 'tap';
import fc from 'fast-check';
import { fromPublic } from '@nats-io/nkeys';
import { Parser, type ParseFailure, type ParserHandler, type PubArgs } from '../../src/nats/parser.js';
import { Sublist, matchLiteral } from '../../src/nats/sublist.js';
import { subjectMatches } from '../../src/nats/subject.js';
import { newNonce, newServerId } from '../../src/nats/nkey.js';
import { decodePublicKey, isValidPublicKey } from '../../src/auth/nkeys.js';

const seed = Number(process.env.FC_SEED ?? Date.now() % 2_147_483_647);
t.comment(`fast-check seed ${seed} (rerun: FC_SEED=${seed} npx tap test/nats/parser.test.ts)`);
const fcOpts = { seed, numRuns: 300 };

type Ev =
  | { op: 'connect'; json: string }
  | { op: 'pub'; subject: string; reply: string | undefined; hdr: number; data: string }
  | { op: 'sub'; subject: string; queue: string | undefined; sid: string }
  | { op: 'unsub'; sid: string; max: number }
  | { op: 'ping' }
  | { op: 'pong' }
  | { op: 'fail'; failure: ParseFailure };

class Recorder implements ParserHandler {
  events: Ev[] = [];
  onConnect(json: string): void { this.events.push({ op: 'connect', json }); }
  onPub(p: PubArgs): void {
    this.events.push({
      op: 'pub', subject: p.subject, reply: p.reply(), hdr: p.headerBytes,
      data: p.data.toString('latin1', p.dataStart, p.dataStart + p.size),
    });
  }
  onSub(subject: string, queue: string | undefined, sid: string): void { this.events.push({ op: 'sub', subject, queue, sid }); }
  onUnsub(sid: string, max: number): void { this.events.push({ op: 'unsub', sid, max }); }
  onPing(): void { this.events.push({ op: 'ping' }); }
  onPong(): void { this.events.push({ op: 'pong' }); }
  onParseFailure(failure: ParseFailure): void { this.events.push({ op: 'fail', failure }); }
}

const limits = { maxControlLineBytes: 4096, maxPayloadBytes: 1 << 20 };

function newParser(opts: { headers?: boolean; connectRequired?: boolean; limits?: typeof limits } = {}): { p: Parser; r: Recorder } {
  const r = new Recorder();
  const p = new Parser(r, opts.limits ?? limits);
  p.headersAllowed = opts.headers ?? true;
  p.connectRequired = opts.connectRequired ?? false;
  return { p, r };
}

function parseChunks(chunks: Buffer[], opts?: Parameters<typeof newParser>[0]): Ev[] {
  const { p, r } = newParser(opts);
  for (const c of chunks) p.parse(c);
  return r.events;
}

/** Feeds every chunk through one shared buffer that is overwritten with junk after each parse() call. */
function parseReusing(chunks: Buffer[]): Ev[] {
  const { p, r } = newParser();
  const shared = Buffer.alloc(Math.max(1, ...chunks.map((c) => c.length)));
  for (const c of chunks) {
    c.copy(shared);
    p.parse(shared.subarray(0, c.length));
    shared.fill(0x58);
  }
  return r.events;
}

function splitAt(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of points) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  out.push(buf.subarray(prev));
  return out;
}

// ---- generators: a valid op stream with its expected events ----
const token = fc.stringMatching(/^[A-Za-z0-9_$-]{1,6}$/);
const subjectArb = fc.array(token, { minLength: 1, maxLength: 4 }).map((ts) => ts.join('.'));
const wildSubjectArb = fc.array(fc.oneof(token, fc.constant('*')), { minLength: 1, maxLength: 4 })
  .chain((ts) => fc.boolean().map((gt) => (gt ? [...ts, '>'] : ts).join('.')));
const sep = fc.stringMatching(/^[ \t]{1,3}$/);
const eol = fc.constantFrom('\r\n', '\n');
const caseOf = (name: string) => fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length })
  .map((bs) => [...name].map((ch, i) => (bs[i] ? ch.toLowerCase() : ch.toUpperCase())).join(''));
const payloadArb = fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a).toString('latin1'));

interface Piece { text: string; ev: Ev }

const opArb: fc.Arbitrary<Piece> = fc.oneof(
  fc.tuple(caseOf('pub'), sep, subjectArb, fc.option(fc.tuple(sep, subjectArb), { nil: undefined }), sep, eol, payloadArb)
    .map(([n, s1, subj, reply, s2, e, data]) => ({
      text: `${n}${s1}${subj}${reply ? reply[0] + reply[1] : ''}${s2}${data.length}${e}${data}\r\n`,
      ev: { op: 'pub', subject: subj, reply: reply?.[1], hdr: -1, data } as Ev,
    })),
  fc.tuple(caseOf('hpub'), subjectArb, fc.option(subjectArb, { nil: undefined }), payloadArb, payloadArb)
    .map(([n, subj, reply, hdr, body]) => ({
      text: `${n} ${subj} ${reply ? reply + ' ' : ''}${hdr.length} ${hdr.length + body.length}\r\n${hdr}${body}\r\n`,
      ev: { op: 'pub', subject: subj, reply, hdr: hdr.length, data: hdr + body } as Ev,
    })),
  fc.tuple(caseOf('sub'), sep, wildSubjectArb, fc.option(token, { nil: undefined }), fc.nat(99999), eol)
    .map(([n, s, subj, q, sid, e]) => ({
      text: `${n}${s}${subj} ${q === undefined ? '' : q + ' '}${sid}${e}`,
      ev: { op: 'sub', subject: subj, queue: q, sid: String(sid) } as Ev,
    })),
  fc.tuple(caseOf('unsub'), fc.nat(999), fc.option(fc.integer({ min: 1, max: 99999 }), { nil: undefined }), eol)
    .map(([n, sid, max, e]) => ({
      text: `${n} ${sid}${max === undefined ? '' : ' ' + max}${e}`,
      ev: { op: 'unsub', sid: String(sid), max: max ?? -1 } as Ev,
    })),
  fc.tuple(caseOf('ping'), eol).map(([n, e]) => ({ text: `${n}${e}`, ev: { op: 'ping' } as Ev })),
  fc.tuple(caseOf('pong'), eol).map(([n, e]) => ({ text: `${n}${e}`, ev: { op: 'pong' } as Ev })),
  fc.tuple(caseOf('connect'), fc.boolean(), fc.string({ maxLength: 20 })).map(([n, v, name]) => {
    const json = JSON.stringify({ verbose: v, name });
    return { text: `${n} ${json}\r\n`, ev: { op: 'connect', json } as Ev };
  }),
);
const streamArb = fc.array(opArb, { minLength: 1, maxLength: 25 }).map((pieces) => ({
  bytes: Buffer.from(pieces.map((p) => p.text).join(''), 'latin1'),
  events: pieces.map((p) => p.ev),
}));

t.test('parser: valid op streams', async (t) => {
  t.test('whole, random splits, byte at a time and buffer reuse all give the same ops', async (t) => {
    fc.assert(
      fc.property(streamArb, fc.array(fc.nat(), { maxLength: 12 }), ({ bytes, events }, cuts) => {
        const chunks = splitAt(bytes, cuts);
        const whole = parseChunks([bytes]);
        const split = parseChunks(chunks);
        const reused = parseReusing(chunks);
        const single = parseChunks([...bytes].map((b) => Buffer.from([b])));
        return JSON.stringify(whole) === JSON.stringify(events) && JSON.stringify(split) === JSON.stringify(events) &&
          JSON.stringify(reused) === JSON.stringify(events) && JSON.stringify(single) === JSON.stringify(events);
      }),
      fcOpts,
    );
    t.pass('property held');
  });

  t.test('a split at every offset of a mixed stream', async (t) => {
    const text = 'CONNECT {"verbose":false}\r\nSUB foo.* q 1\r\nPUB foo.a reply.x 5\r\nhello\r\n' +
      'HPUB foo.b 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUNSUB 1 3\r\nPING\r\npong\nPUB e 0\r\n\r\n';
    const bytes = Buffer.from(text);
    const expected = JSON.stringify(parseChunks([bytes]));
    t.equal(parseChunks([bytes]).length, 8);
    let bad = -1;
    for (let a = 0; a <= bytes.length && bad < 0; a++) {
      for (let b = a; b <= bytes.length; b++) {
        const chunks = [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)];
        if (JSON.stringify(parseChunks(chunks)) !== expected || JSON.stringify(parseReusing(chunks)) !== expected) {
          bad = a * 10000 + b;
          break;
        }
      }
    }
    t.equal(bad, -1, 'every two-cut split parses identically');
  });

  t.test('truncated streams emit exactly the completed ops and no failure', async (t) => {
    fc.assert(
      fc.property(streamArb, fc.nat(), ({ bytes, events }, cut) => {
        const prefix = bytes.subarray(0, cut % (bytes.length + 1));
        const got = parseChunks([prefix]);
        if (got.some((e) => e.op === 'fail')) return false;
        return JSON.stringify(got) === JSON.stringify(events.slice(0, got.length));
      }),
      fcOpts,
    );
    t.pass('property held');
  });

  t.test('payload views stay valid only as long as needed: a split payload is copied', async (t) => {
    const { p, r } = newParser();
    const a = Buffer.from('PUB x 10\r\n01234');
    p.parse(a);
    a.fill(0);
    p.parse(Buffer.from('56789\r\n'));
    t.same(r.events, [{ op: 'pub', subject: 'x', reply: undefined, hdr: -1, data: '0123456789' }]);
  });
});

t.test('parser: malformed input', async (t) => {
  const cases: [string, string, ParseFailure | 'none', Parameters<typeof newParser>[0]?][] = [
    ['unknown verb', 'XYZ\r\n', 'unknown_op'],
    ['blank line', '\r\n', 'unknown_op'],
    ['no separator after op', 'PUBX a 1\r\n', 'unknown_op'],
    ['UNSUB without args', 'UNSUB\r\n', 'unknown_op'],
    ['MSG from a client', 'MSG a 1 1\r\n', 'unknown_op'],
    ['+OK from a client', '+OK\r\n', 'unknown_op'],
    ['payload longer than announced', 'PUB a 3\r\nhello\r\n', 'unknown_op'],
    ['payload not followed by CRLF', 'PUB a 3\r\nabcXY', 'unknown_op'],
    ['PUB with too many args', 'PUB a 1 2 3\r\n', 'bad_args'],
    ['PUB with negative size', 'PUB a -1\r\n', 'bad_args'],
    ['PUB without size', 'PUB a\r\n', 'bad_args'],
    ['PUB size with 10 digits', 'PUB a 1234567890\r\n', 'bad_args'],
    ['HPUB header over total', 'HPUB a 5 2\r\n', 'bad_args'],
    ['HPUB without headers support', 'HPUB a 0 1\r\nx\r\n', 'bad_args', { headers: false }],
    ['SUB with one arg', 'SUB a\r\n', 'bad_args'],
    ['SUB with four args', 'SUB a b c d\r\n', 'bad_args'],
    ['UNSUB with three args', 'UNSUB 1 2 3\r\n', 'bad_args'],
    ['payload over max_payload', 'PUB a 2000000\r\n', 'max_payload'],
    ['control line over the limit without a line end', `PUB ${'a'.repeat(5000)}`, 'control_line'],
    ['long CONNECT', `CONNECT {"name":"${'n'.repeat(4100)}"}\r\n`, 'control_line'],
    ['op before CONNECT with auth', 'PING\r\n', 'auth', { connectRequired: true }],
    ['PING with trailing text is accepted', 'PING foo\r\n', 'none'],
    ['client INFO is ignored', 'INFO {}\r\n', 'none'],
  ];
  for (const [name, text, failure, opts] of cases) {
    const whole = parseChunks([Buffer.from(text)], opts);
    const bytewise = parseChunks([...Buffer.from(text)].map((b) => Buffer.from([b])), opts);
    const fails = whole.filter((e) => e.op === 'fail');
    if (failure === 'none') t.equal(fails.length, 0, name);
    else t.same(fails, [{ op: 'fail', failure }], name);
    t.same(bytewise, whole, `${name} (byte at a time)`);
  }

  t.test('limits are checked before buffering: an argument line at the limit fits, one byte more fails', async (t) => {
    // As in nats-server, the limit applies to the arguments after the op name.
    const small = { maxControlLineBytes: 32, maxPayloadBytes: 8 };
    const ok = parseChunks([Buffer.from(`SUB ${'a'.repeat(30)} 1\r\n`)], { limits: small });
    t.same(ok, [{ op: 'sub', subject: 'a'.repeat(30), queue: undefined, sid: '1' }]);
    t.same(parseChunks([Buffer.from(`SUB ${'a'.repeat(31)} 1\r\n`)], { limits: small }), [{ op: 'fail', failure: 'control_line' }]);
    const bytewise = parseChunks([...Buffer.from(`SUB ${'a'.repeat(31)} 1\r\n`)].map((b) => Buffer.from([b])), { limits: small });
    t.same(bytewise, [{ op: 'fail', failure: 'control_line' }], 'split line over the limit');
    const over = parseChunks([Buffer.from(`SUB ${'a'.repeat(40)}`)], { limits: small });
    t.same(over, [{ op: 'fail', failure: 'control_line' }], 'no line end needed to fail');
    t.same(parseChunks([Buffer.from('PUB a 8\r\n12345678\r\n')], { limits: small }).length, 1);
    t.same(parseChunks([Buffer.from('PUB a 9\r\n')], { limits: small }), [{ op: 'fail', failure: 'max_payload' }]);
  });

  t.test('random bytes never throw; a failure is final', async (t) => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 400 }), fc.array(fc.nat(), { maxLength: 8 }), (raw, cuts) => {
        const bytes = Buffer.from(raw);
        const evs = parseChunks(splitAt(bytes, cuts), { connectRequired: false });
        const failAt = evs.findIndex((e) => e.op === 'fail');
        if (failAt >= 0 && failAt !== evs.length - 1) return false;
        const first = bytes[0]! | 0x20;
        const validStart = [0x63, 0x70, 0x68, 0x73, 0x75, 0x69].includes(first);
        return validStart || failAt === 0;
      }),
      fcOpts,
    );
    t.pass('property held');
  });

  t.test('garbage after a valid stream fails after the valid ops', async (t) => {
    fc.assert(
      fc.property(streamArb, fc.uint8Array({ minLength: 1, maxLength: 50 }), ({ bytes, events }, junk) => {
        const bad = Buffer.concat([bytes, Buffer.from([0x7f]), Buffer.from(junk)]);
        const evs = parseChunks([bad]);
        return JSON.stringify(evs) === JSON.stringify([...events, { op: 'fail', failure: 'unknown_op' }]);
      }),
      fcOpts,
    );
    t.pass('property held');
  });
});

t.test('parser: stop() hands back the rest', async (t) => {
  const r = new Recorder();
  const stopping: ParserHandler = {
    ...r,
    onConnect(json) { r.onConnect(json); p.stop(); },
    onPub: (x) => r.onPub(x), onSub: (...a) => r.onSub(...a), onUnsub: (...a) => r.onUnsub(...a),
    onPing: () => r.onPing(), onPong: () => r.onPong(), onParseFailure: (f) => r.onParseFailure(f),
  };
  const p = new Parser(stopping, limits);
  const buf = Buffer.from('CONNECT {}\r\nPING\r\n');
  const used = p.parse(buf);
  t.equal(used, 12);
  t.same(r.events, [{ op: 'connect', json: '{}' }]);
  p.parse(buf.subarray(used));
  t.same(r.events.at(-1), { op: 'ping' });
});

// ---- subject trie ----
interface Item { subject: string; queue: string | undefined; id: number }
const patTok = fc.constantFrom('a', 'b', 'c', '*');
const patternArb = fc.array(patTok, { minLength: 1, maxLength: 3 })
  .chain((ts) => fc.boolean().map((gt) => (gt ? [...ts, '>'] : ts).join('.')));
const literalArb = fc.array(fc.constantFrom('a', 'b', 'c'), { minLength: 1, maxLength: 4 }).map((ts) => ts.join('.'));

t.test('sublist agrees with the reference matcher through SUB/UNSUB with a warm cache', async (t) => {
  const action = fc.oneof(
    fc.record({ kind: fc.constant('sub' as const), subject: patternArb, queue: fc.option(fc.constantFrom('q1', 'q2'), { nil: undefined }) }),
    fc.record({ kind: fc.constant('unsub' as const), pick: fc.nat() }),
    fc.record({ kind: fc.constant('match' as const), subject: literalArb }),
  );
  fc.assert(
    fc.property(fc.array(action, { maxLength: 80 }), fc.integer({ min: 2, max: 64 }), (actions, cacheMax) => {
      const sl = new Sublist<Item>(cacheMax);
      const live: Item[] = [];
      let id = 0;
      for (const a of actions) {
        if (a.kind === 'sub') {
          const item = { subject: a.subject, queue: a.queue, id: id++ };
          live.push(item);
          sl.insert(item);
        } else if (a.kind === 'unsub') {
          if (live.length === 0) continue;
          const [item] = live.splice(a.pick % live.length, 1);
          if (!sl.remove(item!)) return false;
        } else {
          const r = sl.match(a.subject);
          const want = live.filter((i) => subjectMatches(i.subject, a.subject));
          const gotPlain = r.plain.map((i) => i.id).sort();
          const wantPlain = want.filter((i) => i.queue === undefined).map((i) => i.id).sort();
          if (JSON.stringify(gotPlain) !== JSON.stringify(wantPlain)) return false;
          const gotQ = r.queues.map((g) => `${g[0]!.queue}:${g.map((i) => i.id).sort().join(',')}`).sort();
          const byQ = new Map<string, number[]>();
          for (const i of want) if (i.queue !== undefined) byQ.set(i.queue, [...(byQ.get(i.queue) ?? []), i.id]);
          const wantQ = [...byQ].map(([q, ids]) => `${q}:${ids.sort().join(',')}`).sort();
          if (JSON.stringify(gotQ) !== JSON.stringify(wantQ)) return false;
        }
      }
      return sl.size === live.length;
    }),
    fcOpts,
  );
  t.pass('property held');
});

t.test('matchLiteral agrees with subjectMatches', async (t) => {
  fc.assert(fc.property(patternArb, literalArb, (p, s) => matchLiteral(p, s) === subjectMatches(p, s)), fcOpts);
  t.ok(matchLiteral('a.>', 'a.b.c'));
  t.notOk(matchLiteral('a.>', 'a'));
  t.notOk(matchLiteral('a.*', 'a.b.c'));
});

t.test('sublist prunes empty nodes and reports cache hits', async (t) => {
  const sl = new Sublist<Item>();
  const items = Array.from({ length: 100 }, (_, i) => ({ subject: `_INBOX.x.${i}`, queue: undefined, id: i }));
  for (const i of items) sl.insert(i);
  t.equal(sl.match('_INBOX.x.7').plain.length, 1);
  t.equal(sl.match('_INBOX.x.7').plain.length, 1);
  t.equal(sl.stats().cacheHits, 1);
  for (const i of items) t.ok(sl.remove(i));
  t.equal(sl.size, 0);
  t.notOk(sl.remove(items[0]!), 'removing twice reports false');
  t.equal(sl.match('_INBOX.x.7').plain.length, 0);
  t.same((sl as unknown as { root: { literal: Map<string, unknown> } }).root.literal.size, 0, 'trie pruned');
});

t.test('nkey server ids and nonces', async (t) => {
  const id = newServerId();
  t.equal(id.length, 56);
  t.equal(id[0], 'N');
  t.doesNotThrow(() => fromPublic(id), 'the official nkeys library accepts it (prefix and CRC)');
  t.ok(isValidPublicKey(id, ['server']), 'a valid NKey server key for src/auth too');
  t.equal(decodePublicKey(id).key.length, 32, 'it carries a 32-byte Ed25519 key');
  t.not(newServerId(), id, 'a fresh key pair each time');
  const n = newNonce();
  t.match(n, /^[A-Za-z0-9_-]{15}$/);
});
