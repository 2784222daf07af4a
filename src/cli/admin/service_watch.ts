// `membershipd service watch [NAME]`: follows joins and leaves of service instances until interrupted. The CLI has
// no KV client, so it long-polls `$UB.API.SERVICE.WATCH` (src/services): the live instances first, then every
// change after the revision it has seen. Each line is one change (`+` join, `-` leave), or a JSON object with --json.
import { signRequest } from '../../control/envelope.js';
import type { CliOutput } from '../output.js';
import { parseAdminArgs, UsageError } from './args.js';
import { adminExit, exitFor } from './commands.js';
import { AdminCommandError, connectAdmin, connectionFlags, resolveConnection } from './connection.js';

const subject = '$UB.API.SERVICE.WATCH';
/** How long the node holds one poll open; the request timeout is this plus the connection's --timeout. */
const pollMs = 10_000;

export async function runServiceWatch(argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv = process.env, signal?: AbortSignal): Promise<number> {
  const usage = 'membershipd service watch';
  const cmd = parseAdminArgs(usage, { positionals: [], optional: ['NAME'], flags: connectionFlags }, argv);
  const name = cmd.positionals[0];
  if (name !== undefined && !/^[A-Za-z0-9_=-]{1,128}$/.test(name)) throw new UsageError(`${JSON.stringify(name)} is not a service name`);
  const settings = resolveConnection(cmd, env);
  const json = cmd.switches.has('json');
  const nc = await connectAdmin(settings);
  const stop = (): void => void nc.close().catch(() => undefined);
  signal?.addEventListener('abort', stop, { once: true });
  try {
    let after: number | undefined;
    while (!nc.isClosed()) {
      const body = { ...(name !== undefined ? { service: name } : {}), ...(after !== undefined ? { after, wait_ms: pollMs } : {}) };
      let reply: Record<string, unknown>;
      try {
        const msg = await nc.request(subject, signRequest(subject, body, settings.signer), { timeout: settings.timeoutMs + pollMs });
        reply = JSON.parse(new TextDecoder().decode(msg.data)) as Record<string, unknown>;
      } catch (err) {
        if (nc.isClosed() || signal?.aborted === true) return adminExit.ok;
        throw new AdminCommandError(`${usage}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      const error = reply.error as { code?: string; message?: string } | undefined;
      if (error !== undefined) {
        out.err(`membershipd: ${usage}: ${error.message ?? 'failed'} (${error.code ?? 'error'})`);
        return exitFor(error.code ?? '');
      }
      for (const c of reply.changes as Record<string, unknown>[]) {
        if (json) out.out(JSON.stringify(c));
        else out.out(c.op === 'PUT' ? `+ ${String(c.key)} ${String(c.kind ?? '-')} ${String(c.node ?? '-')} ${Array.isArray(c.endpoints) ? c.endpoints.join(',') : ''}`.trimEnd() : `- ${String(c.key)}`);
      }
      after = reply.revision as number;
    }
    return adminExit.ok;
  } finally {
    signal?.removeEventListener('abort', stop);
    stop();
  }
}
