// The node's HTTP port (node:http): /livez now; /healthz, /routez, /raftz and /metrics come with later issues.
// Every answer is JSON, including 404 and 405, so scripts never have to parse HTML error pages.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.js';

export type HttpState = 'serving' | 'stopping';

export interface HttpServerOptions {
  readonly host: string;
  /** 0 picks an ephemeral port; read the bound one from `port` after start(). */
  readonly port: number;
  readonly logger: Logger;
  /** JSON documents served with GET, by exact path (query strings are ignored). */
  readonly documents?: Readonly<Record<string, () => unknown>>;
}

export interface HttpServer {
  readonly port: number;
  start(): Promise<void>;
  /** /livez answers 503 from now on: the process is going away. */
  setState(state: HttpState): void;
  close(): Promise<void>;
}

/** A request never needs more than this to be answered; a slow or silent client is dropped. */
const requestTimeoutMs = 10_000;

function send(res: ServerResponse, status: number, body: unknown, head: boolean): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(head ? undefined : text);
}

export function createHttpServer(options: HttpServerOptions): HttpServer {
  let state: HttpState = 'serving';
  let server: Server | undefined;
  let port = options.port;
  const documents = options.documents ?? {};

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0]!;
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      res.setHeader('allow', 'GET, HEAD');
      send(res, 405, { error: 'method not allowed', method: req.method }, false);
      return;
    }
    if (path === '/livez') {
      if (state === 'serving') send(res, 200, { status: 'ok' }, head);
      else send(res, 503, { status: state }, head);
      return;
    }
    const document = Object.hasOwn(documents, path) ? documents[path] : undefined;
    if (document === undefined) {
      send(res, 404, { error: 'not found', path }, head);
      return;
    }
    try {
      send(res, 200, document(), head);
    } catch (err) {
      options.logger.error({ err, path }, 'http handler failed');
      send(res, 500, { error: 'internal error' }, head);
    }
  };

  return {
    get port() { return port; },
    async start() {
      const srv = createServer({ requestTimeout: requestTimeoutMs, headersTimeout: requestTimeoutMs }, handle);
      srv.on('clientError', (_err, socket) => { socket.destroy(); });
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(options.port, options.host, () => { srv.off('error', reject); resolve(); });
      });
      port = (srv.address() as AddressInfo).port;
      server = srv;
    },
    setState(next) { state = next; },
    async close() {
      const srv = server;
      if (srv === undefined) return;
      server = undefined;
      state = 'stopping';
      const closed = new Promise<void>((resolve) => srv.close(() => resolve()));
      // close() waits for keep-alive sockets; a monitoring agent holding one must not block shutdown.
      srv.closeAllConnections();
      await closed;
    },
  };
}
