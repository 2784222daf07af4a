// NKeys: Ed25519 keys in the NATS text encoding (reference/nats-protocol.md §2.3).
//   public key = base32( prefix ‖ 32-byte key ‖ crc16le )            → 56 chars
//   seed       = base32( 0x90|role>>5, (role&31)<<3 ‖ 32-byte seed ‖ crc16le ) → 58 chars
// Base32 is RFC 4648 without padding; CRC is CRC-16/XMODEM over everything before it, little-endian.
// Signing and verification use node:crypto's Ed25519, about 150x faster than tweetnacl (reference/
// toolchain.md §4): verification runs on every CONNECT with an nkey and every admin request, signing on
// every admin request a CLI or client sends (tweetnacl took ~5 ms per signature, ~30 ms on a loaded
// machine). The test suite checks both against tweetnacl as the independent reference.
import { createPrivateKey, createPublicKey, randomBytes, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { MembershipdError } from '../errors.js';

export const NKeyPrefix = {
  seed: 18 << 3,
  private: 15 << 3,
  server: 13 << 3,
  cluster: 2 << 3,
  operator: 14 << 3,
  account: 0,
  user: 20 << 3,
  curve: 23 << 3,
} as const;
export type NKeyPrefixName = keyof typeof NKeyPrefix;
export type NKeyRole = Exclude<NKeyPrefixName, 'seed' | 'private'>;

const publicRoles: readonly NKeyRole[] = ['server', 'cluster', 'operator', 'account', 'user', 'curve'];

export class NKeyError extends MembershipdError {
  constructor(message: string) {
    super('ENKEY', message);
  }
}

const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const decodeTable = new Int8Array(128).fill(-1);
for (let i = 0; i < alphabet.length; i++) decodeTable[alphabet.charCodeAt(i)] = i;

export function base32Encode(bytes: Uint8Array): string {
  let out = '';
  let buffer = 0;
  let bits = 0;
  for (const b of bytes) {
    buffer = (buffer << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += alphabet[(buffer >>> bits) & 31];
    }
    buffer &= (1 << bits) - 1;
  }
  if (bits > 0) out += alphabet[(buffer << (5 - bits)) & 31];
  return out;
}

/**
 * Strict decode: only the upper-case alphabet, no padding, and the unused trailing bits must be zero, so every
 * byte string has exactly one text form (users are looked up by their nkey string). Null when malformed.
 */
export function base32Decode(text: string): Uint8Array | null {
  const outLen = Math.floor((text.length * 5) / 8);
  const rest = (text.length * 5) % 8;
  if (rest >= 5) return null; // a length no encoder produces
  const out = new Uint8Array(outLen);
  let buffer = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? decodeTable[c]! : -1;
    if (v < 0) return null;
    buffer = ((buffer << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (buffer >>> bits) & 0xff;
    }
  }
  if ((buffer & ((1 << bits) - 1)) !== 0) return null;
  return out;
}

const crcTable = new Uint16Array(256);
for (let i = 0; i < 256; i++) {
  let crc = i << 8;
  for (let j = 0; j < 8; j++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  crcTable[i] = crc;
}

/** CRC-16/XMODEM: poly 0x1021, init 0, no reflection ("123456789" → 0x31c3). */
export function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ crcTable[((crc >>> 8) ^ b) & 0xff]!;
  return crc;
}

function withCrc(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 2);
  out.set(body);
  const crc = crc16(body);
  out[body.length] = crc & 0xff;
  out[body.length + 1] = crc >>> 8;
  return out;
}

/** Decodes base32 and checks the trailing CRC; returns the bytes before the CRC. */
function decodeChecked(text: string, what: string): Uint8Array {
  const raw = base32Decode(text);
  if (raw === null) throw new NKeyError(`${what} is not valid base32 (RFC 4648 upper-case, no padding)`);
  if (raw.length < 3) throw new NKeyError(`${what} is too short`);
  const body = raw.subarray(0, raw.length - 2);
  const crc = raw[raw.length - 2]! | (raw[raw.length - 1]! << 8);
  if (crc16(body) !== crc) throw new NKeyError(`${what} has a bad checksum (mistyped or truncated?)`);
  return body;
}

function roleOfPrefix(byte: number): NKeyRole | undefined {
  return publicRoles.find((r) => NKeyPrefix[r] === byte);
}

export function encodePublicKey(role: NKeyRole, key: Uint8Array): string {
  if (key.length !== 32) throw new NKeyError(`an Ed25519 public key has 32 bytes, got ${key.length}`);
  const body = new Uint8Array(33);
  body[0] = NKeyPrefix[role];
  body.set(key, 1);
  return base32Encode(withCrc(body));
}

export interface DecodedPublicKey {
  readonly role: NKeyRole;
  readonly key: Uint8Array;
}

/** Validates prefix, base32 and CRC16. `expected` restricts the role (e.g. only user keys 'U…'). */
export function decodePublicKey(text: string, expected?: readonly NKeyRole[]): DecodedPublicKey {
  if (text.length !== 56) throw new NKeyError(`an nkey public key has 56 characters, got ${text.length}`);
  const body = decodeChecked(text, 'nkey public key');
  const role = roleOfPrefix(body[0]!);
  if (role === undefined) throw new NKeyError(`nkey public key has an unknown prefix '${text[0]}'`);
  if (expected !== undefined && !expected.includes(role)) {
    throw new NKeyError(`expected a ${expected.join(' or ')} nkey, got a ${role} key ('${text[0]}…')`);
  }
  return { role, key: body.slice(1) };
}

export function isValidPublicKey(text: string, expected?: readonly NKeyRole[]): boolean {
  try {
    decodePublicKey(text, expected);
    return true;
  } catch {
    return false;
  }
}

