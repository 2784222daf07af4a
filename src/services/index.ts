// Public surface of service presence: live service instances in the `services` bucket (DESIGN.md "Service presence").
export { publicService, ServiceApiError, serviceApiPrefix, serviceLimits, startServicePresence, type PresenceNode, type ServicePresence, type ServicePresenceOptions } from './presence.js';
