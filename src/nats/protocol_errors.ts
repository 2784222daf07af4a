// The -ERR catalogue of nats-server 2.9.10 (reference/nats-protocol.md §1.9). Clients branch on these exact
// texts (nats.go closes for good on an unknown one), so no other -ERR text is ever sent. `closes` says whether
// nats-server closes the connection right after sending it.

export const protocolErrors = {
  unknownOperation: { text: 'Unknown Protocol Operation', closes: true },
  authorizationViolation: { text: 'Authorization Violation', closes: true },
  authenticationTimeout: { text: 'Authentication Timeout', closes: true },
  maxPayload: { text: 'Maximum Payload Violation', closes: true },
  maxControlLine: { text: 'maximum control line exceeded', closes: true },
  maxConnections: { text: 'maximum connections exceeded', closes: true },
  staleConnection: { text: 'Stale Connection', closes: true },
  tlsRequired: { text: 'Secure Connection - TLS Required', closes: true },
  invalidProtocol: { text: 'invalid client protocol', closes: true },
  noRespondersNeedsHeaders: { text: 'no responders requires headers support', closes: true },
  invalidSubject: { text: 'Invalid Subject', closes: false },
  invalidPublishSubject: { text: 'Invalid Publish Subject', closes: false },
  maxSubscriptions: { text: 'maximum subscriptions exceeded', closes: false },
} as const;

export type ProtocolErrorName = keyof typeof protocolErrors;

/** Go's %q for the subjects in permission errors; JSON quoting agrees with it for every valid subject. */
function quote(s: string): string {
  return JSON.stringify(s);
}

export function publishViolationText(subject: string): string {
  return `Permissions Violation for Publish to ${quote(subject)}`;
}

export function subscribeViolationText(subject: string, queue: string | undefined): string {
  return queue === undefined
    ? `Permissions Violation for Subscription to ${quote(subject)}`
    : `Permissions Violation for Subscription to ${quote(subject)} using queue ${quote(queue)}`;
}

export function replyViolationText(reply: string): string {
  return `Permissions Violation for Publish with Reply of ${quote(reply)}`;
}

export function errLine(text: string): Buffer {
  return Buffer.from(`-ERR '${text}'\r\n`);
}

/** Pre-encoded lines for the fixed catalogue: sent without formatting on the error path. */
export const encodedErrors: { readonly [K in ProtocolErrorName]: Buffer } = Object.fromEntries(
  Object.entries(protocolErrors).map(([k, v]) => [k, errLine(v.text)]),
) as { [K in ProtocolErrorName]: Buffer };
