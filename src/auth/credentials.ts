// Secrets at rest and their verification. Plaintext passwords and tokens are never stored and never logged:
// only the self-describing hash strings below are.
//
//   password: scrypt$<N>$<r>$<p>$<salt base64url>$<hash base64url>   (node:crypto scrypt, per-user random salt)
//   token:    sha256$<hash base64url>
//
// Tokens use an unsalted SHA-256 because the server must find the user from the token alone (a keyed lookup,
// not a scan with one scrypt per user); that is only safe for high-entropy secrets, so createToken makes
// 32 random bytes and hashToken refuses tokens shorter than tokenCharsMin.
import { createHash, createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { MembershipdError } from '../errors.js';

export class CredentialFormatError extends MembershipdError {
  constructor(message: string) {
    super('ECREDFORMAT', message);
  }
}

export interface ScryptParams {
  /** CPU/memory cost, a power of two. */
  readonly N: number;
  readonly r: number;
  readonly p: number;
}

/** 32 MiB and ~100 ms per verification on an idle core (~400 ms under this machine's load); Node's own default is N=2^14. */
export const scryptDefaults: ScryptParams = { N: 1 << 15, r: 8, p: 1 };
const saltBytes = 16;
const hashBytes = 32;
// Limits on what a stored hash may ask for, so a hostile users file cannot make one login cost seconds or GiB.
const scryptNMax = 1 << 20, scryptRMax = 32, scryptPMax = 16;
export const tokenCharsMin = 16;

interface ParsedPasswordHash {
  readonly params: ScryptParams;
  readonly salt: Buffer;
  readonly hash: Buffer;
}

/** Where a scrypt runs: libuv's pool by default; a node passes its ScryptPool (scrypt_pool.ts) to keep the WAL's pool free. */
export type ScryptFunction = (password: string, salt: Buffer, params: ScryptParams, keylen: number) => Promise<Buffer>;

function scryptAsync(password: string, salt: Buffer, params: ScryptParams, keylen: number): Promise<Buffer> {
  const maxmem = 256 * params.N * params.r + 1024 * 1024;
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keylen, { N: params.N, r: params.r, p: params.p, maxmem }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function checkParams(params: ScryptParams): void {
  const { N, r, p } = params;
  if (!Number.isInteger(N) || N < 2 || N > scryptNMax || (N & (N - 1)) !== 0) throw new CredentialFormatError(`scrypt N must be a power of two in 2..${scryptNMax}, got ${N}`);
  if (!Number.isInteger(r) || r < 1 || r > scryptRMax) throw new CredentialFormatError(`scrypt r must be in 1..${scryptRMax}, got ${r}`);
  if (!Number.isInteger(p) || p < 1 || p > scryptPMax) throw new CredentialFormatError(`scrypt p must be in 1..${scryptPMax}, got ${p}`);
}

export async function hashPassword(password: string, params: ScryptParams = scryptDefaults, scryptFn: ScryptFunction = scryptAsync): Promise<string> {
  if (password.length === 0) throw new CredentialFormatError('a password must not be empty');
  checkParams(params);
  const salt = randomBytes(saltBytes);
  const hash = await scryptFn(password, salt, params, hashBytes);
  return `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64url')}$${hash.toString('base64url')}`;
}

const b64url = /^[A-Za-z0-9_-]+$/;

export function parsePasswordHash(stored: string): ParsedPasswordHash {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') {
    throw new CredentialFormatError('a password hash looks like scrypt$N$r$p$salt$hash (make one with `membershipd user hash-password`)');
  }
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string];
  const params = { N: Number(n), r: Number(r), p: Number(p) };
  if (![n, r, p].every((x) => /^\d{1,8}$/.test(x))) throw new CredentialFormatError('scrypt N, r and p must be decimal integers');
  checkParams(params);
  if (!b64url.test(salt) || !b64url.test(hash)) throw new CredentialFormatError('scrypt salt and hash must be base64url');
  const saltBuf = Buffer.from(salt, 'base64url');
  const hashBuf = Buffer.from(hash, 'base64url');
  if (saltBuf.length < 8 || saltBuf.length > 64) throw new CredentialFormatError('scrypt salt must have 8..64 bytes');
  if (hashBuf.length < 16 || hashBuf.length > 64) throw new CredentialFormatError('scrypt hash must have 16..64 bytes');
  return { params, salt: saltBuf, hash: hashBuf };
}

