// Per-subject permissions, compiled into subject tries once per user/role change; checks walk the subject by
// char codes and allocate nothing.
//
// Semantics (differences from nats-server 2.9 are deliberate and marked ≠):
// - A role grants publish and subscribe subjects. An absent allow list grants NOTHING (≠ nats-server, where an
//   absent list means "everything"): roles are unioned, so a role that only grants subscribe must not grant
//   every publish. Write [">"] to grant everything.
// - Within a role, deny wins over allow. Across roles, a user may do what ANY of its roles allows (union of
//   grants; one role's deny does not take away another role's grant).
// - Publish: the literal subject must match an allow pattern and no deny pattern.
// - Subscribe: the SUB subject (may hold wildcards) must be a SUBSET of one allow pattern (≠ nats-server, which
//   matches wildcard tokens as literals so `foo.*` lets a client subscribe `foo.>`), and must not OVERLAP any
//   deny pattern (≠ nats-server, which accepts and then filters denied messages per delivery: we refuse the
//   subscription instead, so nothing denied can ever be delivered).
// - Queue-group rules use nats-server's "<subject> <queue>" form. An allow entry without a queue grants plain
//   and any-queue subscriptions; "<subject> <queue>" grants only queue subscriptions with exactly that queue
//   name (queue names are literal). A deny entry without a queue denies all; with a queue only that queue.
// - Reserved subjects ($SYS.>, $UB.>, $JS.>, $KV.>) are denied unless granted explicitly: only allow patterns
//   whose first token is literal (e.g. `$KV.b1.>`) can grant them, never `>` or `*.…`. A subscription whose
//   first token is a wildcard and that could receive a reserved subject (`>`, `*.x`, …) is refused.
// - allow_responses: true = 1 reply within 2 minutes (nats-server's defaults), or { max, expires }. ≠ nats-server:
//   a response grant never reaches a reserved subject ($KV., $JS., $UB., $SYS., $SRV.). In nats-server a reply
//   subject names any subject the requester chose, so an app user could make an ordinary responder write a KV key
//   (`PUB app.echo $KV.b.k`) that neither of them may write; here answering such a reply needs an explicit publish
//   grant of that subject (isResponseGrantable()).
import { isValidSubject } from '../nats/subject.js';
import { MembershipdError } from '../errors.js';
import type { Permissions } from './types.js';

export const reservedSubjectPatterns = ['$SYS.>', '$UB.>', '$JS.>', '$KV.>'] as const;

export interface SubjectRules {
  readonly allow?: readonly string[];
  readonly deny?: readonly string[];
}

export interface PermissionSpec {
  /** A plain list is the allow list. */
  readonly publish?: SubjectRules | readonly string[];
  readonly subscribe?: SubjectRules | readonly string[];
  /** true = { max: 1, expires: '2m' }; expires is milliseconds or a duration string ('500ms', '5s', '2m', '1h'); 0 = never. */
  readonly allow_responses?: boolean | { readonly max?: number; readonly expires?: number | string };
}

export class PermissionSpecError extends MembershipdError {
  readonly path: string;
  constructor(path: string, message: string) {
    super('EPERMSPEC', `${path}: ${message}`);
    this.path = path;
  }
}

const dot = 46, star = 42, gt = 62, space = 32;

// ---- the trie -------------------------------------------------------------------------------------------
// Level = "at the start of a token"; After = "just after a token" (pattern may end here or continue with '.').
// Literal tokens are found by a hash computed while scanning the subject's chars, confirmed with startsWith,
// so matching never slices the subject (a char-per-node trie measured 2-3x slower: one Map lookup per char).

class Term {
  /** An entry without a queue. */
  plain = false;
  /** Queue names of "<subject> <queue>" entries ending here. */
  readonly queues: string[] = [];
}

class After {
  end: Term | null = null;
  next: Level | null = null;
}

/** A literal token at a level; `token` is kept to confirm a hash hit with startsWith (no slicing). */
interface LiteralEntry {
  readonly token: string;
  readonly after: After;
}

class Level {
  /** Literal tokens by hashToken(); a bucket holds the (rare) colliding tokens. */
  readonly lit = new Map<number, LiteralEntry[]>();
  /** Every literal token's After, for walks where the subject's token is '*' (it overlaps all of them). */
  readonly litAfters: After[] = [];
  star: After | null = null;
  gt: Term | null = null;
}

// Scanning a token yields its end and, through this module variable (no allocation, no tuple), its hash.
let scannedHash = 0;

