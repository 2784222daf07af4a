// What this build can honour. Every flag is parsed and validated (src/config) so a deploy's command line is
// checked today; a flag whose feature a later issue builds is refused here, before anything starts, with
// exit 2 and one line, rather than accepted and silently ignored.
import { ConfigError } from '../errors.js';
import type { ServeConfig } from '../config/index.js';

const clustering = 'clustering (routes and the Raft meta-group) is not available in this build yet; run without cluster flags for a single node';
const kvStore = 'the replicated store (--store kv, --kv-replicas) is not available in this build yet; use --store file';
const persistence = 'persistent storage is not available in this build yet; a single node keeps no state on disk';

const clusterFlags = new Set([
  'cluster-name', 'cluster-port', 'routes', 'cluster-user', 'cluster-pass-file', 'route-tls-cert', 'route-tls-key', 'route-tls-ca',
]);

function unavailableReason(flag: string, config: ServeConfig): string | undefined {
  if (clusterFlags.has(flag)) return clustering;
  switch (flag) {
    case 'store': return config.store === 'kv' ? kvStore : undefined;
    case 'kv-replicas': return kvStore;
    case 'data-dir': return persistence;
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
  if (clusterFlags.has(flag) || flag === 'kv-replicas' || flag === 'data-dir') {
    return ' [not available yet]';
  }
  if (flag === 'store') return ' [kv not available yet]';
  return '';
}
