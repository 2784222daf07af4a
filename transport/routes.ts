// Parsing of `--routes`: a comma-separated list of `host:port` or `nats-route://host:port`, IPv6 in
// brackets. User info is refused outright: route credentials come from --cluster-user and
// --cluster-pass-file, never from argv, where `ps` and shell history would expose them.
import { isIP, isIPv6 } from 'node:net';
import { RouteAddressError } from './errors.js';

export interface RouteAddress {
  /** Host without brackets: an IPv4/IPv6 literal or a DNS name. */
  readonly host: string;
  readonly port: number;
  /** Canonical form, `nats-route://host:port` (IPv6 bracketed); safe to log. */
  readonly url: string;
}

const scheme = 'nats-route://';
// RFC 1123 host names: labels of letters, digits and hyphens, not starting or ending with a hyphen.
const dnsName = /^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

function redact(entry: string): string {
  // Everything up to the last '@' before the host is user info; never echo it.
  const at = entry.lastIndexOf('@');
  if (at < 0) return entry;
  const start = entry.startsWith(scheme) ? scheme.length : 0;
  return `${entry.slice(0, start)}***@${entry.slice(at + 1)}`;
}

function userInfoError(entry: string): RouteAddressError {
  const shown = redact(entry);
  return new RouteAddressError('EROUTE_USERINFO', shown,
    `--routes entry "${shown}" carries user info; route credentials come from --cluster-user and ` +
    '--cluster-pass-file, never from argv: remove the "user:password@" part');
}

function addressError(entry: string, why: string): RouteAddressError {
  return new RouteAddressError('EROUTE_ADDRESS', entry,
    `--routes entry "${entry}" ${why}; expected host:port or nats-route://host:port (IPv6 as [addr]:port)`);
}

/** Parses one route address. Throws RouteAddressError. */
export function parseRoute(input: string): RouteAddress {
  const entry = input.trim();
  if (entry === '') throw addressError(entry, 'is empty');
  let rest = entry;
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(entry)) {
    if (!entry.toLowerCase().startsWith(scheme)) throw addressError(entry, 'has an unsupported scheme');
    rest = entry.slice(scheme.length);
    if (rest.endsWith('/')) rest = rest.slice(0, -1);
  }
  if (rest.includes('@')) throw userInfoError(entry);
  if (/[/?#\s]/.test(rest)) throw addressError(entry, 'has a path, query or whitespace');
  let host: string;
  let portText: string;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0 || rest[close + 1] !== ':') throw addressError(entry, 'has a bracketed host without "]:port"');
    host = rest.slice(1, close);
    portText = rest.slice(close + 2);
    if (!isIPv6(host)) throw addressError(entry, 'has a bracketed host that is not an IPv6 address');
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon < 0) throw addressError(entry, 'has no port');
    host = rest.slice(0, colon);
    portText = rest.slice(colon + 1);
    if (host.includes(':')) throw addressError(entry, 'has an IPv6 address without brackets');
    if (isIP(host) === 0 && !dnsName.test(host)) throw addressError(entry, 'has an invalid host name');
  }
  if (!/^[0-9]{1,5}$/.test(portText)) throw addressError(entry, 'has no valid port');
  const port = Number(portText);
  if (port < 1 || port > 65535) throw addressError(entry, 'has a port outside 1-65535');
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return { host, port, url: `${scheme}${shownHost}:${port}` };
}

/**
 * Parses a `--routes` value (comma-separated). An empty string means no routes. Duplicates (same
 * canonical URL) are kept once. Throws RouteAddressError on the first bad entry.
 */
export function parseRoutes(list: string | readonly string[]): RouteAddress[] {
  const entries = typeof list === 'string' ? (list.trim() === '' ? [] : list.split(',')) : list;
  const seen = new Map<string, RouteAddress>();
  for (const entry of entries) {
    const route = parseRoute(entry);
    if (!seen.has(route.url)) seen.set(route.url, route);
  }
  return [...seen.values()];
}
