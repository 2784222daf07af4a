// The node's HTTP port (node:http): /livez here; the status page, /healthz, /routez, /raftz, /metrics… are endpoints
// the caller passes in.
// Every answer is JSON (except the status page at / and its script), including 404 and 405, so scripts never have
// to parse HTML error pages.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.js';

export type HttpState = 'serving' | 'stopping';

/** An endpoint's answer: JSON unless `contentType` is given, then `body` must be the text to send. */
export interface HttpReply {
  readonly status: number;
  readonly body: unknown;
  readonly contentType?: string;
  /** Extra response headers (the status page's Content-Security-Policy). */
  readonly headers?: Readonly<Record<string, string>>;
}

export type HttpEndpoint = () => HttpReply | Promise<HttpReply>;

export interface HttpServerOptions {
  readonly host: string;
  /** 0 picks an ephemeral port; read the bound one from `port` after start(). */
  readonly port: number;
  readonly logger: Logger;
  /** Served with GET/HEAD by exact path (query strings are ignored). /livez is built in. */
  readonly endpoints?: Readonly<Record<string, HttpEndpoint>>;
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

function send(res: ServerResponse, status: number, body: unknown, head: boolean, contentType?: string, headers?: Readonly<Record<string, string>>): void {
  const text = contentType === undefined ? JSON.stringify(body) + '\n' : String(body);
  res.writeHead(status, {
    ...headers,
    'content-type': contentType ?? 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(head ? undefined : text);
}

export function createHttpServer(options: HttpServerOptions): HttpServer {
  let state: HttpState = 'serving';
  let server: Server | undefined;
  let port = options.port;
  const endpoints = options.endpoints ?? {};

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
    const endpoint = Object.hasOwn(endpoints, path) ? endpoints[path] : undefined;
    if (endpoint === undefined) {
      send(res, 404, { error: 'not found', path }, head);
      return;
    }
    const failed = (err: unknown): void => {
      options.logger.error({ err, path }, 'http endpoint failed');
      if (!res.headersSent) send(res, 500, { error: 'internal error' }, head);
    };
    try {
      Promise.resolve(endpoint()).then((reply) => send(res, reply.status, reply.body, head, reply.contentType, reply.headers), failed);
    } catch (err) {
      failed(err);
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

export { statusPageEndpoints, statusPageCsp } from './status_page.js';
export { processMetricsText, processVarz, startProcessMetrics, type EventLoopVarz, type GcVarz } from './process_metrics.js';
