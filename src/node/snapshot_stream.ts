// Snapshots streamed beside Raft, as etcd does: Raft's snapshot message carries only the metadata and a reference
// (store's snapshotRefData; raftStorageView hands Raft that instead of the image), and the snapshot file travels on
// the route as bounded chunks (transport's snap_chunk / snap_ack frames) with a window of unacknowledged bytes, so a
// slow follower or a backed-up TLS socket holds the sender back and no buffer ever holds the whole state.
//
// Leader: the driver hands every outgoing MsgSnap to offer(). A transfer to that peer of the same snapshot already
// running (Raft resends its MsgSnap every two heartbeat answers) is left alone; otherwise one starts, reading the
// file in chunkBytes pieces. Follower: chunks are checked (a CRC-32 each) and written to a temporary file in store/;
// when the last is in and the file's record CRC checks, the MsgSnap is delivered to Raft as if it had arrived in a
// raft frame, and the driver's Ready handling adopts the file (RaftStorage.applySnapshot) and restores from it.
//
// A broken link, a leader change, a refused chunk or a silent peer abandons the transfer (the receiver's file is
// removed); nothing resumes it in place: Raft's own probe/resend offers the MsgSnap again and a new transfer starts
// from offset 0. Restarting costs the bytes already sent, but needs no state that survives a link or a leader.
import { randomInt } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { MessageType, type Message } from '../../raft/index.js';
import type { RaftStorage } from '../../store/index.js';
import type { RouteFrame } from '../../transport/index.js';
import type { Logger } from '../log.js';
import type { Sample } from './metrics.js';
import { SnapshotStaging } from './staged_restore.js';
import { decodeNodeFrame, encodeMessage } from './wire.js';

type SnapChunkFrame = Extract<RouteFrame, { kind: 'snap_chunk' }>;
type SnapAckFrame = Extract<RouteFrame, { kind: 'snap_ack' }>;
type StreamStorage = Pick<RaftStorage, 'openSnapshotFile' | 'beginSnapshotReceive'>;
type FileReader = Awaited<ReturnType<RaftStorage['openSnapshotFile']>>;
type IncomingFile = Awaited<ReturnType<RaftStorage['beginSnapshotReceive']>>;

export interface SnapshotStreamOptions {
  readonly storage: StreamStorage;
  /** Queues a frame for a peer; false when the peer is not up. */
  readonly send: (peer: string, frame: RouteFrame) => boolean;
  /** Steps the Raft message a complete transfer carries, as if `peer` had sent it in a raft frame. */
  readonly deliver: (peer: string, messageData: unknown) => void;
  /**
   * Leader: the transfer of MsgSnap `m` was abandoned (etcd's ReportSnapshot failure): Raft probes the follower again
   * and offers the then-newest snapshot, so a transfer never restarts with a snapshot the store no longer keeps.
   */
  readonly reportFailure?: (m: Message) => void;
  readonly log: Logger;
  /** Bytes read, sent and written as one chunk (at most transport's snapChunkBytesMax). */
  readonly chunkBytes?: number;
  /** Bytes sent and not yet acknowledged, per transfer: the flow-control window. */
  readonly windowBytes?: number;
  /** A transfer whose peer acknowledged nothing for this long is abandoned (and restarted by Raft's resend). */
  readonly idleMs?: number;
  /** Follower: where received pieces are parsed as they arrive (staged_restore.ts); default the storage's. */
  readonly staging?: SnapshotStaging;
}

export const snapshotChunkBytesDefault = 1 << 20;
export const snapshotWindowBytesDefault = 4 << 20;
export const snapshotIdleMsDefault = 10_000;

interface Outgoing {
  readonly peer: string;
  readonly transfer: number;
  readonly index: number;
  readonly term: number;
  readonly message: unknown;
  readonly raftMessage: Message;
  reader: FileReader | undefined;
  /** One chunk's worth, reused: send() copies a chunk into its frame before the next read. */
  readBuffer: Buffer | undefined;
  total: number;
  sent: number;
  acked: number;
  pumping: boolean;
  ended: boolean;
  idle: NodeJS.Timeout | undefined;
}

interface Incoming {
  readonly peer: string;
  readonly transfer: number;
  readonly message: unknown;
  readonly total: number;
  readonly file: Promise<IncomingFile>;
  /** Chunks are written one after the other: each waits for the previous write. */
  chain: Promise<void>;
  received: number;
  ended: boolean;
}

