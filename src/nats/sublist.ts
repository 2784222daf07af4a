// Subject trie (nats-server server/sublist.go): one node per token, with '*' and '>' children kept apart, plus a
// bounded cache of match results per literal subject. A SUB or UNSUB of pattern P deletes exactly the cached
// subjects that P matches (for a literal P only P itself), so a cached result never misses or keeps a subscription.

export interface SublistItem {
  readonly subject: string;
  /** undefined for a plain subscription. */
  readonly queue: string | undefined;
}

export interface MatchResult<T> {
  /** Plain subscriptions: each receives a copy. */
  readonly plain: readonly T[];
  /** Queue groups (merged by queue name across patterns): one member of each receives the message. */
  readonly queues: readonly (readonly T[])[];
}

interface Node<T> {
  literal: Map<string, Node<T>> | null;
  pwc: Node<T> | null;
  fwc: Node<T> | null;
  plain: T[];
  queues: Map<string, T[]> | null;
}

function newNode<T>(): Node<T> {
  return { literal: null, pwc: null, fwc: null, plain: [], queues: null };
}

function isEmpty<T>(n: Node<T>): boolean {
  return n.plain.length === 0 && (n.queues === null || n.queues.size === 0) && n.pwc === null && n.fwc === null &&
    (n.literal === null || n.literal.size === 0);
}

const emptyResult: MatchResult<never> = Object.freeze({ plain: Object.freeze([]), queues: Object.freeze([]) });

/** Allocation-free: does literal `subject` match `pattern` ('*' one token, '>' one or more trailing tokens)? */
export function matchLiteral(pattern: string, subject: string): boolean {
  const pl = pattern.length, sl = subject.length;
  let pi = 0, si = 0;
  while (pi < pl) {
    if (si >= sl) return false;
    const pEnd = tokenEnd(pattern, pi);
    const sEnd = tokenEnd(subject, si);
    if (pEnd - pi === 1) {
      const c = pattern.charCodeAt(pi);
      if (c === 62 /* > */) return true;
      if (c === 42 /* * */) {
        pi = pEnd + 1;
        si = sEnd + 1;
        continue;
      }
    }
    if (pEnd - pi !== sEnd - si) return false;
    for (let k = 0; k < pEnd - pi; k++) if (pattern.charCodeAt(pi + k) !== subject.charCodeAt(si + k)) return false;
    pi = pEnd + 1;
    si = sEnd + 1;
  }
  return si >= sl;
}

function tokenEnd(s: string, from: number): number {
  const i = s.indexOf('.', from);
  return i < 0 ? s.length : i;
}

function isLiteral(subject: string): boolean {
  for (let i = 0; i < subject.length; i++) {
    const c = subject.charCodeAt(i);
    if ((c === 42 || c === 62) && (i === 0 || subject.charCodeAt(i - 1) === 46) &&
      (i + 1 === subject.length || subject.charCodeAt(i + 1) === 46)) return false;
  }
  return true;
}

export interface SublistStats {
  readonly subscriptions: number;
  readonly cacheEntries: number;
  readonly matches: number;
  readonly cacheHits: number;
}

export class Sublist<T extends SublistItem> {
  private readonly root: Node<T> = newNode();
  private readonly cache = new Map<string, MatchResult<T>>();
  private count = 0;
  private matches = 0;
  private hits = 0;

  constructor(private readonly cacheEntriesMax = 1024) {}

  get size(): number {
    return this.count;
  }

  stats(): SublistStats {
    return { subscriptions: this.count, cacheEntries: this.cache.size, matches: this.matches, cacheHits: this.hits };
  }

  insert(item: T): void {
    let node = this.root;
    for (const token of item.subject.split('.')) {
      if (token === '*') node = node.pwc ??= newNode();
      else if (token === '>') node = node.fwc ??= newNode();
      else {
        node.literal ??= new Map();
        let next = node.literal.get(token);
        if (next === undefined) node.literal.set(token, (next = newNode()));
        node = next;
      }
    }
    if (item.queue === undefined) node.plain.push(item);
    else {
      node.queues ??= new Map();
      const group = node.queues.get(item.queue);
      if (group === undefined) node.queues.set(item.queue, [item]);
      else group.push(item);
    }
    this.count++;
    this.invalidate(item.subject);
  }

