// Shared fixtures for the transport tests: certificates, identities, captured logs, transports, waits.
import { Writable } from 'node:stream';
import nacl from 'tweetnacl';
import { pino, type Logger } from 'pino';
import { createCertificateAuthority, issueCertificate, type PemPair } from '../../src/certs/index.js';
import {
  createRouteTransport, type RouteIdentity, type RouteTransport, type RouteTransportOptions,
} from '../../transport/index.js';
import { waitFor as waitUntil } from '../support/wait.js';

export interface Fixtures {
  ca: PemPair;
  certs: Record<string, PemPair>;
  foreign: PemPair;
  expired: PemPair;
}

export async function makeFixtures(names: readonly string[]): Promise<Fixtures> {
  const ca = await createCertificateAuthority('route-test-ca');
  const other = await createCertificateAuthority('foreign-ca');
  const certs: Record<string, PemPair> = {};
  for (const name of names) certs[name] = await issueCertificate(ca, { commonName: name });
  const foreign = await issueCertificate(other, { commonName: 'rogue' });
  const expired = await issueCertificate(ca, {
    commonName: 'expired', notBefore: new Date(Date.now() - 10 * 86_400_000), validDays: 2,
  });
  return { ca, certs, foreign, expired };
}

export function makeIdentity(seed?: Uint8Array): RouteIdentity & { secretKey: Uint8Array } {
  const pair = seed ? nacl.sign.keyPair.fromSeed(seed) : nacl.sign.keyPair();
  return {
    publicKey: pair.publicKey,
    secretKey: pair.secretKey,
    sign: (data: Uint8Array) => nacl.sign.detached(data, pair.secretKey),
  };
}

export interface LogLine {
  level: number;
  msg: string;
  code?: string;
  reason?: string;
  [key: string]: unknown;
}

/** A pino logger whose JSON lines are kept in memory (nothing is printed). */
export function captureLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const text of chunk.toString().split('\n')) if (text) lines.push(JSON.parse(text) as LogLine);
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}

export async function waitFor(what: string, predicate: () => boolean, timeoutMs = 15_000): Promise<void> {
  await waitUntil(predicate, { what, timeoutMs, intervalMs: 10 });
}

export type TransportOverrides = Partial<RouteTransportOptions>;

/** A transport on an ephemeral loopback port with a working configuration unless overridden. */
export function makeTransport(fx: Fixtures, name: string, overrides: TransportOverrides = {}): RouteTransport {
  const pem = fx.certs[name] ?? fx.certs[Object.keys(fx.certs)[0]!]!;
  return createRouteTransport({
    clusterName: 'test-cluster', serverName: name, host: '127.0.0.1', port: 0, routes: '',
    tls: { cert: pem.cert, key: pem.key, ca: fx.ca.cert }, identity: makeIdentity(),
    user: 'route', password: 'correct horse battery staple', postureDigest: 'posture-v1', clusterSize: 3,
    logger: pino({ level: 'silent' }),
    limits: { backoffBaseMs: 20, backoffMaxMs: 200, handshakeTimeoutMs: 3000, closeGraceMs: 300 },
    ...overrides,
  });
}

export function routeTo(t: RouteTransport): string {
  return `127.0.0.1:${t.address().port}`;
}

export interface Proxy {
  readonly port: number;
  /** Resets every proxied connection (both TCP sockets), like a crashed peer or a cut cable. */
  killAll(): void;
  /** Existing connections silently drop every byte from now on (new connections still pass). */
  blackholeExisting(): void;
  connections(): number;
  close(): Promise<void>;
}

/** A loopback TCP proxy in front of `targetPort`, to cut or freeze a route from outside the transport. */
export async function startProxy(targetPort: number): Promise<Proxy> {
  const { createServer, connect } = await import('node:net');
  type Pair = { client: import('node:net').Socket; upstream: import('node:net').Socket; frozen: boolean };
  const pairs = new Set<Pair>();
  const server = createServer((client) => {
    const upstream = connect({ host: '127.0.0.1', port: targetPort });
    const pair: Pair = { client, upstream, frozen: false };
    pairs.add(pair);
    client.on('data', (d) => { if (!pair.frozen) upstream.write(d); });
    upstream.on('data', (d) => { if (!pair.frozen) client.write(d); });
    const end = () => { pairs.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as import('node:net').AddressInfo).port;
  return {
    port,
    killAll: () => { for (const p of pairs) { p.client.resetAndDestroy(); p.upstream.resetAndDestroy(); } },
    blackholeExisting: () => { for (const p of pairs) p.frozen = true; },
    connections: () => pairs.size,
    close: async () => {
      for (const p of pairs) { p.client.destroy(); p.upstream.destroy(); }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
