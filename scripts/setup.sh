#!/usr/bin/env bash
# Create .venv and install pneumoscope (editable, with test extras) when needed.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || { echo "error: no python3 found; install Python 3.10-3.12" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv with $PY (first run installs PyTorch; a minute or two)" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >&2
fi
stamp=.venv/.pneumoscope-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q -e '.[test,docs]' >&2
  echo "$want" > "$stamp"
fi
