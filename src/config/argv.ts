// Syntax of the command line: `membershipd [command] [--flag value | --flag=value]...`.
// This step knows only the flag table; what a value means is checked in serve_config.ts.
import { ConfigError } from '../errors.js';
import { adminCommandNames, commandNames, flagSpec, type CommandName } from './flags.js';
import { quote } from './validate.js';

export interface ParsedArgs {
  readonly command: CommandName;
  /** Flag name (no `--`) → raw value, in the order given. */
  readonly flags: ReadonlyMap<string, string>;
}

const helpTokens = new Set(['--help', '-h']);
const versionTokens = new Set(['--version', '-v']);

function isCommand(word: string): word is CommandName {
  return (commandNames as readonly string[]).includes(word);
}

/** Throws ConfigError (and nothing else) for any argv it cannot accept. */
export function parseArgv(argv: readonly string[]): ParsedArgs {
  // --help wins over everything else on the line, so `membershipd --bogus --help` still helps.
  if (argv.some((a) => helpTokens.has(a))) return { command: 'help', flags: new Map() };
  if (argv.some((a) => versionTokens.has(a))) return { command: 'version', flags: new Map() };

  let i = 0;
  let command: CommandName = 'serve';
  const first = argv[0];
  if (first !== undefined && !first.startsWith('-')) {
    if (isCommand(first)) command = first;
    else if ((adminCommandNames as readonly string[]).includes(first)) {
      // main() hands these to src/cli/admin before this parser runs; reaching here is a caller's mistake.
      throw new ConfigError(`${first}: an admin command; it is run by main() (src/cli/admin), not parsed as serve flags`, undefined);
    } else {
      throw new ConfigError(`unknown command ${quote(first)} (commands: ${commandNames.join(', ')})`, undefined);
    }
    i = 1;
  }
  if (command === 'help' || command === 'version') {
    const extra = argv[i];
    // `help serve` is a natural thing to type; every command's flags are on the one help page.
    if (command === 'help' && extra !== undefined && isCommand(extra) && argv.length === 2) return { command, flags: new Map() };
    if (extra !== undefined) throw new ConfigError(`${command}: unexpected argument ${quote(extra)}`, undefined);
    return { command, flags: new Map() };
  }

  const flags = new Map<string, string>();
  while (i < argv.length) {
    const token = argv[i]!;
    i++;
    if (!token.startsWith('--') || token === '--') {
      throw new ConfigError(`unexpected argument ${quote(token)} (flags start with --)`, undefined);
    }
    const eq = token.indexOf('=');
    const name = eq === -1 ? token.slice(2) : token.slice(2, eq);
    const spec = flagSpec(name);
    if (spec === undefined) throw new ConfigError(`unknown flag ${quote('--' + name)} (see membershipd --help)`, name);
    if (!spec.commands.includes(command as 'serve' | 'dev')) {
      throw new ConfigError(`--${name} is not a flag of \`membershipd ${command}\` (see membershipd --help)`, name);
    }
    let value: string;
    if (eq !== -1) {
      value = token.slice(eq + 1);
    } else {
      const next = argv[i];
      if (next === undefined || next.startsWith('--')) throw new ConfigError(`--${name} needs a value (${spec.value})`, name);
      value = next;
      i++;
    }
    if (value.length === 0) throw new ConfigError(`--${name} has an empty value (expected ${spec.value})`, name);
    if (flags.has(name)) throw new ConfigError(`--${name} is given more than once`, name);
    flags.set(name, value);
  }
  return { command, flags };
}
