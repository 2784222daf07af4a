// The library entry of membershipd: start nodes in-process (test suites, embedding) without a binary.
export {
  ClusterNode, NodeError, NodeErrorCode, startCluster, startNode,
  type ClusterOptions, type Health, type LocalCluster, type NodeOptions, type RaftKvBackend, type ReadOptions, type RouteListener,
} from './node/index.js';