/** End of the token starting at `pos`; sets scannedHash to its FNV-1a hash (30 bits). */
function scanToken(s: string, pos: number): number {
  let h = 0x811c9dc5;
  const n = s.length;
  let i = pos;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === dot) break;
    h = Math.imul(h ^ c, 0x01000193);
  }
  // Kept within V8's small-integer range (31 bits): a larger number is a heap number, which made every Map
  // lookup allocate and cost 3x more.
  scannedHash = h & 0x3fffffff;
  return i;
}

function findLiteral(level: Level, s: string, pos: number, e: number, hash: number): After | null {
  const bucket = level.lit.get(hash);
  if (bucket === undefined) return null;
  const len = e - pos;
  for (let i = 0; i < bucket.length; i++) {
    const entry = bucket[i]!;
    if (entry.token.length === len && s.startsWith(entry.token, pos)) return entry.after;
  }
  return null;
}

class SubjectTrie {
  readonly root = new Level();
  size = 0;

  insert(subject: string, queue: string | undefined): void {
    let level = this.root;
    let pos = 0;
    const n = subject.length;
    for (;;) {
      let end = subject.indexOf('.', pos);
      if (end < 0) end = n;
      const len = end - pos;
      if (len === 1 && subject.charCodeAt(pos) === gt) {
        addToTerm((level.gt ??= new Term()), queue);
        break;
      }
      let after: After;
      if (len === 1 && subject.charCodeAt(pos) === star) {
        after = level.star ??= new After();
      } else {
        scanToken(subject, pos);
        const hash = scannedHash;
        const found = findLiteral(level, subject, pos, end, hash);
        if (found !== null) after = found;
        else {
          after = new After();
          const token = subject.slice(pos, end);
          const bucket = level.lit.get(hash);
          if (bucket === undefined) level.lit.set(hash, [{ token, after }]);
          else bucket.push({ token, after });
          level.litAfters.push(after);
        }
      }
      if (end === n) {
        addToTerm((after.end ??= new Term()), queue);
        break;
      }
      level = after.next ??= new Level();
      pos = end + 1;
    }
    this.size++;
  }
}

function addToTerm(term: Term, queue: string | undefined): void {
  if (queue === undefined) term.plain = true;
  else if (!term.queues.includes(queue)) term.queues.push(queue);
}

function termGrants(term: Term | null, queue: string | undefined): boolean {
  if (term === null) return false;
  return term.plain || (queue !== undefined && term.queues.includes(queue));
}

/** Is literal subject `s` (from `pos`) matched by some pattern in `level`? `literalOnly` skips wildcards here. */
function matchLevel(level: Level, s: string, pos: number, queue: string | undefined, literalOnly: boolean): boolean {
  const e = scanToken(s, pos);
  const hash = scannedHash;
  if (e === pos) return false; // empty token: not a valid subject, matches nothing
  if (!literalOnly) {
    if (termGrants(level.gt, queue)) return true;
    if (level.star !== null && matchAfter(level.star, s, e, queue)) return true;
  }
  const after = findLiteral(level, s, pos, e, hash);
  return after !== null && matchAfter(after, s, e, queue);
}

function matchAfter(after: After, s: string, e: number, queue: string | undefined): boolean {
  if (e === s.length) return termGrants(after.end, queue);
  return after.next !== null && matchLevel(after.next, s, e + 1, queue, false);
}

/** Is the (wildcard) pattern `p` from `pos` a subset of some pattern in `level`? */
function subsumedLevel(level: Level, p: string, pos: number, queue: string | undefined, literalOnly: boolean): boolean {
  const e = scanToken(p, pos);
  const hash = scannedHash;
  if (e === pos) return false;
  const single = e - pos === 1;
  const c = p.charCodeAt(pos);
  if (!literalOnly && termGrants(level.gt, queue)) return true; // '>' covers any ≥1 remaining tokens
  if (single && c === gt) return false; // only a '>' covers a '>'
  if (!literalOnly && level.star !== null && subsumedAfter(level.star, p, e, queue)) return true;
  if (single && c === star) return false; // only '*' or '>' cover a '*'
  const after = findLiteral(level, p, pos, e, hash);
  return after !== null && subsumedAfter(after, p, e, queue);
}

function subsumedAfter(after: After, p: string, e: number, queue: string | undefined): boolean {
  if (e === p.length) return termGrants(after.end, queue);
  return after.next !== null && subsumedLevel(after.next, p, e + 1, queue, false);
}

