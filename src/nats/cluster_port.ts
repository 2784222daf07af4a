// The seams between the NATS server and what runs beside it in the node (the route layer, the KV API, the admin
// API, service presence): the messages it hands over and takes back, and the port they are exchanged on. Types only,
// so the layers that implement a side of the seam import no server code.
import type { Principal } from '../auth/types.js';

/** A subscription interest change: delta +1 on SUB, -1 on UNSUB/auto-unsubscribe/close. */
export interface InterestChange {
  readonly subject: string;
  /** undefined for a plain subscription. */
  readonly queue: string | undefined;
  readonly delta: 1 | -1;
}

/** A message published by a local client, offered to the cluster layer. Views are valid only during the call. */
export interface LocalPublish {
  readonly subject: string;
  readonly reply: string | undefined;
  /** The header block (empty when the message has none). */
  readonly headers: Uint8Array;
  readonly payload: Uint8Array;
  /**
   * Queue groups of this subject with local members that can take the message, and how many (set only when there
   * are some). A queue group delivers each message once cluster-wide, chosen over every node's members (as
   * nats-server 2.9 does, weighted by member count), so the forwarder decides first: it adds a group to
   * `remoteQueues` when it sent the message to a peer to serve that group, and the server then skips its local
   * members; every other group here goes to one local member.
   */
  readonly localQueues?: ReadonlyMap<string, number>;
  readonly remoteQueues?: Set<string>;
  /**
   * Back-pressure from the forwarder: set stallMs > 0 when a route this message was queued on is over its
   * high-water mark, and the server stops reading the publisher for that long (as it does for a local slow
   * subscriber). Reset by the server before each call.
   */
  readonly feedback?: PublishFeedback;
  /**
   * Who published it: the connection's authenticated principal; undefined when bus auth is off. In-process
   * services behind the forwarder (the KV API) use it for what permissions cannot say (control-plane buckets
   * readable by admin principals only).
   */
  readonly principal?: Principal;
}

export interface PublishFeedback {
  stallMs: number;
}

/** A message that arrived from a route, to be delivered to local subscribers only (never forwarded again). */
export interface RouteMessage {
  readonly subject: string;
  readonly reply?: string;
  readonly headers?: Uint8Array;
  readonly payload: Uint8Array;
  /** Queue groups this node must serve (one local member each); plain subscribers always get a copy. */
  readonly queues?: readonly string[];
  /**
   * Write to the subscribers' sockets once the current run of callbacks and microtasks is over instead of at the
   * event loop's next flush: for replies an in-server service (admin API, KV API) computed asynchronously. Waiting
   * for the check phase cost a sequential admin write about 0.9 ms (bench:cluster, A/B over five runs each);
   * replies produced together (one Raft batch applied) share the write.
   */
  readonly flushNow?: boolean;
}

/**
 * Hooks for the future route layer (src/cluster): no routes here, only the two seams they need.
 *  - interest(): the current local interest, for the initial dump to a new peer; then onInterest() for changes.
 *  - setForwarder(): called for every locally published message after local delivery; returns true when at least
 *    one peer had interest (so no_responders is not sent). Must copy what it keeps.
 *  - deliverFromRoute(): local delivery of a routed message; returns the number of local deliveries.
 */
export interface NatsClusterPort {
  interest(): { subject: string; queue: string | undefined; count: number }[];
  onInterest(listener: (change: InterestChange) => void): () => void;
  setForwarder(forward: ((msg: LocalPublish) => boolean) | undefined): void;
  deliverFromRoute(msg: RouteMessage): number;
  /**
   * Push delivery as nats-server's JetStream consumers do it: delivers `msg` to the local plain subscribers whose
   * subject matches `routeSubject` (a consumer's deliver subject) while writing `msg.subject` (the stream
   * subject, `$KV.b.k`) on the MSG/HMSG line; queue subscribers are not served. Returns the number of deliveries.
   * Optional so that wrappers of the port may omit it; the server's own port always has it.
   */
  deliverAs?(routeSubject: string, msg: RouteMessage): number;
}
