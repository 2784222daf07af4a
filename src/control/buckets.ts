// The six control-plane buckets (DESIGN.md "The six control-plane buckets"): their KV names, msgpack value
// schemas and validation. Values are decoded defensively: a record that fails its schema (written by a newer
// version, or corrupt) is reported, never half-used, so a bad `users` value can never grant a permission.
//
// Bucket names carry the `ub_` prefix: the JetStream KV API shows them read-only to admin principals
// (src/kv readOnly default), and writes go only through the admin API, which validates and audits them.
import { Packr } from 'msgpackr';
import type { KvCommand, KvResult } from '../../store/index.js';
import { isValidKey } from '../../store/index.js';
import { isPasswordHash, isTokenHash, isValidPublicKey, CompiledRole, PermissionSpecError, builtinAdminRole } from '../auth/index.js';
import type { PermissionSpec } from '../auth/index.js';
import type { KvBackend } from '../kv/backend.js';
import { MembershipdError } from '../errors.js';

export const controlBuckets = {
  users: 'ub_users',
  roles: 'ub_roles',
  nodes: 'ub_nodes',
  services: 'ub_services',
  config: 'ub_config',
  audit: 'ub_audit',
} as const;
export type ControlBucket = keyof typeof controlBuckets;

/** History depth per bucket: a few revisions of users/roles help an operator see what an update replaced. */
const bucketHistory: Record<ControlBucket, number> = { users: 5, roles: 5, nodes: 5, services: 1, config: 5, audit: 1 };

/** Schema version of every value; a reader refuses versions it does not know. */
export const schemaVersion = 1;

export class ControlSchemaError extends MembershipdError {
  readonly field: string;
  constructor(field: string, message: string) {
    super('ECONTROLSCHEMA', `${field}: ${message}`);
    this.field = field;
  }
}

// Plain msgpack, like store/ (deterministic bytes for a value, no record extension).
const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, variableMapSize: true });

export function encodeValue(value: object): Uint8Array {
  return packr.pack(value);
}

// ---- names and subjects -------------------------------------------------------------------------------

/** User and role names are KV keys: 1..128 of [A-Za-z0-9_=.-], starting with a letter or digit, no `..`. */
const nameRe = /^[A-Za-z0-9][A-Za-z0-9_=.-]{0,127}$/;

export function nameProblem(kind: 'user' | 'role', name: unknown): string | undefined {
  if (typeof name !== 'string' || name.length === 0) return `a ${kind} name is required`;
  if (!nameRe.test(name) || name.endsWith('.') || name.includes('..') || !isValidKey(name)) {
    return `${kind} name ${JSON.stringify(name.slice(0, 140))} is not valid: 1..128 of letters, digits, '_', '=', '.', '-', starting with a letter or digit, without '..' or a trailing '.'`;
  }
  return undefined;
}

// ---- users --------------------------------------------------------------------------------------------

export type CredentialKind = 'password' | 'nkey' | 'token';

export interface UserValue {
  readonly v: number;
  readonly name: string;
  /** Exactly one credential. */
  readonly password?: string;
  readonly nkey?: string;
  readonly token?: string;
  readonly roles: readonly string[];
  readonly disabled: boolean;
  readonly created: number;
  readonly updated: number;
  /** The principal that made the last change. */
  readonly by: string;
}

/**
 * A control-bucket value as the KV API shows it: a `ub_users` record loses its scrypt hash (`password`) and token
 * hash (`token`), keeping `credential` ('password' | 'token') in their place; NKey public keys stay (they are not
 * secrets). An admin reading `ub_users` over KV would otherwise put every user's hash on the bus, where a reply
 * inbox, a consumer's deliver subject or a wide subscription may carry it further than the admin meant. Any other
 * bucket, or a value that is not a users record, is returned as is (the same object).
 */
export function redactControlValue(bucket: string, value: Uint8Array): Uint8Array {
  if (bucket !== controlBuckets.users) return value;
  let raw: unknown;
  try {
    raw = packr.unpack(value);
  } catch {
    return value;
  }
  if (!isObject(raw) || (raw.password === undefined && raw.token === undefined)) return value;
  const { password, token: _token, ...rest } = raw;
  return packr.pack({ ...rest, credential: password !== undefined ? 'password' : 'token' });
}

