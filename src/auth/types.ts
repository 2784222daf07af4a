// The contract between the NATS server (src/nats) and bus authentication (src/auth).
// The server calls it; the authenticator decides. The mode (off|warn|enforce) lives entirely inside the
// authenticator: in warn mode it accepts and returns permissions that log would-be violations and allow,
// so the server never branches on the mode.

export type BusAuthMode = 'off' | 'warn' | 'enforce';

/** The CONNECT fields that carry credentials (reference/nats-protocol.md §1.5). */
export interface ConnectCredentials {
  readonly user?: string;
  readonly pass?: string;
  readonly auth_token?: string;
  readonly nkey?: string;
  readonly sig?: string;
  readonly jwt?: string;
}

export interface AuthRequest {
  readonly credentials: ConnectCredentials;
  /** The nonce this connection's INFO carried, if any. */
  readonly nonce: string | undefined;
  readonly remoteAddress: string;
  readonly tls: boolean;
  /** CONNECT `name`, for logs. */
  readonly clientName: string | undefined;
  /** Aborted when the connection closes: a check still waiting is dropped (no CPU for a client that left). */
  readonly signal?: AbortSignal;
}

/** A compiled permission set. Every check is allocation-free on the hot path. */
export interface Permissions {
  canPublish(subject: string): boolean;
  /** `queue` is undefined for a plain subscription. */
  canSubscribe(subject: string, queue: string | undefined): boolean;
  /**
   * allow_responses: when set, the client may publish to a reply subject it received in a message,
   * at most `maxMessages` times within `expiresMs` (0 = no expiry), even where canPublish says no.
   */
  readonly responses: { readonly maxMessages: number; readonly expiresMs: number } | null;
}

export type PrincipalKind = 'anonymous' | 'user' | 'token' | 'nkey' | 'internal';

export interface Principal {
  /** User name, NKey public key, or 'anonymous'. Never a secret. */
  readonly name: string;
  readonly kind: PrincipalKind;
  /** Admin principals may use `$UB.API.>` and read the control-plane buckets. */
  readonly admin: boolean;
  readonly permissions: Permissions;
  /**
   * The NKey public key this connection proved it holds at CONNECT (it signed the server's nonce, over this
   * TLS connection): set for 'nkey' and 'internal' principals only, whatever their name.
   */
  readonly nkey?: string;
}

export type AuthOutcome =
  | { readonly ok: true; readonly principal: Principal }
  /** The client is sent `-ERR 'Authorization Violation'` and closed; `reason` is only logged. */
  | { readonly ok: false; readonly reason: string };

export interface BusAuthenticator {
  readonly mode: BusAuthMode;
  /** Any op before CONNECT is an Authorization Violation, INFO says auth_required, and the auth timeout runs. */
  readonly authRequired: boolean;
  /** INFO carries a fresh per-connection nonce (NKey challenge). */
  readonly nonceRequired: boolean;
  /** May be async (scrypt). The server processes no further op of the connection until it settles. */
  authenticate(request: AuthRequest): Promise<AuthOutcome>;
  /**
   * After a change notification: the principal's current form, or null when it is no longer valid
   * (removed, disabled, credentials changed) and its connections must be closed.
   */
  revalidate(principal: Principal): Principal | null;
  /** Registers a listener called after users or roles change; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
}

/** Everything allowed: the permissions of mode `off` and of the admin principal. */
export const allowAll: Permissions = {
  canPublish: () => true,
  canSubscribe: () => true,
  responses: null,
};