/** Counters for /metrics (membershipd_snapshot_stream_*). */
export interface SnapshotStreamCounters {
  transfersStarted: number;
  transfersCompleted: number;
  transfersAbandoned: number;
  chunksSent: number;
  bytesSent: number;
  chunksReceived: number;
  bytesReceived: number;
  chunksRefused: number;
}

export class SnapshotStream {
  readonly counters: SnapshotStreamCounters = {
    transfersStarted: 0, transfersCompleted: 0, transfersAbandoned: 0, chunksSent: 0, bytesSent: 0, chunksReceived: 0, bytesReceived: 0, chunksRefused: 0,
  };
  private readonly opts: SnapshotStreamOptions;
  private readonly chunkBytes: number;
  private readonly windowBytes: number;
  private readonly idleMs: number;
  private readonly outgoing = new Map<string, Outgoing>();
  /** Per peer, the snapshot last delivered complete: Raft's resends of it while the follower installs are not new transfers. */
  private readonly delivered = new Map<string, { index: number; term: number; at: number }>();
  private incoming: Incoming | undefined;
  private readonly staging: SnapshotStaging;

  constructor(opts: SnapshotStreamOptions) {
    this.opts = opts;
    this.staging = opts.staging ?? new SnapshotStaging(opts.log);
    this.chunkBytes = Math.max(1024, opts.chunkBytes ?? snapshotChunkBytesDefault);
    this.windowBytes = Math.max(this.chunkBytes, opts.windowBytes ?? snapshotWindowBytesDefault);
    this.idleMs = opts.idleMs ?? snapshotIdleMsDefault;
  }

  /** Leader: Raft sends `m` (a MsgSnap) to `peer`. */
  offer(peer: string, m: Message): void {
    const meta = m.snapshot?.meta;
    if (m.type !== MessageType.snap || meta === undefined) return;
    const cur = this.outgoing.get(peer);
    if (cur !== undefined && cur.index === meta.index && cur.term === meta.term) return;
    const done = this.delivered.get(peer);
    if (done !== undefined && done.index === meta.index && done.term === meta.term && Date.now() - done.at < this.idleMs) return;
    // Not reported to Raft: Raft itself sent the newer one, and its progress is already that transfer's.
    if (cur !== undefined) this.abandonOutgoing(cur, `a newer snapshot (${meta.index}) replaces it`, false);
    const o: Outgoing = {
      // The id stays within a u32, which the transport's plain frame encoder writes without msgpackr.
      peer, transfer: randomInt(1, 2 ** 32), index: meta.index, term: meta.term, message: encodeMessage(m), raftMessage: m,
      reader: undefined, readBuffer: undefined, total: 0, sent: 0, acked: 0, pumping: false, ended: false, idle: undefined,
    };
    this.outgoing.set(peer, o);
    this.counters.transfersStarted++;
    this.armIdle(o);
    void this.pump(o);
  }

  /** Handles a snap_chunk or snap_ack frame; false for any other kind. */
  onFrame(peer: string, frame: RouteFrame): boolean {
    if (frame.kind === 'snap_chunk') this.onChunk(peer, frame);
    else if (frame.kind === 'snap_ack') this.onAck(peer, frame);
    else return false;
    return true;
  }

  /** The link to `peer` went down: its transfers in both directions are over. */
  peerDown(peer: string): void {
    const o = this.outgoing.get(peer);
    if (o !== undefined) this.abandonOutgoing(o, 'the link went down');
    if (this.incoming?.peer === peer) this.abandonIncoming(this.incoming, 'the link went down');
  }

  /** This node stopped leading: what it was sending is no longer the leader's snapshot to send. */
  leaderLost(): void {
    for (const o of [...this.outgoing.values()]) this.abandonOutgoing(o, 'this node is no longer the leader');
  }

  /** Leader: bytes `peer` acknowledged of the snapshot being sent to it, and its size (undefined: none). */
  sending(peer: string): { ackedBytes: number; totalBytes: number } | undefined {
    const o = this.outgoing.get(peer);
    return o === undefined || o.total === 0 ? undefined : { ackedBytes: o.acked, totalBytes: o.total };
  }

  /** Follower: installs served by a parse done while the snapshot was received, and stagings dropped (staged_restore.ts). */
  get stagingCounts(): { readonly installed: number; readonly dropped: number } {
    return this.staging.counts;
  }

  /** Follower: bytes written of the snapshot being received, and its size (0, 0: none). */
  receiving(): { received: number; total: number } {
    const i = this.incoming;
    return i === undefined ? { received: 0, total: 0 } : { received: i.received, total: i.total };
  }

