// `membershipd serve`: the process lifecycle around one node (src/node compose.ts composes it): the start line
// with the real addresses, the ports file, signal-driven drain, and exit codes.
import { constants as osConstants } from 'node:os';
import type { Logger } from '../log.js';
import type { ServeConfig } from '../config/index.js';
import type { BusAuthenticator } from '../auth/index.js';
import { composeNode, type ControlWiring, type NodeTuning, type ServingNode } from '../node/index.js';
import { packageVersion } from '../version.js';
import { removePortsFile, writePortsFile } from './ports_file.js';

// The CLI loads this module only when a node starts (help, version and flag errors never load the server): what it
// needs of src/node to start one comes through here.
export { loadBusAuth, ListenError, type ControlWiring, type NodeTuning, type NodeUrls, type ServingNode } from '../node/index.js';

/** Clients get this long to drain after SIGTERM before the process gives up and exits 1. */
export const shutdownTimeoutMs = 30_000;

/**
 * Starts a node (composeNode), writes the ports file when --ports-file asks for one (removed again when the node
 * stops), then logs the start line with the addresses it got.
 */
export async function startServing(
  config: ServeConfig, logger: Logger, busAuth?: BusAuthenticator, control?: ControlWiring, tuning?: NodeTuning,
): Promise<ServingNode> {
  let node = await composeNode(config, logger, busAuth, control, tuning);
  // The ports file before the start line: a supervisor (or test) that sees the line may read the file at once.
  if (config.portsFile !== undefined) node = await withPortsFile(node, config.portsFile);
  const { nats, http, urls } = node;
  logger.info({
    server_id: nats.serverId, version: packageVersion(),
    nats_url: urls.nats, http_url: urls.http, ws_url: urls.ws ?? null,
    nats_port: nats.port, http_port: http.port, ws_port: nats.wsPort ?? null, tls: config.tls !== undefined,
  }, `membershipd serving: client ${urls.nats}, http ${urls.http}${urls.ws ? `, websocket ${urls.ws}` : ''}`);
  return node;
}

/**
 * Writes the bound ports to `portsFile` (a parent process passed port 0 and reads them there, as nats-server's
 * --ports_file_dir) and returns the node whose stop() also removes the file. If the file cannot be written, the
 * node is stopped and the error goes up.
 */
async function withPortsFile(node: ServingNode, portsFile: string): Promise<ServingNode> {
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= node.stop().finally(() => removePortsFile(portsFile));
    return stopping;
  };
  const { nats, http, cluster } = node;
  try {
    writePortsFile(portsFile, { pid: process.pid, nats: nats.port, http: http.port, ws: nats.wsPort ?? null, cluster: cluster?.routeAddress().port ?? null });
  } catch (err) {
    await stop();
    throw err;
  }
  return { ...node, stop };
}

export interface Lifecycle {
  /** What SIGHUP re-reads (the users file); nothing until set. */
  setReload(reload: (() => Promise<void>) | undefined): void;
  /** Hands over the started node; resolves with the exit code once a signal has stopped it. */
  run(node: ServingNode): Promise<number>;
}

/**
 * Installs the signal handlers before anything starts, so a signal during start-up is never the default
 * "die without draining": the node is stopped as soon as it is up. SIGTERM/SIGINT drain and resolve 0;
 * a second one exits at once with 128+signal, as a shell would report it.
 */
export function handleSignals(logger: Logger): Lifecycle {
  let node: ServingNode | undefined;
  let signalled = false;
  let reload: (() => Promise<void>) | undefined;
  let resolveExit: (code: number) => void = () => undefined;
  const exitCode = new Promise<number>((resolve) => { resolveExit = resolve; });

  const stop = (n: ServingNode): void => {
    const timer = setTimeout(() => {
      logger.error({ timeout_ms: shutdownTimeoutMs }, 'drain did not finish in time: exiting');
      resolveExit(1);
    }, shutdownTimeoutMs);
    n.stop().then(() => {
      clearTimeout(timer);
      logger.info('stopped');
      resolveExit(0);
    }, (err: unknown) => {
      clearTimeout(timer);
      logger.error({ err }, 'error while stopping');
      resolveExit(1);
    });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting at once without finishing the drain');
      process.exit(128 + (osConstants.signals[signal] ?? 0));
    }
    signalled = true;
    logger.info({ signal }, 'signal received: draining clients, then exiting');
    if (node !== undefined) stop(node);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // Without a handler SIGHUP would kill the node. The users file logs its own outcome, and a broken file
  // keeps the previous users (src/auth FileSource.reload).
  process.on('SIGHUP', () => {
    if (reload === undefined) {
      logger.info('SIGHUP: nothing to reload (no --users-file)');
      return;
    }
    logger.info('SIGHUP: reloading the users file');
    reload().catch((err: unknown) => logger.error({ err }, 'reload failed'));
  });
  return {
    setReload(next) { reload = next; },
    run(started) {
      node = started;
      if (signalled) stop(started);
      return exitCode;
    },
  };
}
