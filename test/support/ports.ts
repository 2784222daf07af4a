// Route ports for in-process test clusters: bound and held until a node takes the socket over
// (NodeOptions.clusterListener), never probed and released (CONVENTIONS.md §16).
//
// Why not plain port 0 (src/node/listeners.ts, which startCluster and the library use): these tests stop a node
// and start it again on the same port (its peers and its data name it by address). A port from the ephemeral
// range, released for that moment, can be handed to any outgoing connect() on the machine. So the port is drawn
// below that range and claimed across processes by src/free_port.ts, then bound here and held.
import { createServer, type Server } from 'node:net';
import { freePort } from '../../src/free_port.js';

export interface HeldPort {
  readonly port: number;
  /** Listening until a node takes it over; a node restarted later binds `port` itself. */
  readonly server: Server;
  /** Handed to a node: its socket is the node's route listener now (it still reports `listening`). */
  taken: boolean;
}

const drawsMax = 50;

async function tryHold(port: number, host: string): Promise<Server | undefined> {
  const server = createServer();
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
