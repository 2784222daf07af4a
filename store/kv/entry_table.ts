// One bucket's retained entries, packed (issue 20 item 4). The first version kept, per key, a JS array of KvEntry
// objects each holding its own Uint8Array: about 820 bytes of heap and external memory per 256-byte value, 3.2× the
// data. Here an entry is a row of typed-array columns (45 bytes), a key is one Map entry (key string → its newest
// row), and values live in append-only slabs, as nats-server's filestore keeps messages in blocks with an index.
//
// Invariants:
// - A key's rows form a chain newest → oldest through `prev` (-1 ends it); the Map holds only keys with a row.
// - Slab bytes are written once, at the slab's fill pointer, and never again: a value handed out (a subarray of its
//   slab) stays valid however long the caller keeps it. Compaction copies a slab's live values into the current
//   slab and forgets the old one (the GC frees it once no handed-out value refers to it).
// - Layout (row numbers, slabs) depends only on the sequence of calls, so replicas stay alike — though nothing
//   outside this module sees it: snapshots are written from the logical entries.
import { assert } from '../assert.js';

export type EntryOp = 0 | 1 | 2;

/** One entry's fields, as stored. */
export interface EntryRow {
  readonly op: EntryOp;
  readonly value: Uint8Array;
  readonly revision: number;
  readonly index: number;
  readonly ts: number;
  readonly hdrBytes: number;
}

/** Bytes of one value slab; a value over a quarter of it gets a slab of its own size. */
export const slabBytes = 1 << 20;
/**
 * A table's first slab; each next one is twice the last, up to slabBytes. Every bucket used to start with a whole
 * slab: the control plane's few small buckets (ub_*) held 5 MiB of an idle node's 7 MiB of buffers (issue 14).
 */
export const slabFirstBytes = 4 << 10;
const ownSlabFrom = slabBytes >> 2;
const rowsInitial = 64;
const noRow = -1;

interface Slab {
  readonly bytes: Uint8Array;
  /** Bytes of values still referenced by a row. */
  live: number;
  /** Fill pointer: bytes written so far. */
  used: number;
}

export class EntryTable {
  private readonly newest = new Map<string, number>();
  private capacity = 0;
  private rows = 0;
  private readonly free: number[] = [];
  private revision = new Float64Array(0);
  private raftIndex = new Float64Array(0);
  private tsCol = new Float64Array(0);
  private hdr = new Uint32Array(0);
  private opCol = new Uint8Array(0);
  private prev = new Int32Array(0);
  private slabOf = new Int32Array(0);
  private offset = new Uint32Array(0);
  private length = new Uint32Array(0);
  /** Slabs by id; a compacted or emptied one is set to undefined and its id reused. */
  private readonly slabs: (Slab | undefined)[] = [];
  private readonly freeSlabs: number[] = [];
  private current = -1;
  /** Rows of each slab are found by a scan: set when a non-current slab falls below half live. */
  private sparse = new Set<number>();
  /**
   * The lowest revision retained, or undefined when not known (the row holding it was removed). Recomputed on
   * demand: the KV API asks for it (bucketInfo) on every publish, and a scan per put made a fill quadratic; it
   * changes only when the row holding it goes, which a fill of new keys never does.
   */
  private lowestRev: number | undefined = Number.POSITIVE_INFINITY;

  /** Keys with at least one retained entry. */
  get size(): number {
    return this.newest.size;
  }

  /** Rows in use (retained entries of every key). */
  get entries(): number {
    return this.rows - this.free.length;
  }

  /** The key's newest row, or -1. */
  latest(key: string): number {
    return this.newest.get(key) ?? noRow;
  }

  /** The key's rows, oldest first (empty when it has none). */
  chain(key: string): number[] {
    const out: number[] = [];
    for (let r = this.latest(key); r !== noRow; r = this.prev[r]!) out.push(r);
    return out.reverse();
  }

