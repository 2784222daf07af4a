// Crash consistency: a child process appends and reports each acknowledgement; the parent SIGKILLs
// it at a random moment, restarts recovery on the same directory, and checks that every
// acknowledged record is present, in order, and nothing else appears as garbage. Iterations
// alternate between the raw WAL (16 concurrent writers, group commit) and the Raft log store
// (suffix rewrites, snapshots and segment removal).
// Bounded: CRASH_ITERATIONS (default 12) and a 20 s budget; `--long` or CRASH_LONG=1 for a soak
// (200 iterations, 10 minutes). Replay one run: SEED=<printed seed> npx tap test/store/crash.test.ts
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { closeSync, openSync, readdirSync, readFileSync, truncateSync, writeSync } from 'node:fs';
import { Wal, RaftStorage, RecordDecoder } from '../../store/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const long = process.argv.includes('--long') || process.env.CRASH_LONG === '1';
const ITERATIONS = Number(process.env.CRASH_ITERATIONS ?? (long ? 200 : 12));
const BUDGET_MS = long ? 600_000 : 20_000;
const SEED = Number(process.env.SEED ?? Date.now() % 1_000_000_007);
t.comment(`crash test SEED=${SEED} iterations<=${ITERATIONS} budget=${BUDGET_MS}ms (replay: SEED=${SEED} npx tap test/store/crash.test.ts)`);
// The soak's budget is longer than the 240 s per file of package.json's tap config: without this, tap stops it midway
// and reports a timeout, not a finding.
if (long) t.setTimeout(BUDGET_MS + 120_000);

let rng = SEED >>> 0 || 1;
const rand = (n: number): number => {
  rng = (Math.imul(rng, 1664525) + 1013904223) >>> 0;
  return rng % n;
};
const padFor = (w: number, n: number): string => 'x'.repeat((w * 31 + n * 17) % 300);

interface Run {
  lines: string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

const live = new Set<ChildProcess>();
t.teardown(() => {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** Starts the child, kills it `delayMs` after it reported ready; resolves with its ack lines. */
function runChild(mode: string, dir: string, childSeed: number, delayMs: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'crash_child.ts'), mode, dir, String(childSeed)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(child);
    const lines: string[] = [];
    let buf = '';
    let stderr = '';
    const guard = setTimeout(() => child.kill('SIGKILL'), 20_000); // never hang the suite
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      for (const l of parts) {
        if (l === 'ready') setTimeout(() => child.kill('SIGKILL'), delayMs);
        else lines.push(l);
      }
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      live.delete(child);
      resolve({ lines, code, signal, stderr });
    });
  });
}

/**
 * A power loss after the last durable byte `durableEnd` of the segment at `path`: what was written after it
 * is lost from a random byte on. Half the time the file is cut there (its size never reached the disk);
 * otherwise the size stays and the lost bytes read back as zeros (a preallocated segment: the zeroed space
 * was durable, the records written over it were not). Either can split a record. Past the data, only the
 * zeroed space can go. Returns the bytes lost.
 */
function loseUnsynced(path: string, durableEnd: number): number {
  const bytes = readFileSync(path);
  let dataEnd = 0;
  new RecordDecoder().push(bytes, (_type, body, offset) => void (dataEnd = offset + 9 + body.length));
  if (dataEnd <= durableEnd) {
    if (bytes.length <= durableEnd || rand(2) === 0) return 0;
    const cut = durableEnd + rand(bytes.length - durableEnd);
    truncateSync(path, cut);
    return bytes.length - cut;
  }
  const cut = durableEnd + rand(dataEnd - durableEnd + 1);
  if (rand(2) === 0) {
    truncateSync(path, cut);
    return bytes.length - cut;
  }
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, Buffer.alloc(dataEnd - cut), 0, dataEnd - cut, cut);
  } finally {
    closeSync(fd);
  }
  return dataEnd - cut;
}

/**
 * SIGKILL never tears a write (the page cache survives the process), so every other WAL iteration
 * also simulates a power loss after the end of the last acknowledged record (loseUnsynced).
 */
function losePowerTail(dir: string, acked: Map<number, number>): number {
  const seg = readdirSync(dir).filter((n) => n.endsWith('.seg')).sort().pop();
  if (!seg) return 0;
  const path = join(dir, seg);
  const bytes = readFileSync(path);
  let ackedEnd = 0;
  new RecordDecoder().push(bytes, (type, body, offset) => {
    const end = offset + 9 + body.length;
    if (type === 1) return void (ackedEnd = Math.max(ackedEnd, end));
    const [w, n] = Buffer.from(body).toString().split(':').map(Number) as [number, number];
    if (n <= (acked.get(w) ?? -1)) ackedEnd = Math.max(ackedEnd, end);
  });
  return loseUnsynced(path, ackedEnd);
}

/** The Raft-mode counterpart: the child reports the active segment's durable size with each ack. */
function losePowerTailRaft(dir: string, ackedSize: Map<number, number>): number {
  const seg = readdirSync(dir).filter((n) => n.endsWith('.seg')).sort().pop();
  if (!seg) return 0;
  const path = join(dir, seg);
  return loseUnsynced(path, ackedSize.get(Number(seg.slice(0, 16))) ?? 0);
}

