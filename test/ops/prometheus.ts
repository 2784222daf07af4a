// A strict reader of the Prometheus text exposition format 0.0.4 (what /metrics serves), for tests: every line must
// be a HELP, a TYPE or a sample; a TYPE comes before its family's samples and only once; label values are quoted
// with \\, \" and \n escapes; histogram buckets are cumulative and end with le="+Inf" equal to _count.
export class PrometheusParseError extends Error {
  readonly code = 'EPROMTEXT';
  constructor(line: number, text: string, why: string) {
    super(`line ${line}: ${why}: ${JSON.stringify(text)}`);
  }
}

export interface Sample { readonly name: string; readonly labels: Readonly<Record<string, string>>; readonly value: number }
export interface Family { type: string | undefined; help: string | undefined; readonly samples: Sample[] }

const nameRe = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const labelNameRe = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const types = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(s: string): number | undefined {
  if (s === 'NaN') return Number.NaN;
  if (s === '+Inf' || s === 'Inf') return Number.POSITIVE_INFINITY;
  if (s === '-Inf') return Number.NEGATIVE_INFINITY;
  return /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s) ? Number(s) : undefined;
}

function parseLabels(s: string, fail: (why: string) => never): [Record<string, string>, string] {
  const labels: Record<string, string> = {};
  let rest = s.slice(1);
  for (let guard = 0; guard < 1000; guard++) {
    if (rest.startsWith('}')) return [labels, rest.slice(1)];
    const n = labelNameRe.exec(rest);
    if (!n) fail('bad label name');
    rest = rest.slice(n[0].length);
    if (!rest.startsWith('="')) fail('label without ="');
    rest = rest.slice(2);
    let v = '';
    for (;;) {
      if (rest.length === 0) fail('unterminated label value');
      const c = rest[0]!;
      if (c === '"') break;
      if (c === '\\') {
        const e = rest[1];
        if (e === 'n') v += '\n';
        else if (e === '\\' || e === '"') v += e;
        else fail('bad escape in label value');
        rest = rest.slice(2);
      } else {
        v += c;
        rest = rest.slice(1);
      }
    }
    labels[n[0]] = v;
    rest = rest.slice(1);
    if (rest.startsWith(',')) rest = rest.slice(1);
    else if (!rest.startsWith('}')) fail('labels not separated by ,');
  }
  return fail('too many labels');
}

/** The family a sample belongs to: histogram and summary samples carry a suffix. */
function familyOf(name: string, families: Map<string, Family>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      const f = families.get(base);
      if (f && (f.type === 'histogram' || f.type === 'summary')) return base;
    }
  }
  return name;
}

export function parsePrometheusText(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const sampled = new Set<string>();
  if (!text.endsWith('\n')) throw new PrometheusParseError(0, text.slice(-40), 'the last line has no newline');
  const lines = text.slice(0, -1).split('\n');
  lines.forEach((line, i) => {
    const fail = (why: string): never => { throw new PrometheusParseError(i + 1, line, why); };
    const family = (name: string): Family => {
      let f = families.get(name);
      if (!f) families.set(name, (f = { type: undefined, help: undefined, samples: [] }));
      return f;
    };
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
      if (!m) return; // other comments are allowed
      const f = family(m[2]!);
      if (m[1] === 'TYPE') {
        if (!types.has(m[3]!)) fail('unknown type');
        if (f.type !== undefined) fail('second TYPE for the family');
        if (sampled.has(m[2]!)) fail('TYPE after the family\'s samples');
        f.type = m[3];
      } else {
        if (f.help !== undefined) fail('second HELP for the family');
        f.help = m[3];
      }
      return;
    }
    if (line.trim() === '') return;
    const n = nameRe.exec(line) ?? fail('bad metric name');
    let rest = line.slice(n[0].length);
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) [labels, rest] = parseLabels(rest, fail);
    const parts = rest.split(' ');
    if (parts[0] !== '' || parts.length < 2 || parts.length > 3) fail('expected one space, a value and an optional timestamp');
    const value = parseValue(parts[1]!);
    if (value === undefined) fail('bad value');
    if (parts.length === 3 && !/^-?\d+$/.test(parts[2]!)) fail('bad timestamp');
    const base = familyOf(n[0], families);
    sampled.add(base);
    family(base).samples.push({ name: n[0], labels, value: value! });
  });
  for (const [name, f] of families) if (f.type === 'histogram') checkHistogram(name, f);
  return families;
}

function checkHistogram(name: string, f: Family): void {
  const series = new Map<string, Sample[]>();
  const counts = new Map<string, number>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    if (s.name === `${name}_bucket`) {
      if (le === undefined) throw new PrometheusParseError(0, name, 'bucket without le');
      series.set(key, [...(series.get(key) ?? []), s]);
    } else if (s.name === `${name}_count`) counts.set(key, s.value);
  }
  for (const [key, buckets] of series) {
    let prev = -1;
    let prevLe = Number.NEGATIVE_INFINITY;
    for (const b of buckets) {
      const le = parseValue(b.labels['le']!);
      if (le === undefined || le <= prevLe || b.value < prev) throw new PrometheusParseError(0, `${name}${key}`, 'buckets not cumulative in increasing le');
      prev = b.value;
      prevLe = le;
    }
    if (prevLe !== Number.POSITIVE_INFINITY || counts.get(key) !== prev) throw new PrometheusParseError(0, `${name}${key}`, 'the +Inf bucket must be last and equal _count');
  }
}
