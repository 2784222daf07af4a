// Named limits of a route (CONVENTIONS §9: everything that grows with outside input has one, unit last).

export interface RouteLimits {
  /** Largest frame body accepted or sent; a bigger length prefix closes the link before buffering. */
  frameBytesMax: number;
  /** Frames waiting in one peer's outbound queue (above the socket's own buffer). */
  queueFramesMax: number;
  /** Bytes waiting in one peer's outbound queue. */
  queueBytesMax: number;
  /** TCP connect + TLS + route handshake must finish within this. */
  handshakeTimeoutMs: number;
  /** Interval between keep-alive pings on an established link. */
  pingIntervalMs: number;
  /** A link with this many unanswered pings is dead and closed. */
  pingsOutstandingMax: number;
  /** Time a closing link gets to flush its refusal frame before the socket is destroyed. */
  closeGraceMs: number;
  /** Redial backoff: first ceiling is 2 * base, doubling up to max (full jitter below the ceiling). */
  backoffBaseMs: number;
  backoffMaxMs: number;
}

export const routeLimitsDefault: RouteLimits = {
  frameBytesMax: 4 * 1024 * 1024,
  queueFramesMax: 1_000_000,
  queueBytesMax: 64 * 1024 * 1024,
  handshakeTimeoutMs: 5_000,
  pingIntervalMs: 2_000,
  pingsOutstandingMax: 3,
  closeGraceMs: 1_000,
  backoffBaseMs: 100,
  backoffMaxMs: 30_000,
};
