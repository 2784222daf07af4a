// `--store kv`: users and roles from the replicated `ub_users` / `ub_roles` buckets, as a PrincipalSource for
// src/auth's authenticator. It follows the KV change feed: every applied write rebuilds the snapshot at once
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
  private readonly users = new Map<string, UserRecord>();
  private readonly roles = new Map<string, RoleRecord>();
  private unwatch: (() => void)[] = [];
  private replaying = false;

  constructor(private readonly log?: Logger) {
    super(new PrincipalSnapshot([], []), log);
  }

  /** Starts following the buckets of `backend` (replays what they hold, then every later write). */
  attach(backend: Pick<KvBackend, 'watch'>): void {
    this.detach();
    this.users.clear();
    this.roles.clear();
    this.replaying = true;
    try {
      this.unwatch.push(backend.watch(controlBuckets.roles, 0, (e) => this.onEntry(e)));
      this.unwatch.push(backend.watch(controlBuckets.users, 0, (e) => this.onEntry(e)));
    } finally {
      this.replaying = false;
    }
    this.rebuild();
  }

  detach(): void {
    for (const u of this.unwatch) u();
    this.unwatch = [];
  }

  private onEntry(e: KvEntry): void {
    if (e.bucket === controlBuckets.users) {
      if (e.op !== 'PUT') {
        this.users.delete(e.key);
      } else {
        const u = decodeValue(e.value, validateUser, (why) => this.log?.error({ user: e.key, revision: e.revision, why }, 'users bucket value fails its schema; the user cannot connect'));
        // A value that fails its schema revokes the user rather than keeping an older, possibly wider grant.
        if (u === undefined || u.name !== e.key) this.users.delete(e.key);
        else {
          this.users.set(e.key, {
            name: u.name,
            ...(u.password !== undefined ? { password: u.password } : {}),
            ...(u.nkey !== undefined ? { nkey: u.nkey } : {}),
            ...(u.token !== undefined ? { token: u.token } : {}),
            roles: u.roles,
            disabled: u.disabled,
          });
        }
      }
    } else if (e.bucket === controlBuckets.roles) {
      if (e.op !== 'PUT') {
        this.roles.delete(e.key);
      } else {
        const r = decodeValue(e.value, validateRole, (why) => this.log?.error({ role: e.key, revision: e.revision, why }, 'roles bucket value fails its schema; it grants nothing'));
        if (r === undefined || r.name !== e.key) this.roles.delete(e.key);
        else this.roles.set(e.key, { name: r.name, permissions: rolePermissions(r), admin: r.admin });
      }
    } else {
      return;
    }
    if (!this.replaying) this.rebuild();
  }

  private rebuild(): void {
    this.replace(new PrincipalSnapshot([...this.users.values()], [...this.roles.values()]));
  }
}
