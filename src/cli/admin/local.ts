// Admin commands that need no node: `membershipd id init|show` (the internal identity file, src/auth) and
// `membershipd certs ca|node|client` (PEM files for mutual TLS, src/certs). Keys are written mode 0600; an
// existing file is never overwritten (re-running is safe: it reports what is there).
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { IdentityFileError, loadOrCreateIdentity, readIdentity } from '../../auth/index.js';
import { createCertificateAuthority, describeCertificate, issueCertificate, writePemPair, type PemPair } from '../../certs/index.js';
import type { CliOutput } from '../output.js';
import { parseAdminArgs, UsageError } from './args.js';
import { AdminCommandError } from './connection.js';

const fileFlag = { 'internal-id-file': 'string', json: 'switch' } as const;

function idFile(cmd: { strings: ReadonlyMap<string, string> }, env: NodeJS.ProcessEnv): string {
  const f = cmd.strings.get('internal-id-file') ?? env.INTERNAL_ID_FILE;
  if (f === undefined || f === '') throw new UsageError('--internal-id-file FILE is required (or INTERNAL_ID_FILE in the environment)');
  return f;
}

export function runId(argv: readonly string[], out: CliOutput, env: NodeJS.ProcessEnv = process.env): number {
  const verb = argv[0];
  if (verb !== 'init' && verb !== 'show') throw new UsageError(`${verb === undefined ? 'missing id command' : `unknown id command ${JSON.stringify(verb)}`} (commands: init, show)`);
  const cmd = parseAdminArgs(`membershipd id ${verb}`, { positionals: [], flags: fileFlag }, argv.slice(1));
  const path = idFile(cmd, env);
  let id;
  try {
    id = verb === 'init' ? loadOrCreateIdentity(path) : readIdentity(path);
  } catch (err) {
    if (err instanceof IdentityFileError) throw new UsageError(`--internal-id-file: ${err.message}`);
    throw err;
  }
  const result = verb === 'show' ? 'exists' : id.created ? 'created' : 'exists';
  if (cmd.switches.has('json')) out.out(JSON.stringify({ result, path, public_key: id.publicKey }));
  else out.out(`${path}: ${result}\npublic key ${id.publicKey}`);
  return 0;
}

const certFlags = {
  out: 'string', ca: 'string', 'ca-cert': 'string', 'ca-key': 'string', name: 'string', ip: 'list', dns: 'list', days: 'string', json: 'switch',
} as const;

function readPair(certFile: string, keyFile: string): PemPair {
  try {
    return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
  } catch (err) {
    throw new UsageError(`cannot read the CA ${certFile} / ${keyFile} (${(err as NodeJS.ErrnoException).code ?? String(err)}); create one with \`membershipd certs ca --out DIR\``);
  }
}

/** `certs ca --out DIR` → DIR/ca.pem + ca.key; `certs node|client NAME --ca DIR --out DIR [--ip A]… [--dns N]…` → DIR/NAME.pem + NAME.key. */
export async function runCerts(argv: readonly string[], out: CliOutput): Promise<number> {
  const verb = argv[0];
  if (verb !== 'ca' && verb !== 'node' && verb !== 'client') {
    throw new UsageError(`${verb === undefined ? 'missing certs command' : `unknown certs command ${JSON.stringify(verb)}`} (commands: ca, node, client)`);
  }
  const cmd = parseAdminArgs(`membershipd certs ${verb}`, { positionals: verb === 'ca' ? [] : ['NAME'], flags: certFlags }, argv.slice(1));
  const dir = cmd.strings.get('out');
  if (dir === undefined) throw new UsageError('--out DIR is required (where the PEM files are written)');
  const daysText = cmd.strings.get('days');
  const days = daysText === undefined ? undefined : Number(daysText);
  if (days !== undefined && (!Number.isSafeInteger(days) || days < 1 || days > 36500)) throw new UsageError('--days: 1..36500');
  const base = verb === 'ca' ? 'ca' : cmd.positionals[0]!;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(base)) throw new UsageError(`NAME ${JSON.stringify(base)}: 1..128 of letters, digits, '_', '.', '-' (it names the files)`);
  const certFile = join(dir, `${base}.pem`);
  const keyFile = join(dir, `${base}.key`);
  const report = (result: 'created' | 'exists', pem: string): number => {
    const d = describeCertificate(pem);
    if (cmd.switches.has('json')) out.out(JSON.stringify({ result, cert: certFile, key: keyFile, subject: d.subject, valid_to: d.validTo.toISOString() }));
    else out.out(`${certFile}: ${result} (${d.subject.replace(/\n/g, ', ')}, valid to ${d.validTo.toISOString()})\n${keyFile}: private key, mode 0600`);
    return 0;
  };
  if (existsSync(certFile) || existsSync(keyFile)) {
    if (!(existsSync(certFile) && existsSync(keyFile))) throw new AdminCommandError(`${existsSync(certFile) ? keyFile : certFile} is missing but its partner exists; remove the partner or restore it (nothing overwritten)`);
    return report('exists', readFileSync(certFile, 'utf8'));
  }
  let pair: PemPair;
  if (verb === 'ca') {
    pair = await createCertificateAuthority(cmd.strings.get('name') ?? 'membershipd-ca', days ?? 3650);
  } else {
    const caDir = cmd.strings.get('ca');
    const caCert = cmd.strings.get('ca-cert') ?? (caDir !== undefined ? join(caDir, 'ca.pem') : undefined);
    const caKey = cmd.strings.get('ca-key') ?? (caDir !== undefined ? join(caDir, 'ca.key') : undefined);
    if (caCert === undefined || caKey === undefined) throw new UsageError('--ca DIR (holding ca.pem and ca.key) or --ca-cert FILE --ca-key FILE is required');
    const ips = cmd.lists.get('ip') ?? [];
    for (const ip of ips) if (isIP(ip) === 0) throw new UsageError(`--ip ${JSON.stringify(ip)} is not an IP address`);
    const dns = cmd.lists.get('dns') ?? [];
    for (const n of dns) if (!/^(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(n)) throw new UsageError(`--dns ${JSON.stringify(n)} is not a DNS name`);
    // Loopback SANs always: the admin CLI and health checks on the node itself connect to 127.0.0.1.
    const allIps = [...new Set(['127.0.0.1', '::1', ...ips])];
    const allDns = [...new Set(['localhost', ...dns])];
    pair = await issueCertificate(readPair(caCert, caKey), {
      commonName: cmd.strings.get('name') ?? base, ips: allIps, dnsNames: allDns, usage: verb, ...(days !== undefined ? { validDays: days } : {}),
    });
  }
  await writePemPair(dir, base, pair);
  return report('created', pair.cert);
}
