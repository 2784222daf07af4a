// The snapshot stream (src/node/snapshot_stream.ts) between two real stores on disk, its frames going through the
// route codec (encodeFrame/FrameParser) as on a link: a whole transfer, a link broken mid-transfer, a leader change
// mid-transfer, a corrupted chunk. Each interrupted transfer must leave no partial file and complete when Raft offers
// the snapshot again. (The same path over real TLS routes runs in test/cluster/rejoin.test.ts.)
import t from 'tap';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EntryType, MessageType, type Message } from '../../raft/index.js';
import { crc32 } from 'node:zlib';
import { encodeKvCommand, KvStateMachine, RaftStorage, snapshotRefData } from '../../store/index.js';
import { FrameParser, encodeFrame, type RouteFrame } from '../../transport/index.js';
import { SnapshotStream } from '../../src/node/snapshot_stream.js';
import { SnapshotStaging } from '../../src/node/staged_restore.js';
import { AppliedSessions, decodeNodeSnapshot, writeNodeSnapshot } from '../../src/node/sessions.js';
import { decodeNodeFrame } from '../../src/node/wire.js';
import { silentLogger } from '../../src/log.js';
import { waitFor } from '../support/wait.js';

const root = mkdtempSync(join(tmpdir(), 'membershipd-snapstream-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const conf = { voters: [1, 2, 3], learners: [] };

/** A store holding a snapshot at `index` (term `term`) of an image of `bytes` pseudo-random bytes. */
async function leaderStore(name: string, index: number, term: number, bytes: number, fill: number): Promise<{ st: RaftStorage; image: Uint8Array }> {
  const image = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) image[i] = (i * 131 + fill) & 0xff;
  return { st: await storeWithSnapshot(name, index, term, image), image };
}

/** A store whose log runs to `index` (term `term`) and whose snapshot at `index` holds `data`. */
async function storeWithSnapshot(name: string, index: number, term: number, data: Uint8Array): Promise<RaftStorage> {
  const st = await RaftStorage.open(join(root, name));
  const entries = Array.from({ length: index }, (_, k) => ({ term, index: k + 1, type: EntryType.normal, data: Buffer.from([k & 0xff]) }));
  await st.save({ hardState: { term, vote: 1, commit: index }, entries });
  await st.createSnapshot(index, conf, data);
  return st;
}

function snapMessage(from: number, term: number, index: number): Message {
  return {
    type: MessageType.snap, from, to: 2, term, logTerm: 0, index: 0, entries: [], commit: 0, reject: false, rejectHint: 0,
    context: new Uint8Array(0), recovering: false,
    snapshot: { meta: { index, term, conf }, offset: 0, data: snapshotRefData, done: true, total: snapshotRefData.length },
  };
}

/**
 * Streams named after their peers, joined by links that encode and parse every frame as a route does; `filter` may
 * drop (null) or change a frame on its way, and cut(a, b) breaks the link between two of them.
 */
function network(filter: (f: RouteFrame, from: string, to: string) => RouteFrame | null = (f) => f) {
  const nodes = new Map<string, SnapshotStream>();
  const cutLinks = new Set<string>();
  const delivered: Message[] = [];
  /** MsgSnaps whose transfer the sender reported failed to Raft (RawNode.reportSnapshotFailure). */
  const failures: Message[] = [];
  const key = (x: string, y: string): string => [x, y].sort().join('-');
  const send = (from: string, to: string, f: RouteFrame): boolean => {
    if (cutLinks.has(key(from, to))) return false;
    const out = filter(f, from, to);
    if (out === null) return true;
    const bytes = encodeFrame(out);
    setImmediate(() => {
      if (!cutLinks.has(key(from, to))) new FrameParser().push(bytes, (w) => nodes.get(to)?.onFrame(from, w as RouteFrame));
    });
    return true;
  };
  const add = (name: string, storage: RaftStorage, staging = new SnapshotStaging()): SnapshotStream => {
    const s = new SnapshotStream({
      storage, log: silentLogger(), chunkBytes: 64 << 10, windowBytes: 256 << 10, staging,
      send: (peer, f) => send(name, peer, f),
      reportFailure: (m) => failures.push(m),
      deliver: (_peer, data) => {
        const d = decodeNodeFrame(data);
        if (typeof d !== 'string' && d.kind === 'raft') delivered.push(d.message);
      },
    });
    nodes.set(name, s);
    return s;
  };
  return {
    add, delivered, failures,
    cut: (x: string, y: string): void => { cutLinks.add(key(x, y)); },
    mend: (x: string, y: string): void => { cutLinks.delete(key(x, y)); },
    close: () => Promise.all([...nodes.values()].map((n) => n.close())),
  };
}

function pair(sender: RaftStorage, receiver: RaftStorage, filter?: (f: RouteFrame, from: string, to: string) => RouteFrame | null, staging?: SnapshotStaging) {
  const net = network(filter);
  return { net, a: net.add('a', sender), b: net.add('b', receiver, staging), delivered: net.delivered };
}

const recvFiles = (dir: string): string[] => readdirSync(join(root, dir, 'snap')).filter((n) => n.includes('.recv'));

/** Raft on the follower installs the delivered snapshot: the store adopts the received file and the image reads back whole. */
async function install(receiver: RaftStorage, m: Message): Promise<Uint8Array> {
  await receiver.applySnapshot({ meta: m.snapshot!.meta, data: m.snapshot!.data });
  return receiver.readSnapshotData();
}

t.test('a whole transfer: the follower gets the file, Raft gets the message, the store adopts the file', async (t) => {
  const { st: lead, image } = await leaderStore('whole-a', 20, 3, 1_500_000, 1);
  const follower = await RaftStorage.open(join(root, 'whole-b'));
  const p = pair(lead, follower);
  p.a.offer('b', snapMessage(1, 3, 20));
  p.a.offer('b', snapMessage(1, 3, 20)); // Raft's resend while the transfer runs: not a second transfer
  await waitFor(() => p.delivered.length === 1, { what: 'the snapshot message delivered' });
  t.equal(p.a.counters.transfersStarted, 1, 'one transfer for the two offers');
  t.equal(p.net.failures.length, 0, 'no failure reported');
  t.equal(p.delivered[0]!.snapshot!.meta.index, 20, 'the delivered message is the snapshot message');
  await waitFor(() => p.a.sending('b') === undefined, { what: 'the sender sees the last acknowledgement' });
  t.equal(p.a.counters.transfersCompleted, 1);
  t.ok(p.b.counters.chunksReceived > 20, `sent in bounded chunks (${p.b.counters.chunksReceived})`);
  t.same(Buffer.from(await install(follower, p.delivered[0]!)), Buffer.from(image), 'the installed image is the leader\'s');
  t.same(recvFiles('whole-b'), [], 'no receive file left once adopted');
  t.equal(follower.snapshot().meta.index, 20);
  await Promise.all([p.net.close(), lead.close(), follower.close()]);
});

t.test('a node snapshot is parsed while it is received: the staged state is the leader\'s, installed without reading the file', async (t) => {
  const sm = new KvStateMachine();
  let i = 0;
  sm.apply(++i, encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: { history: 2 }, ts: 1 }));
  for (let k = 0; k < 6000; k++) sm.apply(++i, encodeKvCommand({ op: 'put', bucket: 'b', key: `k.${k % 5000}`, value: Buffer.alloc(200, k), ts: 10 + k }));
  const data = writeNodeSnapshot(sm, new AppliedSessions());
  const lead = await storeWithSnapshot('staged-a', i, 3, data);
  const follower = await RaftStorage.open(join(root, 'staged-b'));
  const staging = new SnapshotStaging();
  const target = new KvStateMachine();
  staging.target = target;
  const p = pair(lead, follower, undefined, staging);
  p.a.offer('b', snapMessage(1, 3, i));
  await waitFor(() => p.delivered.length === 1, { what: 'the snapshot message delivered' });
  t.ok(p.b.counters.chunksReceived > 10, `received in ${p.b.counters.chunksReceived} chunks, parsed as they came`);
  t.equal(staging.take(i, 3 + 1), undefined, 'a different snapshot (term) is not the staged one: the install reads the file');
  t.equal(staging.take(i, 3), undefined, 'and the staging was taken by that install');
  // Again, and this time Raft installs the staged snapshot itself.
  const again = await RaftStorage.open(join(root, 'staged-c'));
  const staging2 = new SnapshotStaging();
  const target2 = new KvStateMachine();
  staging2.target = target2;
  const q = pair(lead, again, undefined, staging2);
  q.a.offer('b', snapMessage(1, 3, i));
  await waitFor(() => q.delivered.length === 1, { what: 'the snapshot message delivered' });
  const staged = staging2.take(i, 3);
  t.ok(staged !== undefined, 'the staged parse is complete when the message is delivered');
  t.equal(target2.appliedIndex, 0, 'nothing installed before the install');
  staged!.install();
  t.same(Buffer.from(target2.snapshot()), Buffer.from(sm.snapshot()), 'the staged state is the leader\'s');
  t.same(staged!.sessions, decodeNodeSnapshot(data).sessions, 'with the session table of the snapshot');
  t.equal(staging2.counts.installed, 1);
  t.equal(target.appliedIndex, 0, 'the first follower\'s state machine was never touched');
  await Promise.all([p.net.close(), q.net.close(), lead.close(), follower.close(), again.close()]);
});

