"""Abuse benchmark for ``pneumoscope serve``: PNG decompression bombs from many clients at once.

Starts ``pneumoscope serve`` in a subprocess (on ``--checkpoint``, or on a randomly
initialised demo-sized model saved to a temporary folder), measures its idle resident
memory, then for ``--duration`` seconds lets ``--clients`` clients post ``--bombs`` solid-grey
PNGs of ``--side`` x ``--side`` pixels per request (about 120 KB each on the wire for
10,000 px), back to back, while from a separate process (so that a client event loop busy
sending bombs does not inflate the figures)

* a prober times ``GET /healthz`` every ``--health-every`` seconds, and
* a normal client sends one ordinary chest X-ray JPEG to ``/api/predict`` every
  ``--normal-every`` seconds, honouring ``Retry-After`` on 503 as a well-behaved client does;
  its latency is counted from the first attempt to the answer.

It reports the CPU, idle and peak resident memory of the server (the peak is the kernel's
high-water mark, VmHWM, reset after the idle measurement), the worst ``/healthz`` latency,
the normal request's latencies, and a histogram of the bomb requests' answers. Goals (exit
status 1 when one is missed): peak <= idle + ``--rss-goal-gb``; ``/healthz`` always under 1 s;
every normal request answered 200 within 10 s; bomb requests answered only with JSON 413,
503 or 200, never a 5xx, a non-JSON answer or a reset connection.

    python bench/serve_abuse.py                       # the issue's attack: 8 clients x 16 bombs, 60 s
    python bench/serve_abuse.py --bombs 1 --duration 60   # bombs the budget admits: decoded for real
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def cpu_description() -> dict:
    """CPU model, logical cores and the SIMD/matrix flags that decide the precision path."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return {"model": model, "logical_cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def bomb_png(side: int) -> bytes:
    """A solid-grey ``side`` x ``side`` 8-bit PNG: ``side**2`` pixels in a few hundred KB at most."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def normal_jpeg(width: int = 1500, height: int = 1200) -> bytes:
    """An ordinary chest-X-ray-sized JPEG (a synthetic phantom, scaled up)."""
    from PIL import Image

    from pneumoscope.data.synth import make_phantom

    phantom = make_phantom(np.random.default_rng(0), size=256, label=1).image
    buf = io.BytesIO()
    Image.fromarray(phantom).resize((width, height), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def random_checkpoint(folder: Path) -> Path:
    """A demo-sized model (vgg_small, 128 px) with random weights: same serving path, no training."""
    import torch

    from pneumoscope.checkpoint import save_checkpoint
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import create_model, get_model_info

    torch.manual_seed(0)
    model = create_model("vgg_small", weights=None)
    return save_checkpoint(folder / "random.ckpt", model, architecture="vgg_small", preprocessing=Preprocessing(128),
                           target_layer=get_model_info("vgg_small").default_layer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


class RssSampler(threading.Thread):
    """Samples the server's VmRSS every 50 ms (the timeline; VmHWM gives the exact peak)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), _status_mb(self.pid, "VmRSS")))
            except (OSError, KeyError):
                return
            self.stop.wait(0.05)