  /** The lowest revision of any retained entry (+Infinity when none). */
  lowestRevision(): number {
    if (this.lowestRev === undefined) {
      let low = Number.POSITIVE_INFINITY;
      // A key's oldest row holds its lowest revision: revisions grow along a chain.
      for (const head of this.newest.values()) {
        let r = head;
        while (this.prev[r]! !== noRow) r = this.prev[r]!;
        if (this.revision[r]! < low) low = this.revision[r]!;
      }
      this.lowestRev = low;
    }
    return this.lowestRev;
  }

  keys(): IterableIterator<string> {
    return this.newest.keys();
  }

  /** [key, newest row] of every key, in insertion order of the keys. */
  heads(): IterableIterator<[string, number]> {
    return this.newest.entries();
  }

  op(row: number): EntryOp {
    return this.opCol[row]! as EntryOp;
  }

  rev(row: number): number {
    return this.revision[row]!;
  }

  index(row: number): number {
    return this.raftIndex[row]!;
  }

  ts(row: number): number {
    return this.tsCol[row]!;
  }

  hdrBytes(row: number): number {
    return this.hdr[row]!;
  }

  valueBytes(row: number): number {
    return this.length[row]!;
  }

  /** The row's value: a view of its slab, never overwritten (see the invariants above). */
  value(row: number): Uint8Array {
    const len = this.length[row]!;
    if (len === 0) return empty;
    const off = this.offset[row]!;
    return this.slabs[this.slabOf[row]!]!.bytes.subarray(off, off + len);
  }

  /** Writes the row's value as msgpack bin without making a view of it (a snapshot writes a million of them). */
  writeValue(row: number, w: { binRange(bytes: Uint8Array, start: number, end: number): void }): void {
    const len = this.length[row]!;
    if (len === 0) return w.binRange(empty, 0, 0);
    const off = this.offset[row]!;
    w.binRange(this.slabs[this.slabOf[row]!]!.bytes, off, off + len);
  }

  /** The older row of the same key, or -1. */
  older(row: number): number {
    return this.prev[row]!;
  }

  /** Appends a newest entry to `key` after dropping its `dropOldest` oldest ones; returns the new row. */
  append(key: string, e: EntryRow, dropOldest: number): number {
    let head = this.latest(key);
    if (dropOldest > 0) head = this.dropOldest(head, dropOldest);
    const row = this.allocRow();
    this.revision[row] = e.revision;
    this.raftIndex[row] = e.index;
    this.tsCol[row] = e.ts;
    this.hdr[row] = e.hdrBytes;
    this.opCol[row] = e.op;
    this.prev[row] = head;
    this.storeValue(row, e.value);
    if (this.lowestRev !== undefined && e.revision < this.lowestRev) this.lowestRev = e.revision;
    this.newest.set(key, row);
    this.compactSparse();
    return row;
  }

  /**
   * A snapshot restore's append of a key's oldest entry into a table being built: one Map operation instead of
   * append()'s three (the duplicate check, latest() and set(): a fresh key string missed twice before it was
   * inserted, and those probes were ~40% of a restore's CPU). Returns -1 when the key already had a row (an image
   * listing a key twice): the table is then left inconsistent, and the caller must discard it, as a refused
   * restore does with every table it built.
   */
  appendNewKey(key: string, e: EntryRow): number {
    const before = this.newest.size;
    const row = this.allocRow();
    this.newest.set(key, row);
    if (this.newest.size === before) return noRow;
    this.revision[row] = e.revision;
    this.raftIndex[row] = e.index;
    this.tsCol[row] = e.ts;
    this.hdr[row] = e.hdrBytes;
    this.opCol[row] = e.op;
    this.prev[row] = noRow;
    this.storeValue(row, e.value);
    if (this.lowestRev !== undefined && e.revision < this.lowestRev) this.lowestRev = e.revision;
    return row;
  }

  /** Removes the rows of `key` for which `gone(row)` holds; the key disappears with its last row. */
  removeWhere(key: string, gone: (row: number) => boolean): void {
    const kept: number[] = [];
    for (const r of this.chain(key)) {
      if (gone(r)) this.freeRow(r);
      else kept.push(r);
    }
    if (kept.length === 0) {
      this.newest.delete(key);
    } else {
      let p = noRow;
      for (const r of kept) {
        this.prev[r] = p;
        p = r;
      }
      this.newest.set(key, p);
    }
    this.compactSparse();
  }

