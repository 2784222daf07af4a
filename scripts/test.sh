#!/usr/bin/env bash
# The project's one test command (README: `npm install && npm test`; .ci/run runs exactly that).
# Runs every tap file and ends with one line `N passed, N failed` taken from tap's own counts.
set -u
cd "$(dirname "$0")/.."
mkdir -p .tap
npx tap --reporter=tap "$@" 2>&1 | tee .tap/ci-run.tap
rc=${PIPESTATUS[0]}
node scripts/tap-summary.mjs .tap/ci-run.tap "$rc"
