// The small wire formats of the JetStream KV API that are not JSON: NATS header blocks (what a publish carries,
// what direct gets and consumer deliveries send), the API / KV / flow-control subjects, the v1 ack subject of a
// push delivery, and the timestamp forms (reference/nats-protocol.md §4.4-§4.6). Header blocks arrive whole (the
// NATS parser already framed them), so these are bounded whole-buffer parsers: they never keep a view of their
// input, refuse anything malformed with a reason, and check limits before doing work.

export const headerBlockBytesMax = 64 * 1024;
export const headerCountMax = 256;

export interface ParsedHeaders {
  /** Status code of the first line (`NATS/1.0 404 …`), 0 when none. */
  readonly status: number;
  readonly description: string;
  /** Fields in order, names as sent. */
  readonly fields: readonly (readonly [string, string])[];
}

const decoder = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

/**
 * Parses a header block (`NATS/1.0[ code[ description]]\r\n(Name: value\r\n)*\r\n`). An empty block is "no
 * headers". Returns a string saying what is wrong when the block is not one.
 */
export function parseHeaders(block: Uint8Array): ParsedHeaders | string {
  if (block.length === 0) return { status: 0, description: '', fields: [] };
  if (block.length > headerBlockBytesMax) return `header block of ${block.length} bytes exceeds ${headerBlockBytesMax}`;
  let text: string;
  try {
    text = decoder.decode(block);
  } catch {
    return 'header block is not UTF-8';
  }
  if (!text.endsWith('\r\n\r\n')) return 'header block does not end with an empty line';
  const lines = text.slice(0, -4).split('\r\n');
  const first = lines[0]!;
  const m = /^NATS\/1\.0(?: (\d{3})(?: (.*))?)?$/.exec(first);
  if (m === null) return 'header block does not start with NATS/1.0';
  if (lines.length - 1 > headerCountMax) return `more than ${headerCountMax} header fields`;
  const fields: (readonly [string, string])[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    if (colon <= 0) return `header line ${i} has no name`;
    const name = line.slice(0, colon);
    if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name)) return `header line ${i} has an invalid name`;
    if (line.includes('\r') || line.includes('\n')) return `header line ${i} holds a bare CR or LF`;
    fields.push([name, line.slice(colon + 1).trim()]);
  }
  return { status: m[1] === undefined ? 0 : Number(m[1]), description: m[2] ?? '', fields };
}

/** Last value of a field, name compared case-insensitively (nats.js canonicalises names on set). */
export function headerValue(h: ParsedHeaders, name: string): string | undefined {
  const want = name.toLowerCase();
  for (let i = h.fields.length - 1; i >= 0; i--) if (h.fields[i]![0].toLowerCase() === want) return h.fields[i]![1];
  return undefined;
}

/** Encodes a header block; `status` adds ` code description` to the first line. */
export function encodeHeaders(fields: readonly (readonly [string, string])[], status?: { code: number; description: string }): Uint8Array {
  let s = status === undefined ? 'NATS/1.0\r\n' : `NATS/1.0 ${status.code}${status.description === '' ? '' : ` ${status.description}`}\r\n`;
  for (const [k, v] of fields) s += `${k}: ${v}\r\n`;
  return encoder.encode(`${s}\r\n`);
}

