// Turns tap's root `# { total: N, pass: N, fail: N }` line into the plain `N passed, N failed` line CI reads.
// Exits with tap's own status, and non-zero when there is no summary at all (a runner crash is a failure).
import { readFileSync } from 'node:fs';

// Usage: tap-summary.mjs TAP_EXIT_STATUS FILE... — each FILE is one tap run's output; their counts add up.
const [rcArg = '1', ...files] = process.argv.slice(2);
const rc = Number(rcArg);
const counts = {};
for (const file of files) {
  let text = '';
  try { text = readFileSync(file, 'utf8'); } catch { /* no output at all: handled below */ }
  let last = null;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    const m = /^# \{ (total: \d+(?:, \w+: \d+)*) \}\s*$/.exec(line); // the last root-level line wins
    if (m) last = Object.fromEntries([...m[1].matchAll(/(\w+): (\d+)/g)].map(([, k, v]) => [k, Number(v)]));
  }
  if (!last) {
    process.stderr.write(`tap-summary: no "# { total: ... }" line in ${file} (tap exit ${rc})\n`);
    process.stdout.write('0 passed, 1 failed\n');
    process.exit(rc || 1);
  }
  for (const [k, v] of Object.entries(last)) counts[k] = (counts[k] ?? 0) + v;
}
if (files.length === 0) {
  process.stderr.write('tap-summary: no tap output files given\n');
  process.stdout.write('0 passed, 1 failed\n');
  process.exit(1);
}
const passed = counts.pass ?? 0;
const failed = counts.fail ?? 0;
const skipped = (counts.skip ?? 0) + (counts.todo ?? 0);
if (rc !== 0 && failed === 0) process.stderr.write(`tap-summary: tap exited ${rc} with no failed assertion (runner error)\n`);
process.stdout.write(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
process.exit(rc !== 0 ? rc : failed > 0 ? 1 : 0);
