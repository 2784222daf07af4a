import t from 'tap';
import { createServer, connect, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { createCertificateAuthority, issueCertificate, type PemPair } from '../../src/certs/index.js';

interface Outcome { authorized: boolean; error?: string }

async function handshake(server: PemPair & { ca: string }, client: Partial<PemPair> & { ca: string }): Promise<Outcome> {
  const srv = createServer({ cert: server.cert, key: server.key, ca: server.ca, requestCert: true, rejectUnauthorized: true }, (s) => {
    s.end('hi');
  });
  srv.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  try {
    return await new Promise<Outcome>((resolve) => {
      const sock: TLSSocket = connect({ port, host: '127.0.0.1', ca: client.ca, cert: client.cert, key: client.key, servername: 'localhost' });
      let data = '';
      sock.on('data', (d) => { data += d.toString(); });
      sock.on('end', () => resolve({ authorized: data === 'hi' }));
      sock.on('error', (e) => resolve({ authorized: false, error: (e as NodeJS.ErrnoException).code ?? e.message }));
    });
  } finally {
    srv.close();
  }
}

t.test('a CA and node certificates give mutual TLS, and refuse strangers', async (t) => {
  const ca = await createCertificateAuthority('test-ca');
  const foreign = await createCertificateAuthority('test-ca');
  t.not(ca.subject, foreign.subject, 'two CAs never share a subject');
  const n1 = await issueCertificate(ca, { commonName: 'n1' });
  const n2 = await issueCertificate(ca, { commonName: 'n2' });
  const rogue = await issueCertificate(foreign, { commonName: 'n2' });

  const x = new X509Certificate(n1.cert);
  t.match(x.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
  t.match(x.subjectAltName ?? '', /DNS:localhost/);
  t.ok(x.verify(new X509Certificate(ca.cert).publicKey), 'leaf is signed by the CA');
  t.same(x.keyUsage, ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'serverAuth and clientAuth');

  t.same(await handshake({ ...n1, ca: ca.cert }, { ...n2, ca: ca.cert }), { authorized: true }, 'same CA: accepted');
  t.equal((await handshake({ ...n1, ca: ca.cert }, { ...rogue, ca: ca.cert })).authorized, false, 'foreign CA: refused');
  t.equal((await handshake({ ...n1, ca: ca.cert }, { ca: ca.cert })).authorized, false, 'no client cert: refused');

  const expired = await issueCertificate(ca, { commonName: 'old', notBefore: new Date(Date.now() - 10 * 86_400_000), validDays: 1 });
  t.equal((await handshake({ ...n1, ca: ca.cert }, { ...expired, ca: ca.cert })).authorized, false, 'expired: refused');
  const clientOnly = await issueCertificate(ca, { commonName: 'admin', usage: 'client' });
  t.same(new X509Certificate(clientOnly.cert).keyUsage, ['1.3.6.1.5.5.7.3.2'], 'client certs carry clientAuth only');
});
