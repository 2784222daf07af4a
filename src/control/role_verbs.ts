// The ROLE verbs of the admin API (`$UB.API.ROLE.*`) on the `roles` bucket: add (create-if-absent), update
// (compare-and-set), remove (refused while a user holds the role), list and show, with the built-in admin role
// shown but never stored. Registered by ControlApi through its VerbContext.
import { KvErrorCode } from '../../store/index.js';
import { builtinAdminRole } from '../auth/index.js';
import { AdminError, bool, sameSet, str, strList, type VerbContext } from './admin_request.js';
import {
  controlBuckets, encodeValue, nameProblem, rolePermissionProblem, schemaVersion, serviceGrantProblem, validateRole, type RoleRules, type RoleValue,
} from './buckets.js';

/** The role as shown to admins. */
export function publicRole(r: RoleValue): Record<string, unknown> {
  return {
    name: r.name, publish: r.publish, subscribe: r.subscribe, allow_responses: r.allow_responses, admin: r.admin,
    ...(r.services !== undefined ? { services: r.services } : {}), ...(r.services_read === true ? { services_read: true } : {}),
    created: new Date(r.created).toISOString(), updated: new Date(r.updated).toISOString(), by: r.by,
  };
}

const builtinAdminView = {
  name: builtinAdminRole, publish: { allow: ['>'], deny: [] }, subscribe: { allow: ['>'], deny: [] }, allow_responses: true, admin: true, builtin: true,
};

function roleName(body: Record<string, unknown>, forWrite: boolean): string {
  const name = str(body, 'name', true);
  const p = nameProblem('role', name);
  if (p !== undefined) throw new AdminError('bad_request', p);
  if (forWrite && name === builtinAdminRole) throw new AdminError('bad_request', `role "${builtinAdminRole}" is built in (it grants everything) and cannot be changed`);
  return name;
}

function rules(body: Record<string, unknown>, allowField: string, denyField: string, base?: RoleRules): RoleRules {
  const allow = strList(body, allowField);
  const deny = strList(body, denyField);
  return { allow: allow ?? base?.allow ?? [], deny: deny ?? base?.deny ?? [] };
}

function roleSpec(body: Record<string, unknown>, base?: RoleValue): Pick<RoleValue, 'publish' | 'subscribe' | 'allow_responses' | 'admin' | 'services' | 'services_read'> {
  const spec = {
    publish: rules(body, 'pub_allow', 'pub_deny', base?.publish),
    subscribe: rules(body, 'sub_allow', 'sub_deny', base?.subscribe),
    allow_responses: bool(body, 'allow_responses') ?? base?.allow_responses ?? false,
    admin: bool(body, 'admin') ?? base?.admin ?? false,
  };
  const p = rolePermissionProblem(spec);
  if (p !== undefined) throw new AdminError('bad_request', p);
  // Service presence grants (src/services); absent when unused, so roles without them keep their exact shape.
  const services = strList(body, 'services') ?? base?.services ?? [];
  const sp = serviceGrantProblem(services);
  if (sp !== undefined) throw new AdminError('bad_request', sp);
  const servicesRead = bool(body, 'services_read') ?? base?.services_read ?? false;
  return { ...spec, ...(services.length > 0 ? { services: [...new Set(services)] } : {}), ...(servicesRead ? { services_read: true } : {}) };
}

function sameRole(a: Pick<RoleValue, 'publish' | 'subscribe' | 'allow_responses' | 'admin' | 'services' | 'services_read'>, b: typeof a): boolean {
  return sameSet(a.publish.allow, b.publish.allow) && sameSet(a.publish.deny, b.publish.deny) && sameSet(a.subscribe.allow, b.subscribe.allow)
    && sameSet(a.subscribe.deny, b.subscribe.deny) && a.allow_responses === b.allow_responses && a.admin === b.admin
    && sameSet(a.services ?? [], b.services ?? []) && (a.services_read ?? false) === (b.services_read ?? false);
}

