// Redial delays: exponential backoff with full jitter (delay = random() * min(max, base * 2^attempt)), so
// a cluster whose nodes all lost a peer at the same moment spreads its redials out instead of dialing in
// lock-step (the "full jitter" variant of the AWS architecture blog's comparison).

export interface BackoffOptions {
  readonly baseMs: number;
  readonly maxMs: number;
  /** Uniform in [0, 1); injectable so tests replay a schedule. */
  readonly random: () => number;
}

/** Delay before redial number `attempt` (1 = first retry after a failure). */
export function backoffDelayMs(attempt: number, options: BackoffOptions): number {
  const exponent = Math.min(Math.max(attempt, 1), 30);
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** exponent);
  return Math.floor(options.random() * ceiling);
}
