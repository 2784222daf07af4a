// pino JSON to stderr, synchronously: a service killed by SIGTERM keeps every line (reference/toolchain.md §6),
// and stdout stays free for CLI output.
import { pino, type Logger } from 'pino';

export type { Logger };
export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof logLevels)[number];

export function createLogger(level: LogLevel = 'info', bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination({ dest: 2, sync: true }));
}

/** A logger that writes nothing: for in-process nodes in tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
