// What the $JS.API request handlers (stream_requests.ts, consumer_requests.ts) read of the KvApi that runs them:
// its backend, stream view and consumers, and its one way to propose (which turns a failed proposal into a
// JetStream error). The handlers answer through the `ok` / `fail` callbacks the dispatcher built for the request.
import type { KvCommand, KvResult } from '../../store/index.js';
import type { KvBackend } from './backend.js';
import type { ConsumerRegistry } from './consumers.js';
import type { JsApiError } from './errors.js';
import type { StreamLimits, StreamView } from './streams.js';

/** Answers a request with a successful response body (the dispatcher adds `type`). */
export type Ok = (o: Record<string, unknown>) => void;
/** Answers a request with a JetStream API error. */
export type Fail = (e: JsApiError) => void;

/** Page sizes of STREAM.NAMES / CONSUMER.NAMES and STREAM.LIST / CONSUMER.LIST (nats-server's JSApiNamesLimit, JSApiListLimit). */
export const pageStreamNames = 1024;
export const pageStreamList = 256;

/** STREAM.INFO `cluster` as nats-server's ClusterInfo / PeerInfo JSON. */
export interface StreamClusterInfo {
  readonly name: string;
  readonly leader?: string;
  readonly replicas?: readonly { readonly name: string; readonly current: boolean; readonly offline?: boolean; readonly active: number; readonly lag?: number }[];
}

export interface ApiContext {
  readonly backend: KvBackend;
  readonly view: StreamView;
  readonly streamLimits: StreamLimits;
  readonly consumers: ConsumerRegistry;
  /** Reported as the stream / consumer cluster leader. */
  readonly serverName: string;
  /** Whether the NATS server has the deliverAs seam push consumers need. */
  readonly pushDelivery: boolean;
  readonly clusterInfo: (() => StreamClusterInfo | undefined) | undefined;
  /** backend.propose(), a thrown failure returned as clusterNotAvailable. */
  propose(cmd: KvCommand): Promise<KvResult | JsApiError>;
}
