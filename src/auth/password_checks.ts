// The admission and scheduling of password checks: what keeps a connection storm cheap and a hostile storm
// the attacker's problem rather than the cluster's.
//
//   cache        a password that verified on this node within the cache TTL skips scrypt (credentials.ts):
//                a reconnect storm of a known client costs nothing.
//   single-flight one scrypt per (user, stored hash, presented password) in flight; every connection that
//                presents the same pair waits for that one result (a cold storm of 500 clients of one user
//                costs one scrypt, not 500).
//   reservation  a check reserves a failure token of its address and of its user name BEFORE it is hashed,
//                so checks in flight count: of 40 simultaneous guesses from one address at most `burst` are
//                hashed, the rest wait and are refused unhashed once the bucket is empty (not 39 hashed and
//                the 40th let through). Right passwords give their token back, so 500 clients of distinct
//                users behind one address all get in.
//   fair queue   checks wait per address and are taken round-robin across addresses, so a storm from one
//                address delays another address's login by at most one check per worker thread.
//   cancel       a check whose every waiting connection closed (client timeout, peer gone) is dropped before
//                it runs: no CPU for clients that left.
//   pool         scrypt runs on worker threads of its own (scrypt_pool.ts), never in libuv's pool, where the
//                WAL's writes and fsyncs run.
import { timingSafeEqual } from 'node:crypto';
import { FailureRateLimiter, hashPassword, isGeneratedPasswordHash, parsePasswordHash, verifyGeneratedPassword, VerifiedPasswordCache, type RateLimitOptions } from './credentials.js';
import { ScryptPool } from './scrypt_pool.js';

export type CheckOutcome =
  /** The password matches the stored hash. */
  | 'match'
  /** It does not (or the user does not exist: a dummy hash was checked so timing tells nothing). */
  | 'mismatch'
  /** The address has no failure tokens left (counting attempts in flight); nothing was hashed. */
  | 'address-limited'
  /** The user name has no failure tokens left; nothing was hashed. */
  | 'user-limited'
  /** More checks are waiting than `queueMax`; nothing was hashed. */
  | 'busy'
  /** The connection closed (its signal aborted) before its check ran. */
  | 'cancelled';

export interface CheckRequest {
  readonly address: string;
  /** The claimed user name ('' when the client sent none). */
  readonly user: string;
  /** The user's stored password hash; undefined when no such user (or no password): a dummy check is made. */
  readonly stored: string | undefined;
  readonly password: string;
  /** Aborted when the connection closes: its place in the queue is given up. */
  readonly signal?: AbortSignal;
}

export interface PasswordCheckOptions {
  /** Per address (IPv6: per /64). */
  readonly addressLimit?: Partial<RateLimitOptions>;
  /** Per user name: guesses spread over many addresses still run out. */
  readonly userLimit?: Partial<RateLimitOptions>;
  /** Verified-password cache TTL in ms; 0 disables it. */
  readonly cacheTtlMs?: number;
  /** Worker threads for scrypt (default: cores − 1, 1..4). */
  readonly threads?: number;
  /** Checks waiting at most (default 10,000); beyond, new ones are refused as busy. */
  readonly queueMax?: number;
}

/**
 * A user name is allowed more failures than an address (many legitimate clients may share one user), and
 * refills faster: it bounds the scrypt work and the guesses that many addresses together can spend on one
 * account, at the price that an attacker who knows a name can slow that user's uncached logins (logins this
 * node verified within the cache TTL still pass).
 */
export const userLimitDefaults: Partial<RateLimitOptions> = { burst: 30, refillPerSecond: 2 };

interface Flight {
  readonly key: string;
  readonly req: CheckRequest;
  /** Connections still waiting for this result. */
  live: number;
  started: boolean;
  readonly listeners: Set<(o: CheckOutcome | Error) => void>;
}

