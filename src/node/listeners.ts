// Route listeners bound before the nodes that use them exist: a local cluster needs every node's route port in
// every node's --routes (the slot table is derived from them) before any node starts, so the ports are bound
// first (port 0: the kernel's choice, never a probe that someone else can win) and each node takes its socket
// over (NodeOptions.clusterListener → transport's `listener`). CONVENTIONS.md §16.
import { fstatSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { ConfigError } from '../errors.js';

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

/**
 * The route listener on an inherited socket (--cluster-fd): a supervisor or test harness bound the port, so no probe
 * and no window in which another process can take it. Checked here, synchronously, so that a wrong descriptor is a
 * ConfigError naming the flag at startup and not a route listener that never accepts: Node's listen({ fd }) reports
 * a bad descriptor only later, as an 'error' event.
 */
export function inheritedListener(fd: number, port: number): Server {
  let socket: boolean;
  try {
    socket = fstatSync(fd).isSocket();
  } catch (err) {
    throw new ConfigError(`--cluster-fd: descriptor ${fd} is not open in this process (${(err as NodeJS.ErrnoException).code ?? String(err)}); `
      + 'the parent must pass the listening socket at that position (e.g. stdio[3] for --cluster-fd 3)', 'cluster-fd', { cause: err });
  }
  if (!socket) throw new ConfigError(`--cluster-fd: descriptor ${fd} is not a socket; pass the descriptor of the socket listening on --cluster-port`, 'cluster-fd');
  const server = createServer();
  // listen({ fd }) on a descriptor that is not a listening TCP socket reports it asynchronously; it is refused below.
  server.on('error', () => undefined);
  server.listen({ fd });
  const address = server.listening ? server.address() : null;
  if (address === null || typeof address === 'string') {
    server.close();
    throw new ConfigError(`--cluster-fd: descriptor ${fd} is not a listening TCP socket; pass the socket bound to --cluster-port`, 'cluster-fd');
  }
  if (address.port !== port) {
    server.close();
    throw new ConfigError(`--cluster-fd: descriptor ${fd} listens on port ${address.port}, but --cluster-port is ${port}; they must name the same socket`, 'cluster-fd');
  }
  return server;
}
