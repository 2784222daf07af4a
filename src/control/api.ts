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
//
// This file is the request path (envelope, admin check, dispatch, errors), the nonce claims and the audit trail;
// the verbs on the users and roles buckets are in user_verbs.ts and role_verbs.ts, request types in admin_request.ts.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { KvCommand, KvEntry, KvGuard, KvResult, KvWriteCommand, NonceClaim } from '../../store/index.js';
import { KvErrorCode } from '../../store/index.js';
import type { LocalPublish, NatsClusterPort } from '../nats/index.js';
import { builtinAdminRole, type PrincipalSource, type ScryptFunction, type ScryptParams } from '../auth/index.js';
import { ScryptPool } from '../auth/scrypt_pool.js';
import type { KvBackend } from '../kv/backend.js';
import { MembershipdError } from '../errors.js';
import {
  AdminError, AdminErrorCode, type AdminContext, type AdminHandler, type AdminReply, type AdminResult, type VerbContext,
} from './admin_request.js';
import {
  auditKey, controlBuckets, decodeValue, encodeValue, schemaVersion, validateAudit, validateNode, validateRole, validateUser,
  type AuditValue, type RoleValue, type UserValue,
} from './buckets.js';
import { EnvelopeVerifier, replayMessage } from './envelope.js';
import { registerRoleVerbs } from './role_verbs.js';
import { registerUserVerbs } from './user_verbs.js';

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
    const verbs: VerbContext = {
      backend: this.backend,
      now: this.now,
      register: (area, verb, handler) => this.register(area, verb, handler),
      audited: (ctx, what, target, fn, detail) => this.audited(ctx, what, target, fn, detail),
      proposeAudited: (ctx, what, target, result, detail, write, guards) => this.proposeAudited(ctx, what, target, result, detail, write, guards),
      recorded: (reply) => this.recorded(reply),
      keysOf: (bucket) => this.keysOf(bucket),
      user: (name) => this.user(name),
      role: (name) => this.role(name),
    };
    registerUserVerbs(verbs, { scrypt: options.scrypt, scryptFn: this.scryptFn });
    registerRoleVerbs(verbs);
    this.registerAudit();
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

  private registerAudit(): void {
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
