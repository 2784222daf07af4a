// Day-2 operations (issue 16) on a real 3-node cluster started with the library (mutual-TLS routes, TLS clients,
// enforced bus auth): the status page at / rendered by a real headless Chromium (it shows the 3 nodes and follows a
// leader change), and /metrics scraped and parsed line by line as Prometheus text.
import t from 'tap';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { parse as parseYaml } from 'yaml';
import { startCluster, type LocalClusterHandle } from '../../src/index.js';
import { statusPageCsp } from '../../src/http/index.js';
import { main } from '../../src/cli/index.js';
import { memoryOutput } from '../../src/cli/output.js';
import { decodeBackup, KvStateMachine } from '../../store/index.js';
import { findChromium, launch } from './browser.js';
import { parsePrometheusText } from './prometheus.js';
import { waitFor as waitUntil } from '../support/wait.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const screenshotPath = join(repoRoot, 'docs', 'status-page.png');

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, boundMs = 20_000): Promise<T> {
  // A throw (the server not listening yet) counts as "not yet" and is named if the wait times out.
  return waitUntil(probe, { what, timeoutMs: boundMs, intervalMs: 100 }) as Promise<T>;
}

let cluster: LocalClusterHandle;
let nc: NatsConnection;

t.before(async () => {
  cluster = await startCluster({ nodes: 3 });
  nc = await connect({ servers: cluster.urls, ...cluster.connectOptions });
  // Something for the page to show: a KV bucket with keys, and messages through the bus.
  const kv = await new Kvm(jetstream(nc)).create('orders', { history: 3 });
  for (let i = 0; i < 5; i++) await kv.put(`order.${i}`, `value ${i}`);
  for (let i = 0; i < 20; i++) nc.publish('ops.test', `m${i}`);
  await nc.flush();
});
t.teardown(async () => {
  await nc?.close();
  await cluster?.stop();
});

