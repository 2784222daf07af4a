// Restore while receiving (issue 20 item 3). A wiped follower rejoining a 1M-key cluster spent its time in turn:
// receiving the leader's snapshot file (TLS, checks, writes), then, only once it was whole, reading it back and
// parsing it into the entry tables (a profile at 200k keys: ~30% of the rejoining node's CPU, all of it after the
// transfer). Here the follower parses each piece as it arrives, into tables of a staged state the state machine does
// not see yet (KvStateMachine.stagedRestore); when Raft installs that snapshot the driver swaps the staged state in
// instead of reading the file (ready_driver.ts installSnapshot). The file is still written, checked (record CRC)
// and made durable exactly as before: it is what a restart loads. Anything unexpected (a piece out of order, a bad
// image, a different snapshot installed, a staged parse not finished) drops the staging, and the install reads the
// file as it always did, so staging can only save time, never change what is installed.
//
// Memory: the staged bytes are one buffer of the file's size, from the first piece to the install. The install
// used to read the whole file into one buffer as well, so the peak is the same; it only starts earlier.
//
// Wiring: SnapshotStream (which sees the pieces) and ReadyDriver (which installs) are both built by node.ts, which
// makes one SnapshotStaging per node and passes it to both (the `staging` option of each).
import { ImageFormatError, MoreBytesNeeded, snapshotFileDataRange, type StagedKvRestore } from '../../store/index.js';
import type { Logger } from '../log.js';
import { decodeNodeSessions } from './sessions.js';

/** A state machine that can restore from an arriving image (KvStateMachine). */
export interface StagingTarget {
  stagedRestore(image: Uint8Array): StagedKvRestore;
}

/** A snapshot parsed whole while it was received, ready to become the state. */
export interface StagedInstall {
  /** Replaces the state machine's state (synchronous: the parse is done). */
  install(): void;
  /** The session table the snapshot carries (AppliedSessions.restore's input). */
  readonly sessions: unknown;
}

/** Files larger than this are not staged (one buffer of their size; the file path handles any size). */
const stagedBytesMax = 2 ** 31;

/** Node snapshot data: msgpack [1, kvImage (bin32), sessions]; the KV image starts after these header bytes. */
const nodeHeaderBytes = 1 + 1 + 5;

/** One transfer's staged parse. */
class StagedTransfer {
  private readonly file: Uint8Array;
  private received = 0;
  private kv: StagedKvRestore | undefined;
  private kvStart = 0;
  private kvEnd = 0;
  private dataEnd = 0;
  private parsed = false;

  constructor(readonly transfer: number, readonly index: number, readonly term: number, readonly total: number, private readonly target: StagingTarget) {
    this.file = Buffer.allocUnsafe(total);
  }

  /** Copies the piece at `offset` in and parses what it completes; throws when the bytes are not a node snapshot. */
  add(offset: number, data: Uint8Array): void {
    if (offset !== this.received || offset + data.length > this.total) throw new ImageFormatError(`piece at ${offset} does not follow the ${this.received} bytes staged`);
    this.file.set(data, offset);
    this.received += data.length;
    if (this.kv === undefined) {
      const range = snapshotFileDataRange(this.file, this.received);
      if (range === undefined || this.received < range.start + nodeHeaderBytes) return;
      if (range.end !== this.total) throw new ImageFormatError(`the snapshot data ends at ${range.end}, the file at ${this.total}`);
      const f = this.file;
      const s = range.start;
      // [1, bin32 …]: fixarray(3), positive fixint 1, bin32 and its big-endian length (sessions.ts beginNodeSnapshot).
      if (f[s] !== 0x93 || f[s + 1] !== 0x01 || f[s + 2] !== 0xc6) throw new ImageFormatError('the snapshot data is not a membershipd node snapshot (version 1)');
      const kvBytes = new DataView(f.buffer, f.byteOffset + s + 3, 4).getUint32(0);
      const kvStart = this.kvStart = s + nodeHeaderBytes;
      this.kvEnd = kvStart + kvBytes;
      this.dataEnd = range.end;
      if (this.kvEnd > this.dataEnd) throw new ImageFormatError(`the KV image (${kvBytes} bytes) runs past the snapshot data`);
      this.kv = this.target.stagedRestore(f.subarray(kvStart, this.kvEnd));
    }
    if (!this.parsed) this.parsed = this.kv.advance(this.received - this.kvStart);
  }

  /** The parse is done and every byte is in: what the install swaps in. */
  complete(): StagedInstall | undefined {
    if (!this.parsed || this.received !== this.total || this.kv === undefined) return undefined;
    const kv = this.kv;
    return { install: () => kv.install(), sessions: decodeNodeSessions(this.file.subarray(this.kvEnd, this.dataEnd)) };
  }
}

/**
 * The staged snapshot of one follower: begun and fed by SnapshotStream, taken by ReadyDriver at install. At most one
 * transfer at a time (as SnapshotStream receives one at a time).
 */
export class SnapshotStaging {
  /** The state machine staged restores are built for; set by the driver that installs into it. */
  target: StagingTarget | undefined;
  private current: StagedTransfer | undefined;
  /** Installs served from a staged parse, and stagings dropped (counted for tests and logs). */
  readonly counts = { installed: 0, dropped: 0 };

  constructor(private readonly log?: Logger) {}

  /** A transfer of snapshot index/term, `total` file bytes, begins (replacing any other). */
  begin(transfer: number, index: number, term: number, total: number): void {
    this.current = undefined;
    if (this.target === undefined || total > stagedBytesMax || total <= 0) return;
    try {
      this.current = new StagedTransfer(transfer, index, term, total, this.target);
    } catch (err) {
      // Not enough memory for the buffer: the install reads the file, as without staging.
      this.log?.info({ err, index, total }, 'snapshot staging: no buffer for the image; it will be read from its file after the transfer');
    }
  }

  /** The piece at `offset` of `transfer` was received (and checked). */
  add(transfer: number, offset: number, data: Uint8Array): void {
    const c = this.current;
    if (c === undefined || c.transfer !== transfer) return;
    try {
      c.add(offset, data);
    } catch (err) {
      // A bad image is the file path's to refuse (it reads the same bytes, and reports them as it always has).
      this.drop(transfer, err instanceof MoreBytesNeeded ? 'unexpected end of staged bytes' : (err as Error).message);
    }
  }

  /** The transfer was abandoned: its staged state goes with it. */
  drop(transfer: number, why: string): void {
    if (this.current?.transfer !== transfer) return;
    this.current = undefined;
    this.counts.dropped++;
    this.log?.debug({ transfer, why }, 'snapshot staging dropped; the install reads the file');
  }

  /**
   * At install of snapshot index/term: the staged state if it is that snapshot, read whole. A staging of this or an
   * older snapshot is taken either way; one of a newer snapshot is kept for its own install.
   */
  take(index: number, term: number): StagedInstall | undefined {
    const c = this.current;
    if (c !== undefined && c.index > index) return undefined;
    this.current = undefined;
    if (c === undefined || c.index !== index || c.term !== term) return undefined;
    const done = c.complete();
    if (done !== undefined) this.counts.installed++;
    return done;
  }
}
