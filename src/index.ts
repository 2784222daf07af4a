// The library entry of membershipd (`import { startCluster, startNode } from 'membershipd'`): full nodes — NATS
// server, bus auth, Raft meta-group, control plane, KV API — started in this process on loopback, for test suites
// and embedding, without a binary. See src/library.
export {
  startCluster, startNode, LibraryError, LibraryErrorCode, userInboxPrefix,
  type StartClusterOptions, type StartNodeOptions, type LibraryAuth, type LibraryUser, type LocalClusterHandle,
  type ConnectOptions, type LibraryNode,
} from './library/index.js';
export type { PermissionSpec } from './auth/index.js';
export type { LogLevel } from './log.js';

// The bare Raft node layer (src/node) under explicit names: a meta-group node without the NATS server, auth,
// control plane or KV API. (Until the library entry it was exported as startNode/startCluster.)
export {
  ClusterNode, NodeError, NodeErrorCode, startCluster as startRaftCluster, startNode as startRaftNode,
  type ClusterOptions as RaftClusterOptions, type Health, type LocalCluster as RaftLocalCluster, type NodeOptions as RaftNodeOptions,
  type RaftKvBackend, type ReadOptions, type RouteListener,
} from './node/index.js';
