// The admin API: NATS request/reply on `$UB.API.<AREA>.<VERB>`, answered in-process through the NATS server's
// cluster seam (the forwarder sees every locally published message; deliverFromRoute() delivers the reply to
// the requester's inbox). Admin principals only: every request is a signed envelope (envelope.ts) whose key must
// be an internal identity (this node's, or a registered node's) or an NKey user holding an admin role.
//
// Writes go through KvBackend.propose(), so on the Raft backend they commit through the leader (followers forward)
// and every node applies them. `user add` is create-if-absent: the same spec again is `unchanged`, a different
// existing spec is a conflict pointing to `user update`; updates and removes are compare-and-set on the revision
// read, so two concurrent admins never overwrite each other silently. Every request that passed the admin check
// and names a target is recorded in the audit bucket with its result.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { KvCommand, KvEntry, KvGuard, KvResult, KvWriteCommand, NonceClaim } from '../../store/index.js';
import { KvErrorCode } from '../../store/index.js';
import type { LocalPublish, NatsClusterPort } from '../nats/index.js';
import { builtinAdminRole, hashPassword, isPasswordHash, isValidPublicKey, verifyPassword, type PrincipalSource, type ScryptFunction, type ScryptParams } from '../auth/index.js';
import { ScryptPool } from '../auth/scrypt_pool.js';
import type { KvBackend } from '../kv/backend.js';
import { MembershipdError } from '../errors.js';
import {
  auditKey, controlBuckets, credentialKind, decodeValue, encodeValue, nameProblem, roleListProblem, rolePermissionProblem, schemaVersion, serviceGrantProblem,
  validateAudit, validateNode, validateRole, validateUser, type AuditValue, type RoleRules, type RoleValue, type UserValue,
} from './buckets.js';
import { EnvelopeVerifier, replayMessage } from './envelope.js';

/** A user's credential as an admin request gives it. */
interface Credential {
  readonly password?: string;
  readonly passwordHash?: string;
  readonly nkey?: string;
}

export const apiPrefix = '$UB.API.';

/**
 * Is `reply` under the shared `_INBOX.` prefix (nats.js' default inbox)? Many roles grant `_INBOX.>` so that their
 * users can make requests, and each of them can then read every reply sent there on the node. Replies that carry
 * user lists, audit records or KV values of other principals are never sent there.
 */
export function isSharedInbox(reply: string): boolean {
  return reply.startsWith('_INBOX.');
}

const sharedInboxMessage = 'admin requests must carry a private reply inbox, not the shared _INBOX. prefix that any role granting '
  + 'subscribe _INBOX.> can read: use the membershipd CLI (a random per-connection prefix) or connect with inboxPrefix set';

export const AdminErrorCode = {
  badRequest: 'bad_request',
  forbidden: 'forbidden',
  notFound: 'not_found',
  conflict: 'conflict',
  inUse: 'in_use',
  unavailable: 'unavailable',
  internal: 'internal',
} as const;
export type AdminErrorCode = (typeof AdminErrorCode)[keyof typeof AdminErrorCode];

/** A refusal a handler throws; becomes `{ error: { code, message } }`. */
export class AdminError extends MembershipdError {
  constructor(code: AdminErrorCode, message: string) {
    super(code, message);
  }
}

export type AdminResult = 'created' | 'unchanged' | 'updated' | 'removed';
export type AdminReply = ({ readonly result?: AdminResult } & Record<string, unknown>) | { readonly error: { readonly code: string; readonly message: string } };

export interface AdminContext {
  /** Principal for audit: `internal:N…` or the admin user's name. */
  readonly who: string;
  readonly subject: string;
  /**
   * The request's nonce claim (envelope.ts). It goes into the first replicated command the request makes (the
   * change itself, or its audit record), or into a claim of its own before the handler runs; `consumed` once
   * the state machine has recorded it. A replay of the request is refused by that command on every node.
   */
  readonly replay?: { readonly claim: NonceClaim; consumed: boolean };
}

/** A handler gets the parsed JSON body; it returns the reply or throws AdminError. */
export type AdminHandler = (body: Record<string, unknown>, ctx: AdminContext) => Promise<Record<string, unknown>>;

export interface ControlApiOptions {
  readonly backend: KvBackend;
  readonly logger: Logger;
  /** Internal identity public keys ('N…') of this node; the `nodes` bucket's identities are added to them. */
  readonly internalKeys: readonly string[] | (() => readonly string[]);
  /** Resolves NKey users ('U…') for admin requests signed from a creds file; their roles must grant admin. */
  readonly source?: PrincipalSource;
  /** scrypt cost for new password hashes (tests lower it). */
  readonly scrypt?: ScryptParams;
  readonly now?: () => number;
}

const enc = new TextEncoder();

function str(body: Record<string, unknown>, field: string, required: true): string;
function str(body: Record<string, unknown>, field: string, required: false): string | undefined;
function str(body: Record<string, unknown>, field: string, required: boolean): string | undefined {
  const v = body[field];
  if (v === undefined) {
    if (required) throw new AdminError('bad_request', `"${field}" is required`);
    return undefined;
  }
  if (typeof v !== 'string') throw new AdminError('bad_request', `"${field}" must be a string`);
  return v;
}

