// Loopback ports for benchmark children: chosen before the child binds them, then waited for.
import net from 'node:net';
import type { ChildProcess } from 'node:child_process';
import { freePort } from '../../test/support/free_port.js';

/**
 * `count` distinct free ports (test/support/free_port.ts: below the ephemeral range, so no other test's connect()
 * takes one before the child binds it). Distinct because every probe closes its listener at once: two
 * calls before the children bind could otherwise return the same port.
 */
export async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  for (let k = 0; ports.size < count; k++) {
    if (k >= count * 20) throw new Error(`no ${count} distinct free ports after ${k} probes`);
    ports.add(await freePort());
  }
  return [...ports];
}

/** Resolves once `port` on 127.0.0.1 accepts a connection; fails if the child exits first or after `timeoutMs`. */
export async function waitForPort(port: number, child: ChildProcess, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`server exited with ${child.exitCode ?? child.signalCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`port ${port} did not open`);
}
