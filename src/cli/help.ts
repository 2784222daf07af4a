// `membershipd --help`: generated from the flag table (src/config/flags.ts) so it lists exactly what the parser accepts.
import { flagGroups, flagSpecs, type FlagGroup } from '../config/index.js';
import { packageVersion } from '../version.js';

const flagColumn = 28;

function flagLine(name: string, value: string, help: string, defaultText: string | undefined): string {
  const left = `  --${name} ${value}`;
  const def = defaultText === undefined ? '' : ` (default: ${defaultText})`;
  return `${left.padEnd(flagColumn)} ${help}${def}`;
}

export function helpText(): string {
  const lines = [
    `membershipd ${packageVersion()}: control plane of the unibus message bus, a native NATS protocol server.`,
    '',
    'Usage:',
    '  membershipd [serve] [flags]   run a node (serve is the default command)',
    '  membershipd dev [flags]       a local cluster on loopback (--nodes 3): TLS, routes, bus auth, generated certificates and admin user (what `npm start` runs)',
    '  membershipd help              this text (also --help, -h)',
    '  membershipd version           print the version (also --version, -v)',
    '  membershipd user add|update|remove|list|show NAME …    users in the replicated store (--store kv), via a node',
    '  membershipd role add|update|remove|list|show NAME …    roles: --pub-allow/--pub-deny/--sub-allow/--sub-deny SUBJ, --allow-responses, --service NAME, --services-read',
    '  membershipd audit list [--limit N]                     the audit bucket: who changed what',
    '  membershipd snapshot save FILE | inspect FILE          online backup of every bucket at one Raft index; check a backup',
    '  membershipd snapshot restore FILE --data-dir DIR --server-name N --cluster-name NEW --cluster-port P --routes …   a node of a new cluster from a backup',
    '  membershipd service ls [NAME] | show NAME.INSTANCE | watch [NAME]   live service instances (the services bucket)',
    '      connect with --server URL --tls-ca FILE (--internal-id-file FILE | --creds FILE) [--env-file FILE] [--json];',
    '      unset ones come from cluster.env (NATS_CLIENT_PORT, TLS_CA/ROUTE_TLS_CA, INTERNAL_ID_FILE), default /opt/unibus/cluster.env.',
    '      exit codes: 0 ok, 1 failed, 2 bad usage, 3 conflict. Passwords only via --password-stdin or --password-file,',
    '      or --generate-password (256 random bits, printed once, checked without scrypt: for machine accounts).',
    '  membershipd id init|show --internal-id-file FILE       create / show the node\'s internal identity (NKey, mode 0600)',
    '  membershipd certs ca --out DIR                         a CA for mutual TLS (ca.pem, ca.key 0600)',
    '  membershipd certs node|client NAME --ca DIR --out DIR [--ip A]… [--dns N]…   node (server+client) or client certificates',
    '  membershipd cluster status|transfer-leader [NAME]|add NAME URL|remove NAME|kv-replicas R   the meta-group: members, leadership, voters',
    '  membershipd cluster recover --force-new-cluster --data-dir DIR [--i-know-a-quorum-is-lost]   a stopped survivor of a lost quorum becomes a cluster of one (RUNBOOK "Quorum loss")',
  ];
  for (const group of Object.keys(flagGroups) as FlagGroup[]) {
    lines.push('', `${flagGroups[group]}:`);
    for (const spec of flagSpecs.filter((f) => f.group === group)) {
      lines.push(flagLine(spec.name, spec.value, spec.help, spec.defaultText));
    }
    if (group === 'dev') {
      const shared = flagSpecs.filter((f) => f.commands.includes('dev') && f.group !== 'dev').map((f) => `--${f.name}`);
      lines.push(`  dev also takes ${shared.join(', ')} (see above); it always binds 127.0.0.1`);
    }
  }
  lines.push(
    '',
    'Flags take their value as --flag value or --flag=value. A bad, missing or repeated flag value, an unknown flag',
    'or an unreadable file exits 2 with one line naming the flag. Any route flag makes the node a cluster member,',
    'which then needs every route flag (--cluster-name … --route-tls-ca).',
    'Logs are JSON lines on stderr. SIGTERM/SIGINT drain clients and exit 0; a second signal exits at once.',
  );
  return lines.join('\n');
}
