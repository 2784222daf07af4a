// Durable Raft log storage: the WAL (entries, hard state, snapshot-install markers) plus snapshot
// files, with the log since the last snapshot held in memory for reads, as etcd's server does
// (MemoryStorage backed by its WAL). Reads are synchronous; writes are serialized and change the
// in-memory view only once durable, so a failed write (ENOSPC) leaves memory equal to disk.
//
// WAL record types (the WAL itself owns type 1, the segment header):
//   2 entry           [term, index, type, data]   an entry at index i replaces any entries >= i
//   3 hard state      [term, vote, commit]        the last one wins; repeated at each segment start
//   4 install marker  [index, term]               a snapshot from the leader was installed: unless the
//                                                 log holds `index` with `term`, every entry before
//                                                 it is void (Raft paper §7, InstallSnapshot step 6-7)
import { join } from 'node:path';
import { type ConfState, type Entry, EntryType, type HardState, type Snapshot, type SnapshotMetadata, emptyHardState } from '../raft/types.js';
import { assert } from './assert.js';
import { copyBytes, isUint, pack, unpack } from './codec.js';
import { CorruptionError, StoreError, StoreErrorCode } from './errors.js';
import { ensureFormat } from './format.js';
import { lockDir } from './lock.js';
import { nodeFs, type StoreFs } from './fs.js';
import { decodeHardState, encodeHardState } from './hard_state.js';
import { nullLogger, type StoreLogger } from './logger.js';
import { imageChunkBytes, MsgpackWriter } from './kv/msgpack_writer.js';
import { decodeSnapshotFile, SnapshotFiles } from './snapshot.js';
import { IncomingSnapshotFile, isSnapshotRef, readSnapshotImage, receivedSnapshotName, SnapshotFileReader } from './snapshot_transfer.js';
import type { RecordInput } from './wal/record.js';
import { CORRUPTION_REMEDY, type TailRepair } from './wal/recovery.js';
import { segmentName } from './wal/segment.js';
import { Wal } from './wal/wal.js';

export const RecordType = { entry: 2, hardState: 3, installMarker: 4 } as const;

export interface RaftStorageOptions {
  readonly fs?: StoreFs;
  readonly logger?: StoreLogger;
  /** WAL segment rollover size in bytes (default 64 MiB). */
  readonly segmentBytes?: number;
  /** Snapshot files kept; WAL segments are removed only once the oldest kept one covers them. */
  readonly snapshotsRetained?: number;
  /**
   * Errors thrown by term()/entries() for an index before the first or after the last one. raft/
   * recognises its own RaftError (compacted/unavailable), which store/ may not import, so the node
   * passes factories: `{ compacted: (m) => new RaftError(RaftErrorCode.compacted, m), ... }`.
   * Default: StoreError ESTORE_COMPACTED / ESTORE_UNAVAILABLE.
   */
  readonly rangeErrors?: RangeErrors;
}

export interface RangeErrors {
  readonly compacted: (message: string) => Error;
  readonly unavailable: (message: string) => Error;
}

const storeRangeErrors: RangeErrors = {
  compacted: (m) => new StoreError(StoreErrorCode.compacted, m),
  unavailable: (m) => new StoreError(StoreErrorCode.unavailable, m),
};

export interface RecoveryReport {
  /** The torn WAL tail that was cut off at start, if any. */
  readonly walRepaired: TailRepair | null;
  /** The snapshot the state starts from (null: none, the log starts at index 1). */
  readonly snapshotFile: string | null;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly hardState: HardState;
}

/** How createSnapshotStreamed paces its work: a turn of the event loop every `sliceMs`, given up when `stopped()`. */
export interface SnapshotWriteOptions {
  readonly sliceMs: number;
  readonly stopped: () => boolean;
  /** The clock the slices are measured with (default performance.now; the Ready driver passes its own). */
  readonly now?: () => number;
  /** One turn of the event loop (default setImmediate). */
  readonly yieldTurn?: () => Promise<void>;
}

/** A snapshot image read back for a transfer stays in memory this long after its last read. */
const snapshotHeldMs = 30_000;

