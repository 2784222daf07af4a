// Public surface of the native NATS client-protocol server.
export type { NatsLimits, NatsServer, NatsServerOptions, NatsServerStats } from './api.js';
export {
  createNatsServer, defaultLimits, handshakeFirstWaitMs, reportedServerVersion,
  type InterestChange, type LocalPublish, type PublishFeedback, type NatsConnectionInfo, type NatsClusterPort, type NatsServerWithCluster, type RouteMessage,
} from './server.js';
export { isValidPublishSubject, isValidSubject, subjectMatches } from './subject.js';
export { newNonce, newServerId } from './nkey.js';
export { protocolErrors } from './protocol_errors.js';
