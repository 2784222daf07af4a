// src/bus: the cluster-wide bus. Joins a node's NATS server (its cluster port, src/nats) to the route
// transport (transport/): local subscriptions become interest on every peer, a locally published message
// is forwarded once to each peer with matching interest, queue groups are served exactly once
// cluster-wide, and a peer that (re)connects receives the full local interest set.
//
// Public API:
//   createClusterBus(options: ClusterBusOptions): ClusterBus
//     .peerUp(peerName)            call from the transport's onPeerUp: sends the full local interest set
//     .peerDown(peerName)          call from onPeerDown: forgets that peer's interest
//     .handleFrame(peerName, frame): boolean   call from onFrame; true when it was a bus/interest frame
//     .remoteInterest(peerName?): number       distinct (subject, queue) interests known from peers
//     .interestedPeers(subject): string[]      peers a message on literal `subject` would be forwarded to
//     .stats(): ClusterBusStats      includes routeStalls (publisher pauses for a route over its high-water mark)
//     .close()                     unhooks from the NATS server
//
// Plain interest travels as 0→1 / 1→0 transitions of (subject, queue) on this node (nats-server's RS+/RS-),
// so its cost follows distinct interests, not subscriptions. Queue interest travels per member (each
// interest_add is one more member, each interest_remove one fewer; nats-server's RS+ carries the same as a
// queue weight), so every node knows how many members each peer has. Queue groups: for each message the
// forwarder picks one member cluster-wide, weighted by member count over this node's members (the NATS
// server reports them in LocalPublish.localQueues) and every peer's; measured on nats-server 2.9.10 with
// 1 member on the publishing node and 3 on a peer: 2466 / 7534 of 10,000, i.e. the same weighting. When it
// picks a peer it sends the message there naming the group and claims the group in remoteQueues, so the
// server skips its local members: exactly one delivery either way.
//
// Flow control: a route's outbound queue is bounded and overflowing it closes the route as a slow consumer,
// so when the estimated queue of a route a message was queued on passes routeHighWaterBytes, the forwarder
// asks the NATS server (LocalPublish.feedback) to stop reading that publisher for stallMs, as the server does
// for a publisher feeding a backed-up local subscriber.
import type { Logger } from 'pino';
import type { RouteFrame } from '../../transport/index.js';
import type { InterestChange, LocalPublish, NatsClusterPort } from '../nats/index.js';
import { isValidSubject } from '../nats/index.js';
import { Sublist } from '../nats/sublist.js';

/** What the bus needs from the route transport. */
export interface BusRoutes {
  send(peerName: string, frame: RouteFrame): boolean;
  /**
   * Per-link counters (RouteTransport.peers()); bytesOut is what left the link's outbound queue for the socket.
   * With it the bus estimates each route's queue and stalls publishers above routeHighWaterBytes; without it
   * there is no flow control towards routes.
   */
  peers?(): readonly { readonly name: string | undefined; readonly counters: { readonly bytesOut: number } }[];
}

export interface ClusterBusOptions {
  readonly nats: NatsClusterPort;
  readonly routes: BusRoutes;
  readonly logger: Logger;
  /** Uniform in [0, 1): picks the member that serves a queue group (default Math.random). */
  readonly random?: () => number;
  /**
   * Estimated bytes in a route's outbound queue above which a publisher feeding it is paused for stallMs at a
   * time (the NATS server's stall, as for a local slow subscriber). Default 16 MiB: a quarter of the transport's
   * default queueBytesMax (64 MiB), past which the route would be closed as a slow consumer.
   */
  readonly routeHighWaterBytes?: number;
  /** Length of one publisher pause (default 10 ms, as the server's own stall). */
  readonly stallMs?: number;
}

export interface ClusterBusStats {
  /** Messages forwarded to peers (one per peer per message). */
  readonly forwardedMsgs: number;
  /** Messages received from peers and delivered locally. */
  readonly receivedMsgs: number;
  readonly interestSent: number;
  readonly interestReceived: number;
  /** Forwarded messages that asked the server to pause their publisher (a route over its high-water mark). */
  readonly routeStalls: number;
}

export interface ClusterBus {
  peerUp(peerName: string): void;
  peerDown(peerName: string): void;
  handleFrame(peerName: string, frame: RouteFrame): boolean;
  remoteInterest(peerName?: string): number;
  interestedPeers(subject: string): string[];
  stats(): ClusterBusStats;
  close(): void;
}