const emptyConf: ConfState = { voters: [], learners: [] };
const emptySnapshot: Snapshot = { meta: { index: 0, term: 0, conf: emptyConf }, data: new Uint8Array(0) };

/** Bytes of one chunk of the in-memory log's entry data (LogArena). */
const logChunkBytes = 256 << 10;

/**
 * Where the in-memory log keeps its entries' data: copied into shared append-only chunks, each entry's data a view of
 * one. An entry whose data had a buffer of its own cost that buffer's bookkeeping besides its bytes (an ArrayBuffer,
 * a backing store, a malloc header: ~250 B on a ~300-byte KV put); the log since a snapshot holds up to a quarter of
 * the state's bytes (snapshotLogFraction), so that was most of a large node's log memory (issue 20 item 4). The log
 * is dropped front first, so a chunk is freed (by the GC) once the log and every message have let go of its entries.
 * Data over a quarter of a chunk keeps a buffer of its own (copied only when it is a view of a larger buffer, which
 * it would otherwise keep alive).
 */
class LogArena {
  private chunk = new Uint8Array(0);
  private used = 0;

  keep(e: Entry): Entry {
    const len = e.data.length;
    if (len === 0) return e;
    let data: Uint8Array;
    if (len > logChunkBytes >> 2) {
      data = e.data.byteLength === e.data.buffer.byteLength ? e.data : copyBytes(e.data);
    } else {
      if (this.used + len > this.chunk.length) {
        this.chunk = new Uint8Array(logChunkBytes);
        this.used = 0;
      }
      this.chunk.set(e.data, this.used);
      data = this.chunk.subarray(this.used, this.used + len);
      this.used += len;
    }
    return { term: e.term, index: e.index, type: e.type, data };
  }
}

function encodeEntry(e: Entry): RecordInput {
  return { type: RecordType.entry, body: pack([e.term, e.index, e.type, e.data]) };
}

function decodeEntry(body: Uint8Array, arena: LogArena): Entry | null {
  let v: unknown;
  try {
    v = unpack(body);
  } catch {
    return null;
  }
  if (!Array.isArray(v) || v.length !== 4) return null;
  const [term, index, type, data] = v as unknown[];
  if (!isUint(term) || !isUint(index) || index < 1 || (type !== EntryType.normal && type !== EntryType.confChange)) return null;
  if (!(data instanceof Uint8Array)) return null;
  return arena.keep({ term, index, type, data }); // a copy: `data` views the WAL's read buffer
}

/** The log as replayed from the WAL before a snapshot is chosen. */
class ReplayLog {
  entries: Entry[] = [];
  start = 1;
  /** After an install marker: the next entry must be exactly `start`. */
  startFixed = false;
  /** Highest index an install marker voided everything up to. */
  resetFloor = 0;
  hardState: HardState = emptyHardState;
  readonly segMax = new Map<number, number>();

  get last(): number {
    return this.start + this.entries.length - 1;
  }

  termAt(i: number): number | undefined {
    return i >= this.start && i <= this.last ? this.entries[i - this.start]!.term : undefined;
  }

  /** Returns the reason when the entry cannot follow the log (damage the CRC did not catch). */
  addEntry(e: Entry, seq: number): string | null {
    if (this.entries.length === 0) {
      if (this.startFixed && e.index !== this.start) return `entry ${e.index} follows a snapshot installed at ${this.start - 1}`;
      this.start = e.index;
    } else if (e.index > this.last + 1) {
      return `entry ${e.index} leaves a gap after entry ${this.last}`;
    } else if (e.index < this.start) {
      if (this.startFixed) return `entry ${e.index} rewrites entries voided by a snapshot installed at ${this.start - 1}`;
      this.entries = [];
      this.start = e.index;
    } else {
      this.entries.length = e.index - this.start;
    }
    this.entries.push(e);
    this.startFixed = false;
    this.segMax.set(seq, Math.max(this.segMax.get(seq) ?? 0, e.index));
    return null;
  }

