// The options and listener types of a cluster node (node.ts ClusterNode), apart so the node's file holds its
// behaviour; node.ts and src/node/index.ts re-export them.
import type { Server as NetServer } from 'node:net';
import type { KvCommand, KvListener, KvResult, KvStateMachine } from '../../store/index.js';
import type { LinkClose, PeerInfo, RouteFrame, RouteLimits, RouteTlsOptions } from '../../transport/index.js';
import type { Logger } from '../log.js';
import type { NatsServerWithCluster } from '../nats/index.js';

export interface NodeOptions {
  /** Server name (unique in the cluster; routes and the `nodes` bucket know a node by it). */
  readonly serverName: string;
  readonly clusterName: string;
  /** Raft log, snapshots and cluster.json live here (created when absent). */
  readonly dataDir: string;
  /** The node's NKey seed file (--internal-id-file); default <dataDir>/identity.nk. Created on first start. */
  readonly identityFile?: string;
  /** Listen address of the cluster port (--bind); default 0.0.0.0. */
  readonly bind?: string;
  readonly clusterPort: number;
  /** A TCP server already listening on `clusterPort` that the route listener takes over (bind, don't probe; see transport/). */
  readonly clusterListener?: NetServer;
  /** --routes: all nodes (self included) or only the others; empty: a cluster of one. */
  readonly routes?: string | readonly string[];
  readonly tls: RouteTlsOptions;
  readonly clusterUser: string;
  readonly clusterPassword: string;
  /** Every node must present the same digest (bus-auth mode, store kind, …). */
  readonly postureDigest?: string;
  /** --kv-replicas: number of voters (default: every node). */
  readonly kvReplicas?: number;
  readonly tickMs?: number;
  readonly electionTicks?: number;
  readonly heartbeatTicks?: number;
  /** How long a write or linearizable read may wait for a leader and its apply (default 5000). */
  readonly requestTimeoutMs?: number;
  /** A voter unreachable this long is replaced by a caught-up learner (default 30000). */
  readonly voterGraceMs?: number;
  /** Applied entries between local snapshots (log compaction); default 10000. */
  readonly snapshotEntries?: number;
  /** --max-kv-bytes: a write that would take the KV data past it is refused (store/kv/quota.ts); default unlimited. */
  readonly maxKvBytes?: number;
  readonly logger?: Logger;
  readonly routeLimits?: Partial<RouteLimits>;
  /** A NATS server to join to the cluster-wide bus over this node's routes (attached before routes start). */
  readonly nats?: NatsServerWithCluster;
  /**
   * Join a running cluster (--initial-cluster-state existing, as etcd's): derive nothing from --routes (they only
   * say whom to dial); learn this node's slot from the slot table its peers replicate, where `cluster add NAME URL`
   * put it under this node's server name; no bootstrap entry. Ignored once <dataDir>/cluster.json exists.
   */
  readonly join?: boolean;
}

/** Listeners for route traffic that is not Raft (the bus glue registers here). */
export interface RouteListener {
  readonly frame?: (peerName: string, frame: RouteFrame) => void;
  readonly up?: (peer: PeerInfo) => void;
  readonly down?: (peer: PeerInfo, close: LinkClose) => void;
}

export interface ReadOptions {
  /** Serve from local state without a ReadIndex round (may lag the leader). */
  readonly stale?: boolean;
}

/** Structurally src/kv's KvBackend (kept here so src/node does not depend on the KV API module). */
export interface RaftKvBackend {
  propose(command: KvCommand): Promise<KvResult>;
  readBarrier(): Promise<void>;
  readonly reader: KvStateMachine;
  watch(bucket: string, afterRevision: number, listener: KvListener): () => void;
  onReset(listener: () => void): () => void;
}

