// `membershipd snapshot save` on the node side: $UB.API.SNAPSHOT.SAVE takes a consistent image and keeps it in
// memory for a short while; $UB.API.SNAPSHOT.CHUNK hands it out in pieces that fit a NATS message.
//
// Consistency: node.read() is a ReadIndex barrier (Raft thesis §6.4), so the state machine it returns reflects
// every write committed before the request; the image and its index are then taken synchronously, in one turn of
// the event loop, so nothing is applied in between: the file is the state at exactly `index`. Writes go on
// meanwhile (the image is a copy), and taking it does not touch the Raft log.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { encodeBackup, type BackupBucketCount } from '../../store/index.js';
import type { ClusterNode } from '../node/index.js';
import { AdminError } from './admin_request.js';
import type { ControlApi } from './api.js';

/** Raw bytes per chunk: base64 in a JSON reply makes 512 KiB about 700 KB, under the 1 MiB max_payload. */
export const snapshotChunkBytes = 512 * 1024;
/** Images kept at once; another save is refused until one is fetched or expires (each is a full copy in memory). */
const imagesMax = 2;
/** An image not asked for a chunk for this long is dropped (a CLI that died half-way). */
const imageIdleMs = 60_000;

interface HeldImage {
  readonly file: Buffer;
  expires: number;
}

export interface SnapshotApi {
  stop(): void;
}

export function registerSnapshotApi(api: ControlApi, node: ClusterNode, logger: Logger, version: string): SnapshotApi {
  const images = new Map<string, HeldImage>();
  const sweep = (): void => {
    const now = Date.now();
    for (const [id, img] of images) if (img.expires <= now) images.delete(id);
  };
  const timer = setInterval(sweep, imageIdleMs / 4);
  timer.unref();

  const unSave = api.register('SNAPSHOT', 'SAVE', async (_body, ctx) => {
    sweep();
    if (images.size >= imagesMax) throw new AdminError('unavailable', `${images.size} snapshots are being fetched from ${node.serverName} already; retry in a minute`);
    let sm: Awaited<ReturnType<ClusterNode['kv']['read']>>;
    try {
      sm = await node.kv.read();
    } catch (err) {
      // Without a quorum there is no linearizable point to take the image at; a stale one would not be a backup.
      throw new AdminError('unavailable', `${node.serverName} cannot confirm the latest committed state (${err instanceof Error ? err.message : String(err)}); check /healthz for a quorum and run snapshot save again`);
    }
    // From here to encodeBackup: no await, so the image, its index and the bucket counts are one state.
    const index = sm.appliedIndex;
    const body = sm.snapshot();
    const buckets: BackupBucketCount[] = sm.bucketNames().map((name) => {
      const b = sm.bucketInfo(name)!;
      return { name, keys: sm.keys(name).length, values: b.values, bytes: b.bytes };
    });
    const raft = node.status.raftz();
    const conf = node.membership.current() ?? { voters: [], learners: [] };
    const file = encodeBackup({
      cluster: node.clusterName, index, term: typeof raft['term'] === 'number' ? raft['term'] : 0, time: new Date().toISOString(),
      via: node.serverName, membershipdVersion: version,
      conf: { voters: conf.voters, learners: conf.learners, slots: node.slots().map((s) => ({ id: s.id, address: s.address, name: s.name ?? null })) },
      buckets,
    }, body);
    const id = randomBytes(12).toString('hex');
    images.set(id, { file, expires: Date.now() + imageIdleMs });
    logger.info({ who: ctx.who, index, bytes: file.length }, 'snapshot taken for an online backup');
    return { id, index, bytes: file.length, chunkBytes: snapshotChunkBytes, chunks: Math.ceil(file.length / snapshotChunkBytes) };
  });

  const unChunk = api.register('SNAPSHOT', 'CHUNK', async (body) => {
    const id = body['id'];
    const n = body['n'];
    if (typeof id !== 'string' || !Number.isSafeInteger(n) || (n as number) < 0) throw new AdminError('bad_request', '"id" (string) and "n" (chunk number from 0) are required');
    const img = images.get(id);
    if (img === undefined) throw new AdminError('not_found', `snapshot ${id} is not held by ${node.serverName} (expired after ${imageIdleMs / 1000} s idle, or taken on another node); run snapshot save again`);
    const start = (n as number) * snapshotChunkBytes;
    if (start >= img.file.length) throw new AdminError('bad_request', `chunk ${String(n)} is past the end (${Math.ceil(img.file.length / snapshotChunkBytes)} chunks)`);
    const end = Math.min(img.file.length, start + snapshotChunkBytes);
    img.expires = Date.now() + imageIdleMs;
    // The last chunk releases the image: a client that needs it again saves again.
    if (end === img.file.length) images.delete(id);
    return { id, n, offset: start, data: img.file.subarray(start, end).toString('base64') };
  });

  return {
    stop() {
      clearInterval(timer);
      unSave();
      unChunk();
      images.clear();
    },
  };
}