async def bombers(args: argparse.Namespace, base: str, bomb: bytes, deadline: float) -> dict:
    """The attack: ``--clients`` clients posting ``--bombs`` bombs per request, back to back."""
    import httpx2

    statuses: collections.Counter[str] = collections.Counter()
    latency: list[float] = []
    files = [("file", (f"bomb{i}.png", bomb, "image/png")) for i in range(args.bombs)]

    async def bomber() -> None:
        # One connection per client, like separate attacking machines.
        async with httpx2.AsyncClient(base_url=base, timeout=args.request_timeout) as client:
            while time.time() < deadline:
                t0 = time.monotonic()
                try:
                    r = await client.post("/api/predict", files=files)
                    is_json = r.headers.get("content-type", "").startswith("application/json")
                    statuses[f"{r.status_code}" + ("" if is_json else " (not JSON)")] += 1
                except Exception as exc:  # noqa: BLE001 - a reset or timeout is a result to count
                    statuses[f"{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                latency.append(time.monotonic() - t0)

    await asyncio.gather(*(bomber() for _ in range(args.clients)))
    return {"statuses": dict(sorted(statuses.items())), "latency": latency}


def _bomber_process(args: argparse.Namespace, base: str, bomb: bytes, deadline: float, queue) -> None:
    queue.put(asyncio.run(bombers(args, base, bomb, deadline)))


async def observers(args: argparse.Namespace, base: str, normal: bytes, deadline: float) -> dict:
    """The /healthz prober and the well-behaved client, in a process of their own.

    Kept apart from the attacking clients so that their measurements are the server's
    delays, not those of a client event loop busy sending bombs.
    """
    import httpx2

    health: list[float] = []
    health_failures: list[str] = []
    normal_runs: list[dict] = []

    async def prober() -> None:
        async with httpx2.AsyncClient(base_url=base, timeout=10) as client:
            while time.time() < deadline:
                t0 = time.monotonic()
                try:
                    r = await client.get("/healthz")
                    if r.status_code != 200:
                        health_failures.append(f"HTTP {r.status_code}")
                except Exception as exc:  # noqa: BLE001
                    health_failures.append(type(exc).__name__)
                health.append(time.monotonic() - t0)
                await asyncio.sleep(args.health_every)

    async def normal_client() -> None:
        await asyncio.sleep(min(2.0, args.duration / 4))  # let the attack build up first
        async with httpx2.AsyncClient(base_url=base, timeout=args.request_timeout) as client:
            while time.time() < deadline:
                t0, tries, status = time.monotonic(), 0, None
                while True:
                    tries += 1
                    try:
                        r = await client.post("/api/predict", files={"file": ("chest.jpg", normal, "image/jpeg")})
                        status = r.status_code
                    except Exception as exc:  # noqa: BLE001
                        status = type(exc).__name__
                        break
                    if status != 503 or time.monotonic() - t0 > args.request_timeout:
                        break
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                normal_runs.append({"latency_s": round(time.monotonic() - t0, 3), "status": status, "tries": tries})
                await asyncio.sleep(max(0.0, args.normal_every - (time.monotonic() - t0)))

    await asyncio.gather(prober(), normal_client())
    return {"health": health, "health_failures": health_failures, "normal": normal_runs}


async def attack(args: argparse.Namespace, base: str, bomb: bytes, normal: bytes) -> dict:
    import multiprocessing

    deadline = time.time() + args.duration
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_bomber_process, args=(args, base, bomb, deadline, queue), daemon=True)
    proc.start()
    seen = await observers(args, base, normal, deadline)
    attacked = await asyncio.get_running_loop().run_in_executor(None, queue.get, True, args.request_timeout + 30)
    proc.join(10)
    return {"statuses": attacked["statuses"], "bomb_latency": attacked["latency"], **seen}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="default: a random vgg_small (128 px) saved to a temp folder")
    ap.add_argument("--clients", type=int, default=8, help="attacking clients, each on its own connection")
    ap.add_argument("--bombs", type=int, default=16, help="PNG bombs per request")
    ap.add_argument("--side", type=int, default=10_000, help="side of each solid-grey PNG bomb, px")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of attack")
    ap.add_argument("--health-every", type=float, default=0.25, help="seconds between /healthz probes")
    ap.add_argument("--normal-every", type=float, default=5.0, help="seconds between normal JPEG predictions")
    ap.add_argument("--request-timeout", type=float, default=60.0, help="client timeout per request, s")
    ap.add_argument("--rss-goal-gb", type=float, default=2.0, help="goal: peak RSS within idle + this")
    ap.add_argument("--workers", type=int, default=2, help="server --workers (decode threads)")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `pneumoscope serve` (repeat), e.g. --serve-arg=--workers=3")
    args = ap.parse_args()

    cpu = cpu_description()
    flags = " ".join(cpu["flags"]) or "none of interest"
    print(f"CPU: {cpu['model']}, {cpu['logical_cores']} logical cores, flags: {flags}")
    bomb, normal = bomb_png(args.side), normal_jpeg()
    print(f"bomb: {args.side}x{args.side} solid-grey PNG, {len(bomb) / 1e3:.0f} KB; {args.bombs} per request "
          f"= {args.bombs * len(bomb) / 1e6:.2f} MB on the wire, {args.bombs * args.side**2 / 1e6:,.0f} megapixels")

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(Path(tmp))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-c", "from pneumoscope.cli import main; main()", "serve",
               "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu",
               "--workers", str(args.workers), *args.serve_arg]
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            result = _run(args, server, base, bomb, normal)
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        log_tail = log_path.read_text(errors="replace").splitlines()
        tracebacks = sum("Traceback" in line for line in log_tail)
    if result is None:
        print("\n".join(log_tail[-30:]), file=sys.stderr)
        return 2
    result["server_tracebacks"] = tracebacks
    result["cpu"] = cpu
    result["command"] = " ".join(["python", "bench/serve_abuse.py", *sys.argv[1:]])
    print(json.dumps(result, indent=2))
    return 0 if all(result["goals"].values()) else 1


