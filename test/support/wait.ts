// Condition waits for tests (CONVENTIONS.md §15, after nats-server's `checkFor(t, totalWait, sleepDur, f)`):
// a test waits for what it needs, bounded in time and in attempts, and a timeout names what it waited for and
// the last thing it saw. A fixed delay is only for creating a timing on purpose (a start order), via `pause`.

export interface WaitOptions {
  /** What is awaited, for the failure message; a function is evaluated at timeout, so it can show the state then. */
  readonly what: string | (() => string);
  /** Upper bound of the whole wait (default 20 s: a loaded 2-core CI machine, never a timing assertion). */
  readonly timeoutMs?: number;
  /** Time between two evaluations of the condition (default 25 ms). */
  readonly intervalMs?: number;
  /** Checked before each evaluation: a reason means waiting longer is pointless (a child process exited), fail now. */
  readonly giveUpIf?: () => string | undefined;
}

/** Thrown when `giveUpIf` gave a reason: the condition can no longer come true. */
export class WaitAbandonedError extends Error {
  readonly code = 'ETEST_WAIT_ABANDONED';
  constructor(readonly what: string, readonly reason: string) {
    super(`gave up waiting for ${what}: ${reason}`);
    this.name = 'WaitAbandonedError';
  }
}

/** Thrown when a condition did not hold in time; `code` is stable, the message names what was awaited. */
export class WaitTimeoutError extends Error {
  readonly code = 'ETEST_WAIT_TIMEOUT';
  constructor(readonly what: string, readonly timeoutMs: number, readonly attempts: number, override readonly cause?: unknown) {
    super(`timed out after ${timeoutMs} ms (${attempts} checks) waiting for ${what}`
      + (cause === undefined ? '' : `; the last check threw: ${cause instanceof Error ? cause.message : String(cause)}`));
    this.name = 'WaitTimeoutError';
  }
}

const timeoutMsDefault = 20_000;
const intervalMsDefault = 25;

/** A falsy result (false, undefined, null, 0, '') means "not yet". */
export type Condition<T> = () => T | Promise<T>;

/**
 * Evaluates `cond` until it returns a truthy value and returns that value. A throw counts as "not yet" (a
 * server still booting refuses connections) and is reported if the wait times out. Bounded by `timeoutMs` and
 * by the number of checks that fit in it, whichever ends first.
 */
export async function waitFor<T>(cond: Condition<T>, opts: WaitOptions): Promise<Exclude<T, false | null | undefined | 0 | ''>> {
  const timeoutMs = opts.timeoutMs ?? timeoutMsDefault;
  const intervalMs = Math.max(1, opts.intervalMs ?? intervalMsDefault);
  const attemptsMax = Math.ceil(timeoutMs / intervalMs) + 1;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  let attempts = 0;
  const describe = (): string => (typeof opts.what === 'function' ? opts.what() : opts.what);
  while (attempts < attemptsMax) {
    const reason = opts.giveUpIf?.();
    if (reason !== undefined) throw new WaitAbandonedError(describe(), reason);
    attempts++;
    try {
      const value = await cond();
      if (value) return value as Exclude<T, false | null | undefined | 0 | ''>;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) break;
    await pause(Math.min(intervalMs, Math.max(0, deadline - Date.now())), 'between two checks of a condition');
  }
  throw new WaitTimeoutError(describe(), timeoutMs, attempts, lastError);
}

/**
 * A fixed delay, only to create a timing on purpose (a node started later than another, traffic spread over
 * time): `why` says which, so a reader can tell it from a sleep hoping something has settled.
 */
export function pause(ms: number, why: string): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with `value` after `ms`, unref'd: the losing side of a Promise.race bound, never keeping the process alive. */
export function after<T>(ms: number, value: T): Promise<T> {
  return new Promise((resolve) => setTimeout(() => resolve(value), ms).unref());
}
