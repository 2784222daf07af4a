// In process: the flag parser and validators (every bad-input case names its flag in one line through main(),
// the deploy seed's command line validates, flags this build lacks are refused, random argv only ever yields
// ConfigError), the bus-auth wiring, and the HTTP port's status codes.
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../../src/errors.js';
import { parseCommandLine, parseArgv, flagSpecs, type Command, type ServeConfig } from '../../src/config/index.js';
import { refuseUnavailable } from '../../src/cli/features.js';
import { helpText } from '../../src/cli/help.js';
import { main, memoryOutput } from '../../src/cli/index.js';
import { loadBusAuth } from '../../src/node/index.js';
import { silentLogger } from '../../src/log.js';
import { createHttpServer } from '../../src/http/index.js';
import { request as httpRequest, Agent } from 'node:http';
import { createCertificateAuthority, issueCertificate } from '../../src/certs/index.js';

// The ExecStart of shared/deploy-seed/membershipd-cluster.service, the unit the first deployment ran. Kept here so a
// clean clone tests it; when the seed (or the repo's deploy/cluster copy) is present it is read and compared too.
const seedExecStart = '/opt/unibus/membershipd --bind 0.0.0.0 --bus-auth enforce --http-port ${HTTP_PORT} '
  + '--nats-port ${NATS_CLIENT_PORT} --tls-cert ${TLS_CERT} --tls-key ${TLS_KEY} --cluster-name ${CLUSTER_NAME} '
  + '--server-name ${NODE_NAME} --cluster-port ${NATS_ROUTE_PORT} --routes ${ROUTES} --cluster-user ${CLUSTER_USER} '
  + '--cluster-pass-file ${CLUSTER_PASS_FILE} --route-tls-cert ${ROUTE_TLS_CERT} --route-tls-key ${ROUTE_TLS_KEY} '
  + '--route-tls-ca ${ROUTE_TLS_CA} --internal-id-file ${INTERNAL_ID_FILE} --store kv --kv-replicas ${KV_REPLICAS}';
const seedUnits = ['../../deploy/cluster/membershipd-cluster.service', '../../../shared/deploy-seed/membershipd-cluster.service']
  .map((rel) => fileURLToPath(new URL(rel, import.meta.url)));

function execStartOf(unit: string): string {
  return /ExecStart=(.*)/.exec(unit.replace(/\\\n/g, ' '))![1]!.trim().replace(/\s+/g, ' ');
}

interface Fixtures {
  dir: string; ca: string; cert: string; key: string; otherKey: string; notPem: string; empty: string;
  encryptedKey: string; pass: string; users: string;
}

async function fixtures(dir: string): Promise<Fixtures> {
  const ca = await createCertificateAuthority('cfg-test');
  const leaf = await issueCertificate(ca, { commonName: 'n1' });
  const other = await issueCertificate(ca, { commonName: 'n2' });
  const f = (name: string, text: string): string => { const p = join(dir, name); writeFileSync(p, text); return p; };
  return {
    dir,
    ca: f('ca.pem', ca.cert),
    cert: f('n1.pem', leaf.cert),
    key: f('n1.key', leaf.key),
    otherKey: f('n2.key', other.key),
    notPem: f('junk.pem', 'hello, not a certificate\n'),
    empty: f('empty.pem', '\n'),
    encryptedKey: f('enc.key', '-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n'),
    pass: f('route.pass', 's3cret\n'),
    users: f('users.json', '{"users":[]}\n'),
  };
}

/**
 * Asserts that argv fails with a ConfigError naming `flag` in a single line, and that main() (what the binary
 * runs) turns it into exit 2 with exactly that one line on stderr and nothing on stdout.
 */
