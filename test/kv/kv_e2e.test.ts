// The KV API end to end: the real @nats-io/kv and @nats-io/jetstream clients over a real socket to the NATS
// server of src/nats with the KV API attached on the local (non-replicated) backend, through the server's own
// seams (NatsClusterPort.deliverAs for push consumers, wildcard-subject publishes for CONSUMER.CREATE … .$KV.b.>);
// and on a 3-node cluster started through `serve` (the Raft-backed backend), a client per node.
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { connect, headers as natsHeaders, type NatsConnection, type Msg } from '@nats-io/transport-node';
import { Kvm, KvWatchInclude, type KV, type KvWatchEntry as ClientEntry } from '@nats-io/kv';
import { jetstream, jetstreamManager, AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { KvStateMachine } from '../../store/index.js';
import { createNatsServer, type NatsServerWithCluster } from '../../src/nats/index.js';
import { attachKvApi, createLocalKvBackend, type KvApi, type KvBackend } from '../../src/kv/index.js';
import { silentLogger } from '../../src/log.js';
import { createBusAuthenticator, createToken, hashToken, MemorySource } from '../../src/auth/index.js';
import { writeFileSync } from 'node:fs';
import { parseCommandLine } from '../../src/config/index.js';
import { startServing, type ServingNode } from '../../src/cli/serve.js';
import { loadBusAuth } from '../../src/node/index.js';
import { createCertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { holdPorts, releaseUnused, takeListener } from '../support/ports.js';
import { checkKvFormat } from '../../src/node/bootstrap.js';
import { NodeErrorCode } from '../../src/node/index.js';
import { pack } from '../../store/codec.js';
import { pause, waitFor as waitUntil } from '../support/wait.js';


const enc = new TextEncoder();
const dec = new TextDecoder();

let server: NatsServerWithCluster;
let nc: NatsConnection;
let kvm: Kvm;
let api: KvApi & { detach(): void };
let backend: KvBackend;

t.before(async () => {
  backend = createLocalKvBackend(new KvStateMachine());
  server = createNatsServer({ host: '127.0.0.1', port: 0, jetstream: true, logger: silentLogger() });
  await server.start();
  nc = await connect({ servers: `127.0.0.1:${server.port}`, name: 'kv-e2e', timeout: 20_000 });
  // One node: it is always the leader that proposes TTL expiries.
  api = attachKvApi(server, { backend, logger: silentLogger(), serverName: server.serverName, limits: { tickMs: 50 }, ttl: { isLeader: () => true, periodMs: 50 } });
  // Generous request timeouts: the machine is shared and loaded; no assertion depends on timing.
  kvm = new Kvm(jetstream(nc, { timeout: 20_000 }));
});

t.teardown(async () => {
  await nc?.close();
  api?.detach();
  await server?.close();
});

/** The JetStream error a failing client call rejected with. */
async function rejection(p: Promise<unknown>): Promise<Error & { code?: number }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: number };
  }
  throw new Error('expected the call to fail');
}

async function collect<T>(it: AsyncIterable<T>, max = 100_000): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) {
    out.push(x);
    if (out.length >= max) break;
  }
  return out;
}

t.test('the server seams the KV API rides on: INFO jetstream, wildcard-subject publishes', async (t) => {
  t.equal(nc.info?.jetstream, true, 'INFO says jetstream: true when the KV API is attached');
  // nats-server 2.9 routes a non-pedantic publish to a wildcard subject, its tokens matched literally.
  const got: string[] = [];
  const subs = ['wc.*', 'wc.>', 'wc.bar'].map((s) => nc.subscribe(s, { callback: (_e, m) => void got.push(`${s} ${m.subject}`) }));
  nc.publish('wc.*', 'x');
  nc.publish('wc.bar', 'y');
  await nc.flush();
  for (const s of subs) s.unsubscribe();
  t.same(got.sort(), ['wc.* wc.*', 'wc.* wc.bar', 'wc.> wc.*', 'wc.> wc.bar', 'wc.bar wc.bar'], 'wc.* does not reach the literal wc.bar');
});

t.test('bucket lifecycle: create, status, open, list, destroy', async (t) => {
  const kv = await kvm.create('life', { history: 4 });
  const st = await kv.status();
  t.equal(st.bucket, 'life');
  t.equal(st.history, 4);
  t.equal(st.values, 0);
  t.equal(st.replicas, 1);
  // Creating again with the same options only binds (STREAM.INFO finds it).
  const again = await kvm.create('life', { history: 4 });
  await kv.put('a', 'one');
  t.equal((await again.get('a'))?.string(), 'one');
  // open() binds without any request and reads through STREAM.MSG.GET.
  const opened = await kvm.open('life');
  t.equal((await opened.get('a'))?.string(), 'one');
  t.equal(await opened.get('zz'), null);
  // STREAM.MSG.GET carries markers as base64 headers.
  await kv.put('gone', 'x');
  await kv.delete('gone');
  t.equal((await opened.get('gone'))?.operation, 'DEL');
  await kv.purge('gone');
  const names = (await collect(kvm.list())).map((s) => s.bucket);
  t.ok(names.includes('life'));
  const st2 = await kv.status();
  t.equal(st2.values, 2, 'the value and the PURGE marker');
  // Stored bytes as nats-server counts them: 22 + subject + payload + 8, and 4 + the header block when one was sent
  // (the PURGE marker's `KV-Operation: PURGE` + `Nats-Rollup: sub`, 51 bytes as nats.js encodes them).
  t.equal(st2.size, (22 + '$KV.life.a'.length + 'one'.length + 8) + (22 + '$KV.life.gone'.length + 4 + 51 + 8));
  t.equal(await kv.destroy(), true);
  // The stream is gone: status says so with nats.js's StreamNotFoundError text.
  t.equal((await rejection(kv.status())).message, 'stream not found');
  // A put to a bucket that no longer exists gets no responders, as from nats-server.
  t.match((await rejection(kv.put('a', 'x'))).message, /jetstream is not enabled|no responders/i);
});

