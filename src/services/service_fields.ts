// What a SERVICE request may carry and how an instance is shown: the limits of a registration, the field readers that
// refuse with a ServiceApiError naming the field, the public view of an entry (never its lease id) and the
// micro-protocol INFO reply of a standard NATS service, cut to the same limits. Pure functions, no presence state.
import { isValidSubject } from '../nats/index.js';
import { serviceKey, type ServiceValue } from '../control/index.js';
import { MembershipdError } from '../errors.js';

const dec = new TextDecoder();
/** A service or instance name: one token of the key `<service>.<instance>`. */
export const nameRe = /^[A-Za-z0-9_=-]{1,128}$/;

/** Limits on what a registration may carry: the entry is replicated to every node and held by every watcher. */
export const serviceLimits = {
  ttlSecondsMin: 1,
  ttlSecondsMax: 3600,
  endpointsMax: 64,
  endpointBytesMax: 256,
  metadataKeysMax: 32,
  metadataKeyBytesMax: 128,
  metadataValueBytesMax: 1024,
  textBytesMax: 1024,
} as const;

/** A refusal of a SERVICE request; becomes `{ error: { code, message } }` like the admin API's. */
export class ServiceApiError extends MembershipdError {
  constructor(code: 'bad_request' | 'forbidden' | 'not_found' | 'conflict' | 'unavailable', message: string) {
    super(code, message);
  }
}

/** The entry as shown: never the lease id (it is the capability to keep the instance alive or remove it). */
export function publicService(v: ServiceValue): Record<string, unknown> {
  const { lease: _lease, v: _v, ...rest } = v;
  return { ...rest, key: serviceKey(v.service, v.instance), lease_expires: new Date(v.lease_expires).toISOString(), ...(v.registered !== undefined ? { registered: new Date(v.registered).toISOString() } : {}) };
}

export function nameField(body: Record<string, unknown>, field: string): string {
  const v = body[field];
  if (typeof v !== 'string' || !nameRe.test(v)) {
    throw new ServiceApiError('bad_request', `"${field}" must be 1..128 of A-Z a-z 0-9 _ = - (it is a token of the key <service>.<instance>), got ${JSON.stringify(typeof v === 'string' ? v.slice(0, 140) : v)}`);
  }
  return v;
}

export function textField(body: Record<string, unknown>, field: string): string | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || Buffer.byteLength(v) > serviceLimits.textBytesMax) throw new ServiceApiError('bad_request', `"${field}" must be a string of at most ${serviceLimits.textBytesMax} bytes`);
  return v;
}

export function endpointsField(v: unknown): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ServiceApiError('bad_request', '"endpoints" must be a list of subjects');
  if (v.length > serviceLimits.endpointsMax) throw new ServiceApiError('bad_request', `"endpoints" has ${v.length} entries; at most ${serviceLimits.endpointsMax}`);
  return v.map((s, i) => {
    if (typeof s !== 'string' || !isValidSubject(s)) throw new ServiceApiError('bad_request', `"endpoints"[${i}] must be a NATS subject, got ${JSON.stringify(typeof s === 'string' ? s.slice(0, 80) : s)}`);
    if (Buffer.byteLength(s) > serviceLimits.endpointBytesMax) throw new ServiceApiError('bad_request', `"endpoints"[${i}] is ${Buffer.byteLength(s)} bytes; at most ${serviceLimits.endpointBytesMax}`);
    return s;
  });
}

export function metadataField(v: unknown): Record<string, string> {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ServiceApiError('bad_request', '"metadata" must be an object of string values');
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > serviceLimits.metadataKeysMax) throw new ServiceApiError('bad_request', `"metadata" has ${entries.length} keys; at most ${serviceLimits.metadataKeysMax}`);
  const out: Record<string, string> = {};
  for (const [k, s] of entries) {
    if (k.length === 0 || Buffer.byteLength(k) > serviceLimits.metadataKeyBytesMax) throw new ServiceApiError('bad_request', `"metadata" keys have 1..${serviceLimits.metadataKeyBytesMax} bytes`);
    if (typeof s !== 'string' || Buffer.byteLength(s) > serviceLimits.metadataValueBytesMax) throw new ServiceApiError('bad_request', `"metadata".${k} must be a string of at most ${serviceLimits.metadataValueBytesMax} bytes`);
    out[k] = s;
  }
  return out;
}

export interface InfoResponse {
  readonly endpoints: string[];
  readonly metadata: Record<string, string>;
  readonly version?: string;
  readonly description?: string;
}

/** The micro protocol's INFO response (`io.nats.micro.v1.info_response`, or the experimental one), cut to the bucket's limits. */
export function parseInfo(payload: Uint8Array): InfoResponse | undefined {
  let d: unknown;
  try {
    d = JSON.parse(dec.decode(payload));
  } catch {
    return undefined;
  }
  if (typeof d !== 'object' || d === null) return undefined;
  const i = d as Record<string, unknown>;
  // nats.go's experimental micro (≤ 1.22, what Debian ships) answers without `type`, with one endpoint as `subject`.
  const experimental = i.type === undefined && typeof i.name === 'string' && typeof i.id === 'string' && typeof i.subject === 'string';
  if (i.type !== 'io.nats.micro.v1.info_response' && !experimental) return undefined;
  const listed: unknown[] = experimental ? [{ subject: i.subject }] : Array.isArray(i.endpoints) ? i.endpoints : [];
  const endpoints = listed
    .map((e: unknown) => (typeof e === 'object' && e !== null ? (e as Record<string, unknown>).subject : undefined))
    .filter((s): s is string => typeof s === 'string' && isValidSubject(s) && Buffer.byteLength(s) <= serviceLimits.endpointBytesMax)
    .slice(0, serviceLimits.endpointsMax);
  const metadata: Record<string, string> = {};
  if (typeof i.metadata === 'object' && i.metadata !== null) {
    for (const [k, v] of Object.entries(i.metadata as Record<string, unknown>).slice(0, serviceLimits.metadataKeysMax)) {
      if (typeof v === 'string' && k.length > 0 && k.length <= serviceLimits.metadataKeyBytesMax) metadata[k] = v.slice(0, serviceLimits.metadataValueBytesMax);
    }
  }
  const text = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v.slice(0, serviceLimits.textBytesMax) : undefined);
  return { endpoints, metadata, ...(text(i.version) !== undefined ? { version: text(i.version)! } : {}), ...(text(i.description) !== undefined ? { description: text(i.description)! } : {}) };
}
