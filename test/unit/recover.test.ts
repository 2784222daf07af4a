// `cluster recover --force-new-cluster` on data directories built with the real store (RaftStorage, WAL, snapshots):
// what the rewrite keeps (the whole log, also entries after the known commit; an exactly-once duplicate skipped; the
// old cluster's own buckets dropped), the probe's majority rule, the refusals, and crash safety at both sides of the
// commit marker (leftovers before it are discarded; after it the roll-forward finishes, from any point). The probe is
// also run against a real listening socket and a closed port. The multi-process test is test/fault/recover.test.ts.
import t from 'tap';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfChangeType, encodeConfChange, EntryType, type Entry } from '../../raft/index.js';
import { encodeKvCommand, KvStateMachine, RaftStorage, type KvCommand } from '../../store/index.js';
import { checkKvFormat, readClusterFile, writeClusterFile } from '../../src/node/bootstrap.js';
import { finishInterruptedRecovery, forceNewCluster, probeAddress, rollForwardRecovery } from '../../src/node/recover.js';
import { decodeNodeSnapshot } from '../../src/node/sessions.js';
import { encodeEnvelope } from '../../src/node/wire.js';

const root = mkdtempSync(join(tmpdir(), 'membershipd-recover-unit-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

const put = (bucket: string, key: string, value: string): KvCommand => ({ op: 'put', bucket, key, value: new TextEncoder().encode(value), ts: 1_000 });
const normal = (index: number, term: number, seq: number, cmd: KvCommand): Entry =>
  ({ index, term, type: EntryType.normal, data: encodeEnvelope(2, 77, seq, encodeKvCommand(cmd)) });

/**
 * Slot 2 of a 3-voter cluster: entries 1..7, of which it knew 1..5 committed. Entry 6 repeats entry 5's (origin,
 * boot, seq): a re-submitted copy that must not apply twice. Entry 7 comes after the known commit index.
 */
async function survivor(name: string): Promise<string> {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  checkKvFormat(dir);
  const s = await RaftStorage.open(join(dir, 'raft'));
  const entries: Entry[] = [
    { index: 1, term: 1, type: EntryType.confChange, data: encodeConfChange({ type: ConfChangeType.init, nodeId: 0, voters: [1, 2, 3] }) },
    normal(2, 2, 1, { op: 'bucket.create', bucket: 'orders', config: {}, ts: 1_000 }),
    normal(3, 2, 2, { op: 'bucket.create', bucket: 'ub_nodes', config: {}, ts: 1_000 }),
    normal(4, 2, 3, put('orders', 'a', 'committed')),
    normal(5, 2, 4, put('orders', 'b', 'once')),
    normal(6, 2, 4, put('orders', 'b', 'twice')),
    normal(7, 3, 5, put('orders', 'c', 'after-commit')),
  ];
  await s.save({ entries, hardState: { term: 3, vote: 1, commit: 5 } });
  await s.close();
  writeClusterFile(dir, {
    version: 1, cluster: 'c', server: 'n2', id: 2, addresses: ['127.0.0.1:7001', '127.0.0.1:7002', '127.0.0.1:7003'], voters: 3,
    bindings: { 1: { name: 'n1', key: 'aa' }, 3: { name: 'n3', key: 'cc' } }, initial: 3,
  });
  return dir;
}

const nobody = async (): Promise<boolean> => false;

t.test('the rewrite keeps the whole log, once, and makes slot 1 the only voter of a one-slot table', async (t) => {
  const dir = await survivor('keep');
  const report = await forceNewCluster({ dataDir: dir, quorumLost: false, probe: nobody, dropBuckets: ['ub_nodes', 'ub_config'], now: () => 1_796_000_000_000 });
  t.equal(report.record.index, 8, 'the kept state is at the last entry plus the dropped bucket');
  t.equal(report.record.commit, 5, 'the commit index the survivor knew is recorded');
  t.same(report.record.previousVoters, ['n1@127.0.0.1:7001', 'n2@127.0.0.1:7002', 'n3@127.0.0.1:7003']);
  const c = readClusterFile(dir)!;
  t.match(c, { id: 1, addresses: ['127.0.0.1:7002'], initial: 1, voters: 3, bindings: {}, incarnation: report.record.incarnation });
  t.match(c.incarnation, /^1796000000000-[0-9a-f]{16}$/);
  const s = await RaftStorage.open(join(dir, 'raft'));
  try {
    const snap = s.snapshot();
    t.same(snap.meta.conf, { voters: [1], learners: [] }, 'conf: this node alone');
    t.equal(s.hardState().commit, 8, 'everything kept is committed');
    t.equal(s.hardState().vote, 0);
    t.ok(s.hardState().term >= 3, 'the term never goes back');
    const kv = new KvStateMachine();
    kv.restore(decodeNodeSnapshot(snap.data).kvImage);
    const get = (k: string): string | undefined => { const e = kv.get('orders', k); return e ? new TextDecoder().decode(e.value) : undefined; };
    t.equal(get('a'), 'committed');
    t.equal(get('b'), 'once', 'a re-submitted copy is applied once, as on the node');
    t.equal(get('c'), 'after-commit', 'an entry after the known commit index is kept');
    t.equal(kv.bucketInfo('ub_nodes'), undefined, 'the old cluster\'s nodes bucket is dropped');
  } finally {
    await s.close();
  }
  t.ok(readdirSync(dir).some((f) => f.startsWith('raft.before-recovery-')), 'the old state is kept aside');
  t.notOk(existsSync(join(dir, 'RECOVERY')));
});

t.test('the probe: a majority with this node refuses unless --i-know-a-quorum-is-lost; nothing is written', async (t) => {
  const dir = await survivor('probe');
  const before = readFileSync(join(dir, 'cluster.json'), 'utf8');
  const oneAnswers = async (a: string): Promise<boolean> => a.endsWith(':7003');
  await t.rejects(forceNewCluster({ dataDir: dir, quorumLost: false, probe: oneAnswers }),
    { code: 'ERECOVER_QUORUM_REACHABLE', message: /1 of the 2 other voters answer.*n3 at 127\.0\.0\.1:7003/ });
  t.equal(readFileSync(join(dir, 'cluster.json'), 'utf8'), before, 'cluster.json unchanged');
  t.same(readdirSync(dir).sort(), ['cluster.json', 'kv-format', 'raft'], 'nothing else written');
  const r = await forceNewCluster({ dataDir: dir, quorumLost: true, probe: oneAnswers });
  t.same(r.record.reachable, ['n3@127.0.0.1:7003'], 'the reachable voter is recorded');
  t.equal(r.record.forced, true);
});

t.test('refusals: no cluster.json, a node that lost its data, an empty log, already alone', async (t) => {
  await t.rejects(forceNewCluster({ dataDir: mkdtempSync(join(root, 'none-')), quorumLost: false, probe: nobody }), { code: 'ERECOVER_STATE', message: /cluster\.json does not exist/ });
  const lost = await survivor('lost');
  writeClusterFile(lost, { ...readClusterFile(lost)!, recovering: true });
  await t.rejects(forceNewCluster({ dataDir: lost, quorumLost: false, probe: nobody }), { code: 'ERECOVER_STATE', message: /lost its data/ });
  const empty = join(root, 'empty');
  mkdirSync(empty);
  checkKvFormat(empty);
  await (await RaftStorage.open(join(empty, 'raft'))).close();
  writeClusterFile(empty, { ...readClusterFile(await survivor('donor'))! });
  await t.rejects(forceNewCluster({ dataDir: empty, quorumLost: false, probe: nobody }), { code: 'ERECOVER_STATE', message: /log of this data directory is empty/ });
  const alone = await survivor('alone');
  await forceNewCluster({ dataDir: alone, quorumLost: false, probe: nobody });
  await t.rejects(forceNewCluster({ dataDir: alone, quorumLost: false, probe: nobody }), { code: 'ERECOVER_STATE', message: /already the only voter/ });
});

t.test('crash before the commit marker: leftovers are discarded, the old state was never touched', async (t) => {
  const dir = await survivor('before-marker');
  mkdirSync(join(dir, 'raft.recover-new', 'wal'), { recursive: true });
  writeFileSync(join(dir, 'raft.recover-new', 'wal', 'garbage'), 'half a write');
  writeFileSync(join(dir, 'cluster.json.recover-new'), '{"trunc');
  t.equal(await finishInterruptedRecovery(dir), undefined, 'a node start does nothing without the marker');
  t.equal(readClusterFile(dir)!.id, 2, 'the node still starts as slot 2 of the old cluster');
  const r = await forceNewCluster({ dataDir: dir, quorumLost: false, probe: nobody });
  t.equal(r.resumed, false);
  t.equal(readClusterFile(dir)!.id, 1, 'a re-run recovers from the intact old state');
  t.notOk(existsSync(join(dir, 'cluster.json.recover-new')));
});

t.test('crash after the commit marker: the roll-forward finishes from any point, at the node start or a re-run', async (t) => {
  // A finished recovery gives the new state; put it back into the "committed, not rolled forward" shape by hand.
  const dir = await survivor('after-marker');
  const pristine = join(root, 'after-marker-old');
  cpSync(dir, pristine, { recursive: true });
  await forceNewCluster({ dataDir: dir, quorumLost: false, probe: nobody });
  const inc = readClusterFile(dir)!.incarnation!;
  const staged = (name: string, step: 'none' | 'raft-aside' | 'raft-done'): string => {
    const d = join(root, name);
    cpSync(pristine, d, { recursive: true });
    cpSync(join(dir, 'raft'), join(d, 'raft.recover-new'), { recursive: true });
    cpSync(join(dir, 'cluster.json'), join(d, 'cluster.json.recover-new'));
    writeFileSync(join(d, 'RECOVERY'), `${JSON.stringify({ incarnation: inc })}\n`);
    if (step !== 'none') renameSync(join(d, 'raft'), join(d, `raft.before-recovery-${inc}`));
    if (step === 'raft-done') renameSync(join(d, 'raft.recover-new'), join(d, 'raft'));
    return d;
  };
  for (const step of ['none', 'raft-aside', 'raft-done'] as const) {
    const d = staged(`node-start-${step}`, step);
    t.equal(await finishInterruptedRecovery(d), inc, `node start after a crash at "${step}": rolled forward`);
    t.equal(readClusterFile(d)!.incarnation, inc);
    const s = await RaftStorage.open(join(d, 'raft'));
    t.same(s.snapshot().meta.conf.voters, [1], 'the new Raft state is in place');
    await s.close();
    t.same(readdirSync(d).filter((f) => f.includes('recover-new') || f === 'RECOVERY'), [], 'nothing staged is left');
  }
  const d = staged('rerun', 'raft-aside');
  const r = await forceNewCluster({ dataDir: d, quorumLost: false, probe: nobody });
  t.equal(r.resumed, true, 'a re-run of recover finishes the committed one instead of recovering again');
  t.equal(readClusterFile(d)!.incarnation, inc);
  writeFileSync(join(d, 'RECOVERY'), 'not json');
  t.throws(() => rollForwardRecovery(d), { code: 'ERECOVER_STATE', message: /is not the marker/ }, 'a damaged marker is refused, not guessed');
  writeFileSync(join(d, 'RECOVERY'), '{"incarnation":"a b"}');
  t.throws(() => rollForwardRecovery(d), { code: 'ERECOVER_STATE', message: /names no valid incarnation/ });
});

t.test('cluster.json with a damaged incarnation or recovery record stops the node before it is sent anywhere', async (t) => {
  const dir = await survivor('damaged');
  await forceNewCluster({ dataDir: dir, quorumLost: false, probe: nobody });
  const good = readFileSync(join(dir, 'cluster.json'), 'utf8');
  const write = (patch: Record<string, unknown>): void => writeFileSync(join(dir, 'cluster.json'), JSON.stringify({ ...JSON.parse(good), ...patch }));
  for (const incarnation of [7, '', 'a b', 'x'.repeat(65), 'tab\there']) {
    write({ incarnation });
    t.throws(() => readClusterFile(dir), { code: 'ENODE_CONFIG', message: /"incarnation" is not 1-64 printable/ }, `incarnation ${JSON.stringify(incarnation)}`);
  }
  write({ recovered: 'yes' });
  t.throws(() => readClusterFile(dir), { code: 'ENODE_CONFIG', message: /"recovered" does not describe/ });
  write({ recovered: { ...JSON.parse(good).recovered, incarnation: '1-00' } });
  t.throws(() => readClusterFile(dir), { code: 'ENODE_CONFIG', message: /"recovered" does not describe/ });
  writeFileSync(join(dir, 'cluster.json'), good);
  t.equal(readClusterFile(dir)!.incarnation, JSON.parse(good).incarnation, 'the intact file reads');
});

t.test('probeAddress: a listening socket answers, a closed port does not, a malformed address is no answer', async (t) => {
  const server = createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  t.equal(await probeAddress(`127.0.0.1:${port}`, 1000), true);
  await new Promise<void>((r) => server.close(() => r()));
  t.equal(await probeAddress(`127.0.0.1:${port}`, 1000), false);
  for (const bad of ['nohost', ':80', '127.0.0.1:0', '127.0.0.1:99999', '127.0.0.1:x', 'self']) t.equal(await probeAddress(bad, 100), false, `${bad}: no answer`);
});
