// The BusAuthenticator (types.ts): decides who a connection is and what it may do. The mode lives only here:
//   off     everyone is anonymous with full permissions; no auth_required, no nonce.
//   warn    credentials are checked when offered; failures and anonymous clients are accepted, and every
//           would-be refusal and would-be permission violation is logged (principal + subject), never blocked.
//   enforce bad or missing credentials are refused; permissions are enforced.
// A client that proves possession of a node's internal identity (NKey 'N…') is the admin principal.
import type { Logger } from 'pino';
import { allowAll, type AuthOutcome, type AuthRequest, type BusAuthenticator, type BusAuthMode, type Permissions, type Principal, type PrincipalKind } from './types.js';
import { FailureRateLimiter, tokenHashesEqual, tokenHashOf, type RateLimitOptions } from './credentials.js';
import { addressKey, PasswordChecks, type CheckOutcome } from './password_checks.js';
import { isValidPublicKey, verifyNonceSignature } from './nkeys.js';
import { CompiledRole, denyAll, unionPermissions, userInboxRole } from './permissions.js';
import { builtinAdminRole, type PrincipalSource, type RoleRecord, type UserRecord } from './principal_source.js';

export interface BusAuthenticatorOptions {
  readonly mode: BusAuthMode;
  /** Required unless mode is 'off'. */
  readonly source?: PrincipalSource;
  /** 'N…' public keys whose holders are the admin principal: this node's and (later) every registered node's. */
  readonly internalIdentityPublicKeys?: readonly string[] | (() => readonly string[]);
  readonly logger: Logger;
  readonly rateLimit?: Partial<RateLimitOptions>;
  /** Failed-attempt limit per user name (password_checks.ts userLimitDefaults). */
  readonly userRateLimit?: Partial<RateLimitOptions>;
  /** Worker threads that run scrypt (default cores − 1, 1..4). */
  readonly passwordThreads?: number;
  /** How long a successfully verified password skips scrypt on reconnect (credentials.ts); 0 = always scrypt. Default 10 min. */
  readonly passwordCacheTtlMs?: number;
}

type Credential = 'anonymous' | 'password' | 'token' | 'nkey' | 'internal';

/** What a principal was authenticated with, to decide at revalidation whether it still holds. */
interface Context {
  readonly credential: Credential;
  /** User name, or the internal key. */
  readonly user: string | undefined;
  /** The stored credential (hash or nkey) it matched; a change of it invalidates the connection. */
  readonly stored: string | undefined;
  /** Identity of the permissions it was built with. */
  readonly permsKey: string;
}

interface UserPerms {
  readonly key: string;
  readonly admin: boolean;
  readonly permissions: Permissions;
}

const kindOf: Record<Credential, PrincipalKind> = { anonymous: 'anonymous', password: 'user', token: 'token', nkey: 'nkey', internal: 'internal' };

/** `fromSource`: refused for what the principal source says (unknown user, wrong password, disabled), which a
 * follower that has not applied the latest `user add|update` may say wrongly for a moment. */
type Verified = { ok: true; principal: Principal } | { ok: false; reason: string; fromSource?: true };

export function createBusAuthenticator(options: BusAuthenticatorOptions): BusAuthenticator {
  return new Authenticator(options);
}

class Authenticator implements BusAuthenticator {
  readonly mode: BusAuthMode;
  readonly authRequired: boolean;
  readonly nonceRequired: boolean;
  private readonly source: PrincipalSource | undefined;
  private readonly internalKeys: () => readonly string[];
  private readonly logger: Logger;
  private readonly limiter: FailureRateLimiter;
  private readonly passwords: PasswordChecks;
  private readonly contexts = new WeakMap<Principal, Context>();
  private readonly userPerms = new Map<string, UserPerms>();
  private readonly compiledRoles = new Map<string, { json: string; role: CompiledRole }>();
  private readonly anonymous: Principal;

