// Route listeners bound before the nodes that use them exist: a local cluster needs every node's route port in
// every node's --routes (the slot table is derived from them) before any node starts, so the ports are bound
// first (port 0: the kernel's choice, never a probe that someone else can win) and each node takes its socket
// over (NodeOptions.clusterListener → transport's `listener`). CONVENTIONS.md §16.
import { createServer, type AddressInfo, type Server } from 'node:net';

export interface BoundListener {
  readonly server: Server;
  readonly port: number;
}

/** Binds `count` TCP listeners on `host`:0. On a failure the ones already bound are closed. */
export async function bindListeners(count: number, host = '127.0.0.1'): Promise<BoundListener[]> {
  const bound: BoundListener[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ port: 0, host, exclusive: true }, () => { server.off('error', reject); resolve(); });
      });
      bound.push({ server, port: (server.address() as AddressInfo).port });
    }
    return bound;
  } catch (err) {
    closeListeners(bound);
    throw err;
  }
}

/**
 * Closes the listeners after a start that failed half-way. Only once every node that took one over has stopped:
 * a taken-over server shares its socket with that node's route listener, so closing it earlier would close the
 * node's cluster port under it. A node that stopped closed the socket already; closing again is harmless.
 */
export function closeListeners(listeners: readonly BoundListener[]): void {
  for (const l of listeners) if (l.server.listening) l.server.close();
}
