// Wires --bus-auth, --store file --users-file and --internal-id-file to src/auth (part of composing a node: the CLI
// and src/library both call it, so it lives in src/node). Every file problem found at
// start is a ConfigError naming its flag (exit 2, one line); a broken users file on SIGHUP keeps the old users.
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ServeConfig } from '../config/index.js';
import { KvPrincipalSource } from '../control/index.js';
import {
  createBusAuthenticator, IdentityFileError, loadOrCreateIdentity, openFileSource, UsersFileError,
  type BusAuthenticator, type FileSource, type InternalIdentity, type PrincipalSource,
} from '../auth/index.js';

export interface BusAuth {
  /** Undefined with --bus-auth off: the NATS server lets everyone in. */
  readonly authenticator: BusAuthenticator | undefined;
  readonly identity: InternalIdentity | undefined;
  /** SIGHUP: re-read the users file; undefined when there is nothing to reload. */
  readonly reload: (() => Promise<void>) | undefined;
  /** --store kv: users and roles from the replicated buckets, attached to the backend once the node runs. */
  readonly kvSource: KvPrincipalSource | undefined;
  /** Admin internal identities the authenticator accepts; the node adds its own (and registered nodes') later. */
  readonly internalKeys: string[];
  /** Where users and roles come from (users file or --store kv); service presence reads roles' `services` grants. */
  readonly principals?: PrincipalSource;
}

function asConfigError(flag: string, err: unknown): ConfigError {
  const message = err instanceof Error ? err.message : String(err);
  return new ConfigError(`--${flag}: ${message}`, flag, { cause: err });
}

async function loadUsers(path: string, logger: Logger): Promise<FileSource> {
  try {
    return await openFileSource(path, logger);
  } catch (err) {
    if (err instanceof UsersFileError || err instanceof Error) throw asConfigError('users-file', err);
    throw err;
  }
}

function loadIdentity(path: string, logger: Logger): InternalIdentity {
  let identity: InternalIdentity;
  try {
    identity = loadOrCreateIdentity(path);
  } catch (err) {
    if (err instanceof IdentityFileError) throw asConfigError('internal-id-file', err);
    throw err;
  }
  logger.info({ path, public_key: identity.publicKey, created: identity.created },
    identity.created ? 'internal identity created' : 'internal identity loaded');
  return identity;
}

export async function loadBusAuth(config: ServeConfig, logger: Logger): Promise<BusAuth> {
  if (config.busAuth !== 'off' && config.store === 'file' && config.usersFile === undefined) {
    throw new ConfigError(`--users-file is required with --bus-auth ${config.busAuth} and --store file (it lists who may connect)`, 'users-file');
  }
  const identity = config.internalIdFile === undefined ? undefined : loadIdentity(config.internalIdFile, logger);
  const source = config.usersFile === undefined || config.store === 'kv' ? undefined : await loadUsers(config.usersFile, logger);
  const kvSource = config.store === 'kv' ? new KvPrincipalSource(logger) : undefined;
  const internalKeys = identity === undefined ? [] : [identity.publicKey];
  const reload = source === undefined ? undefined : async (): Promise<void> => { await source.reload(); };
  if (config.busAuth === 'off') {
    if (source !== undefined) logger.warn({ path: config.usersFile }, '--users-file is loaded but --bus-auth is off: nobody is checked');
    return { authenticator: undefined, identity, reload, kvSource, internalKeys };
  }
  const principals = kvSource ?? source;
  const authenticator = createBusAuthenticator({
    mode: config.busAuth,
    ...(principals !== undefined ? { source: principals } : {}),
    internalIdentityPublicKeys: () => internalKeys,
    logger,
  });
  logger.info({ mode: config.busAuth, store: config.store, users_file: config.usersFile ?? null }, `bus auth ${config.busAuth}`);
  return { authenticator, identity, reload, kvSource, internalKeys, ...(principals !== undefined ? { principals } : {}) };
}
