// Child processes of a benchmark: every one is tracked by PID and killed when the bench exits, however it
// exits (normal end, an uncaught error, SIGINT/SIGTERM), so an interrupted run leaves no server or cluster
// node behind on a machine that other engineers share.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const tracked = new Set<ChildProcess>();
let hooked = false;

function running(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** SIGKILL every child that is still running (also ends a SIGSTOPped one); safe to call more than once. */
export function killChildren(): void {
  for (const child of tracked) {
    if (!running(child)) continue;
    try {
      process.kill(child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

// Installed on the first spawn, not at import: routes.ts and auth.ts re-run themselves as the server
// process, which must keep its own SIGTERM handling (graceful close).
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', killChildren);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(130));
}

/** spawn(), with the child killed by PID when this process exits. */
export function spawnChild(command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  hookExit();
  const child = spawn(command, args, options);
  tracked.add(child);
  child.once('exit', () => tracked.delete(child));
  return child;
}

/** SIGTERM (graceful drain), then SIGKILL if the child is still running after `graceMs`. */
export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (!running(child)) return;
  const exited = new Promise((r) => child.once('exit', r));
  process.kill(child.pid!, 'SIGTERM');
  const t = setTimeout(() => { if (running(child)) process.kill(child.pid!, 'SIGKILL'); }, graceMs);
  await exited;
  clearTimeout(t);
}

/**
 * Node arguments that run a TypeScript entry point (path relative to the repository) as plain JavaScript,
 * as membershipd runs from dist/ in production: the tsx loader alone adds about 30 MB of RSS and its own
 * CPU. The entry is bundled with esbuild (installed with tsx), dependencies left external, into
 * node_modules/.cache/membershipd-bench/<bundleName>. When esbuild fails, prints `fallbackNote` and runs the
 * entry under tsx instead.
 */
export function nodeEntryArgs(entry: string, bundleName: string, fallbackNote: string): string[] {
  const source = join(repo, entry);
  const out = join(repo, 'node_modules/.cache/membershipd-bench', bundleName);
  const r = spawnSync(join(repo, 'node_modules/.bin/esbuild'),
    [source, '--bundle', '--platform=node', '--format=esm', '--packages=external', '--log-level=error', `--outfile=${out}`],
    { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status === 0) return [out];
  console.log(`  note: ${fallbackNote}`);
  return ['--import', 'tsx', source];
}

/** True when `command --version` runs: a reference system (nats-server) is installed. */
export function hasBinary(command: string): boolean {
  return spawnSync(command, ['--version'], { stdio: 'ignore' }).status === 0;
}
