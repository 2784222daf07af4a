// TLS for routes: both sides present the node certificate and verify the peer against the cluster CA
// (requestCert + rejectUnauthorized on the listener, rejectUnauthorized on the dialer), TLS 1.3 only.
// Certificates are PEM contents, not paths: src/ reads the files and reports file errors itself.
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import * as tls from 'node:tls';
import type { Refusal } from './handshake.js';

export interface RouteTlsOptions {
  /** PEM certificate of this node (serverAuth + clientAuth: routes are dialed in both directions). */
  readonly cert: string;
  /** PEM private key of `cert`. */
  readonly key: string;
  /** PEM of the cluster CA that signed every node certificate. */
  readonly ca: string;
  /** Check the dialed host against the peer certificate's subjectAltName (default true). */
  readonly verifyHostname?: boolean;
}

/** OID of the serverAuth extended key usage. */
const serverAuthOid = '1.3.6.1.5.5.7.3.1';

/**
 * The route role: a route certificate must carry the serverAuth extended key usage, which `membershipd certs
 * node` sets (node certificates serve the client port and both ends of routes) and `membershipd certs client`
 * does not. Without this rule any certificate of the cluster CA opened a route, a client certificate handed to an
 * application included. Returns why `cert` lacks the role, or undefined.
 */
export function routeRoleProblem(cert: { readonly ext_key_usage?: readonly string[]; readonly subject?: { readonly CN?: string | readonly string[] } } | undefined): string | undefined {
  if (cert === undefined || Object.keys(cert).length === 0) return 'no route certificate presented';
  const eku = cert.ext_key_usage;
  if (eku !== undefined && eku.includes(serverAuthOid)) return undefined;
  const cn = cert.subject?.CN;
  return `certificate ${cn === undefined ? '' : `CN=${String(cn)} `}lacks the route role (extended key usage serverAuth, as \`membershipd certs node\` issues): a client certificate cannot open a route`;
}

export function createRouteServer(options: RouteTlsOptions, handshakeTimeoutMs: number): tls.Server {
  return tls.createServer({
    cert: options.cert, key: options.key, ca: options.ca,
    requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3',
    handshakeTimeout: handshakeTimeoutMs,
  });
}

export function dialRoute(options: RouteTlsOptions, host: string, port: number): tls.TLSSocket {
  return tls.connect({
    host, port, cert: options.cert, key: options.key, ca: options.ca,
    rejectUnauthorized: true, minVersion: 'TLSv1.3',
    // SNI must be a host name, never an IP literal (RFC 6066 §3).
    ...(isIP(host) === 0 ? { servername: host } : {}),
    // The listener's certificate must carry the route role too (routeRoleProblem), checked with the host name.
    checkServerIdentity: (hostname, cert) => {
      const role = routeRoleProblem(cert);
      if (role !== undefined) return Object.assign(new Error(role), { code: 'ERR_ROUTE_ROLE' });
      return options.verifyHostname === false ? undefined : tls.checkServerIdentity(hostname, cert);
    },
  });
}

// OpenSSL's verify results and TLS alerts, mapped to what an operator should check. The listener sees
// the verify result; the dialer, whose certificate was refused, sees the alert the listener sent.
const tlsReasons: Array<[RegExp, string]> = [
  [/PEER_DID_NOT_RETURN_A_CERTIFICATE|CERTIFICATE_REQUIRED/i, 'no client certificate presented'],
  [/CERT_HAS_EXPIRED|CERTIFICATE_EXPIRED/i, 'certificate expired'],
  [/CERT_NOT_YET_VALID/i, 'certificate not yet valid'],
  [/UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT|SELF_SIGNED|UNKNOWN_CA|CERT_SIGNATURE_FAILURE|BAD_CERTIFICATE|DECRYPT_ERROR/i,
    'certificate not signed by the cluster CA'],
  [/ERR_TLS_CERT_ALTNAME_INVALID/i, 'certificate does not name the dialed host'],
  // OpenSSL's own purpose check refuses a listener certificate without serverAuth before checkServerIdentity runs.
  [/ERR_ROUTE_ROLE|INVALID_PURPOSE/, 'certificate lacks the route role (extended key usage serverAuth)'],
  [/WRONG_VERSION_NUMBER|HTTP_REQUEST|PACKET_LENGTH_TOO_LONG|UNEXPECTED_MESSAGE|RECORD_LAYER/i,
    'not a TLS route client (plain bytes before the TLS handshake)'],
];

/** A TLS or socket error as a refusal with a reason an operator can act on. */
export function describeSocketError(error: Error & { code?: string }): Refusal {
  const text = `${error.code ?? ''} ${error.message}`;
  if (error.code === 'ECONNREFUSED' || error.code === 'EHOSTUNREACH' || error.code === 'ETIMEDOUT' || error.code === 'ENOTFOUND') {
    return { code: 'connect', reason: `${error.code}: ${error.message}` };
  }
  for (const [pattern, reason] of tlsReasons) {
    if (pattern.test(text)) return { code: 'tls', reason: `${reason} (${error.code ?? 'tls'}: ${error.message})` };
  }
  return { code: 'closed', reason: `${error.code ?? 'error'}: ${error.message}` };
}

/**
 * Why peers would refuse this node's own certificate (expired, not yet valid, not signed by the CA), or
 * undefined. A listener that refuses a certificate closes without an alert under TLS 1.3, so the dialer
 * cannot learn the reason from the peer; checking locally at start-up puts it in this node's log.
 */
export function checkOwnCertificate(options: RouteTlsOptions, now = new Date()): string | undefined {
  try {
    const cert = new X509Certificate(options.cert);
    if (now > new Date(cert.validTo)) return `this node's route certificate (${cert.subject}) expired on ${cert.validTo}`;
    if (now < new Date(cert.validFrom)) return `this node's route certificate (${cert.subject}) is not valid before ${cert.validFrom}`;
    if (!(cert.keyUsage ?? []).includes(serverAuthOid)) {
      return `this node's route certificate (${cert.subject}) lacks the route role (extended key usage serverAuth): peers refuse it; issue it with \`membershipd certs node\``;
    }
    const ca = new X509Certificate(options.ca);
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
      return `this node's route certificate (${cert.subject}) is not signed by the cluster CA (${ca.subject})`;
    }
  } catch (error) {
    return `this node's route certificate or CA cannot be read: ${(error as Error).message}`;
  }
  return undefined;
}
