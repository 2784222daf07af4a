// Issue 20: a node whose data directory is lost (a replaced disk: stop it, delete its data dir, start it again with
// the same flags and identity file) rejoins safely. Three nodes in one process over real mutual-TLS routes on
// loopback, each with its real HTTP port (src/http + nodeHttpEndpoints), polled every 100 ms as the issue did:
//   - /healthz and /readyz answer 503 ("catching up: applied X of the leader's commit Y …") until the node holds
//     everything written before it came back, 200 after; never 200 while it lacks a key;
//   - the leader resets its progress for the slot and sends a snapshot (the log was compacted), the node catches
//     up, ends its recovery (votes again) and persists that;
//   - with small state; with REJOIN_KEYS keys (default 100,000) under a steady write load; and a second wipe in a
//     row (of the node then leading), after which every acknowledged write is on every node.
// Deadlines are liveness bounds for a loaded 2-core machine, never timing assertions; the measured figures are
// printed. Reproduce with REJOIN_KEYS=<n>.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { PemPair } from '../../src/certs/index.js';
import { createHttpServer, type HttpServer } from '../../src/http/index.js';
import { silentLogger } from '../../src/log.js';
import { NodeError, NodeErrorCode, startNode, type ClusterNode, type NodeOptions } from '../../src/node/index.js';
import { makePki } from '../support/certs.js';
import { closeHandedListener, heldListener, trioNodeOptions } from '../support/cluster.js';
import { holdPorts, releaseUnused, type HeldPort } from '../support/ports.js';
import { nodeHttpEndpoints } from '../../src/node/serve.js';
import { readClusterFile } from '../../src/node/bootstrap.js';
import { pause, waitFor } from '../support/wait.js';

const keysLarge = Number(process.env.REJOIN_KEYS ?? 100_000);
t.comment(`REJOIN_KEYS=${keysLarge}`);

