"""How long the quick-start demo takes on this CPU, and whether it keeps its figures.

Runs ``python -m pneumoscope demo`` as a subprocess (what ``bash scripts/demo.sh`` runs after
set-up), once per seed, and prints the CPU model and its extensions (AVX2, AVX-512,
AVX512-BF16, AMX) beside the wall time, the CPU time (user + sys of the subprocess, which on a
shared machine says what the demo cost when the wall clock is stretched by other work), the
time of each step (from the demo's ``demo.json``) and the demo's figures. It then checks the
goals: at most ``--max-seconds`` (90) wall, test accuracy >= 0.95, pointing game >= 0.85 and
a shortcut section whose model is caught (accuracy drops without the marker).

    python bench/demo_speed.py                          # this CPU as it is, --precision auto
    python bench/demo_speed.py --emulate-avx2           # an AVX2-only CPU on a newer one (fp32)
    python bench/demo_speed.py --seeds 0 1 2 --json demo-speed.json

``--emulate-avx2`` caps oneDNN, ATen and MKL at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``) and runs ``--precision fp32``,
which is what ``auto`` resolves to on a CPU without AMX or AVX512-BF16. It emulates the
instruction set, not the clock or the caches of an older CPU. Exit status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from pneumoscope.runtime import AVX2_ONLY_ENV, cpu_isa, cpu_model  # noqa: E402

GOALS = {"accuracy": 0.95, "pointing": 0.85}


def cpu_line() -> str:
    isa = cpu_isa()
    flags = "  ".join(f"{k} {'yes' if v else 'no'}" for k, v in isa.items())
    return f"{cpu_model()} | {len(os.sched_getaffinity(0))} cores | {flags}"


def run_once(seed: int, precision: str, env: dict[str, str], out: Path, extra: list[str]) -> dict:
    """One demo in a subprocess; wall and CPU seconds of the whole command plus its demo.json."""
    cmd = [sys.executable, "-m", "pneumoscope", "demo", "--out", str(out), "--replace", "--seed", str(seed),
           "--precision", precision, "--no-progress", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"demo failed (exit {proc.returncode}): {' '.join(cmd)}")
    doc = json.loads((out / "demo.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**doc, "seed": seed, "wall": round(wall, 1), "cpu": round(cpu, 1)}


def check(r: dict, max_seconds: float) -> list[str]:
    """The goals this run misses (empty: all met)."""
    missed = []
    if r["wall"] > max_seconds:
        missed.append(f"wall {r['wall']:.0f} s > {max_seconds:.0f} s")
    for key, goal in GOALS.items():
        if r.get(key) is None or r[key] < goal:
            missed.append(f"{key} {r.get(key)} < {goal}")
    sc = r.get("shortcut")
    if not sc:
        missed.append("no shortcut section")
    elif not sc["accuracy_marked"] - sc["accuracy_clean"] >= 0.2 or not sc["marker_mass"] > sc["marker_area"]:
        missed.append("the shortcut model was not caught (accuracy drop < 20 points or no mass near the marker)")
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--precision", default=None, help="auto | fp32 | bf16 (default: auto; fp32 with --emulate-avx2)")
    ap.add_argument("--emulate-avx2", action="store_true", help="cap oneDNN/ATen/MKL at AVX2 and run fp32")
    ap.add_argument("--max-seconds", type=float, default=90.0)
    ap.add_argument("--out", type=Path, default=None, help="demo output folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    if args.emulate_avx2:
        env.update(AVX2_ONLY_ENV)
    precision = args.precision or ("fp32" if args.emulate_avx2 else "auto")
    mode = "emulated AVX2 (oneDNN/ATen/MKL capped)" if args.emulate_avx2 else "native"
    print(f"CPU: {cpu_line()}")
    print(f"mode: {mode}, --precision {precision}, load average before: {os.getloadavg()[0]:.1f}")
    results, failed = [], False
    with tempfile.TemporaryDirectory(prefix="demo-speed-") as tmp:
        out = args.out or Path(tmp) / "demo-out"
        for seed in args.seeds:
            r = run_once(seed, precision, env, out, [])
            r["load_after"] = round(os.getloadavg()[0], 1)
            missed = check(r, args.max_seconds)
            failed |= bool(missed)
            steps = "  ".join(f"{k} {v['wall']:.0f}/{v['cpu']:.0f}" for k, v in r["steps"].items())
            sc = r["shortcut"] or {}
            print(f"seed {seed}: wall {r['wall']:.1f} s  cpu {r['cpu']:.1f} s  ({r['precision']}, {r['image_size']} px, "
                  f"{r['epochs']} epochs; load after {r['load_after']})")
            print(f"  steps wall/cpu s: {steps}")
            print(f"  accuracy {r['accuracy']:.3f}  ROC AUC {r['roc_auc']:.4f}  pointing {r['pointing']:.2f}  "
                  f"hotspot in lesion {r['hotspot_in_lesion']:.2f}  shortcut: {sc.get('accuracy_marked', 0):.0%} with "
                  f"marker, {sc.get('accuracy_clean', 0):.0%} without")
            print(f"  goals: {'met' if not missed else 'MISSED: ' + '; '.join(missed)}")
            results.append(r)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_line(), "mode": mode, "precision": precision, "runs": results},
                                        indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
