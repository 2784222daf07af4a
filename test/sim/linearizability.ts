// Linearizability checker for a history of register operations (read, write, compare-and-set), partitioned per key (a history is
// linearizable iff each key's sub-history is: linearizability is local, Herlihy & Wing 1990).
// Per key: the Wing & Gong search with Lowe's memoization of (linearized set, state) pairs
// ("Testing for linearizability", Lowe 2017), as in porcupine and Knossos.

export interface Op {
  readonly client: number;
  readonly kind: 'read' | 'write' | 'cas';
  readonly key: string;
  /** For a write or a CAS, the value written; for a read, the value returned (null = absent). */
  readonly value: string | null;
  /** CAS: the value the register must hold for the write to take effect (null = absent). */
  readonly expect?: string | null;
  /** CAS: whether it took effect, as its response said (unknown when `ret` is Infinity). */
  readonly ok?: boolean;
  /** Simulated time of the invocation. */
  readonly call: number;
  /** Simulated time of the response; Infinity when the outcome is unknown (timeout, crash). */
  readonly ret: number;
}

export interface CheckResult {
  readonly ok: boolean;
  /** The search was cut off at the step budget (counted as not proven linearizable). */
  readonly exhausted: boolean;
  readonly steps: number;
  /** The key whose sub-history failed, if any. */
  readonly key?: string;
}

interface Node {
  readonly op: number; // index into ops
  readonly isCall: boolean;
  readonly time: number;
  match: Node | null; // call <-> return
  prev: Node | null;
  next: Node | null;
}

function buildList(ops: readonly Op[]): Node {
  const events: Node[] = [];
  ops.forEach((o, i) => {
    const c: Node = { op: i, isCall: true, time: o.call, match: null, prev: null, next: null };
    const r: Node = { op: i, isCall: false, time: o.ret, match: c, prev: null, next: null };
    c.match = r;
    events.push(c, r);
  });
  // Calls sort before returns at equal times: operations touching at one instant count as concurrent.
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.op - b.op : a.isCall ? -1 : 1));
  const head: Node = { op: -1, isCall: false, time: -Infinity, match: null, prev: null, next: null };
  let p = head;
  for (const e of events) {
    p.next = e;
    e.prev = p;
    p = e;
  }
  return head;
}

function lift(n: Node): void {
  n.prev!.next = n.next;
  if (n.next) n.next.prev = n.prev;
  const m = n.match!;
  m.prev!.next = m.next;
  if (m.next) m.next.prev = m.prev;
}

function unlift(n: Node): void {
  const m = n.match!;
  m.prev!.next = m;
  if (m.next) m.next.prev = m;
  n.prev!.next = n;
  if (n.next) n.next.prev = n;
}

/**
 * Whether `o` can take effect on a register holding `state`: a write always; a read when it returned `state`; a CAS
 * when its answer agrees with the comparison (one without an answer always can: it is a write that happened or not
 * by the same comparison, so its effect follows from `state`).
 */
function isLegal(o: Op, state: string | null): boolean {
  if (o.kind === 'write') return true;
  if (o.kind === 'read') return o.value === state;
  return o.ret === Infinity || (state === o.expect) === o.ok;
}

/** One key's history against a register starting at `init`. */
export function checkRegister(ops: readonly Op[], init: string | null = null, stepsMax = 2_000_000): CheckResult {
  // A read whose answer never came back constrains nothing; drop it. A CAS without an answer may have taken effect.
  const hist = ops.filter((o) => o.kind !== 'read' || o.ret !== Infinity);
  const head = buildList(hist);
  const words = Math.ceil(hist.length / 32) || 1;
  const linearized = new Uint32Array(words);
  const cache = new Set<string>();
  const stack: Array<{ node: Node; state: string | null }> = [];
  let state = init;
  let entry = head.next;
  let steps = 0;
  while (head.next !== null) {
    if (++steps > stepsMax) return { ok: false, exhausted: true, steps };
    if (entry === null) return { ok: false, exhausted: false, steps }; // defensive: no call left to try
    if (entry.isCall) {
      const o = hist[entry.op]!;
      const legal = isLegal(o, state);
      if (legal) {
        const next = o.kind === 'write' || (o.kind === 'cas' && state === o.expect) ? o.value : state;
        linearized[entry.op >>> 5]! |= 1 << (entry.op & 31);
        const key = `${linearized.join(',')}|${next === null ? '\u0000' : next}`;
        if (!cache.has(key)) {
          cache.add(key);
          stack.push({ node: entry, state });
          state = next;
          lift(entry);
          entry = head.next;
          continue;
        }
        linearized[entry.op >>> 5]! &= ~(1 << (entry.op & 31));
      }
      entry = entry.next;
    } else {
      // A return reached: the operation it ends had to be linearized already. Backtrack.
      const top = stack.pop();
      if (!top) return { ok: false, exhausted: false, steps };
      state = top.state;
      linearized[top.node.op >>> 5]! &= ~(1 << (top.node.op & 31));
      unlift(top.node);
      entry = top.node.next;
    }
  }
  return { ok: true, exhausted: false, steps };
}

/** The whole history: every key's sub-history must be linearizable. */
export function checkHistory(ops: readonly Op[], stepsMax = 2_000_000): CheckResult {
  const byKey = new Map<string, Op[]>();
  for (const o of ops) {
    const l = byKey.get(o.key);
    if (l) l.push(o);
    else byKey.set(o.key, [o]);
  }
  let steps = 0;
  for (const [key, l] of [...byKey].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const r = checkRegister(l, null, stepsMax);
    steps += r.steps;
    if (!r.ok) return { ...r, steps, key };
  }
  return { ok: true, exhausted: false, steps };
}
