// `npm test`'s lint step (scripts/test.sh): runs ESLint over the tree (eslint.config.js) and writes the result as a
// one-point TAP file, so scripts/tap-summary.mjs counts a lint failure in the final `N passed, N failed` line
// like any failed test. Errors print in eslint's own format; warnings (line and function length) are only
// counted here, `npm run lint` lists them.
// Usage: lint-tap.mjs OUT.tap — exits 1 when ESLint reports an error or cannot run at all.
import { writeFileSync } from 'node:fs';
import { ESLint } from 'eslint';

const out = process.argv[2];
if (!out) {
  process.stderr.write('usage: lint-tap.mjs OUT.tap\n');
  process.exit(2);
}

/** @param {boolean} ok @param {string} description @param {string} [detail] */
function writeTap(ok, description, detail = '') {
  const diag = detail ? `  ---\n  message: ${JSON.stringify(detail.slice(0, 4000))}\n  ...\n` : '';
  writeFileSync(out, `TAP version 14\n${ok ? 'ok' : 'not ok'} 1 - ${description}\n${diag}1..1\n# { total: 1, ${ok ? 'pass: 1' : 'fail: 1'} }\n`);
}

const started = Date.now();
try {
  const eslint = new ESLint({ cwd: process.cwd() });
  const results = await eslint.lintFiles(['.']);
  const errors = results.reduce((n, r) => n + r.errorCount + r.fatalErrorCount, 0);
  const warnings = results.reduce((n, r) => n + r.warningCount, 0);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const summary = `eslint: ${errors} errors, ${warnings} warnings in ${results.length} files (${seconds} s; \`npm run lint\` lists the warnings)`;
  if (errors > 0) {
    const formatter = await eslint.loadFormatter('stylish');
    const text = await formatter.format(ESLint.getErrorResults(results));
    process.stdout.write(`${text}\n`);
  }
  process.stdout.write(`${summary}\n`);
  writeTap(errors === 0, summary);
  process.exit(errors === 0 ? 0 : 1);
} catch (err) {
  // A broken config or a parser crash is a failed lint, not a skipped one.
  const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stdout.write(`eslint could not run: ${message}\n`);
  writeTap(false, 'eslint could not run (see the message)', message);
  process.exit(1);
}
