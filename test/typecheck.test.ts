// The whole tree type-checks under the strict tsconfig (tap's TypeScript loader only transpiles).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
t.test('tsc -p tsconfig.json reports no error', (t) => {
  const r = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { cwd: root, encoding: 'utf8', timeout: 200_000 });
  t.equal(r.status, 0, r.stdout + r.stderr);
  t.end();
});
