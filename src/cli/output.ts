// The CLI's text output. This is the only module that writes human-facing text: results and banners go to
// stdout, the one-line error of a failed command to stderr. Service logs are pino JSON (src/log.ts).

export interface CliOutput {
  /** One or more lines for stdout. */
  out(text: string): void;
  /** One line for stderr; newlines are flattened so an error is always exactly one line. */
  err(text: string): void;
}

export function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').trim();
}

export const processOutput: CliOutput = {
  out(text) { process.stdout.write(text.endsWith('\n') ? text : text + '\n'); },
  err(text) { process.stderr.write(oneLine(text) + '\n'); },
};

/** Collects output in memory: for in-process tests of the dispatcher. */
export function memoryOutput(): CliOutput & { readonly stdout: string[]; readonly stderr: string[] } {
  const stdout: string[] = [];
  const stderr: string[] = [];
  return {
    stdout, stderr,
    out(text) { stdout.push(text); },
    err(text) { stderr.push(oneLine(text)); },
  };
}
