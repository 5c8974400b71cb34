#!/usr/bin/env bash
# Quick start, main job: set up if needed, then synth → train → evaluate → explain → report.
# Writes demo-out/report.html (replacing an earlier demo there). Extra flags go to `pneumoscope demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pneumoscope demo --out demo-out --replace "$@"
