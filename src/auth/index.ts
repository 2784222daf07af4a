// Public surface of bus authentication: the contract with the NATS server (types.ts), the authenticator,
// principal sources (file now, replicated later), credentials, NKeys and the internal identity.
export type {
  AuthOutcome,
  AuthRequest,
  BusAuthenticator,
  BusAuthMode,
  ConnectCredentials,
  Permissions,
  Principal,
  PrincipalKind,
} from './types.js';
export { allowAll } from './types.js';
export { createBusAuthenticator, type BusAuthenticatorOptions } from './authenticator.js';
export {
  builtinAdminRole,
  FileSource,
  MemorySource,
  openFileSource,
  openFileSourceSync,
  parseUsersFile,
  PrincipalSnapshot,
  SnapshotSource,
  UsersFileError,
  type PrincipalChange,
  type PrincipalSource,
  type ReloadResult,
  type RoleRecord,
  type UserRecord,
} from './principal_source.js';
export {
  compilePermissions,
  CompiledRole,
  denyAll,
  PermissionSpecError,
  reservedSubjectPatterns,
  unionPermissions,
  type PermissionSpec,
  type SubjectRules,
} from './permissions.js';
export {
  createToken,
  CredentialFormatError,
  FailureRateLimiter,
  hashPassword,
  hashToken,
  isPasswordHash,
  isTokenHash,
  rateLimitDefaults,
  scryptDefaults,
  tokenHashOf,
  verifyPassword,
  type RateLimitOptions,
  type ScryptParams,
} from './credentials.js';
export {
  createKeyPair,
  createNonce,
  decodePublicKey,
  decodeSeed,
  encodePublicKey,
  encodeSeed,
  encodeSignature,
  isValidPublicKey,
  keyPairFromSeed,
  NKeyError,
  NKeyPrefix,
  verifyEd25519,
  verifyNonceSignature,
  type NKeyPair,
  type NKeyRole,
} from './nkeys.js';
export { IdentityErrorCode, IdentityFileError, loadOrCreateIdentity, readIdentity, toRouteIdentity, type InternalIdentity } from './identity.js';
