// Which stored entry a STREAM.MSG.GET or DIRECT.GET names: the request body's query (seq, last_by_subj,
// next_by_subj, as nats-server's JSApiMsgGetRequest) and its lookup in a bucket's retained entries. Both the $JS.API
// get (stream_requests.ts) and the direct get (jetstream_api.ts) answer from here, so they find the same entry.
import type { KvEntry } from '../../store/index.js';
import { subjectMatches } from '../nats/index.js';
import type { KvReader } from './backend.js';
import { hasWildcard, kvPrefix, parseKvSubject } from './wire.js';

export type Query = { seq?: number; last_by_subj?: string; next_by_subj?: string };

/** Validates a MSG.GET / DIRECT.GET body. */
export function parseGetQuery(body: unknown): Query | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'Bad Request';
  const o = body as Record<string, unknown>;
  const q: Query = {};
  if (o.seq !== undefined) {
    if (typeof o.seq !== 'number' || !Number.isSafeInteger(o.seq) || o.seq < 0) return 'Bad Request';
    q.seq = o.seq;
  }
  for (const k of ['last_by_subj', 'next_by_subj'] as const) {
    if (o[k] === undefined) continue;
    if (typeof o[k] !== 'string' || o[k] === '') return 'Bad Request';
    q[k] = o[k];
  }
  if (q.last_by_subj !== undefined && (q.next_by_subj !== undefined || q.seq !== undefined)) return 'Bad Request';
  if (q.last_by_subj === undefined && q.next_by_subj === undefined && (q.seq === undefined || q.seq === 0)) return 'Empty Request';
  return q;
}

/** The entry a get query names, from the bucket's retained entries. */
export function findMessage(r: KvReader, bucket: string, q: Query): KvEntry | undefined {
  const subjectOf = (e: KvEntry) => `${kvPrefix}${bucket}.${e.key}`;
  if (q.last_by_subj !== undefined) {
    const s = q.last_by_subj;
    if (!hasWildcard(s)) {
      const kv = parseKvSubject(s);
      return kv === undefined || kv.bucket !== bucket ? undefined : r.get(bucket, kv.key);
    }
    const all = r.changesSince(0, bucket).filter((e) => subjectMatches(s, subjectOf(e)));
    return all[all.length - 1];
  }
  const from = Math.max(0, (q.seq ?? 1) - 1);
  if (q.next_by_subj !== undefined) {
    const s = q.next_by_subj;
    return r.changesSince(from, bucket).find((e) => subjectMatches(s, subjectOf(e)));
  }
  const e = r.changesSince(from, bucket, 1)[0];
  return e !== undefined && e.revision === q.seq ? e : undefined;
}
