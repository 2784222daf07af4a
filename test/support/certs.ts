// Certificate fixtures: one CA and a leaf per node name, from src/certs (real X.509, real TLS in the tests).
import { createCertificateAuthority, issueCertificate, type PemPair } from '../../src/certs/index.js';

export interface TestPki {
  readonly ca: PemPair;
  /** In the order of the names given. */
  readonly leaves: readonly PemPair[];
}

export async function makePki(caName: string, names: readonly string[]): Promise<TestPki> {
  const ca = await createCertificateAuthority(caName);
  const leaves: PemPair[] = [];
  for (const commonName of names) leaves.push(await issueCertificate(ca, { commonName }));
  return { ca, leaves };
}