export class PasswordChecks {
  private readonly pool: ScryptPool;
  private readonly cache: VerifiedPasswordCache;
  private readonly addresses: FailureRateLimiter;
  private readonly users: FailureRateLimiter;
  private readonly flights = new Map<string, Flight>();
  /** Waiting flights by address; Map order is the round-robin order. */
  private readonly waiting = new Map<string, Flight[]>();
  private waitingCount = 0;
  private running = 0;
  private readonly queueMax: number;
  private dummyHash: Promise<string> | undefined;

  constructor(o: PasswordCheckOptions = {}) {
    this.pool = new ScryptPool(o.threads);
    this.cache = new VerifiedPasswordCache(o.cacheTtlMs);
    this.addresses = new FailureRateLimiter(o.addressLimit, addressKey);
    this.users = new FailureRateLimiter({ ...userLimitDefaults, ...o.userLimit });
    this.queueMax = o.queueMax ?? 10_000;
  }

  /** Starts the dummy hash (the check for unknown users) ahead of the first login. */
  prepare(): void {
    this.dummyHash ??= hashPassword('not-a-password', undefined);
  }

  check(req: CheckRequest): Promise<CheckOutcome> {
    if (req.signal?.aborted) return Promise.resolve('cancelled');
    // The address limit comes before the cache: a throttled address must get the same refusal for a right
    // password as for a wrong one, or it could go on guessing at the speed of an HMAC and learn the answer.
    if (this.addresses.exhausted(req.address)) {
      return Promise.resolve('address-limited');
    }
    // A cached success is not charged or queued. The user-name limit applies only past this point: it bounds
    // the hashing a name can attract (a name under attack must not lock out clients this node already knows).
    if (req.stored !== undefined && this.cache.has(req.user, req.stored, req.password)) {
      return Promise.resolve('match');
    }
    if (req.stored !== undefined && isGeneratedPasswordHash(req.stored)) {
      // One HMAC: nothing to queue or share (credentials.ts says why this format is safe).
      if (this.users.exhausted(req.user)) {
        return Promise.resolve('user-limited');
      }
      if (verifyGeneratedPassword(req.password, req.stored)) return Promise.resolve('match');
      this.addresses.recordFailure(req.address);
      this.users.recordFailure(req.user);
      return Promise.resolve('mismatch');
    }
    const key = `${req.user}\0${req.stored ?? ''}\0${this.cache.mac(req.user, req.password).toString('base64')}`;
    let flight = this.flights.get(key);
    if (flight === undefined) {
      if (this.users.exhausted(req.user)) {
        return Promise.resolve('user-limited');
      }
      if (this.waitingCount >= this.queueMax) {
        return Promise.resolve('busy');
      }
      flight = { key, req, live: 0, started: false, listeners: new Set() };
      this.flights.set(key, flight);
      const q = this.waiting.get(req.address);
      if (q === undefined) this.waiting.set(req.address, [flight]);
      else q.push(flight);
      this.waitingCount++;
    }
    return this.wait(flight, req.signal);
  }

