// The server's NKey identity and INFO nonce. The encoding itself (prefix, CRC-16, base32) is src/auth/nkeys.ts's:
// one implementation of the NATS text encoding in the tree. Imported from the module, not auth's index, so the
// NATS server does not load the authenticator.
import { generateKeyPairSync } from 'node:crypto';
import { createNonce, encodePublicKey } from '../auth/nkeys.js';

/**
 * A fresh server identity: an 'N…' public key (56 characters) of a new Ed25519 key pair. node:crypto generates
 * it (no seed is kept: INFO only shows the public key), avoiding tweetnacl's pure-JS key derivation.
 */
export function newServerId(): string {
  const { publicKey } = generateKeyPairSync('ed25519');
  const jwk = publicKey.export({ format: 'jwk' });
  return encodePublicKey('server', Buffer.from(jwk.x!, 'base64url'));
}

/** The INFO nonce for an NKey challenge: 11 random bytes, base64url without padding (15 characters). */
export const newNonce: () => string = createNonce;