// ---- generated passwords -------------------------------------------------------------------------------
//
// A password the node itself draws (createGeneratedPassword: 32 bytes from the CSPRNG, 256 bits) is stored as
//   generated$<salt base64url>$<HMAC-SHA256(salt, password) base64url>
// and verified with one HMAC (~2 µs) instead of one scrypt (~0.1 s). Why that is safe: key stretching
// multiplies an offline attacker's cost per guess by the work factor (scrypt N=2^15 is ~2^17 hash
// evaluations, ~17 bits); it protects secrets with too little entropy to survive a fast hash, i.e. the ones
// people choose. Against 256 random bits a fast hash still leaves ~2^255 guesses, out of reach whatever the
// attacker's hardware, exactly as for tokens (sha256$ above). The format is made only by our code, for a
// password it generated (`membershipd user add NAME --generate-password`: the CLI draws it, sends only the hash
// and prints the password once); hashGeneratedPassword refuses any other shape, and a password a person or a
// script supplies is always scrypt-hashed. The admin API takes a generated$ hash as it takes a scrypt one, from
// an admin principal only, who could set any credential anyway. What it buys: a storm of 500 distinct users
// costs 500 HMACs, not 50 s of scrypt CPU.

const generatedPrefix = 'generated$';
/** 32 random bytes, base64url, behind a marker that tells people (and secret scanners) what it is. */
export function createGeneratedPassword(): string {
  return `ubpw_${randomBytes(32).toString('base64url')}`;
}

/** The stored form of a password from createGeneratedPassword (refuses anything else: see above). */
export function hashGeneratedPassword(password: string): string {
  if (!/^ubpw_[A-Za-z0-9_-]{43}$/.test(password)) throw new CredentialFormatError('only a password made by createGeneratedPassword() may be stored as generated$ (other passwords are scrypt-hashed)');
  const salt = randomBytes(saltBytes);
  return `${generatedPrefix}${salt.toString('base64url')}$${createHmac('sha256', salt).update(password, 'utf8').digest('base64url')}`;
}

export function isGeneratedPasswordHash(stored: string): boolean {
  return /^generated\$[A-Za-z0-9_-]{11,86}\$[A-Za-z0-9_-]{43}$/.test(stored);
}

/** Constant-time compare of a presented password with a generated$ hash; false for a malformed hash. */
export function verifyGeneratedPassword(password: string, stored: string): boolean {
  if (!isGeneratedPasswordHash(stored)) return false;
  const [, salt, hash] = stored.split('$') as [string, string, string];
  const candidate = createHmac('sha256', Buffer.from(salt, 'base64url')).update(password, 'utf8').digest();
  const expected = Buffer.from(hash, 'base64url');
  return candidate.length === expected.length && timingSafeEqual(candidate, expected);
}

export function isPasswordHash(stored: string): boolean {
  if (isGeneratedPasswordHash(stored)) return true;
  try {
    parsePasswordHash(stored);
    return true;
  } catch {
    return false;
  }
}

/** Constant-time in the hash comparison; the scrypt itself dominates and does not depend on the guess. */
export async function verifyPassword(password: string, stored: string, scryptFn: ScryptFunction = scryptAsync): Promise<boolean> {
  if (stored.startsWith(generatedPrefix)) return verifyGeneratedPassword(password, stored);
  const { params, salt, hash } = parsePasswordHash(stored);
  const candidate = await scryptFn(password, salt, params, hash.length);
  return timingSafeEqual(candidate, hash);
}

/**
 * Remembers passwords that recently verified, so a reconnect storm (every client of a restarted node at once)
 * costs one scrypt per user rather than one per connection, and stays within the auth timeout. Only
 * SUCCESSFUL verifications enter: a guess misses the cache and pays the full scrypt (and the rate limit), so
 * online guessing gains nothing. Entries hold an HMAC of the password under a per-process random key (never
 * the password), are bound to the stored hash they verified against, and expire after `ttlMs`.
 */
export class VerifiedPasswordCache {
  private readonly key = randomBytes(32);
  private readonly entries = new Map<string, { stored: string; mac: Buffer; at: number }>();

  constructor(
    private readonly ttlMs = 10 * 60_000,
    private readonly entriesMax = 10_000,
    private readonly now: () => number = () => Date.now(),
  ) {}

  /** HMAC of (user, password) under this process's random key: what the cache (and single-flight) compare. */
  mac(user: string, password: string): Buffer {
    return createHmac('sha256', this.key).update(user).update('\0').update(password).digest();
  }

  has(user: string, stored: string, password: string): boolean {
    if (this.ttlMs <= 0) return false;
    const e = this.entries.get(user);
    if (e === undefined) return false;
    if (e.stored !== stored || this.now() - e.at > this.ttlMs) {
      this.entries.delete(user);
      return false;
    }
    return timingSafeEqual(e.mac, this.mac(user, password));
  }

  add(user: string, stored: string, password: string): void {
    if (this.ttlMs <= 0) return;
    if (this.entries.size >= this.entriesMax && !this.entries.has(user)) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(user, { stored, mac: this.mac(user, password), at: this.now() });
  }

  get size(): number {
    return this.entries.size;
  }
}

export function createToken(): string {
  return randomBytes(32).toString('base64url');
}

export function hashToken(token: string): string {
  if (token.length < tokenCharsMin) throw new CredentialFormatError(`a token needs at least ${tokenCharsMin} characters (use createToken())`);
  return tokenHashOf(token);
}