  /** Returns false when the item was not in the list. */
  remove(item: T): boolean {
    const tokens = item.subject.split('.');
    const path: Node<T>[] = [this.root];
    let node: Node<T> | null | undefined = this.root;
    for (const token of tokens) {
      node = token === '*' ? node.pwc : token === '>' ? node.fwc : node.literal?.get(token);
      if (!node) return false;
      path.push(node);
    }
    if (!removeFrom(node, item)) return false;
    this.count--;
    // Prune empty nodes so that short-lived subjects (request inboxes) do not leak trie nodes.
    for (let d = tokens.length; d > 0; d--) {
      const child = path[d]!;
      if (!isEmpty(child)) break;
      const parent = path[d - 1]!;
      const token = tokens[d - 1]!;
      if (token === '*') parent.pwc = null;
      else if (token === '>') parent.fwc = null;
      else parent.literal!.delete(token);
    }
    this.invalidate(item.subject);
    return true;
  }

  match(subject: string): MatchResult<T> {
    this.matches++;
    const cached = this.cache.get(subject);
    if (cached !== undefined) {
      this.hits++;
      return cached;
    }
    // The walk fills these two fields, reset per miss: no closures or accumulator object per match (a KV put
    // misses three times, on its key subject, the remote-interest list and its unique reply inbox).
    this.plain = [];
    this.queues = null;
    this.walk(this.root, subject.split('.'), 0);
    const plain = this.plain;
    // (TypeScript keeps the narrowing to null from before the walk.)
    const q = this.queues as Map<string, T[]> | null;
    const result: MatchResult<T> =
      plain.length === 0 && q === null ? (emptyResult as MatchResult<T>) : { plain, queues: q === null ? [] : [...q.values()] };
    if (this.cache.size >= this.cacheEntriesMax) {
      // Drop the oldest quarter (Map keeps insertion order): cheap and keeps hot subjects re-cached quickly.
      let drop = this.cacheEntriesMax >> 2;
      for (const key of this.cache.keys()) {
        this.cache.delete(key);
        if (--drop <= 0) break;
      }
    }
    this.cache.set(subject, result);
    return result;
  }

  private plain: T[] = [];
  private queues: Map<string, T[]> | null = null;

  private walk(n: Node<T>, tokens: readonly string[], depth: number): void {
    if (depth === tokens.length) {
      this.collect(n);
      return;
    }
    if (n.fwc !== null) this.collect(n.fwc);
    if (n.pwc !== null) this.walk(n.pwc, tokens, depth + 1);
    const next = n.literal?.get(tokens[depth]!);
    if (next !== undefined) this.walk(next, tokens, depth + 1);
  }

  private collect(n: Node<T>): void {
    for (const s of n.plain) this.plain.push(s);
    if (n.queues === null) return;
    for (const [name, members] of n.queues) {
      const queues = (this.queues ??= new Map());
      const g = queues.get(name);
      if (g === undefined) queues.set(name, members.slice());
      else for (const m of members) g.push(m);
    }
  }

  private invalidate(pattern: string): void {
    if (this.cache.size === 0) return;
    if (isLiteral(pattern)) {
      this.cache.delete(pattern);
      return;
    }
    for (const key of this.cache.keys()) if (matchLiteral(pattern, key)) this.cache.delete(key);
  }
}

function removeFrom<T extends SublistItem>(node: Node<T>, item: T): boolean {
  if (item.queue === undefined) {
    const i = node.plain.indexOf(item);
    if (i < 0) return false;
    node.plain[i] = node.plain[node.plain.length - 1]!;
    node.plain.pop();
    return true;
  }
  const group = node.queues?.get(item.queue);
  if (group === undefined) return false;
  const i = group.indexOf(item);
  if (i < 0) return false;
  group[i] = group[group.length - 1]!;
  group.pop();
  if (group.length === 0) node.queues!.delete(item.queue);
  return true;
}
