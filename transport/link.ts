// One TLS connection to a peer: handshake, framing, keep-alive and the bounded outbound queue.
// The transport owns the policy (which link to keep, when to redial); a Link only reports to it.
import { randomBytes } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from './clock.js';
import { FrameError } from './errors.js';
import {
  busFrameBytes, encodeFrame, frameHeaderBytes, FrameParser, writeBusFrame, type BusFrame, type HelloBody, type RouteFrame,
  type WireFrame,
} from './frame.js';
import {
  channelBindingBytes, channelBindingLabel, checkAuth, checkHello, createAuth, createHello,
  type HandshakeConfig, type Refusal, type RefusalCode,
} from './handshake.js';
import type { RouteLimits } from './limits.js';
import { describeSocketError } from './tls.js';

export type LinkState = 'tls' | 'hello' | 'auth' | 'up' | 'closed';

/** Why a link closed; `origin` says who decided. */
export interface LinkClose extends Refusal {
  readonly origin: 'local' | 'peer' | 'io';
  readonly wasUp: boolean;
}

export interface LinkEvents {
  /** Peer proved its identity and password; the owner accepts (undefined) or refuses. */
  authenticated(link: Link, peer: HelloBody): Refusal | undefined;
  up(link: Link): void;
  frame(link: Link, frame: RouteFrame): void;
  closed(link: Link, close: LinkClose): void;
}

export interface LinkCounters {
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  /** Socket writes (each a TLS record or more, and a syscall): frames per write is the batching a route achieved. */
  writes: number;
  raftDropped: number;
}

/** Bytes per socket write when draining a backlog: large enough for full TLS records, small enough to interleave. */
const flushBytes = 256 * 1024;
/** Size of a batch buffer for bus frames (a larger frame gets a buffer of its own size). */
const batchBytes = 64 * 1024;

// Refusals that are part of normal operation: logged at debug, not as warnings.
const quietCodes: ReadonlySet<string> = new Set<RefusalCode>(['self', 'duplicate', 'shutdown']);

