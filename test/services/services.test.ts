// Service presence driven the way users drive it: real nats.js clients over TLS against an in-process 3-node cluster
// (src/library). Explicit registration with a lease (REGISTER/KEEPALIVE/DEREGISTER on `$UB.API.SERVICE.*`), automatic
// registration of a real @nats-io/services instance, watching `ub_services` with @nats-io/kv, bad input, and a
// leader failover with live instances. Figures (leave latency, expiry after the last keep-alive) are printed, never
// asserted.
import t from 'tap';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { Svcm } from '@nats-io/services';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { startCluster, userInboxPrefix, type LocalClusterHandle } from '../../src/index.js';
import { parseUsersDocument } from '../../src/auth/principal_source.js';
import { main } from '../../src/cli/index.js';
import { runServiceWatch } from '../../src/cli/admin/service_watch.js';
import { memoryOutput } from '../../src/cli/output.js';
import { followKeys } from '../support/kv_watch.js';
import { pause, waitFor as waitUntil } from '../support/wait.js';

const here = dirname(fileURLToPath(import.meta.url));
const svcRole = {
  publish: ['$UB.API.SERVICE.>', 'orders.>'],
  subscribe: ['_INBOX.>', '$SRV.>', 'orders.>'],
  allow_responses: true,
  services: ['orders'],
};
// Reads ub_services through the KV API: the JetStream API subjects plus the role's grant of the bucket.
const readerRole = {
  publish: ['$JS.API.>', '$UB.API.SERVICE.LIST', '$UB.API.SERVICE.SHOW'],
  subscribe: ['_INBOX.>', '$KV.ub_services.>'],
  services_read: true,
};

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, boundMs = 20_000): Promise<void> {
  await waitUntil(cond, { what, timeoutMs: boundMs, intervalMs: 20 });
}

async function api(nc: NatsConnection, verb: string, body: unknown): Promise<Record<string, unknown>> {
  const m = await nc.request(`$UB.API.SERVICE.${verb}`, JSON.stringify(body), { timeout: 10_000 });
  return m.json<Record<string, unknown>>();
}

const errCode = (r: Record<string, unknown>): string | undefined => (r.error as { code?: string } | undefined)?.code;


t.test('users file: a role\'s services and services_read grants are checked at load', async (t) => {
  const doc = (role: Record<string, unknown>): unknown => ({ users: [], roles: { r: { publish: ['a'], ...role } } });
  const ok = parseUsersDocument(doc({ services: ['orders', '*'], services_read: true }));
  t.same([ok.roles.get('r')?.services, ok.roles.get('r')?.services_read], [['orders', '*'], true]);
  t.equal(parseUsersDocument(doc({})).roles.get('r')?.services, undefined, 'absent: no grant');
  t.throws(() => parseUsersDocument(doc({ services: ['a.b'] })), /\$\.roles\.r\.services: must be a list of service names/);
  t.throws(() => parseUsersDocument(doc({ services: 'orders' })), /\$\.roles\.r\.services/);
  t.throws(() => parseUsersDocument(doc({ services_read: 'yes' })), /\$\.roles\.r\.services_read: must be true or false/);
});