  constructor(o: BusAuthenticatorOptions) {
    if (o.mode !== 'off' && o.mode !== 'warn' && o.mode !== 'enforce') throw new RangeError(`bus auth mode must be off, warn or enforce, got ${String(o.mode)}`);
    if (o.mode !== 'off' && o.source === undefined) throw new RangeError(`bus auth mode ${o.mode} needs a principal source (users)`);
    this.mode = o.mode;
    // warn never blocks, so it does not require auth before CONNECT; it still sends a nonce so NKey clients
    // can prove who they are.
    this.authRequired = o.mode === 'enforce';
    this.nonceRequired = o.mode !== 'off';
    this.source = o.source;
    const keys = o.internalIdentityPublicKeys ?? [];
    this.internalKeys = typeof keys === 'function' ? keys : () => keys;
    this.logger = o.logger;
    this.limiter = new FailureRateLimiter(o.rateLimit, addressKey);
    this.passwords = new PasswordChecks({
      addressLimit: o.rateLimit, userLimit: o.userRateLimit, cacheTtlMs: o.passwordCacheTtlMs, threads: o.passwordThreads,
    });
    if (o.mode !== 'off') this.passwords.prepare();
    const anonymousPerms = o.mode === 'off' ? allowAll : this.warnWrap('anonymous', denyAll);
    this.anonymous = this.make('anonymous', 'anonymous', false, anonymousPerms, { credential: 'anonymous', user: undefined, stored: undefined, permsKey: '' });
  }

  async authenticate(request: AuthRequest): Promise<AuthOutcome> {
    if (this.mode === 'off') return { ok: true, principal: this.anonymous };
    let result: Verified;
    try {
      // The version before the check: the change the client needs may apply while its password is checked.
      const version = this.source?.version;
      result = await this.verify(request);
      if (!result.ok && result.fromSource === true && this.source?.catchUp !== undefined) {
        // Ask again only if the source changed since: a guess costs no second password check.
        if ((await this.source.catchUp()) && this.source.version !== version && request.signal?.aborted !== true) result = await this.verify(request);
      }
    } catch (err) {
      // A stored credential this source let through but that cannot be used (e.g. a malformed hash from a
      // replicated source): refuse this client, keep serving others.
      this.logger.error({ err, remote: request.remoteAddress }, 'bus authentication failed on a stored credential');
      result = { ok: false, reason: `stored credential unusable: ${err instanceof Error ? err.message : String(err)}` };
    }
    const log = { remote: request.remoteAddress, client: request.clientName };
    if (result.ok) {
      this.logger.debug({ ...log, principal: result.principal.name, kind: result.principal.kind }, 'bus client authenticated');
      return result;
    }
    if (this.mode === 'enforce') {
      this.logger.warn({ ...log, reason: result.reason }, 'bus client refused: Authorization Violation');
      return result;
    }
    this.logger.warn({ ...log, reason: result.reason, principal: 'anonymous' }, 'bus-auth warn: would refuse this client (Authorization Violation); accepted as anonymous');
    return { ok: true, principal: this.anonymous };
  }

  revalidate(principal: Principal): Principal | null {
    const ctx = this.contexts.get(principal);
    if (this.mode === 'off' || ctx === undefined || ctx.credential === 'anonymous') return principal;
    if (ctx.credential === 'internal') {
      if (this.internalKeys().includes(principal.name)) return principal;
      return this.invalidated(principal, 'internal identity no longer registered');
    }
    const user = this.source!.userByName(ctx.user!);
    if (user === undefined) return this.invalidated(principal, 'user removed');
    if (user.disabled) return this.invalidated(principal, 'user disabled');
    if (storedFor(user, ctx.credential) !== ctx.stored) return this.invalidated(principal, 'credentials changed');
    const perms = this.permsFor(user);
    if (perms.key === ctx.permsKey) return principal;
    this.logger.info({ principal: principal.name }, 'bus principal permissions changed');
    return this.userPrincipal(user, ctx.credential, ctx.stored!, perms);
  }

  onChange(listener: () => void): () => void {
    if (this.source === undefined) return () => {};
    return this.source.onChange(() => listener());
  }

  // ---- verification -------------------------------------------------------------------------------------

