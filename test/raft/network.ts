// A hand-driven in-memory network for scripted Raft scenarios: nothing happens unless the script says
// so (tick this node, deliver these messages, cut this link), and every Ready is persisted to the
// node's MemoryStorage before its messages are queued, as the contract requires.
import { MemoryStorage, RawNode, StateType, describeReady, seededRng } from '../../raft/index.js';
import type { Limits, Message, RawNodeConfig } from '../../raft/index.js';
import type { PlantedBug } from '../../raft/testing.js';

export interface TestNode {
  raw: RawNode;
  storage: MemoryStorage;
  applied: number;
  readonly appliedData: string[];
}

export class Network {
  readonly nodes = new Map<number, TestNode>();
  queue: Message[] = [];
  readonly cut = new Set<string>();
  readonly log: string[] = [];
  record = false;

  constructor(
    ids: readonly number[],
    readonly opts: { limits?: Partial<Limits>; preVote?: boolean; checkQuorum?: boolean; plantedBug?: PlantedBug; peers?: readonly number[] } = {},
  ) {
    for (const id of ids) this.add(id, opts.peers ?? ids);
    this.flush(); // persist and apply the bootstrap entry: every node knows the configuration
  }

  add(id: number, peers: readonly number[]): TestNode {
    const storage = new MemoryStorage();
    const n: TestNode = { raw: this.make(id, storage, peers), storage, applied: 0, appliedData: [] };
    this.nodes.set(id, n);
    return n;
  }

  private make(id: number, storage: MemoryStorage, peers: readonly number[], recovering = false): RawNode {
    const cfg: RawNodeConfig = {
      id,
      storage,
      rng: seededRng(id),
      peers,
      ...(recovering ? { recovering } : {}),
      electionTicks: 10,
      heartbeatTicks: 1,
      ...(this.opts.limits ? { limits: this.opts.limits } : {}),
      ...(this.opts.preVote !== undefined ? { preVote: this.opts.preVote } : {}),
      ...(this.opts.checkQuorum !== undefined ? { checkQuorum: this.opts.checkQuorum } : {}),
      ...(this.opts.plantedBug ? { plantedBug: this.opts.plantedBug } : {}),
    };
    return new RawNode(cfg);
  }

  /** Restart from what the node persisted (its in-memory Raft state is lost). */
  restart(id: number): void {
    const n = this.nodes.get(id)!;
    n.raw = this.make(id, n.storage, []);
    n.applied = n.storage.snapshot().meta.index;
  }

  /** The node's disk is replaced by an empty one; it restarts knowing that (RaftConfig.recovering), without peers. */
  wipe(id: number): void {
    const n = this.nodes.get(id)!;
    n.storage = new MemoryStorage();
    n.raw = this.make(id, n.storage, [], true);
    n.applied = 0;
    n.appliedData.length = 0;
  }

  node(id: number): TestNode {
    return this.nodes.get(id)!;
  }

  raw(id: number): RawNode {
    return this.nodes.get(id)!.raw;
  }

  /** Handles every pending Ready: persist, queue messages, apply. */
  flush(): void {
    for (const [id, n] of this.nodes) {
      for (let i = 0; i < 4 && n.raw.hasReady(); i++) {
        const rd = n.raw.ready();
        if (this.record) for (const l of describeReady(rd)) this.log.push(`${id} ${l}`);
        if (rd.snapshot) {
          n.storage.applySnapshot(rd.snapshot);
          n.applied = rd.snapshot.meta.index;
        }
        n.storage.append(rd.entries);
        if (rd.hardState) n.storage.setHardState(rd.hardState);
        this.queue.push(...rd.messages);
        for (const e of rd.committedEntries) {
          n.applied = e.index;
          if (e.type === 0 && e.data.length > 0) n.appliedData.push(new TextDecoder().decode(e.data));
        }
        n.raw.advance();
      }
    }
  }

  /** Delivers queued messages (those matching `filter`, default all) until none are left, at most `rounds` times. */
  deliver(rounds = 50, filter: (m: Message) => boolean = () => true): void {
    for (let r = 0; r < rounds; r++) {
      this.flush();
      const now = this.queue.filter(filter);
      this.queue = this.queue.filter((m) => !filter(m));
      if (now.length === 0) return;
      for (const m of now) {
        if (this.cut.has(`${m.from}>${m.to}`) || this.cut.has(`${m.to}>${m.from}`)) continue;
        this.nodes.get(m.to)?.raw.step(m);
      }
    }
    this.flush();
  }

  tick(id: number, times = 1): void {
    for (let i = 0; i < times; i++) this.raw(id).tick();
    this.flush();
  }

  tickAll(times = 1): void {
    for (let i = 0; i < times; i++) {
      for (const n of this.nodes.values()) n.raw.tick();
      this.deliver();
    }
  }

  isolate(id: number): void {
    for (const other of this.nodes.keys()) if (other !== id) this.cut.add(`${id}>${other}`);
  }

  heal(): void {
    this.cut.clear();
  }

  leader(): number {
    const ls = [...this.nodes.entries()].filter(([, n]) => n.raw.basicStatus().state === StateType.leader);
    ls.sort(([, a], [, b]) => b.raw.basicStatus().term - a.raw.basicStatus().term);
    return ls[0]?.[0] ?? 0;
  }

  /** Elects `id`: campaign and deliver everything. */
  elect(id: number): void {
    this.raw(id).campaign();
    this.deliver();
  }

  propose(id: number, text: string): void {
    this.raw(id).propose(new TextEncoder().encode(text));
    this.deliver();
  }
}
