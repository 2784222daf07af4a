// The $JS.API stream requests of a KV bucket's stream: ACCOUNT INFO, STREAM.CREATE / DELETE / PURGE / NAMES / LIST /
// INFO / UPDATE / MSG.GET / MSG.DELETE, answered from the backend's applied state or proposed as one replicated
// command each. The dispatcher (jetstream_api.ts) has already parsed the body and run the read barrier.
import type { KvCommand } from '../../store/index.js';
import { type ApiContext, type Fail, type Ok, pageStreamList, pageStreamNames } from './api_context.js';
import { entryHeaderFields } from './consumers.js';
import { jsErrors } from './errors.js';
import { findMessage, parseGetQuery } from './message_get.js';
import { resultError } from './publish_command.js';
import { bucketOverlaps, parseStreamCreate, streamConfig, streamState } from './streams.js';
import { bucketOfStream, encodeHeaders, kvPrefix, rfc3339, streamPrefix, type ApiRequest } from './wire.js';

/** Counts only what the caller may see: a hidden bucket (and its consumers) must not show even as a number. */
export function accountInfo(
  ctx: ApiContext, api: { readonly total: number; readonly errors: number }, hidden?: (bucket: string) => boolean,
): Record<string, unknown> {
  const r = ctx.backend.reader;
  let storage = 0;
  const names = r.bucketNames().filter((n) => hidden?.(n) !== true);
  for (const n of names) storage += r.bucketInfo(n)?.bytes ?? 0;
  let consumers = 0;
  for (const n of names) consumers += ctx.consumers.countFor(n);
  return {
    memory: 0, storage, streams: names.length, consumers,
    limits: {
      max_memory: -1, max_storage: -1, max_streams: -1, max_consumers: -1, max_ack_pending: -1,
      memory_max_stream_bytes: -1, storage_max_stream_bytes: -1, max_bytes_required: false,
    },
    api: { total: api.total, errors: api.errors },
  };
}

export function streamInfo(ctx: ApiContext, bucket: string): Record<string, unknown> | undefined {
  const info = ctx.backend.reader.bucketInfo(bucket);
  if (info === undefined) return undefined;
  const cluster = ctx.clusterInfo?.();
  return {
    config: streamConfig(bucket, info, ctx.view),
    created: rfc3339(info.created),
    state: streamState(ctx.backend.reader, info, ctx.consumers.countFor(bucket)),
    // nats-server omits `cluster` for a stream on a single server.
    ...(cluster === undefined ? {} : { cluster }),
  };
}

/**
 * STREAM.PURGE as nats-server 2.9 answers it: `filter` (a subject of the stream), `seq` (purge below it) or
 * `keep` (keep the newest N matching), replicated as one entry so every node drops the same entries.
 */
export async function streamPurge(ctx: ApiContext, stream: string, body: unknown, ok: Ok, fail: Fail): Promise<void> {
  const bucket = bucketOfStream(stream);
  const info = bucket === undefined ? undefined : ctx.backend.reader.bucketInfo(bucket);
  if (bucket === undefined || info === undefined) return fail(jsErrors.streamNotFound());
  if (ctx.view.readOnly(bucket)) return fail(jsErrors.streamSealed(bucket));
  if (streamConfig(bucket, info, ctx.view).deny_purge === true) return fail(jsErrors.streamPurge('stream purge not permitted'));
  const o = (typeof body === 'object' && body !== null && !Array.isArray(body) ? body : {}) as Record<string, unknown>;
  const uint = (v: unknown): v is number | undefined => v === undefined || (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0);
  if (!uint(o.seq) || !uint(o.keep) || (o.filter !== undefined && typeof o.filter !== 'string')) return fail(jsErrors.badRequest());
  if ((o.seq ?? 0) > 0 && (o.keep ?? 0) > 0) return fail(jsErrors.badRequest());
  let subject: string | undefined;
  if (typeof o.filter === 'string' && o.filter !== '') {
    const prefix = `${kvPrefix}${bucket}.`;
    if (!o.filter.startsWith(prefix) || o.filter.length === prefix.length) return fail(jsErrors.badRequest('filter must be a subject of the stream ($KV.<bucket>.<key pattern>)'));
    subject = o.filter.slice(prefix.length);
  }
  const cmd: KvCommand = {
    op: 'bucket.purge', bucket, ts: Date.now(),
    ...(subject === undefined ? {} : { subject }), ...(o.seq ? { seq: o.seq } : {}), ...(o.keep ? { keep: o.keep } : {}),
  };
  const r = await ctx.propose(cmd);
  if ('err_code' in r) return fail(r);
  if (!r.ok) return fail(resultError(r));
  if (r.kind !== 'purge') return fail(jsErrors.streamGeneral(`unexpected ${r.kind} result`));
  ok({ success: true, purged: r.purged });
}