  install(index: number, term: number): void {
    if (this.termAt(index) === term) return;
    this.entries = [];
    this.start = index + 1;
    this.startFixed = true;
    this.resetFloor = Math.max(this.resetFloor, index);
  }
}

export class RaftStorage {
  readonly dir: string;
  private readonly fs: StoreFs;
  private readonly logger: StoreLogger;
  private readonly retain: number;
  private readonly segmentBytes: number | undefined;
  private readonly rangeErrors: RangeErrors;
  private readonly snapshots: SnapshotFiles;
  private wal!: Wal;
  private snap: Snapshot = emptySnapshot;
  private snapBytes = 0;
  /** The file of `snap` ('' when none). */
  private snapPath = '';
  /** Entries after snap.meta.index, contiguous; their data in `arena`. */
  private log: Entry[] = [];
  private readonly arena = new LogArena();
  private hs: HardState = emptyHardState;
  private segMax = new Map<number, number>();
  private chain: Promise<unknown> = Promise.resolve();
  /**
   * The records that start every WAL segment. A field, not an arrow written in recover(): the WAL keeps this closure
   * for its whole life, and one made in recover() shared that function's scope, which holds the replayed log. That
   * kept every entry read at startup (the whole WAL of a restarted node; the first snapshot's worth of entries of a
   * new one, as the store's log array starts as the replay's) alive until the process exited (issue 20 item 4).
   */
  private readonly walPreamble = (): RecordInput[] => [{ type: RecordType.hardState, body: encodeHardState(this.hs) }];
  private report!: RecoveryReport;
  private unlock: () => Promise<void> = async () => undefined;

  private constructor(dir: string, opts: RaftStorageOptions) {
    this.dir = dir;
    this.fs = opts.fs ?? nodeFs;
    this.logger = opts.logger ?? nullLogger;
    this.retain = Math.max(1, opts.snapshotsRetained ?? 2);
    this.segmentBytes = opts.segmentBytes;
    this.rangeErrors = opts.rangeErrors ?? storeRangeErrors;
    this.snapshots = new SnapshotFiles(this.fs, join(dir, 'snap'), this.logger);
  }

  /**
   * Opens or creates the store in `dir` (the node's data directory): checks the format marker,
   * replays the WAL (cutting a torn tail), and picks the newest valid snapshot the log continues.
   * Throws CorruptionError or FormatVersionError when it must not start.
   */
  static async open(dir: string, opts: RaftStorageOptions = {}): Promise<RaftStorage> {
    const s = new RaftStorage(dir, opts);
    await ensureFormat(s.fs, dir);
    s.unlock = await lockDir(s.fs, dir);
    try {
      await s.recover();
    } catch (err) {
      await s.unlock();
      throw err;
    }
    return s;
  }

  private async recover(): Promise<void> {
    const dir = this.dir;
    const walDir = join(dir, 'wal');
    const replay = new ReplayLog();
    this.wal = await Wal.open(
      walDir,
      { fs: this.fs, logger: this.logger, segmentBytes: this.segmentBytes, preamble: this.walPreamble },
      (type, body, seq, offset) => {
        const where = join(walDir, segmentName(seq));
        let problem: string | null = null;
        if (type === RecordType.entry) {
          const e = decodeEntry(body, this.arena);
          problem = e ? replay.addEntry(e, seq) : 'undecodable entry record';
        } else if (type === RecordType.hardState) {
          const hs = decodeHardState(body);
          if (hs) replay.hardState = hs;
          else problem = 'undecodable hard state record';
        } else if (type === RecordType.installMarker) {
          let v: unknown;
          try {
            v = unpack(body);
          } catch {
            v = null;
          }
          if (Array.isArray(v) && v.length === 2 && v.every(isUint)) replay.install(v[0] as number, v[1] as number);
          else problem = 'undecodable snapshot-install record';
        } else {
          problem = `unknown record type ${type} (written by a newer membershipd?)`;
        }
        if (problem) throw new CorruptionError(where, offset, problem, CORRUPTION_REMEDY);
      },
    );
    await this.adopt(replay);
    // Re-record the hard state in the active segment: if the last rollover was cut short, that
    // segment may lack its preamble, and compaction could later remove every older segment that
    // holds the vote. One fdatasync at start buys the invariant "every segment suffix holds it".
    await this.wal.append([{ type: RecordType.hardState, body: encodeHardState(this.hs) }]);
  }

