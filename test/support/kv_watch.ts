// Following a KV bucket with the standard @nats-io/kv watch, as an application does: the live keys and every
// operation seen, with its time (join/leave as put/delete in `ub_services`).
import type { KV, KvEntry } from '@nats-io/kv';

export interface FollowedKeys {
  readonly live: Set<string>;
  readonly ops: { key: string; op: string; at: number }[];
  stop(): void;
}

export async function followKeys(kv: KV): Promise<FollowedKeys> {
  const live = new Set<string>();
  const ops: { key: string; op: string; at: number }[] = [];
  const w = await kv.watch();
  void (async () => {
    for await (const e of w as AsyncIterable<KvEntry>) {
      ops.push({ key: e.key, op: e.operation, at: Date.now() });
      if (e.operation === 'PUT') live.add(e.key);
      else live.delete(e.key);
    }
  })();
  return { live, ops, stop: () => w.stop() };
}
