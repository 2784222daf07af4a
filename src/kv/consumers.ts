// Push consumers as KV clients use them (reference/nats-protocol.md §4.6): ephemeral, ack_policy none, one
// delivery per message to `deliver_subject`, consumer sequences contiguous from 1 (a gap makes an ordered consumer
// reset), v1 ack subjects carrying stream seq / consumer seq / timestamp / pending, idle heartbeats, flow control,
// and reaping after `inactive_threshold` without interest. Consumers live on the node that created them (like
// nats-server R1 ephemerals); their data comes from the node's applied KV state through the backend.
//
// Interest: the NATS server's seam does not say whether a subject has subscribers, so a delivery is the probe
// (`deliver` returns the number of local deliveries, and a delivery that reached nobody changed nothing, so it is
// simply retried later) and SUB/UNSUB interest events wake a consumer. A consumer that has never delivered keeps
// its initial batch (nats.js subscribes only after the create response); one that lost its subscriber drops its
// queue and refills from its cursor when a subscriber comes back, so an abandoned watcher costs no memory per write.
import type { KvEntry } from '../../store/index.js';
import type { RouteMessage } from '../nats/index.js';
import { subjectMatches } from '../nats/index.js';
import type { KvBackend, KvReader } from './backend.js';
import type { ConsumerLimits, ConsumerSpec } from './consumer_spec.js';
import { jsErrors, type JsApiError } from './errors.js';
import { ackSubject, encodeHeaders, flowControlPrefix, hasWildcard, kvPrefix, parseKvSubject, rfc3339 } from './wire.js';

/** Where the consumer's messages and status messages go: the NATS server's local delivery. */
export interface DeliveryPort {
  /** Delivers `msg` to local subscribers of `deliverSubject`, the MSG line showing `msg.subject`. */
  deliverAs(deliverSubject: string, msg: RouteMessage): number;
  /** Slow path: does any local subscription match `subject`? */
  hasInterest(subject: string): boolean;
}

type ConsumerState = 'waiting' | 'attached' | 'detached';

const delHeaders = encodeHeaders([['KV-Operation', 'DEL']]);
const purgeHeaders = encodeHeaders([['KV-Operation', 'PURGE'], ['Nats-Rollup', 'sub']]);
const flowControlHeaders = encodeHeaders([], { code: 100, description: 'FlowControl Request' });
const empty = new Uint8Array(0);

/** Header block a stored entry is delivered with (KV keeps the operation as headers, reference §4.4). */
export function entryHeaderFields(e: KvEntry): [string, string][] {
  if (e.op === 'DEL') return [['KV-Operation', 'DEL']];
  if (e.op === 'PURGE') return [['KV-Operation', 'PURGE'], ['Nats-Rollup', 'sub']];
  return [];
}

export class Consumer {
  readonly created = Date.now();
  state: ConsumerState = 'waiting';
  /** Since when the consumer has had no known subscriber (creation for `waiting`). */
  since = this.created;
  dseq = 0;
  sseq = 0;
  lastSentAt = this.created;
  /** Queued entries from `head`; null = refill from the cursor (sseq) before the next delivery. */
  queue: KvEntry[] | null;
  head = 0;
  deleted = false;
  private scheduled = false;
  private fcPending: string | undefined;
  private fcBytesAtRequest = 0;
  private bytesSinceReply = 0;
  private fcCounter = 0;
  private readonly literalKey: string | undefined;
  private readonly matchAll: boolean;

  constructor(readonly spec: ConsumerSpec, private readonly reg: ConsumerRegistry, initial: KvEntry[]) {
    this.queue = initial;
    const f = spec.filter;
    this.matchAll = f === '>' || f === '$KV.>' || f === `${kvPrefix}${spec.bucket}.>`;
    this.literalKey = hasWildcard(f) ? undefined : parseKvSubject(f)?.key;
    if (spec.policy === 'by_start_sequence') this.sseq = spec.optStartSeq - 1;
  }

  matches(e: KvEntry): boolean {
    if (this.matchAll) return true;
    if (this.literalKey !== undefined) return e.key === this.literalKey;
    return subjectMatches(this.spec.filter, `${kvPrefix}${e.bucket}.${e.key}`);
  }