interface Interest {
  readonly subject: string;
  readonly queue: string | undefined;
}

interface RemoteInterest extends Interest {
  readonly peer: string;
  /** Members of the queue group on that peer (always 1 for plain interest). */
  count: number;
}

/** Outbound-queue estimate of one link: what the bus handed it minus what the link has written since peer-up. */
interface LinkPressure {
  handed: number;
  outBase: number;
  sinceCheck: number;
  congested: boolean;
}

/** Handed bytes between two looks at the counters while a route is not congested. */
const pressureCheckBytes = 64 * 1024;
/** Framing and msgpack overhead of a bus frame beyond its strings and binaries (an upper bound). */
const busFrameOverhead = 32;

function keyOf(subject: string, queue: string | undefined): string {
  // A space never occurs in a valid subject or queue name, so it separates them unambiguously.
  return queue === undefined ? subject : `${subject} ${queue}`;
}

export function createClusterBus(options: ClusterBusOptions): ClusterBus {
  return new Bus(options);
}

class Bus implements ClusterBus {
  readonly #nats: NatsClusterPort;
  readonly #routes: BusRoutes;
  readonly #log: Logger;
  readonly #random: () => number;
  /** Local interest: subscription count per (subject, queue), and a trie of the queue groups among it. */
  readonly #local = new Map<string, { interest: Interest; count: number }>();
  readonly #localQueues = new Sublist<Interest>();
  /** Remote interest of every up peer, one item per (peer, subject, queue). */
  readonly #remote = new Sublist<RemoteInterest>();
  readonly #byPeer = new Map<string, Map<string, RemoteInterest>>();
  /** Distinct peers of a match result; the sublist caches results per subject, so this is computed once. */
  readonly #plainPeers = new WeakMap<object, string[]>();
  readonly #unhook: () => void;
  #forwardedMsgs = 0;
  #receivedMsgs = 0;
  #interestSent = 0;
  #interestReceived = 0;
  #routeStalls = 0;
  readonly #highWater: number;
  readonly #stallMs: number;
  readonly #pressure = new Map<string, LinkPressure>();