t.test('put/get/create/update/delete/purge with the exact JetStream errors', async (t) => {
  const kv = await kvm.create('ops', { history: 5 });
  const r1 = await kv.put('k1', 'v1');
  const e1 = await kv.get('k1');
  t.equal(e1?.string(), 'v1');
  t.equal(e1?.revision, r1);
  t.equal(e1?.operation, 'PUT');
  t.equal(await kv.get('missing'), null);

  // create-if-absent: conflict on an existing key is 10071 with the key's revision.
  const exists = await rejection(kv.create('k1', 'x'));
  t.equal(exists.message, `wrong last sequence: ${r1}`);
  const r2 = await kv.create('k2', 'v2');
  t.ok(r2 > r1, 'revisions increase');

  // update = CAS on the revision.
  const r3 = await kv.update('k1', 'v1b', r1);
  t.equal((await kv.get('k1'))?.string(), 'v1b');
  t.equal((await rejection(kv.update('k1', 'stale', r1))).message, `wrong last sequence: ${r3}`);

  // delete leaves a DEL marker that get() reports; create after delete succeeds (client retries on the marker).
  await kv.delete('k2');
  const del = await kv.get('k2');
  t.equal(del?.operation, 'DEL');
  t.equal(del?.length, 0);
  const r5 = await kv.create('k2', 'again');
  t.equal((await kv.get('k2'))?.revision, r5);

  // delete with previousSeq is CAS too.
  t.equal((await rejection(kv.delete('k2', { previousSeq: r5 - 1 }))).message, `wrong last sequence: ${r5}`);

  // purge leaves only a PURGE marker.
  await kv.put('k2', 'more');
  await kv.purge('k2');
  t.equal((await kv.get('k2'))?.operation, 'PURGE');
  const h = await collect(await kv.history({ key: 'k2' }));
  t.same(h.map((e) => e.operation), ['PURGE']);
  t.same((await collect(await kv.keys())).sort(), ['k1']);

  // A key the state machine refuses (longer than the bucket's key limit) is a 10003 bad request.
  const bad = await rejection(kv.put('k'.repeat(1100), 'x'));
  t.equal(bad.message, "bad request: key of 1100 bytes exceeds the bucket's 1024");
});

t.test('revisions are per bucket: two buckets written in turn each count 1, 2, 3 (issue 18.1)', async (t) => {
  const [x, y] = [await kvm.create('turn_x'), await kvm.create('turn_y')];
  const rx: number[] = [];
  const ry: number[] = [];
  for (let i = 0; i < 3; i++) {
    rx.push(await x.put('k', `x${i}`));
    ry.push(await y.put('k', `y${i}`));
  }
  t.same([rx, ry], [[1, 2, 3], [1, 2, 3]]);
  const st = (await y.status()).streamInfo.state;
  t.same([st.first_seq, st.last_seq, st.messages], [3, 3, 1], 'history 1: only revision 3 is retained, last_seq 3');
  t.equal(await x.update('k', 'x3', 3), 4, 'CAS compares the bucket revision');
  t.match((await rejection(y.update('k', 'stale', 4))).message, 'wrong last sequence: 3');
  const h = await collect(await x.history({ key: 'k' }));
  t.same(h.map((e) => e.revision), [4]);
});

/** Polls `cond` until it holds, at most `boundMs` (a condition, never a timing assertion). */
async function waitFor(what: string, cond: () => Promise<boolean>, boundMs = 20_000): Promise<void> {
  await waitUntil(cond, { what, timeoutMs: boundMs });
}

t.test('bucket TTL (max_age): entries expire by a replicated proposal; the sequence goes on (issue 18.5)', async (t) => {
  const kv = await kvm.create('ttl', { ttl: 400, history: 2 });
  const st = await kv.status();
  t.equal(st.ttl, 400, 'ttl echoed');
  t.equal(st.streamInfo.config.duplicate_window, 400 * 1e6, 'the duplicate window follows a TTL below 2 min, as nats-server sets it');
  t.equal(await kv.put('a', '1'), 1);
  t.equal(await kv.put('b', '2'), 2);
  await waitFor('entries expired', async () => (await kv.status()).values === 0);
  t.equal(await kv.get('a'), null, 'an expired key reads as absent');
  t.match((await kv.status()).streamInfo.state, { messages: 0, first_seq: 3, last_seq: 2 });
  t.equal(await kv.put('a', '3'), 3, 'the revision continues after expiry');
});

t.test('JetStream publish options through nats.js: msgID duplicates, expected last sequence / subject sequence / stream (issue 18.4)', async (t) => {
  await kvm.create('pubopts');
  const js = jetstream(nc, { timeout: 20_000 });
  const first = await js.publish('$KV.pubopts.a', '1', { msgID: 'x1' });
  t.match(first, { stream: 'KV_pubopts', seq: 1, duplicate: false });
  t.match(await js.publish('$KV.pubopts.a', '1', { msgID: 'x1' }), { seq: 1, duplicate: true }, 'the same msgID within the window');
  t.equal((await rejection(js.publish('$KV.pubopts.b', '2', { expect: { lastSequence: 7 } }))).message, 'wrong last sequence: 1');
  t.match(await js.publish('$KV.pubopts.b', '2', { expect: { lastSequence: 1 } }), { seq: 2 });
  t.equal((await rejection(js.publish('$KV.pubopts.a', '3', { expect: { lastSubjectSequence: 2 } }))).message, 'wrong last sequence: 1');
  t.equal((await rejection(js.publish('$KV.pubopts.a', '3', { expect: { streamName: 'KV_other' } }))).message, 'expected stream does not match');
  t.match(await js.publish('$KV.pubopts.a', '3', { expect: { streamName: 'KV_pubopts', lastSubjectSequence: 1 } }), { seq: 3 });
});

t.test('history depth, get by revision, bucket limits', async (t) => {
  const kv = await kvm.create('hist', { history: 3 });
  const revs: number[] = [];
  for (let i = 1; i <= 5; i++) revs.push(await kv.put('k', `v${i}`));
  const h = await collect(await kv.history({ key: 'k' }));
  t.same(h.map((e) => e.string()), ['v3', 'v4', 'v5'], 'history keeps the last 3 revisions');
  t.same(h.map((e) => e.revision), revs.slice(2));
  t.equal((await kv.get('k', { revision: revs[3]! }))?.string(), 'v4');
  t.equal(await kv.get('k', { revision: revs[0]! }), null, 'a revision beyond history is gone');
  await kv.delete('k');
  const h2 = await collect(await kv.history({ key: 'k' }));
  t.same(h2.map((e) => e.operation), ['PUT', 'PUT', 'DEL'], 'the DEL marker counts in the history depth');
  t.equal((await kv.status()).values, 3);

  // A 60-byte value of `a` is stored as 22 + 12 + 60 + 8 = 102 bytes: two do not fit in 200.
  const capped = await kvm.create('capped', { max_bytes: 200 });
  await capped.put('a', new Uint8Array(60));
  t.equal((await rejection(capped.put('b', new Uint8Array(60)))).message, 'maximum bytes exceeded');
  await capped.put('a', new Uint8Array(90));
  t.equal((await capped.status()).size, 22 + 12 + 90 + 8, 'history 1: the new value replaced the old one within the limit');

  const small = await kvm.create('small', { maxValueSize: 16 });
  await small.put('ok', new Uint8Array(16));
  t.equal((await rejection(small.put('big', new Uint8Array(17)))).message, 'message size exceeds maximum allowed');
  t.equal((await small.status()).maxValueSize, 16);
  t.equal(await small.get('big'), null);
});

