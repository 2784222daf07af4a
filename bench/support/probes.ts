// What the machine itself gives a benchmark, measured in the same run as the figure it bounds: the load
// other sessions put on it, the disk's fsync floor, the loopback TCP round trip.
import { closeSync, fdatasyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { nodeFs } from '../../store/index.js';

/** The first `count` load averages (1, 5, 15 min) with `digits` decimals, space-separated: "3.9 2.3 3.5". */
export function loadAverage(digits = 1, count = 3): string {
  return loadavg().slice(0, count).map((l) => l.toFixed(digits)).join(' ');
}

/**
 * Latencies in ms, ascending, of write + fdatasync of 4 KiB appended to a fresh file in `dir`: the floor a
 * durable WAL append cannot beat. Through store/'s nodeFs, the same async I/O path the WAL takes, so the
 * floor and the appends it is compared with pay the same thread-pool hop. Stops after `roundsMax` rounds or
 * `seconds`, whichever comes first.
 */
export async function fsyncFloor(dir: string, opts: { roundsMax: number; seconds: number }): Promise<number[]> {
  const file = join(dir, 'fsync-probe');
  const fd = await nodeFs.open(file, 'w');
  const block = Buffer.alloc(4096, 0x5a);
  const out: number[] = [];
  const end = performance.now() + opts.seconds * 1000;
  try {
    while (out.length < opts.roundsMax && performance.now() < end) {
      const t0 = performance.now();
      await nodeFs.write(fd, block, 0, block.length, out.length * block.length); // append, as the WAL does
      await nodeFs.fdatasync(fd);
      out.push(performance.now() - t0);
    }
  } finally {
    await nodeFs.close(fd);
    await nodeFs.unlink(file);
  }
  return out.sort((a, b) => a - b);
}

/**
 * The disk alone: write + fdatasync of 4 KiB with synchronous calls (no libuv thread pool hop) into space
 * zeroed and synced beforehand (no file growth, so no journal commit: the cheapest durable write the file
 * system offers, and what the WAL does in its preallocated segments), ms ascending. bench:cluster divides
 * by this (plus a loopback round trip): the strictest floor, so the ratio cannot improve by measuring the
 * floor through slower machinery.
 */
export function diskFsyncFloor(dir: string, rounds = 300): number[] {
  const file = join(dir, 'fsync-probe-sync');
  const fd = openSync(file, 'w');
  const block = Buffer.alloc(4096, 0x5a);
  const out: number[] = [];
  try {
    const zeros = Buffer.alloc(rounds * block.length);
    writeSync(fd, zeros, 0, zeros.length, 0);
    fdatasyncSync(fd);
    for (let i = 0; i < rounds; i++) {
      const t0 = performance.now();
      writeSync(fd, block, 0, block.length, i * block.length);
      fdatasyncSync(fd);
      out.push(performance.now() - t0);
    }
  } finally {
    closeSync(fd);
    rmSync(file, { force: true });
  }
  return out.sort((a, b) => a - b);
}

/** Round trips in ms, ascending, of 64 bytes echoed by a server in this process over 127.0.0.1 (no Nagle). */
export async function loopbackRtt(rounds = 2000): Promise<number[]> {
  const server = createServer((s) => {
    s.setNoDelay(true);
    s.on('data', (d) => s.write(d));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const sock = createConnection({ port, host: '127.0.0.1' });
  sock.setNoDelay(true);
  await new Promise<void>((r) => sock.once('connect', r));
  const out: number[] = [];
  const ping = Buffer.alloc(64, 1);
  try {
    for (let i = 0; i < rounds; i++) {
      const t0 = process.hrtime.bigint();
      let got = 0;
      await new Promise<void>((res) => {
        const on = (d: Buffer): void => {
          got += d.length;
          if (got >= ping.length) {
            sock.off('data', on);
            res();
          }
        };
        sock.on('data', on);
        sock.write(ping);
      });
      out.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  } finally {
    sock.destroy();
    await new Promise((r) => server.close(r));
  }
  return out.sort((a, b) => a - b);
}