  /** Drops the `n` oldest rows of the chain starting at `head`; returns the new head (-1 when all went). */
  private dropOldest(head: number, n: number): number {
    const rows: number[] = [];
    for (let r = head; r !== noRow; r = this.prev[r]!) rows.push(r);
    assert(n <= rows.length, `dropping ${n} of ${rows.length} entries`);
    // rows is newest first: the oldest n are at its end.
    for (let k = rows.length - n; k < rows.length; k++) this.freeRow(rows[k]!);
    const keep = rows.length - n;
    if (keep === 0) return noRow;
    this.prev[rows[keep - 1]!] = noRow;
    return head;
  }

  private allocRow(): number {
    const reused = this.free.pop();
    if (reused !== undefined) return reused;
    if (this.rows === this.capacity) this.grow(Math.max(rowsInitial, this.capacity * 2));
    return this.rows++;
  }

  private freeRow(row: number): void {
    if (this.revision[row] === this.lowestRev) this.lowestRev = undefined;
    const len = this.length[row]!;
    if (len > 0) this.release(this.slabOf[row]!, len);
    this.length[row] = 0;
    this.slabOf[row] = noRow;
    this.free.push(row);
  }

  private grow(capacity: number): void {
    const f64 = (a: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> => { const b = new Float64Array(capacity); b.set(a); return b; };
    const u32 = (a: Uint32Array<ArrayBuffer>): Uint32Array<ArrayBuffer> => { const b = new Uint32Array(capacity); b.set(a); return b; };
    const i32 = (a: Int32Array<ArrayBuffer>): Int32Array<ArrayBuffer> => { const b = new Int32Array(capacity); b.set(a); return b; };
    this.revision = f64(this.revision);
    this.raftIndex = f64(this.raftIndex);
    this.tsCol = f64(this.tsCol);
    this.hdr = u32(this.hdr);
    this.offset = u32(this.offset);
    this.length = u32(this.length);
    this.prev = i32(this.prev);
    this.slabOf = i32(this.slabOf);
    const ops = new Uint8Array(capacity);
    ops.set(this.opCol);
    this.opCol = ops;
    this.capacity = capacity;
  }

  // ---- value slabs ---------------------------------------------------------------------------------------------

  private storeValue(row: number, value: Uint8Array): void {
    const len = value.length;
    this.length[row] = len;
    if (len === 0) {
      this.slabOf[row] = noRow;
      this.offset[row] = 0;
      return;
    }
    const id = len > ownSlabFrom ? this.newSlab(len) : this.slabWithRoom(len);
    const s = this.slabs[id]!;
    s.bytes.set(value, s.used);
    this.slabOf[row] = id;
    this.offset[row] = s.used;
    s.used += len;
    s.live += len;
  }

  private slabWithRoom(len: number): number {
    const cur = this.current >= 0 ? this.slabs[this.current] : undefined;
    if (cur !== undefined && cur.bytes.length - cur.used >= len) return this.current;
    // The slab we leave may already be sparse (values overwritten while it filled).
    if (cur !== undefined && cur.live * 2 < cur.used) this.sparse.add(this.current);
    const grown = cur === undefined ? slabFirstBytes : Math.min(slabBytes, cur.bytes.length * 2);
    this.current = this.newSlab(Math.max(grown, len));
    return this.current;
  }

  private newSlab(bytes: number): number {
    const s: Slab = { bytes: new Uint8Array(bytes), live: 0, used: 0 };
    const id = this.freeSlabs.pop() ?? this.slabs.length;
    this.slabs[id] = s;
    return id;
  }

  private release(id: number, len: number): void {
    const s = this.slabs[id]!;
    s.live -= len;
    assert(s.live >= 0, `slab ${id} live bytes below zero`);
    if (id === this.current) return;
    if (s.live === 0) {
      this.slabs[id] = undefined;
      this.freeSlabs.push(id);
      this.sparse.delete(id);
    } else if (s.live * 2 < s.bytes.length) {
      this.sparse.add(id);
    }
  }

  /**
   * Moves the live values of slabs under half full into the current slab, so memory stays within about twice the
   * live values whatever the overwrite pattern. One scan of the rows finds them all; it runs only when a slab has
   * become sparse, which takes at least half a slab of overwrites.
   */
  private compactSparse(): void {
    if (this.sparse.size === 0) return;
    const moving = this.sparse;
    this.sparse = new Set();
    for (let r = 0; r < this.rows; r++) {
      const id = this.slabOf[r]!;
      if (id === noRow || !moving.has(id) || id === this.current) continue;
      const v = this.value(r);
      this.release(id, v.length);
      this.storeValue(r, v);
    }
    for (const id of moving) {
      const s = this.slabs[id];
      if (s !== undefined && id !== this.current && s.live === 0) {
        this.slabs[id] = undefined;
        this.freeSlabs.push(id);
      }
      this.sparse.delete(id);
    }
  }

  /**
   * The table as it is now, for a snapshot written over several turns of the event loop while writes go on: the
   * keys sorted, their newest rows, copies of the columns, and the slabs (the objects: a slab freed or compacted
   * later keeps its bytes for this view, and bytes a view can reach are never written again). Costs a sort of the
   * keys and a copy of the columns (45 bytes per row), not of the values.
   */
  freeze(): FrozenEntries {
    const keys = [...this.newest.keys()].sort();
    const heads = new Int32Array(keys.length);
    for (let i = 0; i < keys.length; i++) heads[i] = this.newest.get(keys[i]!)!;
    const n = this.rows;
    return new FrozenEntries(keys, heads, {
      revision: this.revision.slice(0, n), raftIndex: this.raftIndex.slice(0, n), ts: this.tsCol.slice(0, n), hdr: this.hdr.slice(0, n),
      op: this.opCol.slice(0, n), prev: this.prev.slice(0, n), slabOf: this.slabOf.slice(0, n), offset: this.offset.slice(0, n),
      length: this.length.slice(0, n), slabs: this.slabs.map((s) => s?.bytes),
    });
  }

  /** Bytes held in value slabs (live values plus what compaction has not reclaimed yet). */
  slabBytesHeld(): number {
    let n = 0;
    for (const s of this.slabs) if (s !== undefined) n += s.bytes.length;
    return n;
  }
}

const empty = new Uint8Array(0);

interface FrozenColumns {
  readonly revision: Float64Array;
  readonly raftIndex: Float64Array;
  readonly ts: Float64Array;
  readonly hdr: Uint32Array;
  readonly op: Uint8Array;
  readonly prev: Int32Array;
  readonly slabOf: Int32Array;
  readonly offset: Uint32Array;
  readonly length: Uint32Array;
  readonly slabs: readonly (Uint8Array | undefined)[];
}

/** EntryTable.freeze(): a read-only copy of a table's rows at one moment, keys in sorted order. */
export class FrozenEntries {
  constructor(
    /** Keys with a row, sorted (String comparison, as Array.prototype.sort). */
    readonly keys: readonly string[],
    /** The newest row of keys[i]. */
    readonly heads: Int32Array,
    private readonly c: FrozenColumns,
  ) {}

  op(row: number): EntryOp {
    return this.c.op[row]! as EntryOp;
  }

  rev(row: number): number {
    return this.c.revision[row]!;
  }

  index(row: number): number {
    return this.c.raftIndex[row]!;
  }

  ts(row: number): number {
    return this.c.ts[row]!;
  }

  hdrBytes(row: number): number {
    return this.c.hdr[row]!;
  }

  older(row: number): number {
    return this.c.prev[row]!;
  }

  /** Rows of keys[i], oldest first. */
  chain(i: number): number[] {
    const out: number[] = [];
    for (let r = this.heads[i]!; r !== noRow; r = this.c.prev[r]!) out.push(r);
    return out.reverse();
  }

  writeValue(row: number, w: { binRange(bytes: Uint8Array, start: number, end: number): void }): void {
    const len = this.c.length[row]!;
    if (len === 0) return w.binRange(empty, 0, 0);
    const off = this.c.offset[row]!;
    w.binRange(this.c.slabs[this.c.slabOf[row]!]!, off, off + len);
  }
}