async function failsWith(t: Test, argv: string[], flag: string | undefined, pattern: RegExp): Promise<void> {
  let err: unknown;
  try {
    const cmd = parseCommandLine(argv);
    err = cmd.kind === 'serve' ? refuseUnavailable(cmd.config) : undefined;
  } catch (e) {
    err = e;
  }
  const label = JSON.stringify(argv);
  if (!(err instanceof ConfigError)) {
    t.fail(`${label}: expected a ConfigError, got ${String(err)}`);
    return;
  }
  t.equal(err.flag, flag, `${label}: names ${flag ?? 'no flag'}`);
  if (flag !== undefined) t.ok(err.message.startsWith(`--${flag}`) || err.message.includes(`--${flag}`), `${label}: message names --${flag}: ${err.message}`);
  t.match(err.message, pattern, `${label}: ${err.message}`);
  t.notMatch(err.message, /[\r\n]/, `${label}: one line`);
  // Only argv that is known to fail reaches main(): a valid one would start a node.
  const output = memoryOutput();
  t.equal(await main(argv, output), 2, `${label}: exit 2`);
  t.same(output.stderr, [`membershipd: ${err.message}`], `${label}: exactly one stderr line`);
  t.same(output.stdout, [], `${label}: nothing on stdout`);
}

function serve(argv: string[]): ServeConfig {
  const cmd: Command = parseCommandLine(argv);
  if (cmd.kind !== 'serve') throw new Error(`expected serve, got ${cmd.kind}`);
  return cmd.config;
}

t.test('syntax: commands, missing values, duplicates, unknown flags', async (t) => {
  t.equal(parseCommandLine([]).kind, 'serve', 'serve is the default command');
  t.equal(parseCommandLine(['serve']).kind, 'serve');
  t.equal(parseCommandLine(['--help']).kind, 'help');
  t.equal(parseCommandLine(['-h']).kind, 'help');
  t.equal(parseCommandLine(['help']).kind, 'help');
  t.equal(parseCommandLine(['help', 'dev']).kind, 'help');
  t.equal(parseCommandLine(['--bogus', '--help']).kind, 'help', '--help wins over a bad flag');
  t.equal(parseCommandLine(['--version']).kind, 'version');
  t.equal(parseCommandLine(['version']).kind, 'version');
  t.same([...parseArgv(['--bind=::1', '--nats-port', '0']).flags], [['bind', '::1'], ['nats-port', '0']], 'both value forms');
  t.same([...parseArgv(['--routes=a:1,b=2:3']).flags], [['routes', 'a:1,b=2:3']], 'only the first = splits');

  await failsWith(t, ['--nats-port'], 'nats-port', /needs a value/);
  await failsWith(t, ['--nats-port', '--http-port', '1'], 'nats-port', /needs a value/);
  await failsWith(t, ['--nats-port='], 'nats-port', /empty value/);
  await failsWith(t, ['--bind', 'a', '--bind', 'b'], 'bind', /more than once/);
  await failsWith(t, ['--bind=a', '--bind', 'a'], 'bind', /more than once/);
  await failsWith(t, ['--bogus'], 'bogus', /unknown flag "--bogus"/);
  await failsWith(t, ['--bogus=1'], 'bogus', /unknown flag/);
  await failsWith(t, ['-x'], undefined, /unexpected argument "-x"/);
  await failsWith(t, ['--'], undefined, /unexpected argument/);
  await failsWith(t, ['serve', 'extra'], undefined, /unexpected argument "extra"/);
  await failsWith(t, ['frob'], undefined, /unknown command "frob"/);
  await failsWith(t, ['version', 'x'], undefined, /unexpected argument/);
  await failsWith(t, ['help', 'frob'], undefined, /unexpected argument/);
  await failsWith(t, ['dev', '--bind', '0.0.0.0'], 'bind', /not a flag of `membershipd dev`/);
  await failsWith(t, ['serve', '--dir', 'x'], 'dir', /not a flag of `membershipd serve`/);
  // user/role/audit/id/certs are dispatched by main() to src/cli/admin (test/control); the serve parser refuses them.
  for (const admin of ['user', 'role', 'audit', 'id', 'certs', 'cluster']) {
    t.throws(() => parseCommandLine([admin, 'add']), /an admin command/);
    const output = memoryOutput();
    t.equal(await main([admin, 'add'], output), 2, `${admin} add: exit 2 (its own usage error)`);
    t.equal(output.stderr.length, 1, `${admin} add: one stderr line`);
  }
});

