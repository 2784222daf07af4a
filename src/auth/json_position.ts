// Where is a JSON text broken? V8's JSON.parse messages give a position only for some errors
// ("Unexpected token '}', ... is not valid JSON" and "Unexpected end of JSON input" carry none), so a small
// RFC 8259 syntax scanner finds the offset of the first error itself, then converts it to line/column.

const ws = (c: number): boolean => c === 32 || c === 9 || c === 10 || c === 13;
const depthMax = 512;

class Scan {
  i = 0;
  constructor(readonly s: string) {}
  skip(): void {
    while (this.i < this.s.length && ws(this.s.charCodeAt(this.i))) this.i++;
  }
}

/** Offset of the first syntax error, or -1 when the text is valid JSON. */
export function jsonErrorOffset(text: string): number {
  const sc = new Scan(text);
  try {
    sc.skip();
    value(sc, 0);
    sc.skip();
    return sc.i === text.length ? -1 : sc.i;
  } catch (e) {
    if (typeof e === 'number') return e;
    throw e;
  }
}

function value(sc: Scan, depth: number): void {
  if (depth > depthMax) throw sc.i;
  const c = sc.s.charCodeAt(sc.i);
  if (c === 123) return object(sc, depth);
  if (c === 91) return array(sc, depth);
  if (c === 34) return string(sc);
  if (c === 45 || (c >= 48 && c <= 57)) return number(sc);
  for (const word of ['true', 'false', 'null']) {
    if (sc.s.startsWith(word, sc.i)) {
      sc.i += word.length;
      return;
    }
  }
  throw sc.i;
}

function object(sc: Scan, depth: number): void {
  sc.i++;
  sc.skip();
  if (sc.s.charCodeAt(sc.i) === 125) {
    sc.i++;
    return;
  }
  for (;;) {
    sc.skip();
    if (sc.s.charCodeAt(sc.i) !== 34) throw sc.i;
    string(sc);
    sc.skip();
    if (sc.s.charCodeAt(sc.i) !== 58) throw sc.i;
    sc.i++;
    sc.skip();
    value(sc, depth + 1);
    sc.skip();
    const c = sc.s.charCodeAt(sc.i);
    if (c === 125) {
      sc.i++;
      return;
    }
    if (c !== 44) throw sc.i;
    sc.i++;
  }
}

function array(sc: Scan, depth: number): void {
  sc.i++;
  sc.skip();
  if (sc.s.charCodeAt(sc.i) === 93) {
    sc.i++;
    return;
  }
  for (;;) {
    sc.skip();
    value(sc, depth + 1);
    sc.skip();
    const c = sc.s.charCodeAt(sc.i);
    if (c === 93) {
      sc.i++;
      return;
    }
    if (c !== 44) throw sc.i;
    sc.i++;
  }
}

function string(sc: Scan): void {
  sc.i++;
  for (;;) {
    if (sc.i >= sc.s.length) throw sc.i;
    const c = sc.s.charCodeAt(sc.i);
    if (c === 34) {
      sc.i++;
      return;
    }
    if (c < 32) throw sc.i;
    if (c === 92) {
      const e = sc.s.charCodeAt(sc.i + 1);
      if (e === 117) {
        if (!/^[0-9a-fA-F]{4}$/.test(sc.s.slice(sc.i + 2, sc.i + 6))) throw sc.i;
        sc.i += 6;
        continue;
      }
      if (![34, 92, 47, 98, 102, 110, 114, 116].includes(e)) throw sc.i;
      sc.i += 2;
      continue;
    }
    sc.i++;
  }
}

function number(sc: Scan): void {
  const m = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(sc.s.slice(sc.i, sc.i + 400));
  if (m === null) throw sc.i;
  sc.i += m[0].length;
}

export interface TextPosition {
  /** 1-based. */
  readonly line: number;
  /** 1-based, in UTF-16 code units. */
  readonly column: number;
}

export function positionOf(text: string, offset: number): TextPosition {
  let line = 1;
  let lineStart = 0;
  const end = Math.min(offset, text.length);
  for (let i = 0; i < end; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: end - lineStart + 1 };
}

/** JSON.parse, or a position-carrying failure. */
export function parseJsonWithPosition(text: string): { ok: true; value: unknown } | { ok: false; message: string; offset: number; line: number; column: number } {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    let offset = jsonErrorOffset(text);
    if (offset < 0) {
      const m = /at position (\d+)/.exec(message);
      offset = m !== null ? Number(m[1]) : 0;
    }
    return { ok: false, message, offset, ...positionOf(text, offset) };
  }
}
