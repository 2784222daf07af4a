// Linearizable reads without writing to the log (Raft thesis §6.4, "ReadIndex"): the leader records
// its commit index, confirms it is still leader by a heartbeat round acknowledged by a majority, and
// then the read may be served once the state machine has applied up to that index.
// Heartbeats carry the context of the newest pending read; an ack for it also confirms every older
// read queued before it (etcd-io/raft read_only.go).

export interface ReadState {
  /** Serve the read once applied >= index. */
  readonly index: number;
  /** The request id the caller passed to readIndex(). */
  readonly context: Uint8Array;
}

export interface ReadIndexStatus {
  readonly index: number;
  /** The node that asked (the leader itself, or a follower the response goes back to). */
  readonly from: number;
  readonly context: Uint8Array;
  readonly acks: Set<number>;
}

export function contextKey(ctx: Uint8Array): string {
  let s = '';
  for (let i = 0; i < ctx.length; i++) s += String.fromCharCode(ctx[i]!);
  return s;
}

export class ReadOnly {
  private readonly pending = new Map<string, ReadIndexStatus>();
  private queue: string[] = [];

  /** Adds a read at `index`; a duplicate context is ignored. */
  addRequest(index: number, from: number, context: Uint8Array): void {
    const k = contextKey(context);
    if (this.pending.has(k)) return;
    this.pending.set(k, { index, from, context, acks: new Set() });
    this.queue.push(k);
  }

  /** Records an ack of the heartbeat round `context`; returns the acks so far (undefined if unknown). */
  recvAck(id: number, context: Uint8Array): ReadonlySet<number> | undefined {
    const rs = this.pending.get(contextKey(context));
    if (!rs) return undefined;
    rs.acks.add(id);
    return rs.acks;
  }

  /** Removes and returns every read queued up to and including `context`. */
  advance(context: Uint8Array): ReadIndexStatus[] {
    const k = contextKey(context);
    const at = this.queue.indexOf(k);
    if (at < 0) return [];
    const done = this.queue.slice(0, at + 1).map((q) => this.pending.get(q)!);
    for (const q of this.queue.slice(0, at + 1)) this.pending.delete(q);
    this.queue = this.queue.slice(at + 1);
    return done;
  }

  lastPendingContext(): Uint8Array | undefined {
    const k = this.queue[this.queue.length - 1];
    return k === undefined ? undefined : this.pending.get(k)!.context;
  }

  reset(): void {
    this.pending.clear();
    this.queue = [];
  }
}