t.test('values: every flag rejects what it cannot use, naming itself', async (t) => {
  const fx = await fixtures(t.testdir());
  for (const bad of ['abc', '-1', '65536', '1e3', '0x10', ' 1', '+1', '1.5', '99999999999']) {
    await failsWith(t, ['--nats-port', bad], 'nats-port', /is not a port number/);
  }
  await failsWith(t, ['--http-port=70000'], 'http-port', /is not a port number/);
  await failsWith(t, ['--ws-port', 'x'], 'ws-port', /is not a port number/);
  await failsWith(t, ['--cluster-port', '-5'], 'cluster-port', /is not a port number/);
  await failsWith(t, ['--nats-port', '4222', '--http-port', '4222'], 'http-port', /already used by --nats-port/);
  await failsWith(t, ['--ws-port', '8222'], 'ws-port', /already used by --http-port/);
  await failsWith(t, ['--cluster-port', '4222'], 'cluster-port', /already used by --nats-port/);
  for (const bad of ['x', '-1', '3.5', '65536', ' 3']) await failsWith(t, ['--cluster-port', '6222', '--cluster-fd', bad], 'cluster-fd', /is not an integer from 0 to 65535/);
  for (const std of ['0', '1', '2']) await failsWith(t, ['--cluster-port', '6222', '--cluster-fd', std], 'cluster-fd', /is std(in|out|err), not an inherited socket/);
  await failsWith(t, ['--cluster-fd', '3'], 'cluster-port', /--cluster-port is required with --cluster-fd/);
  await failsWith(t, ['--cluster-port', '0', '--cluster-fd', '3'], 'cluster-port', /0 cannot be used with --cluster-fd/);
  await failsWith(t, ['dev', '--nats-port', '1', '--http-port', '1'], 'http-port', /already used/);
  for (const bad of ['not a host', '300.1.1.1', '-lead', 'a..b', 'x'.repeat(64), 'example.com.']) {
    await failsWith(t, ['--bind', bad], 'bind', /not an IP address or host name/);
  }
  for (const bad of ['has space', '.dot', 'x'.repeat(129), 'a/b', 'line\nbreak']) {
    await failsWith(t, ['--server-name', bad], 'server-name', /not a valid name/);
  }
  await failsWith(t, ['--log-level', 'loud'], 'log-level', /not one of fatal\|error\|warn\|info\|debug\|trace\|silent/);
  await failsWith(t, ['dev', '--log-level=INFO'], 'log-level', /not one of/);
  await failsWith(t, ['--bus-auth', 'maybe'], 'bus-auth', /not one of off\|warn\|enforce/);
  await failsWith(t, ['--store', 'sql'], 'store', /not one of file\|kv/);
  for (const bad of ['0', '-1', '16', 'three']) await failsWith(t, ['--store', 'kv', '--kv-replicas', bad], 'kv-replicas', /integer from 1 to 15/);
  await failsWith(t, ['--kv-replicas', '3'], 'kv-replicas', /only to --store kv/);
  // --max-kv-bytes: malformed, out of range (below 1 MiB, past 16 TiB, past 2^53 with a unit), and oversized input.
  await failsWith(t, ['--store', 'kv', '--max-kv-bytes', ''], 'max-kv-bytes', /has an empty value \(expected BYTES\)/);
  for (const bad of ['abc', '-1', '1.5G', '1e9', '0x100000', ' 1G', '1 GG', '256XB', '1048575', '17T', '99999999999999T', '9'.repeat(40), 'G']) {
    await failsWith(t, ['--store', 'kv', '--max-kv-bytes', bad], 'max-kv-bytes', /is not a size in bytes from 1048576 to 17592186044416/);
  }
  await failsWith(t, ['--max-kv-bytes', '1G'], 'max-kv-bytes', /only to a node serving the KV API/);
  await failsWith(t, ['--store', 'kv', '--users-file', fx.users], 'users-file', /only to --store file/);
  await failsWith(t, ['--data-dir', fx.cert], 'data-dir', /not a directory/);
  await failsWith(t, ['dev', '--dir', fx.cert], 'dir', /not a directory/);
  await failsWith(t, ['--internal-id-file', '/nonexistent-dir-xyz/id.seed'], 'internal-id-file', /its directory .* does not exist/);
  await failsWith(t, ['--internal-id-file', fx.dir], 'internal-id-file', /not a regular file/);
  await failsWith(t, ['--ports-file', ''], 'ports-file', /has an empty value \(expected FILE\)/);
  await failsWith(t, ['--ports-file', `/tmp/${'p'.repeat(5000)}`], 'ports-file', /5005 bytes long, more than 4096/);
  await failsWith(t, ['--ports-file', 'a\0b'], 'ports-file', /NUL byte/);
  await failsWith(t, ['--ports-file', fx.dir], 'ports-file', /not a regular file/);
  await failsWith(t, ['--ports-file', '/nonexistent-dir-xyz/n.ports'], 'ports-file', /its directory .* does not exist/);
});