  private wait(flight: Flight, signal: AbortSignal | undefined): Promise<CheckOutcome> {
    flight.live++;
    const p = new Promise<CheckOutcome>((resolve, reject) => {
      const listener = (o: CheckOutcome | Error): void => {
        signal?.removeEventListener('abort', onAbort);
        if (o instanceof Error) reject(o);
        else resolve(o);
      };
      const onAbort = (): void => {
        flight.listeners.delete(listener);
        resolve('cancelled');
        if (--flight.live === 0 && !flight.started) this.drop(flight);
      };
      flight.listeners.add(listener);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    queueMicrotask(() => this.dispatch());
    return p;
  }

  /** Every waiter left before the check ran: give the reservation back uncharged. */
  private drop(flight: Flight): void {
    const q = this.waiting.get(flight.req.address);
    const i = q?.indexOf(flight) ?? -1;
    if (q === undefined || i < 0) return;
    q.splice(i, 1);
    if (q.length === 0) this.waiting.delete(flight.req.address);
    this.waitingCount--;
    this.finish(flight, 'cancelled', false, false);
  }

  /**
   * Starts checks while a worker is free, one address at a time in round-robin order. An address (or user
   * name) whose failure tokens are all taken by checks in flight waits: its next check could be the one that
   * empties the bucket. One whose bucket is empty has its waiting checks refused unhashed.
   */
  private dispatch(): void {
    let blocked = 0;
    while (this.running < this.pool.size && this.waitingCount > 0 && blocked < this.waiting.size) {
      const [address, q] = this.waiting.entries().next().value as [string, Flight[]];
      const flight = q[0]!;
      const user = flight.req.user;
      const step = this.admit(address, user);
      // Re-inserted at the end: the next check comes from the next address (round-robin).
      this.waiting.delete(address);
      if (step === 'wait') {
        this.waiting.set(address, q);
        blocked++;
        continue;
      }
      q.shift();
      if (q.length > 0) this.waiting.set(address, q);
      this.waitingCount--;
      blocked = 0;
      if (step !== 'run') {
        this.finish(flight, step, false, false);
        continue;
      }
      flight.started = true;
      this.running++;
      this.run(flight).then(
        (matched) => {
          this.running--;
          if (matched && flight.req.stored !== undefined) this.cache.add(flight.req.user, flight.req.stored, flight.req.password);
          this.finish(flight, matched ? 'match' : 'mismatch', !matched, true);
          this.dispatch();
        },
        (err: unknown) => {
          this.running--;
          this.finish(flight, err instanceof Error ? err : new Error(String(err)), false, true);
          this.dispatch();
        },
      );
    }
  }

  /** Reserves the tokens of a check about to run; 'wait' while checks in flight hold the last ones. */
  private admit(address: string, user: string): 'run' | 'wait' | 'address-limited' | 'user-limited' {
    if (this.addresses.exhausted(address)) return 'address-limited';
    if (this.users.exhausted(user)) return 'user-limited';
    if (!this.addresses.reserve(address)) return 'wait';
    if (this.users.reserve(user)) return 'run';
    this.addresses.settle(address, false);
    return 'wait';
  }

  private async run(flight: Flight): Promise<boolean> {
    const { stored, password } = flight.req;
    if (stored === undefined) {
      // An unknown name costs one scrypt with the default parameters, so response time does not tell an
      // attacker which names exist.
      this.prepare();
      const dummy = parsePasswordHash(await this.dummyHash!);
      await this.pool.hash(password, dummy.salt, dummy.params, dummy.hash.length);
      return false;
    }
    const { params, salt, hash } = parsePasswordHash(stored);
    const candidate = await this.pool.hash(password, salt, params, hash.length);
    return timingSafeEqual(candidate, hash);
  }

  private finish(flight: Flight, outcome: CheckOutcome | Error, failed: boolean, reserved: boolean): void {
    if (this.flights.get(flight.key) === flight) this.flights.delete(flight.key);
    if (reserved) {
      this.addresses.settle(flight.req.address, failed);
      this.users.settle(flight.req.user, failed);
    }
    for (const l of flight.listeners) l(outcome);
    flight.listeners.clear();
  }
}

/**
 * The limiter's key for an address: IPv6 clients are limited per /64 (one host is commonly given a whole
 * /64, so a per-address limit would give an attacker 2^64 fresh buckets); IPv4 and IPv4-mapped per address.
 */
export function addressKey(address: string): string {
  if (!address.includes(':') || address.startsWith('::ffff:')) return address;
  const [head = '', tail] = address.split('::', 2) as [string, string | undefined];
  const groups = head === '' ? [] : head.split(':');
  if (tail !== undefined) {
    const tailGroups = tail === '' ? [] : tail.split(':');
    while (groups.length + tailGroups.length < 8) groups.push('0');
    groups.push(...tailGroups);
  }
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '').toLowerCase()).join(':')}::/64`;
}
