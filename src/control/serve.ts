// Glue between a serving node and the control plane: the service seam shared by the cluster bus and the
// in-process admin API, bucket creation, and the KV principal source.
//
// The NATS server has one forwarder slot (NatsClusterPort.setForwarder). The cluster bus (src/bus, attached by
// src/node) takes it for route forwarding; the admin API needs to see `$UB.API.>` publishes first and keep them
// (answered on the node the requester is connected to). createServiceSeam() splits the slot: services in front,
// the routes behind; a message a service answers never goes to the routes.
import type { Logger } from 'pino';
import type { LocalPublish, NatsClusterPort } from '../nats/index.js';
import type { KvBackend } from '../kv/backend.js';
import type { ScryptParams } from '../auth/index.js';
import { attachControlApi, type ControlApi } from './api.js';
import { registerSnapshotApi } from './snapshot.js';
import { ensureControlBuckets } from './buckets.js';
import type { KvPrincipalSource } from './principal_source.js';
import { attachClusterControl, type ClusterControl } from './cluster.js';
import type { ClusterNode, ClusterPosture } from '../node/index.js';

type Forwarder = (msg: LocalPublish) => boolean;

export interface ServiceSeam {
  /** Give this to the routes layer (startNode's `nats.cluster`): its setForwarder fills the back slot. */
  readonly routes: NatsClusterPort;
  /** Give this to in-process services: its setForwarder fills the front slot. */
  readonly services: NatsClusterPort;
}

export function createServiceSeam(port: NatsClusterPort): ServiceSeam {
  let front: Forwarder | undefined;
  let back: Forwarder | undefined;
  const install = (): void => {
    if (front === undefined && back === undefined) port.setForwarder(undefined);
    else port.setForwarder((m) => (front !== undefined && front(m)) || (back !== undefined && back(m)));
  };
  const view = (set: (f: Forwarder | undefined) => void): NatsClusterPort => ({
    interest: () => port.interest(),
    onInterest: (l) => port.onInterest(l),
    deliverFromRoute: (m) => port.deliverFromRoute(m),
    setForwarder: (f) => {
      set(f);
      install();
    },
  });
  return {
    routes: view((f) => { back = f; }),
    services: view((f) => { front = f; }),
  };
}

export interface ControlPlaneOptions {
  readonly port: Pick<NatsClusterPort, 'setForwarder' | 'deliverFromRoute'>;
  readonly backend: KvBackend;
  readonly logger: Logger;
  /** Admin internal identities ('N…'), read at every request. */
  readonly internalKeys: () => readonly string[];
  /** The authenticator's source (--store kv); attached to the backend here. */
  readonly source?: KvPrincipalSource;
  readonly scrypt?: ScryptParams;
  /** Bucket creation retry period while there is no leader (default 500 ms). */
  readonly retryMs?: number;
  /** On a Raft node: the `nodes`/`config` buckets and `$UB.API.CLUSTER.*` (cluster.ts). */
  readonly cluster?: {
    readonly node: ClusterNode;
    readonly posture: ClusterPosture;
    readonly version: string;
    readonly urls: () => { readonly client?: string; readonly http?: string };
    /** The authenticator's internal keys (mutable); the `nodes` bucket's identities are kept in it. */
    readonly trustedKeys?: string[];
    readonly periodMs?: number;
  };
}

export interface ControlPlane {
  readonly api: ControlApi;
  /** Resolves once the six buckets exist (created here or by another node). */
  readonly ready: Promise<void>;
  readonly cluster: ClusterControl | undefined;
  stop(): void;
}

/**
 * Attaches the principal source and the admin API, and creates the six buckets. Creation is idempotent and
 * goes through propose() (a follower forwards to the leader), so every node may run it: the first to commit
 * creates, the others' creates are no-ops. Retried until it commits (no leader yet) or stop().
 */
export function startControlPlane(o: ControlPlaneOptions): ControlPlane {
  o.source?.attach(o.backend);
  const api = attachControlApi({ cluster: o.port }, { backend: o.backend, logger: o.logger, internalKeys: o.internalKeys, ...(o.source ? { source: o.source } : {}), ...(o.scrypt ? { scrypt: o.scrypt } : {}) });
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const ready = new Promise<void>((resolve) => {
    let warned = false;
    const attempt = (): void => {
      if (stopped) return;
      ensureControlBuckets(o.backend).then((created) => {
        if (created.length > 0) o.logger.info({ buckets: created }, 'control-plane buckets created');
        resolve();
      }, (err: unknown) => {
        if (stopped) return;
        if (!warned) o.logger.warn({ err }, 'control-plane buckets not created yet (waiting for a leader); retrying');
        warned = true;
        timer = setTimeout(attempt, o.retryMs ?? 500);
      });
    };
    attempt();
  });
  const cluster = o.cluster === undefined ? undefined
    : attachClusterControl({ ...o.cluster, api, backend: o.backend, logger: o.logger, ready });
  // Online backup (`membershipd snapshot save`): needs the Raft node for its ReadIndex barrier and configuration.
  const snapshots = o.cluster === undefined ? undefined : registerSnapshotApi(api, o.cluster.node, o.logger, o.cluster.version);
  return {
    api,
    ready,
    cluster,
    stop() {
      stopped = true;
      cluster?.stop();
      snapshots?.stop();
      if (timer !== undefined) clearTimeout(timer);
      api.detach();
      o.source?.detach();
    },
  };
}