t.test('files: TLS pairs are readable PEM and belong together', async (t) => {
  const fx = await fixtures(t.testdir());
  await failsWith(t, ['--tls-cert', fx.cert], 'tls-key', /--tls-key is required with --tls-cert/);
  await failsWith(t, ['--tls-key', fx.key], 'tls-cert', /--tls-cert is required with --tls-key/);
  await failsWith(t, ['--tls-cert', join(fx.dir, 'missing.pem'), '--tls-key', fx.key], 'tls-cert', /does not exist/);
  await failsWith(t, ['--tls-cert', fx.dir, '--tls-key', fx.key], 'tls-cert', /is a directory/);
  await failsWith(t, ['--tls-cert', fx.empty, '--tls-key', fx.key], 'tls-cert', /is empty/);
  await failsWith(t, ['--tls-cert', fx.notPem, '--tls-key', fx.key], 'tls-cert', /no PEM certificate/);
  await failsWith(t, ['--tls-cert', fx.cert, '--tls-key', fx.cert], 'tls-key', /no PEM private key/);
  await failsWith(t, ['--tls-cert', fx.cert, '--tls-key', fx.otherKey], 'tls-key', /does not belong to the certificate/);
  await failsWith(t, ['--tls-cert', fx.cert, '--tls-key', fx.encryptedKey], 'tls-key', /encrypted/);
  const broken = join(fx.dir, 'broken.pem');
  writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
  await failsWith(t, ['--tls-cert', broken, '--tls-key', fx.key], 'tls-cert', /not a valid X\.509 certificate/);
  await failsWith(t, ['--route-tls-cert', fx.cert, '--route-tls-key', fx.key], 'route-tls-ca', /required with --route-tls-cert/);
  await failsWith(t, ['--route-tls-ca', fx.ca], 'route-tls-cert', /required with --route-tls-ca/);
  await failsWith(t, ['--route-tls-ca', fx.notPem, '--route-tls-cert', fx.cert, '--route-tls-key', fx.key], 'route-tls-ca', /no PEM certificate/);
  await failsWith(t, ['--cluster-user', 'route'], 'cluster-pass-file', /never taken from argv/);
  await failsWith(t, ['--cluster-pass-file', fx.pass], 'cluster-user', /required with --cluster-pass-file/);
  await failsWith(t, ['--cluster-user', 'route', '--cluster-pass-file', join(fx.dir, 'nope')], 'cluster-pass-file', /does not exist/);
  await failsWith(t, ['--users-file', fx.empty], 'users-file', /is empty/);

  const ok = serve(['--tls-cert', fx.cert, '--tls-key=' + fx.key]);
  t.equal(ok.tls?.certFile, fx.cert);
  t.equal(ok.tls?.cert, readFileSync(fx.cert, 'utf8'), 'the PEM text is loaded for the server');
});

