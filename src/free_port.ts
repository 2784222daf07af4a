// A port that was free on loopback a moment ago. A caller must bind it soon and handle EADDRINUSE:
// another process may take it in between (the kernel only guarantees freedom for a port bound as 0).
//
// The port is drawn below the kernel's ephemeral range (Linux default 32768-60999): ports handed out by
// `listen(0)` and to every outgoing connection on the machine come from that range, so a port taken from
// it here was often grabbed by someone's connect() before the caller (often a child process) bound it.
// Below the range only another explicit bind can collide, which the probe sees.
import { createServer } from 'node:net';

const low = 20_000;
const high = 32_768;
const attempts = 200;

function tryListen(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolve(true)));
  });
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let k = 0; k < attempts; k++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (await tryListen(port, host)) return port;
  }
  throw new Error(`no free port on ${host} in ${low}-${high - 1} after ${attempts} tries`);
}