  /** A new entry applied to the consumer's bucket. */
  offer(e: KvEntry): void {
    if (this.deleted || this.state === 'detached' || !this.matches(e)) return;
    if (this.queue === null) return this.schedule();
    if (this.queue.length - this.head >= this.reg.limits.queueEntriesMax) {
      this.queue = null;
    } else {
      this.queue.push(e);
    }
    this.schedule();
  }

  pending(): number {
    if (this.queue !== null) return this.queue.length - this.head;
    return this.reg.reader.changesSince(this.sseq, this.spec.bucket).filter((e) => this.matches(e)).length;
  }

  schedule(): void {
    if (this.scheduled || this.deleted) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private refill(): KvEntry[] {
    const q = this.reg.reader.changesSince(this.sseq, this.spec.bucket).filter((e) => this.matches(e));
    this.queue = q;
    this.head = 0;
    return q;
  }

  pump(): void {
    if (this.deleted || this.state === 'detached') return;
    const lim = this.reg.limits;
    let q = this.queue ?? this.refill();
    let msgs = 0;
    let bytes = 0;
    while (this.head < q.length && msgs < lim.turnMessagesMax && bytes < lim.turnBytesMax) {
      if (this.spec.flowControl && this.bytesSinceReply >= lim.flowWindowBytes) break;
      const e = q[this.head]!;
      // Queued before a STREAM.PURGE or a TTL expiry dropped it: nats-server delivers only stored messages.
      // By revision, not identity: a redacting reader (src/kv/backend.ts) hands out copies of the entries.
      if (!this.reg.reader.history(e.bucket, e.key).some((h) => h.revision === e.revision)) {
        this.head++;
        this.sseq = e.revision;
        msgs++; // a skip is work too: the turn stays bounded
        continue;
      }
      const msg = this.render(e, q.length - this.head - 1);
      if (this.reg.port.deliverAs(this.spec.deliverSubject, msg) === 0) return this.lostInterest();
      this.attached();
      const size = (msg.headers?.length ?? 0) + msg.payload.length;
      this.head++;
      this.dseq++;
      this.sseq = e.revision;
      msgs++;
      bytes += size;
      if (this.spec.flowControl) this.afterFlowBytes(size);
    }
    if (this.head > 4096 && this.head * 2 > q.length) {
      q = q.slice(this.head);
      this.queue = q;
      this.head = 0;
    }
    if (this.head < q.length && !(this.spec.flowControl && this.bytesSinceReply >= lim.flowWindowBytes)) this.schedule();
  }

  private render(e: KvEntry, pending: number): RouteMessage {
    const reply = ackSubject(this.spec.stream, this.spec.name, e.revision, this.dseq + 1, e.ts, pending);
    const subject = `${kvPrefix}${e.bucket}.${e.key}`;
    if (this.spec.headersOnly) {
      const headers = encodeHeaders([...entryHeaderFields(e), ['Nats-Msg-Size', String(e.value.length)]]);
      return { subject, reply, headers, payload: empty };
    }
    const headers = e.op === 'DEL' ? delHeaders : e.op === 'PURGE' ? purgeHeaders : undefined;
    return headers === undefined ? { subject, reply, payload: e.value } : { subject, reply, headers, payload: e.value };
  }

  private attached(): void {
    this.state = 'attached';
    this.lastSentAt = Date.now();
  }

  /** A delivery reached nobody: keep the initial batch while waiting, else drop the queue (refilled on return). */
  private lostInterest(): void {
    if (this.state === 'attached') {
      this.state = 'detached';
      this.since = Date.now();
      this.queue = null;
      this.head = 0;
    }
  }

  private afterFlowBytes(size: number): void {
    this.bytesSinceReply += size;
    const lim = this.reg.limits;
    if (this.fcPending !== undefined || this.bytesSinceReply < lim.flowWindowBytes / 2) return;
    this.fcPending = `${flowControlPrefix}${this.spec.stream}.${this.spec.name}.${(++this.fcCounter).toString(36)}`;
    this.fcBytesAtRequest = this.bytesSinceReply;
    const d = this.spec.deliverSubject;
    this.reg.port.deliverAs(d, { subject: d, reply: this.fcPending, headers: flowControlHeaders, payload: empty });
  }

  /** The client answered a flow-control request (a publish to `$JS.FC.…`). */
  flowControlReply(subject: string): void {
    if (subject !== this.fcPending) return;
    this.fcPending = undefined;
    this.bytesSinceReply = Math.max(0, this.bytesSinceReply - this.fcBytesAtRequest);
    this.schedule();
  }

  resync(): void {
    if (this.deleted || this.state === 'detached') return;
    this.queue = null;
    this.head = 0;
    this.schedule();
  }

  /** A subscription matching the deliver subject appeared. */
  interestAdded(): void {
    if (this.state === 'detached') {
      this.state = 'attached';
      this.queue = null;
    }
    this.schedule();
  }

  /** A subscription equal to the deliver subject went away; another may remain, so probe. */
  interestRemoved(): void {
    if (this.state !== 'attached') return;
    if (this.queue !== null && this.head < this.queue.length) return this.schedule();
    if (this.spec.heartbeatMs > 0) this.heartbeat();
    else if (!this.reg.port.hasInterest(this.spec.deliverSubject)) this.lostInterest();
  }

  heartbeat(): void {
    const fields: [string, string][] = [['Nats-Last-Consumer', String(this.dseq)], ['Nats-Last-Stream', String(this.sseq)]];
    if (this.fcPending !== undefined) fields.push(['Nats-Consumer-Stalled', this.fcPending]);
    const headers = encodeHeaders(fields, { code: 100, description: 'Idle Heartbeat' });
    const d = this.spec.deliverSubject;
    if (this.reg.port.deliverAs(d, { subject: d, headers, payload: empty }) === 0) {
      this.lostInterest();
      return;
    }
    this.lastSentAt = Date.now();
  }

  /** Periodic: heartbeats while attached and idle; true when the consumer should be reaped. */
  tick(now: number): boolean {
    if (this.state !== 'attached') return now - this.since >= this.spec.inactiveMs;
    if (this.spec.heartbeatMs > 0 && now - this.lastSentAt >= this.spec.heartbeatMs) this.heartbeat();
    return false;
  }

  info(serverName: string): Record<string, unknown> {
    return {
      stream_name: this.spec.stream,
      name: this.spec.name,
      created: rfc3339(this.created),
      config: this.spec.config,
      delivered: { consumer_seq: this.dseq, stream_seq: this.sseq },
      ack_floor: { consumer_seq: this.dseq, stream_seq: this.sseq },
      num_ack_pending: 0,
      num_redelivered: 0,
      num_waiting: 0,
      num_pending: this.pending(),
      cluster: { leader: serverName },
    };
  }
}

/** The entries a new consumer starts with, per deliver policy, read in the same turn as its watch starts. */
export function initialEntries(reader: KvReader, spec: ConsumerSpec, matches: (e: KvEntry) => boolean): KvEntry[] {
  const b = spec.bucket;
  switch (spec.policy) {
    case 'new':
      return [];
    case 'by_start_sequence':
      return reader.changesSince(spec.optStartSeq - 1, b).filter(matches);
    case 'by_start_time':
      return reader.changesSince(0, b).filter((e) => e.ts >= spec.optStartTimeMs && matches(e));
    case 'all':
      return reader.changesSince(0, b).filter(matches);
    case 'last': {
      const all = reader.changesSince(0, b).filter(matches);
      return all.length === 0 ? [] : [all[all.length - 1]!];
    }
    case 'last_per_subject': {
      const last = new Map<string, KvEntry>();
      for (const e of reader.changesSince(0, b)) if (matches(e)) last.set(e.key, e);
      return [...last.values()].sort((x, y) => x.revision - y.revision);
    }
  }
}

/** All consumers of this node: creation, interest routing, one watch per bucket, the heartbeat/reap ticker. */
export class ConsumerRegistry {
  private readonly byKey = new Map<string, Consumer>();
  private readonly byDeliver = new Map<string, Set<Consumer>>();
  private readonly watches = new Map<string, { stop: () => void; consumers: Set<Consumer> }>();
  private readonly timer: NodeJS.Timeout;
  readonly reader: KvReader;

