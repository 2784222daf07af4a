// A port that was free on loopback a moment ago. A caller must bind it soon and handle EADDRINUSE:
// another process may take it in between (the kernel only guarantees freedom for a port bound as 0).
//
// Bind, don't probe (CONVENTIONS.md §16): a listener in this process binds port 0 and reports its port
// (startCluster, the library: src/node/listeners.ts); a child process is given port 0 and reports its ports
// (serve --ports-file). What is left here needs a port *number* that outlives one listen: `membershipd dev`
// persists its route ports and binds them again on the next run, tests restart a node on its port
// (test/support/ports.ts holds the socket in between starts), and multi-process tests name every node's route
// port in every node's --routes before any node runs.
//
// The port is drawn below the kernel's ephemeral range (Linux default 32768-60999): ports handed out by
// `listen(0)` and to every outgoing connection on the machine come from that range, so a port taken from
// it here was often grabbed by someone's connect() before the caller (often a child process) bound it.
// Below the range only another explicit bind can collide, which the probe sees.
//
// The probe closes its socket at once, so the probe alone cannot tell a port that was handed out a moment
// ago and is not bound yet (a child process boots for a second before it listens). Two draws would then
// collide: a test that takes nine ports in a row did, once in a few hundred runs. So a port handed out is
// claimed for `claimMs`: in this process by a map, and across processes (test files run side by side, a
// bench next to a dev cluster) by a claim file created exclusively in the OS temp directory.
import { mkdirSync, openSync, closeSync, statSync, utimesSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const low = 20_000;
const high = 32_768;
const attempts = 200;
const claimMs = 120_000;
const claimedHere = new Map<number, number>();

function tryListen(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolve(true)));
  });
}

// True when this process may hand the port out: nobody (here or in another process) claimed it within
// claimMs. A claim file that cannot be written (read-only temp dir) degrades to the in-process claim.
function claim(port: number, now: number): boolean {
  const at = claimedHere.get(port);
  if (at !== undefined && now - at < claimMs) return false;
  try {
    const dir = join(tmpdir(), 'membershipd-ports');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, String(port));
    try {
      closeSync(openSync(file, 'wx'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (now - statSync(file).mtimeMs < claimMs) return false;
      utimesSync(file, now / 1000, now / 1000);
    }
  } catch {
    // no shared claim possible: the in-process one still holds
  }
  claimedHere.set(port, now);
  return true;
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let k = 0; k < attempts; k++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (!claim(port, Date.now())) continue;
    if (await tryListen(port, host)) return port;
  }
  throw new Error(`no free port on ${host} in ${low}-${high - 1} after ${attempts} tries`);
}
