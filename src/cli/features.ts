// Flag combinations serve cannot honour, refused before anything starts (exit 2, one line naming the flag)
// rather than accepted and silently ignored or discovered half-way through start-up.
import { ConfigError } from '../errors.js';
import type { ServeConfig } from '../config/index.js';

const persistence = 'only --store kv keeps state on disk (its Raft log and snapshots); a --store file node has nothing to put there';

/** The route flags: any one of them makes this node a cluster member, which then needs all of `clusterRequired`. */
const clusterFlags = new Set([
  'cluster-name', 'cluster-port', 'routes', 'cluster-user', 'cluster-pass-file', 'route-tls-cert', 'route-tls-key', 'route-tls-ca',
]);
const clusterRequired: readonly [string, string][] = [
  ['cluster-name', 'every node of a cluster presents the same name'],
  ['cluster-port', 'the port routes listen on'],
  ['routes', 'the cluster\'s route addresses: the initial voters are derived from them'],
  ['cluster-user', 'with --cluster-pass-file: the route credentials'],
  ['cluster-pass-file', 'the route password, read from a file, never argv'],
  ['route-tls-cert', 'routes are mutual TLS: --route-tls-cert, --route-tls-key and --route-tls-ca'],
  ['route-tls-key', 'routes are mutual TLS: --route-tls-cert, --route-tls-key and --route-tls-ca'],
  ['route-tls-ca', 'routes are mutual TLS: --route-tls-cert, --route-tls-key and --route-tls-ca'],
];

function unavailableReason(flag: string, config: ServeConfig): string | undefined {
  // --store kv without cluster flags runs the replicated store on a cluster of one (src/control/single_node.ts).
  if (flag === 'data-dir' && config.store !== 'kv') return persistence;
  return undefined;
}

/** The first flag (in command-line order) this configuration cannot honour, as the error the CLI exits 2 with. */
export function refuseUnavailable(config: ServeConfig): ConfigError | undefined {
  for (const flag of config.given) {
    const reason = unavailableReason(flag, config);
    if (reason !== undefined) return new ConfigError(`--${flag}: ${reason}`, flag);
  }
  if (config.given.some((f) => clusterFlags.has(f))) {
    const given = new Set(config.given);
    for (const [flag, why] of clusterRequired) {
      if (!given.has(flag)) return new ConfigError(`--${flag} is required for a cluster node (${why})`, flag);
    }
  }
  return undefined;
}