  /** Ends every transfer (the node stops); waits for the receiving file to be removed. */
  async close(): Promise<void> {
    this.leaderLost();
    const i = this.incoming;
    if (i !== undefined) this.abandonIncoming(i, 'the node is stopping');
    await i?.chain;
  }

  // ---- leader side ----

  /** Reads and sends chunks while the window has room; re-entered on every acknowledgement. */
  private async pump(o: Outgoing): Promise<void> {
    if (o.pumping || o.ended) return;
    o.pumping = true;
    try {
      o.reader ??= await this.opts.storage.openSnapshotFile(o.index, o.term);
      o.total = o.reader.bytes;
      if (o.ended) return;
      // Bounded by the window: at most windowBytes / chunkBytes iterations per call.
      while (!o.ended && o.sent < o.total && o.sent - o.acked < this.windowBytes) {
        const offset = o.sent;
        const data = await o.reader.read(offset, this.chunkBytes, (o.readBuffer ??= Buffer.allocUnsafe(this.chunkBytes)));
        if (o.ended) return;
        // zlib's CRC-32, not the store's crc32c: native, ~6x faster than the JS crc32c, and this runs on the leader's
        // event loop, which every write goes through (the file's own record CRC is still checked end to end).
        const frame: SnapChunkFrame = { kind: 'snap_chunk', transfer: o.transfer, offset, total: o.total, crc: crc32(data), data, message: o.message };
        if (!this.opts.send(o.peer, frame)) return this.abandonOutgoing(o, 'the peer is not connected');
        o.sent += data.length;
        this.counters.chunksSent++;
        this.counters.bytesSent += data.length;
      }
    } catch (err) {
      this.opts.log.warn({ err, peer: o.peer, index: o.index }, 'snapshot transfer: reading the snapshot file failed; Raft will offer the snapshot again');
      this.abandonOutgoing(o, 'reading the snapshot file failed');
    } finally {
      o.pumping = false;
    }
    if (!o.ended && o.sent < o.total && o.sent - o.acked < this.windowBytes) void this.pump(o);
  }

  private onAck(peer: string, f: SnapAckFrame): void {
    const o = this.outgoing.get(peer);
    if (o === undefined || o.transfer !== f.transfer) return;
    if (f.refused !== '') return this.abandonOutgoing(o, `the follower refused it: ${f.refused}`);
    if (f.received > o.sent) return this.abandonOutgoing(o, `the follower acknowledged ${f.received} bytes of ${o.sent} sent`);
    o.acked = Math.max(o.acked, f.received);
    this.armIdle(o);
    if (o.acked === o.total) {
      this.delivered.set(peer, { index: o.index, term: o.term, at: Date.now() });
      this.counters.transfersCompleted++;
      this.opts.log.info({ peer, index: o.index, bytes: o.total }, 'snapshot transfer complete');
      this.endOutgoing(o);
      return;
    }
    void this.pump(o);
  }

  private armIdle(o: Outgoing): void {
    if (o.idle !== undefined) {
      o.idle.refresh();
      return;
    }
    o.idle = setTimeout(() => this.abandonOutgoing(o, `no acknowledgement for ${this.idleMs} ms`), this.idleMs);
    o.idle.unref();
  }

  private abandonOutgoing(o: Outgoing, why: string, report = true): void {
    if (o.ended) return;
    this.counters.transfersAbandoned++;
    this.opts.log.info({ peer: o.peer, index: o.index, acked: o.acked, total: o.total, why }, 'snapshot transfer abandoned; Raft\'s resend starts a new one');
    this.endOutgoing(o);
    if (report) this.opts.reportFailure?.(o.raftMessage);
  }

  private endOutgoing(o: Outgoing): void {
    o.ended = true;
    if (o.idle !== undefined) clearTimeout(o.idle);
    if (this.outgoing.get(o.peer) === o) this.outgoing.delete(o.peer);
    const reader = o.reader;
    o.reader = undefined;
    // While a read is in flight pump() still holds the reader: it closes once that read returns (ended is set).
    if (reader !== undefined) void reader.close().catch(() => undefined);
  }

  // ---- follower side ----