t.test('a link broken mid-transfer abandons it on both sides; the next offer starts again and completes', async (t) => {
  const { st: lead, image } = await leaderStore('cut-a', 20, 3, 1_500_000, 2);
  const follower = await RaftStorage.open(join(root, 'cut-b'));
  let chunks = 0;
  const p = pair(lead, follower, (f) => {
    if (f.kind === 'snap_chunk' && ++chunks === 6) p.net.cut('a', 'b');
    return f;
  });
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => chunks >= 6 && p.b.receiving().received > 0, { what: 'part of the snapshot received' });
  p.a.peerDown('b');
  p.b.peerDown('a');
  await waitFor(() => recvFiles('cut-b').length === 0, { what: 'the partial file removed' });
  t.equal(p.b.receiving().total, 0, 'the follower holds no transfer');
  t.equal(p.a.sending('b'), undefined, 'the leader holds no transfer');
  t.equal(p.delivered.length, 0, 'nothing delivered to Raft');
  t.equal(p.net.failures.length, 1, 'the leader reported the failure to Raft once (it probes again)');
  p.net.mend('a', 'b');
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => p.delivered.length === 1, { what: 'the restarted transfer delivered' });
  t.equal(p.a.counters.transfersStarted, 2, 'restarted from the beginning as a new transfer');
  t.same(Buffer.from(await install(follower, p.delivered[0]!)), Buffer.from(image));
  await Promise.all([p.net.close(), lead.close(), follower.close()]);
});