/** Registers ROLE.ADD, UPDATE, REMOVE, LIST and SHOW. */
export function registerRoleVerbs(api: VerbContext): void {
  api.register('ROLE', 'ADD', async (body, ctx) => {
    const name = roleName(body, true);
    return api.audited(ctx, 'role.add', name, async () => {
      const spec = roleSpec(body);
      await api.backend.readBarrier();
      const compare = (existing: RoleValue): { result: 'unchanged'; role: Record<string, unknown> } => {
        if (sameRole(existing, spec)) return { result: 'unchanged', role: publicRole(existing) };
        throw new AdminError('conflict', `role ${name} already exists with different permissions; add never overwrites: use "membershipd role update ${name} …" to change it`);
      };
      const existing = api.role(name);
      if (existing !== undefined) return compare(existing.value);
      const ts = api.now();
      const value: RoleValue = { v: schemaVersion, name, ...spec, created: ts, updated: ts, by: ctx.who };
      validateRole(value);
      const r = await api.proposeAudited(ctx, 'role.add', name, 'created', { ...body }, { op: 'create', bucket: controlBuckets.roles, key: name, value: encodeValue(value), ts }, []);
      if (r.ok) return api.recorded({ result: 'created' as const, role: publicRole(value) });
      if (r.code === KvErrorCode.keyExists) {
        const now = api.role(name);
        if (now !== undefined) return compare(now.value);
      }
      throw new AdminError('unavailable', `role ${name} was not written: ${r.message}`);
    }, { ...body });
  });

  api.register('ROLE', 'UPDATE', async (body, ctx) => {
    const name = roleName(body, true);
    return api.audited(ctx, 'role.update', name, async () => {
      await api.backend.readBarrier();
      for (let attempt = 0; attempt < 5; attempt++) {
        const cur = api.role(name);
        if (cur === undefined) throw new AdminError('not_found', `role ${name} does not exist; create it with "membershipd role add ${name} …"`);
        const spec = roleSpec(body, cur.value);
        if (sameRole(cur.value, spec)) return { result: 'unchanged', role: publicRole(cur.value) };
        const ts = api.now();
        const value: RoleValue = { ...cur.value, ...spec, updated: ts, by: ctx.who };
        validateRole(value);
        const r = await api.proposeAudited(ctx, 'role.update', name, 'updated', { ...body },
          { op: 'update', bucket: controlBuckets.roles, key: name, value: encodeValue(value), revision: cur.revision, ts }, []);
        if (r.ok) return api.recorded({ result: 'updated' as const, role: publicRole(value) });
        if (r.code !== KvErrorCode.wrongRevision) throw new AdminError('unavailable', `role ${name} was not updated: ${r.message}`);
      }
      throw new AdminError('conflict', `role ${name} kept changing while it was being updated; retry`);
    }, { ...body });
  });

  api.register('ROLE', 'REMOVE', async (body, ctx) => {
    const name = roleName(body, true);
    return api.audited(ctx, 'role.remove', name, async () => {
      await api.backend.readBarrier();
      const cur = api.role(name);
      if (cur === undefined) throw new AdminError('not_found', `role ${name} does not exist`);
      // Removing a role in use would silently strip permissions from its users; make it explicit.
      const users = api.keysOf(controlBuckets.users).filter((n) => api.user(n)?.value.roles.includes(name));
      if (users.length > 0) {
        throw new AdminError('in_use', `role ${name} is still given to ${users.length} user(s) (${users.slice(0, 10).join(', ')}); take it from them with "membershipd user update NAME --role …" first`);
      }
      const r = await api.proposeAudited(ctx, 'role.remove', name, 'removed', undefined, { op: 'delete', bucket: controlBuckets.roles, key: name, revision: cur.revision, ts: api.now() }, []);
      if (r.ok) return api.recorded({ result: 'removed' as const, role: publicRole(cur.value) });
      if (r.code === KvErrorCode.wrongRevision) throw new AdminError('conflict', `role ${name} changed while it was being removed; retry`);
      throw new AdminError('unavailable', `role ${name} was not removed: ${r.message}`);
    });
  });

  api.register('ROLE', 'LIST', async (body) => {
    if (body.stale !== true) await api.backend.readBarrier();
    const roles = api.keysOf(controlBuckets.roles).map((n) => api.role(n)).filter((r) => r !== undefined).map((r) => publicRole(r.value));
    return { roles: [builtinAdminView, ...roles] };
  });

  api.register('ROLE', 'SHOW', async (body) => {
    const name = roleName(body, false);
    if (name === builtinAdminRole) return { role: builtinAdminView };
    if (body.stale !== true) await api.backend.readBarrier();
    const r = api.role(name);
    if (r === undefined) throw new AdminError('not_found', `role ${name} does not exist`);
    return { role: publicRole(r.value) };
  });
}