t.test('watch: initial values, updates only, markers', async (t) => {
  const kv = await kvm.create('watch', { history: 2 });
  await kv.put('a', '1');
  await kv.put('b', '2');
  await kv.delete('b');
  const w = await kv.watch();
  const seen: ClientEntry[] = [];
  const done = (async () => {
    for await (const e of w) {
      seen.push(e);
      if (seen.length === 5) break;
    }
  })();
  const fresh = await kv.watch({ include: KvWatchInclude.UpdatesOnly });
  const seenNew: ClientEntry[] = [];
  const doneNew = (async () => {
    for await (const e of fresh) {
      seenNew.push(e);
      if (seenNew.length === 3) break;
    }
  })();
  // No wait for the consumers to bind: one that has not seen its subscriber yet keeps what it must deliver.
  await kv.put('c', '3');
  await kv.purge('a');
  await kv.put('a', '4');
  await Promise.all([done, doneNew]);
  t.same(seen.map((e) => `${e.key}:${e.operation}:${e.string()}:${e.isUpdate}`), [
    'a:PUT:1:false', 'b:DEL::true', 'c:PUT:3:true', 'a:PURGE::true', 'a:PUT:4:true',
  ]);
  t.same(seenNew.map((e) => `${e.key}:${e.operation}`), ['c:PUT', 'a:PURGE', 'a:PUT']);
  // A watch on one key (literal filter) with history.
  const hw = await kv.watch({ key: 'a', include: KvWatchInclude.AllHistory });
  const one = await collect(hw, 2);
  t.same(one.map((e) => e.operation), ['PURGE', 'PUT']);
  t.ok(api.stats().consumers >= 3, 'nats.js leaves stopped watchers to inactive_threshold reaping');
});

t.test('a bucket of many keys: keys(), watch with large values (flow control)', async (t) => {
  const kv = await kvm.create('many');
  const n = 1500;
  const puts: Promise<number>[] = [];
  for (let i = 0; i < n; i++) puts.push(kv.put(`key.${i}`, `v${i}`));
  await Promise.all(puts);
  const keys = await collect(await kv.keys());
  t.equal(keys.length, n);
  t.equal(new Set(keys).size, n);
  await kv.put('other.x', 'o');
  t.equal((await collect(await kv.keys('key.*'))).length, n, 'wildcard key filter');
  t.same(await collect(await kv.keys('other.>')), ['other.x']);
  t.equal((await kv.status()).values, n + 1);

  // 40 values of 64 KiB = 2.5 MiB > the 2 MiB flow-control window: delivery must pause for the client's
  // flow-control replies and still deliver everything in order.
  const big = await kvm.create('big');
  const value = new Uint8Array(64 * 1024).fill(7);
  for (let i = 0; i < 40; i++) await big.put(`b${i}`, value);
  const got = await collect(await big.watch(), 40);
  t.equal(got.length, 40);
  t.ok(got.every((e, i) => e.key === `b${i}` && e.value.length === value.length));
});

t.test('push consumer on the wire: ack subjects, heartbeats, info, delete, errors', async (t) => {
  const jsm = await jetstreamManager(nc, { timeout: 20_000 });
  const kv = await kvm.create('raw');
  const r1 = await kv.put('x', 'hello');
  const deliver = `_INBOX.raw.${Date.now()}`;
  const msgs: Msg[] = [];
  const statuses: Msg[] = [];
  const sub = nc.subscribe(deliver, {
    callback: (_err, m) => {
      (m.subject === deliver ? statuses : msgs).push(m);
    },
  });
  // Legacy create subject (no name), as nats.go / nats.c send it.
  const ci = await jsm.consumers.add('KV_raw', {
    deliver_subject: deliver, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All,
    filter_subject: '$KV.raw.>', idle_heartbeat: 200_000_000, flow_control: true,
  });
  t.equal(ci.num_pending, 1);
  t.match(ci.name, /^[A-Za-z0-9]{8}$/);
  await waitUntil(() => msgs.length >= 1 && statuses.length >= 1, { what: () => `a message and a status on the push consumer (${msgs.length}, ${statuses.length})`, timeoutMs: 10_000 });
  t.equal(msgs[0]?.subject, '$KV.raw.x');
  t.equal(dec.decode(msgs[0]?.data), 'hello');
  const ack = msgs[0]!.reply!.split('.');
  t.same(ack.slice(0, 4), ['$JS', 'ACK', 'KV_raw', ci.name]);
  t.same(ack.slice(4, 7), ['1', String(r1), '1'], 'delivery count, stream seq, consumer seq');
  t.equal(ack[8], '0', 'pending after the last message');
  const hb = statuses[0]!;
  t.equal(hb.headers?.code, 100);
  t.equal(hb.headers?.description, 'Idle Heartbeat');
  t.equal(hb.headers?.get('Nats-Last-Consumer'), '1');
  t.equal(hb.headers?.get('Nats-Last-Stream'), String(r1));
  const info = await jsm.consumers.info('KV_raw', ci.name);
  t.equal(info.delivered.consumer_seq, 1);
  t.equal(info.delivered.stream_seq, r1);
  t.same((await collect(jsm.consumers.list('KV_raw'))).map((c) => c.name), [ci.name]);
  t.equal(await jsm.consumers.delete('KV_raw', ci.name), true);
  const gone = await rejection(jsm.consumers.info('KV_raw', ci.name));
  t.equal(gone.message, 'consumer not found');
  sub.unsubscribe();
  // Refusals a client can see.
  t.match((await rejection(jsm.consumers.add('KV_raw', { durable_name: 'd', ack_policy: AckPolicy.Explicit }))).message, /not supported/);
  t.equal((await rejection(jsm.consumers.add('KV_nope', { deliver_subject: 'x.y', ack_policy: AckPolicy.None }))).message, 'stream not found');
  // STREAM.PURGE of the whole stream (issue 18.2): everything goes, the sequence goes on.
  t.match(await jsm.streams.purge('KV_raw'), { success: true });
  t.match((await jsm.streams.info('KV_raw')).state, { messages: 0, first_seq: r1 + 1, last_seq: r1 });
  t.match((await rejection(jsm.streams.add({ name: 'ORDERS', subjects: ['orders.>'] }))).message, /only KV streams/);
  const r = await nc.request('$JS.API.STREAM.CREATE.KV_j', enc.encode('not json'));
  t.same(JSON.parse(dec.decode(r.data)), {
    type: 'io.nats.jetstream.api.v1.stream_create_response', error: { code: 400, err_code: 10025, description: 'invalid JSON' },
  });
  // A consumer nobody subscribes to is reaped after its inactive_threshold.
  const lonely = await jsm.consumers.add('KV_raw', { deliver_subject: '_INBOX.nobody', ack_policy: AckPolicy.None, inactive_threshold: 200_000_000 });
  const reaped = await waitUntil(() => jsm.consumers.info('KV_raw', lonely.name).then(() => false, () => true), {
    what: 'the inactive consumer reaped', timeoutMs: 10_000, intervalMs: 50,
  });
  t.ok(reaped, 'inactive consumer reaped');
});