/** The lookup key of a presented token (no length rule: a short presented token simply matches nothing). */
export function tokenHashOf(token: string): string {
  return `sha256$${createHash('sha256').update(token, 'utf8').digest('base64url')}`;
}

export function isTokenHash(stored: string): boolean {
  return /^sha256\$[A-Za-z0-9_-]{43}$/.test(stored);
}

export function tokenHashesEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a), bb = Buffer.from(b);
  return ab.length === bb.length && timingSafeEqual(ab, bb);
}

// ---- failed-attempt rate limit ----------------------------------------------------------------------------

export interface RateLimitOptions {
  /** Failures an address may have in a burst before it is throttled. */
  readonly burst: number;
  /** Failures forgiven per second. */
  readonly refillPerSecond: number;
  /** Addresses tracked at most; beyond it, full (idle) buckets are dropped first, then all. */
  readonly addressesMax: number;
  /** Milliseconds; injectable for tests. */
  readonly now: () => number;
}

export const rateLimitDefaults: RateLimitOptions = { burst: 10, refillPerSecond: 1, addressesMax: 10_000, now: () => Date.now() };

/**
 * A token bucket per key (a source address, or a user name), charged only by FAILED password/token attempts.
 * While a key's bucket is empty its attempts are refused without being checked (which also spares the
 * scrypt CPU). Valid clients never charge it, and NKey clients (and the internal identity) are never
 * throttled because a signature cannot be guessed, so only a key that keeps failing is slowed.
 *
 * An asynchronous check `reserve()`s a token before it runs and `settle()`s after: attempts in flight count
 * against the bucket as if they had failed, so a burst of simultaneous attempts cannot all get checked before
 * the first failure is recorded.
 */
export class FailureRateLimiter {
  private readonly opts: RateLimitOptions;
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly inFlight = new Map<string, number>();

  constructor(options: Partial<RateLimitOptions> = {}, private readonly keyOf: (address: string) => string = (a) => a) {
    this.opts = { ...rateLimitDefaults, ...options };
    if (!(this.opts.burst >= 1) || !(this.opts.refillPerSecond > 0)) throw new RangeError('rate limit needs burst ≥ 1 and refillPerSecond > 0');
  }

  private level(key: string): number {
    const b = this.buckets.get(key);
    if (b === undefined) return this.opts.burst;
    const now = this.opts.now();
    const tokens = Math.min(this.opts.burst, b.tokens + ((now - b.at) / 1000) * this.opts.refillPerSecond);
    if (tokens >= this.opts.burst) {
      this.buckets.delete(key);
      return this.opts.burst;
    }
    b.tokens = tokens;
    b.at = now;
    return tokens;
  }

  /** May this address try a password/token now? (Attempts in flight count as spent.) */
  allows(address: string): boolean {
    const key = this.keyOf(address);
    return this.level(key) - (this.inFlight.get(key) ?? 0) >= 1;
  }

  /** No failure token left at all (attempts in flight not counted): refuse without checking. */
  exhausted(address: string): boolean {
    return this.level(this.keyOf(address)) < 1;
  }

  /** Takes a token for an attempt about to be checked; false (nothing taken) when none is left. */
  reserve(address: string): boolean {
    if (!this.allows(address)) return false;
    const key = this.keyOf(address);
    this.inFlight.set(key, (this.inFlight.get(key) ?? 0) + 1);
    return true;
  }

  /** Ends a reserved attempt: a failure is charged, a success (or a dropped attempt) gives the token back. */
  settle(address: string, failed: boolean): void {
    const key = this.keyOf(address);
    const n = (this.inFlight.get(key) ?? 0) - 1;
    if (n > 0) this.inFlight.set(key, n);
    else this.inFlight.delete(key);
    if (failed) this.recordFailure(address);
  }

  recordFailure(address: string): void {
    const key = this.keyOf(address);
    const tokens = this.level(key);
    if (!this.buckets.has(key) && this.buckets.size >= this.opts.addressesMax) this.prune();
    this.buckets.set(key, { tokens: Math.max(0, tokens - 1), at: this.opts.now() });
  }

  get trackedAddresses(): number {
    return this.buckets.size;
  }

  /**
   * At the bound: refilled buckets go first; if still full, the tenth that is fullest (closest to forgiven)
   * is dropped. Dropping everything, as this once did, let an attacker with 10,000 addresses reset the
   * buckets of its busiest ones.
   */
  private prune(): void {
    for (const key of [...this.buckets.keys()]) this.level(key);
    if (this.buckets.size < this.opts.addressesMax) return;
    const fullest = [...this.buckets.entries()].sort((a, b) => b[1].tokens - a[1].tokens);
    for (const [key] of fullest.slice(0, Math.max(1, Math.ceil(this.opts.addressesMax / 10)))) this.buckets.delete(key);
  }
}
