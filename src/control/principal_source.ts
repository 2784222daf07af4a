// `--store kv`: users and roles from the replicated `ub_users` / `ub_roles` buckets, as a PrincipalSource for
// src/auth's authenticator. It follows the KV change feed: every applied write patches the snapshot at once
// (synchronously in the apply), and SnapshotSource notifies the authenticator, whose revalidation disconnects a
// removed or disabled user and re-checks the subscriptions of one whose roles changed — on every node, since
// every node applies the same entries.
//
// The source can exist before the backend does (the NATS server needs its authenticator before the cluster node
// that owns the backend has started): until attach(), it knows nobody, so enforce mode admits only internal
// identities.
import type { Logger } from 'pino';
import type { KvEntry } from '../../store/index.js';
import { PrincipalSnapshot, SnapshotSource, type RoleRecord, type UserRecord } from '../auth/index.js';
import type { KvBackend } from '../kv/backend.js';
import { controlBuckets, decodeValue, rolePermissions, validateRole, validateUser } from './buckets.js';

export class KvPrincipalSource extends SnapshotSource {
  private unwatch: (() => void)[] = [];
  private barrier: (() => Promise<boolean>) | undefined;
  /** While attach() replays the buckets: the records seen, installed with one replace() at the end. */
  private replay: { users: Map<string, UserRecord>; roles: Map<string, RoleRecord> } | undefined;

  constructor(private readonly log?: Logger) {
    super(new PrincipalSnapshot([], []), log);
  }

  /** Starts following the buckets of `backend` (replays what they hold, then every later write). */
  attach(backend: Pick<KvBackend, 'watch' | 'onReset'> & Partial<Pick<KvBackend, 'readBarrier'>>): void {
    this.detach();
    this.barrier = backend.readBarrier !== undefined ? boundedBarrier(() => backend.readBarrier!(), catchUpBoundMs) : undefined;
    // After a snapshot install the change feed has a gap: replay both buckets; replace() then notifies exactly
    // the users and roles that differ, so their connections are re-checked as for any other change.
    const offReset = backend.onReset?.(() => this.attach(backend));
    if (offReset) this.unwatch.push(offReset);
    const replay = (this.replay = { users: new Map<string, UserRecord>(), roles: new Map<string, RoleRecord>() });
    try {
      this.unwatch.push(backend.watch(controlBuckets.roles, 0, (e) => this.onEntry(e)));
      this.unwatch.push(backend.watch(controlBuckets.users, 0, (e) => this.onEntry(e)));
    } finally {
      this.replay = undefined;
    }
    this.replace(new PrincipalSnapshot([...replay.users.values()], [...replay.roles.values()]));
  }

  catchUp(): Promise<boolean> {
    return this.barrier?.() ?? Promise.resolve(false);
  }

  detach(): void {
    for (const u of this.unwatch) u();
    this.unwatch = [];
  }

  // Each applied write changes one record: patch() costs O(1) per write on every node, where rebuilding the
  // whole snapshot made adding the N-th user cost O(N) inside the Raft apply.
  private onEntry(e: KvEntry): void {
    if (e.bucket === controlBuckets.users) {
      const u = this.userOf(e);
      if (this.replay) {
        if (u === undefined) this.replay.users.delete(e.key);
        else this.replay.users.set(e.key, u);
      } else {
        this.patch(new Map([[e.key, u]]), new Map());
      }
    } else if (e.bucket === controlBuckets.roles) {
      const r = this.roleOf(e);
      if (this.replay) {
        if (r === undefined) this.replay.roles.delete(e.key);
        else this.replay.roles.set(e.key, r);
      } else {
        this.patch(new Map(), new Map([[e.key, r]]));
      }
    }
  }

  private userOf(e: KvEntry): UserRecord | undefined {
    if (e.op !== 'PUT') return undefined;
    const u = decodeValue(e.value, validateUser, (why) => this.log?.error({ user: e.key, revision: e.revision, why }, 'users bucket value fails its schema; the user cannot connect'));
    // A value that fails its schema revokes the user rather than keeping an older, possibly wider grant.
    if (u === undefined || u.name !== e.key) return undefined;
    return {
      name: u.name,
      ...(u.password !== undefined ? { password: u.password } : {}),
      ...(u.nkey !== undefined ? { nkey: u.nkey } : {}),
      ...(u.token !== undefined ? { token: u.token } : {}),
      roles: u.roles,
      disabled: u.disabled,
    };
  }

  private roleOf(e: KvEntry): RoleRecord | undefined {
    if (e.op !== 'PUT') return undefined;
    const r = decodeValue(e.value, validateRole, (why) => this.log?.error({ role: e.key, revision: e.revision, why }, 'roles bucket value fails its schema; it grants nothing'));
    if (r === undefined || r.name !== e.key) return undefined;
    return {
      name: r.name, permissions: rolePermissions(r), admin: r.admin,
      ...(r.services !== undefined ? { services: r.services } : {}), ...(r.services_read === true ? { services_read: true } : {}),
    };
  }
}

/**
 * How long a refused client may wait for its node to catch up: a follower learns a commit within a heartbeat, so
 * this only runs out without a leader, and then the refusal stands (as it would have without asking).
 */
const catchUpBoundMs = 1000;

/**
 * A ReadIndex barrier bounded in time. Refused clients arriving together share ReadIndex requests already: the node
 * gathers concurrent reads behind one request per round trip (replicated_kv.ts read()).
 */
function boundedBarrier(barrier: () => Promise<void>, boundMs: number): () => Promise<boolean> {
  return () => {
    let timer: NodeJS.Timeout | undefined;
    const bounded = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), boundMs);
      timer.unref();
    });
    return Promise.race([barrier().then(() => true, () => false), bounded]).finally(() => clearTimeout(timer));
  };
}