function strList(body: Record<string, unknown>, field: string): string[] | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((s): s is string => typeof s === 'string')) throw new AdminError('bad_request', `"${field}" must be a list of strings`);
  return v;
}

function bool(body: Record<string, unknown>, field: string): boolean | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new AdminError('bad_request', `"${field}" must be true or false`);
  return v;
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const x = [...new Set(a)].sort();
  const y = [...new Set(b)].sort();
  return x.length === y.length && x.every((s, i) => s === y[i]);
}

/** The user as shown to admins: never a hash. */
export function publicUser(u: UserValue): Record<string, unknown> {
  return {
    name: u.name, credential: credentialKind(u), ...(u.nkey !== undefined ? { nkey: u.nkey } : {}),
    roles: u.roles, disabled: u.disabled, created: new Date(u.created).toISOString(), updated: new Date(u.updated).toISOString(), by: u.by,
  };
}

export function publicRole(r: RoleValue): Record<string, unknown> {
  return {
    name: r.name, publish: r.publish, subscribe: r.subscribe, allow_responses: r.allow_responses, admin: r.admin,
    ...(r.services !== undefined ? { services: r.services } : {}), ...(r.services_read === true ? { services_read: true } : {}),
    created: new Date(r.created).toISOString(), updated: new Date(r.updated).toISOString(), by: r.by,
  };
}

const builtinAdminView = {
  name: builtinAdminRole, publish: { allow: ['>'], deny: [] }, subscribe: { allow: ['>'], deny: [] }, allow_responses: true, admin: true, builtin: true,
};

export class ControlApi {
  /** Replies whose audit record went out in the same txn as the change. */
  private readonly auditedReplies = new WeakSet<object>();
  private readonly handlers = new Map<string, AdminHandler>();
  private readonly verifier: EnvelopeVerifier;
  /**
   * Handlers whose every path after validation ends in a replicated command through audited() (the change with
   * its audit record, or the audit record of a refusal): their request's nonce rides in that command, so a write
   * costs no extra commit. Every other handler claims the nonce with a command of its own first.
   */
  private readonly claimsInChange = new Set(['USER.ADD', 'USER.UPDATE', 'USER.REMOVE', 'ROLE.ADD', 'ROLE.UPDATE', 'ROLE.REMOVE'].map((s) => `${apiPrefix}${s}`));
  /**
   * Reads are not claimed through the log: `cluster status` and `--stale` reads must answer on a node cut off from
   * the quorum, which is when an operator needs them. A read is still refused twice on the node that saw it
   * (EnvelopeVerifier), and its answer goes to the reply subject of whoever sent it, which must be a private inbox
   * (isSharedInbox); a replay on another node changes nothing (SECURITY.md).
   */
  private readonly reads = new Set(['USER.LIST', 'USER.SHOW', 'USER.SALT', 'ROLE.LIST', 'ROLE.SHOW', 'AUDIT.LIST', 'CLUSTER.STATUS'].map((s) => `${apiPrefix}${s}`));
  private readonly backend: KvBackend;
  private readonly logger: Logger;
  private readonly now: () => number;
  /**
   * A cleartext `password` in USER.ADD/UPDATE costs a scrypt (~0.1 s of CPU): on one worker thread at lowered
   * priority (scrypt_pool.ts), not in libuv's pool, where this node's WAL writes and fsyncs wait behind it. A
   * script adding users one request after another would otherwise slow every replicated write. The CLI sends
   * a hash instead (USER.SALT), so the worker starts only for API callers that send a password, and exits idle.
   */
  private readonly scryptPool = new ScryptPool(1);
  private readonly scryptFn: ScryptFunction = (password, salt, params, keylen) => this.scryptPool.hash(password, salt, params, keylen);
  private readonly localKeys: () => readonly string[];
  private closed = false;
  requests = 0;
  errors = 0;

  constructor(private readonly options: ControlApiOptions) {
    this.backend = options.backend;
    this.logger = options.logger;
    this.now = options.now ?? Date.now;
    this.verifier = new EnvelopeVerifier(this.now);
    const k = options.internalKeys;
    this.localKeys = typeof k === 'function' ? k : () => k;
    this.registerUsers();
    this.registerRoles();
  }

  /**
   * Adds a handler for `$UB.API.<area>.<verb>` (upper case, e.g. register('CLUSTER', 'STATUS', h)). The admin
   * check, JSON parsing and error replies are done before/after it. Throws if the subject is taken.
   */
  register(area: string, verb: string, handler: AdminHandler): () => void {
    if (!/^[A-Z][A-Z0-9_-]*$/.test(area) || !/^[A-Z][A-Z0-9_-]*$/.test(verb)) throw new RangeError(`admin API area/verb must be upper-case tokens, got ${area}.${verb}`);
    const subject = `${apiPrefix}${area}.${verb}`;
    if (this.handlers.has(subject)) throw new RangeError(`${subject} already has a handler`);
    this.handlers.set(subject, handler);
    return () => this.handlers.delete(subject);
  }

  subjects(): string[] {
    return [...this.handlers.keys()].sort();
  }

