// One process per data directory: two nodes appending to the same WAL would interleave batches and
// destroy it. LOCK holds the owner's pid; a lock whose pid is gone (the node was killed) is stale and
// taken over. Node has no flock(), so liveness is checked with kill(pid, 0).
import { join } from 'node:path';
import { StoreError, StoreErrorCode } from './errors.js';
import { type StoreFs, writeAll } from './fs.js';

export const LOCK_FILE = 'LOCK';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the directory's lock; resolves with its release. */
export async function lockDir(fs: StoreFs, dir: string, isAlive: (pid: number) => boolean = alive): Promise<() => Promise<void>> {
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = await fs.open(path, 'wx');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number((await fs.readFile(path).catch(() => Buffer.from(''))).toString().trim());
      if (Number.isInteger(owner) && owner > 0 && isAlive(owner)) {
        throw new StoreError(
          StoreErrorCode.locked,
          `data directory ${dir} is in use by process ${owner}: stop that membershipd or use another --data-dir ` +
            `(if no such process is a membershipd, remove ${path})`,
        );
      }
      await fs.unlink(path).catch(() => undefined); // stale: its owner is gone
      continue;
    }
    try {
      await writeAll(fs, fd, Buffer.from(`${process.pid}\n`), 0);
    } finally {
      await fs.close(fd);
    }
    return () => fs.unlink(path).catch(() => undefined);
  }
  throw new StoreError(StoreErrorCode.locked, `could not take the lock ${path}: another process keeps racing for it`);
}