export async function streamCreate(ctx: ApiContext, stream: string, body: unknown, ok: Ok, fail: Fail): Promise<void> {
  const parsed = parseStreamCreate(stream, body ?? {}, ctx.streamLimits);
  if ('err_code' in parsed) return fail(parsed);
  if (ctx.view.readOnly(parsed.bucket)) return fail(jsErrors.streamSealed(parsed.bucket));
  const r = await ctx.propose({ op: 'bucket.create', bucket: parsed.bucket, config: parsed.config, ts: Date.now() });
  if ('err_code' in r) return fail(r);
  if (!r.ok) return fail(resultError(r));
  const info = streamInfo(ctx, parsed.bucket);
  if (info === undefined || r.kind !== 'bucket.create') return fail(jsErrors.streamNotFound());
  ok(r.created ? { ...info, did_create: true } : info);
}

export async function streamDelete(ctx: ApiContext, stream: string, ok: Ok, fail: Fail): Promise<void> {
  const bucket = bucketOfStream(stream);
  if (bucket === undefined) return fail(jsErrors.streamNotFound());
  if (ctx.view.readOnly(bucket)) return fail(jsErrors.streamSealed(bucket));
  const r = await ctx.propose({ op: 'bucket.delete', bucket, ts: Date.now() });
  if ('err_code' in r) return fail(r);
  if (!r.ok) return fail(resultError(r));
  ctx.consumers.deleteBucket(bucket);
  ok({ success: true });
}

export function streamList(ctx: ApiContext, namesOnly: boolean, body: unknown, ok: Ok, fail: Fail, hidden?: (bucket: string) => boolean): void {
  const o = (typeof body === 'object' && body !== null && !Array.isArray(body) ? body : {}) as Record<string, unknown>;
  const offset = typeof o.offset === 'number' && Number.isSafeInteger(o.offset) && o.offset > 0 ? o.offset : 0;
  if (o.subject !== undefined && typeof o.subject !== 'string') return fail(jsErrors.badRequest('subject must be a string'));
  const filter = o.subject as string | undefined;
  const buckets = ctx.backend.reader.bucketNames()
    .filter((b) => (filter === undefined || filter === '' || bucketOverlaps(b, filter)) && hidden?.(b) !== true);
  const limit = namesOnly ? pageStreamNames : pageStreamList;
  const page = buckets.slice(offset, offset + limit);
  const streams = namesOnly ? page.map((b) => `${streamPrefix}${b}`) : page.map((b) => streamInfo(ctx, b)).filter((x) => x !== undefined);
  ok({ total: buckets.length, offset, limit, streams });
}

export function streamRequest(ctx: ApiContext, req: Extract<ApiRequest, { stream: string }>, body: unknown, ok: Ok, fail: Fail): void {
  const bucket = bucketOfStream(req.stream);
  if (bucket === undefined || !ctx.backend.reader.hasBucket(bucket)) return fail(jsErrors.streamNotFound());
  // The stream info (its state counts every key and entry) only for the requests that answer with it: a KV get
  // (STREAM.MSG.GET) built it for nothing and spent 2 ms of the leader's CPU per get on a 10k-key bucket.
  const withInfo = req.kind === 'stream.info' || req.kind === 'stream.update';
  const info = withInfo ? streamInfo(ctx, bucket) : undefined;
  if (withInfo && info === undefined) return fail(jsErrors.streamNotFound());
  switch (req.kind) {
    case 'stream.info':
      return ok({ total: 0, offset: 0, limit: 0, ...info });
    case 'stream.update': {
      const parsed = parseStreamCreate(req.stream, body ?? {}, ctx.streamLimits);
      if ('err_code' in parsed) return fail(parsed);
      // An update to the very config the stream has is accepted (nats.go's KV create sends one when the
      // configs differ only in their discard policy); any real change is not supported.
      if (JSON.stringify(parsed.stream) === JSON.stringify(info!.config)) return ok(info!);
      return fail(jsErrors.streamUpdate('changing a KV bucket configuration is not supported by membershipd; create a new bucket'));
    }
    case 'stream.msg.delete':
      if (ctx.view.readOnly(bucket)) return fail(jsErrors.streamSealed(bucket));
      return fail(jsErrors.messageDeleteFailed('message delete not permitted (deny_delete); delete or purge the key instead'));
    case 'stream.msg.get': {
      const q = parseGetQuery(body ?? {});
      if (typeof q === 'string') return fail(jsErrors.badRequest());
      const e = findMessage(ctx.backend.reader, bucket, q);
      if (e === undefined) return fail(jsErrors.noMessageFound());
      const hdrs = entryHeaderFields(e);
      const message: Record<string, unknown> = { subject: `${kvPrefix}${bucket}.${e.key}`, seq: e.revision };
      if (hdrs.length > 0) message.hdrs = Buffer.from(encodeHeaders(hdrs)).toString('base64');
      if (e.value.length > 0) message.data = Buffer.from(e.value).toString('base64');
      message.time = rfc3339(e.ts);
      return ok({ message });
    }
    default:
      return fail(jsErrors.badRequest());
  }
}
