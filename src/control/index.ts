// Public surface of the control plane: the six buckets, the admin API on `$UB.API.>` and the KV-backed
// principal source for `--store kv`.
export {
  auditKey, ControlBucketError, controlBuckets, ControlSchemaError, credentialKind, decodeValue, encodeValue, ensureControlBuckets, nameProblem, redactControlValue,
  rolePermissions, schemaVersion, serviceKey, validateAudit, validateConfig, validateNode, validateRole, validateService, validateUser,
  type AuditValue, type ConfigValue, type ControlBucket, type CredentialKind, type NodeValue, type RoleRules, type RoleValue, type ServiceValue, type UserValue,
} from './buckets.js';
export { apiPrefix, attachControlApi, ControlApi, isSharedInbox, type ControlApiOptions, type ControlApiPort } from './api.js';
export { AdminError, AdminErrorCode, type AdminContext, type AdminHandler, type AdminReply, type AdminResult } from './admin_request.js';
export { publicRole } from './role_verbs.js';
export { publicUser } from './user_verbs.js';
export { EnvelopeVerifier, envelopeSkewMs, signRequest, type SignedEnvelope, type VerifiedRequest } from './envelope.js';
export { KvPrincipalSource } from './principal_source.js';
export { createServiceSeam, startControlPlane, type ControlPlane, type ControlPlaneOptions, type ServiceSeam } from './serve.js';
export { singleNodeOptions, wantsSingleNodeKv } from './single_node.js';
export { attachClusterControl, normalizeRouteUrl, postureKeys, removedSlotsKey, type ClusterControl, type ClusterControlOptions } from './cluster.js';
