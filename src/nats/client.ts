// One client connection: the protocol state after the parser (CONNECT options, auth, subscriptions, pings) and
// the outbound buffer. Outbound bytes are appended to one buffer and written once per event-loop turn
// (ServerCore.scheduleFlush), so a burst of deliveries costs one socket write per client.
// Over 500 lines on purpose: it is one class, one connection's state, and its hot path (onPub -> deliver -> reserve
// -> afterAppend, pause and stall) reads and writes the same private fields as CONNECT, auth and permissions do;
// splitting it would expose those fields or add a call per message (nats-server likewise keeps client.go whole).
import type { AuthOutcome, Permissions, Principal } from '../auth/types.js';
import { allowAll } from '../auth/types.js';
import { isResponseGrantable } from '../auth/permissions.js';
import { Parser, type ParseFailure, type ParserHandler, type PubArgs } from './parser.js';
import {
  encodedErrors, errLine, publishViolationText, replyViolationText, subscribeViolationText, type ProtocolErrorName,
} from './protocol_errors.js';
import type { ServerCore } from './server_core.js';
import { hasWildcard, isValidPublishSubject, isValidSubject } from './subject.js';
import { matchLiteral, type SublistItem } from './sublist.js';
import type { ClientTransport } from './transport.js';

const okLine = Buffer.from('+OK\r\n');
const pingLine = Buffer.from('PING\r\n');
const pongLine = Buffer.from('PONG\r\n');
const noRespondersHeader = Buffer.from('NATS/1.0 503\r\n\r\n');

/** Reasons to stop reading a client; reading resumes when none is left. */
const pause = { auth: 1, backpressure: 2, stall: 4 } as const;

/** Close reasons, named as nats-server's /connz shows them. */
export const closeReason = {
  clientClosed: 'Client Closed',
  protocolViolation: 'Protocol Violation',
  authFailure: 'Authentication Failure',
  authTimeout: 'Authentication Timeout',
  stale: 'Stale Connection',
  maxPayload: 'Maximum Message Payload Exceeded',
  maxControlLine: 'Maximum Control Line Exceeded',
  slowConsumer: 'Slow Consumer (Pending Bytes)',
  badProtocol: 'Bad Client Protocol Version',
  noRespondersHeaders: 'No Responders Requires Headers',
  serverShutdown: 'Server Shutdown',
  maxConnections: 'Maximum Connections Exceeded',
  revoked: 'Authentication Revoked',
} as const;
export type CloseReason = (typeof closeReason)[keyof typeof closeReason];

export class Subscription implements SublistItem {
  delivered = 0;
  /** Auto-unsubscribe after this many deliveries; 0 = none. */
  max = 0;
  readonly sidBytes: Buffer;
  readonly wildcard: boolean;
  constructor(
    readonly client: Client,
    readonly subject: string,
    readonly queue: string | undefined,
    readonly sid: string,
  ) {
    this.sidBytes = Buffer.from(sid);
    this.wildcard = hasWildcard(subject);
  }
}

interface ResponseGrant {
  remaining: number;
  expiresAt: number;
}
const responseGrantsMax = 10_000;
/** Largest outbound buffer; a turn producing more writes it out in several chunks. */
const outCapacityMax = 256 * 1024;

function writeUint(buf: Buffer, off: number, n: number): number {
  if (n < 10) {
    buf[off] = 48 + n;
    return off + 1;
  }
  let digits = 0;
  for (let t = n; t > 0; t = Math.floor(t / 10)) digits++;
  let p = off + digits;
  for (let t = n; t > 0; t = Math.floor(t / 10)) buf[--p] = 48 + (t % 10);
  return off + digits;
}

/**
 * Tokens (subject, sid) are copied in a JS loop; anything longer through set() with a plain Uint8Array view.
 * Measured on this path (bench/nats.ts figures, a parse+deliver micro-run): set() makes deliver about 3x
 * cheaper for 128-byte payloads than a byte loop, and beats Buffer#copy, which builds a Buffer view per call.
 */