t.test('service presence on a 3-node cluster', async (t) => {
  let cluster: LocalClusterHandle | undefined = await startCluster({
    nodes: 3,
    auth: {
      users: [
        { name: 'svc', password: 'svc-secret', roles: ['orders-svc'] },
        { name: 'reader', password: 'reader-secret', roles: ['svc-reader'] },
        { name: 'jsuser', password: 'js-secret', roles: ['js-only'] },
      ],
      roles: { 'orders-svc': svcRole, 'svc-reader': readerRole, 'js-only': { ...readerRole, services_read: false } },
    },
  });
  const open: NatsConnection[] = [];
  t.teardown(async () => {
    await Promise.allSettled(open.map((c) => c.close()));
    await cluster?.stop();
  });
  const { urls, connectOptions } = cluster;
  const conn = async (i: number, user?: { user: string; pass: string }): Promise<NatsConnection> => {
    // Another user replies to its own inbox (`_INBOX_<user>`), not to the admin's private prefix.
    const inbox = user === undefined ? {} : { inboxPrefix: userInboxPrefix(user.user) };
    const nc = await connect({ servers: urls[i]!, ...connectOptions, ...(user ?? {}), ...inbox, reconnect: false });
    open.push(nc);
    return nc;
  };
  const stoppedNodes = new Set<number>();
  // A stopped Raft node keeps reporting its last state: only running nodes count.
  const leaderIndex = (): number => cluster!.nodes.findIndex((n, i) => !stoppedNodes.has(i) && n.cluster.status.raftz().state === 'leader');
  await waitFor('a leader', () => leaderIndex() >= 0);
  const followers = [0, 1, 2].filter((i) => i !== leaderIndex());

  const admin = await conn(followers[0]!);
  const kv = await new Kvm(jetstream(admin, { timeout: 10_000 })).open('ub_services');
  const watch = await followKeys(kv);
  t.teardown(() => watch.stop());

  await t.test('explicit registration: lease, keep-alives relayed to the leader, expiry after the TTL', async (t) => {
    const svc = await conn(followers[1]!, { user: 'svc', pass: 'svc-secret' });
    // TTL 4 s: the keep-alives below must outlast a stall of this in-process cluster (a relayed keep-alive once took
    // over 3 s to be confirmed at a load average of 10, and a 2 s lease expired while it was being kept alive).
    const ttlMs = 4000;
    const r = await api(svc, 'REGISTER', { service: 'orders', instance: 'a1', ttl: ttlMs / 1000, endpoints: ['orders.create', 'orders.get.*'], metadata: { zone: 'z1' }, version: '1.2.3' });
    t.equal(r.result, 'created', JSON.stringify(r));
    t.match(r.lease, /^[0-9a-f]{32}$/);
    await waitFor('orders.a1 in the watch', () => watch.live.has('orders.a1'));
    const shown = await api(svc, 'SHOW', { service: 'orders', instance: 'a1' });
    t.same((shown.instance as Record<string, unknown>).endpoints, ['orders.create', 'orders.get.*']);
    t.equal((shown.instance as Record<string, unknown>).lease, undefined, 'the lease id is never shown');
    // Keep-alives through a follower (relayed to the leader) for three TTLs: the entry stays.
    const until = Date.now() + 3 * ttlMs;
    let lastAck = 0;
    let kept = 0;
    while (Date.now() < until) {
      const k = await api(svc, 'KEEPALIVE', { lease: r.lease });
      t.equal(k.result, 'updated', JSON.stringify(k));
      lastAck = Date.now();
      kept++;
      await pause(ttlMs / 4, 'the keep-alive cadence under test (four per TTL)');
    }
    t.ok(watch.live.has('orders.a1'), `still registered after ${kept} keep-alives over three TTLs`);
    t.notOk(watch.ops.some((o) => o.key === 'orders.a1' && o.op !== 'PUT'), 'never deleted while kept alive');
    await waitFor('orders.a1 to expire', () => !watch.live.has('orders.a1'));
    const del = watch.ops.find((o) => o.key === 'orders.a1' && o.op !== 'PUT')!;
    t.comment(`expiry: deleted ${del.at - lastAck} ms after the last acknowledged keep-alive (TTL ${ttlMs} ms)`);
    const k = await api(svc, 'KEEPALIVE', { lease: r.lease });
    t.equal(errCode(k), 'not_found', 'a keep-alive of an expired lease says so');

    const again = await api(svc, 'REGISTER', { service: 'orders', instance: 'a2', ttl: 30 });
    t.equal(again.result, 'created');
    const d = await api(svc, 'DEREGISTER', { lease: again.lease });
    t.equal(d.result, 'removed', JSON.stringify(d));
    await waitFor('orders.a2 deregistered', () => watch.ops.some((o) => o.key === 'orders.a2' && o.op !== 'PUT'));
  });

  await t.test('CLI: service ls, show and watch (table and --json, exit codes)', async (t) => {
    const i = followers[0]!;
    const flags = ['--server', urls[i]!, '--tls-ca', join(cluster!.dir, 'ca.pem'), '--internal-id-file', join(cluster!.dir, `n${i + 1}.seed`)];
    const svc = await conn(followers[1]!, { user: 'svc', pass: 'svc-secret' });
    const ac = new AbortController();
    const wout = memoryOutput();
    const watching = runServiceWatch(['orders', ...flags], wout, {}, ac.signal);
    const reg = await api(svc, 'REGISTER', { service: 'orders', instance: 'cli1', ttl: 30, endpoints: ['orders.cli'] });
    let out = memoryOutput();
    t.equal(await main(['service', 'ls', ...flags], out), 0, out.stderr.join('\n'));
    t.match(out.stdout.join('\n'), /INSTANCE\s+KIND[\s\S]*orders\.cli1\s+lease/, 'ls prints a table');
    out = memoryOutput();
    t.equal(await main(['service', 'show', 'orders.cli1', '--json', ...flags], out), 0);
    t.same((JSON.parse(out.stdout.join('')) as { instance: { endpoints: string[] } }).instance.endpoints, ['orders.cli'], 'show --json');
    out = memoryOutput();
    t.equal(await main(['service', 'show', 'orders.nope', ...flags], out), 1, 'an unknown instance: exit 1');
    t.match(out.stderr.join(''), /not registered \(not_found\)/);
    out = memoryOutput();
    t.equal(await main(['service', 'show', 'no-dot', ...flags], out), 2, 'not NAME.INSTANCE: exit 2');
    // The grants on --store kv roles (the roles bucket): role add/show carry them, a bad name is refused.
    out = memoryOutput();
    t.equal(await main(['role', 'add', 'orders-kv', '--pub-allow', '$UB.API.SERVICE.>', '--service', 'orders', '--services-read', ...flags], out), 0, out.stderr.join(''));
    out = memoryOutput();
    t.equal(await main(['role', 'show', 'orders-kv', '--json', ...flags], out), 0);
    const role = (JSON.parse(out.stdout.join('')) as { role: Record<string, unknown> }).role;
    t.same([role.services, role.services_read], [['orders'], true], 'the role holds its service grants');
    out = memoryOutput();
    t.equal(await main(['role', 'add', 'bad-kv', '--service', 'a.b', ...flags], out), 2, 'a service name with a dot: exit 2');
    t.match(out.stderr.join(''), /service name "a\.b" is not valid/);
    await waitFor('watch prints the join', () => wout.stdout.some((l) => l.startsWith('+ orders.cli1 lease')));
    await api(svc, 'DEREGISTER', { lease: reg.lease });
    await waitFor('watch prints the leave', () => wout.stdout.includes('- orders.cli1'));
    ac.abort();
    t.equal(await watching, 0, 'watch ends with 0 when interrupted');
  });

  await t.test('bad input is refused with a clear error and nothing is written', async (t) => {
    const svc = await conn(followers[0]!, { user: 'svc', pass: 'svc-secret' });
    const cases: [string, Record<string, unknown>, string, RegExp][] = [
      ['instance with a dot', { service: 'orders', instance: 'a.b', ttl: 5 }, 'bad_request', /instance/],
      ['empty service', { service: '', instance: 'x1', ttl: 5 }, 'bad_request', /service/],
      ['ttl 0', { service: 'orders', instance: 'x2', ttl: 0 }, 'bad_request', /ttl/],
      ['ttl too long', { service: 'orders', instance: 'x3', ttl: 100_000 }, 'bad_request', /ttl/],
      ['ttl not whole', { service: 'orders', instance: 'x4', ttl: 1.5 }, 'bad_request', /ttl/],
      ['ttl missing', { service: 'orders', instance: 'x5' }, 'bad_request', /ttl/],
      ['too many endpoints', { service: 'orders', instance: 'x6', ttl: 5, endpoints: Array.from({ length: 65 }, (_, i) => `orders.e${i}`) }, 'bad_request', /endpoints/],
      ['endpoint too long', { service: 'orders', instance: 'x7', ttl: 5, endpoints: [`orders.${'x'.repeat(300)}`] }, 'bad_request', /bytes/],
      ['endpoint not a subject', { service: 'orders', instance: 'x8', ttl: 5, endpoints: ['orders..bad'] }, 'bad_request', /subject/],
      ['metadata not strings', { service: 'orders', instance: 'x9', ttl: 5, metadata: { a: 1 } }, 'bad_request', /metadata/],
      ['service the role does not list', { service: 'billing', instance: 'x10', ttl: 5 }, 'forbidden', /billing/],
    ];
    for (const [what, body, code, re] of cases) {
      const r = await api(svc, 'REGISTER', body);
      t.equal(errCode(r), code, `${what}: ${JSON.stringify(r)}`);
      t.match((r.error as { message: string }).message, re, what);
    }
    t.equal(errCode(await api(svc, 'KEEPALIVE', { lease: 'nope' })), 'bad_request', 'a malformed lease id');
    t.equal(errCode(await api(svc, 'KEEPALIVE', { lease: '0'.repeat(32) })), 'not_found', 'an unknown lease id');
    t.equal(errCode(await api(svc, 'DEREGISTER', { service: 'billing', instance: 'x' })), 'forbidden', 'deregistering another service');
    const m = await svc.request('$UB.API.SERVICE.REGISTER', 'not json', { timeout: 10_000 });
    t.equal(errCode(m.json()), 'bad_request', 'a body that is not JSON');
    // Seeded fuzz: random bodies and random bytes get a typed answer; a refused one leaves nothing behind.
    const seed = process.env.SERVICES_SEED !== undefined ? Number(process.env.SERVICES_SEED) : (Date.now() ^ (Math.random() * 2 ** 31)) | 0;
    t.comment(`fuzz seed: SERVICES_SEED=${seed} npx tap test/services/services.test.ts`);
    const junk = fc.oneof(fc.string({ maxLength: 200 }), fc.integer(), fc.double(), fc.boolean(), fc.constant(null),
      fc.array(fc.string({ maxLength: 300 }), { maxLength: 70 }), fc.dictionary(fc.string({ maxLength: 5 }), fc.oneof(fc.string({ maxLength: 1100 }), fc.integer()), { maxKeys: 40 }));
    const bodies = fc.sample(fc.record({
      service: fc.oneof({ arbitrary: fc.constant('orders'), weight: 4 }, fc.constant('billing'), junk),
      instance: fc.oneof({ arbitrary: fc.stringMatching(/^z[a-z0-9]{1,8}$/), weight: 4 }, junk),
      ttl: fc.oneof({ arbitrary: fc.integer({ min: -5, max: 4000 }), weight: 4 }, junk),
      endpoints: fc.oneof(fc.array(fc.stringMatching(/^[a-z]{1,10}(\.[a-z*>]{1,4}){0,3}$/), { maxLength: 70 }), junk),
      metadata: fc.oneof(fc.dictionary(fc.string({ minLength: 1, maxLength: 10 }), fc.string({ maxLength: 50 }), { maxKeys: 40 }), junk),
      version: junk,
    }, { requiredKeys: ['service', 'instance', 'ttl'] }), { seed, numRuns: 150 });
    let created = 0;
    for (const body of bodies) {
      const r = await api(svc, 'REGISTER', body);
      if (r.result === 'created' || r.result === 'updated') {
        created++;
        t.equal(errCode(await api(svc, 'DEREGISTER', { lease: r.lease })), undefined, 'a fuzz registration that passed is removable');
        continue;
      }
      if (!['bad_request', 'forbidden'].includes(errCode(r) ?? '')) t.fail(`unexpected answer ${JSON.stringify(r)} to ${JSON.stringify(body).slice(0, 300)}`);
    }
    for (const bytes of fc.sample(fc.uint8Array({ maxLength: 64 }), { seed, numRuns: 30 })) {
      const m = await svc.request('$UB.API.SERVICE.REGISTER', bytes, { timeout: 10_000 });
      if (errCode(m.json()) !== 'bad_request') t.fail(`random bytes: ${m.string()}`);
    }
    t.comment(`fuzz: ${bodies.length} random bodies, ${created} valid by chance`);
    // Nothing reached the bucket: one read barrier later the list holds no x* or billing instance.
    const list = await api(admin, 'LIST', {});
    const keys = (list.instances as { key: string }[]).map((i) => i.key);
    t.notOk(keys.some((k) => /\.x\d+$/.test(k) || /\.z/.test(k) || k.startsWith('billing.')), `nothing written (${keys.join(', ')})`);
  });

  await t.test('a real @nats-io/services instance is registered by its node and removed when it goes', async (t) => {
    const nc = await conn(followers[1]!, { user: 'svc', pass: 'svc-secret' });
    const srv = await new Svcm(nc as never).add({ name: 'orders', version: '2.0.0', description: 'order intake', metadata: { region: 'eu' } });
    srv.addEndpoint('create', { subject: 'orders.create', handler: (_err, msg) => { msg.respond('ok'); } });
    const key = `orders.${srv.info().id}`;
    await waitFor(`${key} registered`, () => watch.live.has(key));
    const e = await kv.get(key);
    t.ok(e, 'the entry is in ub_services');
    const shown = (await api(admin, 'SHOW', { service: 'orders', instance: srv.info().id })).instance as Record<string, unknown>;
    t.same(shown.endpoints, ['orders.create'], 'its endpoints come from its $SRV.INFO');
    t.equal(shown.version, '2.0.0');
    t.equal(shown.description, 'order intake');
    t.same(shown.metadata, { region: 'eu' });
    t.equal(shown.kind, 'connection');
    t.equal(shown.node, cluster!.nodes[followers[1]!]!.name);
    // stop() unsubscribes: the entry leaves.
    let t0 = Date.now();
    await srv.stop();
    await waitFor(`${key} removed after stop()`, () => !watch.live.has(key), 10_000);
    t.comment(`leave on unsubscribe: ${Date.now() - t0} ms until the watch saw the delete`);

    // A second instance on its own connection: closing the connection removes it.
    const nc2 = await connect({ servers: urls[followers[0]!]!, ...connectOptions, user: 'svc', pass: 'svc-secret', inboxPrefix: userInboxPrefix('svc'), reconnect: false });
    const srv2 = await new Svcm(nc2 as never).add({ name: 'orders', version: '2.0.1' });
    const key2 = `orders.${srv2.info().id}`;
    await waitFor(`${key2} registered`, () => watch.live.has(key2));
    t0 = Date.now();
    await nc2.close();
    await waitFor(`${key2} removed after close`, () => !watch.live.has(key2), 10_000);
    t.comment(`leave on connection close: ${Date.now() - t0} ms until the watch saw the delete`);
  });

  await t.test('a nats.go micro instance (Debian\'s nats.go, built offline) is registered by its node and removed when it goes', async (t) => {
    const goPackage = '/usr/share/gocode/src/github.com/nats-io/nats.go/micro';
    if (spawnSync('go', ['version']).status !== 0 || !existsSync(goPackage)) {
      t.skip('nats.go micro: needs `go` and nats.go (apt-get install -y golang-go golang-github-nats-io-go-nats-dev)', () => {});
      return;
    }
    const out = mkdtempSync(join(tmpdir(), 'gomicro-'));
    t.teardown(() => rmSync(out, { recursive: true, force: true }));
    // GOPATH mode, offline: the Debian package's sources are the only dependency (as test/kv/gokv).
    const env = { ...process.env, GOPATH: '/usr/share/gocode', GO111MODULE: 'off', GOFLAGS: '-mod=vendor', GOPROXY: 'off', GOCACHE: join(tmpdir(), 'membershipd-gocache') };
    const bin = join(out, 'gomicro');
    const built = spawnSync('go', ['build', '-o', bin, join(here, 'gomicro', 'main.go')], { env, encoding: 'utf8', timeout: 120_000 });
    t.equal(built.status, 0, `go build test/services/gomicro (${String(built.stderr).trim().slice(0, 300)})`);
    if (built.status !== 0) return;
    const child = spawn(bin, [urls[followers[0]!]!, 'svc', 'svc-secret', join(cluster!.dir, 'ca.pem'), userInboxPrefix('svc')], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000); // bounded: stopped by its PID whatever happens
    t.teardown(() => { clearTimeout(killer); child.kill('SIGKILL'); });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await waitFor('the Go instance printed its id', () => /^ID \S+$/m.test(stdout) || child.exitCode !== null);
    const id = /^ID (\S+)$/m.exec(stdout)?.[1];
    if (id === undefined) return void t.fail(`gomicro did not start: ${stderr.trim()}`);
    const key = `orders.${id}`;
    await waitFor(`${key} registered`, () => watch.live.has(key));
    const shown = (await api(admin, 'SHOW', { service: 'orders', instance: id })).instance as Record<string, unknown>;
    t.same(shown.endpoints, ['orders.go.create'], 'its endpoint comes from the experimental micro INFO (one `subject`)');
    t.equal(shown.version, '4.0.0');
    t.equal(shown.description, 'order intake in Go');
    t.equal(shown.kind, 'connection');
    t.equal(shown.node, cluster!.nodes[followers[0]!]!.name);
    const reply = await admin.request('orders.go.create', 'x', { timeout: 5000 });
    t.equal(reply.string(), 'ok', 'the Go instance serves its endpoint through the node');
    child.stdin.end(); // it stops the service and closes its connection
    t.equal(await exited, 0, `gomicro exited cleanly ${stderr.trim()}`);
    await waitFor(`${key} removed after the Go process closed its connection`, () => !watch.live.has(key), 10_000);
  });

  await t.test('a principal granted services_read watches ub_services with @nats-io/kv; others do not see it', async (t) => {
    const reader = await conn(followers[0]!, { user: 'reader', pass: 'reader-secret' });
    const rkv = await new Kvm(jetstream(reader, { timeout: 10_000 })).open('ub_services');
    const rw = await followKeys(rkv);
    t.teardown(() => rw.stop());
    const svc = await conn(followers[1]!, { user: 'svc', pass: 'svc-secret' });
    const r = await api(svc, 'REGISTER', { service: 'orders', instance: 'w1', ttl: 30 });
    await waitFor('the reader sees the join', () => rw.live.has('orders.w1'));
    await api(svc, 'DEREGISTER', { lease: r.lease });
    await waitFor('the reader sees the leave', () => rw.ops.some((o) => o.key === 'orders.w1' && o.op === 'DEL'));
    t.pass('join as put, leave as delete');
    const plain = await conn(followers[0]!, { user: 'jsuser', pass: 'js-secret' });
    const pkv = await new Kvm(jetstream(plain, { timeout: 3000 })).open('ub_services');
    await t.rejects(pkv.status(), /not found/, 'a principal with the KV API but without the grant does not see the bucket');
  });

  await t.test('leader failover with live instances: nobody falsely leaves', async (t) => {
    const svcA = await conn(followers[0]!, { user: 'svc', pass: 'svc-secret' });
    const svcB = await conn(followers[1]!, { user: 'svc', pass: 'svc-secret' });
    const reg = await api(svcA, 'REGISTER', { service: 'orders', instance: 'f1', ttl: 2 });
    t.equal(reg.result, 'created');
    const srv = await new Svcm(svcB as never).add({ name: 'orders', version: '3.0.0' });
    const autoKey = `orders.${srv.info().id}`;
    await waitFor('both instances live', () => watch.live.has('orders.f1') && watch.live.has(autoKey));
    let stopKeeping = false;
    let failed = 0;
    const keeper = (async () => {
      for (let i = 0; i < 200 && !stopKeeping; i++) {
        const k: Record<string, unknown> = await api(svcA, 'KEEPALIVE', { lease: reg.lease }).catch(() => ({ error: { code: 'timeout' } }));
        if (k.result !== 'updated') failed++;
        await pause(400, 'the keep-alive cadence under test (five per TTL)');
      }
    })();
    const old = leaderIndex();
    // An instance on the leader's node: that node dies with it, so it must leave, one TTL after the election.
    const onDead = await conn(old, { user: 'svc', pass: 'svc-secret' });
    const dead = await new Svcm(onDead as never).add({ name: 'orders', version: '3.0.0' });
    const deadKey = `orders.${dead.info().id}`;
    await waitFor('the instance on the leader registered', () => watch.live.has(deadKey));
    const t0 = Date.now();
    // The leader's Raft node stops without handing over (as a crash would): the others elect after the timeout.
    stoppedNodes.add(old);
    await cluster!.nodes[old]!.cluster.stop();
    await waitFor('a new leader', () => { const i = leaderIndex(); return i >= 0 && i !== old; });
    t.comment(`new leader ${cluster!.nodes[leaderIndex()]!.name} after ${Date.now() - t0} ms; keep-alives refused meanwhile: ${failed}`);
    await waitFor('the dead node\'s instance to leave', () => !watch.live.has(deadKey), 30_000);
    t.comment(`the dead node's instance left ${Date.now() - t0} ms after its node stopped (connection-bound TTL 10000 ms)`);
    // Past three TTLs of the leased entry and the connection-bound TTL after the election.
    await pause(Math.max(0, t0 + 11_000 - Date.now()), 'an absence over a window: no deletion past three TTLs and the connection-bound TTL');
    stopKeeping = true;
    await keeper;
    t.notOk(watch.ops.some((o) => (o.key === 'orders.f1' || o.key === autoKey) && o.op !== 'PUT' && o.at >= t0), 'no live instance left during or after the failover');
    t.ok(watch.live.has('orders.f1') && watch.live.has(autoKey), 'both still registered');
    await srv.stop();
  });

  const handle = cluster;
  cluster = undefined;
  await Promise.allSettled(open.map((c) => c.close()));
  await handle.stop();
});