  constructor(options: ClusterBusOptions) {
    this.#nats = options.nats;
    this.#routes = options.routes;
    this.#log = options.logger.child({ component: 'bus' });
    this.#random = options.random ?? Math.random;
    this.#highWater = options.routeHighWaterBytes ?? 16 * 1024 * 1024;
    this.#stallMs = options.stallMs ?? 10;
    for (const i of options.nats.interest()) {
      this.#local.set(keyOf(i.subject, i.queue), { interest: { subject: i.subject, queue: i.queue }, count: i.count });
      if (i.queue !== undefined) this.#localQueues.insert({ subject: i.subject, queue: i.queue });
    }
    const off = options.nats.onInterest((change) => this.#onLocalInterest(change));
    options.nats.setForwarder((msg) => this.#forward(msg));
    this.#unhook = () => {
      off();
      options.nats.setForwarder(undefined);
    };
  }

  close(): void {
    this.#unhook();
  }

  peerUp(peerName: string): void {
    // A new link: whatever the peer knew of us died with the old one, so it gets everything again.
    this.#forgetPeer(peerName);
    this.#pressure.delete(peerName);
    if (this.#routes.peers !== undefined) {
      this.#pressure.set(peerName, { handed: 0, outBase: this.#bytesOut(peerName), sinceCheck: 0, congested: false });
    }
    for (const { interest, count } of this.#local.values()) {
      const times = interest.queue === undefined ? 1 : count;
      for (let i = 0; i < times; i++) this.#sendInterest(peerName, 'interest_add', interest);
    }
  }

  peerDown(peerName: string): void {
    this.#forgetPeer(peerName);
    this.#byPeer.delete(peerName);
    this.#pressure.delete(peerName);
  }

  handleFrame(peerName: string, frame: RouteFrame): boolean {
    switch (frame.kind) {
      case 'bus':
        this.#receivedMsgs++;
        this.#nats.deliverFromRoute(frame);
        return true;
      case 'interest_add':
      case 'interest_remove':
        this.#interestReceived++;
        this.#onRemoteInterest(peerName, frame.kind === 'interest_add', frame.subject, frame.queue);
        return true;
      default:
        return false;
    }
  }

  remoteInterest(peerName?: string): number {
    if (peerName !== undefined) return this.#byPeer.get(peerName)?.size ?? 0;
    let n = 0;
    for (const m of this.#byPeer.values()) n += m.size;
    return n;
  }

  interestedPeers(subject: string): string[] {
    const match = this.#remote.match(subject);
    const peers = new Set<string>();
    for (const item of match.plain) peers.add(item.peer);
    for (const members of match.queues) for (const item of members) peers.add(item.peer);
    return [...peers].sort();
  }

  stats(): ClusterBusStats {
    return { forwardedMsgs: this.#forwardedMsgs, receivedMsgs: this.#receivedMsgs, interestSent: this.#interestSent,
      interestReceived: this.#interestReceived, routeStalls: this.#routeStalls };
  }

  #onLocalInterest(change: InterestChange): void {
    const key = keyOf(change.subject, change.queue);
    let entry = this.#local.get(key);
    if (change.delta > 0) {
      if (entry !== undefined) {
        entry.count++;
        if (change.queue !== undefined) this.#broadcastInterest('interest_add', entry.interest);
        return;
      }
      entry = { interest: { subject: change.subject, queue: change.queue }, count: 1 };
      this.#local.set(key, entry);
      if (change.queue !== undefined) this.#localQueues.insert(entry.interest);
      this.#broadcastInterest('interest_add', entry.interest);
      return;
    }
    if (entry === undefined) return; // an UNSUB the snapshot never saw; nothing was announced for it
    if (--entry.count > 0) {
      if (change.queue !== undefined) this.#broadcastInterest('interest_remove', entry.interest);
      return;
    }
    this.#local.delete(key);
    if (change.queue !== undefined) this.#localQueues.remove(entry.interest);
    this.#broadcastInterest('interest_remove', entry.interest);
  }

  #broadcastInterest(kind: 'interest_add' | 'interest_remove', interest: Interest): void {
    for (const peer of this.#byPeerNames()) this.#sendInterest(peer, kind, interest);
  }

  /** Peers that are up; the bus learns them from peerUp and forgets them at peerDown. */
  #byPeerNames(): string[] {
    return [...this.#byPeer.keys()];
  }

  #sendInterest(peer: string, kind: 'interest_add' | 'interest_remove', interest: Interest): void {
    const frame: RouteFrame = interest.queue === undefined
      ? { kind, subject: interest.subject }
      : { kind, subject: interest.subject, queue: interest.queue };
    // A false return means the link is gone or closed as a slow consumer: the next peer-up resends all.
    if (this.#routes.send(peer, frame)) {
      this.#interestSent++;
      const p = this.#pressure.get(peer);
      if (p !== undefined) p.handed += busFrameOverhead + interest.subject.length + (interest.queue?.length ?? 0);
    }
  }

  #forgetPeer(peerName: string): void {
    const items = this.#byPeer.get(peerName);
    if (items !== undefined) for (const item of items.values()) this.#remote.remove(item);
    this.#byPeer.set(peerName, new Map());
  }

