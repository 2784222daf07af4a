// The signed request envelope of the admin API. The NATS server's service seam (the cluster forwarder) hands
// the API a published message without the publisher's connection, so the API cannot ask "who is this
// connection?". Instead every request proves its principal itself: the body is signed with the caller's NKey
// (the node's internal identity 'N…', or an admin user's 'U…' key from a creds file), over the subject, a
// timestamp and the body. That holds in every bus-auth mode — in `off` anyone may publish to `$UB.API.>`, but
// only a holder of an admin key gets past this check — and it names the principal for the audit record.
//
//   { "auth": { "key": "N…", "ts": <ms>, "nonce": "<16 random bytes, base64url>",
//               "sig": "<base64url Ed25519 of `${subject}\n${ts}\n${nonce}\n${body}`>" },
//     "body": "<the request JSON, as a string>" }
//
// Replay: a request is accepted once cluster-wide. Its nonce (with the signer's key) is what is remembered, never
// the signature's text: base64url has spare low bits in its last character, so one signature has several
// spellings; signatures are decoded and only the canonical spelling is accepted. This node refuses a nonce it has
// seen (a cheap first line), and the control API puts the nonce into the replicated command (store/kv NonceClaim)
// so the state machine refuses it on every node — a request captured on one node and replayed on another
// included. A request is accepted only within ±`skewMs` of the node's clock, and the replicated record keeps
// nonces for nonceRetentionMs ≥ 2 × skewMs after the request's own timestamp.
// Ed25519 is deterministic, so without the nonce two requests with the same subject, body and millisecond (two
// scripts running the same `user add`) would carry the same signature and the second would look like a replay.
// An envelope without a nonce (signed as `${subject}\n${ts}\n${body}`, CLIs before the nonce) is refused with
// an error saying so: it could be replayed on another node unnoticed, and those CLIs also ask for their replies on
// the shared `_INBOX.` prefix, which the admin API refuses anyway.
import { randomBytes } from 'node:crypto';
import { decodePublicKey, encodeSignature, verifyEd25519, type NKeyPair } from '../auth/index.js';
import { nonceRetentionMs, type NonceClaim } from '../../store/index.js';

export const envelopeSkewMs = 120_000;
// A forgotten nonce must be one no node's clock check still accepts.
if (nonceRetentionMs < 2 * envelopeSkewMs) throw new Error(`nonceRetentionMs ${nonceRetentionMs} must be at least twice envelopeSkewMs ${envelopeSkewMs}`);

export interface SignedEnvelope {
  readonly auth: { readonly key: string; readonly ts: number; readonly nonce?: string; readonly sig: string };
  readonly body: string;
}

const enc = new TextEncoder();

/** The 64 signature bytes of the canonical base64url spelling only (non-zero spare low bits are refused). */
function decodeSignature(text: string): Uint8Array | null {
  if (!/^[A-Za-z0-9_-]{86}$/.test(text)) return null;
  const b = Buffer.from(text, 'base64url');
  if (b.length !== 64 || b.toString('base64url') !== text) return null;
  return new Uint8Array(b);
}

const nonceRe = /^[A-Za-z0-9_-]{8,64}$/;

export const replayMessage = 'this signed request was already used (replay refused); send a new request';

function signedBytes(subject: string, ts: number, nonce: string | undefined, body: string): Uint8Array {
  return enc.encode(nonce === undefined ? `${subject}\n${ts}\n${body}` : `${subject}\n${ts}\n${nonce}\n${body}`);
}

/** What the CLI sends: `body` (any JSON value) signed by `signer` for `subject`. */
export function signRequest(subject: string, body: unknown, signer: Pick<NKeyPair, 'publicKey' | 'sign'>, now = Date.now()): Uint8Array {
  const text = JSON.stringify(body ?? {});
  const nonce = randomBytes(16).toString('base64url');
  const sig = encodeSignature(signer.sign(signedBytes(subject, now, nonce, text)));
  return enc.encode(JSON.stringify({ auth: { key: signer.publicKey, ts: now, nonce, sig }, body: text } satisfies SignedEnvelope));
}

export type VerifiedRequest =
  | { readonly ok: true; readonly key: string; readonly role: 'server' | 'user'; readonly body: unknown; readonly claim: NonceClaim }
  | { readonly ok: false; readonly code: 'bad_request' | 'forbidden'; readonly message: string };