t.test('a leader change mid-transfer: the old leader stops, the new leader\'s transfer replaces the partial one', async (t) => {
  const { st: oldLead } = await leaderStore('lc-a', 20, 3, 1_500_000, 3);
  const { st: newLead, image: newImage } = await leaderStore('lc-c', 25, 4, 1_200_000, 4);
  const follower = await RaftStorage.open(join(root, 'lc-b'));
  let chunks = 0;
  // The old leader's chunks stop reaching the follower after the sixth: it is cut off from the cluster.
  const net = network((f, from) => (from === 'a' && f.kind === 'snap_chunk' && ++chunks > 6 ? null : f));
  const oldStream = net.add('a', oldLead);
  const followerStream = net.add('b', follower);
  const newStream = net.add('c', newLead);
  const p = { a: oldStream, b: followerStream, delivered: net.delivered };
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => p.b.receiving().received > 0 && chunks > 6, { what: 'part of the old leader\'s snapshot received' });
  p.a.leaderLost();
  t.equal(p.a.sending('b'), undefined, 'the old leader abandoned its transfer');
  newStream.offer('b', snapMessage(3, 4, 25));
  await waitFor(() => p.delivered.length === 1, { what: 'the new leader\'s snapshot delivered' });
  t.equal(p.delivered[0]!.snapshot!.meta.index, 25, 'the follower got the new leader\'s snapshot');
  t.equal(p.delivered[0]!.from, 3);
  t.same(Buffer.from(await install(follower, p.delivered[0]!)), Buffer.from(newImage));
  t.same(recvFiles('lc-b'), [], 'the old partial file is gone');
  await Promise.all([net.close(), oldLead.close(), newLead.close(), follower.close()]);
});