  /** Chooses the snapshot the replayed log continues and installs both in memory. */
  private async adopt(r: ReplayLog): Promise<void> {
    const usable = (index: number): boolean =>
      index >= r.resetFloor && (r.entries.length === 0 || index + 1 >= r.start) && Math.max(index, r.last) >= r.hardState.commit;
    let chosen: { snapshot: Snapshot; path: string } | null = null;
    let newest: string | null = null;
    for await (const c of this.snapshots.valid()) {
      newest ??= c.path;
      if (usable(c.snapshot.meta.index)) {
        chosen = c;
        break;
      }
      this.logger.warn({ file: c.path, logStart: r.start, commit: r.hardState.commit }, 'snapshot: the WAL does not continue it; trying an older one');
    }
    if (!chosen && !(r.start <= 1 && r.resetFloor === 0 && r.last >= r.hardState.commit)) {
      throw new CorruptionError(
        newest ?? join(this.snapshots.dir, '(none)'),
        0,
        `no valid snapshot connects to the WAL (log holds ${r.start}..${r.last}, commit ${r.hardState.commit})`,
        CORRUPTION_REMEDY,
      );
    }
    if (chosen) {
      const m = chosen.snapshot.meta;
      this.snap = this.keptOnDisk(chosen.snapshot, chosen.path);
      const t = r.termAt(m.index);
      this.log = t === undefined || t === m.term ? r.entries.filter((e) => e.index > m.index) : [];
      if (t === undefined && this.log.length > 0 && this.log[0]!.index !== m.index + 1) this.log = [];
    } else {
      this.log = r.entries;
    }
    const commit = Math.max(r.hardState.commit, this.snap.meta.index);
    this.hs = { ...r.hardState, commit };
    // A batch holds its entries, then the hard state. When a power loss tears it after some entries
    // of a newer term, the node must not restart with currentTerm below its last entry's term.
    // Raising the term with no vote is safe: a vote in that term was in the same torn, never
    // acknowledged batch, so it was never sent.
    const lastTerm = this.term(this.lastIndex());
    if (lastTerm > this.hs.term) {
      this.logger.warn({ term: this.hs.term, lastTerm }, 'store: the WAL tail held entries of a newer term than the hard state; adopting that term without a vote');
      this.hs = { term: lastTerm, vote: 0, commit };
    }
    this.segMax = r.segMax;
    this.report = {
      walRepaired: this.wal.repaired,
      snapshotFile: chosen?.path ?? null,
      firstIndex: this.firstIndex(),
      lastIndex: this.lastIndex(),
      hardState: this.hs,
    };
  }

  get recovery(): RecoveryReport {
    return this.report;
  }

  initialState(): { hardState: HardState; confState: ConfState } {
    return { hardState: this.hs, confState: this.snap.meta.conf };
  }

  hardState(): HardState {
    return this.hs;
  }

  /** Index of the first entry still held (snapshot index + 1). */
  firstIndex(): number {
    return this.snap.meta.index + 1;
  }

  lastIndex(): number {
    return this.snap.meta.index + this.log.length;
  }

  /** Term of entry i; the snapshot's term at its index. Throws ESTORE_COMPACTED / ESTORE_UNAVAILABLE. */
  term(i: number): number {
    const base = this.snap.meta.index;
    if (i === base) return this.snap.meta.term;
    if (i < base) throw this.rangeErrors.compacted(`entry ${i} is compacted (snapshot at ${base})`);
    if (i > this.lastIndex()) throw this.rangeErrors.unavailable(`entry ${i} is beyond the last index ${this.lastIndex()}`);
    return this.log[i - base - 1]!.term;
  }

