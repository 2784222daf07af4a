// Value validators. Each throws ConfigError naming the flag, with a one-line message that says what was
// wrong and what is expected; a caller never needs to re-word it.
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { ConfigError } from '../errors.js';

/** Files a flag may name are small (PEM, a password, a users file); bound what we read. */
export const flagFileBytesMax = 1024 * 1024;
const shownValueCharsMax = 60;

/** A value as shown inside an error: JSON-escaped (so a newline can never split the line), truncated. */
export function quote(value: string): string {
  const s = JSON.stringify(value.length > shownValueCharsMax ? value.slice(0, shownValueCharsMax) + '…' : value);
  return s;
}

function fail(flag: string, message: string): never {
  throw new ConfigError(`--${flag}: ${message}`, flag);
}

/** Strict decimal: no sign, exponent, hex, spaces or empty string. */
function parseDecimal(flag: string, raw: string, what: string): number {
  if (!/^[0-9]{1,9}$/.test(raw)) fail(flag, `${quote(raw)} is not ${what}`);
  return Number(raw);
}

export function parsePort(flag: string, raw: string, options: { allowZero: boolean }): number {
  const what = options.allowZero ? 'a port number (0-65535, 0 = any free port)' : 'a port number (1-65535)';
  const port = parseDecimal(flag, raw, what);
  if (port > 65535 || (port === 0 && !options.allowZero)) fail(flag, `${quote(raw)} is not ${what}`);
  return port;
}

export function parseIntInRange(flag: string, raw: string, min: number, max: number): number {
  const what = `an integer from ${min} to ${max}`;
  const n = parseDecimal(flag, raw, what);
  if (n < min || n > max) fail(flag, `${quote(raw)} is not ${what}`);
  return n;
}

/** Units a byte size may carry: powers of 1024 (KiB = K = KB here, as etcd's and nats-server's sizes do). */
const byteUnits: Readonly<Record<string, number>> = { '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4 };

/** A byte size: digits with an optional unit (`268435456`, `256MiB`, `1g`), from `min` to `max` bytes. */
export function parseByteSize(flag: string, raw: string, min: number, max: number): number {
  const what = `a size in bytes from ${min} to ${max} (digits, optionally with K, M, G or T: 256MiB, 1G)`;
  const m = /^([0-9]{1,13})\s?([A-Za-z]{0,3})$/.exec(raw);
  const unit = m === null ? undefined : byteUnits[m[2]!.toLowerCase()];
  if (m === null || unit === undefined) fail(flag, `${quote(raw)} is not ${what}`);
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(n) || n < min || n > max) fail(flag, `${quote(raw)} is not ${what}`);
  return n;
}

export function parseEnum<T extends string>(flag: string, raw: string, values: readonly T[]): T {
  if (!(values as readonly string[]).includes(raw)) fail(flag, `${quote(raw)} is not one of ${values.join('|')}`);
  return raw as T;
}

const hostLabel = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

/** An IPv4/IPv6 literal or a DNS host name (RFC 1123). */
export function isHost(value: string): boolean {
  if (isIP(value) !== 0) return true;
  if (value.length > 253) return false;
  const labels = value.split('.');
  // All-numeric labels are a mistyped IPv4 address (300.1.1.1), never a host name: a TLD is never numeric.
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) return false;
  return labels.every((label) => hostLabel.test(label));
}

export function parseHost(flag: string, raw: string): string {
  if (!isHost(raw)) fail(flag, `${quote(raw)} is not an IP address or host name`);
  return raw;
}

/** Names that end up in INFO, logs, route handshakes and Raft membership: no spaces, no control characters. */
export function parseName(flag: string, raw: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(raw)) {
    fail(flag, `${quote(raw)} is not a valid name (1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit)`);
  }
  return raw;
}

function fsReason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case 'ENOENT': return 'does not exist';
    case 'EACCES': case 'EPERM': return 'cannot be read (permission denied)';
    case 'ENOTDIR': return 'does not exist (a parent is not a directory)';
    case 'ELOOP': return 'cannot be read (symbolic link loop)';
    case 'ENAMETOOLONG': return 'cannot be read (name too long)';
    default: return `cannot be read (${code ?? 'unknown error'})`;
  }
}

