// transport/: every byte between membershipd nodes. Imports nothing from src/.
//
// Routes are mutually-verified TLS 1.3 connections on the cluster port. Inside TLS, before any other
// frame, both sides run the route handshake (handshake.ts): cluster name, server name, Ed25519 identity
// key with proof of possession over the peer's nonce, route user and password proof (constant time),
// protocol version, posture digest and the cluster size N. Any mismatch sends a REFUSE frame with the
// reason (so both logs carry it) and closes; the dialing side retries with exponential backoff and full
// jitter. One link per pair of nodes: when both dial at once, both keep the link dialed by the lexically
// smaller server name. A --routes entry that reaches this node itself is dropped quietly.
//
// Frames are `[length u32 BE][msgpack array]` (frame.ts), at most `limits.frameBytesMax` bytes; bus frames
// use a hand-written encoder/decoder of the same plain msgpack bytes (the per-message hot path).
// Refusal codes (stable, in logs as `code` and sent to the peer): see `refusalCode` in handshake.ts.
//
// Public API:
//   parseRoutes(list: string | readonly string[]): RouteAddress[]     throws RouteAddressError
//       `host:port` or `nats-route://host:port`, IPv6 as `[addr]:port`; user info → code EROUTE_USERINFO
//   parseRoute(entry: string): RouteAddress
//   createRouteTransport(options: RouteTransportOptions): RouteTransport
//     .start(): Promise<void>                      listen, then dial every route
//     .close(): Promise<void>                      refuse all links with `shutdown`, resolve when closed
//     .address(): { host, port }                   bound listener address
//     .send(peerName, frame: RouteFrame): boolean  false: peer not up, or a raft frame dropped (queue full)
//     .broadcast(frame: RouteFrame): number        how many up peers queued it
//     .peers(): PeerInfo[]                         state, address, identity, rtt, counters (for /routez)
//     .upPeers(): string[]                         names of peers with an established link
//     .linkCount(): number                         open connections in any state
//   options.onPeerUp(peer: PeerInfo)               a new link: (re)send the full interest set
//   options.onPeerDown(peer: PeerInfo, close: LinkClose)
//   options.onFrame(peerName: string, frame: RouteFrame)   binaries in `frame` are the receiver's own copies
//   options.verifyPeer(name, publicKey): string | boolean | undefined   refuse (reason/false) or accept
//   verifyEd25519(publicKey, data, signature): boolean   node:crypto, cached KeyObjects
//   FrameParser / encodeFrame / decodeFrameBody          the wire codec (tests, tools)
//
// Outbound queue per peer (limits.queueFramesMax / queueBytesMax): a raft frame is dropped when full
// (Raft retransmits); any other frame closes the link as a slow consumer and the redial re-emits
// peer-up. A peer that misses `limits.pingsOutstandingMax` pongs is closed as dead.

export { createRouteTransport } from './transport.js';
export type { RouteTransport, RouteTransportOptions, PeerInfo, PeerState } from './transport.js';
export { parseRoute, parseRoutes } from './routes.js';
export type { RouteAddress } from './routes.js';
export type { RouteFrame, WireFrame, HelloBody } from './frame.js';
export { FrameParser, encodeFrame, encodeFrameBody, decodeFrameBody, frameKind, frameHeaderBytes, frameBytesMaxDefault, snapChunkBytesMax, snapTotalBytesMax } from './frame.js';
export { TransportError, RouteAddressError, FrameError } from './errors.js';
export { verifyEd25519 } from './identity.js';
export type { RouteIdentity } from './identity.js';
export { refusalCode, routeProtocolVersion } from './handshake.js';
export type { Refusal, RefusalCode } from './handshake.js';
export type { LinkClose, LinkCounters } from './link.js';
export { routeLimitsDefault } from './limits.js';
export type { RouteLimits } from './limits.js';
export { backoffDelayMs } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export type { Clock } from './clock.js';
export { systemClock } from './clock.js';
export type { RouteTlsOptions } from './tls.js';