/** Does the (wildcard) pattern `p` from `pos` overlap some pattern in `level` (share at least one subject)? */
function overlapsLevel(level: Level, p: string, pos: number, queue: string | undefined): boolean {
  const e = scanToken(p, pos);
  const hash = scannedHash;
  if (e === pos) return false;
  const single = e - pos === 1;
  const c = p.charCodeAt(pos);
  if (termGrants(level.gt, queue)) return true;
  if (single && c === gt) return anyAfterLevel(level, queue);
  if (level.star !== null && overlapsAfter(level.star, p, e, queue)) return true;
  if (single && c === star) {
    const afters = level.litAfters;
    for (let i = 0; i < afters.length; i++) if (overlapsAfter(afters[i]!, p, e, queue)) return true;
    return false;
  }
  const after = findLiteral(level, p, pos, e, hash);
  return after !== null && overlapsAfter(after, p, e, queue);
}

function overlapsAfter(after: After, p: string, e: number, queue: string | undefined): boolean {
  if (e === p.length) return termGrants(after.end, queue);
  return after.next !== null && overlapsLevel(after.next, p, e + 1, queue);
}

/** `p`'s trailing '>' overlaps every pattern that has at least one token here (with a granting term). */
function anyAfterLevel(level: Level, queue: string | undefined): boolean {
  if (termGrants(level.gt, queue)) return true;
  if (level.star !== null && anyAfter(level.star, queue)) return true;
  const afters = level.litAfters;
  for (let i = 0; i < afters.length; i++) if (anyAfter(afters[i]!, queue)) return true;
  return false;
}

function anyAfter(after: After, queue: string | undefined): boolean {
  if (termGrants(after.end, queue)) return true;
  return after.next !== null && anyAfterLevel(after.next, queue);
}

// ---- reserved subjects ----------------------------------------------------------------------------------

/** Does the literal subject's first token name a reserved prefix (and another token follow)? No allocation. */
function isReservedLiteral(s: string): boolean {
  return (
    s.charCodeAt(0) === 36 /* $ */ &&
    ((s.startsWith('$SYS.') && s.length > 5) ||
      (s.startsWith('$UB.') && s.length > 4) ||
      (s.startsWith('$JS.') && s.length > 4) ||
      (s.startsWith('$KV.') && s.length > 4))
  );
}

/**
 * May a response grant (allow_responses) cover this reply subject? Never for the reserved prefixes nor `$SRV.`
 * (service discovery: a forged reply there would impersonate a service's answer to a PING/INFO/STATS request):
 * a reply subject is chosen by the requester, so a grant reaching them would lend the responder's role to anyone
 * who can publish a request. No allocation.
 */
export function isResponseGrantable(s: string): boolean {
  return !(s.charCodeAt(0) === 36 /* $ */ && (isReservedLiteral(s) || (s.startsWith('$SRV.') && s.length > 5)));
}

/** A SUB subject whose first token is a wildcard and that can match a ≥2-token subject. */
function wildcardReachesReserved(p: string): boolean {
  const c = p.charCodeAt(0);
  if (c === gt) return p.length === 1;
  return c === star && p.length > 1 && p.charCodeAt(1) === dot;
}

// ---- compiled roles -------------------------------------------------------------------------------------

/** One role's grants. Exposed for tests and for the authenticator's union. */
export class CompiledRole {
  private readonly pubAllow = new SubjectTrie();
  private readonly pubDeny = new SubjectTrie();
  private readonly subAllow = new SubjectTrie();
  private readonly subDeny = new SubjectTrie();
  readonly responses: Permissions['responses'];

  constructor(spec: PermissionSpec, path = 'permissions') {
    const pub = normalizeRules(spec.publish, `${path}.publish`);
    const sub = normalizeRules(spec.subscribe, `${path}.subscribe`);
    for (const [i, entry] of pub.allow.entries()) this.pubAllow.insert(parsePublishEntry(entry, `${path}.publish.allow[${i}]`), undefined);
    for (const [i, entry] of pub.deny.entries()) this.pubDeny.insert(parsePublishEntry(entry, `${path}.publish.deny[${i}]`), undefined);
    for (const [i, entry] of sub.allow.entries()) {
      const [subject, queue] = parseSubscribeEntry(entry, `${path}.subscribe.allow[${i}]`);
      this.subAllow.insert(subject, queue);
    }
    for (const [i, entry] of sub.deny.entries()) {
      const [subject, queue] = parseSubscribeEntry(entry, `${path}.subscribe.deny[${i}]`);
      this.subDeny.insert(subject, queue);
    }
    this.responses = parseResponses(spec.allow_responses, `${path}.allow_responses`);
  }

