// Subject syntax (reference/nats-protocol.md §1.7): tokens separated by '.', none empty, no whitespace;
// '*' matches one token and '>' one or more trailing tokens, and both count only as whole tokens.

const tab = 9, lf = 10, cr = 13, space = 32, dot = 46;

function scanTokens(subject: string, allowWildcards: boolean): boolean {
  const n = subject.length;
  if (n === 0) return false;
  let tokenStart = 0;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? subject.charCodeAt(i) : dot;
    if (c === space || c === tab || c === cr || c === lf) return false;
    if (c !== dot) continue;
    const len = i - tokenStart;
    if (len === 0) return false;
    if (len === 1) {
      const t = subject.charCodeAt(tokenStart);
      if (t === 42 /* * */ && !allowWildcards) return false;
      if (t === 62 /* > */ && (!allowWildcards || i !== n)) return false;
    }
    tokenStart = i + 1;
  }
  return true;
}

/** A subject that SUB accepts: wildcards allowed, '>' only last. */
export function isValidSubject(subject: string): boolean {
  return scanTokens(subject, true);
}

/** A literal subject that a message may be published to: no wildcard tokens. */
export function isValidPublishSubject(subject: string): boolean {
  return scanTokens(subject, false);
}

/** True when the subject has a '*' or '>' token. */
export function hasWildcard(subject: string): boolean {
  if (subject === '*' || subject === '>') return true;
  return subject.startsWith('*.') || subject.endsWith('.*') || subject.endsWith('.>') || subject.includes('.*.');
}

/** Does literal `subject` match `pattern` (which may hold wildcards)? The slow, obvious reference matcher. */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    const tok = p[i]!;
    if (tok === '>') return s.length > i;
    if (i >= s.length) return false;
    if (tok !== '*' && tok !== s[i]) return false;
  }
  return p.length === s.length;
}
