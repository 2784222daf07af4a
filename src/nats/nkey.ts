// NKey public-key encoding (reference/nats-protocol.md §2.3): prefix byte ‖ 32-byte Ed25519 public key ‖
// CRC-16/XMODEM little-endian, base32 (RFC 4648 alphabet, no padding). A 35-byte input is 56 characters.
import { generateKeyPairSync, randomBytes } from 'node:crypto';

export const nkeyPrefix = { server: 13 << 3, cluster: 2 << 3, operator: 14 << 3, account: 0, user: 20 << 3 } as const;

const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** CRC-16/XMODEM: poly 0x1021, init 0, no reflection, no final xor ("123456789" → 0x31c3). */
export function crc16Xmodem(bytes: Uint8Array): number {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) {
    crc ^= bytes[i]! << 8;
    for (let b = 0; b < 8; b++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

export function base32Encode(bytes: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (let i = 0; i < bytes.length; i++) {
    value = (value << 8) | bytes[i]!;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

/** Encodes a 32-byte Ed25519 public key as an NKey public key with the given role prefix byte. */
export function encodePublicNkey(prefix: number, publicKey: Uint8Array): string {
  if (publicKey.length !== 32) throw new RangeError(`an NKey public key is 32 bytes, got ${publicKey.length}`);
  const raw = new Uint8Array(35);
  raw[0] = prefix;
  raw.set(publicKey, 1);
  const crc = crc16Xmodem(raw.subarray(0, 33));
  raw[33] = crc & 0xff;
  raw[34] = crc >>> 8;
  return base32Encode(raw);
}

/** A fresh server identity: an 'N…' public key (56 characters) of a new Ed25519 key pair. */
export function newServerId(): string {
  const { publicKey } = generateKeyPairSync('ed25519');
  const jwk = publicKey.export({ format: 'jwk' });
  return encodePublicNkey(nkeyPrefix.server, Buffer.from(jwk.x!, 'base64url'));
}

/** The INFO nonce for an NKey challenge: 11 random bytes, base64url without padding (15 characters). */
export function newNonce(): string {
  return randomBytes(11).toString('base64url');
}