  constructor(
    private readonly backend: KvBackend,
    readonly port: DeliveryPort,
    readonly limits: ConsumerLimits,
  ) {
    this.reader = backend.reader;
    this.timer = setInterval(() => this.tick(), limits.tickMs);
    this.timer.unref();
  }

  get size(): number {
    return this.byKey.size;
  }

  get(stream: string, name: string): Consumer | undefined {
    return this.byKey.get(`${stream} ${name}`);
  }

  list(stream: string): Consumer[] {
    return [...this.byKey.values()].filter((c) => c.spec.stream === stream).sort((a, b) => (a.spec.name < b.spec.name ? -1 : 1));
  }

  countFor(bucket: string): number {
    return this.watches.get(bucket)?.consumers.size ?? 0;
  }

  /** Creates the consumer, or returns an existing one with the same deliver subject, filter and policy. */
  create(spec: ConsumerSpec): Consumer | JsApiError {
    const key = `${spec.stream} ${spec.name}`;
    const old = this.byKey.get(key);
    if (old !== undefined) {
      const o = old.spec;
      const same = o.deliverSubject === spec.deliverSubject && o.filter === spec.filter && o.policy === spec.policy && o.headersOnly === spec.headersOnly;
      return same ? old : jsErrors.consumerNameExists();
    }
    if (this.byKey.size >= this.limits.consumersMax) return jsErrors.maxConsumers();
    const w = this.watchBucket(spec.bucket);
    const c = new Consumer(spec, this, []);
    c.queue = initialEntries(this.reader, spec, (e) => c.matches(e));
    if (spec.policy === 'new') c.sseq = this.reader.bucketInfo(spec.bucket)?.seq ?? 0;
    w.consumers.add(c);
    this.byKey.set(key, c);
    let set = this.byDeliver.get(spec.deliverSubject);
    if (set === undefined) this.byDeliver.set(spec.deliverSubject, (set = new Set()));
    set.add(c);
    c.schedule();
    return c;
  }