  #onRemoteInterest(peer: string, add: boolean, subject: string, queue: string | undefined): void {
    const items = this.#byPeer.get(peer);
    if (items === undefined) return; // frames racing a peer-down
    if (!isValidSubject(subject) || (queue !== undefined && (queue === '' || /[\s]/.test(queue)))) {
      this.#log.warn({ peer, subject, queue }, 'invalid interest from peer ignored');
      return;
    }
    const key = keyOf(subject, queue);
    const existing = items.get(key);
    if (add && existing === undefined) {
      const item: RemoteInterest = { subject, queue, peer, count: 1 };
      items.set(key, item);
      this.#remote.insert(item);
    } else if (add && existing !== undefined) {
      if (queue !== undefined) existing.count++;
    } else if (!add && existing !== undefined) {
      if (queue !== undefined && --existing.count > 0) return;
      items.delete(key);
      this.#remote.remove(existing);
    }
  }

  /** The NATS server's forwarder: returns true when at least one peer had interest (no_responders logic). */
  #forward(msg: LocalPublish): boolean {
    this.#congested = false;
    const match = this.#remote.match(msg.subject);
    if (match.plain.length === 0 && match.queues.length === 0) return false;
    // Distinct peers with plain interest, computed once per cached match result (the hot path).
    let plainPeers = this.#plainPeers.get(match);
    if (plainPeers === undefined) {
      plainPeers = [...new Set(match.plain.map((item) => item.peer))];
      this.#plainPeers.set(match, plainPeers);
    }
    const assigned = match.queues.length === 0 ? undefined : this.#assignQueues(msg, match.queues);
    let sent = false;
    for (const peer of plainPeers) {
      const queues = assigned?.get(peer);
      if (this.#sendBus(peer, msg, queues)) {
        sent = true;
        if (queues !== undefined) this.#claim(msg, queues);
      }
      assigned?.delete(peer);
    }
    if (assigned) {
      for (const [peer, queues] of assigned) {
        if (this.#sendBus(peer, msg, queues)) {
          sent = true;
          this.#claim(msg, queues);
        }
      }
    }
    if (this.#congested && msg.feedback !== undefined) {
      this.#congested = false;
      msg.feedback.stallMs = this.#stallMs;
      this.#routeStalls++;
    }
    return sent;
  }

  /** Set by #sendBus when the route it just queued on is over the high-water mark; read once per message. */
  #congested = false;

  #bytesOut(peer: string): number {
    for (const p of this.#routes.peers!()) if (p.name === peer) return p.counters.bytesOut;
    return 0;
  }

  /**
   * Accounts a queued bus frame and says whether the route is over its high-water mark. The counters are read
   * every pressureCheckBytes while the route keeps up, and on every frame while it is congested (the publisher
   * is being paused then, so that is rare). bytesOut also counts frames the bus did not queue (raft, pings),
   * so the estimate errs low: a stall may start late, never without cause.
   */
  #accountPressure(peer: string, bytes: number): void {
    const p = this.#pressure.get(peer);
    if (p === undefined) return;
    p.handed += bytes;
    p.sinceCheck += bytes;
    if (!p.congested && p.sinceCheck < pressureCheckBytes) return;
    p.sinceCheck = 0;
    const queued = p.handed - (this.#bytesOut(peer) - p.outBase);
    p.congested = queued > this.#highWater;
    if (p.congested) this.#congested = true;
  }

  /** Tells the server these groups were served remotely; a failed send claims nothing, so a local member serves. */
  #claim(msg: LocalPublish, queues: readonly string[]): void {
    if (msg.remoteQueues === undefined) return;
    for (const q of queues) msg.remoteQueues.add(q);
  }

  /**
   * For each remote queue group, one member cluster-wide chosen uniformly at random (each node weighted by its
   * member count); a group whose pick is a local member is left to the server. Returns peer → groups it serves.
   */
  #assignQueues(msg: LocalPublish, groups: readonly (readonly RemoteInterest[])[]): Map<string, string[]> {
    const assigned = new Map<string, string[]>();
    const local = msg.localQueues;
    let legacyLocal: readonly (readonly Interest[])[] | undefined;
    for (const members of groups) {
      const group = members[0]!.queue!;
      let localCount = local?.get(group) ?? 0;
      if (localCount > 0 && msg.remoteQueues === undefined) continue; // no way to claim it: the server serves it
      if (local === undefined) {
        // A caller that does not report local members: never take a group this node has members of.
        legacyLocal ??= this.#localQueues.match(msg.subject).queues;
        if (legacyLocal.some((g) => g[0]!.queue === group)) continue;
        localCount = 0;
      }
      let total = localCount;
      for (const m of members) total += m.count;
      let pick = Math.min(total - 1, Math.floor(this.#random() * total)) - localCount;
      if (pick < 0) continue; // a local member
      let chosen = members[members.length - 1]!.peer;
      for (const m of members) {
        if (pick < m.count) {
          chosen = m.peer;
          break;
        }
        pick -= m.count;
      }
      const list = assigned.get(chosen);
      if (list) list.push(group);
      else assigned.set(chosen, [group]);
    }
    return assigned;
  }

  #sendBus(peer: string, msg: LocalPublish, queues: string[] | undefined): boolean {
    const frame: { kind: 'bus'; subject: string; payload: Uint8Array; reply?: string; headers?: Uint8Array; queues?: string[] } =
      { kind: 'bus', subject: msg.subject, payload: msg.payload };
    if (msg.reply !== undefined) frame.reply = msg.reply;
    if (msg.headers.length > 0) frame.headers = msg.headers;
    if (queues !== undefined) frame.queues = queues;
    // The frame is encoded inside send(), so the server's views need no copy.
    if (!this.#routes.send(peer, frame)) return false;
    this.#forwardedMsgs++;
    if (this.#pressure.size > 0) {
      let bytes = busFrameOverhead + msg.subject.length + msg.payload.length + msg.headers.length + (msg.reply?.length ?? 0);
      if (queues !== undefined) for (const q of queues) bytes += q.length + 2;
      this.#accountPressure(peer, bytes);
    }
    return true;
  }
}
