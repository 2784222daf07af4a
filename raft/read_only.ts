// Linearizable reads without writing to the log (Raft thesis §6.4, "ReadIndex"): the leader records
// its commit index, confirms it is still leader by a heartbeat round acknowledged by a majority, and
// then the read may be served once the state machine has applied up to that index.
// Heartbeats carry the round of the newest pending read; an ack for it also confirms every older
// read queued before it (etcd-io/raft read_only.go).
// A round is named by the leader, not by the caller's context (as etcd's is): a follower resends a request with
// the context it used before, and once the first round was answered, its acks still on the network would have
// counted for the resent one, and, as an ack confirms every round queued before, for any read asked for
// meanwhile: confirmed by heartbeats sent before it existed, by followers that may have moved to a new term
// since (simulator seed 3584: a leader paused for 55 ticks answered such a read after its successor had
// committed three writes). A round's name is never reused by this process, so an ack names the heartbeat it
// answers; an ack from an earlier process of this node carries an earlier term and is dropped before it gets here.

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

/** A round's name on the wire: its number, as 8 bytes (big-endian). */
function roundName(n: number): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, Math.floor(n / 0x1_0000_0000));
  dv.setUint32(4, n >>> 0);
  return b;
}

export class ReadOnly {
  /** Pending rounds by name, in the order they were queued (a Map iterates in insertion order). */
  private readonly pending = new Map<string, ReadIndexStatus & { readonly round: Uint8Array }>();
  /** The pending round of each caller's request (`from`, context): a resent request joins it. */
  private readonly byRequest = new Map<string, Uint8Array>();
  /** The last round named by this process; never reset, so no two rounds of it share a name. */
  private lastRound = 0;

  /**
   * Adds a read at `index` asked by `from` with `context`; returns the name of its round, for the heartbeats that
   * confirm it. The same request resent while its round is pending joins that round (its answer goes to the same
   * caller with the same context).
   */
  addRequest(index: number, from: number, context: Uint8Array): Uint8Array {
    const ask = `${from}/${contextKey(context)}`;
    const joined = this.byRequest.get(ask);
    if (joined !== undefined) return joined;
    const round = roundName(++this.lastRound);
    this.pending.set(contextKey(round), { index, from, context, acks: new Set(), round });
    this.byRequest.set(ask, round);
    return round;
  }

  /** Records an ack of the heartbeat round `round`; returns the acks so far (undefined if unknown). */
  recvAck(id: number, round: Uint8Array): ReadonlySet<number> | undefined {
    const rs = this.pending.get(contextKey(round));
    if (!rs) return undefined;
    rs.acks.add(id);
    return rs.acks;
  }

  /** Removes and returns every read queued up to and including round `round`. */
  advance(round: Uint8Array): ReadIndexStatus[] {
    const k = contextKey(round);
    if (!this.pending.has(k)) return [];
    const done: ReadIndexStatus[] = [];
    for (const [q, rs] of this.pending) {
      this.pending.delete(q);
      this.byRequest.delete(`${rs.from}/${contextKey(rs.context)}`);
      done.push(rs);
      if (q === k) break;
    }
    return done;
  }

  /** The name of the newest pending round (what a heartbeat carries), if any. */
  lastPendingRound(): Uint8Array | undefined {
    // Rounds leave from the front (advance) or all at once (reset): while any is pending, the last named is.
    return this.pending.size > 0 ? roundName(this.lastRound) : undefined;
  }

  reset(): void {
    this.pending.clear();
    this.byRequest.clear();
  }
}
