// bench:routes — cross-node pub/sub: publisher on node A, subscriber on node B (128-byte payloads), through
// a 3-node membershipd cluster (NATS server + TLS route transport + cluster bus per node) and, when the
// nats-server binary is installed, a 3-node nats-server cluster with TLS routes. Same @nats-io/transport-node
// client, same run, rounds alternating between the systems. Every node is its own child process so that no
// node shares the client's CPU. Figures are taken on a shared, loaded 2-core machine: compare the ratio.
//
// The same file is the membershipd node process: `routes.ts node <json config>`.
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connect } from '@nats-io/transport-node';
import nacl from 'tweetnacl';
import { pino } from 'pino';
import { createCertificateAuthority, issueCertificate } from '../src/certs/index.js';
import { createNatsServer } from '../src/nats/index.js';
import { createClusterBus, type ClusterBus } from '../src/bus/index.js';
import { createRouteTransport } from '../transport/index.js';
import { hasBinary, nodeEntryArgs, spawnChild, stopChild } from './support/children.js';
import { publishInSlices } from './support/nats_load.js';
import { freePorts, waitForPort } from './support/ports.js';
import { cpuMicrosSince, cpuSeconds } from './support/process_usage.js';
import { loadAverage } from './support/probes.js';
import { formatCount, median } from './support/stats.js';

const msgs = Number(process.env.BENCH_MSGS ?? 200_000);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const phaseTimeoutMs = 60_000;
const payload = new Uint8Array(128).fill(97);
const names = ['a', 'b', 'c'] as const;

interface NodeConfig {
  name: string; natsPort: number; clusterPort: number; routes: string; cert: string; key: string; ca: string;
}

async function runNode(config: NodeConfig): Promise<void> {
  const log = pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination({ dest: 2, sync: true }));
  const nats = createNatsServer({ host: '127.0.0.1', port: config.natsPort, serverName: config.name, logger: log });
  await nats.start();
  const pair = nacl.sign.keyPair();
  let bus: ClusterBus | undefined;
  const transport = createRouteTransport({
    clusterName: 'bench', serverName: config.name, host: '127.0.0.1', port: config.clusterPort, routes: config.routes,
    tls: { cert: config.cert, key: config.key, ca: config.ca },
    identity: { publicKey: pair.publicKey, sign: (d) => nacl.sign.detached(d, pair.secretKey) },
    user: 'route', password: 'bench-password', postureDigest: 'bench', clusterSize: 3, logger: log,
    onPeerUp: (p) => { bus!.peerUp(p.name!); console.log(`PEERS ${transport.upPeers().length}`); },
    onPeerDown: (p) => { bus!.peerDown(p.name!); console.log(`PEERS ${transport.upPeers().length}`); },
    onFrame: (peer, frame) => { bus!.handleFrame(peer, frame); },
  });
  bus = createClusterBus({ nats: nats.cluster, routes: transport, logger: log });
  await transport.start();
  console.log('READY');
  process.once('SIGTERM', () => {
    void (async () => {
      await transport.close();
      await nats.close();
      process.exit(0);
    })();
  });
}

/** The node runs from plain JavaScript bundled by esbuild, as it would from dist/. */
function nodeCommand(): string[] {
  return nodeEntryArgs('bench/routes.ts', 'routes_node.mjs', 'esbuild bundle failed; running the nodes under tsx');
}

interface Cluster {
  kind: 'membershipd' | 'nats-server';
  children: ChildProcess[];
  clientPorts: number[];
}

/** Client and cluster ports for the three nodes, all distinct. */
async function clientAndClusterPorts(): Promise<[number[], number[]]> {
  const ports = await freePorts(2 * names.length);
  return [ports.slice(0, names.length), ports.slice(names.length)];
}

async function startMembershipd(dir: string): Promise<Cluster> {
  const command = nodeCommand();
  const [natsPorts, clusterPorts] = await clientAndClusterPorts();
  const routes = clusterPorts.map((p) => `127.0.0.1:${p}`).join(','); // every node lists all three, itself too
  const children: ChildProcess[] = [];
  const meshed: Promise<void>[] = [];
  names.forEach((name, i) => {
    const config: NodeConfig = {
      name, natsPort: natsPorts[i]!, clusterPort: clusterPorts[i]!, routes,
      cert: readFileSync(join(dir, `${name}.pem`), 'utf8'), key: readFileSync(join(dir, `${name}.key`), 'utf8'),
      ca: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    };
    // BENCH_CPU_PROF=<dir> writes a V8 CPU profile per node, to see where the time goes.
    const prof = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
    const child = spawnChild(process.execPath, [...prof, ...command, 'node', JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    meshed.push(new Promise((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! });
      lines.on('line', (line) => { if (line === 'PEERS 2') resolve(); });
      child.once('exit', (code) => reject(new Error(`membershipd node ${name} exited with ${code}`)));
    }));
  });
  const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('membershipd mesh did not form')), 30_000).unref());
  await Promise.race([Promise.all(meshed), timeout]);
  return { kind: 'membershipd', children, clientPorts: natsPorts };
}

