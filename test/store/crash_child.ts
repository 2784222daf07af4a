// Child process of crash.test.ts: recovers the store in `dir`, then appends as fast as it can and
// reports each durable acknowledgement on stdout (a pipe: synchronous writes on Linux, so a printed
// ack was seen durable first). The parent SIGKILLs it at a random moment.
//   wal  <dir> <seed>: 16 concurrent writers; record `w:n:<pad>` with n counting up per writer
//   raft <dir> <seed>: RaftStorage: entries `e<index>t<term>`, hard state, suffix rewrites, snapshots
import { Wal, RaftStorage } from '../../store/index.js';

const [mode, dir, seedArg] = process.argv.slice(2) as [string, string, string];
let seed = Number(seedArg) >>> 0 || 1;
const rand = (n: number): number => {
  seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
  return seed % n;
};
export const padFor = (w: number, n: number): string => 'x'.repeat((w * 31 + n * 17) % 300);

async function walMode(): Promise<void> {
  const next = new Map<number, number>();
  const wal = await Wal.open(dir, { segmentBytes: 32 * 1024 }, (_t, body) => {
    const [w, n] = Buffer.from(body).toString().split(':').map(Number) as [number, number];
    next.set(w, n + 1);
  });
  process.stdout.write('ready\n');
  const writer = async (w: number): Promise<void> => {
    for (let n = next.get(w) ?? 0; ; n++) {
      await wal.append([{ type: 2, body: Buffer.from(`${w}:${n}:${padFor(w, n)}`) }]);
      process.stdout.write(`a ${w} ${n}\n`);
    }
  };
  await Promise.all(Array.from({ length: 16 }, (_, w) => writer(w)));
}

async function raftMode(): Promise<void> {
  const st = await RaftStorage.open(dir, { segmentBytes: 16 * 1024 });
  process.stdout.write('ready\n');
  let term = Math.max(1, st.initialState().hardState.term);
  const data = (i: number, tm: number) => Buffer.from(`e${i}t${tm}${'y'.repeat(i % 50)}`);
  for (;;) {
    const last = st.lastIndex();
    let from = last + 1;
    if (rand(10) === 0 && last - st.hardState().commit >= 2) {
      // A new leader rewrites the uncommitted suffix (Raft log repair).
      term++;
      from = last - 1;
    }
    const n = 1 + rand(5);
    const entries = Array.from({ length: n }, (_, k) => ({ index: from + k, term, type: 0 as const, data: data(from + k, term) }));
    const lastNew = from + n - 1;
    const commit = Math.max(st.hardState().commit, lastNew - 3);
    await st.save({ entries, hardState: { term, vote: 1, commit } });
    const seg = st.walSegments().pop()!;
    process.stdout.write(`r ${lastNew} ${commit} ${seg.seq} ${seg.size} ${term}\n`);
    if (commit - st.snapshot().meta.index >= 150) {
      await st.createSnapshot(commit, { voters: [1], learners: [] }, Buffer.from(`snap${commit}`));
      process.stdout.write(`s ${commit}\n`);
    }
  }
}

await (mode === 'wal' ? walMode() : raftMode());