  /** The forwarder hook: true when the message is an admin API request (answered asynchronously). */
  handlePublish(msg: LocalPublish, reply: (subject: string, payload: Uint8Array) => void): boolean {
    if (this.closed || !msg.subject.startsWith(apiPrefix)) return false;
    if (msg.reply === undefined) return true; // a request without a reply inbox cannot be answered; never act on it
    const replyTo = msg.reply;
    if (isSharedInbox(replyTo)) {
      // Admin replies list users, roles and the audit trail: a reply under the shared `_INBOX.` reaches whoever a
      // role lets subscribe `_INBOX.>`. The request is refused before it is acted on, and the refusal says nothing.
      this.requests++;
      this.errors++;
      this.logger.warn({ subject: msg.subject, reply: replyTo }, 'admin request refused: reply to the shared _INBOX. prefix');
      reply(replyTo, enc.encode(JSON.stringify({ error: { code: AdminErrorCode.badRequest, message: sharedInboxMessage } })));
      return true;
    }
    const payload = msg.payload.slice();
    void this.request(msg.subject, payload, msg.principal?.nkey).then((r) => {
      if (!this.closed) reply(replyTo, enc.encode(JSON.stringify(r)));
    });
    return true;
  }

  /**
   * One request end to end (envelope check, dispatch, error mapping); never rejects. `connectionKey`: the NKey
   * the requester's connection proved at CONNECT (EnvelopeVerifier.verify).
   */
  async request(subject: string, payload: Uint8Array, connectionKey?: string): Promise<AdminReply> {
    this.requests++;
    const handler = this.handlers.get(subject);
    if (handler === undefined) {
      this.errors++;
      return { error: { code: 'not_found', message: `no admin API ${subject} (known: ${this.subjects().join(', ')})` } };
    }
    const v = this.verifier.verify(subject, payload, connectionKey);
    if (!v.ok) {
      this.errors++;
      this.logger.warn({ subject, code: v.code }, `admin request refused: ${v.message}`);
      return { error: { code: v.code, message: v.message } };
    }
    const who = this.adminName(v.key, v.role);
    if (who === undefined) {
      this.errors++;
      this.logger.warn({ subject, key: v.key }, 'admin request refused: not an admin principal');
      return { error: { code: 'forbidden', message: `key ${v.key} is not an admin principal (the node's internal identity, a registered node's, or an NKey user with an admin role)` } };
    }
    const body = v.body;
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      this.errors++;
      return { error: { code: 'bad_request', message: 'the request body must be a JSON object' } };
    }
    const ctx: AdminContext = { who, subject, replay: { claim: v.claim, consumed: false } };
    try {
      // The users/roles writes carry the nonce in their change; any other change (cluster.*, handlers registered
      // from outside) claims it with a command of its own first; reads do not (see `reads`).
      if (!this.claimsInChange.has(subject) && !this.reads.has(subject)) await this.claimNonce(ctx);
      return await handler(body as Record<string, unknown>, ctx);
    } catch (err) {
      this.errors++;
      if (err instanceof AdminError) return { error: { code: err.code, message: err.message } };
      this.logger.error({ err, subject }, 'admin request failed');
      const retry = err instanceof MembershipdError ? ` (${err.code})` : '';
      return { error: { code: 'unavailable', message: `the change could not be committed${retry}: ${err instanceof Error ? err.message : String(err)}; nothing was changed unless a retry says unchanged — retry` } };
    }
  }

  close(): void {
    this.closed = true;
    void this.scryptPool.close(); // terminates idle workers; nothing to wait for at detach
  }

  // ---- principals ----

  private adminName(key: string, role: 'server' | 'user'): string | undefined {
    if (role === 'server') {
      if (this.localKeys().includes(key)) return `internal:${key}`;
      for (const name of this.keysOf(controlBuckets.nodes)) {
        const e = this.backend.reader.get(controlBuckets.nodes, name);
        const n = e && e.op === 'PUT' ? decodeValue(e.value, validateNode) : undefined;
        if (n?.identity === key) return `internal:${key}`;
      }
      return undefined;
    }
    const u = this.options.source?.userByNkey(key);
    if (u === undefined || u.disabled) return undefined;
    const admin = u.roles.some((r) => r === builtinAdminRole || this.options.source?.role(r)?.admin === true);
    return admin ? u.name : undefined;
  }

  // ---- KV helpers ----

  /** Names whose latest entry is a PUT, sorted (the reader has no keys(); the change feed lists them). */
  private keysOf(bucket: string): string[] {
    const names = new Set<string>();
    for (const e of this.backend.reader.changesSince(0, bucket)) names.add(e.key);
    return [...names].filter((k) => this.backend.reader.get(bucket, k)?.op === 'PUT').sort();
  }

  private live(bucket: string, key: string): KvEntry | undefined {
    const e = this.backend.reader.get(bucket, key);
    return e !== undefined && e.op === 'PUT' ? e : undefined;
  }

  /** Records the request's nonce as a command of its own; throws AdminError 'forbidden' on a replay. */
  private async claimNonce(ctx: AdminContext): Promise<void> {
    const replay = ctx.replay;
    if (replay === undefined || replay.consumed) return;
    const r = await this.backend.propose({ op: 'nonce', ts: this.now(), claim: replay.claim });
    this.checkClaimResult(ctx, r);
    if (!r.ok) throw new AdminError('unavailable', `the request could not be recorded: ${r.message} — retry`);
  }

  /** After a command that carried the claim: marks it consumed, or throws the replay refusal. */
  private checkClaimResult(ctx: AdminContext, r: KvResult): void {
    const replay = ctx.replay;
    if (replay === undefined || replay.consumed) return;
    if (r.ok) replay.consumed = true;
    else if (r.code === KvErrorCode.nonceSeen || r.code === KvErrorCode.nonceExpired) {
      replay.consumed = true; // nothing more to claim: the refusal itself is audited without it
      throw new AdminError('forbidden', r.code === KvErrorCode.nonceSeen ? replayMessage : `the request is too old to be checked for replay (${r.message}); send a new request`);
    }
  }

  /** The claim to put into the next command, if the request has not recorded it yet. */
  private pendingClaim(ctx: AdminContext): { claim?: NonceClaim } {
    return ctx.replay !== undefined && !ctx.replay.consumed ? { claim: ctx.replay.claim } : {};
  }

  private async propose(cmd: KvCommand): Promise<KvResult> {
    for (const bucket of cmd.op === 'txn' ? cmd.ops.map((o) => o.bucket) : cmd.op === 'nonce' ? [] : [cmd.bucket]) {
      if (this.backend.reader.bucketInfo(bucket) === undefined) {
        throw new AdminError('unavailable', `control bucket ${bucket} does not exist yet (the cluster has not created its buckets; is there a leader?) — retry`);
      }
    }
    return this.backend.propose(cmd);
  }

  private auditRecord(ctx: AdminContext, what: string, target: string, result: string, detail?: Record<string, unknown>): KvWriteCommand {
    const ts = this.now();
    const value: AuditValue = { v: schemaVersion, ts, who: ctx.who, what, target, result, ...(detail !== undefined ? { detail } : {}) };
    validateAudit(value);
    return { op: 'put', bucket: controlBuckets.audit, key: auditKey(ts, randomBytes(6).toString('hex')), value: encodeValue(value), ts };
  }

  /**
   * A change and its audit record as one replicated entry whose guards are checked when it applies,
   * in log order on every node: one commit instead of a ReadIndex round, the write and a second
   * write for the audit record, and nothing a concurrent writer can slip between check and write.
   */
  private async proposeAudited(ctx: AdminContext, what: string, target: string, result: AdminResult, detail: Record<string, unknown> | undefined,
    write: KvWriteCommand, guards: readonly KvGuard[]): Promise<KvResult> {
    const r = await this.propose({ op: 'txn', ts: write.ts, guards, ops: [write, this.auditRecord(ctx, what, target, result, detail)], ...this.pendingClaim(ctx) });
    this.checkClaimResult(ctx, r);
    return r;
  }

  /** Marks a handler's reply whose audit record was written with the change (audited() skips it). */
  private recorded<T extends object>(reply: T): T {
    this.auditedReplies.add(reply);
    return reply;
  }

  /** Writes the audit record (with the request's claim when still pending); a replay refusal is thrown. */
  private async audit(ctx: AdminContext, what: string, target: string, result: string, detail?: Record<string, unknown>): Promise<void> {
    let r: KvResult;
    try {
      const record = this.auditRecord(ctx, what, target, result, detail);
      const claim = this.pendingClaim(ctx);
      r = await this.propose(claim.claim === undefined ? record : { op: 'txn', ts: record.ts, guards: [], ops: [record], ...claim });
    } catch (err) {
      this.logger.error({ err, what, target }, 'audit record not written');
      return;
    }
    this.checkClaimResult(ctx, r);
    if (!r.ok) this.logger.error({ what, target, code: r.code }, `audit record not written: ${r.message}`);
  }

  /** Runs `fn` and records its outcome in the audit bucket (also for handlers registered from outside). */
  async audited(ctx: AdminContext, what: string, target: string, fn: () => Promise<Record<string, unknown> & { result: AdminResult }>,
    detail?: Record<string, unknown>): Promise<Record<string, unknown>> {
    try {
      const r = await fn();
      if (!this.auditedReplies.has(r)) await this.audit(ctx, what, target, r.result, detail);
      this.logger.info({ what, target, who: ctx.who, result: r.result }, 'admin change');
      return r;
    } catch (err) {
      if (err instanceof AdminError) {
        try {
          await this.audit(ctx, what, target, `error:${err.code}`, detail);
        } catch (replay) {
          // The failed request was itself a replay (its claim was refused with the audit record): that refusal
          // is the answer, audited in turn without the claim.
          if (replay instanceof AdminError) await this.audit(ctx, what, target, `error:${replay.code}`, detail);
          throw replay;
        }
      }
      throw err;
    }
  }

  private user(name: string): { value: UserValue; revision: number } | undefined {
    const e = this.live(controlBuckets.users, name);
    if (e === undefined) return undefined;
    const value = decodeValue(e.value, validateUser, (why) => this.logger.error({ user: name, why }, 'users bucket value fails its schema'));
    if (value === undefined) throw new AdminError('internal', `the stored record of user ${name} is unreadable; remove it with "membershipd user remove ${name}"`);
    return { value, revision: e.revision };
  }

  private role(name: string): { value: RoleValue; revision: number } | undefined {
    const e = this.live(controlBuckets.roles, name);
    if (e === undefined) return undefined;
    const value = decodeValue(e.value, validateRole, (why) => this.logger.error({ role: name, why }, 'roles bucket value fails its schema'));
    if (value === undefined) throw new AdminError('internal', `the stored record of role ${name} is unreadable; remove it with "membershipd role remove ${name}"`);
    return { value, revision: e.revision };
  }

  private checkRolesExist(roles: readonly string[]): void {
    const p = roleListProblem(roles);
    if (p !== undefined) throw new AdminError('bad_request', p);
    for (const r of roles) {
      if (r !== builtinAdminRole && this.role(r) === undefined) {
        throw new AdminError('not_found', `role ${r} does not exist; create it first with "membershipd role add ${r} …"`);
      }
    }
  }

  // ---- users ----

  private userName(body: Record<string, unknown>): string {
    const name = str(body, 'name', true);
    const p = nameProblem('user', name);
    if (p !== undefined) throw new AdminError('bad_request', p);
    return name;
  }

  /**
   * The credential of a user add/update: `password_hash` (a scrypt hash: what the membershipd CLI sends, so the
   * password itself never crosses the bus, where any `$UB.API.>` subscriber would read it), `password` (cleartext,
   * still accepted from other API clients) or `nkey`.
   */
  private credentialOf(body: Record<string, unknown>, required: boolean): Credential | undefined {
    const password = str(body, 'password', false);
    const passwordHash = str(body, 'password_hash', false);
    const nkey = str(body, 'nkey', false);
    if ([password, passwordHash, nkey].filter((x) => x !== undefined).length > 1) throw new AdminError('bad_request', 'give one credential: a password, a password hash or an nkey');
    if (password === undefined && passwordHash === undefined && nkey === undefined) {
      if (required) throw new AdminError('bad_request', 'a credential is required: --password-stdin, --password-file or --nkey');
      return undefined;
    }
    if (password !== undefined && (password.length === 0 || password.length > 1024)) throw new AdminError('bad_request', 'a password has 1..1024 characters');
    if (passwordHash !== undefined && !isPasswordHash(passwordHash)) {
      throw new AdminError('bad_request', 'password_hash is not a scrypt hash (scrypt$N$r$p$salt$hash) or a generated$ hash of a node-generated password');
    }
    if (nkey !== undefined && !isValidPublicKey(nkey, ['user'])) throw new AdminError('bad_request', `nkey ${JSON.stringify(nkey.slice(0, 60))} is not an NKey user public key (56 characters starting with U)`);
    return password !== undefined ? { password } : passwordHash !== undefined ? { passwordHash } : { nkey: nkey! };
  }

  /**
   * Does the stored user have exactly this credential? A cleartext password is verified against the stored hash;
   * a hash equals the stored one only when made with the stored salt (USER.SALT hands it to the CLI for that).
   */
  private async sameCredential(u: UserValue, c: Credential): Promise<boolean> {
    if (c.nkey !== undefined) return u.nkey === c.nkey;
    if (c.passwordHash !== undefined) return u.password === c.passwordHash;
    return u.password !== undefined && (await verifyPassword(c.password!, u.password, this.scryptFn));
  }

  /** The stored form of a new credential. */
  private async storedCredential(c: Credential): Promise<{ password: string } | { nkey: string }> {
    if (c.nkey !== undefined) return { nkey: c.nkey };
    return { password: c.passwordHash ?? (await hashPassword(c.password!, this.options.scrypt, this.scryptFn)) };
  }

  /** What must hold when a user record applies: its roles exist, its nkey is nobody else's. */
  private userGuards(u: UserValue, name: string): KvGuard[] {
    const guards: KvGuard[] = u.roles.filter((r) => r !== builtinAdminRole).map((r) => ({ bucket: controlBuckets.roles, key: r, present: true }));
    if (u.nkey !== undefined) guards.push({ bucket: controlBuckets.users, field: 'nkey', equals: u.nkey, except: name });
    return guards;
  }

  /** Maps a failed userGuards() guard to the operator's error. */
  private throwGuardFailure(r: KvResult, nkey: string | undefined): void {
    if (r.ok) return;
    if (r.code === KvErrorCode.keyNotFound) throw new AdminError('not_found', `role ${r.key} does not exist; create it first with "membershipd role add ${r.key} …"`);
    if (r.code === KvErrorCode.valueTaken) throw new AdminError('conflict', `nkey ${nkey} already belongs to user ${r.key}`);
  }

  private registerUsers(): void {
    this.register('USER', 'ADD', async (body, ctx) => {
      const name = this.userName(body);
      const roles = strList(body, 'roles') ?? [];
      const detail = { roles, credential: body.nkey !== undefined ? 'nkey' : 'password' };
      // (`password_hash` is recorded as 'password': the audit names the kind of credential, never its value.)
      return this.audited(ctx, 'user.add', name, async () => {
        const cred = this.credentialOf(body, true)!;
        const problem = roleListProblem(roles);
        if (problem !== undefined) throw new AdminError('bad_request', problem);
        const compare = async (existing: UserValue): Promise<{ result: 'unchanged'; user: Record<string, unknown> }> => {
          if (!existing.disabled && sameSet(existing.roles, roles) && (await this.sameCredential(existing, cred))) return { result: 'unchanged', user: publicUser(existing) };
          throw new AdminError('conflict', `user ${name} already exists with a different specification; add never overwrites: use "membershipd user update ${name} …" to change it`);
        };
        // No ReadIndex round before the write: the txn's guards decide at apply time (roles exist,
        // the name and the nkey are free). Only a name this node already knows is answered from a
        // linearizable read, since `unchanged` must compare against the current record.
        if (this.user(name) !== undefined) {
          await this.backend.readBarrier();
          const existing = this.user(name);
          if (existing !== undefined) return compare(existing.value);
        }
        const ts = this.now();
        const value: UserValue = {
          v: schemaVersion, name,
          ...(await this.storedCredential(cred)),
          roles: [...new Set(roles)], disabled: false, created: ts, updated: ts, by: ctx.who,
        };
        validateUser(value);
        const r = await this.proposeAudited(ctx, 'user.add', name, 'created', detail,
          { op: 'create', bucket: controlBuckets.users, key: name, value: encodeValue(value), ts }, this.userGuards(value, name));
        if (r.ok) return this.recorded({ result: 'created' as const, user: publicUser(value) });
        if (r.code === KvErrorCode.keyExists && r.key === name) {
          // The name was taken (by a concurrent add, or before this node heard of it); this node has
          // applied that entry by now, so its record is the one to compare with.
          const now = this.user(name);
          if (now !== undefined) return compare(now.value);
        }
        this.throwGuardFailure(r, cred.nkey);
        throw new AdminError('unavailable', `user ${name} was not written: ${r.message}`);
      }, detail);
    });

    // The salt and scrypt parameters of a user's stored password (not secret: a salt only makes each hash unique),
    // so that the CLI hashes a password the way the stored one was and `user add` of the same spec stays
    // `unchanged` without the password ever leaving the CLI. `{}` when the user has no password.
    this.register('USER', 'SALT', async (body) => {
      const name = this.userName(body);
      await this.backend.readBarrier();
      const cur = this.user(name);
      const stored = cur?.value.password;
      if (stored === undefined) return {};
      return { salt: stored.slice(0, stored.lastIndexOf('$')) };
    });

    this.register('USER', 'UPDATE', async (body, ctx) => {
      const name = this.userName(body);
      const roles = strList(body, 'roles');
      const disabled = bool(body, 'disabled');
      const detail = { ...(roles !== undefined ? { roles } : {}), ...(disabled !== undefined ? { disabled } : {}), ...(body.password !== undefined || body.password_hash !== undefined ? { credential: 'password' } : body.nkey !== undefined ? { credential: 'nkey' } : {}) };
      return this.audited(ctx, 'user.update', name, async () => {
        const cred = this.credentialOf(body, false);
        if (cred === undefined && roles === undefined && disabled === undefined) {
          throw new AdminError('bad_request', 'nothing to update: give a new credential, --role (replaces the roles), --no-roles, --disable or --enable');
        }
        await this.backend.readBarrier();
        if (roles !== undefined) this.checkRolesExist(roles);
        for (let attempt = 0; attempt < 5; attempt++) {
          const cur = this.user(name);
          if (cur === undefined) throw new AdminError('not_found', `user ${name} does not exist; create it with "membershipd user add ${name} …"`);
          const u = cur.value;
          const sameCred = cred === undefined || (await this.sameCredential(u, cred));
          const nextRoles = roles === undefined ? u.roles : [...new Set(roles)];
          const nextDisabled = disabled ?? u.disabled;
          if (sameCred && sameSet(nextRoles, u.roles) && nextDisabled === u.disabled) return { result: 'unchanged', user: publicUser(u) };
          const ts = this.now();
          const { password: _p, nkey: _n, token: _t, ...rest } = u;
          const credPart = sameCred
            ? (u.password !== undefined ? { password: u.password } : u.nkey !== undefined ? { nkey: u.nkey } : { token: u.token! })
            : await this.storedCredential(cred!);
          const value: UserValue = { ...rest, ...credPart, roles: nextRoles, disabled: nextDisabled, updated: ts, by: ctx.who };
          validateUser(value);
          const guards = this.userGuards(value, name);
          const r = await this.proposeAudited(ctx, 'user.update', name, 'updated', detail,
            { op: 'update', bucket: controlBuckets.users, key: name, value: encodeValue(value), revision: cur.revision, ts }, guards);
          if (r.ok) return this.recorded({ result: 'updated' as const, user: publicUser(value) });
          this.throwGuardFailure(r, cred?.nkey);
          if (r.code !== KvErrorCode.wrongRevision) throw new AdminError('unavailable', `user ${name} was not updated: ${r.message}`);
        }
        throw new AdminError('conflict', `user ${name} kept changing while it was being updated; retry`);
      }, detail);
    });

    this.register('USER', 'REMOVE', async (body, ctx) => {
      const name = this.userName(body);
      return this.audited(ctx, 'user.remove', name, async () => {
        await this.backend.readBarrier();
        for (let attempt = 0; attempt < 5; attempt++) {
          const cur = this.user(name);
          if (cur === undefined) throw new AdminError('not_found', `user ${name} does not exist`);
          const r = await this.proposeAudited(ctx, 'user.remove', name, 'removed', undefined, { op: 'delete', bucket: controlBuckets.users, key: name, revision: cur.revision, ts: this.now() }, []);
          if (r.ok) return this.recorded({ result: 'removed' as const, user: publicUser(cur.value) });
          if (r.code !== KvErrorCode.wrongRevision) throw new AdminError('unavailable', `user ${name} was not removed: ${r.message}`);
        }
        throw new AdminError('conflict', `user ${name} kept changing while it was being removed; retry`);
      });
    });

    this.register('USER', 'LIST', async (body) => {
      if (body.stale !== true) await this.backend.readBarrier();
      const users = this.keysOf(controlBuckets.users).map((n) => this.user(n)).filter((u) => u !== undefined).map((u) => publicUser(u.value));
      return { users };
    });

    this.register('USER', 'SHOW', async (body) => {
      const name = this.userName(body);
      if (body.stale !== true) await this.backend.readBarrier();
      const u = this.user(name);
      if (u === undefined) throw new AdminError('not_found', `user ${name} does not exist`);
      return { user: publicUser(u.value) };
    });
  }

  // ---- roles ----

  private roleName(body: Record<string, unknown>, forWrite: boolean): string {
    const name = str(body, 'name', true);
    const p = nameProblem('role', name);
    if (p !== undefined) throw new AdminError('bad_request', p);
    if (forWrite && name === builtinAdminRole) throw new AdminError('bad_request', `role "${builtinAdminRole}" is built in (it grants everything) and cannot be changed`);
    return name;
  }

  private rules(body: Record<string, unknown>, allowField: string, denyField: string, base?: RoleRules): RoleRules {
    const allow = strList(body, allowField);
    const deny = strList(body, denyField);
    return { allow: allow ?? base?.allow ?? [], deny: deny ?? base?.deny ?? [] };
  }

  private roleSpec(body: Record<string, unknown>, base?: RoleValue): Pick<RoleValue, 'publish' | 'subscribe' | 'allow_responses' | 'admin' | 'services' | 'services_read'> {
    const spec = {
      publish: this.rules(body, 'pub_allow', 'pub_deny', base?.publish),
      subscribe: this.rules(body, 'sub_allow', 'sub_deny', base?.subscribe),
      allow_responses: bool(body, 'allow_responses') ?? base?.allow_responses ?? false,
      admin: bool(body, 'admin') ?? base?.admin ?? false,
    };
    const p = rolePermissionProblem(spec);
    if (p !== undefined) throw new AdminError('bad_request', p);
    // Service presence grants (src/services); absent when unused, so roles without them keep their exact shape.
    const services = strList(body, 'services') ?? base?.services ?? [];
    const sp = serviceGrantProblem(services);
    if (sp !== undefined) throw new AdminError('bad_request', sp);
    const servicesRead = bool(body, 'services_read') ?? base?.services_read ?? false;
    return { ...spec, ...(services.length > 0 ? { services: [...new Set(services)] } : {}), ...(servicesRead ? { services_read: true } : {}) };
  }

  private static sameRole(a: Pick<RoleValue, 'publish' | 'subscribe' | 'allow_responses' | 'admin' | 'services' | 'services_read'>, b: typeof a): boolean {
    return sameSet(a.publish.allow, b.publish.allow) && sameSet(a.publish.deny, b.publish.deny) && sameSet(a.subscribe.allow, b.subscribe.allow)
      && sameSet(a.subscribe.deny, b.subscribe.deny) && a.allow_responses === b.allow_responses && a.admin === b.admin
      && sameSet(a.services ?? [], b.services ?? []) && (a.services_read ?? false) === (b.services_read ?? false);
  }

  private registerRoles(): void {
    this.register('ROLE', 'ADD', async (body, ctx) => {
      const name = this.roleName(body, true);
      return this.audited(ctx, 'role.add', name, async () => {
        const spec = this.roleSpec(body);
        await this.backend.readBarrier();
        const compare = (existing: RoleValue): { result: 'unchanged'; role: Record<string, unknown> } => {
          if (ControlApi.sameRole(existing, spec)) return { result: 'unchanged', role: publicRole(existing) };
          throw new AdminError('conflict', `role ${name} already exists with different permissions; add never overwrites: use "membershipd role update ${name} …" to change it`);
        };
        const existing = this.role(name);
        if (existing !== undefined) return compare(existing.value);
        const ts = this.now();
        const value: RoleValue = { v: schemaVersion, name, ...spec, created: ts, updated: ts, by: ctx.who };
        validateRole(value);
        const r = await this.proposeAudited(ctx, 'role.add', name, 'created', { ...body }, { op: 'create', bucket: controlBuckets.roles, key: name, value: encodeValue(value), ts }, []);
        if (r.ok) return this.recorded({ result: 'created' as const, role: publicRole(value) });
        if (r.code === KvErrorCode.keyExists) {
          const now = this.role(name);
          if (now !== undefined) return compare(now.value);
        }
        throw new AdminError('unavailable', `role ${name} was not written: ${r.message}`);
      }, { ...body });
    });

    this.register('ROLE', 'UPDATE', async (body, ctx) => {
      const name = this.roleName(body, true);
      return this.audited(ctx, 'role.update', name, async () => {
        await this.backend.readBarrier();
        for (let attempt = 0; attempt < 5; attempt++) {
          const cur = this.role(name);
          if (cur === undefined) throw new AdminError('not_found', `role ${name} does not exist; create it with "membershipd role add ${name} …"`);
          const spec = this.roleSpec(body, cur.value);
          if (ControlApi.sameRole(cur.value, spec)) return { result: 'unchanged', role: publicRole(cur.value) };
          const ts = this.now();
          const value: RoleValue = { ...cur.value, ...spec, updated: ts, by: ctx.who };
          validateRole(value);
          const r = await this.proposeAudited(ctx, 'role.update', name, 'updated', { ...body },
            { op: 'update', bucket: controlBuckets.roles, key: name, value: encodeValue(value), revision: cur.revision, ts }, []);
          if (r.ok) return this.recorded({ result: 'updated' as const, role: publicRole(value) });
          if (r.code !== KvErrorCode.wrongRevision) throw new AdminError('unavailable', `role ${name} was not updated: ${r.message}`);
        }
        throw new AdminError('conflict', `role ${name} kept changing while it was being updated; retry`);
      }, { ...body });
    });

    this.register('ROLE', 'REMOVE', async (body, ctx) => {
      const name = this.roleName(body, true);
      return this.audited(ctx, 'role.remove', name, async () => {
        await this.backend.readBarrier();
        const cur = this.role(name);
        if (cur === undefined) throw new AdminError('not_found', `role ${name} does not exist`);
        // Removing a role in use would silently strip permissions from its users; make it explicit.
        const users = this.keysOf(controlBuckets.users).filter((n) => this.user(n)?.value.roles.includes(name));
        if (users.length > 0) {
          throw new AdminError('in_use', `role ${name} is still given to ${users.length} user(s) (${users.slice(0, 10).join(', ')}); take it from them with "membershipd user update NAME --role …" first`);
        }
        const r = await this.proposeAudited(ctx, 'role.remove', name, 'removed', undefined, { op: 'delete', bucket: controlBuckets.roles, key: name, revision: cur.revision, ts: this.now() }, []);
        if (r.ok) return this.recorded({ result: 'removed' as const, role: publicRole(cur.value) });
        if (r.code === KvErrorCode.wrongRevision) throw new AdminError('conflict', `role ${name} changed while it was being removed; retry`);
        throw new AdminError('unavailable', `role ${name} was not removed: ${r.message}`);
      });
    });

    this.register('ROLE', 'LIST', async (body) => {
      if (body.stale !== true) await this.backend.readBarrier();
      const roles = this.keysOf(controlBuckets.roles).map((n) => this.role(n)).filter((r) => r !== undefined).map((r) => publicRole(r.value));
      return { roles: [builtinAdminView, ...roles] };
    });

    this.register('ROLE', 'SHOW', async (body) => {
      const name = this.roleName(body, false);
      if (name === builtinAdminRole) return { role: builtinAdminView };
      if (body.stale !== true) await this.backend.readBarrier();
      const r = this.role(name);
      if (r === undefined) throw new AdminError('not_found', `role ${name} does not exist`);
      return { role: publicRole(r.value) };
    });

    this.register('AUDIT', 'LIST', async (body) => {
      if (body.stale !== true) await this.backend.readBarrier();
      const limit = typeof body.limit === 'number' && Number.isSafeInteger(body.limit) && body.limit > 0 ? Math.min(body.limit, 10_000) : 100;
      const entries = this.backend.reader.changesSince(0, controlBuckets.audit).filter((e) => e.op === 'PUT');
      const records = entries.slice(-limit).map((e) => {
        const a = decodeValue(e.value, validateAudit);
        return a === undefined ? { seq: e.revision, unreadable: true } : { seq: e.revision, ...a, ts: new Date(a.ts).toISOString() };
      });
      return { audit: records };
    });
  }
}

/** The server side the API needs: the forwarder slot and local delivery of replies. */
export type ControlApiPort = Pick<NatsClusterPort, 'setForwarder' | 'deliverFromRoute'>;

/**
 * Attaches the admin API to a NATS server's cluster seam. `next` is the forwarder that was there before
 * (the cluster bus, the KV API): messages that are not admin requests go on to it; admin requests stop here
 * (they are answered by the node the requester is connected to; writes reach the leader through propose()).
 */
export function attachControlApi(
  server: { readonly cluster: ControlApiPort },
  options: ControlApiOptions & { readonly next?: (msg: LocalPublish) => boolean },
): ControlApi & { detach(): void } {
  const port = server.cluster;
  const api = new ControlApi(options);
  const reply = (subject: string, payload: Uint8Array): void => {
    port.deliverFromRoute({ subject, payload, flushNow: true });
  };
  const next = options.next;
  port.setForwarder((m) => api.handlePublish(m, reply) || (next !== undefined && next(m)));
  const detach = (): void => {
    port.setForwarder(next);
    api.close();
  };
  return Object.assign(api, { detach });
}