  private watchBucket(bucket: string): { stop: () => void; consumers: Set<Consumer> } {
    let w = this.watches.get(bucket);
    if (w !== undefined) return w;
    const consumers = new Set<Consumer>();
    // The bucket's last revision: only entries written from now on (watch replays the ones after it).
    const stop = this.backend.watch(bucket, this.reader.bucketInfo(bucket)?.seq ?? 0, (e) => {
      for (const c of consumers) c.offer(e);
    });
    w = { stop, consumers };
    this.watches.set(bucket, w);
    return w;
  }

  delete(c: Consumer): void {
    if (c.deleted) return;
    c.deleted = true;
    this.byKey.delete(`${c.spec.stream} ${c.spec.name}`);
    const set = this.byDeliver.get(c.spec.deliverSubject);
    set?.delete(c);
    if (set?.size === 0) this.byDeliver.delete(c.spec.deliverSubject);
    const w = this.watches.get(c.spec.bucket);
    w?.consumers.delete(c);
    if (w !== undefined && w.consumers.size === 0) {
      w.stop();
      this.watches.delete(c.spec.bucket);
    }
  }

  deleteBucket(bucket: string): void {
    for (const c of [...(this.watches.get(bucket)?.consumers ?? [])]) this.delete(c);
  }

  onInterest(subject: string, delta: 1 | -1): void {
    if (hasWildcard(subject)) {
      if (delta === 1) for (const c of this.byKey.values()) if (subjectMatches(subject, c.spec.deliverSubject)) c.interestAdded();
      return;
    }
    const set = this.byDeliver.get(subject);
    if (set === undefined) return;
    for (const c of [...set]) delta === 1 ? c.interestAdded() : c.interestRemoved();
  }

  /** The state was replaced under the watches (snapshot restore): every consumer refills from its cursor. */
  resync(): void {
    for (const c of this.byKey.values()) c.resync();
  }

  onFlowControl(subject: string): void {
    // $JS.FC.<stream>.<consumer>.<id>
    const rest = subject.slice(flowControlPrefix.length).split('.');
    if (rest.length !== 3) return;
    this.get(rest[0]!, rest[1]!)?.flowControlReply(subject);
  }

  private tick(): void {
    const now = Date.now();
    for (const c of [...this.byKey.values()]) {
      if (!this.reader.hasBucket(c.spec.bucket) || c.tick(now)) this.delete(c);
    }
  }

  close(): void {
    clearInterval(this.timer);
    for (const c of [...this.byKey.values()]) this.delete(c);
  }
}
