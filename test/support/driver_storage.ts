// A DriverStorage (src/node/ready_driver.ts) over raft/'s MemoryStorage for unit tests of the Ready driver and of what
// it feeds: every write durable at once, no snapshots. A test that needs writes held in flight overrides save().
import { MemoryStorage, type Entry, type HardState } from '../../raft/index.js';
import type { DriverStorage } from '../../src/node/ready_driver.js';

export class MemoryDriverStorage implements DriverStorage {
  readonly mem = new MemoryStorage();

  save(update: { readonly hardState?: HardState; readonly entries?: readonly Entry[] }): Promise<void> {
    this.persist(update);
    return Promise.resolve();
  }

  /** Makes a save's entries and hard state durable. */
  protected persist(update: { readonly hardState?: HardState; readonly entries?: readonly Entry[] }): void {
    this.mem.append(update.entries ?? []);
    if (update.hardState) this.mem.setHardState(update.hardState);
  }

  applySnapshot(): Promise<void> {
    return Promise.reject(new Error('no snapshot in these tests'));
  }
  readSnapshotData(): Promise<Uint8Array> {
    return Promise.resolve(this.mem.snapshot().data);
  }
  createSnapshotStreamed(): Promise<unknown> {
    return Promise.reject(new Error('no snapshot in these tests'));
  }
  lastIndex(): number {
    return this.mem.lastIndex();
  }
  snapshot(): ReturnType<MemoryStorage['snapshot']> {
    return this.mem.snapshot();
  }
  snapshotBytes(): number {
    return 0;
  }
}