t.test('status page: a 3-node cluster in headless Chromium, updated after a leader change', async (t) => {
  const http = cluster.nodes[0]!.urls.http;
  const root = await fetch(`${http}/`);
  t.equal(root.status, 200);
  t.match(root.headers.get('content-type'), /^text\/html/);
  t.equal(root.headers.get('content-security-policy'), statusPageCsp, 'strict CSP: scripts and styles only from this port');
  const html = await root.text();
  t.notMatch(html, /<script>|<style>|(src|href)="https?:/, 'no inline script or style, nothing loaded from elsewhere');
  t.equal((await fetch(`${http}/status.js`)).headers.get('content-type'), 'text/javascript; charset=utf-8');

  const binary = findChromium();
  if (binary === undefined) {
    const why = 'chromium is not installed (apt-get install -y chromium): the page was not rendered in a browser';
    void t.test(why, { skip: why }, () => {});
    return;
  }
  const browser = await launch(binary);
  t.teardown(() => browser.close());
  const page = browser.page;
  await page.navigate(`${http}/`);

  type Row = { node: string; role: string; cells: string[] };
  const rows = (): Promise<Row[]> => page.evaluate<Row[]>(
    `[...document.querySelectorAll('#members tbody tr')].map((r) => ({ node: r.dataset.node, role: r.dataset.role, cells: [...r.cells].map((c) => c.textContent) }))`,
  );
  const first = await waitFor('the page to show 3 reachable healthy nodes and a leader', async () => {
    const r = await rows();
    return r.length === 3 && r.filter((x) => x.role === 'leader').length === 1 && r.every((x) => x.cells[6] === 'yes' && x.cells[7] === 'ok') ? r : undefined;
  });
  t.same(first.map((r) => r.node).sort(), ['n1', 'n2', 'n3'], 'the cluster map names every node');
  const leader = first.find((r) => r.role === 'leader')!.node;
  const buckets = await waitFor('the orders bucket on the page', async () => {
    const b = await page.evaluate<string[][]>(`[...document.querySelectorAll('#buckets tbody tr')].map((r) => [...r.cells].map((c) => c.textContent))`);
    return b.some((r) => r[0] === 'orders') ? b : undefined;
  });
  t.same(buckets.find((r) => r[0] === 'orders')!.slice(0, 2), ['orders', '5'], 'KV bucket with its key count');
  t.ok(buckets.some((r) => r[0] === 'ub_audit'), 'the audit bucket is listed');
  t.match(await page.evaluate<string>(`document.getElementById('audit').textContent`), /^\d+ audit records$/);
  t.match(await page.evaluate<string>(`document.getElementById('bus').textContent`), /connections/);

  // Leader change: the page follows it without being reloaded.
  const from = cluster.nodes.find((n) => n.name === leader)!;
  const to = cluster.nodes.find((n) => n.name !== leader)!;
  from.cluster.membership.transferLeadership(to.cluster.id);
  const after = await waitFor(`the page to show ${to.name} as leader`, async () => {
    const r = await rows();
    return r.length === 3 && r.find((x) => x.role === 'leader')?.node === to.name && r.every((x) => x.cells[7] === 'ok') ? r : undefined;
  });
  t.equal(after.find((r) => r.role === 'leader')!.node, to.name, `leader moved from ${leader} to ${to.name} on the page`);
  t.equal(await page.evaluate<string>('document.body.dataset.leader'), to.name);

  const png = await page.screenshot();
  t.same([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'the screenshot is a PNG');
  if (process.env['UPDATE_SCREENSHOT'] === '1') {
    mkdirSync(dirname(screenshotPath), { recursive: true });
    writeFileSync(screenshotPath, png);
    t.comment(`wrote ${screenshotPath}`);
  }
  t.same(page.errors, [], 'no script error and no CSP violation in the page');
});

const requiredSeries = [
  'process_resident_memory_bytes', 'process_cpu_seconds_total', 'process_open_fds', 'process_start_time_seconds',
  'nodejs_eventloop_lag_seconds', 'nodejs_eventloop_lag_p50_seconds', 'nodejs_eventloop_lag_p99_seconds',
  'nodejs_heap_size_used_bytes', 'nodejs_gc_duration_seconds',
  'membershipd_healthy', 'membershipd_raft_leader_changes_total', 'membershipd_wal_fsync_seconds',
  'membershipd_nats_slow_consumers_total', 'membershipd_nats_connections', 'membershipd_nats_auth_failures_total',
  'membershipd_route_writes_total', 'membershipd_eventloop_delay_seconds', 'membershipd_eventloop_stalls_total',
] as const;

/** Metric names in a PromQL expression (functions, keywords and label names are not followed by a selector). */
function metricNames(expr: string): string[] {
  const withoutLabels = expr.replace(/\{[^}]*\}/g, '{}').replace(/\[[^\]]*\]/g, '');
  const words = withoutLabels.match(/[a-zA-Z_:][a-zA-Z0-9_:]*/g) ?? [];
  return words.filter((w) => /^(membershipd|process|nodejs)_/.test(w));
}

/** The family a series name belongs to (histogram suffixes). */
const familyName = (n: string): string => n.replace(/_(bucket|sum|count)$/, '');