async function startNatsServer(dir: string): Promise<Cluster> {
  const [natsPorts, clusterPorts] = await clientAndClusterPorts();
  const children: ChildProcess[] = [];
  names.forEach((name, i) => {
    // nats-server takes route credentials in the URL; membershipd refuses that by design.
    const routes = clusterPorts.filter((_, j) => j !== i).map((p) => `"nats-route://route:bench-password@127.0.0.1:${p}"`);
    const conf = join(dir, `nats-${name}.conf`);
    writeFileSync(conf, `server_name: ${name}
listen: 127.0.0.1:${natsPorts[i]}
cluster {
  name: bench
  listen: 127.0.0.1:${clusterPorts[i]}
  authorization { user: route, password: bench-password }
  routes: [${routes.join(', ')}]
  tls { cert_file: "${join(dir, `${name}.pem`)}", key_file: "${join(dir, `${name}.key`)}", ca_file: "${join(dir, 'ca.pem')}", verify: true, timeout: 5 }
}
`);
    children.push(spawnChild('nats-server', ['-c', conf], { stdio: 'ignore' }));
  });
  await Promise.all(natsPorts.map((p, i) => waitForPort(p, children[i]!)));
  return { kind: 'nats-server', children, clientPorts: natsPorts };
}

async function stop(cluster: Cluster): Promise<void> {
  await Promise.all(cluster.children.map((child) => stopChild(child)));
}

/**
 * Publisher on node A, subscriber on node `subNode` (B for the cross-node figure; A itself for the same-node
 * baseline that shows how much of the gap is the NATS server rather than the route): msgs/s from the first
 * publish to the last delivery.
 */
