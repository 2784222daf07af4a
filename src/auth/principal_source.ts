// Where users and roles come from. The authenticator reads through PrincipalSource only; the file source
// below serves `--store file`, and the replicated (Raft-backed) source of a later issue implements the same
// interface over the `users` and `roles` buckets.
//
// Users file (`--users-file PATH`), JSON:
// {
//   "users": [
//     { "name": "alice", "password": "scrypt$32768$8$1$<salt>$<hash>", "roles": ["orders"] },
//     { "name": "svc",   "token": "sha256$<hash>",                     "roles": ["orders", "admin"] },
//     { "name": "edge",  "nkey": "UABC…(56 chars)",                    "roles": ["reader"], "disabled": false }
//   ],
//   "roles": {
//     "orders": {
//       "publish":   { "allow": ["orders.>"], "deny": ["orders.secret"] },
//       "subscribe": { "allow": ["_INBOX.>", "orders.* workers"], "deny": ["orders.audit"] },
//       "allow_responses": { "max": 1, "expires": "2m" }
//     },
//     "reader": { "subscribe": ["telemetry.>"] }
//   }
// }
// - A user has at least one credential: "password" (scrypt hash, never plaintext), "token" (sha256 hash) and/or
//   "nkey" (a user public key 'U…'). Names are 1..128 printable characters without whitespace.
// - "roles" lists role names; every one must be defined in "roles" or be the built-in "admin" (everything,
//   including the reserved subjects and the admin API). A user without roles may do nothing.
// - Role permissions: see permissions.ts (absent allow list = nothing; "<subject> <queue>" entries; deny wins
//   within a role; roles are unioned). A role may also say "admin": true.
// - Unknown keys are errors, so a typo does not silently grant or drop a permission.
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { ConfigError } from '../errors.js';
import { isPasswordHash, isTokenHash } from './credentials.js';
import { parseJsonWithPosition } from './json_position.js';
import { isValidPublicKey } from './nkeys.js';
import { CompiledRole, PermissionSpecError, type PermissionSpec } from './permissions.js';

export interface UserRecord {
  readonly name: string;
  /** scrypt hash string (credentials.ts). */
  readonly password?: string;
  /** sha256 token hash string (credentials.ts). */
  readonly token?: string;
  /** NKey user public key 'U…'. */
  readonly nkey?: string;
  readonly roles: readonly string[];
  readonly disabled: boolean;
}

export interface RoleRecord {
  readonly name: string;
  readonly permissions: PermissionSpec;
  readonly admin: boolean;
  /**
   * Service names this role may register in the `services` bucket (`$UB.API.SERVICE.*`, src/services); `*` is
   * every name. Absent = none (admin roles may register any).
   */
  readonly services?: readonly string[];
  /** May read the `services` bucket (`ub_services` through the KV API, e.g. a KV watch). */
  readonly services_read?: boolean;
}

export const builtinAdminRole = 'admin';

/** What changed; listeners re-evaluate connected principals. `users`/`roles` list changed names, or 'all'. */
export interface PrincipalChange {
  readonly users: readonly string[] | 'all';
  readonly roles: readonly string[] | 'all';
}

export interface PrincipalSource {
  userByName(name: string): UserRecord | undefined;
  /** By NKey public key. */
  userByNkey(nkey: string): UserRecord | undefined;
  /** By the token's hash (credentials.tokenHashOf), never the token itself. */
  userByTokenHash(tokenHash: string): UserRecord | undefined;
  role(name: string): RoleRecord | undefined;
  /** Increases with every applied change; caches key on it. */
  readonly version: number;
  /** Called after a change has been applied; returns the unsubscribe function. */
  onChange(listener: (change: PrincipalChange) => void): () => void;
  /**
   * A replicated source: resolves true once this node has applied every change committed before the call (a
   * ReadIndex barrier), false when that could not be had within a short bound (no leader). The authenticator
   * asks it before refusing a client for what the source says, so `user add` then connect to a follower works.
   */
  catchUp?(): Promise<boolean>;
}

/**
 * A users file that cannot be used. A ConfigError (code ECONFIG, flag --users-file), so the CLI exits 2 with
 * its one-line message `PATH:LINE:COLUMN: what` (syntax) or `PATH: $.json.path: what` (content).
 */
export class UsersFileError extends ConfigError {
  readonly path: string;
  readonly line: number | undefined;
  readonly column: number | undefined;
  constructor(path: string, message: string, line?: number, column?: number, options?: { cause?: unknown }) {
    super(`${path}${line !== undefined ? `:${line}:${column}` : ''}: ${message}`, '--users-file', options);
    this.path = path;
    this.line = line;
    this.column = column;
  }
}

