// The USER verbs of the admin API (`$UB.API.USER.*`) on the `users` bucket: add (create-if-absent), update and remove
// (compare-and-set on the revision read, retried a bounded number of times), list, show and salt, with the
// credential rules (a password, its scrypt hash or an NKey). Registered by ControlApi through its VerbContext.
import type { KvGuard, KvResult } from '../../store/index.js';
import { KvErrorCode } from '../../store/index.js';
import { builtinAdminRole, hashPassword, isPasswordHash, isValidPublicKey, verifyPassword, type ScryptFunction, type ScryptParams } from '../auth/index.js';
import { AdminError, bool, sameSet, str, strList, type VerbContext } from './admin_request.js';
import { controlBuckets, credentialKind, encodeValue, nameProblem, roleListProblem, schemaVersion, validateUser, type UserValue } from './buckets.js';

/** A user's credential as an admin request gives it. */
interface Credential {
  readonly password?: string;
  readonly passwordHash?: string;
  readonly nkey?: string;
}

/** How new password hashes are made: the cost (tests lower it) and the scrypt that runs them off the WAL's thread pool. */
export interface PasswordHashing {
  readonly scrypt: ScryptParams | undefined;
  readonly scryptFn: ScryptFunction;
}

/** The user as shown to admins: never a hash. */
export function publicUser(u: UserValue): Record<string, unknown> {
  return {
    name: u.name, credential: credentialKind(u), ...(u.nkey !== undefined ? { nkey: u.nkey } : {}),
    roles: u.roles, disabled: u.disabled, created: new Date(u.created).toISOString(), updated: new Date(u.updated).toISOString(), by: u.by,
  };
}

function checkRolesExist(api: VerbContext, roles: readonly string[]): void {
  const p = roleListProblem(roles);
  if (p !== undefined) throw new AdminError('bad_request', p);
  for (const r of roles) {
    if (r !== builtinAdminRole && api.role(r) === undefined) {
      throw new AdminError('not_found', `role ${r} does not exist; create it first with "membershipd role add ${r} …"`);
    }
  }
}