/** A decimal sequence number as JetStream headers carry it; undefined when it is not one. */
export function parseSeq(text: string): number | undefined {
  if (!/^\d{1,16}$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : undefined;
}

// ---- subjects ---------------------------------------------------------------------------------------------------

export const apiPrefix = '$JS.API.';
export const kvPrefix = '$KV.';
export const flowControlPrefix = '$JS.FC.';
export const streamPrefix = 'KV_';

/** `$KV.<bucket>.<key>` split into bucket and key; undefined when the subject is not one. */
export function parseKvSubject(subject: string): { bucket: string; key: string } | undefined {
  if (!subject.startsWith(kvPrefix)) return undefined;
  const dot = subject.indexOf('.', kvPrefix.length);
  if (dot <= kvPrefix.length || dot === subject.length - 1) return undefined;
  return { bucket: subject.slice(kvPrefix.length, dot), key: subject.slice(dot + 1) };
}

/** The bucket behind a stream name `KV_<bucket>`, undefined for any other name. */
export function bucketOfStream(stream: string): string | undefined {
  if (!stream.startsWith(streamPrefix) || stream.length === streamPrefix.length) return undefined;
  const b = stream.slice(streamPrefix.length);
  return /^[-\w]+$/.test(b) ? b : undefined;
}

/**
 * The v1 ack subject of a push delivery: `$JS.ACK.<stream>.<consumer>.<delivery count>.<stream seq>.<consumer
 * seq>.<timestamp ns>.<pending>`. The client reads the KV revision (stream seq), the ordered-consumer sequence
 * (consumer seq, must be contiguous), `created` (timestamp) and `delta` (pending) from it.
 */
export function ackSubject(stream: string, consumer: string, streamSeq: number, consumerSeq: number, tsMs: number, pending: number): string {
  return `$JS.ACK.${stream}.${consumer}.1.${streamSeq}.${consumerSeq}.${nanosOf(tsMs)}.${pending}`;
}

/** Milliseconds since the epoch as the decimal nanoseconds of an ack subject (exact: no float rounding). */
export function nanosOf(tsMs: number): string {
  return tsMs === 0 ? '0' : `${tsMs}000000`;
}

/** RFC 3339 UTC as JetStream JSON and Nats-Time-Stamp carry it; the zero time as Go prints it. */
export function rfc3339(tsMs: number): string {
  return tsMs === 0 ? '0001-01-01T00:00:00Z' : new Date(tsMs).toISOString();
}

/** True when a subject holds a `*` or `>` token (src/nats keeps its own copy off its public surface). */
export function hasWildcard(subject: string): boolean {
  return subject.split('.').some((t) => t === '*' || t === '>');
}

/** Consumer and stream names: no separators or wildcards (nats-server rejects them in subjects). */
export function isValidName(name: string): boolean {
  return name.length > 0 && name.length <= 256 && /^[^.*>\s]+$/.test(name);
}

// ---- $JS.API subjects -------------------------------------------------------------------------------------------

export type ApiRequest =
  | { readonly kind: 'info' }
  | { readonly kind: 'stream.names' | 'stream.list' }
  | {
    readonly kind: 'stream.create' | 'stream.update' | 'stream.info' | 'stream.delete' | 'stream.purge' | 'stream.msg.get' | 'stream.msg.delete';
    readonly stream: string;
  }
  | { readonly kind: 'direct.get'; readonly stream: string; readonly subject: string | undefined }
  | { readonly kind: 'consumer.create'; readonly stream: string; readonly name: string | undefined; readonly filter: string | undefined }
  | { readonly kind: 'consumer.durable.create' | 'consumer.info' | 'consumer.delete'; readonly stream: string; readonly name: string }
  | { readonly kind: 'consumer.names' | 'consumer.list'; readonly stream: string };

const streamOps = { CREATE: 'stream.create', UPDATE: 'stream.update', INFO: 'stream.info', DELETE: 'stream.delete', PURGE: 'stream.purge' } as const;

/** Parses `$JS.API.…` (reference §4.3); undefined for anything that is not a request this API knows. */
export function parseApiSubject(subject: string): ApiRequest | undefined {
  if (!subject.startsWith(apiPrefix)) return undefined;
  const t = subject.slice(apiPrefix.length).split('.');
  if (t.some((x) => x === '')) return undefined;
  const [a, b, c, d] = t;
  if (a === 'INFO' && t.length === 1) return { kind: 'info' };
  if (a === 'STREAM') {
    if ((b === 'NAMES' || b === 'LIST') && t.length === 2) return { kind: b === 'NAMES' ? 'stream.names' : 'stream.list' };
    if (b !== undefined && b in streamOps && t.length === 3) return { kind: streamOps[b as keyof typeof streamOps], stream: c! };
    if (b === 'MSG' && (c === 'GET' || c === 'DELETE') && t.length === 4) return { kind: c === 'GET' ? 'stream.msg.get' : 'stream.msg.delete', stream: d! };
    return undefined;
  }
  if (a === 'DIRECT' && b === 'GET' && t.length >= 3) return { kind: 'direct.get', stream: c!, subject: t.length > 3 ? t.slice(3).join('.') : undefined };
  if (a !== 'CONSUMER') return undefined;
  if (b === 'CREATE' && t.length >= 3) {
    return { kind: 'consumer.create', stream: c!, name: d, filter: t.length > 4 ? t.slice(4).join('.') : undefined };
  }
  if (b === 'DURABLE' && c === 'CREATE' && t.length === 5) return { kind: 'consumer.durable.create', stream: d!, name: t[4]! };
  if ((b === 'INFO' || b === 'DELETE') && t.length === 4) return { kind: b === 'INFO' ? 'consumer.info' : 'consumer.delete', stream: c!, name: d! };
  if ((b === 'NAMES' || b === 'LIST') && t.length === 3) return { kind: b === 'NAMES' ? 'consumer.names' : 'consumer.list', stream: c! };
  return undefined;
}

/** The `type` every API response carries (nats.js's lister counts results by it). */
export function responseType(kind: ApiRequest['kind']): string {
  const names: Record<ApiRequest['kind'], string> = {
    info: 'account_info', 'stream.names': 'stream_names', 'stream.list': 'stream_list', 'stream.create': 'stream_create',
    'stream.update': 'stream_update', 'stream.info': 'stream_info', 'stream.delete': 'stream_delete', 'stream.purge': 'stream_purge',
    'stream.msg.get': 'stream_msg_get', 'stream.msg.delete': 'stream_msg_delete', 'direct.get': 'stream_msg_get',
    'consumer.create': 'consumer_create', 'consumer.durable.create': 'consumer_create', 'consumer.info': 'consumer_info',
    'consumer.delete': 'consumer_delete', 'consumer.names': 'consumer_names', 'consumer.list': 'consumer_list',
  };
  return `io.nats.jetstream.api.v1.${names[kind]}_response`;
}
