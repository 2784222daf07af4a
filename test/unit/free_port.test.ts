import t from 'tap';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../src/free_port.js';

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