t.test('control-plane buckets ub_* do not exist for a client that is not an admin principal (bus auth off)', async (t) => {
  const ts = Date.now();
  t.match(await backend.propose({ op: 'bucket.create', bucket: 'ub_hidden', config: { history: 2 }, ts }), { ok: true });
  t.match(await backend.propose({ op: 'put', bucket: 'ub_hidden', key: 'alice', value: enc.encode('secret'), ts }), { ok: true });
  const hidden = await kvm.open('ub_hidden'); // binds without a request
  t.match((await rejection(hidden.status())).message, /stream not found/);
  t.ok(await rejection(hidden.get('alice')), 'get refused');
  t.match((await rejection(hidden.keys())).message, /stream not found/, 'keys refused');
  const names = await collect(kvm.list());
  t.notOk(names.some((s) => s.bucket === 'ub_hidden'), 'absent from the bucket list');
  const jsm = await jetstreamManager(nc, { timeout: 20_000 });
  t.match((await rejection(jsm.streams.info('KV_ub_hidden'))).message, /stream not found/);
  t.match((await rejection(jsm.streams.getMessage('KV_ub_hidden', { last_by_subj: '$KV.ub_hidden.alice' }))).message, /stream not found/);
  t.ok(await rejection(nc.request('$JS.API.DIRECT.GET.KV_ub_hidden.$KV.ub_hidden.alice', undefined, { timeout: 2000 })), 'direct get: no responders');
  t.ok(await rejection(nc.request('$KV.ub_hidden.alice', 'x', { timeout: 2000 })), 'publish: no responders');
  t.equal(backend.reader.get('ub_hidden', 'alice')?.value.length, 6, 'nothing changed');
});

/** A server with bus auth on (enforce), the KV API attached, and one connection per token. */
async function authServer(t: { teardown(fn: () => Promise<void>): void }, roles: readonly { name: string; admin: boolean; publish: string[]; subscribe: string[] }[], users: readonly { name: string; role: string }[]) {
  const tokens = users.map(() => createToken());
  const source = new MemorySource(
    users.map((u, i) => ({ name: u.name, token: hashToken(tokens[i]!), roles: [u.role], disabled: false })),
    roles.map((r) => ({ name: r.name, admin: r.admin, permissions: { publish: r.publish, subscribe: r.subscribe } })),
  );
  const auth = createBusAuthenticator({ mode: 'enforce', source, logger: silentLogger() });
  const srv = createNatsServer({ host: '127.0.0.1', port: 0, auth, jetstream: true, logger: silentLogger() });
  await srv.start();
  const conns: NatsConnection[] = [];
  for (const token of tokens) conns.push(await connect({ servers: `127.0.0.1:${srv.port}`, token, timeout: 20_000 }));
  const be = createLocalKvBackend(new KvStateMachine());
  const a = attachKvApi(srv, { backend: be, logger: silentLogger(), serverName: srv.serverName });
  t.teardown(async () => {
    for (const c of conns) await c.close();
    a.detach();
    await srv.close();
  });
  return { conns, api: a, backend: be };
}

t.test('control-plane buckets ub_* are visible read-only to admin principals only', async (t) => {
  const { conns: [ncA, ncU], backend: be } = await authServer(t, [
    { name: 'admin', admin: true, publish: ['>', '$JS.API.>', '$KV.>', '$JS.FC.>'], subscribe: ['>'] },
    { name: 'kv', admin: false, publish: ['$JS.API.>', '$KV.>', '$JS.FC.>'], subscribe: ['_INBOX.>'] },
  ], [{ name: 'root', role: 'admin' }, { name: 'app', role: 'kv' }]);
  const ts = Date.now();
  t.match(await be.propose({ op: 'bucket.create', bucket: 'ub_users', config: { history: 2 }, ts }), { ok: true });
  t.match(await be.propose({ op: 'put', bucket: 'ub_users', key: 'alice', value: enc.encode('{"roles":["admin"]}'), ts }), { ok: true });
  const kvmA = new Kvm(jetstream(ncA!, { timeout: 20_000 }));
  const kvmU = new Kvm(jetstream(ncU!, { timeout: 20_000 }));
  const denied = await kvmU.open('ub_users');
  t.match((await rejection(denied.status())).message, /stream not found/, 'not an admin: no such bucket');
  t.ok(await rejection(denied.get('alice')), 'not an admin: get refused');
  t.match((await rejection(denied.watch())).message, /stream not found/, 'not an admin: watch refused');
  t.notOk((await collect(kvmU.list())).some((s) => s.bucket === 'ub_users'), 'not an admin: not listed');
  t.ok((await collect(kvmA.list())).some((s) => s.bucket === 'ub_users'), 'admin: listed');
  const users = await kvmA.open('ub_users');
  t.equal((await users.get('alice'))?.string(), '{"roles":["admin"]}');
  t.same(await collect(await users.keys()), ['alice']);
  for (const attempt of [users.put('bob', 'x'), users.delete('alice'), users.purge('alice'), users.create('carol', 'x')]) {
    t.match((await rejection(attempt)).message, /sealed stream: ub_users is a control-plane bucket/);
  }
  t.match((await rejection(users.destroy())).message, /sealed/);
  t.match((await rejection(kvmA.create('ub_roles'))).message, /sealed/);
  t.match((await rejection(kvmU.create('ub_roles'))).message, /sealed/);
  const st = await users.status();
  t.equal(st.streamInfo.config.sealed, true);
  t.equal((await users.get('alice'))?.string(), '{"roles":["admin"]}', 'nothing changed');
});

t.test('model: random put/create/update/delete/purge/get through the real client agree with a Map', async (t) => {
  const seed = Number(process.env.KV_SEED ?? Date.now() % 2 ** 31);
  t.comment(`model seed ${seed} (replay: KV_SEED=${seed} npx tap test/kv/kv_e2e.test.ts)`);
  const keys = ['a', 'b', 'c', 'd.e'];
  const cmd = fc.oneof(
    fc.record({ op: fc.constant('put' as const), k: fc.constantFrom(...keys), v: fc.string({ maxLength: 8 }) }),
    fc.record({ op: fc.constant('create' as const), k: fc.constantFrom(...keys), v: fc.string({ maxLength: 8 }) }),
    fc.record({ op: fc.constant('update' as const), k: fc.constantFrom(...keys), v: fc.string({ maxLength: 8 }), stale: fc.boolean() }),
    fc.record({ op: fc.constantFrom('delete' as const, 'purge' as const, 'get' as const), k: fc.constantFrom(...keys) }),
  );
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(cmd, { minLength: 1, maxLength: 25 }), async (cmds) => {
      const kv: KV = await kvm.create(`model${run++}`, { history: 3 });
      const model = new Map<string, { v: string; rev: number }>();
      for (const c of cmds) {
        const cur = model.get(c.k);
        if (c.op === 'put') {
          model.set(c.k, { v: c.v, rev: await kv.put(c.k, c.v) });
        } else if (c.op === 'create') {
          const ok = await kv.create(c.k, c.v).then((rev) => rev, () => undefined);
          if (cur === undefined) {
            if (ok === undefined) return false;
            model.set(c.k, { v: c.v, rev: ok });
          } else if (ok !== undefined) return false;
        } else if (c.op === 'update') {
          const e = await kv.get(c.k);
          const rev = (e?.revision ?? 0) - (c.stale ? 1 : 0);
          if (rev <= 0) continue;
          const ok = await kv.update(c.k, c.v, rev).then((r) => r, () => undefined);
          const expectOk = !c.stale && cur !== undefined;
          // Updating a deleted key at its marker's revision is allowed (JetStream semantics).
          if (!c.stale && cur === undefined) {
            if (ok === undefined) return false;
            model.set(c.k, { v: c.v, rev: ok });
            continue;
          }
          if ((ok !== undefined) !== expectOk) return false;
          if (ok !== undefined) model.set(c.k, { v: c.v, rev: ok });
        } else if (c.op === 'delete' || c.op === 'purge') {
          await (c.op === 'delete' ? kv.delete(c.k) : kv.purge(c.k));
          model.delete(c.k);
        } else {
          const e = await kv.get(c.k);
          const live = e !== null && e.operation === 'PUT' ? { v: e.string(), rev: e.revision } : undefined;
          if (JSON.stringify(live) !== JSON.stringify(cur)) return false;
        }
      }
      const listed = (await collect(await kv.keys())).sort();
      await kv.destroy();
      return JSON.stringify(listed) === JSON.stringify([...model.keys()].sort());
    }),
    { seed, numRuns: 15, endOnFailure: true },
  );
  t.pass('model agreed on every run');
});

