// Public surface of service presence: live service instances in the `services` bucket (DESIGN.md "Service presence").
export { startServicePresence, type PresenceNode, type ServicePresence, type ServicePresenceOptions } from './presence.js';
export { serviceApiPrefix } from './service_api.js';
export { publicService, ServiceApiError, serviceLimits } from './service_fields.js';
