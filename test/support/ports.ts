// Route ports for in-process test clusters: bound and held until a node takes the socket over
// (NodeOptions.clusterListener), never probed and released (CONVENTIONS.md §16).
//
// Why not plain port 0 (src/node/listeners.ts, which startCluster and the library use): these tests stop a node
// and start it again on the same port (its peers and its data name it by address). A port from the ephemeral
// range, released for that moment, can be handed to any outgoing connect() on the machine. So the port is drawn
// below that range and claimed across processes by test/support/free_port.ts, then bound here and held.
import { createServer, type Server } from 'node:net';
import { freePort } from './free_port.js';

export interface HeldPort {
  readonly port: number;
  /** Listening until a node takes it over; a node restarted later binds `port` itself. */
  readonly server: Server;
  /** Handed to a node: its socket is the node's route listener now (it still reports `listening`). */
  taken: boolean;
}

const drawsMax = 50;

async function tryHold(port: number, host: string): Promise<Server | undefined> {
  // Until a node takes the socket over, a connection to it is reset at once, as a node not yet started refuses one:
  // accepted and left open, it would hang a peer's dial until its TLS handshake timed out. (A taken-over socket's
  // connections go to the node's own server: listen(handle) moves the accept callback there.)
  const server = createServer((socket) => socket.destroy());
  return new Promise((resolve) => {
    server.once('error', () => resolve(undefined));
    server.listen({ port, host, exclusive: true }, () => resolve(server));
  });
}

/** `count` distinct ports on `host`, each bound and held. */
export async function holdPorts(count: number, host = '127.0.0.1'): Promise<HeldPort[]> {
  const held: HeldPort[] = [];
  for (let draw = 0; held.length < count; draw++) {
    if (draw >= drawsMax) {
      releaseUnused(held);
      throw new Error(`holdPorts: could not bind ${count} ports on ${host} in ${drawsMax} draws`);
    }
    const port = await freePort(host);
    const server = await tryHold(port, host);
    if (server !== undefined) held.push({ port, server, taken: false });
  }
  return held;
}

/** The listener for a node's first start on this port, once; undefined afterwards (a restart binds the port itself). */
export function takeListener(held: HeldPort | undefined): Server | undefined {
  if (held === undefined || held.taken) return undefined;
  held.taken = true;
  return held.server;
}

/**
 * Closes the held ports no node took over. A taken one shares its socket with a node's route listener: the node
 * closes it when it stops (closing it here would close the node's cluster port under it).
 */
export function releaseUnused(held: readonly HeldPort[]): void {
  for (const h of held) if (!h.taken && h.server.listening) h.server.close();
}

/**
 * The descriptor of a held port's socket for a child process: spawn with it at stdio[3] and `--cluster-fd 3`
 * (src/node/listeners.ts inheritedListener). Node keeps a listening server's descriptor on its handle.
 */
function descriptorOf(held: HeldPort): number {
  const fd = (held.server as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error(`port ${held.port}: the held server has no descriptor to pass (closed already?)`);
  return fd;
}

/**
 * Spawns a child that takes a held route port over (`spawnChild(fd)` puts `fd` at stdio[3] and passes
 * `--cluster-fd 3`), then closes the parent's copy, so the child alone accepts on the port. Closed synchronously
 * after the spawn: the parent never runs an accept for it in between. undefined when the port was taken already:
 * a restarted child binds --cluster-port itself, as a restarted node does.
 */
export function spawnOnHeldPort<T>(held: HeldPort | undefined, spawnChild: (fd: number | undefined) => T): T {
  if (held === undefined || held.taken) return spawnChild(undefined);
  const fd = descriptorOf(held);
  try {
    return spawnChild(fd);
  } finally {
    held.taken = true;
    held.server.close();
  }
}