  canPublish(subject: string): boolean {
    if (this.pubAllow.size === 0) return false;
    if (!matchLevel(this.pubAllow.root, subject, 0, undefined, isReservedLiteral(subject))) return false;
    return this.pubDeny.size === 0 || !matchLevel(this.pubDeny.root, subject, 0, undefined, false);
  }

  canSubscribe(subject: string, queue: string | undefined): boolean {
    if (this.subAllow.size === 0 || wildcardReachesReserved(subject)) return false;
    if (!subsumedLevel(this.subAllow.root, subject, 0, queue, isReservedLiteral(subject))) return false;
    return this.subDeny.size === 0 || !overlapsLevel(this.subDeny.root, subject, 0, queue);
  }
}

function normalizeRules(rules: SubjectRules | readonly string[] | undefined, path: string): { allow: readonly string[]; deny: readonly string[] } {
  if (rules === undefined) return { allow: [], deny: [] };
  if (Array.isArray(rules)) return { allow: checkList(rules, path), deny: [] };
  if (typeof rules !== 'object' || rules === null) throw new PermissionSpecError(path, 'must be a list of subjects or { allow, deny }');
  const r = rules as SubjectRules;
  for (const key of Object.keys(r)) if (key !== 'allow' && key !== 'deny') throw new PermissionSpecError(path, `unknown key "${key}" (allow, deny)`);
  return { allow: checkList(r.allow ?? [], `${path}.allow`), deny: checkList(r.deny ?? [], `${path}.deny`) };
}

function checkList(list: unknown, path: string): readonly string[] {
  if (!Array.isArray(list)) throw new PermissionSpecError(path, 'must be a list of subject strings');
  for (const [i, v] of list.entries()) if (typeof v !== 'string') throw new PermissionSpecError(`${path}[${i}]`, 'must be a string');
  return list as string[];
}

function parsePublishEntry(entry: string, path: string): string {
  if (!isValidSubject(entry)) throw new PermissionSpecError(path, `"${entry}" is not a valid subject (queue groups apply to subscribe only)`);
  return entry;
}

function parseSubscribeEntry(entry: string, path: string): [string, string | undefined] {
  const sp = entry.indexOf(' ');
  if (sp < 0) {
    if (!isValidSubject(entry)) throw new PermissionSpecError(path, `"${entry}" is not a valid subject`);
    return [entry, undefined];
  }
  const subject = entry.slice(0, sp);
  const queue = entry.slice(sp + 1);
  if (!isValidSubject(subject)) throw new PermissionSpecError(path, `"${subject}" is not a valid subject`);
  if (queue.length === 0 || /\s/.test(queue)) {
    throw new PermissionSpecError(path, `"${entry}": write "<subject> <queue>" with one space and a queue name without whitespace`);
  }
  return [subject, queue];
}

const responsesDefault = { maxMessages: 1, expiresMs: 120_000 } as const;

function parseResponses(value: PermissionSpec['allow_responses'], path: string): Permissions['responses'] {
  if (value === undefined || value === false) return null;
  if (value === true) return responsesDefault;
  if (typeof value !== 'object' || value === null) throw new PermissionSpecError(path, 'must be true, false or { max, expires }');
  const max = value.max ?? 1;
  if (!Number.isInteger(max) || max < 1) throw new PermissionSpecError(`${path}.max`, 'must be an integer ≥ 1');
  const expiresMs = value.expires === undefined ? responsesDefault.expiresMs : parseDurationMs(value.expires, `${path}.expires`);
  return { maxMessages: max, expiresMs };
}

