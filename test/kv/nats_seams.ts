// TEST-ONLY stand-ins for the two src/nats seams the KV API needs and src/nats does not offer yet (both requested
// in the KV report; src/nats is not ours to edit). Each is installed only when a probe shows the real server lacks
// it, so these tests run against the real seams as soon as src/nats ships them, and this file can then go.
//
//  1. deliverAs(routeSubject, msg): JetStream push delivery routes a message by the consumer's deliver subject
//     but writes the stream subject (`$KV.b.k`) on the MSG line (nats-server consumer.go deliverMsg).
//  2. Non-pedantic publishes whose subject holds wildcard tokens must still be routed, as nats-server does (its
//     sublist matches them against wildcard subscriptions, JetStream's `$JS.API.>` among them): nats.js creates
//     every KV watch/keys consumer with `$JS.API.CONSUMER.CREATE.KV_b.<name>.$KV.b.>`. src/nats drops them.
import { Client } from '../../src/nats/client.js';
import type { LocalPublish, NatsServerWithCluster, RouteMessage } from '../../src/nats/index.js';
import { PubArgs } from '../../src/nats/parser.js';
import type { ServerCore } from '../../src/nats/server.js';
import { isValidPublishSubject, isValidSubject } from '../../src/nats/subject.js';
import type { KvServerPort } from '../../src/kv/index.js';

function coreOf(server: NatsServerWithCluster): ServerCore {
  const core = (server as unknown as { core?: ServerCore }).core;
  if (core === undefined) throw new Error('test seam: NatsServer internals changed; update test/kv/nats_seams.ts');
  return core;
}

function pubArgs(msg: RouteMessage): PubArgs {
  const p = new PubArgs();
  const subj = Buffer.from(msg.subject);
  const reply = msg.reply === undefined ? undefined : Buffer.from(msg.reply);
  p.subject = msg.subject;
  p.argBuf = reply === undefined ? subj : Buffer.concat([subj, Buffer.from(' '), reply]);
  p.subjectStart = 0;
  p.subjectEnd = subj.length;
  p.replyStart = reply === undefined ? -1 : subj.length + 1;
  p.replyEnd = reply === undefined ? -1 : p.argBuf.length;
  const headers = msg.headers ?? new Uint8Array(0);
  p.headerBytes = headers.length > 0 ? headers.length : -1;
  p.data = Buffer.concat([headers, msg.payload]);
  p.dataStart = 0;
  p.size = p.data.length;
  return p;
}

/** Seam 1, as requested: deliver to the plain subscribers of `routeSubject`, MSG line showing msg.subject. */
function deliverAsFor(core: ServerCore): (routeSubject: string, msg: RouteMessage) => number {
  return (routeSubject, msg) => {
    const p = pubArgs(msg);
    let n = 0;
    for (const sub of core.sublist.match(routeSubject).plain) if (sub.client.deliver(sub, p, null)) n++;
    return n;
  };
}

let wildcardPatched = false;

/** Seam 2: route non-pedantic wildcard publishes like nats-server instead of dropping them. */
function patchWildcardPublish(): void {
  if (wildcardPatched) return;
  wildcardPatched = true;
  const original = Client.prototype.onPub;
  Client.prototype.onPub = function (this: Client, p: PubArgs): void {
    const s = p.subject;
    if (this.opts.pedantic || isValidPublishSubject(s) || !isValidSubject(s)) return original.call(this, p);
    if (this.perms !== null && !this.perms.canPublish(s)) return original.call(this, p);
    this.server.routeMessage(p, this);
  };
}

/** Does a non-pedantic publish to a wildcard subject reach the server's forwarder? */
async function wildcardPublishReachesForwarder(server: NatsServerWithCluster, publish: (subject: string) => Promise<void>): Promise<boolean> {
  let seen = false;
  server.cluster.setForwarder((m: LocalPublish) => {
    if (m.subject === '$JS.API.PROBE.>') seen = true;
    return false;
  });
  await publish('$JS.API.PROBE.>');
  server.cluster.setForwarder(undefined);
  return seen;
}

export interface SeamReport {
  readonly deliverAs: 'server' | 'test shim';
  readonly wildcardPublish: 'server' | 'test shim';
}

/** The port attachKvApi() gets: the server's own seams where present, the stand-ins otherwise. */
export async function kvServerPort(server: NatsServerWithCluster, publish: (subject: string) => Promise<void>): Promise<{ port: KvServerPort; report: SeamReport }> {
  const c = server.cluster as NatsServerWithCluster['cluster'] & { deliverAs?: KvServerPort['deliverAs'] };
  const real = typeof c.deliverAs === 'function';
  const deliverAs = real ? c.deliverAs!.bind(c) : deliverAsFor(coreOf(server));
  const wildcardOk = !wildcardPatched && (await wildcardPublishReachesForwarder(server, publish));
  if (!wildcardOk) patchWildcardPublish();
  const port: KvServerPort = {
    deliverFromRoute: (m) => c.deliverFromRoute(m),
    interest: () => c.interest(),
    setForwarder: (f) => c.setForwarder(f),
    onInterest: (l) => c.onInterest(l),
    deliverAs,
  };
  return { port, report: { deliverAs: real ? 'server' : 'test shim', wildcardPublish: wildcardOk ? 'server' : 'test shim' } };
}