/** Reads a small regular file as UTF-8. */
export function readFlagFile(flag: string, path: string): string {
  let size: number;
  try {
    const st = statSync(path);
    if (st.isDirectory()) fail(flag, `${quote(path)} is a directory, not a file`);
    if (!st.isFile()) fail(flag, `${quote(path)} is not a regular file`);
    size = st.size;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    fail(flag, `file ${quote(path)} ${fsReason(err)}`);
  }
  if (size > flagFileBytesMax) fail(flag, `file ${quote(path)} is larger than ${flagFileBytesMax} bytes`);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    fail(flag, `file ${quote(path)} ${fsReason(err)}`);
  }
  if (text.trim().length === 0) fail(flag, `file ${quote(path)} is empty`);
  return text;
}

const pemCertificate = /-----BEGIN CERTIFICATE-----\r?\n[\s\S]*?-----END CERTIFICATE-----/g;

/** Every certificate of a PEM file (a bundle is allowed); at least one. */
export function parseCertificates(flag: string, path: string, text: string): X509Certificate[] {
  const blocks = text.match(pemCertificate) ?? [];
  if (blocks.length === 0) fail(flag, `file ${quote(path)} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch {
      fail(flag, `certificate ${i + 1} in ${quote(path)} is not a valid X.509 certificate`);
    }
  });
}

export function parsePrivateKey(flag: string, path: string, text: string): KeyObject {
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) fail(flag, `file ${quote(path)} holds no PEM private key`);
  if (text.includes('ENCRYPTED')) fail(flag, `the key in ${quote(path)} is encrypted; give an unencrypted PEM key`);
  try {
    return createPrivateKey(text);
  } catch {
    fail(flag, `file ${quote(path)} holds no valid PEM private key`);
  }
}

export interface PemFiles {
  readonly certFile: string;
  readonly keyFile: string;
  /** PEM text as read. */
  readonly cert: string;
  readonly key: string;
}

/** A certificate and its key, both readable PEM, and the key must belong to the certificate. */
export function loadCertAndKey(certFlag: string, certPath: string, keyFlag: string, keyPath: string): PemFiles {
  const cert = readFlagFile(certFlag, certPath);
  const leaf = parseCertificates(certFlag, certPath, cert)[0]!;
  const key = readFlagFile(keyFlag, keyPath);
  const keyObject = parsePrivateKey(keyFlag, keyPath, key);
  if (!leaf.checkPrivateKey(keyObject)) fail(keyFlag, `the key in ${quote(keyPath)} does not belong to the certificate in --${certFlag}`);
  return { certFile: certPath, keyFile: keyPath, cert, key };
}

export interface RouteTarget {
  readonly host: string;
  readonly port: number;
  /** As the operator wrote it, for logs. */
  readonly text: string;
}

/** `host:port` or `nats-route://host:port`, comma-separated; IPv6 in brackets. User info is refused. */
export function parseRoutes(flag: string, raw: string): RouteTarget[] {
  const items = raw.split(',');
  return items.map((item, index) => {
    const n = `route ${index + 1} of ${items.length}`;
    const text = item.trim();
    if (text.length === 0) fail(flag, `${n} is empty (expected host:port,host:port)`);
    let rest = text;
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text);
    if (scheme) {
      if (scheme[1]!.toLowerCase() !== 'nats-route') fail(flag, `${n} ${quote(text)} has scheme ${quote(scheme[1]!)}; use host:port or nats-route://host:port`);
      rest = text.slice(scheme[0].length);
    }
    if (rest.includes('@')) {
      fail(flag, `${n} ${quote(redactUserInfo(text))} carries user info; give the user with --cluster-user and the password in --cluster-pass-file`);
    }
    if (rest.endsWith('/')) rest = rest.slice(0, -1);
    const m = /^(?:\[([^\]]+)\]|([^:[\]/]+)):([^:/]+)$/.exec(rest);
    if (!m) fail(flag, `${n} ${quote(text)} is not host:port`);
    const host = m[1] ?? m[2]!;
    if (m[1] !== undefined ? isIP(host) !== 6 : !isHost(host)) fail(flag, `${n} ${quote(text)} has an invalid host ${quote(host)}`);
    const portText = m[3]!;
    if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      fail(flag, `${n} ${quote(text)} has an invalid port ${quote(portText)} (1-65535)`);
    }
    return { host, port: Number(portText), text };
  });
}

/** Never echo a password back into logs or a terminal. */
function redactUserInfo(text: string): string {
  return text.replace(/^((?:[A-Za-z][A-Za-z0-9+.-]*:\/\/)?)[^@]*@/, '$1***@');
}