function userName(body: Record<string, unknown>): string {
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
function credentialOf(body: Record<string, unknown>, required: boolean): Credential | undefined {
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
async function sameCredential(hashing: PasswordHashing, u: UserValue, c: Credential): Promise<boolean> {
  if (c.nkey !== undefined) return u.nkey === c.nkey;
  if (c.passwordHash !== undefined) return u.password === c.passwordHash;
  return u.password !== undefined && (await verifyPassword(c.password!, u.password, hashing.scryptFn));
}

/** The stored form of a new credential. */
async function storedCredential(hashing: PasswordHashing, c: Credential): Promise<{ password: string } | { nkey: string }> {
  if (c.nkey !== undefined) return { nkey: c.nkey };
  return { password: c.passwordHash ?? (await hashPassword(c.password!, hashing.scrypt, hashing.scryptFn)) };
}

/** What must hold when a user record applies: its roles exist, its nkey is nobody else's. */
function userGuards(u: UserValue, name: string): KvGuard[] {
  const guards: KvGuard[] = u.roles.filter((r) => r !== builtinAdminRole).map((r) => ({ bucket: controlBuckets.roles, key: r, present: true }));
  if (u.nkey !== undefined) guards.push({ bucket: controlBuckets.users, field: 'nkey', equals: u.nkey, except: name });
  return guards;
}

/** Maps a failed userGuards() guard to the operator's error. */
function throwGuardFailure(r: KvResult, nkey: string | undefined): void {
  if (r.ok) return;
  if (r.code === KvErrorCode.keyNotFound) throw new AdminError('not_found', `role ${r.key} does not exist; create it first with "membershipd role add ${r.key} …"`);
  if (r.code === KvErrorCode.valueTaken) throw new AdminError('conflict', `nkey ${nkey} already belongs to user ${r.key}`);
}

/** Registers USER.ADD, SALT, UPDATE, REMOVE, LIST and SHOW. */
export function registerUserVerbs(api: VerbContext, hashing: PasswordHashing): void {
  api.register('USER', 'ADD', async (body, ctx) => {
    const name = userName(body);
    const roles = strList(body, 'roles') ?? [];
    const detail = { roles, credential: body.nkey !== undefined ? 'nkey' : 'password' };
    // (`password_hash` is recorded as 'password': the audit names the kind of credential, never its value.)
    return api.audited(ctx, 'user.add', name, async () => {
      const cred = credentialOf(body, true)!;
      const problem = roleListProblem(roles);
      if (problem !== undefined) throw new AdminError('bad_request', problem);
      const compare = async (existing: UserValue): Promise<{ result: 'unchanged'; user: Record<string, unknown> }> => {
        if (!existing.disabled && sameSet(existing.roles, roles) && (await sameCredential(hashing, existing, cred))) return { result: 'unchanged', user: publicUser(existing) };
        throw new AdminError('conflict', `user ${name} already exists with a different specification; add never overwrites: use "membershipd user update ${name} …" to change it`);
      };
      // No ReadIndex round before the write: the txn's guards decide at apply time (roles exist,
      // the name and the nkey are free). Only a name this node already knows is answered from a
      // linearizable read, since `unchanged` must compare against the current record.
      if (api.user(name) !== undefined) {
        await api.backend.readBarrier();
        const existing = api.user(name);
        if (existing !== undefined) return compare(existing.value);
      }
      const ts = api.now();
      const value: UserValue = {
        v: schemaVersion, name,
        ...(await storedCredential(hashing, cred)),
        roles: [...new Set(roles)], disabled: false, created: ts, updated: ts, by: ctx.who,
      };
      validateUser(value);
      const r = await api.proposeAudited(ctx, 'user.add', name, 'created', detail,
        { op: 'create', bucket: controlBuckets.users, key: name, value: encodeValue(value), ts }, userGuards(value, name));
      if (r.ok) return api.recorded({ result: 'created' as const, user: publicUser(value) });
      if (r.code === KvErrorCode.keyExists && r.key === name) {
        // The name was taken (by a concurrent add, or before this node heard of it); this node has
        // applied that entry by now, so its record is the one to compare with.
        const now = api.user(name);
        if (now !== undefined) return compare(now.value);
      }
      throwGuardFailure(r, cred.nkey);
      throw new AdminError('unavailable', `user ${name} was not written: ${r.message}`);
    }, detail);
  });

  // The salt and scrypt parameters of a user's stored password (not secret: a salt only makes each hash unique),
  // so that the CLI hashes a password the way the stored one was and `user add` of the same spec stays
  // `unchanged` without the password ever leaving the CLI. `{}` when the user has no password.
  api.register('USER', 'SALT', async (body) => {
    const name = userName(body);
    await api.backend.readBarrier();
    const cur = api.user(name);
    const stored = cur?.value.password;
    if (stored === undefined) return {};
    return { salt: stored.slice(0, stored.lastIndexOf('$')) };
  });

  api.register('USER', 'UPDATE', async (body, ctx) => {
    const name = userName(body);
    const roles = strList(body, 'roles');
    const disabled = bool(body, 'disabled');
    const detail = { ...(roles !== undefined ? { roles } : {}), ...(disabled !== undefined ? { disabled } : {}), ...(body.password !== undefined || body.password_hash !== undefined ? { credential: 'password' } : body.nkey !== undefined ? { credential: 'nkey' } : {}) };
    return api.audited(ctx, 'user.update', name, async () => {
      const cred = credentialOf(body, false);
      if (cred === undefined && roles === undefined && disabled === undefined) {
        throw new AdminError('bad_request', 'nothing to update: give a new credential, --role (replaces the roles), --no-roles, --disable or --enable');
      }
      await api.backend.readBarrier();
      if (roles !== undefined) checkRolesExist(api, roles);
      for (let attempt = 0; attempt < 5; attempt++) {
        const cur = api.user(name);
        if (cur === undefined) throw new AdminError('not_found', `user ${name} does not exist; create it with "membershipd user add ${name} …"`);
        const u = cur.value;
        const sameCred = cred === undefined || (await sameCredential(hashing, u, cred));
        const nextRoles = roles === undefined ? u.roles : [...new Set(roles)];
        const nextDisabled = disabled ?? u.disabled;
        if (sameCred && sameSet(nextRoles, u.roles) && nextDisabled === u.disabled) return { result: 'unchanged', user: publicUser(u) };
        const ts = api.now();
        const { password: _p, nkey: _n, token: _t, ...rest } = u;
        const credPart = sameCred
          ? (u.password !== undefined ? { password: u.password } : u.nkey !== undefined ? { nkey: u.nkey } : { token: u.token! })
          : await storedCredential(hashing, cred!);
        const value: UserValue = { ...rest, ...credPart, roles: nextRoles, disabled: nextDisabled, updated: ts, by: ctx.who };
        validateUser(value);
        const guards = userGuards(value, name);
        const r = await api.proposeAudited(ctx, 'user.update', name, 'updated', detail,
          { op: 'update', bucket: controlBuckets.users, key: name, value: encodeValue(value), revision: cur.revision, ts }, guards);
        if (r.ok) return api.recorded({ result: 'updated' as const, user: publicUser(value) });
        throwGuardFailure(r, cred?.nkey);
        if (r.code !== KvErrorCode.wrongRevision) throw new AdminError('unavailable', `user ${name} was not updated: ${r.message}`);
      }
      throw new AdminError('conflict', `user ${name} kept changing while it was being updated; retry`);
    }, detail);
  });

  api.register('USER', 'REMOVE', async (body, ctx) => {
    const name = userName(body);
    return api.audited(ctx, 'user.remove', name, async () => {
      await api.backend.readBarrier();
      for (let attempt = 0; attempt < 5; attempt++) {
        const cur = api.user(name);
        if (cur === undefined) throw new AdminError('not_found', `user ${name} does not exist`);
        const r = await api.proposeAudited(ctx, 'user.remove', name, 'removed', undefined, { op: 'delete', bucket: controlBuckets.users, key: name, revision: cur.revision, ts: api.now() }, []);
        if (r.ok) return api.recorded({ result: 'removed' as const, user: publicUser(cur.value) });
        if (r.code !== KvErrorCode.wrongRevision) throw new AdminError('unavailable', `user ${name} was not removed: ${r.message}`);
      }
      throw new AdminError('conflict', `user ${name} kept changing while it was being removed; retry`);
    });
  });

  api.register('USER', 'LIST', async (body) => {
    if (body.stale !== true) await api.backend.readBarrier();
    const users = api.keysOf(controlBuckets.users).map((n) => api.user(n)).filter((u) => u !== undefined).map((u) => publicUser(u.value));
    return { users };
  });

  api.register('USER', 'SHOW', async (body) => {
    const name = userName(body);
    if (body.stale !== true) await api.backend.readBarrier();
    const u = api.user(name);
    if (u === undefined) throw new AdminError('not_found', `user ${name} does not exist`);
    return { user: publicUser(u.value) };
  });
}
