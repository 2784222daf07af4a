// The membershipd command line: parse, dispatch to serve | dev | help | version, and map outcomes to exit codes
// (0 clean stop, 1 operating failure such as a taken port, 2 a flag or config mistake).
import { X509Certificate } from 'node:crypto';
import { ConfigError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { adminCommandNames, parseCommandLine, type ServeConfig } from '../config/index.js';
import { processOutput, type CliOutput } from './output.js';
import { helpText } from './help.js';
import { packageVersion } from '../version.js';
import { refuseUnavailable } from './features.js';
import type { NodeTuning, ServingNode } from './serve.js';

export { helpText } from './help.js';
export { packageVersion } from '../version.js';
export { processOutput, memoryOutput, type CliOutput } from './output.js';
export { refuseUnavailable } from './features.js';
export type { ServingNode, NodeUrls, ListenError, Lifecycle } from './serve.js';

export const exitCodes = { ok: 0, failure: 1, usage: 2 } as const;

function certificateWarnings(config: ServeConfig, logger: Logger): void {
  if (config.tls === undefined) return;
  // An expired certificate still lets the node start (as nats-server does); say why clients will fail.
  const validTo = new X509Certificate(config.tls.cert).validTo;
  if (Date.parse(validTo) < Date.now()) logger.warn({ file: config.tls.certFile, valid_to: validTo }, '--tls-cert has expired: clients will refuse it');
}

/** Handlers that turn a crash into one fatal JSON log line and exit 1 instead of a bare stack trace. */
function installCrashHandlers(logger: Logger): void {
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception: exiting');
    process.exit(exitCodes.failure);
  });
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err }, 'unhandled rejection: exiting');
    process.exit(exitCodes.failure);
  });
}

async function serveUntilSignal(
  config: ServeConfig, logger: Logger, onStarted?: (node: ServingNode) => void | Promise<void>, tuning?: NodeTuning,
): Promise<number> {
  installCrashHandlers(logger);
  certificateWarnings(config, logger);
  // Loaded only when a node starts: help, version and flag errors stay fast and never load the server.
  const { startServing, handleSignals, loadBusAuth } = await import('./serve.js');
  const lifecycle = handleSignals(logger);
  // A users or identity file problem is a ConfigError: main() reports it in one line and exits 2.
  const auth = await loadBusAuth(config, logger);
  lifecycle.setReload(auth.reload);
  let node: ServingNode;
  try {
    node = await startServing(config, logger, auth.authenticator, auth, tuning);
  } catch (err) {
    // A configuration problem found while starting (e.g. a cluster flag missing its partner) is still exit 2.
    if (err instanceof ConfigError) throw err;
    logger.fatal({ err }, err instanceof Error ? err.message : String(err));
    return exitCodes.failure;
  }
  const exit = lifecycle.run(node);
  if (onStarted === undefined) return exit;
  // dev waits for its cluster before printing the banner; a signal meanwhile still drains and exits as usual.
  let failure: unknown;
  const ready = Promise.resolve().then(() => onStarted(node)).then(() => true, (err: unknown) => { failure = err; return false; });
  if (await Promise.race([ready, exit.then(() => true)])) return exit;
  logger.fatal({ err: failure }, failure instanceof Error ? failure.message : String(failure));
  await node.stop().catch(() => undefined);
  return exitCodes.failure;
}

/** Runs one command line; resolves with the process exit code (serve and dev resolve after a signal). */
export async function main(argv: readonly string[], output: CliOutput = processOutput): Promise<number> {
  // Admin subcommands have their own syntax (repeatable flags, positionals): src/cli/admin. `--help` anywhere
  // still shows the one help page.
  const first = argv[0];
  if (first !== undefined && (adminCommandNames as readonly string[]).includes(first) && !argv.some((a) => a === '--help' || a === '-h')) {
    const { runAdmin } = await import('./admin/index.js');
    return runAdmin(first, argv.slice(1), output);
  }
  try {
    const command = parseCommandLine(argv);
    switch (command.kind) {
      case 'help':
        output.out(helpText());
        return exitCodes.ok;
      case 'version':
        output.out(`membershipd ${packageVersion()}`);
        return exitCodes.ok;
      case 'serve': {
        const refusal = refuseUnavailable(command.config);
        if (refusal !== undefined) throw refusal;
        const logger = createLogger(command.config.logLevel, { server_name: command.config.serverName });
        return await serveUntilSignal(command.config, logger);
      }
      case 'dev': {
        const { devReady, devServeConfig, ensureDevCertificates } = await import('./dev.js');
        const certs = await ensureDevCertificates(command.config.dir, command.config.nodes);
        const config = devServeConfig(command.config, certs);
        const logger = createLogger(config.logLevel, { server_name: config.serverName });
        return await serveUntilSignal(config, logger, async (node) => {
          const banner = await devReady(node, certs);
          if (banner !== undefined) output.out(banner);
        }, { clusterListener: certs.cluster.routeListener });
      }
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      output.err(`membershipd: ${err.message}`);
      return exitCodes.usage;
    }
    throw err;
  }
}
