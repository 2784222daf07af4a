// The $JS.API consumer requests: CONSUMER.CREATE (ephemeral push consumers only, their deliver subject checked
// against the creator's publish permissions), INFO, DELETE, NAMES and LIST, on the node's ConsumerRegistry.
import { randomBytes } from 'node:crypto';
import type { Permissions } from '../auth/index.js';
import { type ApiContext, type Fail, type Ok, pageStreamList, pageStreamNames } from './api_context.js';
import { parseConsumerCreate } from './consumer_spec.js';
import { jsErrors } from './errors.js';
import { bucketOfStream, type ApiRequest } from './wire.js';

export function consumerRequest(ctx: ApiContext, req: Extract<ApiRequest, { stream: string }>, body: unknown, ok: Ok, fail: Fail, perms?: Permissions): void {
  const bucket = bucketOfStream(req.stream);
  if (bucket === undefined || !ctx.backend.reader.hasBucket(bucket)) return fail(jsErrors.streamNotFound());
  const server = ctx.serverName;
  switch (req.kind) {
    case 'consumer.create': {
      if (!ctx.pushDelivery) {
        return fail(jsErrors.consumerCreate('push consumers (KV watch/keys/history) need the NATS server\'s deliverAs seam, which this build lacks'));
      }
      const spec = parseConsumerCreate(req.stream, bucket, body, req.name, req.filter, newConsumerName, ctx.consumers.limits);
      if ('err_code' in spec) return fail(spec);
      // The consumer publishes into its deliver subject on its creator's behalf, so the creator must be allowed to
      // publish there: otherwise a KV user could have the server push bucket entries onto any subject (another
      // application's command subject, another user's inbox). A user's own inbox (`_INBOX_<user>.>`) is
      // publishable to its owner; the shared `_INBOX.` is not unless a role grants it.
      if (perms !== undefined && !perms.canPublish(spec.deliverSubject)) {
        return fail(jsErrors.consumerCreate(`deliver subject ${spec.deliverSubject} is not one you may publish to; connect with your private inbox prefix (_INBOX_<user>) or get a publish grant for it`));
      }
      const c = ctx.consumers.create(spec);
      if ('err_code' in c) return fail(c);
      return ok(c.info(server));
    }
    case 'consumer.info':
    case 'consumer.delete': {
      const c = ctx.consumers.get(req.stream, req.name);
      if (c === undefined) return fail(jsErrors.consumerNotFound());
      if (req.kind === 'consumer.info') return ok(c.info(server));
      ctx.consumers.delete(c);
      return ok({ success: true });
    }
    case 'consumer.names':
    case 'consumer.list': {
      const o = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
      const offset = typeof o.offset === 'number' && Number.isSafeInteger(o.offset) && o.offset > 0 ? o.offset : 0;
      const all = ctx.consumers.list(req.stream);
      const limit = req.kind === 'consumer.names' ? pageStreamNames : pageStreamList;
      const page = all.slice(offset, offset + limit);
      const consumers = req.kind === 'consumer.names' ? page.map((c) => c.spec.name) : page.map((c) => c.info(server));
      return ok({ total: all.length, offset, limit, consumers });
    }
    default:
      return fail(jsErrors.badRequest());
  }
}

function newConsumerName(): string {
  // nats-server names ephemerals with 8 random characters.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(8);
  let s = '';
  for (const b of bytes) s += alphabet[b % alphabet.length];
  return s;
}