t.test('routes: host:port or nats-route://host:port, never user info', async (t) => {
  const routes = serve(['--routes', 'n1.example:6222,nats-route://127.0.10.2:6222,[::1]:6223,NATS-ROUTE://h:1/']).cluster.routes;
  t.same(routes.map((r) => [r.host, r.port]), [['n1.example', 6222], ['127.0.10.2', 6222], ['::1', 6223], ['h', 1]]);
  const cases: [string, RegExp][] = [
    ['a', /route 1 of 1 "a" is not host:port/],
    ['a:', /not host:port/],
    [':1', /not host:port/],
    ['a:0', /invalid port "0"/],
    ['a:70000', /invalid port/],
    ['a:1,,b:2', /route 2 of 3 is empty/],
    ['a:1,', /route 2 of 2 is empty/],
    ['http://a:1', /scheme "http"/],
    ['[zz]:1', /invalid host "zz"/],
    ['bad host:1', /invalid host/],
    ['::1:6222', /not host:port/],
  ];
  for (const [value, pattern] of cases) await failsWith(t, ['--routes', value], 'routes', pattern);
  for (const value of ['nats-route://ruser:T0pSecret@n2:6222', 'ruser:T0pSecret@n2:6222', 'a:1,nats-route://u@b:2']) {
    let message = '';
    try { serve(['--routes', value]); } catch (e) { message = (e as Error).message; }
    t.match(message, /carries user info; give the user with --cluster-user and the password in --cluster-pass-file/, value);
    t.notMatch(message, /T0pSecret|ruser/, 'the credentials are never echoed');
  }
});

t.test('accepted values are typed; defaults apply', async (t) => {
  const d = serve([]);
  t.same(
    { bind: d.bind, nats: d.natsPort, http: d.httpPort, ws: d.wsPort, log: d.logLevel, auth: d.busAuth, store: d.store, data: d.dataDir, tls: d.tls },
    { bind: '127.0.0.1', nats: 4222, http: 8222, ws: undefined, log: 'info', auth: 'off', store: 'file', data: './data', tls: undefined },
  );
  t.equal(d.serverName, hostname().split('.')[0], 'server name defaults to the host name');
  const c = serve(['--bind', '::', '--nats-port=0', '--http-port', '0', '--ws-port', '0', '--server-name', 'node-1.a_b', '--log-level', 'trace']);
  t.same([c.bind, c.natsPort, c.httpPort, c.wsPort, c.serverName, c.logLevel], ['::', 0, 0, 0, 'node-1.a_b', 'trace']);
  t.equal(refuseUnavailable(serve(['--bus-auth', 'off', '--store', 'file'])), undefined, 'what this build does is accepted');
  t.equal(d.maxKvBytes, undefined, 'no KV quota unless asked');
  const sizes = ['1048576', '256MiB', '256M', '256mb', '1G', '1 GiB', '2t', '16TiB'].map((v) => serve(['--store', 'kv', '--max-kv-bytes', v]).maxKvBytes);
  t.same(sizes, [1048576, 256 * 1024 ** 2, 256 * 1024 ** 2, 256 * 1024 ** 2, 1024 ** 3, 1024 ** 3, 2 * 1024 ** 4, 16 * 1024 ** 4], '--max-kv-bytes takes bytes or K/M/G/T (powers of 1024)');
  const dev = parseCommandLine(['dev']);
  t.same(dev, { kind: 'dev', config: { dir: './.dev-cluster', nodes: 3, natsPort: 4222, httpPort: 8222, logLevel: 'warn' } });
  t.equal((parseCommandLine(['dev', '--nodes', '5']) as { config: { nodes: number } }).config.nodes, 5, 'dev --nodes N');
  await failsWith(t, ['dev', '--nodes', '0'], 'nodes', /--nodes/);
  await failsWith(t, ['dev', '--nodes', '9'], 'nodes', /--nodes/);
});