async function crossNode(cluster: Cluster, subNode = 1): Promise<{ rate: number; cpuUsPerMsg: number; received: number }> {
  const pub = await connect({ servers: `127.0.0.1:${cluster.clientPorts[0]}` });
  const sub = await connect({ servers: `127.0.0.1:${cluster.clientPorts[subNode]}` });
  let received = 0;
  let probes = 0;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  sub.subscribe('bench.probe', { callback: () => { probes++; } });
  sub.subscribe('bench.cross', { callback: () => { if (++received === msgs) done(); } });
  await sub.flush();
  // Interest crosses the route asynchronously (in both systems): probe until node A delivers to the subscriber.
  for (let i = 0; i < 500 && probes === 0; i++) {
    pub.publish('bench.probe');
    await pub.flush();
    await new Promise((r) => setTimeout(r, 10));
  }
  if (probes === 0) throw new Error(`${cluster.kind}: interest never reached node A`);
  const cpu0 = cluster.children.reduce((s, c) => s + cpuSeconds(c.pid!), 0);
  const start = performance.now();
  await publishInSlices(pub, ['bench.cross'], payload, msgs);
  await Promise.race([all, new Promise((r) => setTimeout(r, phaseTimeoutMs).unref())]);
  const secs = (performance.now() - start) / 1000;
  const cpu = cluster.children.reduce((s, c) => s + cpuSeconds(c.pid!), 0) - cpu0;
  await Promise.all([pub.close(), sub.close()]);
  return { rate: received / secs, cpuUsPerMsg: (cpu * 1e6) / Math.max(received, 1), received };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-routes-'));
  const ca = await createCertificateAuthority('bench-ca');
  writeFileSync(join(dir, 'ca.pem'), ca.cert);
  for (const name of names) {
    const leaf = await issueCertificate(ca, { commonName: name });
    writeFileSync(join(dir, `${name}.pem`), leaf.cert);
    writeFileSync(join(dir, `${name}.key`), leaf.key, { mode: 0o600 });
  }
  const haveNats = process.env.BENCH_SKIP_NATS !== '1' && hasBinary('nats-server');
  console.log(`bench:routes — ${formatCount(msgs)} msgs of 128 B per round, publisher on node A, subscriber on node B, ` +
    `${rounds} rounds; load average ${loadAverage(2)} (shared machine: compare ratios)`);
  const clusters: Cluster[] = [];
  const results = new Map<string, number[]>();
  const cpu = new Map<string, number[]>();
  try {
    clusters.push(await startMembershipd(dir));
    if (haveNats) clusters.push(await startNatsServer(dir));
    else console.log('  skip: nats-server not run (binary not found, or BENCH_SKIP_NATS=1; apt-get install nats-server); membershipd figures only');
    for (let r = 1; r <= rounds; r++) {
      for (const cluster of clusters) {
        const res = await crossNode(cluster);
        (results.get(cluster.kind) ?? results.set(cluster.kind, []).get(cluster.kind)!).push(res.rate);
        (cpu.get(cluster.kind) ?? cpu.set(cluster.kind, []).get(cluster.kind)!).push(res.cpuUsPerMsg);
        console.log(`  round ${r} ${cluster.kind.padEnd(11)} ${formatCount(res.rate).padStart(9)} msgs/s ` +
          `(${res.received}/${msgs} delivered)   cluster CPU ${res.cpuUsPerMsg.toFixed(2)} µs/msg`);
      }
    }
    for (const cluster of clusters) {
      const same = await crossNode(cluster, 0);
      console.log(`  same-node baseline ${cluster.kind.padEnd(11)} ${formatCount(same.rate).padStart(9)} msgs/s ` +
        `(publisher and subscriber both on node A, no route)   cluster CPU ${same.cpuUsPerMsg.toFixed(2)} µs/msg`);
    }
  } finally {
    for (const c of clusters) await stop(c);
    rmSync(dir, { recursive: true, force: true });
  }
  const recvUs = await receivePathCpu();
  console.log(`receive path (in-process, no cluster): ${recvUs.toFixed(2)} µs CPU per deliverFromRoute, 128-byte payload (best of 3)`);
  const ours = median(results.get('membershipd') ?? [NaN]);
  const theirs = median(results.get('nats-server') ?? [NaN]);
  // CPU per delivered message (all three nodes) is steadier than rates on a loaded machine, where a
  // multi-threaded Go process also wins a larger share of the scheduler than three single-threaded Node ones.
  const oursCpu = median(cpu.get('membershipd') ?? [NaN]);
  const theirsCpu = median(cpu.get('nats-server') ?? [NaN]);
  console.log(`median membershipd ${formatCount(ours)} msgs/s, ${oursCpu.toFixed(2)} cluster CPU µs/msg` +
    (haveNats ? `; nats-server ${formatCount(theirs)} msgs/s, ${theirsCpu.toFixed(2)} cluster CPU µs/msg` : ''));
  console.log(haveNats
    ? `BENCH routes cross_node_ratio=${(ours / theirs).toFixed(3)} membershipd_msgs_per_s=${Math.round(ours)} ` +
      `nats_server_msgs_per_s=${Math.round(theirs)} cpu_per_msg_ratio=${(theirsCpu / oursCpu).toFixed(3)} recv_us_per_msg=${recvUs.toFixed(2)}`
    : `BENCH routes cross_node_ratio=skipped membershipd_msgs_per_s=${Math.round(ours)} recv_us_per_msg=${recvUs.toFixed(2)}`);
}

/**
 * The receiving node's share of a routed message without the cluster around it: CPU per deliverFromRoute call
 * (128-byte payload, one subscriber draining its socket), in this process. The payload is a fresh copy per call,
 * as the transport's decoder hands it over. Steadier than end-to-end rates on a loaded machine.
 */
async function receivePathCpu(): Promise<number> {
  const server = createNatsServer({ host: '127.0.0.1', port: 0, logger: pino({ level: 'silent' }) });
  await server.start();
  const sock = net.connect({ host: '127.0.0.1', port: server.port });
  sock.on('data', () => undefined);
  sock.on('error', () => undefined);
  try {
    sock.write('CONNECT {"verbose":false}\r\nSUB bench.data 1\r\n');
    const deadline = Date.now() + 10_000;
    while (server.stats().subscriptions === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const n = 200_000;
    const batch = 1000;
    let best = Infinity;
    for (let rep = 0; rep < 3; rep++) {
      let cpu = 0;
      for (let i = 0; i < n; i += batch) {
        const c0 = process.cpuUsage();
        for (let k = 0; k < batch; k++) server.cluster.deliverFromRoute({ subject: 'bench.data', payload: payload.slice() });
        cpu += cpuMicrosSince(c0);
        await new Promise((r) => setImmediate(r)); // the once-per-turn flush writes the batch out
      }
      best = Math.min(best, cpu / n);
    }
    return best;
  } finally {
    sock.destroy();
    await server.close();
  }
}

if (process.argv[2] === 'node') {
  await runNode(JSON.parse(process.argv[3]!) as NodeConfig);
} else {
  await main();
}
