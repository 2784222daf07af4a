// Command-line configuration: the flag table, the argv parser and the typed, validated options.
// Every failure is a ConfigError (src/errors.ts) naming the flag; the CLI turns it into exit 2.
import type { ParsedArgs } from './argv.js';
import { parseArgv } from './argv.js';
import { resolveDevConfig, resolveServeConfig, type DevConfig, type ServeConfig } from './serve_config.js';

export { parseArgv, type ParsedArgs } from './argv.js';
export { flagSpecs, flagGroups, commandNames, adminCommandNames, type FlagSpec, type FlagGroup, type CommandName } from './flags.js';
export {
  resolveServeConfig, resolveDevConfig, defaults, busAuthModes, storeKinds, kvReplicasMax, defaultDevNodes, devNodesMax,
  type ServeConfig, type DevConfig, type ClusterConfig, type StoreKind,
} from './serve_config.js';
export { parseRoutes, isHost, quote, loadCertAndKey, type RouteTarget, type PemFiles } from './validate.js';

export type Command =
  | { readonly kind: 'help' }
  | { readonly kind: 'version' }
  | { readonly kind: 'serve'; readonly config: ServeConfig }
  | { readonly kind: 'dev'; readonly config: DevConfig };

/** argv without node and the script: parse and validate. Throws only ConfigError. */
export function parseCommandLine(argv: readonly string[]): Command {
  const args: ParsedArgs = parseArgv(argv);
  switch (args.command) {
    case 'help': return { kind: 'help' };
    case 'version': return { kind: 'version' };
    case 'serve': return { kind: 'serve', config: resolveServeConfig(args) };
    case 'dev': return { kind: 'dev', config: resolveDevConfig(args) };
  }
}