export function parseDurationMs(value: number | string, path: string): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new PermissionSpecError(path, 'must be a non-negative number of milliseconds');
    return Math.floor(value);
  }
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(value);
  if (m === null) throw new PermissionSpecError(path, `"${value}" is not a duration (e.g. 500ms, 5s, 2m, 1h)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.floor(Number(m[1]) * unit);
}

// ---- private inboxes -----------------------------------------------------------------------------------

/**
 * The reply-inbox prefix that belongs to user `name`: `_INBOX_<name>` with every '.' of the name written '~'.
 * User names may hold '.', and `_INBOX_a.>` would then cover user `a.b`'s inbox `_INBOX_a.b.…`; '~' is not
 * allowed in a name, so the mapping is one to one and no user's inbox lies inside another's. A client connects
 * with it as its inbox prefix (nats.js `inboxPrefix`), so its replies never pass through the shared `_INBOX.`
 * that a role granting `_INBOX.>` could read.
 */
export function userInboxPrefix(name: string): string {
  return `_INBOX_${name.replaceAll('.', '~')}`;
}

/** What every named user may do without any role: publish and subscribe within its own inbox prefix. */
export function userInboxRole(name: string): CompiledRole {
  const inbox = `${userInboxPrefix(name)}.>`;
  return new CompiledRole({ publish: [inbox], subscribe: [inbox] }, `inbox of ${name}`);
}

// ---- union of roles -------------------------------------------------------------------------------------

function unionResponses(roles: readonly CompiledRole[]): Permissions['responses'] {
  let out: { maxMessages: number; expiresMs: number } | null = null;
  for (const r of roles) {
    if (r.responses === null) continue;
    if (out === null) out = { ...r.responses };
    else {
      out.maxMessages = Math.max(out.maxMessages, r.responses.maxMessages);
      out.expiresMs = out.expiresMs === 0 || r.responses.expiresMs === 0 ? 0 : Math.max(out.expiresMs, r.responses.expiresMs);
    }
  }
  return out;
}

// A direct-mapped memo of recent answers in front of the tries: 256 preallocated slots per Permissions, keyed
// by the subject string itself (hash of its chars picks the slot, `===` confirms), so a hit costs one scan and
// one compare and a miss overwrites a slot: nothing is allocated either way. Sound because a Permissions object
// never changes (a users/roles change builds a new one). nats-server keeps a similar per-client cache.
const memoSlots = 256;

class Memo {
  readonly keys: (string | undefined)[] = new Array<string | undefined>(memoSlots).fill(undefined);
  readonly values = new Uint8Array(memoSlots);
}

function slotOf(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return (h >>> 0) & (memoSlots - 1);
}

function anyPublish(list: readonly CompiledRole[], subject: string): boolean {
  for (let i = 0; i < list.length; i++) if (list[i]!.canPublish(subject)) return true;
  return false;
}

function anySubscribe(list: readonly CompiledRole[], subject: string, queue: string | undefined): boolean {
  for (let i = 0; i < list.length; i++) if (list[i]!.canSubscribe(subject, queue)) return true;
  return false;
}

/** The permissions of a principal holding all `roles`: whatever any of them allows. No roles = nothing. */
export function unionPermissions(roles: readonly CompiledRole[]): Permissions {
  const list = roles.slice();
  const pub = new Memo();
  const sub = new Memo(); // plain subscriptions and the server's per-delivery checks (queue undefined) only
  // The NATS parser hands over the very same string object while a publisher repeats a subject, so the last
  // answer is checked first by identity (a pointer compare) before the memo's hash.
  let lastPub = '', lastPubOk = false, lastSub = '', lastSubOk = false;
  return {
    canPublish(subject) {
      if (subject === lastPub) return lastPubOk;
      const slot = slotOf(subject);
      let ok: boolean;
      if (pub.keys[slot] === subject) ok = pub.values[slot] === 1;
      else {
        ok = anyPublish(list, subject);
        pub.keys[slot] = subject;
        pub.values[slot] = ok ? 1 : 0;
      }
      lastPub = subject;
      lastPubOk = ok;
      return ok;
    },
    canSubscribe(subject, queue) {
      if (queue !== undefined) return anySubscribe(list, subject, queue);
      if (subject === lastSub) return lastSubOk;
      const slot = slotOf(subject);
      let ok: boolean;
      if (sub.keys[slot] === subject) ok = sub.values[slot] === 1;
      else {
        ok = anySubscribe(list, subject, undefined);
        sub.keys[slot] = subject;
        sub.values[slot] = ok ? 1 : 0;
      }
      lastSub = subject;
      lastSubOk = ok;
      return ok;
    },
    responses: unionResponses(list),
  };
}

/** Compiles one permission spec (e.g. a single role) into Permissions. Throws PermissionSpecError. */
export function compilePermissions(spec: PermissionSpec, path?: string): Permissions {
  return unionPermissions([new CompiledRole(spec, path)]);
}

export const denyAll: Permissions = { canPublish: () => false, canSubscribe: () => false, responses: null };