t.test('the deploy seed command line validates; this build refuses what it cannot do yet', async (t) => {
  const fx = await fixtures(t.testdir());
  const env: Record<string, string> = {
    HTTP_PORT: '8222', NATS_CLIENT_PORT: '4222', TLS_CERT: fx.cert, TLS_KEY: fx.key, CLUSTER_NAME: 'unibus',
    NODE_NAME: 'node-a', NATS_ROUTE_PORT: '6222', ROUTES: 'nats-route://127.0.10.2:6222,nats-route://127.0.10.3:6222',
    CLUSTER_USER: 'route', CLUSTER_PASS_FILE: fx.pass, ROUTE_TLS_CERT: fx.cert, ROUTE_TLS_KEY: fx.key, ROUTE_TLS_CA: fx.ca,
    INTERNAL_ID_FILE: join(fx.dir, 'internal.seed'), KV_REPLICAS: '3',
  };
  const flagsOf = (line: string) => line.split(' ').filter((w) => w.startsWith('--')).sort();
  for (const file of seedUnits.filter((f) => existsSync(f))) {
    // Flag for flag: a unit keeps every flag of the seed; ours may add flags (each must be one this build
    // parses, checked below with the unit's own command line).
    const unitLine = execStartOf(readFileSync(file, 'utf8'));
    const missing = flagsOf(seedExecStart).filter((f) => !flagsOf(unitLine).includes(f));
    t.same(missing, [], `${file} keeps every flag of the seed`);
    const unitEnv: Record<string, string> = { ...env, INITIAL_CLUSTER_STATE: 'new' };
    const unitArgv = unitLine.split(' ').slice(1).map((w) => w.replace(/\$\{(\w+)\}/g, (_, k: string) => unitEnv[k] ?? `\${${k}}`));
    t.equal(refuseUnavailable(serve(unitArgv)), undefined, `${file}'s full command line is a complete cluster configuration`);
  }
  const argv = seedExecStart.split(' ').slice(1).map((w) => w.replace(/\$\{(\w+)\}/g, (_, k: string) => env[k]!));
  const seedFlags = argv.filter((w) => w.startsWith('--')).map((w) => w.slice(2));
  t.equal(seedFlags.length, 18, 'the seed passes 18 flags');
  const help = helpText();
  for (const flag of seedFlags) t.match(help, `--${flag} `, `--help lists the seed's --${flag}`);
  const config = serve(argv);
  t.same(config.cluster.routes.map((r) => r.host), ['127.0.10.2', '127.0.10.3']);
  t.equal(config.kvReplicas, 3);
  t.equal(config.cluster.routeTls?.caFile, fx.ca);
  t.equal(refuseUnavailable(config), undefined, 'the seed\'s full flag set is a complete cluster configuration');

  const refused: [string[], string, RegExp][] = [
    [['--cluster-name', 'unibus'], 'cluster-port', /--cluster-port is required for a cluster node/],
    [['--routes', 'a:1'], 'cluster-name', /--cluster-name is required for a cluster node/],
    [['--cluster-name', 'u', '--cluster-port', '6222'], 'routes', /--routes is required/],
    [['--cluster-name', 'u', '--cluster-port', '6222', '--routes', 'a:1', '--cluster-user', 'r'], 'cluster-pass-file', /route password/],
    [['--cluster-name', 'u', '--cluster-port', '6222', '--routes', 'a:1', '--cluster-user', 'r', '--cluster-pass-file', fx.pass, '--route-tls-ca', fx.ca], 'route-tls-cert', /--route-tls-cert is required/],
    [['--data-dir', join(fx.dir, 'data')], 'data-dir', /only --store kv keeps state on disk/],
  ];
  for (const [args, flag, pattern] of refused) await failsWith(t, args, flag, pattern);
  // --store kv without cluster flags is a cluster of one (src/control/single_node.ts, tested in test/control).
  t.equal(refuseUnavailable(serve(['--store', 'kv', '--data-dir', join(fx.dir, 'data')])), undefined, '--store kv on a single node is accepted');
});