export function encodeSeed(role: NKeyRole, seed: Uint8Array): string {
  if (seed.length !== 32) throw new NKeyError(`an Ed25519 seed has 32 bytes, got ${seed.length}`);
  const prefix = NKeyPrefix[role];
  const body = new Uint8Array(34);
  body[0] = NKeyPrefix.seed | (prefix >> 5);
  body[1] = (prefix & 31) << 3;
  body.set(seed, 2);
  return base32Encode(withCrc(body));
}

export interface DecodedSeed {
  readonly role: NKeyRole;
  readonly seed: Uint8Array;
}

export function decodeSeed(text: string, expected?: readonly NKeyRole[]): DecodedSeed {
  if (text.length !== 58) throw new NKeyError(`an nkey seed has 58 characters, got ${text.length}`);
  const body = decodeChecked(text, 'nkey seed');
  if ((body[0]! & 0xf8) !== NKeyPrefix.seed) throw new NKeyError(`an nkey seed starts with 'S', got '${text[0]}'`);
  const prefix = ((body[0]! & 7) << 5) | ((body[1]! & 0xf8) >> 3);
  const role = roleOfPrefix(prefix);
  if (role === undefined || (body[1]! & 7) !== 0) throw new NKeyError('nkey seed has an unknown key type');
  if (expected !== undefined && !expected.includes(role)) {
    throw new NKeyError(`expected a ${expected.join(' or ')} seed, got a ${role} seed ('${text.slice(0, 2)}…')`);
  }
  return { role, seed: body.slice(2) };
}

export interface NKeyPair {
  readonly role: NKeyRole;
  /** 'U…', 'N…', … */
  readonly publicKey: string;
  readonly publicKeyBytes: Uint8Array;
  readonly seed: string;
  sign(data: Uint8Array): Uint8Array;
}

export function keyPairFromSeed(seedText: string, expected?: readonly NKeyRole[]): NKeyPair {
  const { role, seed } = decodeSeed(seedText, expected);
  return keyPairFromRawSeed(role, seed);
}

// DER PrivateKeyInfo header for an Ed25519 seed (RFC 8410): the 32 bytes that follow are the seed itself.
const pkcs8Prefix = Buffer.from('302e020100300506032b657004220420', 'hex');

function keyPairFromRawSeed(role: NKeyRole, seed: Uint8Array): NKeyPair {
  if (seed.length !== 32) throw new NKeyError(`an Ed25519 seed is 32 bytes, got ${seed.length}`);
  const privateKey = createPrivateKey({ key: Buffer.concat([pkcs8Prefix, seed]), format: 'der', type: 'pkcs8' });
  const publicKeyBytes = new Uint8Array(createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).subarray(spkiPrefix.length));
  return {
    role,
    publicKey: encodePublicKey(role, publicKeyBytes),
    publicKeyBytes,
    seed: encodeSeed(role, seed),
    sign: (data) => new Uint8Array(cryptoSign(null, data, privateKey)),
  };
}

export function createKeyPair(role: NKeyRole): NKeyPair {
  return keyPairFromRawSeed(role, new Uint8Array(randomBytes(32)));
}

// DER SubjectPublicKeyInfo header for an Ed25519 key (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
const spkiPrefix = Buffer.from('302a300506032b6570032100', 'hex');
const keyCacheMax = 4096;
const keyCache = new Map<string, KeyObject>();

function keyObjectFor(cacheKey: string, raw: Uint8Array): KeyObject {
  let key = keyCache.get(cacheKey);
  if (key === undefined) {
    key = createPublicKey({ key: Buffer.concat([spkiPrefix, raw]), format: 'der', type: 'spki' });
    // Bounded: a flood of distinct keys (each needing a valid CRC) only costs re-creation, never memory.
    if (keyCache.size >= keyCacheMax) keyCache.clear();
    keyCache.set(cacheKey, key);
  }
  return key;
}

/** Ed25519 verification with node:crypto. `publicKey` is the 32 raw bytes. */
export function verifyEd25519(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  const key = keyObjectFor(Buffer.from(publicKey).toString('hex'), publicKey);
  return cryptoVerify(null, data, key, signature);
}

const base64Chars = /^[A-Za-z0-9+/_-]+={0,2}$/;

/**
 * The CONNECT `sig`: nats.go sends raw base64url, nats.js standard base64 with padding (§2.3); accept both,
 * nothing else. Null unless it decodes to exactly 64 bytes.
 */
export function decodeSignature(text: string): Uint8Array | null {
  if (text.length < 86 || text.length > 88 || !base64Chars.test(text)) return null;
  const bytes = Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  return bytes.length === 64 ? new Uint8Array(bytes) : null;
}

export function encodeSignature(signature: Uint8Array): string {
  return Buffer.from(signature).toString('base64url');
}

/**
 * The NATS nonce challenge: `sig` must be the Ed25519 signature of the nonce string's bytes, made by the
 * key `nkey` (a validated public key). False for any malformed input; never throws.
 */
export function verifyNonceSignature(nkey: string, nonce: string, sig: string, roles?: readonly NKeyRole[]): boolean {
  let decoded: DecodedPublicKey;
  try {
    decoded = decodePublicKey(nkey, roles);
  } catch {
    return false;
  }
  const signature = decodeSignature(sig);
  if (signature === null) return false;
  const key = keyObjectFor(nkey, decoded.key);
  return cryptoVerify(null, Buffer.from(nonce, 'utf8'), key, signature);
}

/** A fresh nonce as nats-server makes it: 11 random bytes, base64url without padding. */
export function createNonce(): string {
  return randomBytes(11).toString('base64url');
}