t.test('bus permissions decide who reaches the KV API (enforce mode)', async (t) => {
  const tokK = createToken();
  const tokP = createToken();
  const source = new MemorySource(
    [
      { name: 'k', token: hashToken(tokK), roles: ['kv'], disabled: false },
      { name: 'p', token: hashToken(tokP), roles: ['plain'], disabled: false },
    ],
    [
      // JetStream subjects are reserved: a role must name them; `>` alone does not reach them.
      { name: 'kv', admin: false, permissions: { publish: ['$JS.API.>', '$KV.app.>', '$JS.FC.>'], subscribe: ['_INBOX.>'] } },
      { name: 'plain', admin: false, permissions: { publish: ['>'], subscribe: ['>'] } },
    ],
  );
  const auth = createBusAuthenticator({ mode: 'enforce', source, logger: silentLogger() });
  const srv = createNatsServer({ host: '127.0.0.1', port: 0, auth, logger: silentLogger() });
  await srv.start();
  // Its private inbox prefix: a consumer's deliver subject must be one its creator may publish to (SECURITY.md).
  const ncK = await connect({ servers: `127.0.0.1:${srv.port}`, token: tokK, inboxPrefix: '_INBOX_k' });
  const ncP = await connect({ servers: `127.0.0.1:${srv.port}`, token: tokP });
  const a = attachKvApi(srv, { backend: createLocalKvBackend(new KvStateMachine()), logger: silentLogger(), serverName: srv.serverName });
  t.teardown(async () => {
    await ncK.close();
    await ncP.close();
    a.detach();
    await srv.close();
  });
  const kvK = await new Kvm(ncK).create('app');
  await kvK.put('x', '1');
  t.equal((await kvK.get('x'))?.string(), '1');
  t.same(await collect(await kvK.keys()), ['x'], 'consumers work through the user\'s private inbox and $JS.FC.> publish rights');
  const before = a.stats().requests;
  // A bucket outside the role's $KV subjects: the stream can be created, but a put is a permissions violation.
  const other = await new Kvm(ncK).create('other');
  t.ok(await rejection(other.put('x', '1')), 'put outside the allowed $KV subjects refused by the server');
  // `>` does not reach the reserved JetStream subjects: the request never gets to the API.
  t.ok(await rejection(new Kvm(ncP).create('app', { timeout: 500 })), 'no JetStream rights, no KV');
  t.equal(a.stats().requests, before + 3, 'only the permitted requests (INFO, STREAM.INFO, STREAM.CREATE of "other") arrived');
});

/** Runs symbolic KV commands through a client and records what an application observes, revisions abstracted. */
async function observe(k: Kvm, bucket: string, cmds: readonly (readonly [string, string, string?])[]): Promise<string[]> {
  const kv = await k.create(bucket, { history: 3 });
  const out: string[] = [];
  const norm = (e: unknown) => (e as Error).message;
  for (const [op, key, v] of cmds) {
    try {
      // Revisions are compared as numbers: both servers count each bucket 1, 2, 3 …
      if (op === 'put') out.push(`put ${await kv.put(key, v!)}`);
      else if (op === 'create') out.push(`create ${await kv.create(key, v!)}`);
      else if (op === 'update') out.push(`update ${await kv.update(key, v!, (await kv.get(key))?.revision ?? 1)}`);
      // A revision the key is not at.
      else if (op === 'stale') out.push(`stale ${await kv.update(key, v!, ((await kv.get(key))?.revision ?? 0) + 1)}`);
      else if (op === 'delete') out.push(`delete ${String(await kv.delete(key))}`);
      else if (op === 'purge') out.push(`purge ${String(await kv.purge(key))}`);
      else if (op === 'get') {
        const e = await kv.get(key);
        out.push(`get ${e === null ? 'null' : `${e.operation}:${e.string()}:${e.length}:${e.revision}`}`);
      }
    } catch (err) {
      out.push(`${op} error ${norm(err)}`);
    }
  }
  out.push(`keys ${(await collect(await kv.keys())).sort().join(',')}`);
  let written = 0;
  for (const key of new Set(cmds.map((c) => c[1]))) {
    const h = await collect(await kv.history({ key }));
    if (h.length > 0) written++;
    out.push(`history ${key} ${h.map((e) => `${e.operation}:${e.string()}:${e.revision}`).join(',')}`);
  }
  // The initial batch of a watch: one entry per key that has any (markers included).
  const w = written === 0 ? [] : await collect(await kv.watch(), written);
  out.push(`watch ${w.map((e) => `${e.key}:${e.operation}:${e.string()}:${e.isUpdate}:${e.revision}:${e.delta}`).sort().join(',')}`);
  const status = async (what: string) => {
    const st = await kv.status();
    const state = st.streamInfo.state;
    out.push(`${what} values=${st.values} history=${st.history} bytes=${st.size} first=${state.first_seq} last=${state.last_seq} subjects=${state.num_subjects}`);
  };
  await status('status');
  // STREAM.PURGE with a subject filter and keep, as KV's purgeDeletes sends it: markers younger than 30 min keep
  // themselves (keep 1), then with a negative age every marker goes (keep 0).
  const purger = kv as unknown as { purgeDeletes(olderMillis?: number): Promise<{ purged: number }> };
  out.push(`purgeDeletes ${(await purger.purgeDeletes()).purged}`);
  await status('after purgeDeletes');
  out.push(`purgeDeletes(-1) ${(await purger.purgeDeletes(-1)).purged}`);
  await status('after purgeDeletes(-1)');
  for (const key of new Set(cmds.map((c) => c[1]))) {
    out.push(`history after ${key} ${(await collect(await kv.history({ key }))).map((e) => `${e.operation}:${e.string()}:${e.revision}`).join(',')}`);
  }
  return out;
}

