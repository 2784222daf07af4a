// Certificates for mutual TLS: a cluster CA and leaf certificates that serve as both server and client
// (routes are dialed in both directions, so every node certificate carries serverAuth and clientAuth).
// Pure JS on Node's WebCrypto (ECDSA P-256): no openssl binary is needed on the host.
import type * as X509 from '@peculiar/x509';
import { webcrypto, randomBytes, X509Certificate } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

let lib: Promise<typeof X509> | undefined;
function x509lib(): Promise<typeof X509> {
  return (lib ??= (async () => {
    await import('reflect-metadata');
    const m = await import('@peculiar/x509');
    m.cryptoProvider.set(webcrypto);
    return m;
  })());
}

const keyAlgorithm = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const dayMs = 86_400_000;

export interface PemPair {
  /** PEM certificate. */
  readonly cert: string;
  /** PEM PKCS#8 private key. */
  readonly key: string;
}

export interface CertificateAuthority extends PemPair {
  readonly subject: string;
}

export interface LeafOptions {
  /** Common name, e.g. the node's server name. */
  readonly commonName: string;
  /** IP addresses for the subjectAltName (default 127.0.0.1 and ::1). */
  readonly ips?: readonly string[];
  /** DNS names for the subjectAltName (default localhost). */
  readonly dnsNames?: readonly string[];
  /** `node`: serverAuth + clientAuth; `client`: clientAuth only. */
  readonly usage?: 'node' | 'client';
  readonly validDays?: number;
  /** Start of validity; tests use a past window to make an expired certificate. */
  readonly notBefore?: Date;
}

function serialNumber(): string {
  // Positive 128-bit serial: clear the top bit so DER never reads it as negative.
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  return bytes.toString('hex');
}

async function exportKey(key: webcrypto.CryptoKey): Promise<string> {
  const x509 = await x509lib();
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}

async function importKeys(pair: PemPair): Promise<{ cert: X509.X509Certificate; privateKey: webcrypto.CryptoKey }> {
  const x509 = await x509lib();
  const cert = new x509.X509Certificate(pair.cert);
  const der = x509.PemConverter.decode(pair.key)[0]!;
  const privateKey = await webcrypto.subtle.importKey('pkcs8', der, keyAlgorithm, false, ['sign']);
  return { cert, privateKey };
}

/** A new CA. Its CN carries a random suffix so a foreign CA never name-matches this one. */
export async function createCertificateAuthority(name = 'membershipd-ca', validDays = 3650): Promise<CertificateAuthority> {
  const x509 = await x509lib();
  const keys = (await webcrypto.subtle.generateKey(keyAlgorithm, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const subject = `CN=${name}-${randomBytes(4).toString('hex')}`;
  const notBefore = new Date(Date.now() - 60_000);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: subject,
    notBefore,
    notAfter: new Date(notBefore.getTime() + validDays * dayMs),
    keys,
    signingAlgorithm: keyAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: cert.toString('pem'), key: await exportKey(keys.privateKey), subject };
}

/** A leaf certificate signed by `ca`. */
export async function issueCertificate(ca: PemPair, options: LeafOptions): Promise<PemPair> {
  const x509 = await x509lib();
  const issuer = await importKeys(ca);
  const keys = (await webcrypto.subtle.generateKey(keyAlgorithm, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const notBefore = options.notBefore ?? new Date(Date.now() - 60_000);
  const usages = options.usage === 'client'
    ? [x509.ExtendedKeyUsage.clientAuth]
    : [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
  const altNames: X509.JsonGeneralName[] = [
    ...(options.ips ?? ['127.0.0.1', '::1']).map((value) => ({ type: 'ip' as const, value })),
    ...(options.dnsNames ?? ['localhost']).map((value) => ({ type: 'dns' as const, value })),
  ];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: `CN=${options.commonName}`,
    issuer: issuer.cert.subject,
    notBefore,
    notAfter: new Date(notBefore.getTime() + (options.validDays ?? 825) * dayMs),
    publicKey: keys.publicKey,
    signingKey: issuer.privateKey,
    signingAlgorithm: keyAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      // keyEncipherment is RSA-only; an EC leaf signs its handshakes.
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(usages),
      new x509.SubjectAlternativeNameExtension(altNames),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.cert),
    ],
  });
  return { cert: cert.toString('pem'), key: await exportKey(keys.privateKey) };
}

/** Writes `<base>.pem` (0644) and `<base>.key` (0600) into `dir`; returns their paths. */
export async function writePemPair(dir: string, base: string, pair: PemPair): Promise<{ certFile: string; keyFile: string }> {
  await mkdir(dir, { recursive: true });
  const certFile = join(dir, `${base}.pem`);
  const keyFile = join(dir, `${base}.key`);
  await writeFile(certFile, pair.cert, { mode: 0o644 });
  await writeFile(keyFile, pair.key, { mode: 0o600 });
  return { certFile, keyFile };
}

/** Subject CN and validity of a PEM certificate, for messages and checks. */
export function describeCertificate(pem: string): { subject: string; validTo: Date; validFrom: Date } {
  const cert = new X509Certificate(pem);
  return { subject: cert.subject, validTo: new Date(cert.validTo), validFrom: new Date(cert.validFrom) };
}
