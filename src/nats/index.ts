// Public surface of the native NATS client-protocol server.
export type { NatsLimits, NatsServer, NatsServerOptions, NatsServerStats } from './api.js';
export { createNatsServer, handshakeFirstWaitMs, type NatsConnectionInfo, type NatsServerWithCluster } from './server.js';
export { defaultLimits, reportedServerVersion } from './server_core.js';
export type { InterestChange, LocalPublish, PublishFeedback, NatsClusterPort, RouteMessage } from './cluster_port.js';
export { isValidPublishSubject, isValidSubject, subjectMatches } from './subject.js';
export { newNonce, newServerId } from './nkey.js';
export { protocolErrors } from './protocol_errors.js';