/**
 * Users and roles with their lookup indexes. Once handed to a SnapshotSource only that source changes it
 * (patch()), so a source that follows a change feed pays per changed record, not per user.
 */
export class PrincipalSnapshot {
  readonly users = new Map<string, UserRecord>();
  readonly roles = new Map<string, RoleRecord>();
  readonly byNkey = new Map<string, UserRecord>();
  readonly byToken = new Map<string, UserRecord>();

  constructor(users: readonly UserRecord[], roles: readonly RoleRecord[]) {
    for (const r of roles) this.roles.set(r.name, r);
    for (const u of users) this.setUser(u.name, u);
  }

  /** Sets (or with undefined removes) one user, keeping the indexes in step. */
  setUser(name: string, u: UserRecord | undefined): void {
    const old = this.users.get(name);
    if (old?.nkey !== undefined && this.byNkey.get(old.nkey) === old) this.byNkey.delete(old.nkey);
    if (old?.token !== undefined && this.byToken.get(old.token) === old) this.byToken.delete(old.token);
    if (u === undefined) {
      this.users.delete(name);
      return;
    }
    this.users.set(name, u);
    if (u.nkey !== undefined) this.byNkey.set(u.nkey, u);
    if (u.token !== undefined) this.byToken.set(u.token, u);
  }

  setRole(name: string, r: RoleRecord | undefined): void {
    if (r === undefined) this.roles.delete(name);
    else this.roles.set(name, r);
  }
}

const sameRecord = (a: unknown, b: unknown): boolean => a === b || (a !== undefined && b !== undefined && JSON.stringify(a) === JSON.stringify(b));

/** Names whose record differs between two snapshots (added, removed or changed). */
function diffNames<T>(a: Map<string, T>, b: Map<string, T>): string[] {
  const out: string[] = [];
  for (const [k, v] of a) if (!b.has(k) || JSON.stringify(b.get(k)) !== JSON.stringify(v)) out.push(k);
  for (const k of b.keys()) if (!a.has(k)) out.push(k);
  return out;
}

/** Shared plumbing: a source that holds a snapshot and notifies on replacement. */
export class SnapshotSource implements PrincipalSource {
  private snapshot: PrincipalSnapshot;
  private listeners = new Set<(change: PrincipalChange) => void>();
  version = 1;

  constructor(snapshot: PrincipalSnapshot, private readonly logger?: Logger) {
    this.snapshot = snapshot;
  }

  userByName(name: string): UserRecord | undefined {
    return this.snapshot.users.get(name);
  }
  userByNkey(nkey: string): UserRecord | undefined {
    return this.snapshot.byNkey.get(nkey);
  }
  userByTokenHash(tokenHash: string): UserRecord | undefined {
    return this.snapshot.byToken.get(tokenHash);
  }
  role(name: string): RoleRecord | undefined {
    return this.snapshot.roles.get(name);
  }

