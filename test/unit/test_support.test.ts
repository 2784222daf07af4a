// The test support itself: freePort's claims (what tests still use where they must re-bind a port), held ports,
// and waitFor's contract (the value it returns, its bound in checks, what its failure says).
import t from 'tap';
import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { freePort } from '../support/free_port.js';
import { holdPorts, releaseUnused, spawnOnHeldPort, takeListener } from '../support/ports.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
import { WaitAbandonedError, WaitTimeoutError, waitFor } from '../support/wait.js';

function bindOnce(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    s.listen({ port, host: '127.0.0.1', exclusive: true }, () => s.close(() => resolve('bound')));
  });
}

t.test('freePort never hands out a port twice within its claim, and claims it for other processes', async (t) => {
  const seen = new Set<number>();
  for (let i = 0; i < 300; i++) seen.add(await freePort());
  t.equal(seen.size, 300, '300 draws in a row, not yet bound by anyone, are 300 distinct ports');
  const p = [...seen][0]!;
  t.ok(existsSync(join(tmpdir(), 'membershipd-ports', String(p))), 'a claim file names the port for other processes');
  t.ok(p >= 20_000 && p < 32_768, `the port ${p} is below the kernel's ephemeral range`);
});

t.test('a port bound by someone else is not handed out', async (t) => {
  const taken: ReturnType<typeof createServer>[] = [];
  const takenPorts = new Set<number>();
  // Bind every tenth port of the range: draws that land on them must move on.
  for (let port = 20_000; port < 32_768; port += 10) {
    const s = createServer();
    const ok = await new Promise<boolean>((r) => { s.once('error', () => r(false)); s.listen({ port, host: '127.0.0.1', exclusive: true }, () => r(true)); });
    if (ok) { taken.push(s); takenPorts.add(port); }
  }
  try {
    const hits: number[] = [];
    for (let i = 0; i < 100; i++) {
      const p = await freePort();
      if (takenPorts.has(p)) hits.push(p);
    }
    t.same(hits, [], `100 draws missed the ${takenPorts.size} bound ports`);
  } finally {
    await Promise.all(taken.map((s) => new Promise((r) => s.close(r))));
  }
});

t.test('holdPorts: the ports stay bound until handed over or released', async (t) => {
  const held = await holdPorts(3);
  t.equal(new Set(held.map((h) => h.port)).size, 3, 'three distinct ports');
  t.same(await Promise.all(held.map((h) => bindOnce(h.port))), ['EADDRINUSE', 'EADDRINUSE', 'EADDRINUSE'], 'nobody else can bind a held port');
  t.equal(takeListener(held[0]), held[0]!.server, 'the first take hands the socket over');
  t.equal(takeListener(held[0]), undefined, 'a second take (a restart) gets nothing: it binds the port itself');
  releaseUnused(held);
  t.same(await Promise.all(held.slice(1).map((h) => bindOnce(h.port))), ['bound', 'bound'], 'released ports are free again');
  t.equal(await bindOnce(held[0]!.port), 'EADDRINUSE', 'a handed-over socket is the node\'s to close, not released here');
  held[0]!.server.close();
});

t.test('waitFor returns the first truthy value of the condition', async (t) => {
  let calls = 0;
  const got = await waitFor(() => (++calls >= 3 ? { leader: 'n2' } : undefined), { what: 'a leader', intervalMs: 1 });
  t.same(got, { leader: 'n2' });
  t.equal(calls, 3, 'evaluated until it held, not after');
  t.equal(await waitFor(async () => 'at once', { what: 'x' }), 'at once', 'an async condition');
});