def _run(args: argparse.Namespace, server: subprocess.Popen, base: str, bomb: bytes, normal: bytes) -> dict | None:
    import httpx2

    start = time.monotonic()
    while True:
        if server.poll() is not None:
            return None
        try:
            if httpx2.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx2.HTTPError:
            pass
        if time.monotonic() - start > 180:
            return None
        time.sleep(0.2)
    # Warm up (the first model call allocates its buffers), then measure idle.
    warm = httpx2.post(base + "/api/predict", files={"file": ("chest.jpg", normal, "image/jpeg")}, timeout=60)
    warm.raise_for_status()
    time.sleep(1.0)
    idle = float(np.median([(_status_mb(server.pid, "VmRSS"), time.sleep(0.1))[0] for _ in range(10)]))
    with open(f"/proc/{server.pid}/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark: the peak below is the attack's
    sampler = RssSampler(server.pid)
    sampler.start()
    t0 = time.monotonic()
    out = asyncio.run(attack(args, base, bomb, normal))
    elapsed = time.monotonic() - t0
    time.sleep(1.0)
    sampler.stop.set()
    sampler.join()
    peak = _status_mb(server.pid, "VmHWM")
    after = _status_mb(server.pid, "VmRSS")
    health, normal_runs = out["health"], out["normal"]
    bad_status = {k: v for k, v in out["statuses"].items() if k not in ("200", "413", "503")}
    normal_worst = max((r["latency_s"] for r in normal_runs), default=float("nan"))
    result = {
        "attack": {"clients": args.clients, "bombs_per_request": args.bombs, "side": args.side,
                   "bomb_kb": round(len(bomb) / 1e3, 1), "seconds": round(elapsed, 1),
                   "bomb_requests": sum(out["statuses"].values()),
                   "bomb_latency_p50_s": round(float(np.median(out["bomb_latency"])), 3)
                   if out["bomb_latency"] else None},
        "statuses": out["statuses"],
        "rss_mb": {"idle": round(idle), "peak": round(peak), "peak_over_idle": round(peak - idle),
                   "sampled_max": round(max((m for _, m in sampler.samples), default=0)), "after": round(after)},
        "healthz_s": {"n": len(health), "p50": round(float(np.median(health)), 4) if health else None,
                      "max": round(max(health), 4) if health else None, "failures": out["health_failures"][:5]},
        "normal_requests": normal_runs,
        "goals": {
            "peak_rss_within_idle_plus_goal": peak - idle <= args.rss_goal_gb * 1024,
            "healthz_under_1s": bool(health) and max(health) < 1.0 and not out["health_failures"],
            "normal_request_200_within_10s": bool(normal_runs) and all(
                r["status"] == 200 and r["latency_s"] < 10.0 for r in normal_runs),
            "bombs_only_json_413_503_200": not bad_status,
        },
    }
    print(f"idle {idle:.0f} MB, peak {peak:.0f} MB (+{peak - idle:.0f} MB), healthz max "
          f"{result['healthz_s']['max']} s, normal worst {normal_worst} s, statuses {out['statuses']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(main())
