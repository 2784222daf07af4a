// The reference for data at scale: nats-server (Debian's binary) as 3 processes with JetStream clustered on loopback,
// so an R3 KV bucket is replicated as ours is (its own Raft per stream, file store with fsync on its own schedule).
// Plain TCP: the figures compared here are memory, disk and catch-up, not the handshake.
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnChild, stopChild } from './children.js';
import { freePorts, waitForPort } from './ports.js';

export interface NatsJsCluster {
  readonly urls: string[];
  readonly children: ChildProcess[];
  readonly dirs: string[];
  readonly configs: string[];
  /** Starts node i again with its config and data (after a kill). */
  restart(i: number): ChildProcess;
  stop(): Promise<void>;
}

export async function startNatsJsCluster(root: string): Promise<NatsJsCluster> {
  mkdirSync(root, { recursive: true });
  const ports = await freePorts(6);
  const [clientPorts, routePorts] = [ports.slice(0, 3), ports.slice(3)];
  const routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`).join(', ');
  const dirs: string[] = [];
  const configs: string[] = [];
  const children: ChildProcess[] = [];
  const spawnOne = (i: number): ChildProcess => {
    const child = spawnChild('nats-server', ['-c', configs[i]!], { stdio: 'ignore' });
    children[i] = child;
    return child;
  };
  for (let i = 0; i < 3; i++) {
    const dir = join(root, `js-${i}`);
    mkdirSync(dir, { recursive: true });
    dirs.push(dir);
    const conf = join(root, `n${i}.conf`);
    writeFileSync(conf, [
      `server_name: ns${i}`, `listen: 127.0.0.1:${clientPorts[i]}`,
      `jetstream { store_dir: "${dir}" }`,
      `cluster { name: scale, listen: 127.0.0.1:${routePorts[i]}, routes: [${routes}] }`,
    ].join('\n'));
    configs.push(conf);
    spawnOne(i);
  }
  for (let i = 0; i < 3; i++) await waitForPort(clientPorts[i]!, children[i]!);
  return {
    urls: clientPorts.map((p) => `nats://127.0.0.1:${p}`),
    children, dirs, configs,
    restart: spawnOne,
    stop: async () => { await Promise.all(children.map((ch) => stopChild(ch, 10_000))); },
  };
}
