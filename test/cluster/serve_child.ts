// A membershipd node as its own process for test/cluster/processes.test.ts: the real flag parser and the
// real `serve` start path (NATS server + cluster node + HTTP). The test drives writes and reads over the
// IPC channel (the admin API that will do this over NATS is another module's work) and kills it with -9.
// The CLI's refusal of cluster flags (src/cli/features.ts) is not applied here: lifting it is issue 7.
import { startServing } from '../../src/cli/serve.js';
import { parseCommandLine } from '../../src/config/index.js';
import { createLogger } from '../../src/log.js';
import { NodeError } from '../../src/node/index.js';

type Request =
  | { readonly id: number; readonly op: 'put'; readonly key: string; readonly value: number }
  | { readonly id: number; readonly op: 'bucket' }
  | { readonly id: number; readonly op: 'read' };

const command = parseCommandLine(process.argv.slice(2));
if (command.kind !== 'serve') throw new Error('serve_child: expected serve flags');
const logger = createLogger(command.config.logLevel, { server_name: command.config.serverName });
const served = await startServing(command.config, logger);
const node = served.cluster;
if (!node) throw new Error('serve_child: no cluster flags given');
// The bound ports, as the listeners report them: the test passes --nats-port 0 --http-port 0 (bind, don't probe).
process.send!({ ready: true, http: served.urls.http, nats: served.urls.nats });

process.on('message', (m: Request) => {
  const reply = (body: Record<string, unknown>): void => void process.send!({ id: m.id, ...body });
  if (m.op === 'put' || m.op === 'bucket') {
    const cmd = m.op === 'put'
      ? { op: 'put' as const, bucket: 'b', key: m.key, value: Uint8Array.of(m.value), ts: 1 }
      : { op: 'bucket.create' as const, bucket: 'b', config: {}, ts: 1 };
    node.kv.propose(cmd).then(
      (r) => reply({ ok: r.ok }),
      (e: unknown) => reply({ ok: false, code: (e as NodeError).code, retryable: e instanceof NodeError && e.retryable, message: String((e as Error).message) }),
    );
  } else {
    node.kv.read().then(
      (sm) => {
        const values: Record<string, number> = {};
        if (sm.bucketInfo('b')) for (const k of sm.keys('b')) values[k] = sm.get('b', k)!.value[0]!;
        reply({ ok: true, values });
      },
      (e: unknown) => reply({ ok: false, code: (e as NodeError).code, message: String((e as Error).message) }),
    );
  }
});
process.on('SIGTERM', () => void served.stop().then(() => process.exit(0)));
