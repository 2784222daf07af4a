// Static checks: the whole tree type-checks under the strict tsconfig (tap's TypeScript loader only transpiles),
// and the lint config (eslint.config.js, run over the tree by `npm test` before tap) enforces the layer boundaries.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';

const root = fileURLToPath(new URL('..', import.meta.url));
t.test('tsc -p tsconfig.json reports no error', (t) => {
  const r = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { cwd: root, encoding: 'utf8', timeout: 200_000 });
  t.equal(r.status, 0, r.stdout + r.stderr);
  t.end();
});

t.test('eslint.config.js refuses imports across the layer boundaries and console output in the product', async (t) => {
  // The boundary rules need no types; the type-aware rules are switched off so sources that exist only here can be linted.
  const eslint = new ESLint({
    cwd: root,
    overrideConfig: {
      languageOptions: { parserOptions: { projectService: false, project: null } },
      rules: { '@typescript-eslint/no-floating-promises': 'off', '@typescript-eslint/no-misused-promises': 'off' },
    },
  });
  const lint = async (filePath: string, code: string): Promise<string[]> => {
    const [result] = await eslint.lintText(code, { filePath });
    return (result?.messages ?? []).map((m) => `${m.line}:${m.ruleId ?? 'fatal'}`);
  };
  t.same(await lint('raft/probe.ts', [
    "import { readFileSync } from 'node:fs';",
    "import { startNode } from '../src/index.js';",
    "import fs from 'fs';",
    "import type { RaftStorage } from '../store/index.js';",
    "import { assert } from './errors.js';",
    'export const used = [readFileSync, startNode, fs, assert];',
    'export type Storage = RaftStorage;',
  ].join('\n')), ['1:no-restricted-imports', '2:no-restricted-imports', '3:no-restricted-imports', '4:no-restricted-imports'],
  'raft/: node: and bare built-ins, src/ and store/ are refused; its own modules are not');
  t.same(await lint('store/wal/probe.ts', "import { log } from '../../src/log.js';\nimport type { Entry } from '../../raft/index.js';\nexport const used: [unknown, Entry?] = [log];\n"),
    ['1:no-restricted-imports'], 'store/ (two levels down): src/ is refused, raft/ is allowed');
  t.same(await lint('transport/probe.ts', "import { log } from '../src/log.js';\nimport { connect } from 'node:tls';\nexport const used = [log, connect];\n"),
    ['1:no-restricted-imports'], 'transport/: src/ is refused, node: is allowed');
  t.same(await lint('src/probe.ts', "console.log('hello');\n"), ['1:no-console'], 'src/: console output is refused (pino logs, src/cli/output.ts prints)');
  t.same(await lint('src/cli/output.ts', "console.log('hello');\n"), [], 'src/cli/output.ts is the one place that prints');
});
