// A port that was free on loopback a moment ago. A caller must bind it soon and handle EADDRINUSE:
// another process may take it in between (the kernel only guarantees freedom for a port bound as 0).
import { createServer, type AddressInfo } from 'node:net';

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, host, () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}