  /** Entries [lo, hi), at least one when any, then stopping before `bytesMax` of data would be exceeded. */
  entries(lo: number, hi: number, bytesMax = Number.POSITIVE_INFINITY): Entry[] {
    const base = this.snap.meta.index;
    if (lo <= base) throw this.rangeErrors.compacted(`entry ${lo} is compacted (snapshot at ${base})`);
    if (hi > this.lastIndex() + 1) throw this.rangeErrors.unavailable(`entries up to ${hi - 1} requested, last is ${this.lastIndex()}`);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.log[i - base - 1]!;
      bytes += e.data.length;
      if (out.length > 0 && bytes > bytesMax) break;
      out.push(e);
    }
    return out;
  }

  /**
   * `s`, saved at `path`, as the snapshot this store hands out: its metadata in memory, its data read back from the
   * file when someone reads `data` (Raft, to send it to a follower that is behind the log) and kept only while
   * someone holds it. Holding the image for ever cost as much memory as the state itself (issue 20 item 4).
   */
  private keptOnDisk(s: Snapshot, path: string, imageBytes = s.data.length, inMemory = true): Snapshot {
    // Not in memory (a streamed snapshot, adopted as its file): the first read of `data` loads it.
    return this.onDisk(s.meta, imageBytes, path, inMemory ? s.data : undefined);
  }

  /** keptOnDisk for a snapshot whose image is known only by its size (read back from `path` when needed). */
  private onDisk(meta: SnapshotMetadata, bytes: number, path: string, data?: Uint8Array): Snapshot {
    const fs = this.fs;
    let held: WeakRef<Uint8Array> | undefined = data === undefined ? undefined : new WeakRef(data);
    // Raft reads `data` once per chunk it sends: the image stays in memory while chunks go out, and is released
    // a while after the last read (the WeakRef then lets the GC take it once no transfer holds it).
    let strong: Uint8Array | undefined;
    let release: NodeJS.Timeout | undefined;
    this.snapBytes = bytes;
    this.snapPath = path;
    return {
      meta,
      get data(): Uint8Array {
        let data = held?.deref();
        if (data === undefined) {
          const decoded = decodeSnapshotFile(fs.readFileSync(path), path, true);
          if (typeof decoded === 'string') throw new CorruptionError(path, 0, `snapshot file damaged since it was written: ${decoded}`, CORRUPTION_REMEDY);
          data = decoded.data;
          held = new WeakRef(data);
        }
        strong = data;
        if (release === undefined) {
          release = setTimeout(() => {
            strong = undefined;
            release = undefined;
          }, snapshotHeldMs);
          release.unref();
        } else {
          release.refresh();
        }
        return strong;
      },
    };
  }

  /** Bytes of the newest snapshot's data (0 when none), without reading it. */
  snapshotBytes(): number {
    return this.snap.meta.index === 0 ? 0 : this.snapBytes;
  }

  /** The newest snapshot (index 0 when none). */
  snapshot(): Snapshot {
    return this.snap;
  }

  /**
   * The newest snapshot's image, read asynchronously (the event loop keeps running) as a view of the file's bytes:
   * what a node restores its state machine from after installing a snapshot streamed to it.
   */
  readSnapshotData(): Promise<Uint8Array> {
    if (this.snap.meta.index === 0) return Promise.resolve(new Uint8Array(0));
    return readSnapshotImage(this.fs, this.snapPath);
  }

  /**
   * Opens the file of the snapshot at index/term for a transfer to a follower (read in pieces). Throws
   * ESTORE_COMPACTED when that snapshot is no longer the newest: Raft then sends the newer one.
   */
  async openSnapshotFile(index: number, term: number): Promise<SnapshotFileReader> {
    const m = this.snap.meta;
    if (m.index !== index || m.term !== term || index === 0) {
      throw new StoreError(StoreErrorCode.compacted, `snapshot ${index}/${term} is not the newest one (${m.index}/${m.term}); a newer one will be sent`);
    }
    return SnapshotFileReader.open(this.fs, this.snapPath);
  }

  /** Starts receiving the file of the leader's snapshot at index/term, `total` bytes (see IncomingSnapshotFile). */
  beginSnapshotReceive(index: number, term: number, total: number, transfer: number): Promise<IncomingSnapshotFile> {
    return IncomingSnapshotFile.create(this.fs, this.snapshots.dir, index, term, total, transfer);
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.chain.then(op, op);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Persists a Ready: entries (replacing any conflicting suffix) and hard state, in one WAL batch
   * and one fdatasync. Resolves once durable; memory is updated only then.
   */
  save(update: { readonly hardState?: HardState; readonly entries?: readonly Entry[] }): Promise<void> {
    return this.serial(async () => {
      const base = this.snap.meta.index;
      const entries = (update.entries ?? []).filter((e) => e.index > base);
      for (let k = 1; k < entries.length; k++) {
        if (entries[k]!.index !== entries[k - 1]!.index + 1) throw new StoreError(StoreErrorCode.badRequest, 'entries to save are not contiguous');
      }
      if (entries.length > 0 && entries[0]!.index > this.lastIndex() + 1) {
        throw new StoreError(StoreErrorCode.badRequest, `entry ${entries[0]!.index} would leave a gap after ${this.lastIndex()}`);
      }
      const records = entries.map(encodeEntry);
      if (update.hardState) records.push({ type: RecordType.hardState, body: encodeHardState(update.hardState) });
      if (records.length === 0) return;
      const seq = await this.wal.append(records);
      if (entries.length > 0) {
        this.log.length = entries[0]!.index - base - 1;
        for (const e of entries) this.log.push(this.arena.keep(e));
        this.segMax.set(seq, Math.max(this.segMax.get(seq) ?? 0, entries[entries.length - 1]!.index));
      }
      if (update.hardState) this.hs = update.hardState;
    });
  }

  /** Makes a written local snapshot the current one, in the serial chain: drops the log up to it and compacts. */
  private adoptLocalSnapshot(index: number, snap: Snapshot): Promise<Snapshot> {
    return this.serial(async () => {
      this.checkLocalSnapshot(index); // a snapshot from the leader may have been installed meanwhile
      this.log = this.log.slice(index - this.snap.meta.index);
      this.snap = snap;
      await this.compact();
      return snap;
    });
  }

  /** A local snapshot must be newer than the current one and within the commit index (checked again at its end). */
  private checkLocalSnapshot(index: number): void {
    const base = this.snap.meta.index;
    if (index <= base) throw new StoreError(StoreErrorCode.badRequest, `snapshot at ${index} is not newer than the current one at ${base}`);
    if (index > this.hs.commit) throw new StoreError(StoreErrorCode.badRequest, `snapshot at ${index} is beyond the commit index ${this.hs.commit}`);
  }

  /**
   * Local compaction: records the state machine's image at `index` (applied, so committed) as a
   * snapshot, drops entries up to it from memory, and removes WAL segments the oldest retained
   * snapshot wholly covers (so a damaged newest snapshot can still fall back to the older one).
   */
  async createSnapshot(index: number, conf: ConfState, data: Uint8Array | readonly Uint8Array[]): Promise<Snapshot> {
    this.checkLocalSnapshot(index);
    const meta = { index, term: this.term(index), conf };
    const parts = data instanceof Uint8Array ? [data] : data;
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    // The file is written outside the serial chain: WAL batches go on meanwhile (a large image takes seconds to
    // write and fsync). A durable snapshot at a committed index is valid on its own, whatever the WAL holds;
    // recovery takes the newest one the WAL continues.
    const path = await this.snapshots.saveParts(meta, parts);
    // Only the file is kept: the image the caller built is garbage once written (it is read back from the file
    // when a follower needs it). Neither the store nor the promise this returns holds it (issue 20 item 4).
    const snap = this.onDisk(meta, bytes, path);
    return this.adoptLocalSnapshot(index, snap);
  }

  /**
   * createSnapshot for an image produced over time by `write` (a generator that yields between pieces of work):
   * written to the file chunk by chunk as it is produced, so the image is never whole in memory (issue 20 item 4:
   * a 1M-key image is ~300 MB, and one built in memory stayed in a quiet node's RSS until the next full GC). The
   * writing gives the event loop a turn every `sliceMs`, and waits there for the chunks in flight. Returns null,
   * leaving no file, when `stopped()` turns true meanwhile.
   */
  async createSnapshotStreamed(
    index: number,
    conf: ConfState,
    write: (w: MsgpackWriter) => Generator<void, void, void>,
    opts: SnapshotWriteOptions,
  ): Promise<Snapshot | null> {
    const now = opts.now ?? ((): number => performance.now());
    const yieldTurn = opts.yieldTurn ?? ((): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve)));
    this.checkLocalSnapshot(index);
    const meta = { index, term: this.term(index), conf };
    const file = await this.snapshots.begin(meta);
    let bytes: number;
    try {
      const w: MsgpackWriter = new MsgpackWriter(imageChunkBytes, imageChunkBytes, (chunk) => file.append(chunk, () => w.recycle(chunk)));
      const steps = write(w);
      let sliceEnd = now() + opts.sliceMs;
      while (!steps.next().done) {
        if (now() < sliceEnd) continue;
        await file.drain();
        await yieldTurn();
        if (opts.stopped()) {
          await file.abort();
          return null;
        }
        sliceEnd = now() + opts.sliceMs;
      }
      for (const part of w.finishParts()) file.append(part);
      bytes = await file.finish(w.latePatches);
    } catch (err) {
      await file.abort();
      throw err;
    }
    const snap = this.onDisk(meta, bytes, file.path);
    return this.adoptLocalSnapshot(index, snap);
  }

  /**
   * Installs a snapshot received from the leader. Entries after it are kept only when the log holds
   * its index with its term; otherwise the whole log is void and its segments are removed.
   */
  applySnapshot(snap: Snapshot): Promise<void> {
    return this.serial(async () => {
      const base = this.snap.meta.index;
      if (snap.meta.index <= base) throw new StoreError(StoreErrorCode.badRequest, `snapshot at ${snap.meta.index} is not newer than the current one at ${base}`);
      // A streamed snapshot arrives as its file, complete and checked (IncomingSnapshotFile.finish): Raft holds only a
      // reference, and the file is renamed into place rather than written again.
      const streamed = isSnapshotRef(snap.data);
      const received = join(this.snapshots.dir, receivedSnapshotName(snap.meta.index, snap.meta.term));
      const path = streamed ? await this.snapshots.adopt(received, snap.meta) : await this.snapshots.save(snap);
      await this.wal.append([{ type: RecordType.installMarker, body: pack([snap.meta.index, snap.meta.term]) }]);
      const keep = snap.meta.index <= this.lastIndex() && this.term(snap.meta.index) === snap.meta.term;
      this.log = keep ? this.log.slice(snap.meta.index - base) : [];
      this.snap = streamed ? this.keptOnDisk(snap, path, await this.snapshots.imageBytes(path), false) : this.keptOnDisk(snap, path);
      if (this.hs.commit < snap.meta.index) this.hs = { ...this.hs, commit: snap.meta.index };
      if (!keep) {
        // Everything before the marker is void: start a fresh segment (its preamble carries the hard
        // state) and drop all older ones.
        await this.wal.roll();
        await this.wal.removeSegmentsBefore(this.wal.activeSeq);
        this.segMax = new Map();
        await this.snapshots.prune(this.retain);
      } else {
        await this.compact();
      }
    });
  }

  private async compact(): Promise<void> {
    const kept = await this.snapshots.prune(this.retain);
    const floor = Math.min(...kept);
    let upTo = 0;
    for (const s of this.wal.segments().slice(0, -1)) {
      if ((this.segMax.get(s.seq) ?? 0) > floor) break;
      upTo = s.seq + 1;
    }
    if (upTo > 0) {
      await this.wal.removeSegmentsBefore(upTo);
      for (const seq of [...this.segMax.keys()]) if (seq < upTo) this.segMax.delete(seq);
    }
  }

  /** WAL segment files currently on disk (for /raftz and tests). */
  walSegments(): { seq: number; path: string; size: number }[] {
    return this.wal.segments();
  }

  async close(): Promise<void> {
    await this.chain;
    await this.wal.close();
    await this.unlock();
  }
}

assert(RecordType.entry > 1, 'type 1 is the WAL segment header');
