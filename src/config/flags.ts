// The one table of every flag membershipd accepts. The parser, the validators and `--help` all read it,
// so the help text cannot drift from what the parser accepts.

export const commandNames = ['serve', 'dev', 'help', 'version'] as const;
export type CommandName = (typeof commandNames)[number];

/** Admin subcommands handled by src/cli/admin before this flag table is consulted (their own syntax). */
export const adminCommandNames = ['user', 'role', 'audit', 'cluster', 'service', 'id', 'certs', 'snapshot'] as const;

export const flagGroups = {
  serve: 'Serve flags (membershipd [serve] ...)',
  cluster: 'Cluster flags',
  auth: 'Auth and store flags',
  dev: 'Dev flags (membershipd dev ...)',
} as const;
export type FlagGroup = keyof typeof flagGroups;

export interface FlagSpec {
  /** Without the leading `--`. */
  readonly name: string;
  readonly group: FlagGroup;
  readonly commands: readonly ('serve' | 'dev')[];
  /** Placeholder shown in help, e.g. ADDR. */
  readonly value: string;
  /** Default as shown in help; undefined = unset. */
  readonly defaultText?: string;
  readonly help: string;
}

const serveOnly = ['serve'] as const;
const both = ['serve', 'dev'] as const;

export const flagSpecs: readonly FlagSpec[] = [
  { name: 'bind', group: 'serve', commands: serveOnly, value: 'ADDR', defaultText: '127.0.0.1', help: 'address for the client, WebSocket and HTTP ports' },
  { name: 'nats-port', group: 'serve', commands: both, value: 'PORT', defaultText: '4222', help: 'NATS client port (0 = any free port)' },
  { name: 'http-port', group: 'serve', commands: both, value: 'PORT', defaultText: '8222', help: 'HTTP port: /livez, /healthz, /readyz, /varz, /connz, /routez, /raftz, /metrics (0 = any free port)' },
  { name: 'server-name', group: 'serve', commands: serveOnly, value: 'NAME', defaultText: 'the host name', help: 'this node\'s server name' },
  { name: 'tls-cert', group: 'serve', commands: serveOnly, value: 'FILE', help: 'PEM certificate for TLS on the client port (with --tls-key)' },
  { name: 'tls-key', group: 'serve', commands: serveOnly, value: 'FILE', help: 'PEM private key for --tls-cert' },
  { name: 'ws-port', group: 'serve', commands: serveOnly, value: 'PORT', defaultText: 'off', help: 'NATS over WebSocket on this port (0 = any free port)' },
  { name: 'max-subscriptions', group: 'serve', commands: serveOnly, value: 'N', defaultText: '10000', help: 'subscriptions one client connection may hold (nats-server max_subscriptions; 0 = unlimited)' },
  { name: 'idle-gc', group: 'serve', commands: serveOnly, value: 'MS', defaultText: '1000', help: 'run one full GC once writes have been quiet this long after 32 MiB of churn, so a quiet node returns its garbage (0 = off)' },
  { name: 'log-level', group: 'serve', commands: both, value: 'LEVEL', defaultText: 'info (dev: warn)', help: 'fatal|error|warn|info|debug|trace|silent' },
  { name: 'ports-file', group: 'serve', commands: serveOnly, value: 'FILE', help: 'once listening, write the bound ports here as JSON (for port 0; removed at stop)' },
  { name: 'data-dir', group: 'serve', commands: serveOnly, value: 'DIR', defaultText: './data', help: 'directory for the WAL and snapshots' },
  { name: 'cluster-name', group: 'cluster', commands: serveOnly, value: 'NAME', help: 'name every node of the cluster shares' },
  { name: 'cluster-port', group: 'cluster', commands: serveOnly, value: 'PORT', help: 'route port (TLS) for the other nodes' },
  { name: 'cluster-fd', group: 'cluster', commands: serveOnly, value: 'FD', help: 'take the route listener from this inherited, already-listening socket (a supervisor or test harness bound --cluster-port) instead of binding it' },
  { name: 'routes', group: 'cluster', commands: serveOnly, value: 'LIST', help: 'comma-separated host:port or nats-route://host:port, no user info' },
  { name: 'initial-cluster-state', group: 'cluster', commands: serveOnly, value: 'STATE', defaultText: 'new', help: 'new|existing: existing joins a running cluster after `membershipd cluster add NAME URL` (slot learned from the peers)' },
  { name: 'cluster-user', group: 'cluster', commands: serveOnly, value: 'USER', help: 'route user name' },
  { name: 'cluster-pass-file', group: 'cluster', commands: serveOnly, value: 'FILE', help: 'file holding the route password (never on argv)' },
  { name: 'route-tls-cert', group: 'cluster', commands: serveOnly, value: 'FILE', help: 'PEM certificate this node presents on routes' },
  { name: 'route-tls-key', group: 'cluster', commands: serveOnly, value: 'FILE', help: 'PEM private key for --route-tls-cert' },
  { name: 'route-tls-ca', group: 'cluster', commands: serveOnly, value: 'FILE', help: 'PEM CA that signs every route certificate' },
  { name: 'bus-auth', group: 'auth', commands: serveOnly, value: 'MODE', defaultText: 'off', help: 'off|warn|enforce' },
  { name: 'store', group: 'auth', commands: serveOnly, value: 'KIND', defaultText: 'file', help: 'file|kv: where users and roles live; kv (or any cluster flag) also serves the JetStream KV API' },
  { name: 'users-file', group: 'auth', commands: serveOnly, value: 'FILE', help: 'users and roles for --store file; SIGHUP reloads it' },
  { name: 'internal-id-file', group: 'auth', commands: serveOnly, value: 'FILE', help: 'this node\'s NKey seed, created on first start' },
  { name: 'kv-replicas', group: 'auth', commands: serveOnly, value: 'N', help: 'Raft voters for --store kv' },
  { name: 'max-kv-bytes', group: 'auth', commands: serveOnly, value: 'BYTES', defaultText: 'unlimited', help: 'KV data this node accepts (256MiB, 1G …): a write past it is refused, deletes and purges still work (etcd --quota-backend-bytes)' },
  { name: 'nodes', group: 'dev', commands: ['dev'], value: 'N', defaultText: '3', help: 'how many nodes the local cluster runs (1-7)' },
  { name: 'dir', group: 'dev', commands: ['dev'], value: 'DIR', defaultText: './.dev-cluster', help: 'where dev certificates are generated and kept' },
];

const byName = new Map(flagSpecs.map((f) => [f.name, f]));

export function flagSpec(name: string): FlagSpec | undefined {
  return byName.get(name);
}