t.test('waitFor: a timeout names what it waited for, the state then, and the last throw; bounded in checks', async (t) => {
  let calls = 0;
  let state = 'booting';
  const err = await waitFor(() => { calls++; state = `poll ${calls}`; return false; }, { what: () => `healthy (now: ${state})`, timeoutMs: 40, intervalMs: 10 })
    .then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof WaitTimeoutError, 'a WaitTimeoutError');
  t.match(err, { code: 'ETEST_WAIT_TIMEOUT', timeoutMs: 40 });
  t.match((err as Error).message, new RegExp(`^timed out after 40 ms \\(${calls} checks\\) waiting for healthy \\(now: poll ${calls}\\)$`), 'the description is evaluated at the timeout');
  t.ok(calls <= Math.ceil(40 / 10) + 1, `at most timeout/interval + 1 checks (${calls})`);

  const thrown = await waitFor(() => { throw new Error('ECONNREFUSED 127.0.0.1:4222'); }, { what: 'the client port', timeoutMs: 20, intervalMs: 5 })
    .then(() => undefined, (e: unknown) => e);
  t.match((thrown as Error).message, /waiting for the client port; the last check threw: ECONNREFUSED 127\.0\.0\.1:4222$/, 'a throw is "not yet", and named');
});

t.test('waitFor gives up at once when giveUpIf has a reason', async (t) => {
  let calls = 0;
  const err = await waitFor(() => { calls++; return false; }, { what: 'the start line', giveUpIf: () => 'the child exited with code 2' })
    .then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof WaitAbandonedError);
  t.match(err, { code: 'ETEST_WAIT_ABANDONED', message: 'gave up waiting for the start line: the child exited with code 2' });
  t.equal(calls, 0, 'the condition is not evaluated once waiting is pointless');
});

t.test('a child takes a held route port over by descriptor (--cluster-fd); a wrong descriptor is a ConfigError', async (t) => {
  const [held] = await holdPorts(1);
  t.teardown(() => releaseUnused([held!]));
  const script = [
    "import { inheritedListener } from './src/node/listeners.ts';",
    'const port = Number(process.argv[1]);',
    'for (const fd of [99, 0]) { try { inheritedListener(fd, port); } catch (e) { console.log(e.flag + ": " + e.message); } }',
    "try { inheritedListener(5, port + 1); } catch (e) { console.log(e.flag + ': ' + e.message); }",
    "const s = inheritedListener(3, port); s.on('connection', (c) => c.end('child ' + s.address().port));",
    "process.on('message', () => { s.close(); process.disconnect(); });",
    "console.log('child ready');",
  ].join('\n');
  const child = spawnOnHeldPort(held, (fd) => spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, String(held!.port)],
    { cwd: repo, stdio: ['ignore', 'pipe', 'inherit', fd ?? 'ignore', 'ipc', fd ?? 'ignore'] })); // 5: a copy, closed by the refusal
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  t.equal(held!.taken, true, 'the port is marked taken once handed to a child');
  t.equal(held!.server.listening, false, 'the parent closed its copy at once, so only the child accepts');
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  // A line of its own, printed last: the refusals above also contain the word "listening".
  await waitFor(() => out.includes('child ready'), { what: () => `the child to listen: ${out}`, timeoutMs: 20_000 });
  t.match(out, /cluster-fd: --cluster-fd: descriptor 99 is not open in this process \(EBADF\)/, 'a closed descriptor names the flag and the cause');
  t.match(out, /cluster-fd: --cluster-fd: descriptor 0 is not a socket/, 'a descriptor that is not a socket is refused');
  t.match(out, new RegExp(`descriptor 5 listens on port ${held!.port}, but --cluster-port is ${held!.port + 1}`), 'a socket on another port is refused');
  const reply = await new Promise<string>((resolve, reject) => {
    const c = connect(held!.port, '127.0.0.1');
    let got = '';
    c.on('data', (d) => { got += d.toString(); });
    c.on('end', () => resolve(got));
    c.on('error', reject);
  });
  t.equal(reply, `child ${held!.port}`, 'a connection to the port reaches the child');
  child.send('stop');
  await new Promise((r) => child.once('exit', r));
  t.equal(spawnOnHeldPort(held, (fd) => fd), undefined, 'a port already taken is not handed again (a restart binds it itself)');
});

t.test('a held port resets connections until a node takes it over', async (t) => {
  const [held] = await holdPorts(1);
  t.teardown(() => releaseUnused([held!]));
  const outcome = await new Promise<string>((resolve) => {
    const c = connect(held!.port, '127.0.0.1');
    c.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    c.on('close', () => resolve('closed'));
  });
  t.match(outcome, /^(closed|ECONNRESET)$/, 'the connection is closed at once, not left hanging');
});
