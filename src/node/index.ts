// Public surface of src/node: one membershipd cluster node (Raft meta-group + routes + KV state machine).
export { ClusterNode, startNode, type ClusterStatus, type MemberStatus, type NodeOptions, type Health, type ReadOptions, type RouteListener, type RaftKvBackend,
  type NodeKv, type NodeStatus, type Membership, type MembershipControl, type SlotTable, type LeaderListener,
} from './node.js';
export { startCluster, type ClusterOptions, type LocalCluster } from './cluster.js';
export { bindListeners, closeListeners, type BoundListener } from './listeners.js';
export { NodeError, NodeErrorCode } from './errors.js';
export { clusterFilePath, readClusterFile, type ClusterFile, type SlotBinding, type RecoveryRecord } from './bootstrap.js';
export { forceNewCluster, probeAddress, RecoverError, RecoverErrorCode, probeTimeoutMsDefault, probeTimeoutMsMax, type RecoverOptions, type RecoverReport } from './recover.js';
export { clusterPosture, nodeHttpEndpoints, nodeOptionsFromServeConfig, postureDigest, wantsCluster, type ClusterPosture } from './serve.js';
export type { MemberReport } from './wire.js';
// The composition root: what `membershipd serve` and src/library start (compose.ts), and bus auth from the flags.
export { composeNode, ListenError, type ControlWiring, type NodeTuning, type NodeUrls, type ServingNode } from './compose.js';
export { loadBusAuth, type BusAuth } from './bus_auth.js';