/** Checks the envelope (shape, key, clock window, signature, replay); never throws. */
export class EnvelopeVerifier {
  private readonly seen = new Map<string, number>();

  constructor(private readonly now: () => number = Date.now, private readonly seenMax = 100_000) {}

  /**
   * `connectionKey`: the NKey the requester's connection proved at CONNECT (it signed this node's nonce over
   * the same TLS connection). A request signed for that same key needs no second Ed25519 check: whoever
   * writes on the connection holds the key. That check was the largest single CPU cost of an admin write on
   * the node (~0.14 ms of a 2-core VM's time, 20% of the leader's CPU in bench:cluster). Any other key,
   * or a connection without one (bus auth off, a password user), has its signature verified.
   */
  verify(subject: string, payload: Uint8Array, connectionKey?: string): VerifiedRequest {
    let env: unknown;
    try {
      env = JSON.parse(Buffer.from(payload).toString('utf8'));
    } catch {
      return { ok: false, code: 'bad_request', message: 'the request is not JSON; admin requests are signed envelopes { auth, body } (use the membershipd CLI)' };
    }
    const e = env as Partial<SignedEnvelope> | null;
    const a = e?.auth;
    if (typeof e !== 'object' || e === null || typeof e.body !== 'string' || typeof a !== 'object' || a === null
      || typeof a.key !== 'string' || typeof a.sig !== 'string' || typeof a.ts !== 'number' || !Number.isSafeInteger(a.ts)) {
      return { ok: false, code: 'forbidden', message: 'the request carries no signed admin credential: admin requests must be signed with the node\'s internal identity (--internal-id-file) or an admin NKey (--creds)' };
    }
    if (a.nonce === undefined) {
      return { ok: false, code: 'bad_request', message: 'the request carries no auth.nonce (a membershipd CLI from before replay protection): such a request could be replayed on another node, so it is refused; upgrade the membershipd CLI' };
    }
    if (typeof a.nonce !== 'string' || !nonceRe.test(a.nonce)) {
      return { ok: false, code: 'bad_request', message: 'the request\'s auth.nonce must be 8..64 base64url characters' };
    }
    let decoded;
    try {
      decoded = decodePublicKey(a.key, ['server', 'user']);
    } catch {
      return { ok: false, code: 'forbidden', message: 'the request is signed with a key that is not an NKey server or user public key' };
    }
    const now = this.now();
    if (Math.abs(now - a.ts) > envelopeSkewMs) {
      return { ok: false, code: 'forbidden', message: `the request's timestamp is ${Math.round((a.ts - now) / 1000)} s away from this node's clock (more than ${envelopeSkewMs / 1000} s): check the clocks` };
    }
    const sig = decodeSignature(a.sig);
    if (sig === null) {
      return { ok: false, code: 'forbidden', message: 'the request\'s auth.sig is not a canonical base64url Ed25519 signature (86 characters, unused low bits zero)' };
    }
    if ((a.key !== connectionKey && !verifyEd25519(decoded.key, signedBytes(subject, a.ts, a.nonce, e.body), sig))) {
      return { ok: false, code: 'forbidden', message: `the request's signature does not verify for key ${a.key} on ${subject}` };
    }
    this.prune(now);
    const id = `${a.key}:${a.nonce}`;
    if (this.seen.has(id)) return { ok: false, code: 'forbidden', message: replayMessage };
    this.seen.set(id, a.ts + envelopeSkewMs);
    let body: unknown;
    try {
      body = JSON.parse(e.body);
    } catch {
      return { ok: false, code: 'bad_request', message: 'the request body is not JSON' };
    }
    return { ok: true, key: a.key, role: decoded.role === 'server' ? 'server' : 'user', body, claim: { id, at: a.ts } };
  }

  private prune(now: number): void {
    if (this.seen.size < this.seenMax) {
      // Maps iterate in insertion order, which is nearly expiry order: drop the expired head.
      for (const [k, exp] of this.seen) {
        if (exp >= now) break;
        this.seen.delete(k);
      }
      return;
    }
    for (const [k, exp] of this.seen) if (exp < now) this.seen.delete(k);
    // Still full of live entries: refuse nothing, forget the oldest (bounded memory beats perfect replay memory).
    while (this.seen.size >= this.seenMax) this.seen.delete(this.seen.keys().next().value as string);
  }
}