t.test('bus auth wiring: users and identity files are checked at start, naming their flag', async (t) => {
  const fx = await fixtures(t.testdir());
  const rejects = async (argv: string[], flag: string, pattern: RegExp): Promise<void> => {
    const err = await loadBusAuth(serve(argv), silentLogger()).then(() => undefined, (e: unknown) => e);
    t.ok(err instanceof ConfigError, `${argv.join(' ')}: ConfigError`);
    t.equal((err as ConfigError).flag, flag);
    t.match((err as ConfigError).message, pattern);
    t.notMatch((err as ConfigError).message, /[\r\n]/, 'one line');
  };
  await rejects(['--bus-auth', 'enforce'], 'users-file', /--users-file is required with --bus-auth enforce and --store file/);
  await rejects(['--bus-auth', 'warn'], 'users-file', /required/);
  const broken = join(fx.dir, 'broken.json');
  writeFileSync(broken, '{"users": [\n  {"name": "a",, }\n]}\n');
  await rejects(['--bus-auth', 'enforce', '--users-file', broken], 'users-file', /^--users-file: .*broken\.json:2:\d+: invalid JSON/);
  const plaintext = join(fx.dir, 'plain.json');
  writeFileSync(plaintext, JSON.stringify({ users: [{ name: 'a', password: 'hunter2', roles: [] }] }));
  await rejects(['--bus-auth', 'enforce', '--users-file', plaintext], 'users-file', /^--users-file: /);
  const loose = join(fx.dir, 'loose.seed');
  writeFileSync(loose, 'x\n', { mode: 0o644 });
  chmodSync(loose, 0o644);
  await rejects(['--internal-id-file', loose], 'internal-id-file', /chmod 600/);

  const idFile = join(fx.dir, 'id', 'node.seed');
  mkdirSync(join(fx.dir, 'id'));
  const created = await loadBusAuth(serve(['--bus-auth', 'enforce', '--users-file', fx.users, '--internal-id-file', idFile]), silentLogger());
  t.equal(created.authenticator?.mode, 'enforce');
  t.equal(created.authenticator?.authRequired, true);
  t.match(created.identity?.publicKey, /^N[A-Z2-7]{55}$/, 'an NKey server identity');
  t.equal(statSync(idFile).mode & 0o777, 0o600, 'created with mode 0600');
  t.type(created.reload, 'function', 'SIGHUP has a users file to reload');
  const again = await loadBusAuth(serve(['--internal-id-file', idFile]), silentLogger());
  t.equal(again.identity?.publicKey, created.identity?.publicKey, 'the identity is kept across starts');
  t.equal(again.authenticator, undefined, '--bus-auth off: no authenticator');
});

t.test('--help lists every flag and command with its default', async (t) => {
  const help = helpText();
  for (const spec of flagSpecs) {
    t.match(help, `--${spec.name} ${spec.value}`, `lists --${spec.name}`);
    if (spec.defaultText !== undefined) t.match(help, `(default: ${spec.defaultText})`, `default of --${spec.name}`);
  }
  for (const cmd of ['serve', 'dev', 'help', 'version', '--version', '--help']) t.match(help, cmd);
});

t.test('property: random argv yields a command or a one-line ConfigError, never anything else', async (t) => {
  const fx = await fixtures(t.testdir());
  mkdirSync(join(fx.dir, 'sub'));
  const seed = Number(process.env.SEED ?? (Date.now() % 2_147_483_647));
  t.comment(`seed=${seed} (replay: SEED=${seed} npx tap test/cli/units.test.ts)`);
  const names = flagSpecs.map((f) => f.name);
  const values = fc.oneof(
    fc.constantFrom('0', '1', '4222', '65535', '65536', '-1', '', 'off', 'warn', 'kv', 'file', 'info', '::1', '0.0.0.0',
      'a:1,b:2', 'u:p@h:1', 'nats-route://h:1', fx.cert, fx.key, fx.ca, fx.pass, fx.dir, fx.empty, fx.notPem, '/nonexistent/x'),
    fc.string({ maxLength: 12 }),
  );
  const token = fc.oneof(
    fc.constantFrom(...names).map((n) => `--${n}`),
    fc.tuple(fc.constantFrom(...names), values).map(([n, v]) => `--${n}=${v}`),
    fc.constantFrom('serve', 'dev', 'help', 'version', 'user', '--', '-', '--=', '--help', '--version'),
    values,
  );
  fc.assert(fc.property(fc.array(token, { maxLength: 10 }), (argv) => {
    try {
      const cmd = parseCommandLine(argv);
      if (cmd.kind === 'serve') refuseUnavailable(cmd.config);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw new Error(`argv ${JSON.stringify(argv)} threw ${String(err)}`);
      if (/[\r\n]/.test(err.message)) throw new Error(`multi-line message for ${JSON.stringify(argv)}`);
      if (err.flag !== undefined && !err.message.includes(`--${err.flag}`)) throw new Error(`message does not name --${err.flag}: ${err.message}`);
    }
  }), { seed, numRuns: 2000 });

  // Valid flag sets parse to the same config whichever value form and order is used.
  const validArgs = fc.record({
    // Below 8222, the default --http-port: a drawn 8222 without --http-port is a (correct) port clash, which made
    // this property fail about one run in ten (seed 1362334025).
    'nats-port': fc.integer({ min: 1, max: 8221 }).map(String),
    'http-port': fc.integer({ min: 10000, max: 65535 }).map(String),
    'server-name': fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/),
    'log-level': fc.constantFrom('fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'),
    bind: fc.constantFrom('127.0.0.1', '::1', 'localhost', '0.0.0.0', 'node-1.example.org'),
  }, { requiredKeys: [] });
  fc.assert(fc.property(validArgs, fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }), (flags, forms) => {
    const entries = Object.entries(flags);
    const split = entries.flatMap(([k, v]) => [`--${k}`, v]);
    const joined = entries.map(([k, v], i) => (forms[i] ? `--${k}=${v}` : `--${k}`)).flatMap((w, i) => (forms[i] ? [w] : [w, entries[i]![1]]));
    const reversed = [...entries].reverse().map(([k, v]) => `--${k}=${v}`);
    const a = serve(split);
    const b = serve(joined);
    const c = serve(reversed);
    const strip = (x: ServeConfig) => ({ ...x, given: [...x.given].sort() });
    if (JSON.stringify(strip(a)) !== JSON.stringify(strip(b)) || JSON.stringify(strip(a)) !== JSON.stringify(strip(c))) {
      throw new Error(`forms disagree for ${JSON.stringify(flags)}`);
    }
  }), { seed, numRuns: 300 });
  t.pass('2000 random and 300 valid command lines held the properties');
});