const root = mkdtempSync(join(tmpdir(), 'membershipd-rejoin-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const running = new Set<ClusterNode>();
const servers = new Set<HttpServer>();
t.teardown(async () => {
  for (const s of servers) await s.close();
  await Promise.all([...running].map((n) => n.stop()));
});

let ca: PemPair;
const leaves: PemPair[] = [];
t.before(async () => {
  const pki = await makePki('rejoin-test-ca', ['node-0', 'node-1', 'node-2']);
  ca = pki.ca;
  leaves.push(...pki.leaves);
});

interface Member {
  node: ClusterNode | undefined;
  http: HttpServer | undefined;
}

interface Trio {
  readonly dir: string;
  readonly ports: number[];
  readonly held: HeldPort[];
  readonly style: 'all' | 'others';
  readonly members: Member[];
  readonly extra: Partial<NodeOptions>;
}

function options(trio: Trio, i: number): NodeOptions {
  return trioNodeOptions(trio, i, { ca, leaves }, { clusterName: 'rejoin-cluster', requestTimeoutMs: 10_000 });
}

const heldPorts: HeldPort[] = [];
t.teardown(() => releaseUnused(heldPorts));

async function newTrio(name: string, style: Trio['style'], extra: Partial<NodeOptions>): Promise<Trio> {
  const held = await holdPorts(3);
  heldPorts.push(...held);
  return { dir: join(root, name), ports: held.map((h) => h.port), held, style, members: [0, 1, 2].map(() => ({ node: undefined, http: undefined })), extra };
}

async function start(trio: Trio, i: number): Promise<ClusterNode> {
  // The first start of node i takes over the route socket held since newTrio (bind, don't probe).
  const handed = heldListener(trio, i);
  const node = await startNode({ ...options(trio, i), ...handed }).catch((err: unknown) => { closeHandedListener(handed); throw err; });
  running.add(node);
  const http = createHttpServer({ host: '127.0.0.1', port: 0, logger: silentLogger(), endpoints: nodeHttpEndpoints(node) });
  await http.start();
  servers.add(http);
  trio.members[i] = { node, http };
  return node;
}

async function stop(trio: Trio, i: number): Promise<void> {
  const m = trio.members[i]!;
  if (m.http) {
    await m.http.close();
    servers.delete(m.http);
  }
  if (m.node) {
    await m.node.stop();
    running.delete(m.node);
  }
  trio.members[i] = { node: undefined, http: undefined };
}

function nodes(trio: Trio): ClusterNode[] {
  return trio.members.map((m) => m.node).filter((n): n is ClusterNode => n !== undefined);
}

async function waitHealthy(trio: Trio, boundMs = 30_000): Promise<void> {
  // The description is evaluated at the timeout: it shows each node's health then, not when the wait began.
  await waitFor(() => nodes(trio).length === 3 && nodes(trio).every((n) => n.status.health().status === 'ok'), {
    what: () => `three healthy nodes: ${JSON.stringify(nodes(trio).map((n) => [n.serverName, n.status.health()]))}`, timeoutMs: boundMs,
  });
}

function leaderIndex(trio: Trio): number {
  return trio.members.findIndex((m) => m.node?.status.raftz().state === 'leader');
}

async function getJson(port: number, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

/** Writes keys `${prefix}0..n-1` to bucket `b`, `inflight` at a time (the leader batches them); bounded retries. */
async function fill(n: ClusterNode, prefix: string, count: number, inflight = 2048): Promise<void> {
  let next = 0;
  const value = new Uint8Array(32).fill(7);
  const worker = async (): Promise<void> => {
    while (next < count) {
      const k = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          const r = await n.kv.propose({ op: 'put', bucket: 'b', key: `${prefix}${k}`, value, ts: 1 });
          if (!r.ok) throw new Error(`put ${prefix}${k} refused: ${JSON.stringify(r)}`);
          break;
        } catch (e) {
          if (!(e instanceof NodeError) || !e.retryable || attempt >= 5) throw e;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: inflight }, worker));
}

/** A steady write load through `pick()` until stopped; every acknowledged key is recorded. */
function writeLoad(pick: () => ClusterNode | undefined): { acked: Set<string>; stop: () => Promise<void> } {
  const acked = new Set<string>();
  let running = true;
  let seq = 0;
  const worker = async (w: number): Promise<void> => {
    while (running) {
      const n = pick();
      const key = `load-${w}-${seq++}`;
      if (!n) {
        await pause(20, 'a client retrying while no node is up');
        continue;
      }
      try {
        const r = await n.kv.propose({ op: 'put', bucket: 'b', key, value: Uint8Array.of(1), ts: 1 });
        if (r.ok) acked.add(key);
      } catch (e) {
        // An election (retryable) or the node being stopped under it: a client retries elsewhere with another key.
        if (!(e instanceof NodeError) || !(e.retryable || e.code === NodeErrorCode.stopped)) throw e;
        await pause(20, 'a client\'s back-off before its retry');
      }
    }
  };
  const done = Promise.all([0, 1, 2, 3].map(worker));
  return { acked, stop: async () => { running = false; await done; } };
}

interface RejoinFigures {
  readonly ms: number;
  readonly polls: number;
  readonly catchingUp: number;
  readonly maxPercent: number;
  /** Longest event-loop stall in this process (all three nodes) during the rejoin. */
  readonly stallMs: number;
}

/**
 * Wipes node `i` (stop, delete its data dir, start with the same options and identity) and polls its /healthz,
 * /readyz and /raftz every 100 ms until /healthz is 200. Checks at every poll that a 200 comes only once the node
 * holds every key written before the wipe, and that the reasons read as the issue asks.
 */
async function wipeAndRejoin(t: Test, trio: Trio, i: number, mustHave: number, boundMs: number): Promise<RejoinFigures> {
  await stop(trio, i);
  rmSync(join(trio.dir, `node-${i}`), { recursive: true, force: true });
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const t0 = Date.now();
  const node = await start(trio, i);
  const port = trio.members[i]!.http!.port;
  let polls = 0;
  let catchingUp = 0;
  let maxPercent = -1;
  let leaderSide = -1;
  const reasons = new Set<string>();
  // When each stage was first seen (ms since the wipe): where a rejoin's time goes, in the comment below.
  const stages: Record<string, number> = { started: Date.now() - t0 };
  const seen = (stage: string, now: boolean): void => { if (now && stages[stage] === undefined) stages[stage] = Date.now() - t0; };
  for (;;) {
    if (Date.now() - t0 > boundMs) throw new Error(`node-${i} not healthy ${boundMs} ms after its wipe: ${JSON.stringify(node.status.health())}`);
    const [h, r, z] = await Promise.all([getJson(port, '/healthz'), getJson(port, '/readyz'), getJson(port, '/raftz')]);
    polls++;
    const have = node.stateMachine.keys('b').length;
    const rx = (z.body.snapshotTransfer ?? null) as { receivedBytes: number; totalBytes: number } | null;
    seen('receiving', rx !== null && rx.receivedBytes > 0);
    seen('installed', node.metrics.snapshotsInstalled > 0);
    if (h.status === 200) {
      t.equal(have >= mustHave, true, `node-${i} answers 200 only once it holds the ${mustHave} keys written before its wipe (has ${have})`);
      t.same(h.body, { status: 'ok' });
      break;
    }
    t.equal(h.status, 503, 'while not current /healthz is 503');
    if (r.status !== 503 && r.status !== 200) t.fail(`/readyz answered ${r.status}`);
    const reason = String(h.body.reason);
    reasons.add(reason.replace(/\d+/g, 'N'));
    const m = /^catching up: applied (\d+) of the leader's commit (\d+)(?: \(snapshot (\d+)% received\))?/.exec(reason);
    if (m) {
      catchingUp++;
      if (m[3] !== undefined) maxPercent = Math.max(maxPercent, Number(m[3]));
      t.ok(Number(m[1]) < Number(m[2]), `catching up means applied < the leader's commit: ${reason}`);
    }
    if (z.body.state === 'follower' && z.body.recovering === true) t.equal(z.body.vote === 0 || z.body.vote === z.body.leader, true);
    // The leader's side of the stream: what the follower acknowledged of the snapshot, in /raftz.
    const lead = trio.members[leaderIndex(trio)]?.node;
    const pr = (lead?.status.raftz() as { progress?: Record<string, { snapshotTransfer?: { ackedBytes: number; totalBytes: number } }> } | undefined)?.progress?.[`node-${i}`];
    if (pr?.snapshotTransfer) {
      leaderSide = Math.max(leaderSide, Math.floor((100 * pr.snapshotTransfer.ackedBytes) / pr.snapshotTransfer.totalBytes));
      t.ok(pr.snapshotTransfer.ackedBytes <= pr.snapshotTransfer.totalBytes, 'the leader\'s snapshot progress is within the snapshot');
    }
    await pause(100, 'the polling interval: each poll asserts what the node says on its way back');
  }
  const ms = Date.now() - t0;
  loop.disable();
  const stallMs = Math.round(loop.max / 1e6);
  t.comment(`node-${i} stages (ms after the wipe, first seen by a 100 ms poll): ${JSON.stringify(stages)}, healthy ${ms}`);
  t.comment(`node-${i} rejoined in ${ms} ms (longest event-loop stall ${stallMs} ms; ${polls} polls, ${catchingUp} saying "catching up", snapshot progress seen up to ${maxPercent}% on the node, ${leaderSide}% on the leader); reasons seen: ${[...reasons].join(' | ')}`);
  t.equal(node.metrics.recoveries, 1, 'it went through recovery: it knew it had lost its data');
  t.equal(readClusterFile(join(trio.dir, `node-${i}`))?.recovering, undefined, 'and persisted that it is a full member again');
  t.equal((node.status.raftz() as { recovering: boolean }).recovering, false, '/raftz no longer says recovering');
  return { ms, polls, catchingUp, maxPercent, stallMs };
}

t.test('a wiped follower with small state rejoins; 503 until it has the data, 200 after', async (t) => {
  const trio = await newTrio('small', 'all', { snapshotEntries: 100 });
  await Promise.all([0, 1, 2].map((i) => start(trio, i)));
  await waitHealthy(trio);
  const writer = trio.members[leaderIndex(trio)]!.node!;
  await writer.kv.propose({ op: 'bucket.create', bucket: 'b', config: { history: 1 }, ts: 1 });
  await fill(writer, 'k', 500, 32);
  const victim = (leaderIndex(trio) + 1) % 3;
  const f = await wipeAndRejoin(t, trio, victim, 500, 60_000);
  t.ok(f.polls > 0);
  t.ok(trio.members[victim]!.node!.metrics.snapshotsInstalled > 0, 'it was sent a snapshot (the leader\'s log was compacted)');
  t.match(trio.members[victim]!.node!.status.metricsText(), /^membershipd_snapshot_stream_staged_installs_total [1-9]/m, 'installed from the parse done while it was received (staged_restore.ts)');
  const streamed = /^membershipd_snapshot_stream_received_bytes_total (\d+)$/m.exec(trio.members[victim]!.node!.status.metricsText());
  t.ok(Number(streamed?.[1]) > 0, `the snapshot came as its file, streamed in chunks over the TLS route (${streamed?.[1]} bytes)`);
  const lead = trio.members[leaderIndex(trio)]!.node!;
  const progressOf = () => (lead.status.raftz() as { progress: Record<string, { match: number; recovering: boolean }> }).progress[`node-${victim}`]!;
  // The leader learns it from the node's next response (a heartbeat away from the node's own "caught up").
  await waitFor(() => !progressOf().recovering, { what: 'the leader counts the rejoined node again', timeoutMs: 10_000 });
  t.equal(progressOf().recovering, false, 'the leader counts it again');
  // A write after the rejoin reaches it like any member.
  await lead.kv.propose({ op: 'put', bucket: 'b', key: 'after', value: Uint8Array.of(1), ts: 1 });
  const sm = await trio.members[victim]!.node!.kv.read();
  t.equal(sm.keys('b').length, 501, 'a linearizable read on the rejoined node sees every key');
  for (let i = 0; i < 3; i++) await stop(trio, i);
});

t.test(`${keysLarge} keys under write load: a wiped voter rejoins, then the node leading at that moment is wiped too`, async (t) => {
  const trio = await newTrio('large', 'others', {});
  await Promise.all([0, 1, 2].map((i) => start(trio, i)));
  await waitHealthy(trio);
  const writer = (): ClusterNode | undefined => trio.members[leaderIndex(trio)]?.node;
  await writer()!.kv.propose({ op: 'bucket.create', bucket: 'b', config: { history: 1 }, ts: 1 });
  const t0 = Date.now();
  await fill(writer()!, 'k', keysLarge);
  t.comment(`wrote ${keysLarge} keys in ${Date.now() - t0} ms`);

  // First wipe: a follower, while clients keep writing through whichever node leads.
  const load = writeLoad(writer);
  const victim = (leaderIndex(trio) + 1) % 3;
  const first = await wipeAndRejoin(t, trio, victim, keysLarge, 120_000);
  await waitHealthy(trio);

  // Second wipe in a row: the node leading now (the others elect a new leader; it comes back empty).
  const second = leaderIndex(trio);
  const secondFigures = await wipeAndRejoin(t, trio, second, keysLarge, 120_000);
  await waitHealthy(trio);
  await load.stop();
  t.ok(load.acked.size > 0, `writes kept committing during both rejoins (${load.acked.size} acknowledged)`);

  // Every acknowledged write is on every node, after a linearizable read on each.
  for (const n of nodes(trio)) {
    const sm = await n.kv.read();
    let missing = 0;
    for (const k of load.acked) if (sm.get('b', k) === undefined) missing++;
    t.equal(missing, 0, `${n.serverName} holds every acknowledged write of the load`);
    t.equal(sm.keys('b').length >= keysLarge + load.acked.size, true, `${n.serverName} holds the ${keysLarge} keys too`);
  }
  t.comment(`BENCH rejoin keys=${keysLarge} first_ms=${first.ms} second_ms=${secondFigures.ms} stall_ms=${Math.max(first.stallMs, secondFigures.stallMs)} load_acked=${load.acked.size}`);
  for (let i = 0; i < 3; i++) await stop(trio, i);
});
