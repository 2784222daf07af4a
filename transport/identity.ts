// Ed25519 verification of route identities with node:crypto: about 150x faster than tweetnacl's pure-JS
// verify on this machine (shared/reference/toolchain.md §4), and every route handshake verifies one
// signature. Signing stays with the caller's identity object (tweetnacl, as the product's NKey code does).
import { createPublicKey, verify, type KeyObject } from 'node:crypto';

/** The node's internal identity as the transport needs it. */
export interface RouteIdentity {
  /** Raw Ed25519 public key, 32 bytes. */
  readonly publicKey: Uint8Array;
  /** Detached Ed25519 signature (64 bytes) of `data`, e.g. `nacl.sign.detached(data, secretKey)`. */
  sign(data: Uint8Array): Uint8Array;
}

// DER SubjectPublicKeyInfo prefix for a raw Ed25519 key (RFC 8410): SEQUENCE { AlgorithmIdentifier
// id-Ed25519 } BIT STRING of 32 bytes.
const spkiPrefix = Buffer.from('302a300506032b6570032100', 'hex');
const keyCacheMax = 256;
const keyCache = new Map<string, KeyObject>();

function keyObject(publicKey: Uint8Array): KeyObject {
  const hex = Buffer.from(publicKey).toString('hex');
  let key = keyCache.get(hex);
  if (key === undefined) {
    // A cluster has a handful of nodes; the cap only stops a hostile stream of keys from growing it.
    if (keyCache.size >= keyCacheMax) keyCache.clear();
    key = createPublicKey({ key: Buffer.concat([spkiPrefix, publicKey]), format: 'der', type: 'spki' });
    keyCache.set(hex, key);
  }
  return key;
}

/** True when `signature` is a valid Ed25519 signature of `data` by raw 32-byte `publicKey`. */
export function verifyEd25519(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    return verify(null, data, keyObject(publicKey), signature);
  } catch {
    return false; // a key that is not a valid curve point
  }
}