  onChange(listener: (change: PrincipalChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Replaces the state; returns what changed (nothing: no version bump, no notification). */
  replace(next: PrincipalSnapshot): PrincipalChange {
    const change = { users: diffNames(this.snapshot.users, next.users), roles: diffNames(this.snapshot.roles, next.roles) };
    if (change.users.length === 0 && change.roles.length === 0) return change;
    this.snapshot = next;
    return this.changed(change);
  }

  /**
   * Sets the named records (undefined: removed) and notifies like replace(), comparing only those names:
   * O(changed records) where replace() is O(all of them).
   */
  patch(users: ReadonlyMap<string, UserRecord | undefined>, roles: ReadonlyMap<string, RoleRecord | undefined>): PrincipalChange {
    const changedUsers: string[] = [];
    const changedRoles: string[] = [];
    for (const [name, u] of users) {
      if (sameRecord(this.snapshot.users.get(name), u)) continue;
      this.snapshot.setUser(name, u);
      changedUsers.push(name);
    }
    for (const [name, r] of roles) {
      if (sameRecord(this.snapshot.roles.get(name), r)) continue;
      this.snapshot.setRole(name, r);
      changedRoles.push(name);
    }
    const change = { users: changedUsers, roles: changedRoles };
    if (changedUsers.length === 0 && changedRoles.length === 0) return change;
    return this.changed(change);
  }

  private changed(change: PrincipalChange): PrincipalChange {
    this.version++;
    for (const l of [...this.listeners]) {
      try {
        l(change);
      } catch (err) {
        this.logger?.error({ err }, 'principal change listener failed');
      }
    }
    return change;
  }
}

// ---- users file -----------------------------------------------------------------------------------------

const nameRe = /^[\x21-\x7e]{1,128}$/;
const userKeys = new Set(['name', 'password', 'token', 'nkey', 'roles', 'disabled']);
const roleKeys = new Set(['publish', 'subscribe', 'allow_responses', 'admin', 'services', 'services_read']);
/** A service name a role may register: the `services` bucket's name syntax, or `*` for every name. */
const serviceGrantRe = /^(\*|[A-Za-z0-9_=-]{1,128})$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Validates the parsed document; throws a message naming the JSON path of the problem. */
export function parseUsersDocument(doc: unknown): PrincipalSnapshot {
  const fail = (path: string, message: string): never => {
    throw new PermissionSpecError(path, message);
  };
  if (!isObject(doc)) return fail('$', 'the users file must hold a JSON object { "users": [...], "roles": {...} }');
  for (const k of Object.keys(doc)) if (k !== 'users' && k !== 'roles') fail(`$.${k}`, 'unknown key (users, roles)');
  const rolesDoc = doc.roles ?? {};
  if (!isObject(rolesDoc)) return fail('$.roles', 'must be an object of role name → permissions');
  const roles: RoleRecord[] = [];
  for (const [name, spec] of Object.entries(rolesDoc)) {
    const path = `$.roles.${name}`;
    if (!nameRe.test(name)) fail(path, 'a role name has 1..128 printable characters and no whitespace');
    if (name === builtinAdminRole) fail(path, `"${builtinAdminRole}" is built in (it grants everything) and cannot be redefined`);
    if (!isObject(spec)) return fail(path, 'must be an object { publish, subscribe, allow_responses, admin }');
    for (const k of Object.keys(spec)) if (!roleKeys.has(k)) fail(`${path}.${k}`, `unknown key (${[...roleKeys].join(', ')})`);
    if (spec.admin !== undefined && typeof spec.admin !== 'boolean') fail(`${path}.admin`, 'must be true or false');
    const permissions = spec as PermissionSpec;
    new CompiledRole(permissions, path); // validates every subject now, not at the first login
    const services = spec.services;
    if (services !== undefined && (!Array.isArray(services) || !services.every((x): x is string => typeof x === 'string' && serviceGrantRe.test(x)))) {
      fail(`${path}.services`, 'must be a list of service names (1..128 of A-Z a-z 0-9 _ = -) or "*" for every name');
    }
    if (spec.services_read !== undefined && typeof spec.services_read !== 'boolean') fail(`${path}.services_read`, 'must be true or false');
    roles.push({
      name, permissions, admin: spec.admin === true, ...(services !== undefined ? { services: [...(services as string[])] } : {}),
      ...(spec.services_read === true ? { services_read: true } : {}),
    });
  }
  const usersDoc = doc.users ?? [];
  if (!Array.isArray(usersDoc)) return fail('$.users', 'must be a list of users');
  const users: UserRecord[] = [];
  const seen = { names: new Set<string>(), nkeys: new Set<string>(), tokens: new Set<string>() };
  const roleNames = new Set(roles.map((r) => r.name));
  for (const [i, u] of usersDoc.entries()) users.push(parseUser(u, `$.users[${i}]`, seen, roleNames, fail));
  return new PrincipalSnapshot(users, roles);
}

function parseUser(
  u: unknown,
  path: string,
  seen: { names: Set<string>; nkeys: Set<string>; tokens: Set<string> },
  roleNames: Set<string>,
  fail: (path: string, message: string) => never,
): UserRecord {
  if (!isObject(u)) return fail(path, 'a user is an object { name, password|token|nkey, roles }');
  for (const k of Object.keys(u)) if (!userKeys.has(k)) fail(`${path}.${k}`, `unknown key (${[...userKeys].join(', ')})`);
  const { name, password, token, nkey, roles = [], disabled = false } = u;
  if (typeof name !== 'string' || !nameRe.test(name)) return fail(`${path}.name`, 'a user name has 1..128 printable characters and no whitespace');
  if (seen.names.has(name)) fail(`${path}.name`, `duplicate user "${name}"`);
  seen.names.add(name);
  if (password !== undefined && (typeof password !== 'string' || !isPasswordHash(password))) {
    fail(`${path}.password`, 'must be a scrypt hash "scrypt$N$r$p$salt$hash" — plaintext passwords are not accepted');
  }
  if (token !== undefined) {
    if (typeof token !== 'string' || !isTokenHash(token)) fail(`${path}.token`, 'must be a token hash "sha256$…" — plaintext tokens are not accepted');
    if (seen.tokens.has(token as string)) fail(`${path}.token`, 'the same token is already given to another user');
    seen.tokens.add(token as string);
  }
  if (nkey !== undefined) {
    if (typeof nkey !== 'string' || !isValidPublicKey(nkey, ['user'])) fail(`${path}.nkey`, 'must be an NKey user public key (56 characters starting with U, valid checksum)');
    if (seen.nkeys.has(nkey as string)) fail(`${path}.nkey`, 'the same nkey is already given to another user');
    seen.nkeys.add(nkey as string);
  }
  if (password === undefined && token === undefined && nkey === undefined) fail(path, 'a user needs a password, token or nkey');
  if (!Array.isArray(roles) || !roles.every((r): r is string => typeof r === 'string')) return fail(`${path}.roles`, 'must be a list of role names');
  for (const r of roles) if (r !== builtinAdminRole && !roleNames.has(r)) fail(`${path}.roles`, `role "${r}" is not defined in "roles"`);
  if (typeof disabled !== 'boolean') fail(`${path}.disabled`, 'must be true or false');
  return {
    name,
    ...(password !== undefined ? { password: password as string } : {}),
    ...(token !== undefined ? { token: token as string } : {}),
    ...(nkey !== undefined ? { nkey: nkey as string } : {}),
    roles: [...roles],
    disabled: disabled as boolean,
  };
}

/** Parses users-file text; syntax errors carry line/column, validation errors their JSON path. */
export function parseUsersFile(path: string, text: string): PrincipalSnapshot {
  const parsed = parseJsonWithPosition(text);
  if (!parsed.ok) throw new UsersFileError(path, `invalid JSON: ${parsed.message}`, parsed.line, parsed.column);
  try {
    return parseUsersDocument(parsed.value);
  } catch (err) {
    if (err instanceof PermissionSpecError) throw new UsersFileError(path, err.message, undefined, undefined, { cause: err });
    throw err;
  }
}

export type ReloadResult = { readonly ok: true; readonly change: PrincipalChange } | { readonly ok: false; readonly error: UsersFileError };

export class FileSource extends SnapshotSource {
  readonly path: string;
  private readonly log: Logger | undefined;

  constructor(path: string, snapshot: PrincipalSnapshot, logger?: Logger) {
    super(snapshot, logger);
    this.path = path;
    this.log = logger;
  }

  /**
   * Re-reads the file (the CLI calls it on SIGHUP). A broken file keeps the previous state; the error is
   * logged and returned. Connections are re-evaluated by the authenticator's change listener, so only those
   * whose user or permissions changed are affected.
   */
  async reload(): Promise<ReloadResult> {
    let snapshot: PrincipalSnapshot;
    try {
      snapshot = parseUsersFile(this.path, await readUsersFile(this.path));
    } catch (err) {
      const error = err instanceof UsersFileError ? err : new UsersFileError(this.path, String(err), undefined, undefined, { cause: err });
      this.log?.error({ err: error, path: this.path, line: error.line, column: error.column }, 'users file reload failed; keeping the previous users and roles');
      return { ok: false, error };
    }
    const change = this.replace(snapshot);
    this.log?.info({ path: this.path, users: change.users.length, roles: change.roles.length }, 'users file reloaded');
    return { ok: true, change };
  }
}

async function readUsersFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new UsersFileError(path, `cannot read the users file (${(err as NodeJS.ErrnoException).code ?? String(err)})`, undefined, undefined, { cause: err });
  }
}

/** `--store file --users-file PATH` at start: a missing or malformed file throws UsersFileError (the CLI exits 2). */
export async function openFileSource(path: string, logger?: Logger): Promise<FileSource> {
  return new FileSource(path, parseUsersFile(path, await readUsersFile(path)), logger);
}

/** Synchronous variant for callers that cannot await (tests, one-shot CLI checks). */
export function openFileSourceSync(path: string, logger?: Logger): FileSource {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsersFileError(path, `cannot read the users file (${(err as NodeJS.ErrnoException).code ?? String(err)})`, undefined, undefined, { cause: err });
  }
  return new FileSource(path, parseUsersFile(path, text), logger);
}

/** An in-memory source (tests, embedding); `set` replaces everything and notifies. */
export class MemorySource extends SnapshotSource {
  constructor(users: readonly UserRecord[] = [], roles: readonly RoleRecord[] = [], logger?: Logger) {
    super(new PrincipalSnapshot(users, roles), logger);
  }
  set(users: readonly UserRecord[], roles: readonly RoleRecord[]): PrincipalChange {
    return this.replace(new PrincipalSnapshot(users, roles));
  }
}
