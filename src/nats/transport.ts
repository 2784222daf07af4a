// The byte pipe under a client connection: a TCP (or TLS) socket, or a WebSocket carrying the same protocol in
// binary frames. The client sees only this interface, so the protocol code is identical for both.
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';

export interface TransportEvents {
  onData(chunk: Buffer): void;
  /** The transport's own write buffer has drained. */
  onDrain(): void;
  onClosed(): void;
}

export interface ClientTransport {
  readonly kind: 'tcp' | 'tls' | 'ws';
  /** A WebSocket over TLS (wss://); TCP transports say it with kind 'tls'. */
  readonly secure?: boolean;
  readonly remoteAddress: string;
  readonly remotePort: number;
  start(events: TransportEvents): void;
  /** Returns false when the transport's buffer is over its high-water mark (wait for onDrain). */
  write(chunk: Buffer): boolean;
  /** Bytes accepted by write() and not yet handed to the kernel. */
  pendingBytes(): number;
  pause(): void;
  resume(): void;
  /** Flushes what was written, then closes. */
  end(): void;
  /** Closes at once, dropping unsent bytes. */
  destroy(): void;
}

/** A peer that never reads after we end() must not keep the socket forever. */
const endGraceMs = 2000;

export class SocketTransport implements ClientTransport {
  readonly kind: 'tcp' | 'tls';
  readonly remoteAddress: string;
  readonly remotePort: number;

  constructor(private readonly socket: Socket, tls: boolean) {
    this.kind = tls ? 'tls' : 'tcp';
    this.remoteAddress = socket.remoteAddress ?? '';
    this.remotePort = socket.remotePort ?? 0;
  }

  start(events: TransportEvents): void {
    const s = this.socket;
    s.on('data', (chunk: Buffer) => events.onData(chunk));
    s.on('drain', () => events.onDrain());
    s.on('close', () => events.onClosed());
    s.on('error', () => s.destroy());
    s.resume();
  }

  write(chunk: Buffer): boolean {
    return this.socket.write(chunk);
  }

  pendingBytes(): number {
    return this.socket.writableLength;
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  end(): void {
    this.socket.end();
    setTimeout(() => this.socket.destroy(), endGraceMs).unref();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export class WebSocketTransport implements ClientTransport {
  readonly kind = 'ws' as const;
  readonly remoteAddress: string;
  readonly remotePort: number;

  /** `raw` is the upgraded TCP socket under `ws`: its 'drain' tells when frames have left. `secure`: wss://. */
  constructor(private readonly ws: WebSocket, private readonly raw: Socket, readonly secure = false) {
    this.remoteAddress = raw.remoteAddress ?? '';
    this.remotePort = raw.remotePort ?? 0;
  }

  start(events: TransportEvents): void {
    this.ws.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => {
      if (Buffer.isBuffer(data)) events.onData(data);
      else if (Array.isArray(data)) events.onData(Buffer.concat(data));
      else events.onData(Buffer.from(data));
    });
    this.raw.on('drain', () => events.onDrain());
    this.ws.on('close', () => events.onClosed());
    this.ws.on('error', () => this.ws.terminate());
  }

  write(chunk: Buffer): boolean {
    this.ws.send(chunk, { binary: true });
    return this.raw.writableLength < this.raw.writableHighWaterMark;
  }

  pendingBytes(): number {
    return this.ws.bufferedAmount;
  }

  pause(): void {
    this.ws.pause();
  }

  resume(): void {
    this.ws.resume();
  }

  end(): void {
    this.ws.close(1000);
    setTimeout(() => this.ws.terminate(), endGraceMs).unref();
  }

  destroy(): void {
    this.ws.terminate();
  }
}