  private async verify(request: AuthRequest): Promise<Verified> {
    const c = request.credentials;
    if (c.nkey !== undefined) return this.verifyNkey(c.nkey, c.sig, request.nonce);
    if (c.auth_token !== undefined) return this.verifyToken(c.auth_token, request.remoteAddress);
    if (c.user !== undefined) return this.verifyPassword(c.user, c.pass, request.remoteAddress, request.signal);
    if (c.jwt !== undefined) return { ok: false, reason: 'JWT authentication is not supported' };
    return { ok: false, reason: 'no credentials' };
  }

  private verifyNkey(nkey: unknown, sig: unknown, nonce: string | undefined): Verified {
    if (typeof nkey !== 'string' || !isValidPublicKey(nkey, ['user', 'server'])) return { ok: false, reason: 'malformed nkey (not a user or server public key)' };
    if (nonce === undefined) return { ok: false, reason: 'nkey offered but no nonce was issued' };
    if (typeof sig !== 'string') return { ok: false, reason: `nkey ${nkey} without sig` };
    if (!verifyNonceSignature(nkey, nonce, sig)) return { ok: false, reason: `nkey ${nkey}: signature does not verify against this connection's nonce` };
    if (nkey.charCodeAt(0) === 78 /* N */) {
      if (!this.internalKeys().includes(nkey)) return { ok: false, reason: `server nkey ${nkey} is not a registered internal identity` };
      const p = this.make(nkey, 'internal', true, allowAll, { credential: 'internal', user: nkey, stored: nkey, permsKey: '' });
      return { ok: true, principal: p };
    }
    const user = this.source!.userByNkey(nkey);
    if (user === undefined) return { ok: false, reason: `unknown nkey ${nkey}`, fromSource: true };
    if (user.disabled) return { ok: false, reason: `user ${user.name} is disabled`, fromSource: true };
    return { ok: true, principal: this.userPrincipal(user, 'nkey', nkey, this.permsFor(user)) };
  }

  private verifyToken(token: unknown, address: string): Verified {
    if (!this.limiter.allows(address)) return { ok: false, reason: 'too many failed attempts from this address (rate limited)' };
    const hash = typeof token === 'string' ? tokenHashOf(token) : '';
    const user = hash === '' ? undefined : this.source!.userByTokenHash(hash);
    if (user === undefined || user.token === undefined || !tokenHashesEqual(user.token, hash)) {
      this.limiter.recordFailure(address);
      return { ok: false, reason: 'unknown token', fromSource: true };
    }
    if (user.disabled) return { ok: false, reason: `user ${user.name} is disabled`, fromSource: true };
    const stored = user.token;
    return { ok: true, principal: this.userPrincipal(user, 'token', stored, this.permsFor(user)) };
  }

  private async verifyPassword(name: unknown, pass: unknown, address: string, signal: AbortSignal | undefined): Promise<Verified> {
    const password = typeof pass === 'string' ? pass : '';
    const userName = typeof name === 'string' ? name : '';
    const user = this.source!.userByName(userName);
    const outcome: CheckOutcome = await this.passwords.check({ address, user: userName, stored: user?.password, password, signal });
    if (outcome !== 'match') return { ok: false, reason: refusalReason(outcome, name), ...(outcome === 'mismatch' ? { fromSource: true as const } : {}) };
    // Re-read: the user may have changed while scrypt ran; the stored hash must still be the one we checked.
    const current = this.source!.userByName(user!.name);
    const stored = current?.password;
    if (current === undefined || stored === undefined || stored !== user!.password) return { ok: false, reason: `user ${user!.name} changed during authentication` };
    if (current.disabled) return { ok: false, reason: `user ${current.name} is disabled`, fromSource: true };
    return { ok: true, principal: this.userPrincipal(current, 'password', stored, this.permsFor(current)) };
  }

  // ---- principals and permissions -----------------------------------------------------------------------

  private userPrincipal(user: UserRecord, credential: Credential, stored: string, perms: UserPerms): Principal {
    const name = user.name;
    const permissions = perms.admin ? allowAll : this.warnWrap(name, perms.permissions);
    return this.make(name, kindOf[credential], perms.admin, permissions, { credential, user: name, stored, permsKey: perms.key });
  }