  private onChunk(peer: string, f: SnapChunkFrame): void {
    let i = this.incoming;
    if (i === undefined || i.peer !== peer || i.transfer !== f.transfer) {
      if (f.offset !== 0) {
        // A piece of a transfer this node no longer has (it was abandoned here): the sender gives it up too.
        this.ack(peer, f.transfer, 0, 'no such transfer here (abandoned or restarted)');
        return;
      }
      const d = decodeNodeFrame(f.message);
      const meta = typeof d === 'string' || d.kind !== 'raft' ? undefined : d.message.snapshot?.meta;
      if (meta === undefined) {
        this.ack(peer, f.transfer, 0, 'the transfer does not carry a Raft snapshot message');
        return;
      }
      if (i !== undefined) this.abandonIncoming(i, `a new transfer from ${peer} replaces it`);
      i = this.incoming = {
        peer, transfer: f.transfer, message: f.message, total: f.total, received: 0, ended: false,
        file: this.opts.storage.beginSnapshotReceive(meta.index, meta.term, f.total, f.transfer), chain: Promise.resolve(),
      };
      this.staging.begin(f.transfer, meta.index, meta.term, f.total);
    }
    const t = i;
    t.chain = t.chain.then(() => this.writeChunk(t, f)).catch((err: unknown) => {
      this.counters.chunksRefused++;
      this.ack(peer, f.transfer, t.received, (err as Error).message);
      this.abandonIncoming(t, (err as Error).message);
    });
  }

  private async writeChunk(i: Incoming, f: SnapChunkFrame): Promise<void> {
    if (i.ended) return;
    if (f.total !== i.total) throw new Error(`chunk says the snapshot is ${f.total} bytes, the transfer began with ${i.total}`);
    if (crc32(f.data) !== f.crc) throw new Error(`chunk at ${f.offset} fails its checksum`);
    const file = await i.file;
    // The piece is parsed into the staged state (staged_restore.ts) while the write runs in libuv's pool.
    const writing = file.write(f.offset, f.data);
    this.staging.add(i.transfer, f.offset, f.data);
    await writing;
    // Replaced while its piece was being written (a newer snapshot's transfer began): it must not reach Raft, or the
    // install of this older snapshot takes the newer transfer's staging and both read their files (rejoin.test.ts).
    if (i.ended) return;
    i.received = file.bytesReceived;
    this.counters.chunksReceived++;
    this.counters.bytesReceived += f.data.length;
    if (i.received === i.total) {
      await file.finish();
      i.ended = true;
      if (this.incoming === i) this.incoming = undefined;
      // Stepped before the last acknowledgement: by the time the leader hears "complete", Raft here has the snapshot.
      this.opts.deliver(i.peer, i.message);
    }
    this.ack(i.peer, i.transfer, i.received, '');
  }

  private ack(peer: string, transfer: number, received: number, refused: string): void {
    this.opts.send(peer, { kind: 'snap_ack', transfer, received, refused });
  }

  private abandonIncoming(i: Incoming, why: string): void {
    if (i.ended) return;
    i.ended = true;
    if (this.incoming === i) this.incoming = undefined;
    this.counters.transfersAbandoned++;
    this.opts.log.info({ peer: i.peer, received: i.received, total: i.total, why }, 'snapshot transfer abandoned; its file is removed');
    this.staging.drop(i.transfer, why);
    i.chain = i.chain.then(async () => {
      const file = await i.file;
      await file.abandon();
    }).catch((err: unknown) => this.opts.log.warn({ err }, 'snapshot transfer: removing the partial file failed'));
  }
}

/** /metrics samples of the stream's counters (appended to the node's; types as src/node/metrics.ts renders them). */
export function snapshotStreamSamples(c: SnapshotStreamCounters, staged?: { readonly installed: number; readonly dropped: number }): Sample[] {
  return [
    ...(staged === undefined ? [] : [
      ['membershipd_snapshot_stream_staged_installs_total', 'counter', 'Snapshots from the leader installed from a parse done while they were received', staged.installed] as const,
      ['membershipd_snapshot_stream_stagings_dropped_total', 'counter', 'Snapshots whose parse while received was dropped (the install read the file)', staged.dropped] as const,
    ]),
    ['membershipd_snapshot_stream_transfers_started_total', 'counter', 'Snapshot transfers this node started sending', c.transfersStarted],
    ['membershipd_snapshot_stream_transfers_completed_total', 'counter', 'Snapshot transfers a follower received whole', c.transfersCompleted],
    ['membershipd_snapshot_stream_transfers_abandoned_total', 'counter', 'Snapshot transfers abandoned (link down, leader change, refused chunk, silent peer), either side', c.transfersAbandoned],
    ['membershipd_snapshot_stream_sent_bytes_total', 'counter', 'Snapshot file bytes sent in chunks', c.bytesSent],
    ['membershipd_snapshot_stream_received_bytes_total', 'counter', 'Snapshot file bytes received and written', c.bytesReceived],
    ['membershipd_snapshot_stream_chunks_refused_total', 'counter', 'Snapshot chunks refused here (checksum, order, write failure)', c.chunksRefused],
  ];
}
