// `membershipd cluster recover --force-new-cluster --data-dir DIR [--i-know-a-quorum-is-lost] [--probe-timeout-ms N]
// [--json]`: run on one stopped survivor after a majority of the voters is lost for good; it becomes a cluster of one
// that keeps its data (src/node/recover.ts says what is kept and how the rewrite is made crash-safe). Offline: it
// reads and writes the data directory, and only probes the old voters' route ports.
import { resolve } from 'node:path';
import { controlBuckets } from '../../control/buckets.js';
import { forceNewCluster, probeTimeoutMsDefault, probeTimeoutMsMax, RecoverError, type RecoverReport } from '../../node/index.js';
import { StoreError } from '../../../store/index.js';
import type { CliOutput } from '../output.js';
import { parseAdminArgs, UsageError } from './args.js';
import { adminExit } from './commands.js';
import { AdminCommandError } from './connection.js';

const usage = 'membershipd cluster recover --force-new-cluster --data-dir DIR';

function describe(r: RecoverReport): string {
  if (r.resumed) {
    return `an interrupted recovery (incarnation ${r.record.incarnation}) was committed and is now finished: ${r.server} is a cluster of one; start it`;
  }
  const voters = r.voters.map((v) => `${v.name} at ${v.address} (${v.reachable === 'self' ? 'this node' : v.reachable ? 'ANSWERS' : 'no answer'})`);
  const tail = r.record.index - r.record.commit;
  return [
    `${r.server} of cluster "${r.cluster}" is now a cluster of one (slot 1 at ${r.address}, new incarnation ${r.record.incarnation})`,
    `old voters: ${voters.join(', ')}${r.record.forced ? ' (--i-know-a-quorum-is-lost)' : ''}`,
    `kept: every entry of its log up to index ${r.record.index} (it knew entries up to ${r.record.commit} committed; ${tail > 0 ? `${tail} entries after that are kept too` : 'none after that'});`
      + ' the nodes and config buckets are dropped (the new leader writes its own); the old Raft state is kept in raft.before-recovery-*',
    'next: start this node (it elects itself and records the recovery in the audit bucket), check /healthz, then for each other node:',
    '  wipe its data directory, run "membershipd cluster add NAME nats-route://HOST:PORT" here and start it with --initial-cluster-state existing',
    'the old nodes cannot rejoin with their old data: the route handshake refuses them (cluster_incarnation)',
  ].join('\n');
}

/** `membershipd cluster recover …`; resolves with the exit code. */
export async function runRecover(argv: readonly string[], out: CliOutput): Promise<number> {
  const cmd = parseAdminArgs(usage, {
    positionals: [],
    flags: { 'force-new-cluster': 'switch', 'i-know-a-quorum-is-lost': 'switch', 'data-dir': 'string', 'probe-timeout-ms': 'string', json: 'switch' },
  }, argv);
  if (!cmd.switches.has('force-new-cluster')) {
    throw new UsageError('--force-new-cluster is required: it says what this does (the node becomes a cluster of one; the other nodes must be wiped and added back). Read RUNBOOK "Quorum loss" first');
  }
  const dataDir = cmd.strings.get('data-dir');
  if (dataDir === undefined) throw new UsageError('--data-dir is required: the stopped survivor\'s data directory (its serve --data-dir)');
  const probeText = cmd.strings.get('probe-timeout-ms');
  const probeTimeoutMs = probeText === undefined ? probeTimeoutMsDefault : Number(probeText);
  if (probeText !== undefined && (!/^\d{1,6}$/.test(probeText) || probeTimeoutMs < 50 || probeTimeoutMs > probeTimeoutMsMax)) {
    throw new UsageError(`--probe-timeout-ms ${JSON.stringify(probeText.slice(0, 20))}: milliseconds from 50 to ${probeTimeoutMsMax}, how long each old voter's route port is probed`);
  }
  let report: RecoverReport;
  try {
    report = await forceNewCluster({
      dataDir: resolve(dataDir), quorumLost: cmd.switches.has('i-know-a-quorum-is-lost'), probeTimeoutMs,
      dropBuckets: [controlBuckets.nodes, controlBuckets.config],
    });
  } catch (err) {
    if (err instanceof RecoverError) {
      out.err(`membershipd cluster recover: refused (${err.code}): ${err.message}; nothing was changed`);
      return adminExit.conflict;
    }
    if (err instanceof StoreError) throw new AdminCommandError(`cluster recover: ${err.message}; nothing was changed`, { cause: err });
    throw err;
  }
  out.out(cmd.switches.has('json') ? JSON.stringify(report, null, 2) : describe(report));
  return adminExit.ok;
}