const goPackage = '/usr/share/gocode/src/github.com/nats-io/nats.go';

/**
 * Builds test/kv/gokv offline in GOPATH mode against Debian's nats.go (golang-go, golang-github-nats-io-go-nats-dev)
 * and runs it against both URLs. Skips with a line saying what to install when the toolchain is missing.
 */
async function goDifferential(t: Test, refUrl: string, ourUrl: string): Promise<void> {
  if (spawnSync('go', ['version']).status !== 0 || !existsSync(goPackage)) {
    t.skip('Go differential: needs `go` and nats.go (apt-get install -y golang-go golang-github-nats-io-go-nats-dev)', () => {});
    return;
  }
  const out = mkdtempSync(join(tmpdir(), 'gokv-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  // GOPATH mode, offline: the Debian package's sources are the only dependency; the build cache is kept across runs.
  const env = { ...process.env, GOPATH: '/usr/share/gocode', GO111MODULE: 'off', GOFLAGS: '-mod=vendor', GOPROXY: 'off', GOCACHE: join(tmpdir(), 'membershipd-gocache') };
  const src = join(dirname(fileURLToPath(import.meta.url)), 'gokv', 'main.go');
  const bin = join(out, 'gokv');
  const built = await run('go', ['build', '-o', bin, src], env);
  t.equal(built.code, 0, `go build test/kv/gokv (${built.stderr.trim().slice(0, 300)})`);
  if (built.code !== 0) return;
  const theirs = await run(bin, [refUrl, 'gd'], env);
  const mine = await run(bin, [ourUrl, 'gd'], env);
  t.equal(theirs.code, 0, `gokv against nats-server ${theirs.stderr.trim()}`);
  t.equal(mine.code, 0, `gokv against membershipd ${mine.stderr.trim()}`);
  const [a, b] = [mine.stdout.trim().split('\n'), theirs.stdout.trim().split('\n')];
  t.ok(b.length > 30, `${b.length} observations from nats.go`);
  for (let i = 0; i < Math.max(a.length, b.length); i++) t.equal(a[i], b[i], `nats.go observation ${i + 1}`);
}

/** Runs a child process to completion (async: the membershipd under test shares this event loop). */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    // Bounded: a hung client is killed (by its PID) after 120 s and reported as failed.
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

t.test('differential: the same KV session against nats-server 2.9 (when installed) observes the same', async (t) => {
  if (spawnSync('nats-server', ['--version']).status !== 0) {
    t.skip('nats-server is not installed (Debian package nats-server): the differential check needs it', () => {});
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'kv-diff-'));
  const child = spawn('nats-server', ['-a', '127.0.0.1', '-p', '-1', '-js', '-sd', dir, '--ports_file_dir', dir], { stdio: 'ignore' });
  t.teardown(() => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  // nats-server bound port 0 (-p -1) and reports it in its ports file (--ports_file_dir).
  const natsPort = await waitUntil(() => {
    const f = readdirSync(dir).find((n) => n.endsWith('.ports'));
    return f === undefined ? 0 : Number(/:(\d+)"/.exec(readFileSync(join(dir, f), 'utf8'))?.[1] ?? 0);
  }, { what: `nats-server's ports file in ${dir}`, timeoutMs: 15_000, intervalMs: 50 });
  t.not(natsPort, 0, 'nats-server started');
  const ref = await connect({ servers: `127.0.0.1:${natsPort}`, timeout: 20_000 });
  t.teardown(() => ref.close());
  const refKvm = new Kvm(jetstream(ref, { timeout: 20_000 }));
  const cmds: [string, string, string?][] = [
    ['put', 'a', '1'], ['create', 'a', 'x'], ['create', 'b', '2'], ['update', 'a', '1b'], ['stale', 'a', 'no'],
    ['get', 'a'], ['delete', 'b'], ['get', 'b'], ['create', 'b', '2b'], ['put', 'c.d', '3'], ['purge', 'c.d'],
    ['get', 'c.d'], ['create', 'c.d', '3b'], ['put', 'a', '1c'], ['put', 'a', '1d'], ['get', 'zz'], ['delete', 'zz'],
  ];
  const mine = await observe(kvm, 'diff', cmds);
  const theirs = await observe(refKvm, 'diff', cmds);
  t.ok(mine.length > cmds.length, 'every command observed');

  // Raw API answers a client can see, byte-for-byte JSON (numbers that are revisions abstracted).
  const raw = async (c: NatsConnection, subject: string, body = '', h?: [string, string][]) => {
    const hdrs = h === undefined ? undefined : natsHeaders();
    for (const [k, v] of h ?? []) hdrs!.set(k, v);
    const m = await c.request(subject, enc.encode(body), { timeout: 20_000, headers: hdrs });
    const status = m.headers === undefined ? '' : `${m.headers.code} ${m.headers.description}`;
    return `${status}|${dec.decode(m.data).replace(/"seq":\s*\d+/g, '"seq":N').replace(/wrong last sequence: \d+/, 'wrong last sequence: N')}`;
  };
  const probes: [string, string?, [string, string][]?][] = [
    ['$JS.API.STREAM.INFO.KV_nope'],
    ['$JS.API.CONSUMER.INFO.KV_diff.nope'],
    ['$JS.API.STREAM.CREATE.zzz', 'not json'],
    ['$JS.API.STREAM.MSG.GET.KV_diff', '{"seq":999999}'],
    ['$JS.API.STREAM.MSG.GET.KV_nope', '{"last_by_subj":"$KV.nope.a"}'],
    ['$JS.API.DIRECT.GET.KV_diff.$KV.diff.nope'],
    ['$JS.API.DIRECT.GET.KV_diff', '{"seq":999999}'],
    ['$KV.diff.a', 'v', [['Nats-Expected-Last-Subject-Sequence', '999999']]],
    ['$KV.diff.zz', 'v', [['Nats-Expected-Stream', 'WRONG']]],
    ['$KV.nope.a', 'v'],
  ];
  for (const [subject, body, h] of probes) {
    const [a, b] = [await raw(nc, subject, body, h).catch((e: Error) => e.message), await raw(ref, subject, body, h).catch((e: Error) => e.message)];
    // nats-server adds total/offset/limit zeros to some error replies; the fields clients read must agree.
    const strip = (x: string) => x.replace(/,"total":0,"offset":0,"limit":0/, '').replace(/"stream":"KV_diff", "seq"/, '"stream":"KV_diff","seq"');
    t.equal(strip(a), strip(b), subject);
  }
  t.same(mine, theirs, 'membershipd and nats-server agree on every observation');

  // The stream config read back is the one created, with nats-server's defaults (issue 18.3); no `cluster` on a
  // single server (18.8).
  const info = async (c: NatsConnection, stream: string) => JSON.parse(dec.decode((await c.request(`$JS.API.STREAM.INFO.${stream}`, '', { timeout: 20_000 })).data)) as Record<string, unknown>;
  for (const opts of [{}, { history: 5, max_bytes: 1 << 20, maxValueSize: 4096 }, { description: 'd', history: 2 }, { ttl: 60_000, history: 3 }, { ttl: 600_000 }]) {
    const name = `cfg${JSON.stringify(opts).replace(/\W/g, '')}`;
    await kvm.create(name, opts);
    await refKvm.create(name, opts);
    const [a, b] = [await info(nc, `KV_${name}`), await info(ref, `KV_${name}`)];
    t.same(a.config, b.config, `stream config of a bucket created with ${JSON.stringify(opts)}`);
    t.same(['cluster' in a, 'cluster' in b], [false, false], 'no cluster field on a single server');
  }
  const cfgBody = JSON.stringify({ name: 'KV_rawcfg', subjects: ['$KV.rawcfg.>'], max_msgs_per_subject: 1, deny_purge: true, num_replicas: 0, discard: 'new' });
  const [ca, cb] = [await raw(nc, '$JS.API.STREAM.CREATE.KV_rawcfg', cfgBody), await raw(ref, '$JS.API.STREAM.CREATE.KV_rawcfg', cfgBody)];
  const cfgOf = (x: string) => (JSON.parse(x.slice(x.indexOf('|') + 1)) as { config: unknown }).config;
  t.same(cfgOf(ca), cfgOf(cb), 'a raw STREAM.CREATE: the same config echoed (deny_purge as asked)');

  // JetStream publish headers (issue 18.4): Nats-Msg-Id with duplicates acked as such, Nats-Expected-Last-Sequence,
  // Nats-Expected-Last-Subject-Sequence, Nats-Expected-Stream: the same PubAcks and errors, sequence numbers included.
  await kvm.create('hdrs');
  await refKvm.create('hdrs');
  const pubs: [string, string, [string, string][]][] = [
    ['$KV.hdrs.a', '1', [['Nats-Msg-Id', 'm1']]],
    ['$KV.hdrs.a', '1', [['Nats-Msg-Id', 'm1']]],
    ['$KV.hdrs.b', '2', [['Nats-Msg-Id', 'm2']]],
    ['$KV.hdrs.a', '3', [['Nats-Expected-Last-Sequence', '5']]],
    ['$KV.hdrs.a', '3', [['Nats-Expected-Last-Sequence', '2']]],
    ['$KV.hdrs.a', '4', [['Nats-Expected-Last-Subject-Sequence', '1']]],
    ['$KV.hdrs.a', '4', [['Nats-Expected-Last-Subject-Sequence', '3'], ['Nats-Msg-Id', 'm4']]],
    ['$KV.hdrs.b', '5', [['Nats-Expected-Stream', 'KV_other']]],
    ['$KV.hdrs.b', '5', [['Nats-Msg-Id', 'm1'], ['Nats-Expected-Last-Sequence', '1']]],
    ['$KV.hdrs.c', '6', [['Nats-Expected-Last-Sequence', '4'], ['Nats-Expected-Stream', 'KV_hdrs']]],
  ];
  const ack = async (c: NatsConnection, [subject, body, h]: [string, string, [string, string][]]) => {
    const hdrs = natsHeaders();
    for (const [k, v] of h) hdrs.set(k, v);
    return JSON.parse(dec.decode((await c.request(subject, enc.encode(body), { timeout: 20_000, headers: hdrs })).data)) as unknown;
  };
  for (const p of pubs) t.same(await ack(nc, p), await ack(ref, p), `publish ${p[0]} ${JSON.stringify(p[2])}`);
  t.same(
    [await raw(nc, '$JS.API.STREAM.PURGE.KV_rawcfg', '{}'), await raw(nc, '$JS.API.STREAM.PURGE.KV_hdrs', '{"seq":2,"keep":1}')].map((x) => x.replace(/"type":"[^"]*",?/, '')),
    [await raw(ref, '$JS.API.STREAM.PURGE.KV_rawcfg', '{}'), await raw(ref, '$JS.API.STREAM.PURGE.KV_hdrs', '{"seq":2,"keep":1}')].map((x) => x.replace(/"type":"[^"]*",?/, '')),
    'purge refusals: deny_purge, seq with keep',
  );

  // The standard Go client (nats.go 1.22 from Debian) runs one fixed session of core and KV calls against both
  // servers (test/kv/gokv/main.go); every printed observation must agree, revisions and errors included.
  await goDifferential(t, `nats://127.0.0.1:${natsPort}`, `nats://127.0.0.1:${server.port}`);

  // Random sessions, same seed discipline as the model test.
  const seed = Number(process.env.KV_SEED ?? Date.now() % 2 ** 31);
  t.comment(`differential seed ${seed} (replay: KV_SEED=${seed} npx tap test/kv/kv_e2e.test.ts)`);
  const cmd = fc.tuple(
    fc.constantFrom('put', 'create', 'update', 'stale', 'delete', 'purge', 'get'),
    fc.constantFrom('a', 'b', 'c.d'),
    fc.stringMatching(/^[a-z0-9]{0,6}$/),
  );
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(cmd, { minLength: 1, maxLength: 15 }), async (session) => {
      const name = `rdiff${run++}`;
      const [a, b] = [await observe(kvm, name, session), await observe(refKvm, name, session)];
      const same = JSON.stringify(a) === JSON.stringify(b);
      if (!same) t.comment(`membershipd: ${JSON.stringify(a)}\nnats-server: ${JSON.stringify(b)}`);
      return same;
    }),
    { seed, numRuns: 8, endOnFailure: true },
  );
  t.pass('random sessions agree');
});

t.test('data from before per-bucket revisions is refused with a clear message, a fresh data dir is marked', async (t) => {
  const dir = t.testdir({ old: { raft: { wal: { '0000000000000001.seg': 'x' } } }, fresh: {} });
  t.throws(() => checkKvFormat(join(dir, 'old')), { code: NodeErrorCode.dataFormat, message: /written before per-bucket KV revisions.*RUNBOOK/ });
  checkKvFormat(join(dir, 'fresh'));
  t.equal(readFileSync(join(dir, 'fresh', 'kv-format'), 'utf8'), '2\n', 'a fresh data dir is marked as format 2');
  checkKvFormat(join(dir, 'fresh'));
  writeFileSync(join(dir, 'fresh', 'kv-format'), '7\n');
  t.throws(() => checkKvFormat(join(dir, 'fresh')), { code: NodeErrorCode.dataFormat, message: /KV format "7"/ });
  // A snapshot image of format 1 (as an old leader would send) is refused, not misread.
  t.throws(() => new KvStateMachine().restore(pack([1, 5, []])), { code: 'ESTORE_FORMAT_VERSION', message: /format 1.*RUNBOOK/ });
});

t.test('3-node cluster through `serve`: put on node A, get / watch / keys / history / update on node B', async (t) => {
  const dir = t.testdir({ 'route.pass': 'route-secret\n' });
  const ca = await createCertificateAuthority();
  const leaf = await issueCertificate(ca, { commonName: 'route', usage: 'node' });
  const { certFile, keyFile } = await writePemPair(dir, 'route', leaf);
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, ca.cert);
  const held = await holdPorts(3);
  t.teardown(() => releaseUnused(held));
  const clusterPorts = held.map((h) => h.port);
  const routes = clusterPorts.map((p) => `127.0.0.1:${p}`).join(',');
  const nodes: ServingNode[] = [];
  const conns: NatsConnection[] = [];
  t.teardown(async () => {
    for (const c of conns) await c.close().catch(() => undefined);
    for (const n of nodes) await n.stop().catch(() => undefined);
  });
  await Promise.all(clusterPorts.map(async (port, i) => {
    const cmd = parseCommandLine([
      'serve', '--server-name', `kv${i}`, '--bind', '127.0.0.1', '--nats-port', '0', '--http-port', '0',
      '--cluster-name', 'kvc', '--cluster-port', String(port), '--routes', routes, '--cluster-user', 'route', '--cluster-pass-file', join(dir, 'route.pass'),
      '--route-tls-cert', certFile, '--route-tls-key', keyFile, '--route-tls-ca', caFile,
      '--data-dir', join(dir, `data-${i}`), '--internal-id-file', join(dir, `id-${i}.nk`), '--log-level', 'silent',
    ]);
    if (cmd.kind !== 'serve') throw new Error(`expected serve, got ${cmd.kind}`);
    const auth = await loadBusAuth(cmd.config, silentLogger());
    nodes[i] = await startServing(cmd.config, silentLogger(), auth.authenticator, auth, { clusterListener: takeListener(held[i]) });
  }));
  await waitUntil(() => nodes.every((n) => n.cluster?.status.health().status === 'ok'), {
    what: () => `a healthy cluster: ${JSON.stringify(nodes.map((n) => n.cluster?.status.health()))}`, timeoutMs: 30_000,
  });
  const [ncA, ncB] = [nodes[0]!, nodes[1]!].map((n) => connect({ servers: n.urls.nats, timeout: 20_000 }));
  conns.push(await ncA!, await ncB!);
  const [a, b] = conns as [NatsConnection, NatsConnection];
  t.equal(a.info?.jetstream, true, 'INFO says jetstream on a cluster node');
  const kvA = await new Kvm(jetstream(a, { timeout: 20_000 })).create('shared', { history: 3 });
  const kvB = await new Kvm(jetstream(b, { timeout: 20_000 })).open('shared');
  t.equal((await kvB.status()).replicas, 1, 'num_replicas as created (1), not the meta-group voters (issue 18.3)');
  const seen: ClientEntry[] = [];
  const watch = await kvB.watch();
  const watching = (async () => {
    for await (const e of watch) {
      seen.push(e);
      if (seen.length >= 3) break;
    }
  })();
  const r1 = await kvA.put('k', 'v1');
  t.equal(r1, 1, 'the first write of a bucket is revision 1 on a cluster too (the ub_* buckets written at bootstrap do not count)');
  t.equal((await kvB.get('k'))?.string(), 'v1', 'a put on A is read on B (linearizable read)');
  t.equal((await kvB.get('k'))?.revision, r1);
  const r2 = await kvB.update('k', 'v2', r1);
  t.equal((await kvA.get('k'))?.string(), 'v2', 'an update on B with A\'s revision is read on A');
  t.ok((await rejection(kvA.update('k', 'stale', r1))).message.includes('wrong last sequence'), 'update at a stale revision refused');
  await kvA.delete('k');
  await watching;
  t.same(seen.map((e) => `${e.operation}:${e.string()}:${e.revision}`), [`PUT:v1:${r1}`, `PUT:v2:${r2}`, `DEL::${seen[2]?.revision}`],
    'the watcher on B saw A\'s put, its own update and A\'s delete, in order');
  await kvA.put('other', 'x');
  t.same((await collect(await kvB.keys())).sort(), ['other'], 'keys on B (a deleted key is not listed)');
  t.same((await collect(await kvB.history({ key: 'k' }))).map((e) => `${e.operation}:${e.string()}`), ['PUT:v1', 'PUT:v2', 'DEL:'], 'history on B');
  // STREAM.INFO `cluster` (issue 18.7): the cluster name, the Raft leader's server name whichever node answers, the
  // other voters as replicas; account info counts only what this client may see (18.6).
  const raftLeader = (nodes[0]!.cluster!.status.raftz().leader as { name: string } | null)?.name;
  for (const c of [a, b]) {
    const si = await (await jetstreamManager(c, { timeout: 20_000 })).streams.info('KV_shared');
    t.equal(si.cluster?.name, 'kvc', 'cluster name');
    t.equal(si.cluster?.leader, raftLeader, 'leader is the Raft leader');
    const replicas = si.cluster?.replicas ?? [];
    t.same(replicas.map((r) => r.name).sort(), ['kv0', 'kv1', 'kv2'].filter((n) => n !== raftLeader), 'replicas: the other voters');
    t.ok(replicas.every((r) => typeof r.current === 'boolean' && typeof r.active === 'number'), 'each replica has current and active');
  }
  t.equal((await (await jetstreamManager(b, { timeout: 20_000 })).getAccountInfo()).streams, 1, 'account info: only KV_shared, not the six ub_* buckets');
  // The Nats-Msg-Id window is replicated state: a retry of the same publish through another node is a duplicate.
  const withId = (c: NatsConnection) => jetstream(c, { timeout: 20_000 }).publish('$KV.shared.dup', 'v', { msgID: 'once' });
  const first = await withId(a);
  t.match(await withId(b), { seq: first.seq, duplicate: true }, 'the same Msg-Id through node B: acked as a duplicate of A\'s write');
  // Bucket TTL on the cluster: the leader proposes the expiry; a follower's read sees it gone.
  const ttlA = await new Kvm(jetstream(a, { timeout: 20_000 })).create('ttlc', { ttl: 400 });
  await ttlA.put('x', '1');
  const ttlB = await new Kvm(jetstream(b, { timeout: 20_000 })).open('ttlc');
  await waitFor('expiry on the cluster', async () => (await ttlB.status()).values === 0);
  t.equal(await ttlB.get('x'), null, 'expired on every node by the leader\'s proposal');
  // The control-plane buckets share the store but are not visible without an admin principal.
  t.notOk((await collect(new Kvm(b).list())).some((s) => s.bucket.startsWith('ub_')), 'no ub_* bucket listed for a non-admin client');
  // A wildcard-subject publish crosses the routes like any other (nats-server 2.9 does the same): re-sent until
  // B's interest has reached A, bounded in count and time.
  const got: string[] = [];
  const sub = b.subscribe('wcx.>', { callback: (_e, m) => void got.push(m.subject) });
  await b.flush();
  for (let i = 0; i < 200 && got.length === 0; i++) {
    a.publish('wcx.*', 'x');
    await a.flush();
    await pause(50, 'between re-publishes: interest may not have reached node A yet (no ack to wait for)');
  }
  sub.unsubscribe();
  t.equal(got[0], 'wcx.*', 'a publish to wcx.* on A reached the wcx.> subscriber on B');
});
