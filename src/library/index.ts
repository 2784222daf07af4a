// The library entry (`import { startCluster, startNode } from 'membershipd'`): full membershipd nodes started
// in this process for test suites and embedding — no binary, no download. Each node is the same thing
// `membershipd serve` runs (src/node/compose.ts composeNode: NATS server, bus auth, Raft meta-group over mutual-TLS
// routes, control plane, KV API), configured programmatically the way `membershipd dev` does it.
export {
  startCluster, startNode, LibraryError, LibraryErrorCode,
  type StartClusterOptions, type StartNodeOptions, type LibraryAuth, type LibraryUser, type LocalClusterHandle,
  type ConnectOptions, type LibraryNode, type PlannedNode,
} from './cluster.js';
// A user's private reply prefix, for `connect({ inboxPrefix: userInboxPrefix('alice'), … })` (SECURITY.md).
export { userInboxPrefix } from '../auth/index.js';
