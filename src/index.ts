// The library entry of membershipd: start nodes in-process (test suites, embedding) without a binary.
export {
  ClusterNode, NodeError, NodeErrorCode, startNode,
  type Health, type NodeOptions, type RaftKvBackend, type ReadOptions, type RouteListener,
} from './node/index.js';