t.test('a corrupted chunk is refused by its checksum; the transfer is abandoned and the next offer completes', async (t) => {
  const { st: lead, image } = await leaderStore('crc-a', 20, 3, 1_500_000, 5);
  const follower = await RaftStorage.open(join(root, 'crc-b'));
  let chunks = 0;
  const p = pair(lead, follower, (f) => {
    if (f.kind !== 'snap_chunk' || ++chunks !== 4) return f;
    const data = Buffer.from(f.data);
    data[100] ^= 0x01; // one bit flipped on the way, the frame itself well-formed
    return { ...f, data };
  });
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => p.b.counters.chunksRefused === 1 && p.a.sending('b') === undefined, { what: 'the chunk refused and the transfer abandoned' });
  await waitFor(() => recvFiles('crc-b').length === 0, { what: 'the partial file removed' });
  t.equal(p.delivered.length, 0, 'nothing delivered to Raft');
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => p.delivered.length === 1, { what: 'the restarted transfer delivered' });
  t.same(Buffer.from(await install(follower, p.delivered[0]!)), Buffer.from(image), 'the image installed is intact');
  await Promise.all([p.net.close(), lead.close(), follower.close()]);
});

t.test('damage the chunk checksums cannot see (a chunk whose CRC matches its wrong bytes) is refused by the file\'s record CRC', async (t) => {
  const { st: lead, image } = await leaderStore('rec-a', 20, 3, 1_500_000, 6);
  const follower = await RaftStorage.open(join(root, 'rec-b'));
  let chunks = 0;
  let damage = true;
  const p = pair(lead, follower, (f) => {
    if (f.kind !== 'snap_chunk' || ++chunks !== 5 || !damage) return f;
    damage = false;
    const data = Buffer.from(f.data);
    data[7] ^= 0x80;
    return { ...f, data, crc: crc32(data) };
  });
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => p.b.counters.chunksRefused === 1 && p.a.sending('b') === undefined, { what: 'the whole file refused at its end' });
  t.equal(p.delivered.length, 0, 'nothing delivered to Raft');
  await waitFor(() => recvFiles('rec-b').length === 0, { what: 'the refused file removed' });
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => p.delivered.length === 1, { what: 'the restarted transfer delivered' });
  t.same(Buffer.from(await install(follower, p.delivered[0]!)), Buffer.from(image), 'the image installed is intact');
  await Promise.all([p.net.close(), lead.close(), follower.close()]);
});

t.test('a transfer of a snapshot the leader no longer keeps as its newest fails to start and is reported to Raft', async (t) => {
  const { st: lead } = await leaderStore('stale-a', 20, 3, 200_000, 7);
  const follower = await RaftStorage.open(join(root, 'stale-b'));
  const p = pair(lead, follower);
  const entries = [21, 22].map((index) => ({ term: 3, index, type: EntryType.normal, data: Buffer.from([1]) }));
  await lead.save({ entries, hardState: { term: 3, vote: 1, commit: 22 } });
  await lead.createSnapshot(22, conf, new Uint8Array(1000));
  p.a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => p.net.failures.length === 1, { what: 'the failure reported' });
  t.equal(p.net.failures[0]!.snapshot!.meta.index, 20, 'the report names the MsgSnap Raft sent, so Raft probes and sends its newest');
  t.equal(p.a.sending('b'), undefined);
  p.a.offer('b', snapMessage(1, 3, 22));
  await waitFor(() => p.delivered.length === 1, { what: 'the newest snapshot delivered' });
  t.equal(p.delivered[0]!.snapshot!.meta.index, 22);
  await Promise.all([p.net.close(), lead.close(), follower.close()]);
});

