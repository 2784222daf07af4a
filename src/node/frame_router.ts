// Routes what crosses the cluster routes for a node (issue 17: apart from node.ts). Incoming: a frame that is not a
// `raft` frame goes to the route listeners (the cluster bus, the snapshot stream); a raft frame tagged with a string
// goes to the extension handler of that tag (service presence); the rest is decoded (wire.ts) and dispatched — a
// hello to the slot bindings, a `cluster status` question answered with this node's report, an answer to the
// pending question, a Raft message stepped into Raft if it comes from the peer bound to its sender's slot. Outgoing:
// Raft's messages, snapshots to the snapshot stream. Also kept here, since only received messages show it: when each
// peer and the leader were last heard from (/raftz, health). Every seam is injected, so
// test/unit/frame_router.test.ts routes frames with no transport and no Raft.
import { MessageType, RaftError, type Message, type RawNode } from '../../raft/index.js';
import type { LinkClose, PeerInfo, RouteFrame } from '../../transport/index.js';
import type { Logger } from '../log.js';
import type { RouteListener } from './node_options.js';
import type { NodeMetrics } from './status.js';
import { decodeNodeFrame, encodeMessage, encodeStatusReply, type MemberReport, type SlotHello } from './wire.js';

/** What the router uses of Raft. */
export type RoutedRaft = Pick<RawNode, 'step' | 'basicStatus'>;

export interface FrameRouterOptions {
  /** Raft, once started: Raft messages before that are dropped (counted). */
  readonly raft: () => RoutedRaft | undefined;
  /** The slot bound to a peer's server name, and back. */
  readonly slotOf: (peer: string) => number | undefined;
  readonly peerOf: (id: number) => string | undefined;
  /** Sends a frame over the peer's route; false when it is not up. */
  readonly send: (peer: string, frame: RouteFrame) => boolean;
  /** Slot bindings (slot_binding.ts): a link's coming and going and the peer's hello. */
  readonly bindings: {
    readonly peerUp: (p: PeerInfo) => void;
    readonly peerDown: (p: PeerInfo) => void;
    readonly onHello: (peer: string, hello: SlotHello) => void;
  };
  /** This node's own report, the answer to a peer's `cluster status` question. */
  readonly selfReport: () => MemberReport;
  /** A peer answered this node's `cluster status` question (status.ts StatusQueries). */
  readonly statusAnswered: (reqId: number, report: MemberReport) => void;
  /** Snapshots leave as files beside Raft (snapshot_stream.ts), not as one message. */
  readonly offerSnapshot: (peer: string, m: Message) => void;
  readonly metrics: Pick<NodeMetrics, 'raftMessagesIn' | 'raftMessagesOut' | 'raftMessagesDropped'>;
  /** Raft has work: run the Ready loop. */
  readonly schedule: () => void;
  /** Date.now() in production. */
  readonly now: () => number;
  readonly log: Logger;
}

export class FrameRouter {
  private readonly o: FrameRouterOptions;
  private readonly listeners = new Set<RouteListener>();
  private readonly extensionHandlers = new Map<string, (peerName: string, data: unknown[]) => void>();
  /** Raft id → when the last Raft message from that peer arrived (JetStream's replica `active`). */
  private readonly contact = new Map<number, number>();
  private leaderContact = 0;

  constructor(o: FrameRouterOptions) {
    this.o = o;
  }

  /** Raft id → when the last Raft message from that peer arrived. */
  get peerContact(): ReadonlyMap<number, number> {
    return this.contact;
  }

  /** When the leader was last heard from (or the leader changed). */
  get lastLeaderContact(): number {
    return this.leaderContact;
  }

  /** A new leader (or none): its silence is counted from now. */
  leaderChanged(): void {
    this.leaderContact = this.o.now();
  }

  /** Registers a listener for non-Raft route frames and peer events; returns its removal. */
  addRouteListener(l: RouteListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /**
   * Handles raft frames whose data is `[tag, ...]` with a string `tag` (node-to-node messages of an in-process
   * service; send them with sendRouteFrame(peer, { kind: 'raft', data: [tag, ...] })). Returns the removal.
   */
  onExtensionFrame(tag: string, handler: (peerName: string, data: unknown[]) => void): () => void {
    if (this.extensionHandlers.has(tag)) throw new RangeError(`extension frame tag ${tag} already has a handler`);
    this.extensionHandlers.set(tag, handler);
    return () => void this.extensionHandlers.delete(tag);
  }

  peerUp(p: PeerInfo): void {
    this.o.bindings.peerUp(p);
    for (const l of this.listeners) l.up?.(p);
  }

  peerDown(p: PeerInfo, c: LinkClose): void {
    this.o.bindings.peerDown(p);
    for (const l of this.listeners) l.down?.(p, c);
  }

  /** A frame from `peer` (the transport's onFrame, and the snapshot stream delivering a received snapshot). */
  frame(peer: string, frame: RouteFrame): void {
    if (frame.kind !== 'raft') {
      for (const l of this.listeners) l.frame?.(peer, frame);
      return;
    }
    // Node-to-node traffic of in-process services (service presence, src/services) rides raft frames tagged
    // with a string: a node without the handler drops it in decodeNodeFrame with a warning, as any unknown tag.
    const ext = Array.isArray(frame.data) && typeof frame.data[0] === 'string' ? this.extensionHandlers.get(frame.data[0]) : undefined;
    if (ext !== undefined) {
      ext(peer, frame.data as unknown[]);
      return;
    }
    const d = decodeNodeFrame(frame.data);
    if (typeof d === 'string') {
      this.o.log.warn({ peer, reason: d }, 'dropped a malformed raft frame');
      return;
    }
    if (d.kind === 'hello') return this.o.bindings.onHello(peer, d.hello);
    if (d.kind === 'statusRequest') {
      this.o.send(peer, { kind: 'raft', data: encodeStatusReply(d.reqId, this.o.selfReport()) });
      return;
    }
    if (d.kind === 'statusReply') {
      this.o.statusAnswered(d.reqId, d.report);
      return;
    }
    const m = d.message;
    const raw = this.o.raft();
    if (this.o.slotOf(peer) !== m.from || raw === undefined) {
      this.o.metrics.raftMessagesDropped++;
      return;
    }
    this.o.metrics.raftMessagesIn++;
    this.contact.set(m.from, this.o.now());
    if (m.from === raw.basicStatus().lead || m.type === 'app' || m.type === 'heartbeat' || m.type === 'snap') this.leaderContact = this.o.now();
    try {
      raw.step(m);
    } catch (e) {
      // A forwarded proposal this node cannot take (no leader, transfer running): the proposer times
      // out and reports a retryable error; nothing else is lost.
      if (!(e instanceof RaftError)) throw e;
      this.o.log.debug({ peer, type: m.type, err: e.message }, 'raft refused a message');
    }
    this.o.schedule();
  }

  /** One of Raft's messages out: to its peer's route (counted), a snapshot to the snapshot stream. */
  sendMessage(m: Message): void {
    const peer = this.o.peerOf(m.to);
    if (peer !== undefined && m.type === MessageType.snap) return this.o.offerSnapshot(peer, m);
    if (peer === undefined || !this.o.send(peer, { kind: 'raft', data: encodeMessage(m) })) {
      this.o.metrics.raftMessagesDropped++;
      return;
    }
    this.o.metrics.raftMessagesOut++;
  }
}
