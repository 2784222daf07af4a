// What this build can honour. Every flag is parsed and validated (src/config) so a deploy's command line is
// checked today; a flag whose feature a later issue builds is refused here, before anything starts, with
// exit 2 and one line, rather than accepted and silently ignored.
import { ConfigError } from '../errors.js';
import type { ServeConfig } from '../config/index.js';

const clustering = 'clustering (routes and the Raft meta-group) is not available in this build yet; run without cluster flags for a single node';
const persistence = 'only --store kv keeps state on disk (its Raft log and snapshots); a --store file node has nothing to put there';

const clusterFlags = new Set([
  'cluster-name', 'cluster-port', 'routes', 'cluster-user', 'cluster-pass-file', 'route-tls-cert', 'route-tls-key', 'route-tls-ca',
]);

function unavailableReason(flag: string, config: ServeConfig): string | undefined {
  if (clusterFlags.has(flag)) return clustering;
  switch (flag) {
    // --store kv without cluster flags runs the replicated store on a cluster of one (src/control/single_node.ts).
    case 'data-dir': return config.store === 'kv' ? undefined : persistence;
    default: return undefined;
  }
}

/** The first flag (in command-line order) this build cannot honour, as the error the CLI exits 2 with. */
export function refuseUnavailable(config: ServeConfig): ConfigError | undefined {
  for (const flag of config.given) {
    const reason = unavailableReason(flag, config);
    if (reason !== undefined) return new ConfigError(`--${flag}: ${reason}`, flag);
  }
  return undefined;
}

/** The mark --help puts after a flag this build validates but refuses. */
export function availabilityNote(flag: string): string {
  if (clusterFlags.has(flag)) return ' [not available yet]';
  if (flag === 'kv-replicas') return ' [1 until the cluster flags are available]';
  return '';
}
