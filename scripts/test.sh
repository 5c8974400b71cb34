#!/usr/bin/env bash
# Quick start, tests: set up if needed, then run the default test suite (under 5 minutes).
# Extra flags go to pytest. Pytest exits 5 when it collects no tests: for the whole default
# run that is not a failure of the suite, but a selection (-k, -m, paths) that matches nothing
# is a mistake (a typo, a renamed test) and fails.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  if [ "$#" -eq 0 ]; then
    echo "no tests collected"
    rc=0
  else
    echo "error: no tests matched the selection: $*" >&2
  fi
fi
exit "$rc"
