// Public surface of the JetStream-compatible KV API.
export { createLocalKvBackend, redactedBackend, watchStateMachine, type KvBackend, type KvReader, type KvRedactor } from './backend.js';
export { attachKvApi, createKvApi, KvApi, type KvApiOptions, type KvApiPort, type KvApiStats, type KvServerPort } from './jetstream_api.js';
export { kvCommandOf, resultError } from './publish_command.js';
export { defaultConsumerLimits, type ConsumerLimits } from './consumer_spec.js';
export { jsErrors, KvApiError, type JsApiError } from './errors.js';
export { parseApiSubject, parseHeaders, encodeHeaders, parseKvSubject, type ApiRequest, type ParsedHeaders } from './wire.js';