export function credentialKind(u: Pick<UserValue, 'password' | 'nkey' | 'token'>): CredentialKind {
  return u.password !== undefined ? 'password' : u.nkey !== undefined ? 'nkey' : 'token';
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function isTime(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function stringList(v: unknown, field: string, check: (s: string, i: number) => string | undefined): string[] {
  if (!Array.isArray(v)) throw new ControlSchemaError(field, 'must be a list of strings');
  if (v.length > 256) throw new ControlSchemaError(field, 'at most 256 entries');
  return v.map((s, i) => {
    if (typeof s !== 'string') throw new ControlSchemaError(`${field}[${i}]`, 'must be a string');
    const p = check(s, i);
    if (p !== undefined) throw new ControlSchemaError(`${field}[${i}]`, p);
    return s;
  });
}

export function roleListProblem(roles: readonly string[]): string | undefined {
  for (const r of roles) {
    const p = nameProblem('role', r);
    if (p !== undefined) return p;
  }
  if (new Set(roles).size !== roles.length) return 'a role is listed twice';
  return undefined;
}

/** Validates a decoded `users` value; throws ControlSchemaError naming the field. */
export function validateUser(v: unknown): UserValue {
  if (!isObject(v)) throw new ControlSchemaError('user', 'must be a map');
  if (v.v !== schemaVersion) throw new ControlSchemaError('user.v', `schema version ${String(v.v)} is not ${schemaVersion}`);
  const np = nameProblem('user', v.name);
  if (np !== undefined) throw new ControlSchemaError('user.name', np);
  const creds = (['password', 'nkey', 'token'] as const).filter((k) => v[k] !== undefined);
  if (creds.length !== 1) throw new ControlSchemaError('user', 'exactly one credential (password, nkey or token) is required');
  if (v.password !== undefined && (typeof v.password !== 'string' || !isPasswordHash(v.password))) {
    throw new ControlSchemaError('user.password', 'must be a scrypt hash, never plaintext');
  }
  if (v.nkey !== undefined && (typeof v.nkey !== 'string' || !isValidPublicKey(v.nkey, ['user']))) {
    throw new ControlSchemaError('user.nkey', 'must be an NKey user public key (U…)');
  }
  if (v.token !== undefined && (typeof v.token !== 'string' || !isTokenHash(v.token))) throw new ControlSchemaError('user.token', 'must be a token hash');
  const roles = stringList(v.roles, 'user.roles', (s) => nameProblem('role', s));
  if (typeof v.disabled !== 'boolean') throw new ControlSchemaError('user.disabled', 'must be true or false');
  if (!isTime(v.created) || !isTime(v.updated)) throw new ControlSchemaError('user.created', 'created/updated must be ms timestamps');
  if (typeof v.by !== 'string') throw new ControlSchemaError('user.by', 'must be a string');
  return {
    v: schemaVersion, name: v.name as string,
    ...(v.password !== undefined ? { password: v.password as string } : {}),
    ...(v.nkey !== undefined ? { nkey: v.nkey as string } : {}),
    ...(v.token !== undefined ? { token: v.token as string } : {}),
    roles, disabled: v.disabled, created: v.created, updated: v.updated, by: v.by,
  };
}

// ---- roles --------------------------------------------------------------------------------------------

export interface RoleRules {
  readonly allow: readonly string[];
  readonly deny: readonly string[];
}

export interface RoleValue {
  readonly v: number;
  readonly name: string;
  readonly publish: RoleRules;
  readonly subscribe: RoleRules;
  readonly allow_responses: boolean;
  readonly admin: boolean;
  readonly created: number;
  readonly updated: number;
  readonly by: string;
  /** Service names the role may register (src/services); `*` = every name. Optional: older values have none. */
  readonly services?: readonly string[];
  /** May read the `services` bucket through the KV API. */
  readonly services_read?: boolean;
}

/** A service name a role may register (the `services` bucket's name syntax) or `*`. */
export function serviceGrantProblem(names: readonly string[]): string | undefined {
  for (const n of names) if (!/^(\*|[A-Za-z0-9_=-]{1,128})$/.test(n)) return `service name ${JSON.stringify(n.slice(0, 140))} is not valid: 1..128 of A-Z a-z 0-9 _ = -, or * for every name`;
  return undefined;
}

export function rolePermissions(r: Pick<RoleValue, 'publish' | 'subscribe' | 'allow_responses'>): PermissionSpec {
  return {
    publish: { allow: r.publish.allow, deny: r.publish.deny },
    subscribe: { allow: r.subscribe.allow, deny: r.subscribe.deny },
    allow_responses: r.allow_responses,
  };
}

/** Subjects are checked by compiling the role exactly as the authenticator will (src/auth permissions). */
export function rolePermissionProblem(r: Pick<RoleValue, 'publish' | 'subscribe' | 'allow_responses'>): string | undefined {
  try {
    new CompiledRole(rolePermissions(r), 'role');
    return undefined;
  } catch (err) {
    if (err instanceof PermissionSpecError) return err.message;
    throw err;
  }
}

function rules(v: unknown, field: string): RoleRules {
  if (!isObject(v)) throw new ControlSchemaError(field, 'must be a map { allow, deny }');
  const ok = (): undefined => undefined;
  return { allow: stringList(v.allow, `${field}.allow`, ok), deny: stringList(v.deny, `${field}.deny`, ok) };
}

export function validateRole(v: unknown): RoleValue {
  if (!isObject(v)) throw new ControlSchemaError('role', 'must be a map');
  if (v.v !== schemaVersion) throw new ControlSchemaError('role.v', `schema version ${String(v.v)} is not ${schemaVersion}`);
  const np = nameProblem('role', v.name);
  if (np !== undefined) throw new ControlSchemaError('role.name', np);
  if (v.name === builtinAdminRole) throw new ControlSchemaError('role.name', `"${builtinAdminRole}" is built in`);
  const publish = rules(v.publish, 'role.publish');
  const subscribe = rules(v.subscribe, 'role.subscribe');
  if (typeof v.allow_responses !== 'boolean') throw new ControlSchemaError('role.allow_responses', 'must be true or false');
  if (typeof v.admin !== 'boolean') throw new ControlSchemaError('role.admin', 'must be true or false');
  const pp = rolePermissionProblem({ publish, subscribe, allow_responses: v.allow_responses });
  if (pp !== undefined) throw new ControlSchemaError('role', pp);
  if (!isTime(v.created) || !isTime(v.updated)) throw new ControlSchemaError('role.created', 'created/updated must be ms timestamps');
  if (typeof v.by !== 'string') throw new ControlSchemaError('role.by', 'must be a string');
  const services = v.services === undefined ? undefined : stringList(v.services, 'role.services', (x) => serviceGrantProblem([x]));
  if (v.services_read !== undefined && typeof v.services_read !== 'boolean') throw new ControlSchemaError('role.services_read', 'must be true or false');
  return {
    v: schemaVersion, name: v.name as string, publish, subscribe, allow_responses: v.allow_responses, admin: v.admin, created: v.created, updated: v.updated, by: v.by,
    ...(services !== undefined && services.length > 0 ? { services } : {}), ...(v.services_read === true ? { services_read: true } : {}),
  };
}

// ---- nodes, services, config, audit -------------------------------------------------------------------

export interface NodeValue {
  readonly v: number;
  readonly name: string;
  /** Internal identity public key 'N…'. */
  readonly identity: string;
  readonly urls: { readonly route?: string; readonly client?: string; readonly http?: string };
  readonly role: 'voter' | 'learner';
  readonly version: string;
  readonly joined: number;
}

export function validateNode(v: unknown): NodeValue {
  if (!isObject(v)) throw new ControlSchemaError('node', 'must be a map');
  if (v.v !== schemaVersion) throw new ControlSchemaError('node.v', `schema version ${String(v.v)} is not ${schemaVersion}`);
  if (typeof v.name !== 'string' || !isValidKey(v.name)) throw new ControlSchemaError('node.name', 'must be a valid server name');
  if (typeof v.identity !== 'string' || !isValidPublicKey(v.identity, ['server'])) throw new ControlSchemaError('node.identity', 'must be an NKey server public key (N…)');
  if (!isObject(v.urls)) throw new ControlSchemaError('node.urls', 'must be a map');
  const urls: Record<string, string> = {};
  for (const k of ['route', 'client', 'http'] as const) {
    const u = v.urls[k];
    if (u === undefined) continue;
    if (typeof u !== 'string') throw new ControlSchemaError(`node.urls.${k}`, 'must be a string');
    urls[k] = u;
  }
  if (v.role !== 'voter' && v.role !== 'learner') throw new ControlSchemaError('node.role', 'must be voter or learner');
  if (typeof v.version !== 'string') throw new ControlSchemaError('node.version', 'must be a string');
  if (!isTime(v.joined)) throw new ControlSchemaError('node.joined', 'must be a ms timestamp');
  return { v: schemaVersion, name: v.name, identity: v.identity, urls, role: v.role, version: v.version, joined: v.joined };
}

export interface ServiceValue {
  readonly v: number;
  readonly service: string;
  readonly instance: string;
  readonly endpoints: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * ms since the epoch: the lease's expiry when the entry was written. Keep-alives are not log entries (src/services):
   * the leader extends leases in memory, so a live entry may be past this time; its `ttl_ms` is what counts.
   */
  readonly lease_expires: number;
  // Written by service presence (src/services); optional so that older values still validate.
  /** 'lease': explicit registration kept alive by requests; 'connection': a `$SRV` service held by `node`. */
  readonly kind?: 'lease' | 'connection';
  /** Lease id (explicit registrations): what KEEPALIVE and DEREGISTER name. Never shown to other principals. */
  readonly lease?: string;
  readonly ttl_ms?: number;
  /** Server name of the node that wrote it (connection-bound: the node holding the connection). */
  readonly node?: string;
  readonly version?: string;
  readonly description?: string;
  readonly registered?: number;
  /** Principal that registered it. */
  readonly by?: string;
}

export function validateService(v: unknown): ServiceValue {
  if (!isObject(v)) throw new ControlSchemaError('service', 'must be a map');
  if (v.v !== schemaVersion) throw new ControlSchemaError('service.v', `schema version ${String(v.v)} is not ${schemaVersion}`);
  for (const k of ['service', 'instance'] as const) {
    const s = v[k];
    if (typeof s !== 'string' || !/^[A-Za-z0-9_=-]{1,128}$/.test(s)) throw new ControlSchemaError(`service.${k}`, 'must be 1..128 of [A-Za-z0-9_=-]');
  }
  const endpoints = stringList(v.endpoints, 'service.endpoints', () => undefined);
  if (!isObject(v.metadata)) throw new ControlSchemaError('service.metadata', 'must be a map of strings');
  const metadata: Record<string, string> = {};
  for (const [k, s] of Object.entries(v.metadata)) {
    if (typeof s !== 'string') throw new ControlSchemaError(`service.metadata.${k}`, 'must be a string');
    metadata[k] = s;
  }
  if (!isTime(v.lease_expires)) throw new ControlSchemaError('service.lease_expires', 'must be a ms timestamp');
  if (v.kind !== undefined && v.kind !== 'lease' && v.kind !== 'connection') throw new ControlSchemaError('service.kind', 'must be lease or connection');
  for (const k of ['lease', 'node', 'version', 'description', 'by'] as const) {
    if (v[k] !== undefined && typeof v[k] !== 'string') throw new ControlSchemaError(`service.${k}`, 'must be a string');
  }
  for (const k of ['ttl_ms', 'registered'] as const) if (v[k] !== undefined && !isTime(v[k])) throw new ControlSchemaError(`service.${k}`, 'must be a whole number of ms');
  const opt: Record<string, unknown> = {};
  for (const k of ['kind', 'lease', 'ttl_ms', 'node', 'version', 'description', 'registered', 'by'] as const) if (v[k] !== undefined) opt[k] = v[k];
  return { v: schemaVersion, service: v.service as string, instance: v.instance as string, endpoints, metadata, lease_expires: v.lease_expires, ...opt };
}

export function serviceKey(service: string, instance: string): string {
  return `${service}.${instance}`;
}

export interface ConfigValue {
  readonly v: number;
  readonly value: string | number | boolean;
  readonly updated: number;
  readonly by: string;
}

export function validateConfig(v: unknown): ConfigValue {
  if (!isObject(v)) throw new ControlSchemaError('config', 'must be a map');
  if (v.v !== schemaVersion) throw new ControlSchemaError('config.v', `schema version ${String(v.v)} is not ${schemaVersion}`);
  const x = v.value;
  if (typeof x !== 'string' && typeof x !== 'number' && typeof x !== 'boolean') throw new ControlSchemaError('config.value', 'must be a string, number or boolean');
  if (!isTime(v.updated)) throw new ControlSchemaError('config.updated', 'must be a ms timestamp');
  if (typeof v.by !== 'string') throw new ControlSchemaError('config.by', 'must be a string');
  return { v: schemaVersion, value: x, updated: v.updated, by: v.by };
}

export interface AuditValue {
  readonly v: number;
  /** ms since the epoch. */
  readonly ts: number;
  /** Principal: internal key, NKey user name. */
  readonly who: string;
  /** `<area>.<verb>`, e.g. `user.add`. */
  readonly what: string;
  readonly target: string;
  readonly result: string;
  /** What changed, never a secret (no password, no hash). */
  readonly detail?: Readonly<Record<string, unknown>>;
}

export function validateAudit(v: unknown): AuditValue {
  if (!isObject(v)) throw new ControlSchemaError('audit', 'must be a map');
  if (v.v !== schemaVersion) throw new ControlSchemaError('audit.v', `schema version ${String(v.v)} is not ${schemaVersion}`);
  if (!isTime(v.ts)) throw new ControlSchemaError('audit.ts', 'must be a ms timestamp');
  for (const k of ['who', 'what', 'target', 'result'] as const) if (typeof v[k] !== 'string') throw new ControlSchemaError(`audit.${k}`, 'must be a string');
  if (v.detail !== undefined && !isObject(v.detail)) throw new ControlSchemaError('audit.detail', 'must be a map');
  return {
    v: schemaVersion, ts: v.ts, who: v.who as string, what: v.what as string, target: v.target as string, result: v.result as string,
    ...(v.detail !== undefined ? { detail: v.detail as Record<string, unknown> } : {}),
  };
}

/** Audit keys sort by time; the random suffix keeps two changes of one millisecond (on two nodes) apart. */
export function auditKey(ts: number, random: string): string {
  return `${String(ts).padStart(15, '0')}-${random}`;
}

/** Decodes a bucket value with its validator; undefined (and `onBad` told why) when it fails its schema. */
export function decodeValue<T>(bytes: Uint8Array, validate: (v: unknown) => T, onBad?: (why: string) => void): T | undefined {
  let raw: unknown;
  try {
    raw = packr.unpack(bytes);
  } catch (err) {
    onBad?.(`not msgpack: ${String(err)}`);
    return undefined;
  }
  try {
    return validate(raw);
  } catch (err) {
    if (err instanceof ControlSchemaError) {
      onBad?.(err.message);
      return undefined;
    }
    throw err;
  }
}

// ---- creation ------------------------------------------------------------------------------------------

export class ControlBucketError extends MembershipdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ECONTROLBUCKET', message, options);
  }
}

/**
 * Creates the six buckets if absent. Idempotent: `bucket.create` of an existing bucket with the same
 * configuration is a no-op in the state machine, so every node (or every restart of the first leader) may call
 * this. Returns the names it actually created.
 */
export async function ensureControlBuckets(backend: Pick<KvBackend, 'propose' | 'reader'>, now: () => number = Date.now): Promise<string[]> {
  const created: string[] = [];
  for (const [kind, bucket] of Object.entries(controlBuckets) as [ControlBucket, string][]) {
    if (backend.reader.bucketInfo(bucket) !== undefined) continue;
    const cmd: KvCommand = { op: 'bucket.create', bucket, config: { history: bucketHistory[kind] }, ts: now() };
    const r: KvResult = await backend.propose(cmd);
    if (!r.ok) {
      // Another node raced us with the same config → created:false, ok. A different config is a real problem.
      throw new ControlBucketError(`cannot create control bucket ${bucket}: ${r.message}`);
    }
    if (r.kind === 'bucket.create' && r.created) created.push(bucket);
  }
  return created;
}