function copyBytes(src: Uint8Array, start: number, end: number, dst: Buffer, at: number): number {
  const n = end - start;
  if (n > 16) {
    dst.set(new Uint8Array(src.buffer, src.byteOffset + start, n), at);
    return at + n;
  }
  for (let i = start; i < end; i++) dst[at++] = src[i]!;
  return at;
}

interface ConnectOptions {
  verbose: boolean;
  pedantic: boolean;
  echo: boolean;
  headers: boolean;
  noResponders: boolean;
  protocol: number;
  name: string | undefined;
  lang: string | undefined;
  version: string | undefined;
}

const booleanFields = ['verbose', 'pedantic', 'echo', 'headers', 'no_responders', 'tls_required'] as const;
const stringFields = ['name', 'lang', 'version', 'user', 'pass', 'auth_token', 'nkey', 'sig', 'jwt'] as const;

/** Parses CONNECT JSON the way Go's json.Unmarshal into nats-server's ClientOpts would accept it; null = reject. */
function parseConnect(json: string): Record<string, unknown> | null {
  let o: unknown;
  try {
    o = JSON.parse(json);
  } catch {
    return null;
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return null;
  const r = o as Record<string, unknown>;
  for (const k of booleanFields) if (r[k] !== undefined && r[k] !== null && typeof r[k] !== 'boolean') return null;
  for (const k of stringFields) if (r[k] !== undefined && r[k] !== null && typeof r[k] !== 'string') return null;
  if (r.protocol !== undefined && r.protocol !== null && !Number.isInteger(r.protocol)) return null;
  return r;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export class Client implements ParserHandler {
  readonly parser: Parser;
  readonly subs = new Map<string, Subscription>();
  readonly startedAt = Date.now();
  opts: ConnectOptions = {
    verbose: true, pedantic: true, echo: true, headers: false, noResponders: false, protocol: 0,
    name: undefined, lang: undefined, version: undefined,
  };
  connectReceived = false;
  principal: Principal | null = null;
  /** null when everything is allowed: the hot path then skips permission checks entirely. */
  perms: Permissions | null = null;
  closed = false;
  reason: CloseReason | undefined;
  inMsgs = 0;
  inBytes = 0;
  outMsgs = 0;
  outBytes = 0;

  private out: Buffer | null = null;
  private outLen = 0;
  private nextOutCapacity = 1024;
  dirty = false;
  private paused = 0;
  private authInFlight = false;
  private pendingInput: Buffer | null = null;
  private pingsOut = 0;
  private pingTimer: NodeJS.Timeout | null = null;
  private authTimer: NodeJS.Timeout | null = null;
  /** Aborted on close while authenticate() is in flight: a password check still queued is dropped. */
  private authAbort: AbortController | null = null;
  private stallTimer: NodeJS.Timeout | null = null;
  /** Publishers paused because this client's outbound is backed up. */
  private stalled: Set<Client> | null = null;
  private grants: Map<string, ResponseGrant> | null = null;
  /** The last PUB subject that passed the syntax checks (see onPub). */
  private validPublishSubject = '';

  constructor(
    readonly server: ServerCore,
    readonly cid: number,
    readonly transport: ClientTransport,
    readonly nonce: string | undefined,
  ) {
    this.parser = new Parser(this, server.limits);
    this.parser.connectRequired = server.authRequired;
  }

  /** Sends INFO (unless already sent in plain text before a TLS upgrade) and starts the timers. */
  start(infoSent: boolean): void {
    if (!infoSent) this.append(this.server.infoLine(this));
    this.transport.start({
      onData: (chunk) => this.onData(chunk),
      onDrain: () => this.onDrain(),
      onClosed: () => this.close(closeReason.clientClosed, false),
    });
    const lim = this.server.limits;
    this.schedulePing(Math.min(2000, lim.pingIntervalMs));
    if (this.server.authRequired) {
      this.authTimer = setTimeout(() => {
        this.authTimer = null;
        if (!this.connectReceived) this.errorAndClose('authenticationTimeout', closeReason.authTimeout);
      }, lim.authTimeoutMs);
      this.authTimer.unref();
    }
  }

  // ---- input ----

  onData(chunk: Buffer): void {
    if (this.closed) return;
    if (this.authInFlight) {
      // Ops after CONNECT wait until authenticate() settles (the PING in the same write must see its result).
      this.pendingInput = this.pendingInput === null ? Buffer.from(chunk) : Buffer.concat([this.pendingInput, chunk]);
      return;
    }
    const used = this.parser.parse(chunk);
    if (used < chunk.length && !this.closed && !this.parser.failed) {
      // stop() was called: keep the rest (copied: the caller may reuse its buffer).
      this.pendingInput = Buffer.from(chunk.subarray(used));
    }
  }

  onConnect(json: string): void {
    const o = parseConnect(json);
    if (o === null) return this.closeSilently(closeReason.protocolViolation);
    const auth = this.server.auth;
    if (auth === undefined || this.principal !== null) return this.finishConnect(o, null);
    this.authInFlight = true;
    this.parser.stop();
    this.setPaused(pause.auth, true);
    // The auth timeout covers the wire (a client that never sends CONNECT), not this node's own queue of
    // password checks: under a connection storm that queue is seconds long, and timing it out made every
    // client retry and queue its check again (issue 13). A client that gives up closes its socket, and the
    // abort below drops its check before it runs.
    this.clearAuthTimer();
    this.authAbort = new AbortController();
    const request = {
      credentials: {
        user: str(o.user), pass: str(o.pass), auth_token: str(o.auth_token), nkey: str(o.nkey), sig: str(o.sig),
        jwt: str(o.jwt),
      },
      nonce: this.nonce,
      remoteAddress: this.transport.remoteAddress,
      tls: this.transport.kind === 'tls' || this.transport.secure === true,
      clientName: str(o.name),
      signal: this.authAbort.signal,
    };
    let settled: Promise<AuthOutcome>;
    try {
      settled = auth.authenticate(request);
    } catch (err) {
      settled = Promise.reject(err);
    }
    settled.then(
      (outcome) => this.finishConnect(o, outcome),
      (err: unknown) => {
        this.server.logger.error({ err, cid: this.cid }, 'bus authenticator failed; refusing the connection');
        this.finishConnect(o, { ok: false, reason: 'authenticator error' });
      },
    );
  }

  private finishConnect(o: Record<string, unknown>, outcome: AuthOutcome | null): void {
    this.authAbort = null;
    if (this.closed) return;
    if (outcome !== null) {
      if (!outcome.ok) {
        this.server.logger.info({ cid: this.cid, reason: outcome.reason, ip: this.transport.remoteAddress },
          'bus authentication failed');
        return this.errorAndClose('authorizationViolation', closeReason.authFailure);
      }
      this.setPrincipal(outcome.principal);
    }
    this.clearAuthTimer();
    this.parser.connectRequired = false;
    const protocol = typeof o.protocol === 'number' ? o.protocol : 0;
    if (protocol < 0 || protocol > 1) return this.errorAndClose('invalidProtocol', closeReason.badProtocol);
    const bool = (k: string, d: boolean): boolean => (typeof o[k] === 'boolean' ? (o[k] as boolean) : d);
    const opts: ConnectOptions = {
      verbose: bool('verbose', true), pedantic: bool('pedantic', true), echo: bool('echo', true),
      headers: bool('headers', false), noResponders: bool('no_responders', false), protocol,
      name: str(o.name), lang: str(o.lang), version: str(o.version),
    };
    if (opts.noResponders && !opts.headers) {
      return this.errorAndClose('noRespondersNeedsHeaders', closeReason.noRespondersHeaders);
    }
    this.opts = opts;
    this.parser.headersAllowed = opts.headers;
    this.connectReceived = true;
    if (opts.verbose) this.append(okLine);
    if (this.authInFlight) {
      this.authInFlight = false;
      this.setPaused(pause.auth, false);
      const rest = this.pendingInput;
      this.pendingInput = null;
      if (rest !== null) this.onData(rest);
    }
  }

  setPrincipal(p: Principal): void {
    this.principal = p;
    this.perms = p.permissions === allowAll ? null : p.permissions;
    this.grants = this.perms?.responses ? new Map() : null;
  }

  onPub(p: PubArgs): void {
    this.inMsgs++;
    this.inBytes += p.size;
    const core = this.server;
    core.inMsgs++;
    core.inBytes += p.size;
    const subject = p.subject;
    // The parser hands out the same string while a publisher repeats its subject, so a subject already found
    // valid is recognised by identity, before the scan.
    if (subject !== this.validPublishSubject && !isValidPublishSubject(subject)) {
      // nats-server only reports this in pedantic mode (reference §1.7).
      if (this.opts.pedantic) {
        this.append(encodedErrors.invalidPublishSubject);
        return;
      }
      // Otherwise nats-server 2.9 routes a wildcard subject like any other, its tokens matched literally against
      // subscriptions ('foo.*' reaches 'foo.*', 'foo.>', '>' but not 'foo.bar'; checked on 2.9.10), and nats.js
      // relies on it: every KV watch/keys creates its consumer with `$JS.API.CONSUMER.CREATE.KV_b.<name>.$KV.b.>`.
      // The sublist matches the same way. A malformed subject (empty token) is still dropped.
      if (!isValidSubject(subject)) return;
    }
    if (this.perms !== null && !this.perms.canPublish(subject) && !this.useResponseGrant(subject)) {
      this.sendErrText(publishViolationText(subject));
      return;
    }
    if (p.replyStart >= 0 && p.argBuf[p.replyStart] === 36 /* $ */) {
      const reply = p.reply()!;
      if (reply.startsWith('$GR.') || reply.startsWith('$GNR.')) {
        this.sendErrText(replyViolationText(reply));
        return;
      }
    }
    this.validPublishSubject = subject;
    if (this.opts.verbose) this.append(okLine);
    core.routeMessage(p, this);
  }

  onSub(subject: string, queue: string | undefined, sid: string): void {
    if (this.perms !== null && !this.perms.canSubscribe(subject, queue)) {
      this.sendErrText(subscribeViolationText(subject, queue));
      return;
    }
    const maxSubs = this.server.limits.maxSubscriptions;
    if (maxSubs > 0 && this.subs.size >= maxSubs) {
      this.append(encodedErrors.maxSubscriptions);
      return;
    }
    if (!this.subs.has(sid)) {
      // A SUB reusing a live sid is ignored, as nats-server does.
      if (!isValidSubject(subject)) {
        this.append(encodedErrors.invalidSubject);
        return;
      }
      const sub = new Subscription(this, subject, queue, sid);
      this.subs.set(sid, sub);
      this.server.addSubscription(sub);
    }
    if (this.opts.verbose) this.append(okLine);
  }

  onUnsub(sid: string, max: number): void {
    const sub = this.subs.get(sid);
    if (sub !== undefined) {
      if (max > 0 && sub.delivered < max) sub.max = max;
      else this.removeSubscription(sub);
    }
    if (this.opts.verbose) this.append(okLine);
  }

  onPing(): void {
    this.append(pongLine);
  }

  onPong(): void {
    this.pingsOut = 0;
  }

  onParseFailure(failure: ParseFailure): void {
    switch (failure) {
      case 'unknown_op': return this.errorAndClose('unknownOperation', closeReason.protocolViolation);
      case 'control_line': return this.errorAndClose('maxControlLine', closeReason.maxControlLine);
      case 'max_payload': return this.errorAndClose('maxPayload', closeReason.maxPayload);
      case 'auth': return this.errorAndClose('authorizationViolation', closeReason.authFailure);
      case 'bad_args': return this.closeSilently(closeReason.protocolViolation);
    }
  }

  removeSubscription(sub: Subscription): void {
    if (this.subs.get(sub.sid) !== sub) return;
    this.subs.delete(sub.sid);
    this.server.removeSubscription(sub);
  }

  // ---- delivery ----

  /** Appends MSG/HMSG for `sub`; false when not delivered (closed, or filtered by a deny on a wildcard SUB). */
  deliver(sub: Subscription, p: PubArgs, origin: Client | null): boolean {
    if (this.closed) return false;
    if (this.perms !== null && sub.wildcard && !this.perms.canSubscribe(p.subject, sub.queue)) return false;
    sub.delivered++;
    let size = p.size;
    let dataStart = p.dataStart;
    let hdr = p.headerBytes;
    if (hdr > 0 && !this.opts.headers) {
      // A header-less subscriber gets the payload only, as MSG (reference §1.3).
      dataStart += hdr;
      size -= hdr;
      hdr = 0;
    }
    const src = p.argBuf;
    const subjLen = p.subjectEnd - p.subjectStart;
    const replyLen = p.replyStart >= 0 ? p.replyEnd - p.replyStart + 1 : 0;
    const need = 5 + subjLen + 1 + sub.sidBytes.length + 1 + replyLen + 22 + size + 2;
    const out = this.reserve(need);
    let o = this.outLen;
    if (hdr > 0) out[o++] = 72; // H
    out[o++] = 77; out[o++] = 83; out[o++] = 71; out[o++] = 32; // MSG
    o = copyBytes(src, p.subjectStart, p.subjectEnd, out, o);
    out[o++] = 32;
    o = copyBytes(sub.sidBytes, 0, sub.sidBytes.length, out, o);
    out[o++] = 32;
    if (replyLen > 0) {
      o = copyBytes(src, p.replyStart, p.replyEnd, out, o);
      out[o++] = 32;
    }
    if (hdr > 0) {
      o = writeUint(out, o, hdr);
      out[o++] = 32;
    }
    o = writeUint(out, o, size);
    out[o++] = 13; out[o++] = 10;
    o = copyBytes(p.data, dataStart, dataStart + size, out, o);
    out[o++] = 13; out[o++] = 10;
    this.outLen = o;
    this.outMsgs++;
    this.outBytes += size;
    this.server.outMsgs++;
    this.server.outBytes += size;
    if (this.grants !== null && p.replyStart >= 0) {
      const reply = p.reply()!;
      // A reply into a reserved subject ($KV., $JS., $UB., $SYS., $SRV.) earns no grant: answering it needs an
      // explicit publish permission (src/auth/permissions.ts, isResponseGrantable).
      if (isResponseGrantable(reply)) this.grantResponse(reply);
    }
    if (sub.max > 0 && sub.delivered >= sub.max) this.removeSubscription(sub);
    this.afterAppend(origin);
    return true;
  }

  /** The 503 status message for a request nobody received (reference §1.12). */
  sendNoResponders(reply: string): void {
    for (const sub of this.subs.values()) {
      if (!matchLiteral(sub.subject, reply)) continue;
      const line = Buffer.from(`HMSG ${reply} ${sub.sid} ${noRespondersHeader.length} ${noRespondersHeader.length}\r\n`);
      const out = this.reserve(line.length + noRespondersHeader.length + 2);
      let o = this.outLen;
      o += line.copy(out, o);
      o += noRespondersHeader.copy(out, o);
      out[o++] = 13; out[o++] = 10;
      this.outLen = o;
      this.afterAppend(null);
      return;
    }
  }

  // ---- permissions ----

  private grantResponse(reply: string): void {
    const r = this.perms!.responses!;
    const grants = this.grants!;
    if (grants.size >= responseGrantsMax) this.pruneGrants();
    grants.set(reply, { remaining: r.maxMessages, expiresAt: r.expiresMs > 0 ? Date.now() + r.expiresMs : 0 });
  }

  private useResponseGrant(subject: string): boolean {
    const g = this.grants?.get(subject);
    if (g === undefined) return false;
    if (g.expiresAt > 0 && Date.now() > g.expiresAt) {
      this.grants!.delete(subject);
      return false;
    }
    if (--g.remaining <= 0) this.grants!.delete(subject);
    return true;
  }

  private pruneGrants(): void {
    const now = Date.now();
    const grants = this.grants!;
    for (const [k, g] of grants) if (g.expiresAt > 0 && now > g.expiresAt) grants.delete(k);
    // Still full (no expiry configured): forget the oldest half rather than grow without bound.
    if (grants.size >= responseGrantsMax) {
      let drop = grants.size >> 1;
      for (const k of grants.keys()) {
        grants.delete(k);
        if (--drop <= 0) break;
      }
    }
  }

  /** After a users/roles change: swap the principal, close if revoked, drop subscriptions no longer allowed. */
  revalidate(): void {
    const auth = this.server.auth;
    if (this.closed || auth === undefined || this.principal === null) return;
    const next = auth.revalidate(this.principal);
    if (next === null) return this.errorAndClose('authorizationViolation', closeReason.revoked);
    this.setPrincipal(next);
    if (this.perms === null) return;
    for (const sub of [...this.subs.values()]) {
      if (this.perms.canSubscribe(sub.subject, sub.queue)) continue;
      this.removeSubscription(sub);
      this.sendErrText(subscribeViolationText(sub.subject, sub.queue));
    }
  }

  // ---- output ----

  private reserve(need: number): Buffer {
    let out = this.out;
    if (out === null || this.outLen + need > out.length) {
      // Full: hand what is there to the socket now instead of growing and copying it, and double the next
      // buffer so that a busy turn ends up writing a few large chunks rather than many small ones.
      if (out !== null && this.outLen > 0) {
        this.writeOut();
        this.nextOutCapacity = Math.min(this.nextOutCapacity * 2, outCapacityMax);
      }
      const cap = Math.max(this.nextOutCapacity, need);
      this.out = out = Buffer.allocUnsafe(cap);
    }
    return out;
  }

  append(bytes: Buffer): void {
    if (this.closed) return;
    const out = this.reserve(bytes.length);
    bytes.copy(out, this.outLen);
    this.outLen += bytes.length;
    this.afterAppend(null);
  }

  sendErrText(text: string): void {
    this.append(errLine(text));
  }

  pendingBytes(): number {
    return this.outLen + this.transport.pendingBytes();
  }

  private afterAppend(origin: Client | null): void {
    if (!this.dirty) {
      this.dirty = true;
      this.server.scheduleFlush(this);
    }
    const pending = this.outLen + this.transport.pendingBytes();
    const lim = this.server.limits;
    if (pending > lim.maxPendingBytes) {
      this.server.slowConsumers++;
      this.server.logger.warn({ cid: this.cid, pending, ip: this.transport.remoteAddress }, 'Slow Consumer Detected');
      // nats-server closes a slow consumer without sending anything (reference §1.11).
      this.close(closeReason.slowConsumer, false);
      return;
    }
    if (origin !== null && origin !== this && pending > this.server.stallBytes) origin.stallOn(this);
  }

  /** Writes the buffered bytes; called once per event-loop turn for every dirty client. */
  flush(): void {
    this.dirty = false;
    if (this.outLen === 0 || this.out === null) return;
    // Size the next buffer after this turn's volume: a busy subscriber gets large buffers, an idle one small.
    this.nextOutCapacity = Math.min(Math.max(1024, this.outLen * 2), outCapacityMax);
    this.writeOut();
  }

  private writeOut(): void {
    // Hand the buffer to the socket (no copy); the next append allocates a fresh one.
    const chunk = this.out!.subarray(0, this.outLen);
    this.out = null;
    this.outLen = 0;
    if (!this.transport.write(chunk)) this.setPaused(pause.backpressure, true);
  }

  private onDrain(): void {
    this.setPaused(pause.backpressure, false);
    this.releaseStalled();
  }

  /** Flow control across clients: stop reading a publisher while a subscriber it feeds is backed up. */
  stallOn(sub: Client): void {
    if (this.closed || (this.paused & pause.stall) !== 0) return;
    (sub.stalled ??= new Set()).add(this);
    this.stallFor(this.server.stallMs);
  }

  /**
   * Flow control towards a route: stop reading this publisher for ms (a route's outbound queue is over its
   * high-water mark and has no drain event a Client could wait on, so the pause is bounded by time only).
   */
  stallFor(ms: number): void {
    if (this.closed || (this.paused & pause.stall) !== 0) return;
    this.setPaused(pause.stall, true);
    // Bounded: a consumer that never drains must not block its publishers forever; it ends up cut off as slow.
    this.stallTimer = setTimeout(() => {
      this.stallTimer = null;
      this.setPaused(pause.stall, false);
    }, ms);
  }

  private releaseStalled(): void {
    const s = this.stalled;
    if (s === null) return;
    this.stalled = null;
    for (const c of s) c.unstall();
  }

  private unstall(): void {
    if (this.stallTimer !== null) {
      clearTimeout(this.stallTimer);
      this.stallTimer = null;
    }
    this.setPaused(pause.stall, false);
  }

  private setPaused(reason: number, on: boolean): void {
    if (this.closed) return;
    const before = this.paused;
    this.paused = on ? before | reason : before & ~reason;
    if (before === 0 && this.paused !== 0) this.transport.pause();
    else if (before !== 0 && this.paused === 0) this.transport.resume();
  }

  // ---- timers and closing ----

  private schedulePing(delayMs: number): void {
    this.pingTimer = setTimeout(() => this.onPingTimer(), delayMs);
    this.pingTimer.unref();
  }

  private onPingTimer(): void {
    if (this.closed) return;
    // nats-server processPingTimer: stale once ping_max PINGs are outstanding, otherwise PING again.
    if (this.pingsOut + 1 > this.server.limits.pingMax) {
      return this.errorAndClose('staleConnection', closeReason.stale);
    }
    this.pingsOut++;
    this.append(pingLine);
    this.schedulePing(this.server.limits.pingIntervalMs);
  }

  private clearAuthTimer(): void {
    if (this.authTimer !== null) {
      clearTimeout(this.authTimer);
      this.authTimer = null;
    }
  }

  errorAndClose(name: ProtocolErrorName, reason: CloseReason): void {
    if (this.closed) return;
    this.append(encodedErrors[name]);
    this.close(reason, true);
  }

  closeSilently(reason: CloseReason): void {
    this.close(reason, true);
  }

  /** `flush`: write what is buffered (e.g. the -ERR) before closing; false drops it (slow consumer, peer gone). */
  close(reason: CloseReason, flush: boolean): void {
    if (this.closed) return;
    if (flush) this.flush();
    this.closed = true;
    this.reason = reason;
    this.parser.stop();
    if (this.pingTimer !== null) clearTimeout(this.pingTimer);
    if (this.stallTimer !== null) clearTimeout(this.stallTimer);
    this.clearAuthTimer();
    this.authAbort?.abort();
    this.authAbort = null;
    this.out = null;
    this.outLen = 0;
    this.pendingInput = null;
    for (const sub of this.subs.values()) this.server.removeSubscription(sub);
    this.subs.clear();
    this.releaseStalled();
    if (flush) {
      // A paused transport (auth, back-pressure, a stopping node) would never read the peer's FIN.
      if (this.paused !== 0) this.transport.resume();
      this.transport.end();
    } else this.transport.destroy();
    this.server.clientClosed(this);
  }
}