t.test('a transfer replaced while its last piece is being written is not delivered; the newer one installs staged', async (t) => {
  // What a clean-clone run of rejoin.test.ts met: the leader snapshotted again while its first (one-chunk) transfer
  // was being written on the follower. The old transfer, replaced, was still delivered to Raft; its install took the
  // newer transfer's staging, and both snapshots were read back from their files.
  const nodeSnapshot = async (name: string, index: number, puts: number): Promise<{ st: RaftStorage; sm: KvStateMachine }> => {
    const sm = new KvStateMachine();
    sm.apply(1, encodeKvCommand({ op: 'bucket.create', bucket: 'b', config: {}, ts: 1 }));
    for (let k = 0; k < puts; k++) sm.apply(2 + k, encodeKvCommand({ op: 'put', bucket: 'b', key: `k.${k}`, value: Buffer.alloc(50, k), ts: 10 + k }));
    return { st: await storeWithSnapshot(name, index, 3, writeNodeSnapshot(sm, new AppliedSessions())), sm };
  };
  const older = await nodeSnapshot('replaced-a', 20, 19);
  const newer = await nodeSnapshot('replaced-c', 25, 24);
  const follower = await RaftStorage.open(join(root, 'replaced-b'));
  // The follower's write of the older transfer's piece is held until the newer transfer has replaced it, and the
  // newer transfer's file is not begun (which clears partial files) until the older one's write has returned.
  const gate = (): { held: Promise<void>; release: () => void } => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    return { held, release };
  };
  const olderWrite = gate();
  const newerBegin = gate();
  let writesHeld = 0;
  let writesDone = 0;
  const gated = {
    openSnapshotFile: follower.openSnapshotFile.bind(follower),
    beginSnapshotReceive: async (...args: Parameters<RaftStorage['beginSnapshotReceive']>) => {
      if (args[0] !== 20) {
        await newerBegin.held;
        return follower.beginSnapshotReceive(...args);
      }
      const file = await follower.beginSnapshotReceive(...args);
      const write = file.write.bind(file);
      file.write = async (offset, data) => {
        writesHeld++;
        await olderWrite.held;
        await write(offset, data);
        writesDone++;
      };
      return file;
    },
  } as unknown as RaftStorage;
  const staging = new SnapshotStaging();
  const target = new KvStateMachine();
  staging.target = target;
  const net = network();
  const a = net.add('a', older.st);
  const b = net.add('b', gated, staging);
  const c = net.add('c', newer.st);
  a.offer('b', snapMessage(1, 3, 20));
  await waitFor(() => writesHeld === 1, { what: 'the older transfer\'s piece being written' });
  c.offer('b', snapMessage(3, 3, 25));
  await waitFor(() => b.counters.transfersAbandoned === 1, { what: 'the newer transfer replacing the older' });
  olderWrite.release();
  // The older transfer's partial file goes either way: removed as abandoned, or (the bug) renamed as complete.
  const olderPartial = (): string[] => recvFiles('replaced-b').filter((n) => n.startsWith('0000000000000020-') && n.endsWith('.recv'));
  await waitFor(() => writesDone === 1 && olderPartial().length === 0, { what: () => `the older transfer ended (${olderPartial().join()})` });
  newerBegin.release();
  await waitFor(() => net.delivered.some((m) => m.snapshot!.meta.index === 25), { what: 'the newer snapshot delivered' });
  t.same(net.delivered.map((m) => m.snapshot!.meta.index), [25], 'only the newer snapshot reached Raft');
  const staged = staging.take(25, 3);
  t.ok(staged !== undefined, 'and its staged parse is there for the install');
  staged!.install();
  t.same(Buffer.from(target.snapshot()), Buffer.from(newer.sm.snapshot()), 'the staged state is the newer snapshot\'s');
  t.equal(staging.counts.dropped, 1, 'the older transfer\'s staging was dropped');
  await Promise.all([net.close(), older.st.close(), newer.st.close(), follower.close()]);
});

t.test('an install of an older snapshot leaves the staging of a newer one in place', async (t) => {
  const staging = new SnapshotStaging();
  staging.target = new KvStateMachine();
  staging.begin(7, 30, 4, 100);
  t.equal(staging.take(20, 4), undefined, 'nothing staged for snapshot 20');
  staging.drop(7, 'the transfer of snapshot 30 was abandoned after all');
  t.equal(staging.counts.dropped, 1, 'snapshot 30\'s staging was still there after the install of 20');
  staging.begin(8, 30, 4, 100);
  t.equal(staging.take(30, 5), undefined, 'an install of the same index (another term) is not it');
  staging.drop(8, 'too late');
  t.equal(staging.counts.dropped, 1, 'and takes it: nothing left to drop');
});