t.test('/metrics of a real node parses as Prometheus text with the standard process and Node.js series', async (t) => {
  // A client with a wrong password is refused, and counted on the node it tried.
  await t.rejects(connect({ servers: cluster.nodes[1]!.urls.nats, ...cluster.connectOptions, pass: 'wrong', reconnect: false, timeout: 5_000 }));
  // Allocation enough for a few scavenges, so the GC histogram has samples to render.
  let keep = 0;
  for (let i = 0; i < 200; i++) keep += new Array<number>(50_000).fill(i).length;
  t.ok(keep > 0);
  const res = await fetch(`${cluster.nodes[1]!.urls.http}/metrics`);
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  const families = parsePrometheusText(await res.text());
  for (const name of requiredSeries) t.ok(families.has(name), `${name} is exported`);
  t.equal(families.get('process_cpu_seconds_total')!.type, 'counter');
  t.equal(families.get('nodejs_gc_duration_seconds')!.type, 'histogram');
  const value = (name: string): number => families.get(name)!.samples[0]!.value;
  t.ok(value('process_resident_memory_bytes') > 1e6, 'RSS in bytes');
  t.ok(value('process_open_fds') > 3, 'open descriptors counted');
  const start = value('process_start_time_seconds');
  t.ok(start > 1.6e9 && start <= Date.now() / 1000, 'start time in seconds since the epoch');
  t.ok(value('nodejs_heap_size_used_bytes') > 1e5);
  t.ok(value('nodejs_eventloop_lag_p99_seconds') >= value('nodejs_eventloop_lag_p50_seconds'), 'p99 ≥ p50');
  t.equal(value('membershipd_healthy'), 1);
  t.ok(value('membershipd_nats_auth_failures_total') >= 1, 'the refused client is counted');
  t.ok(families.get('nodejs_gc_duration_seconds')!.samples.length > 0, 'GC durations observed');

  // The example alert rules and dashboard only use series a node serves.
  const rules = parseYaml(readFileSync(join(repoRoot, 'deploy', 'monitoring', 'membershipd-alerts.yml'), 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] };
  const exprs = rules.groups.flatMap((g) => g.rules.map((r) => [r.alert, r.expr] as const));
  const dashboard = JSON.parse(readFileSync(join(repoRoot, 'deploy', 'monitoring', 'grafana-dashboard.json'), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
  for (const p of dashboard.panels) for (const q of p.targets) exprs.push([p.title, q.expr]);
  t.ok(exprs.length > 20, `${exprs.length} alert and panel expressions`);
  const missing = exprs.flatMap(([where, e]) => metricNames(e).filter((n) => !families.has(familyName(n)) && !families.has(n)).map((n) => `${where}: ${n}`));
  t.ok(exprs.flatMap(([, e]) => metricNames(e)).length > 20, 'the expressions name metrics');
  t.same(missing, [], 'every metric in the alerts and the dashboard is exported');
  for (const want of ['MembershipdNoQuorum', 'MembershipdLeaderFlapping', 'MembershipdFsyncSlow', 'MembershipdApplyLag', 'MembershipdSlowConsumers', 'MembershipdAuthFailures']) {
    t.ok(exprs.some(([a]) => a === want), `alert ${want}`);
  }
});

t.test('event-loop stalls and GC pauses are counted in /varz and /metrics (issue 14 item 4)', async (t) => {
  const http = cluster.nodes[2]!.urls.http;
  const varz = async (): Promise<{ event_loop_delay: Record<string, number>; gc: { count: number; pause_total_ms: number; pause_max_ms: number; pauses_over_20ms: number; by_kind: Record<string, { count: number }> } }> =>
    (await (await fetch(`${http}/varz`)).json()) as never;
  const before = await varz();
  t.equal(before.event_loop_delay.stall_threshold_ms, 20);
  // A stall made on purpose: the nodes share this process's event loop, so 80 ms of synchronous work holds them all
  // up, as a large synchronous loop on the write path would.
  await new Promise((r) => setTimeout(r, 50));
  const spinUntil = performance.now() + 80;
  let spins = 0;
  while (performance.now() < spinUntil) spins++;
  t.ok(spins > 0);
  // Garbage enough for scavenges.
  let kept = 0;
  for (let i = 0; i < 200; i++) kept += new Array<number>(50_000).fill(i).length;
  t.ok(kept > 0);
  const after = await waitFor('the stall in /varz', async () => {
    const v = await varz();
    return v.event_loop_delay.stalls_over_20ms > before.event_loop_delay.stalls_over_20ms && v.gc.count > before.gc.count ? v : undefined;
  });
  const loop = after.event_loop_delay;
  t.ok(loop.max_ms >= 50, `the 80 ms stall shows as a delay of ${loop.max_ms} ms`);
  t.ok(loop.samples > before.event_loop_delay.samples, 'samples accumulate since start');
  t.ok(loop.p50_ms <= loop.p99_ms && loop.p99_ms <= loop.max_ms, 'p50 ≤ p99 ≤ max');
  t.ok(after.gc.pause_total_ms > 0 && after.gc.pause_max_ms > 0, 'GC pause durations');
  t.equal(Object.values(after.gc.by_kind).reduce((s, k) => s + k.count, 0), after.gc.count, 'pauses by kind add up');

  const families = parsePrometheusText(await (await fetch(`${http}/metrics`)).text());
  const delay = families.get('membershipd_eventloop_delay_seconds');
  t.equal(delay?.type, 'histogram');
  const bucket = (le: string): number => delay!.samples.find((s) => s.name.endsWith('_bucket') && s.labels.le === le)!.value;
  t.ok(bucket('+Inf') - bucket('0.05') >= 1, 'the stall is in a bucket above 50 ms');
  t.ok(bucket('0.02') < bucket('+Inf'), 'and above 20 ms');
  t.ok(families.get('membershipd_eventloop_stalls_total')!.samples[0]!.value >= 1, 'stall counter');
  t.equal(families.get('membershipd_gc_long_pauses_total')?.type, 'counter');
  t.ok(families.get('membershipd_gc_pause_max_seconds')!.samples[0]!.value > 0, 'longest GC pause');
});

t.test('the Prometheus text parser of this test refuses what a scraper refuses', async (t) => {
  const bad = [
    'no_value\n',
    'bad name 1\n',
    'x{a="1} 2\n',
    '# TYPE x gauge\n# TYPE x counter\nx 1\n',
    'x 1\n# TYPE x gauge\n',
    'x NaNa\n',
    '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
  ];
  for (const text of bad) t.throws(() => parsePrometheusText(text), { code: 'EPROMTEXT' }, JSON.stringify(text));
  t.equal(parsePrometheusText('# HELP a b\n# TYPE a gauge\na{x="y\\"z"} 1.5e3 1700000000000\n').get('a')!.samples[0]!.value, 1500);
});

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = memoryOutput();
  const code = await main(argv, o);
  return { code, out: o.stdout.join('\n'), err: o.stderr.join('\n') };
}

t.test('snapshot save during a write load: one Raft index, chunked past max_payload, verified by inspect', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'membershipd-snap-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const js = jetstream(nc);
  // More than one NATS message can carry (1 MiB max_payload): the image must travel in chunks.
  const big = await new Kvm(js).create('big', { history: 1 });
  for (let i = 0; i < 12; i++) await big.put(`blob.${i}`, randomBytes(100 * 1024));
  const load = await new Kvm(js).create('load', { history: 1 });
  const admin = (via: { name: string; urls: { nats: string } }, h: LocalClusterHandle = cluster): string[] => [
    '--server', via.urls.nats, '--tls-ca', join(h.dir, 'ca.pem'), '--internal-id-file', join(h.dir, `${via.name}.seed`),
  ];
  writeFileSync(join(work, 'pw'), 'alice-secret-1\n');
  const role = await cli('role', 'add', 'orders-reader', '--sub-allow', 'orders.>', ...admin(cluster.nodes[0]!));
  t.equal(role.code, 0, role.err);
  const user = await cli('user', 'add', 'alice', '--password-file', join(work, 'pw'), '--role', 'orders-reader', ...admin(cluster.nodes[1]!));
  t.equal(user.code, 0, user.err);

  let phase: 'before' | 'during' | 'after' = 'before';
  const ackedBefore = new Set<string>();
  const startedAfter = new Set<string>();
  const ackedAfter = new Set<string>();
  let next = 0;
  let stop = false;
  const writer = async (): Promise<void> => {
    for (let i = 0; i < 5_000 && !stop; i++) {
      const key = `k${next++}`;
      const startPhase = phase;
      await load.put(key, key);
      if (phase === 'before') ackedBefore.add(key);
      if (startPhase === 'after') { startedAfter.add(key); ackedAfter.add(key); }
    }
  };
  const writers = [writer(), writer()];
  await waitFor('writes acknowledged before the save', async () => (ackedBefore.size >= 30 ? true : undefined));
  const file = join(work, 'backup.snap');
  const via = cluster.nodes[2]!;
  phase = 'during';
  const saved = await cli('snapshot', 'save', file, ...admin(via));
  phase = 'after';
  await waitFor('writes started after the save', async () => (ackedAfter.size >= 20 ? true : undefined));
  stop = true;
  await Promise.all(writers);
  t.equal(saved.code, 0, saved.err);
  t.match(saved.out, /snapshot of cluster "membershipd" at Raft index \d+/);
  t.ok(statSync(file).size > 1024 * 1024, `the image (${statSync(file).size} bytes) is larger than one NATS message`);

  const { header, body } = decodeBackup(readFileSync(file));
  const image = new KvStateMachine();
  image.restore(body);
  t.equal(image.appliedIndex, header.index, 'the image is at the header\'s index');
  t.equal(header.cluster, 'membershipd');
  t.same(header.conf.voters, [1, 2, 3]);
  const missing = [...ackedBefore].filter((k) => image.get('load', k)?.op !== 'PUT');
  t.same(missing, [], `all ${ackedBefore.size} writes acknowledged before the save are in the image`);
  const leaked = [...startedAfter].filter((k) => image.get('load', k) !== undefined);
  t.same(leaked, [], `none of the ${startedAfter.size} writes started after the save is`);
  t.equal(image.keys('big').length, 12);
  t.equal(image.keys('orders').length, 5);
  t.ok(image.bucketNames().includes('ub_audit') && image.bucketNames().includes('ub_users'), 'control-plane buckets are in the image');

  const inspected = await cli('snapshot', 'inspect', file);
  t.equal(inspected.code, 0, inspected.err);
  t.match(inspected.out, /checksum: ok/);
  t.match(inspected.out, new RegExp(`at Raft index ${header.index} \\(term ${header.term}\\)`));
  t.match(inspected.out, /^big\s+12\s+12\s+\d+$/m, 'per-bucket counts');
  t.match(inspected.out, /members: (n\d=127\.0\.0\.1:\d+, ){2}n\d=127\.0\.0\.1:\d+$/m, "the slot table");

  // Damaged files: each refused with the byte offset of the damage.
  const good = readFileSync(file);
  const headerEnd = 12 + good.readUInt32BE(8) + 32;
  const flip = (at: number): Buffer => { const b = Buffer.from(good); b[at] = b[at]! ^ 0x01; return b; };
  const cases: [string, Buffer, number | undefined][] = [
    ['empty', Buffer.alloc(0), 0],
    ['truncated in the preamble', good.subarray(0, 7), 7],
    ['truncated in the header', good.subarray(0, 100), 100],
    ['truncated in the body', good.subarray(0, headerEnd + 70_000), headerEnd + 70_000],
    ['truncated by one byte', good.subarray(0, good.length - 1), good.length - 1],
    ['a byte appended', Buffer.concat([good, Buffer.from([0])]), good.length],
    ['magic flipped', flip(0), 0],
    ['header byte flipped', flip(40), 12],
    ['body byte flipped in block 2', flip(headerEnd + 2 * 65_536 + 5), headerEnd + 2 * 65_536],
    ['last byte flipped', flip(good.length - 1), headerEnd + Math.floor((good.length - 1 - headerEnd) / 65_536) * 65_536],
    ['random bytes', randomBytes(4096), 0],
  ];
  for (const [what, bytes, offset] of cases) {
    const p = join(work, 'bad.snap');
    writeFileSync(p, bytes);
    const r = await cli('snapshot', 'inspect', p);
    t.equal(r.code, 1, `${what}: refused`);
    t.match(r.err, new RegExp(`at byte offset ${offset} of ${bytes.length}\\)`), `${what}: ${r.err}`);
  }
  const usage = await cli('snapshot', 'frobnicate');
  t.equal(usage.code, 2);

  // Restore refuses a damaged file with its offset and writes nothing.
  const target = join(work, 'never');
  for (const [what, bytes] of [['truncated', good.subarray(0, good.length - 10)], ['flipped', flip(headerEnd + 1)], ['random', randomBytes(2048)]] as const) {
    writeFileSync(join(work, 'bad.snap'), bytes);
    const r = await cli('snapshot', 'restore', join(work, 'bad.snap'), '--data-dir', target, '--server-name', 'n1', '--cluster-name', 'restored',
      '--cluster-port', '4248', '--routes', '127.0.0.1:4248,127.0.0.1:4249,127.0.0.1:4250');
    t.equal(r.code, 1, `restore of a ${what} file refused`);
    t.match(r.err, /at byte offset \d+ of \d+\)/);
    t.notOk(existsSync(target), `nothing written for a ${what} file`);
  }
  const sameName = await cli('snapshot', 'restore', file, '--data-dir', target, '--server-name', 'n1', '--cluster-name', 'membershipd',
    '--cluster-port', '4248', '--routes', '127.0.0.1:4248,127.0.0.1:4249,127.0.0.1:4250');
  t.equal(sameName.code, 2, 'the old cluster name is refused');
  t.match(sameName.err, /new name/);
  t.notOk(existsSync(target));

  // A fresh 3-node cluster from the backup: every data dir prepared by the CLI, then the nodes start.
  const restored = await startCluster({
    nodes: 3, name: 'restored',
    beforeStart: async (planned) => {
      for (const p of planned) {
        const r = await cli('snapshot', 'restore', file, '--data-dir', p.dataDir, '--server-name', p.name, '--cluster-name', p.clusterName,
          '--cluster-port', String(p.clusterPort), '--routes', p.routes.join(','), '--bind', '127.0.0.1');
        if (r.code !== 0) throw new Error(`restore into ${p.dataDir}: ${r.err}`);
      }
    },
  });
  t.teardown(() => restored.stop());
  const rc = await connect({ servers: restored.urls, ...restored.connectOptions });
  t.teardown(() => rc.close());
  const rjs = jetstream(rc);
  const rload = await new Kvm(rjs).open('load');
  const absent: string[] = [];
  for (const k of ackedBefore) if ((await rload.get(k))?.string() !== k) absent.push(k);
  t.same(absent, [], `the restored cluster has all ${ackedBefore.size} writes acknowledged before the save`);
  const after: string[] = [];
  for (const k of startedAfter) if ((await rload.get(k)) !== null) after.push(k);
  t.same(after, [], 'and none started after it');
  t.equal((await (await new Kvm(rjs).open('orders')).get('order.3'))?.string(), 'value 3');
  t.equal((await (await new Kvm(rjs).open('big')).get('blob.11'))?.value.length, 100 * 1024);
  const users = await cli('user', 'list', '--json', ...admin(restored.nodes[2]!, restored));
  t.equal(users.code, 0, users.err);
  t.match(users.out, /"alice"/, 'the user is restored');
  const roles = await cli('role', 'list', '--json', ...admin(restored.nodes[0]!, restored));
  t.equal(roles.code, 0, roles.err);
  t.match(roles.out, /"orders-reader"/, 'the role is restored');
  const audit = await cli('audit', 'list', '--json', ...admin(restored.nodes[1]!, restored));
  t.equal(audit.code, 0, audit.err);
  t.match(audit.out, /"user\.add"[\s\S]*"alice"|"alice"[\s\S]*"user\.add"/, 'the audit records are restored');
  t.ok(image.keys('ub_audit').length >= 2, 'the image had the audit records');
  // The nodes bucket lists the new members, not the old ones (their identity keys must not be admins here).
  const status = await cli('cluster', 'status', '--json', ...admin(restored.nodes[0]!, restored));
  t.equal(status.code, 0, status.err);
  t.match(status.out, /"cluster": "restored"/);
  const oldIdentity = await cli('user', 'list', '--server', restored.nodes[0]!.urls.nats, '--tls-ca', join(restored.dir, 'ca.pem'),
    '--internal-id-file', join(cluster.dir, 'n1.seed'));
  t.not(oldIdentity.code, 0, 'an old member\'s identity is no admin of the restored cluster');
});
