// scrypt on worker threads of the authenticator's own. node:crypto's asynchronous scrypt runs on libuv's
// thread pool (4 threads by default), the same pool that carries the WAL's writes and fsyncs: a storm of
// password checks (~0.1 s of CPU each at N=2^15) queued there delayed a KV write by 3 s and cost a leader its
// term. Here a check waits only for other checks, and the pool's size bounds how many cores they may take.
//
// The worker's code is evaluated from a string (no file to resolve), so it runs the same under tsx, from
// dist/ and from a bundle.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { MembershipdError } from '../errors.js';
import type { ScryptParams } from './credentials.js';

export class ScryptPoolError extends MembershipdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ESCRYPTPOOL', message, options);
  }
}

// The worker lowers its own thread's CPU priority (nice +10; raising it needs no privilege) on Linux, where
// /proc/thread-self names the thread: on a 2-core machine a storm of checks then takes the CPU the event loop
// (Raft heartbeats, WAL, replies) leaves, instead of competing with it as an equal. Elsewhere it runs at the
// process's priority.
const workerSource = `
const { parentPort } = require('node:worker_threads');
const { scryptSync } = require('node:crypto');
try {
  const tid = Number(require('node:fs').readlinkSync('/proc/thread-self').split('/').pop());
  if (Number.isInteger(tid) && tid > 0) require('node:os').setPriority(tid, Math.min(19, require('node:os').getPriority(tid) + 10));
} catch {}
parentPort.on('message', (job) => {
  try {
    const key = scryptSync(job.password, Buffer.from(job.salt), job.keylen, job.options);
    parentPort.postMessage({ id: job.id, key: new Uint8Array(key.buffer, key.byteOffset, key.length) });
  } catch (err) {
    parentPort.postMessage({ id: job.id, error: String(err && err.message || err) });
  }
});
`;

interface Job {
  readonly id: number;
  readonly password: string;
  readonly salt: Uint8Array;
  readonly keylen: number;
  readonly options: { N: number; r: number; p: number; maxmem: number };
  readonly resolve: (key: Buffer) => void;
  readonly reject: (err: Error) => void;
}

interface Slot {
  readonly worker: Worker;
  job: Job | null;
  idleTimer: NodeJS.Timeout | null;
}

/**
 * One worker per core beyond the first, at most 4: on this project's 2-core machines, one core hashes while
 * the other keeps the event loop (Raft, WAL, routes, clients) responsive.
 */
export function defaultScryptThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

export class ScryptPool {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closed = false;

  constructor(
    readonly size: number = defaultScryptThreads(),
    /** A worker idle this long exits (its ~10 MiB come back); the next check starts one again (~20 ms). */
    private readonly idleMs = 30_000,
  ) {
    if (!Number.isInteger(size) || size < 1 || size > 64) throw new RangeError(`scrypt pool size must be 1..64, got ${size}`);
  }

  hash(password: string, salt: Uint8Array, params: ScryptParams, keylen: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(new ScryptPoolError('the password-check pool is closed (the node is stopping)'));
    const maxmem = 256 * params.N * params.r + 1024 * 1024;
    return new Promise<Buffer>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, password, salt, keylen, options: { N: params.N, r: params.r, p: params.p, maxmem }, resolve, reject });
      this.dispatch();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const err = new ScryptPoolError('the password-check pool is closed (the node is stopping)');
    for (const job of this.queue.splice(0)) job.reject(err);
    const slots = this.slots.splice(0);
    for (const s of slots) {
      if (s.idleTimer !== null) clearTimeout(s.idleTimer);
      s.job?.reject(err);
      s.job = null;
    }
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      let slot = this.slots.find((s) => s.job === null);
      if (slot === undefined) {
        if (this.slots.length >= this.size) return;
        slot = this.spawn();
      }
      const job = this.queue.shift()!;
      if (slot.idleTimer !== null) {
        clearTimeout(slot.idleTimer);
        slot.idleTimer = null;
      }
      slot.job = job;
      // The worker is referenced while it works (a check in flight keeps the process up), not while idle.
      slot.worker.ref();
      slot.worker.postMessage({ id: job.id, password: job.password, salt: job.salt, keylen: job.keylen, options: job.options });
    }
  }

  private spawn(): Slot {
    const worker = new Worker(workerSource, { eval: true, name: 'scrypt' });
    const slot: Slot = { worker, job: null, idleTimer: null };
    worker.on('message', (m: { id: number; key?: Uint8Array; error?: string }) => {
      const job = slot.job;
      if (job === null || job.id !== m.id) return;
      slot.job = null;
      worker.unref();
      if (m.key !== undefined) job.resolve(Buffer.from(m.key.buffer, m.key.byteOffset, m.key.length));
      else job.reject(new ScryptPoolError(`scrypt failed: ${m.error ?? 'unknown error'}`));
      this.idle(slot);
      this.dispatch();
    });
    const lost = (cause: unknown): void => {
      const i = this.slots.indexOf(slot);
      if (i < 0) return;
      this.slots.splice(i, 1);
      if (slot.idleTimer !== null) clearTimeout(slot.idleTimer);
      slot.job?.reject(new ScryptPoolError('a password-check worker exited during a check; the client may retry', { cause }));
      slot.job = null;
      if (!this.closed) this.dispatch();
    };
    worker.on('error', lost);
    worker.on('exit', (code) => lost(new Error(`worker exit code ${code}`)));
    this.slots.push(slot);
    return slot;
  }

  private idle(slot: Slot): void {
    if (this.queue.length > 0 || this.closed) return;
    slot.idleTimer = setTimeout(() => {
      slot.idleTimer = null;
      if (slot.job !== null) return;
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      void slot.worker.terminate();
    }, this.idleMs);
    slot.idleTimer.unref();
  }
}
