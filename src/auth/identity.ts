// The node's internal identity (`--internal-id-file`): one NKey server seed ('SN…') in a file only its owner
// may read. Whoever can read it is the admin principal of the bus (DESIGN.md "Auth"), so a file readable by
// group or others is refused rather than used.
import { closeSync, fstatSync, fsyncSync, mkdirSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { MembershipdError } from '../errors.js';
import { createKeyPair, keyPairFromSeed, NKeyError } from './nkeys.js';

export const IdentityErrorCode = {
  notFound: 'EIDNOTFOUND',
  permissions: 'EIDPERMS',
  malformed: 'EIDMALFORMED',
  io: 'EIDIO',
} as const;
export type IdentityErrorCode = (typeof IdentityErrorCode)[keyof typeof IdentityErrorCode];

export class IdentityFileError extends MembershipdError {
  readonly path: string;
  constructor(code: IdentityErrorCode, path: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.path = path;
  }
}

export interface InternalIdentity {
  /** 'N…' */
  readonly publicKey: string;
  readonly publicKeyBytes: Uint8Array;
  sign(data: Uint8Array): Uint8Array;
  /** True when this call created the file. */
  readonly created: boolean;
}

/** The shape the route transport takes (transport/ imports nothing from src/, so it has its own type). */
export function toRouteIdentity(identity: InternalIdentity): { publicKey: Uint8Array; sign(data: Uint8Array): Uint8Array } {
  return { publicKey: identity.publicKeyBytes, sign: identity.sign };
}

function checkMode(path: string, mode: number): void {
  if ((mode & 0o077) !== 0) {
    throw new IdentityFileError(
      IdentityErrorCode.permissions,
      path,
      `internal identity file ${path} is readable or writable by group/others (mode ${(mode & 0o777).toString(8).padStart(3, '0')}); ` +
        `anyone who can read it administers the bus. Run: chmod 600 ${path}`,
    );
  }
}

function parse(path: string, text: string, created: boolean): InternalIdentity {
  let kp;
  try {
    kp = keyPairFromSeed(text.trim(), ['server']);
  } catch (err) {
    const why = err instanceof NKeyError ? err.message : String(err);
    throw new IdentityFileError(IdentityErrorCode.malformed, path, `internal identity file ${path} does not hold an NKey server seed ('SN…'): ${why}`, { cause: err });
  }
  return { publicKey: kp.publicKey, publicKeyBytes: kp.publicKeyBytes, sign: kp.sign, created };
}

/** Reads an existing identity; never creates one. */
export function readIdentity(path: string): InternalIdentity {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new IdentityFileError(IdentityErrorCode.notFound, path, `internal identity file ${path} does not exist (create it with \`membershipd id init\`)`, { cause: err });
    }
    throw new IdentityFileError(IdentityErrorCode.io, path, `cannot read internal identity file ${path}: ${code ?? String(err)}`, { cause: err });
  }
  try {
    // Mode checked on the opened descriptor, so a swap between check and read cannot slip a looser file in.
    checkMode(path, fstatSync(fd).mode);
    return parse(path, readFileSync(fd, 'utf8'), false);
  } finally {
    closeSync(fd);
  }
}

/** Reads the identity, or creates a fresh one with mode 0600 (exclusive create: two starters cannot both win). */
export function loadOrCreateIdentity(path: string): InternalIdentity {
  try {
    statSync(path);
    return readIdentity(path);
  } catch (err) {
    if (!(err instanceof IdentityFileError && err.code === IdentityErrorCode.notFound) && !isEnoent(err)) throw err;
  }
  const kp = createKeyPair('server');
  let fd: number;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    fd = openSync(path, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readIdentity(path); // lost a creation race
    throw new IdentityFileError(IdentityErrorCode.io, path, `cannot create internal identity file ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
  }
  try {
    writeSync(fd, `${kp.seed}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { publicKey: kp.publicKey, publicKeyBytes: kp.publicKeyBytes, sign: kp.sign, created: true };
}

function isEnoent(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}