  private make(name: string, kind: PrincipalKind, admin: boolean, permissions: Permissions, ctx: Context): Principal {
    const proven = (ctx.credential === 'nkey' || ctx.credential === 'internal') && ctx.stored !== undefined ? { nkey: ctx.stored } : {};
    const p: Principal = Object.freeze({ name, kind, admin, permissions, ...proven });
    this.contexts.set(p, ctx);
    return p;
  }

  /** The union of the user's roles, compiled once per distinct set of role definitions. */
  private permsFor(user: UserRecord): UserPerms {
    const cached = this.userPerms.get(user.name);
    const roleNames = [...user.roles].sort();
    const records = roleNames.map((r) => (r === builtinAdminRole ? undefined : this.source!.role(r)));
    const key = JSON.stringify([roleNames, records]);
    // The key holds the user's role names and the full role records, so it alone decides the permissions:
    // a change elsewhere in the source keeps this user's compiled permissions (and their memo).
    if (cached !== undefined && cached.key === key) return cached;
    let admin = false;
    const compiled: CompiledRole[] = [];
    roleNames.forEach((name, i) => {
      const record = records[i];
      if (name === builtinAdminRole || record?.admin === true) admin = true;
      else if (record === undefined) this.logger.warn({ user: user.name, role: name }, 'user refers to an unknown role; it grants nothing');
      else compiled.push(this.compiledRole(record));
    });
    // Every user owns its private reply inbox (permissions.ts userInboxPrefix), with or without roles: that is what
    // lets roles stop granting the shared `_INBOX.>`, through which every reply on the node would pass.
    compiled.push(userInboxRole(user.name));
    const perms: UserPerms = { key, admin, permissions: unionPermissions(compiled) };
    this.userPerms.set(user.name, perms);
    return perms;
  }

  private compiledRole(record: RoleRecord): CompiledRole {
    const json = JSON.stringify(record.permissions);
    const cached = this.compiledRoles.get(record.name);
    if (cached !== undefined && cached.json === json) return cached.role;
    const role = new CompiledRole(record.permissions, `roles.${record.name}`);
    this.compiledRoles.set(record.name, { json, role });
    return role;
  }

  /** In warn mode: allow everything, and log what enforce would have refused. */
  private warnWrap(principal: string, inner: Permissions): Permissions {
    if (this.mode !== 'warn') return inner;
    const logger = this.logger;
    return {
      canPublish(subject) {
        if (!inner.canPublish(subject)) logger.warn({ principal, subject }, `bus-auth warn: would refuse: Permissions Violation for Publish to "${subject}"`);
        return true;
      },
      canSubscribe(subject, queue) {
        if (!inner.canSubscribe(subject, queue)) {
          logger.warn({ principal, subject, queue }, `bus-auth warn: would refuse: Permissions Violation for Subscription to "${subject}"${queue !== undefined ? ` using queue "${queue}"` : ''}`);
        }
        return true;
      },
      responses: inner.responses,
    };
  }

  private invalidated(principal: Principal, reason: string): Principal | null {
    if (this.mode === 'enforce') {
      this.logger.info({ principal: principal.name, reason }, 'bus principal no longer valid; its connections are closed');
      return null;
    }
    this.logger.warn({ principal: principal.name, reason }, 'bus-auth warn: would disconnect this principal; it continues as anonymous');
    return this.anonymous;
  }
}

function refusalReason(outcome: Exclude<CheckOutcome, 'match'>, name: unknown): string {
  const user = JSON.stringify(String(name)).slice(0, 140);
  switch (outcome) {
    case 'mismatch': return `bad user name or password (user ${user})`;
    case 'address-limited': return 'too many failed attempts from this address (rate limited)';
    case 'user-limited': return `too many failed attempts for user ${user} (rate limited)`;
    case 'busy': return 'too many password checks waiting on this node (busy)';
    case 'cancelled': return 'connection closed before its password was checked';
  }
}

function storedFor(user: UserRecord, credential: Credential): string | undefined {
  if (credential === 'password') return user.password;
  if (credential === 'token') return user.token;
  if (credential === 'nkey') return user.nkey;
  return undefined;
}
