// A membershipd NATS server as its own process, for benchmarks (RSS, and no CPU shared with the client).
// Usage: node --import tsx bench/support/nats_server_main.ts [port]; prints "READY <port>" on stdout.
import { createNatsServer } from '../../src/nats/index.js';
import { silentLogger } from '../../src/log.js';

const server = createNatsServer({ host: '127.0.0.1', port: Number(process.argv[2] ?? 0), logger: silentLogger() });
await server.start();
process.stdout.write(`READY ${server.port}\n`);
const stop = (): void => void server.close().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
