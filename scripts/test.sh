#!/usr/bin/env bash
# The project's one test command (README: `npm install && npm test`; .ci/run runs exactly that).
# Runs every tap file and ends with one line `N passed, N failed` taken from tap's own counts.
#
# Three phases: ESLint (one test point), every file except the multi-process fault tests, two files at a time; then test/fault alone.
# The fault tests time process boots against issue 7's "healthy within 5 s of the second node starting",
# and a Node boot is CPU-bound module loading: sharing the two cores with another test file tripled it.
# Arguments (a file, tap flags) run one plain tap invocation instead.
set -u
cd "$(dirname "$0")/.."
mkdir -p .tap
if [ "$#" -gt 0 ]; then
  npx tap --reporter=tap "$@" 2>&1 | tee .tap/ci-run.tap
  rc=${PIPESTATUS[0]}
  node scripts/tap-summary.mjs "$rc" .tap/ci-run.tap
  exit $?
fi
# Lint first (eslint.config.js: layer boundaries, floating promises): a failure counts as one failed test below.
node scripts/lint-tap.mjs .tap/ci-lint.tap
rc0=$?
npx tap --reporter=tap --exclude='test/fault/**' 2>&1 | tee .tap/ci-run.tap
rc1=${PIPESTATUS[0]}
npx tap --reporter=tap --jobs=1 test/fault/*.test.ts 2>&1 | tee .tap/ci-fault.tap
rc2=${PIPESTATUS[0]}
rc=$rc0
[ "$rc" -eq 0 ] && rc=$rc1
[ "$rc" -eq 0 ] && rc=$rc2
node scripts/tap-summary.mjs "$rc" .tap/ci-lint.tap .tap/ci-run.tap .tap/ci-fault.tap