async function verifyWal(dir: string, acked: Map<number, number>): Promise<{ records: number; repaired: boolean; problems: string[] }> {
  const problems: string[] = [];
  const seen = new Map<number, number>();
  let records = 0;
  const wal = await Wal.open(dir, { segmentBytes: 32 * 1024 }, (type, body) => {
    records++;
    const text = Buffer.from(body).toString();
    const m = /^(\d+):(\d+):(x*)$/.exec(text);
    if (type !== 2 || !m) return void problems.push(`garbage record ${JSON.stringify(text.slice(0, 40))}`);
    const w = Number(m[1]);
    const n = Number(m[2]);
    if (m[3] !== padFor(w, n)) problems.push(`record ${w}:${n} has the wrong payload`);
    const expect = (seen.get(w) ?? -1) + 1;
    if (n !== expect) problems.push(`writer ${w}: record ${n} where ${expect} was due (out of order or duplicated)`);
    seen.set(w, n);
  });
  for (const [w, n] of acked) if ((seen.get(w) ?? -1) < n) problems.push(`writer ${w}: acknowledged ${n} but only ${seen.get(w) ?? -1} recovered`);
  const repaired = wal.repaired !== null;
  await wal.close();
  return { records, repaired, problems };
}

/**
 * The Raft-mode check. The child may rewrite its uncommitted suffix (a new term, possibly shorter),
 * so "acknowledged" means: the last acknowledged entry is present with its term, unless a later
 * (unacknowledged but durable) rewrite replaced it with a newer term; committed entries never go.
 */
async function verifyRaft(dir: string, ack: { last: number; commit: number; term: number }): Promise<{ records: number; repaired: boolean; problems: string[] }> {
  const problems: string[] = [];
  const st = await RaftStorage.open(dir, { segmentBytes: 16 * 1024 });
  const first = st.firstIndex();
  const last = st.lastIndex();
  const hs = st.hardState();
  if (last < ack.commit) problems.push(`last index ${last} < acknowledged commit ${ack.commit}`);
  if (hs.commit < ack.commit) problems.push(`commit ${hs.commit} < acknowledged ${ack.commit}`);
  if (ack.last >= first) {
    const kept = last >= ack.last && st.term(ack.last) === ack.term;
    const rewritten = last > ack.commit && st.term(Math.min(last, ack.last)) > ack.term;
    if (!kept && !rewritten) problems.push(`acknowledged entry ${ack.last} (term ${ack.term}) is gone (last ${last})`);
  }
  const snap = st.snapshot();
  if (snap.meta.index > 0 && Buffer.from(snap.data).toString() !== `snap${snap.meta.index}`) problems.push(`snapshot at ${snap.meta.index} holds the wrong image`);
  let prevTerm = snap.meta.term;
  const es = last >= first ? st.entries(first, last + 1) : [];
  for (const e of es) {
    const m = /^e(\d+)t(\d+)y*$/.exec(Buffer.from(e.data).toString());
    if (!m || Number(m[1]) !== e.index || Number(m[2]) !== e.term) problems.push(`entry ${e.index} holds garbage`);
    if (e.term < prevTerm) problems.push(`entry ${e.index}: term ${e.term} after ${prevTerm}`);
    prevTerm = e.term;
  }
  const repaired = st.recovery.walRepaired !== null;
  await st.close();
  return { records: es.length, repaired, problems };
}

t.test('SIGKILL at random moments loses no acknowledged record and leaves no garbage', async (t) => {
  const base = t.testdir();
  const walDir = join(base, 'wal-mode');
  const raftDir = join(base, 'raft-mode');
  const walAcked = new Map<number, number>();
  const raftAck = { last: 0, commit: 0, term: 0 };
  const raftSegSize = new Map<number, number>();
  const started = Date.now();
  let done = 0;
  let repairs = 0;
  let acks = 0;
  let lostBytes = 0;
  for (let i = 0; i < ITERATIONS && (i < 3 || Date.now() - started < BUDGET_MS); i++) {
    const mode = i % 2 === 0 ? 'wal' : 'raft';
    const delay = 20 + rand(250);
    const run = await runChild(mode, mode === 'wal' ? walDir : raftDir, rand(1 << 30), delay);
    if (run.signal !== 'SIGKILL') {
      t.fail(`iteration ${i} (${mode}): child ended with code ${run.code} signal ${run.signal}: ${run.stderr.slice(0, 2000)}`);
      break;
    }
    for (const l of run.lines) {
      const p = l.split(' ');
      acks++;
      if (p[0] === 'a') walAcked.set(Number(p[1]), Math.max(walAcked.get(Number(p[1])) ?? -1, Number(p[2])));
      else if (p[0] === 'r') {
        raftAck.last = Number(p[1]);
        raftAck.commit = Number(p[2]);
        raftAck.term = Number(p[5]);
        raftSegSize.set(Number(p[3]), Math.max(raftSegSize.get(Number(p[3])) ?? 0, Number(p[4])));
      }
    }
    if (mode === 'wal' && i % 4 === 2) lostBytes += losePowerTail(walDir, walAcked);
    if (mode === 'raft' && i % 4 === 3) lostBytes += losePowerTailRaft(join(raftDir, 'wal'), raftSegSize);
    const v = mode === 'wal' ? await verifyWal(walDir, walAcked) : await verifyRaft(raftDir, raftAck);
    if (v.repaired) repairs++;
    if (v.problems.length > 0) {
      t.fail(`iteration ${i} (${mode}, kill after ${delay} ms, SEED=${SEED}): ${v.problems.slice(0, 5).join('; ')}`);
      break;
    }
    done++;
  }
  t.ok(done >= 3, `${done} kill/recover iterations in ${Date.now() - started} ms, ${acks} acknowledgements checked, ${repairs} torn tails cut, ${lostBytes} unsynced bytes dropped`);
  t.comment(`crash iterations=${done} time_ms=${Date.now() - started} acks=${acks} torn_tails_cut=${repairs} power_loss_bytes=${lostBytes}`);
});