export class Link {
  readonly outbound: boolean;
  readonly address: string;
  readonly counters: LinkCounters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0, writes: 0, raftDropped: 0 };
  state: LinkState = 'tls';
  peer: HelloBody | undefined;
  rttMs: number | undefined;
  readonly ownHello: HelloBody;
  /** Resolves when the socket is fully closed (for leak-free shutdown). */
  readonly done: Promise<void>;

  readonly #socket: TLSSocket;
  readonly #config: HandshakeConfig;
  readonly #limits: RouteLimits;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #events: LinkEvents;
  readonly #parser: FrameParser;
  #binding: Buffer | undefined;
  #handshakeTimer: TimerHandle | undefined;
  #pingTimer: TimerHandle | undefined;
  #graceTimer: TimerHandle | undefined;
  #pingSeq = 0;
  #pingSentAt = 0;
  #pingsOut = 0;
  /** Data frames waiting for the socket; `#head` is the first unsent one (no O(n) shift on a long queue). */
  #queue: Buffer[] = [];
  /** Frames in each queue entry (a sealed batch holds many). */
  #queueFrames: number[] = [];
  #head = 0;
  #queueBytes = 0;
  #queuedFrames = 0;
  /** Batch buffer that bus frames are encoded into; [batchStart, batchEnd) is filled but not yet queued. */
  #batch: Buffer | undefined;
  #batchStart = 0;
  #batchEnd = 0;
  #batchFrames = 0;
  /** Keep-alive and handshake frames: written ahead of queued data so a pong never waits behind bulk. */
  #control: Buffer[] = [];
  #receivedSinceTick = false;
  #flushScheduled: NodeJS.Immediate | undefined;
  #waitingDrain = false;

  constructor(socket: TLSSocket, outbound: boolean, address: string, config: HandshakeConfig, limits: RouteLimits,
    clock: Clock, logger: Logger, events: LinkEvents) {
    this.#socket = socket;
    this.outbound = outbound;
    this.address = address;
    this.#config = config;
    this.#limits = limits;
    this.#clock = clock;
    this.#log = logger;
    this.#events = events;
    this.#parser = new FrameParser(limits.frameBytesMax);
    this.ownHello = createHello(config, randomBytes(32));
    this.done = new Promise((resolve) => socket.once('close', () => {
      this.#clearTimers();
      if (this.state !== 'closed') this.#finish({ code: 'closed', reason: this.#closedReason(), origin: 'io' });
      resolve();
    }));
    // Frames are batched per event-loop turn already; Nagle would only add delayed-ACK stalls on top.
    socket.setNoDelay(true);
    socket.on('error', (error) => this.#onSocketError(error));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => { this.#waitingDrain = false; this.#flush(); });
    this.#handshakeTimer = clock.setTimeout(() => this.close('handshake_timeout',
      `route handshake not finished within ${limits.handshakeTimeoutMs} ms`), limits.handshakeTimeoutMs);
    if (outbound) socket.once('secureConnect', () => this.#start());
    else this.#start();
  }

  get peerName(): string | undefined {
    return this.peer?.name;
  }

  /** The HELLO of whichever side dialed this link: the tie-break between simultaneous dials uses it. */
  get dialerHello(): HelloBody | undefined {
    return this.outbound ? this.ownHello : this.peer;
  }

  #start(): void {
    if (this.state !== 'tls') return;
    this.state = 'hello';
    this.#binding = this.#socket.exportKeyingMaterial(channelBindingBytes, channelBindingLabel, Buffer.alloc(0));
    this.#enqueueControl({ kind: 'hello', ...this.ownHello });
  }

  #closedReason(): string {
    // Under TLS 1.3 the dialer finishes its handshake before the listener has checked its certificate;
    // a listener that refuses it just closes, so silence before the peer's hello points at our certificate.
    if (this.outbound && this.counters.bytesIn === 0) {
      return 'connection closed by the peer before its hello: it may have refused this node\'s certificate ' +
        '(expired, or not signed by the cluster CA)';
    }
    return 'connection closed';
  }

  #onSocketError(error: Error): void {
    const refusal = describeSocketError(error);
    this.#finish({ ...refusal, origin: 'io' });
    this.#socket.destroy();
  }

  #onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.counters.bytesIn += chunk.length;
    this.#receivedSinceTick = true;
    try {
      this.#parser.push(chunk, (frame) => this.#onFrame(frame));
    } catch (error) {
      if (!(error instanceof FrameError)) throw error;
      this.close(error.code === 'EFRAME_OVERSIZE' ? 'frame_oversize' : 'frame_malformed', error.message);
    }
  }

  #onFrame(frame: WireFrame): void {
    if (this.state === 'closed') return;
    this.counters.framesIn++;
    if (frame.kind === 'refuse') {
      this.#finish({ code: asRefusalCode(frame.code), reason: frame.reason.slice(0, 512), origin: 'peer' });
      this.#socket.destroy();
      return;
    }
    switch (this.state) {
      case 'hello': return this.#onHello(frame);
      case 'auth': return this.#onAuth(frame);
      case 'up': return this.#onUpFrame(frame);
      default: return this.close('protocol', `unexpected ${frame.kind} frame before the TLS handshake finished`);
    }
  }

  #onHello(frame: WireFrame): void {
    if (frame.kind !== 'hello') return this.close('protocol', `expected a hello frame first, got ${frame.kind}`);
    const { kind: _kind, ...peer } = frame;
    this.peer = peer;
    const refusal = checkHello(this.#config, peer);
    if (refusal) return this.close(refusal.code, refusal.reason);
    this.state = 'auth';
    this.#enqueueControl({ kind: 'auth', ...createAuth(this.#config, this.ownHello, peer, this.#binding!) });
  }

  #onAuth(frame: WireFrame): void {
    if (frame.kind !== 'auth') return this.close('protocol', `expected an auth frame, got ${frame.kind}`);
    const peer = this.peer!;
    const refusal = checkAuth(this.#config, this.ownHello, peer, this.#binding!, frame)
      ?? this.#events.authenticated(this, peer);
    if (refusal) return this.close(refusal.code, refusal.reason);
    this.state = 'up';
    this.#clock.clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = undefined;
    this.#schedulePing();
    this.#events.up(this);
  }

  #onUpFrame(frame: WireFrame): void {
    switch (frame.kind) {
      case 'ping': return this.#enqueueControl({ kind: 'pong', seq: frame.seq });
      case 'pong':
        if (frame.seq === this.#pingSeq) {
          this.rttMs = this.#clock.now() - this.#pingSentAt;
          this.#pingsOut = 0;
        }
        return;
      case 'hello':
      case 'auth':
      case 'refuse': // handled before the state switch; listed so the compiler narrows to RouteFrame
        return this.close('protocol', `unexpected ${frame.kind} frame on an established route`);
      default:
        this.#events.frame(this, frame);
    }
  }

  #schedulePing(): void {
    this.#pingTimer = this.#clock.setTimeout(() => {
      this.#pingTimer = undefined;
      if (this.state !== 'up') return;
      // Like nats-server, traffic from the peer proves it alive: under a bulk stream its pongs may queue
      // behind our own backlog at the peer, and that must not read as a dead peer.
      if (this.#receivedSinceTick) this.#pingsOut = 0;
      this.#receivedSinceTick = false;
      if (this.#pingsOut >= this.#limits.pingsOutstandingMax) {
        this.close('dead_peer', `no pong for ${this.#pingsOut} pings ${this.#limits.pingIntervalMs} ms apart`);
        return;
      }
      this.#pingSeq++;
      this.#pingsOut++;
      this.#pingSentAt = this.#clock.now();
      this.#enqueueControl({ kind: 'ping', seq: this.#pingSeq });
      this.#schedulePing();
    }, this.#limits.pingIntervalMs);
  }

  /**
   * Queues a frame for the peer. Raft frames are dropped when the queue is full (Raft retransmits);
   * any other frame over the limit closes the link as a slow consumer, and the redial that follows
   * resynchronises the owner's state through a new peer-up.
   */
  send(frame: RouteFrame): 'queued' | 'dropped' | 'closed' {
    if (this.state !== 'up') return 'closed';
    // Bus frames are written straight into the current batch buffer: no allocation or copy per message.
    let bytes: Buffer | undefined;
    let size = frame.kind === 'bus' ? busFrameBytes(frame) : -1;
    if (size < 0) {
      bytes = encodeFrame(frame);
      size = bytes.length;
    }
    if (size - frameHeaderBytes > this.#limits.frameBytesMax) {
      throw new FrameError('EFRAME_OVERSIZE', `route frame of ${size - frameHeaderBytes} bytes exceeds the limit of ${this.#limits.frameBytesMax} bytes`);
    }
    if (this.#queuedFrames >= this.#limits.queueFramesMax || this.#queueBytes + size > this.#limits.queueBytesMax) {
      if (frame.kind === 'raft') {
        this.counters.raftDropped++;
        return 'dropped';
      }
      this.close('slow_consumer', `outbound queue full (${this.#queuedFrames} frames, ${this.#queueBytes} bytes): ` +
        'closing the route as a slow consumer');
      return 'closed';
    }
    if (bytes === undefined) {
      if (this.#batch === undefined || this.#batch.length - this.#batchEnd < size) {
        this.#seal();
        this.#batch = Buffer.allocUnsafe(Math.max(batchBytes, size));
        this.#batchStart = this.#batchEnd = 0;
      }
      this.#batchEnd = writeBusFrame(this.#batch, this.#batchEnd, frame as BusFrame, size);
      this.#batchFrames++;
    } else {
      this.#seal(); // keeps frames in send order
      this.#queue.push(bytes);
      this.#queueFrames.push(1);
    }
    this.#queuedFrames++;
    this.#queueBytes += size;
    this.#scheduleFlush();
    return 'queued';
  }

  /** Moves the filled part of the batch buffer into the queue; later frames go after it in the same buffer. */
  #seal(): void {
    if (this.#batch === undefined || this.#batchEnd === this.#batchStart) return;
    this.#queue.push(this.#batch.subarray(this.#batchStart, this.#batchEnd));
    this.#queueFrames.push(this.#batchFrames);
    this.#batchStart = this.#batchEnd;
    this.#batchFrames = 0;
  }

  #enqueueControl(frame: WireFrame): void {
    // Control frames are few and small; they bypass the limits so a full queue still answers pings.
    this.#control.push(encodeFrame(frame));
    this.#scheduleFlush();
  }

  #scheduleFlush(): void {
    this.counters.framesOut++;
    // One write per event-loop turn: frames queued in the same turn share TLS records.
    this.#flushScheduled ??= setImmediate(() => { this.#flushScheduled = undefined; this.#flush(); });
  }

  #flush(): void {
    if (this.#socket.destroyed) return;
    // Control frames go out even while waiting for 'drain': they are tiny, and a peer must see our pongs.
    if (this.#control.length > 0) {
      const control = this.#control.length === 1 ? this.#control[0]! : Buffer.concat(this.#control);
      this.#control = [];
      this.counters.bytesOut += control.length;
      this.counters.writes++;
      if (!this.#socket.write(control)) this.#waitingDrain = true;
    }
    // Write about flushBytes at a time until the socket's buffer passes its high-water mark; the rest waits
    // here, bounded by the queue limits, so the socket never holds more than about one batch of backlog.
    this.#seal();
    while (!this.#waitingDrain && this.#head < this.#queue.length) {
      let end = this.#head;
      let bytes = 0;
      let frames = 0;
      while (end < this.#queue.length && (bytes < flushBytes || end === this.#head)) {
        bytes += this.#queue[end]!.length;
        frames += this.#queueFrames[end++]!;
      }
      const out = end - this.#head === 1 ? this.#queue[this.#head]! : Buffer.concat(this.#queue.slice(this.#head, end), bytes);
      this.#head = end;
      this.#queueBytes -= bytes;
      this.#queuedFrames -= frames;
      this.counters.bytesOut += bytes;
      this.counters.writes++;
      if (!this.#socket.write(out)) this.#waitingDrain = true;
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#queueFrames = [];
      this.#head = 0;
    } else if (this.#head > 4096 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#queueFrames = this.#queueFrames.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Closes the link, sending the reason to the peer first so both logs carry it. */
  close(code: RefusalCode, reason: string): void {
    if (this.state === 'closed') return;
    const sendRefusal = this.state !== 'tls' && !this.#socket.destroyed;
    this.#finish({ code, reason, origin: 'local' });
    if (!sendRefusal) {
      this.#socket.destroy();
      return;
    }
    // Drop what is queued: the refusal must not wait behind bulk traffic of a route that is going away.
    this.#queue = [];
    this.#queueFrames = [];
    this.#head = 0;
    this.#queueBytes = 0;
    this.#queuedFrames = 0;
    this.#batch = undefined;
    // Our own hello/auth go out ahead of the refusal, even when the refusal came first: the peer then runs
    // its own checks and logs its own reason for a mismatch, not only ours.
    const out = Buffer.concat([...this.#control, encodeFrame({ kind: 'refuse', code, reason })]);
    this.#control = [];
    this.#socket.end(out);
    this.#graceTimer = this.#clock.setTimeout(() => { this.#graceTimer = undefined; this.#socket.destroy(); },
      this.#limits.closeGraceMs);
  }

  #finish(close: Omit<LinkClose, 'wasUp'>): void {
    if (this.state === 'closed') return;
    const wasUp = this.state === 'up';
    this.state = 'closed';
    this.#parser.stop();
    this.#clock.clearTimeout(this.#handshakeTimer);
    this.#clock.clearTimeout(this.#pingTimer);
    this.#handshakeTimer = this.#pingTimer = undefined;
    if (this.#flushScheduled) clearImmediate(this.#flushScheduled);
    this.#flushScheduled = undefined;
    this.#logClose(close, wasUp);
    this.#events.closed(this, { ...close, wasUp });
  }

  #clearTimers(): void {
    this.#clock.clearTimeout(this.#handshakeTimer);
    this.#clock.clearTimeout(this.#pingTimer);
    this.#clock.clearTimeout(this.#graceTimer);
    this.#handshakeTimer = this.#pingTimer = this.#graceTimer = undefined;
    if (this.#flushScheduled) clearImmediate(this.#flushScheduled);
    this.#flushScheduled = undefined;
  }

  #logClose(close: Omit<LinkClose, 'wasUp'>, wasUp: boolean): void {
    const fields = {
      peer: this.peer?.name, address: this.address, direction: this.outbound ? 'outbound' : 'inbound',
      code: close.code, reason: close.reason,
    };
    if (quietCodes.has(close.code)) this.#log.debug(fields, 'route closed');
    else if (close.origin === 'peer') this.#log.warn(fields, 'route refused by peer');
    else if (close.origin === 'local') this.#log.warn(fields, wasUp ? 'route closed' : 'route refused');
    else if (wasUp) this.#log.warn(fields, 'route lost');
    else if (close.code === 'connect') this.#log.info(fields, 'route dial failed');
    else this.#log.warn(fields, 'route failed');
  }
}

const knownCodes: ReadonlySet<string> = new Set<string>([
  'version', 'cluster_name', 'cluster_size', 'posture', 'auth_user', 'auth_password', 'identity_proof', 'identity',
  'protocol', 'frame_oversize', 'frame_malformed', 'handshake_timeout', 'tls', 'dead_peer', 'slow_consumer',
  'duplicate', 'self', 'shutdown', 'connect', 'closed',
]);

/** A peer's code is outside input: anything unknown becomes `protocol`. */
function asRefusalCode(code: string): RefusalCode {
  return (knownCodes.has(code) ? code : 'protocol') as RefusalCode;
}
