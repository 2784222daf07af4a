// The one module of store/ that touches node:fs. Everything else receives a StoreFs, so tests can
// inject ENOSPC/EIO or partial writes without a real full disk.
//
// The WAL's hot path uses raw file descriptors with the callback API (fs.write + fs.fdatasync): no
// streams, no FileHandle objects, so a lone durable append costs one write and one fdatasync
// (bench/store.ts measures the overhead against the raw floor).
import * as fs from 'node:fs';
import { dirname } from 'node:path';

export interface StoreFs {
  /** Opens a file; flags as in fs.open ('r', 'r+', 'wx', 'a+', ..., or fs.constants bits). */
  open(path: string, flags: string | number, mode?: number): Promise<number>;
  /** Writes buf[offset, offset+length) at `position`; may write less than asked (returns bytes written). */
  write(fd: number, buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  read(fd: number, buf: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  fdatasync(fd: number): Promise<void>;
  fsync(fd: number): Promise<void>;
  ftruncate(fd: number, length: number): Promise<void>;
  fstatSize(fd: number): Promise<number>;
  close(fd: number): Promise<void>;
  readFile(path: string): Promise<Buffer>;
  /** Synchronous read of a whole file: only for the rare read that a synchronous caller needs (a snapshot to send). */
  readFileSync(path: string): Buffer;
  /** Names in a directory; [] when it does not exist. */
  readdir(path: string): Promise<string[]>;
  mkdir(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** True when the path exists. */
  exists(path: string): Promise<boolean>;
}

function cb<T>(run: (done: (err: NodeJS.ErrnoException | null, v?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => run((err, v) => (err ? reject(err) : resolve(v as T))));
}

export const nodeFs: StoreFs = {
  open: (path, flags, mode = 0o600) => cb<number>((d) => fs.open(path, flags, mode, d)),
  write: (fd, buf, offset, length, position) => cb<number>((d) => fs.write(fd, buf, offset, length, position, d)),
  read: (fd, buf, offset, length, position) => cb<number>((d) => fs.read(fd, buf, offset, length, position, d)),
  fdatasync: (fd) => cb<void>((d) => fs.fdatasync(fd, d)),
  fsync: (fd) => cb<void>((d) => fs.fsync(fd, d)),
  ftruncate: (fd, length) => cb<void>((d) => fs.ftruncate(fd, length, d)),
  fstatSize: (fd) => cb<fs.Stats>((d) => fs.fstat(fd, d)).then((s) => s.size),
  close: (fd) => cb<void>((d) => fs.close(fd, d)),
  readFile: (path) => cb<Buffer>((d) => fs.readFile(path, d)),
  readFileSync: (path) => fs.readFileSync(path),
  readdir: (path) =>
    cb<string[]>((d) => fs.readdir(path, d)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [];
      throw err;
    }),
  mkdir: (path) => cb<string | undefined>((d) => fs.mkdir(path, { recursive: true, mode: 0o700 }, d)).then(() => undefined),
  rename: (from, to) => cb<void>((d) => fs.rename(from, to, d)),
  unlink: (path) => cb<void>((d) => fs.unlink(path, d)),
  exists: (path) =>
    cb<void>((d) => fs.access(path, d)).then(
      () => true,
      (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return false;
        throw err;
      },
    ),
};

/**
 * fsync of a directory makes a create, rename or unlink inside it durable (POSIX leaves directory
 * entries in the page cache otherwise; ext4's auto_da_alloc is not a guarantee).
 */
export async function syncDir(f: StoreFs, dir: string): Promise<void> {
  const fd = await f.open(dir, 'r');
  try {
    await f.fsync(fd);
  } finally {
    await f.close(fd);
  }
}

/** Writes all of buf at `position`, looping over short writes. */
export async function writeAll(f: StoreFs, fd: number, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await f.write(fd, buf, done, buf.length - done, position + done);
    if (n <= 0) throw Object.assign(new Error('write returned 0 bytes'), { code: 'EIO' });
    done += n;
  }
}

/** Atomic durable replace: tmp file, write, fsync, rename over `path`, fsync the directory. */
export async function writeFileDurable(f: StoreFs, path: string, data: Uint8Array | readonly Uint8Array[]): Promise<void> {
  const tmp = `${path}.tmp`;
  const fd = await f.open(tmp, 'w');
  try {
    let at = 0;
    for (const part of data instanceof Uint8Array ? [data] : data) {
      await writeAll(f, fd, part, at);
      at += part.length;
    }
    await f.fsync(fd);
  } finally {
    await f.close(fd);
  }
  await f.rename(tmp, path);
  await syncDir(f, dirname(path));
}
