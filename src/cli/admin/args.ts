// Argument syntax of the admin subcommands: `membershipd <area> <verb> [NAME] [--flag value | --flag=value |
// --switch]...`. Unlike serve's flag table, admin flags repeat (`--role a --role b`) and take positionals, so
// they have their own small parser; every mistake is a UsageError (exit 2) naming the flag.
import { MembershipdError } from '../../errors.js';

export class UsageError extends MembershipdError {
  constructor(message: string) {
    super('EUSAGE', message);
  }
}

export type FlagKind = 'string' | 'list' | 'switch';

export interface CommandSpec {
  /** Positional names shown in messages, e.g. ['NAME']; all required. */
  readonly positionals: readonly string[];
  /** Optional positionals after the required ones, e.g. ['NAME'] for `cluster transfer-leader [NAME]`. */
  readonly optional?: readonly string[];
  readonly flags: Readonly<Record<string, FlagKind>>;
}

export interface ParsedCommand {
  readonly positionals: readonly string[];
  readonly strings: ReadonlyMap<string, string>;
  readonly lists: ReadonlyMap<string, readonly string[]>;
  readonly switches: ReadonlySet<string>;
}

/** Flags no admin command takes, with the reason (checked before "unknown flag"). */
const refusedFlags: Readonly<Record<string, string>> = {
  password: 'a password is never taken from the command line (it would end up in shell history and the process list); use --password-stdin or --password-file FILE',
  pass: 'a password is never taken from the command line; use --password-stdin or --password-file FILE',
};

export function parseAdminArgs(usage: string, spec: CommandSpec, argv: readonly string[]): ParsedCommand {
  const positionals: string[] = [];
  const strings = new Map<string, string>();
  const lists = new Map<string, string[]>();
  const switches = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (!token.startsWith('--')) {
      positionals.push(token);
      continue;
    }
    const eq = token.indexOf('=');
    const name = eq === -1 ? token.slice(2) : token.slice(2, eq);
    if (refusedFlags[name] !== undefined) throw new UsageError(`--${name}: ${refusedFlags[name]}`);
    const kind = spec.flags[name];
    if (kind === undefined) {
      const known = Object.keys(spec.flags).map((f) => `--${f}`).join(' ');
      throw new UsageError(`unknown flag --${name} for \`${usage}\` (flags: ${known})`);
    }
    if (kind === 'switch') {
      if (eq !== -1) throw new UsageError(`--${name} takes no value`);
      switches.add(name);
      continue;
    }
    let value: string;
    if (eq !== -1) value = token.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`--${name} needs a value`);
      value = next;
      i++;
    }
    if (value.length === 0) throw new UsageError(`--${name} has an empty value`);
    if (kind === 'list') {
      const l = lists.get(name) ?? [];
      l.push(value);
      lists.set(name, l);
    } else {
      if (strings.has(name)) throw new UsageError(`--${name} is given more than once`);
      strings.set(name, value);
    }
  }
  if (positionals.length < spec.positionals.length) {
    throw new UsageError(`\`${usage}\` needs ${spec.positionals.join(' ')} (missing ${spec.positionals.slice(positionals.length).join(' ')})`);
  }
  const most = spec.positionals.length + (spec.optional?.length ?? 0);
  if (positionals.length > most) throw new UsageError(`\`${usage}\`: unexpected argument ${JSON.stringify(positionals[most])}`);
  return { positionals, strings, lists, switches };
}