t.test('http: /livez follows the state, endpoints answer with their status, errors are JSON', async (t) => {
  let healthy = false;
  const http = createHttpServer({
    host: '127.0.0.1', port: 0, logger: silentLogger(),
    endpoints: {
      '/healthz': async () => (healthy ? { status: 200, body: { status: 'ok' } } : { status: 503, body: { status: 'unavailable', reason: 'no quorum' } }),
      '/metrics': () => ({ status: 200, body: 'up 1\n', contentType: 'text/plain; version=0.0.4' }),
      '/boom': () => { throw new Error('broken endpoint'); },
      '/reject': () => Promise.reject(new Error('broken async endpoint')),
    },
  });
  await http.start();
  t.ok(http.port > 0, 'port 0 gives an ephemeral port');
  const agent = new Agent({ keepAlive: true });
  t.teardown(() => agent.destroy());
  const call = (path: string, method = 'GET') => new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: http.port, path, method, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => { body += d; }).on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
  t.same(await call('/livez'), { status: 200, type: 'application/json; charset=utf-8', body: '{"status":"ok"}\n' });
  t.same(await call('/livez', 'HEAD'), { status: 200, type: 'application/json; charset=utf-8', body: '' }, 'HEAD: no body');
  t.same(await call('/healthz?verbose=1'), { status: 503, type: 'application/json; charset=utf-8', body: '{"status":"unavailable","reason":"no quorum"}\n' });
  healthy = true;
  t.equal((await call('/healthz')).status, 200);
  t.same(await call('/metrics'), { status: 200, type: 'text/plain; version=0.0.4', body: 'up 1\n' });
  t.same(await call('/boom'), { status: 500, type: 'application/json; charset=utf-8', body: '{"error":"internal error"}\n' });
  t.equal((await call('/reject')).status, 500);
  t.same(await call('/toString'), { status: 404, type: 'application/json; charset=utf-8', body: '{"error":"not found","path":"/toString"}\n' }, 'only own endpoints');
  t.same(await call('/livez', 'DELETE'), { status: 405, type: 'application/json; charset=utf-8', body: '{"error":"method not allowed","method":"DELETE"}\n' });
  http.setState('stopping');
  t.same(await call('/livez'), { status: 503, type: 'application/json; charset=utf-8', body: '{"status":"stopping"}\n' });
  // A keep-alive connection is open (the agent's); close() must not wait for it.
  await http.close();
  await t.rejects(call('/livez'), 'closed');
});
