// What an admin API handler works with: its context, its reply, the AdminError it throws (a stable `code` the CLI
// maps to exit codes) and the readers of request-body fields, which throw AdminError('bad_request') naming the field.
import type { KvGuard, KvResult, KvWriteCommand, NonceClaim } from '../../store/index.js';
import type { KvBackend } from '../kv/backend.js';
import { MembershipdError } from '../errors.js';
import type { RoleValue, UserValue } from './buckets.js';

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

export function str(body: Record<string, unknown>, field: string, required: true): string;
export function str(body: Record<string, unknown>, field: string, required: false): string | undefined;
export function str(body: Record<string, unknown>, field: string, required: boolean): string | undefined {
  const v = body[field];
  if (v === undefined) {
    if (required) throw new AdminError('bad_request', `"${field}" is required`);
    return undefined;
  }
  if (typeof v !== 'string') throw new AdminError('bad_request', `"${field}" must be a string`);
  return v;
}

export function strList(body: Record<string, unknown>, field: string): string[] | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((s): s is string => typeof s === 'string')) throw new AdminError('bad_request', `"${field}" must be a list of strings`);
  return v;
}

export function bool(body: Record<string, unknown>, field: string): boolean | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new AdminError('bad_request', `"${field}" must be true or false`);
  return v;
}

export function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const x = [...new Set(a)].sort();
  const y = [...new Set(b)].sort();
  return x.length === y.length && x.every((s, i) => s === y[i]);
}

/**
 * What the per-bucket verb modules (user_verbs.ts, role_verbs.ts) use of the ControlApi that registers them: its
 * registration and audit, the audited compare-and-set write, and the stored users and roles.
 */
export interface VerbContext {
  readonly backend: KvBackend;
  readonly now: () => number;
  register(area: string, verb: string, handler: AdminHandler): () => void;
  audited(ctx: AdminContext, what: string, target: string, fn: () => Promise<Record<string, unknown> & { result: AdminResult }>,
    detail?: Record<string, unknown>): Promise<Record<string, unknown>>;
  /** A change and its audit record as one replicated entry whose guards are checked when it applies. */
  proposeAudited(ctx: AdminContext, what: string, target: string, result: AdminResult, detail: Record<string, unknown> | undefined,
    write: KvWriteCommand, guards: readonly KvGuard[]): Promise<KvResult>;
  /** Marks a reply whose audit record was written with the change (audited() then writes none). */
  recorded<T extends object>(reply: T): T;
  /** Names whose latest entry is a PUT, sorted. */
  keysOf(bucket: string): string[];
  user(name: string): { value: UserValue; revision: number } | undefined;
  role(name: string): { value: RoleValue; revision: number } | undefined;
}
