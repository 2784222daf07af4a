// The admin subcommands of the CLI: `user`, `role`, `audit` (over the admin API of a node), `id` and `certs`
// (local files), `cluster` (status, transfer-leader, add, remove over the admin API), `snapshot` (online backup).
import type { CliOutput } from '../output.js';
import { UsageError } from './args.js';
import { adminExit, runApiCommand } from './commands.js';
import { AdminCommandError } from './connection.js';
import { runCerts, runId } from './local.js';
import { runRecover } from './recover.js';
import { runSnapshot } from './snapshot.js';
import { runServiceWatch } from './service_watch.js';

export { UsageError, parseAdminArgs, type CommandSpec, type ParsedCommand, type FlagKind } from './args.js';
export { AdminCommandError, connectAdmin, connectionFlags, parseEnvFile, resolveConnection, defaultEnvFile, type AdminConnectionSettings } from './connection.js';
export { adminExit, adminVerbs, runApiCommand } from './commands.js';

export type AdminRunner = (argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv) => Promise<number> | number;

export const adminCommands: Record<string, AdminRunner> = {
  user: (argv, out, env) => runApiCommand('user', argv, out, env),
  role: (argv, out, env) => runApiCommand('role', argv, out, env),
  audit: (argv, out, env) => runApiCommand('audit', argv, out, env),
  // `cluster recover` works on a stopped node's data directory, not through a node's admin API.
  cluster: (argv, out, env) => (argv[0] === 'recover' ? runRecover(argv.slice(1), out) : runApiCommand('cluster', argv, out, env)),
  service: (argv, out, env) => (argv[0] === 'watch' ? runServiceWatch(argv.slice(1), out, env) : runApiCommand('service', argv, out, env)),
  id: (argv, out, env) => runId(argv, out, env),
  certs: (argv, out) => runCerts(argv, out),
  snapshot: (argv, out, env) => runSnapshot(argv, out, env),
};

/** Runs `membershipd <command> …` for an admin command; every failure is one stderr line and an exit code. */
export async function runAdmin(command: string, argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const runner = adminCommands[command];
  if (runner === undefined) {
    out.err(`membershipd: unknown command ${JSON.stringify(command)}`);
    return adminExit.usage;
  }
  try {
    return await runner(argv, out, env);
  } catch (err) {
    if (err instanceof UsageError) {
      out.err(`membershipd ${command}: ${err.message}`);
      return adminExit.usage;
    }
    if (err instanceof AdminCommandError) {
      out.err(`membershipd ${command}: ${err.message}`);
      return adminExit.failure;
    }
    out.err(`membershipd ${command}: ${err instanceof Error ? err.message : String(err)}`);
    return adminExit.failure;
  }
}
