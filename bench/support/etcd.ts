// etcd, the reference for a replicated control-plane write: a 3-member cluster of Debian's etcd binary as
// processes on loopback with the same posture as the membershipd cluster beside it (mutual TLS between
// members, TLS to clients, fsync on the WAL, data in the same file system), driven through etcd's v3 JSON
// gateway over one keep-alive HTTPS connection. The gateway re-dials etcd's own gRPC server, so its requests
// carry a proxy hop ours do not: compare the consensus part (write minus serializable read), not only the
// write figures.
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';
import { type CertificateAuthority, issueCertificate, writePemPair } from '../../src/certs/index.js';
import { spawnChild, stopChild } from './children.js';

export interface EtcdCluster {
  /** Client URL of the member that leads when the cluster came up. */
  readonly leaderUrl: string;
  readonly client: EtcdClient;
  stop(): Promise<void>;
}

export interface EtcdClient {
  put(key: string, value: string): Promise<void>;
  /** A range read of one key: serializable (served locally) or linearizable (ReadIndex through the leader). */
  get(key: string, serializable: boolean): Promise<void>;
  close(): void;
}

/** The etcd binary's version line, or null when there is none on PATH (the comparison is then skipped). */
export function etcdVersion(): string | null {
  const r = spawnSync('etcd', ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0 || typeof r.stdout !== 'string') return null;
  return r.stdout.split('\n')[0]?.trim() ?? null;
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');

function etcdClient(url: string, ca: string, cert: { cert: string; key: string }): EtcdClient {
  const agent = new Agent({ keepAlive: true, maxSockets: 64, ca, cert: cert.cert, key: cert.key });
  const target = new URL(url);
  const post = (path: string, body: unknown): Promise<void> =>
    new Promise((resolve, reject) => {
      const data = JSON.stringify(body);
      const req = request(
        { host: target.hostname, port: target.port, path, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }, timeout: 15_000 },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            if (res.statusCode === 200) resolve();
            else reject(new Error(`etcd ${path}: HTTP ${res.statusCode}: ${Buffer.concat(chunks).toString().slice(0, 300)}`));
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`etcd ${path}: no answer within 15 s`)));
      req.on('error', reject);
      req.end(data);
    });
  return {
    put: (key, value) => post('/v3/kv/put', { key: b64(key), value: b64(value) }),
    get: (key, serializable) => post('/v3/kv/range', { key: b64(key), serializable }),
    close: () => agent.destroy(),
  };
}

/** Whether the member at `url` is the leader; null while it does not answer. */
async function memberStatus(url: string, ca: string, cert: { cert: string; key: string }): Promise<{ leader: boolean } | null> {
  const target = new URL(url);
  return new Promise((resolve) => {
    const req = request(
      { host: target.hostname, port: target.port, path: '/v3/maintenance/status', method: 'POST', ca, cert: cert.cert, key: cert.key, timeout: 2000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          try {
            const j = JSON.parse(Buffer.concat(chunks).toString()) as { leader?: string; header?: { member_id?: string } };
            resolve({ leader: j.leader !== undefined && j.leader === j.header?.member_id });
          } catch {
            resolve(null);
          }
        });
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
    req.end('{}');
  });
}

/**
 * Starts three etcd members in `root` on the given ports (2 per member: client, peer) and resolves once one
 * of them leads. Every process is tracked by PID (support/children.ts) and stopped by stop().
 */
export async function startEtcdCluster(root: string, ca: CertificateAuthority, caFile: string, ports: readonly number[]): Promise<EtcdCluster> {
  const names = ['e0', 'e1', 'e2'];
  const clientUrls = names.map((_, i) => `https://127.0.0.1:${ports[2 * i]}`);
  const peerUrls = names.map((_, i) => `https://127.0.0.1:${ports[2 * i + 1]}`);
  const initial = names.map((n, i) => `${n}=${peerUrls[i]}`).join(',');
  const children: ChildProcess[] = [];
  const stderr = ['', '', ''];
  for (let i = 0; i < 3; i++) {
    const pair = await writePemPair(root, `etcd-${names[i]}`, await issueCertificate(ca, { commonName: names[i]!, usage: 'node' }));
    const dataDir = join(root, `etcd-${names[i]}`);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const child = spawnChild('etcd', [
      '--name', names[i]!, '--data-dir', dataDir, '--logger', 'zap', '--log-level', 'error',
      '--listen-client-urls', clientUrls[i]!, '--advertise-client-urls', clientUrls[i]!,
      '--listen-peer-urls', peerUrls[i]!, '--initial-advertise-peer-urls', peerUrls[i]!,
      '--initial-cluster', initial, '--initial-cluster-state', 'new', '--initial-cluster-token', 'bench',
      '--cert-file', pair.certFile, '--key-file', pair.keyFile, '--trusted-ca-file', caFile, '--client-cert-auth',
      '--peer-cert-file', pair.certFile, '--peer-key-file', pair.keyFile, '--peer-trusted-ca-file', caFile, '--peer-client-cert-auth',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d: Buffer) => { stderr[i] = (stderr[i] + d.toString()).slice(-2000); });
    children.push(child);
  }
  const clientCert = await issueCertificate(ca, { commonName: 'bench-client', usage: 'client' });
  const stop = async (): Promise<void> => {
    await Promise.all(children.map((ch) => stopChild(ch, 10_000)));
  };
  try {
    const t0 = Date.now();
    for (;;) {
      for (let i = 0; i < 3; i++) {
        if (children[i]!.exitCode !== null) throw new Error(`etcd ${names[i]} exited ${children[i]!.exitCode}: ${stderr[i]}`);
        const s = await memberStatus(clientUrls[i]!, ca.cert, clientCert);
        if (s?.leader === true) {
          const client = etcdClient(clientUrls[i]!, ca.cert, clientCert);
          return { leaderUrl: clientUrls[i]!, client, stop: async () => { client.close(); await stop(); } };
        }
      }
      if (Date.now() - t0 > 30_000) throw new Error(`etcd: no leader within 30 s: ${stderr.join(' | ')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await stop();
    throw err;
  }
}
