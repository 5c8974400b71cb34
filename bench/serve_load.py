"""Load benchmark for ``pneumoscope serve``: N concurrent clients for a bounded time on loopback.

Starts the server in a subprocess (as ``pneumoscope serve`` would run), lets ``--clients``
clients post phantom chest X-rays to ``/api/predict`` (or ``/api/explain``) back to back for
``--duration`` seconds while a prober times ``/healthz``, and reports requests/s, latency
percentiles and errors. An answer is an error unless it is HTTP 200 with the same
probability the first answer for that image had (a wrong answer under load is an error).
Exits 1 when there was any error.

    python bench/serve_load.py --checkpoint runs/seed/best.ckpt --clients 64 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _phantoms(n: int, size: int) -> list[bytes]:
    from PIL import Image

    from pneumoscope.data.synth import make_phantom

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(make_phantom(rng, size=size, label=i % 2).image).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def _run(args: argparse.Namespace, base: str, images: list[bytes]) -> dict:
    import httpx2

    limits = httpx2.Limits(max_connections=args.clients + 2, max_keepalive_connections=args.clients + 2)
    latencies: list[float] = []
    health: list[float] = []
    errors: list[str] = []
    reference: dict[int, float] = {}
    path = f"/api/{args.endpoint}"
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        for k, img in enumerate(images):  # reference answers, one at a time
            r = await client.post("/api/predict", files={"file": (f"{k}.png", img, "image/png")})
            r.raise_for_status()
            reference[k] = r.json()["prob_pneumonia"]
        start = time.monotonic()
        deadline = start + args.duration

        async def worker(c: int) -> None:
            i = c
            while time.monotonic() < deadline:
                k = i % len(images)
                t0 = time.monotonic()
                try:
                    r = await client.post(path, files={"file": (f"{k}.png", images[k], "image/png")})
                    ok = r.status_code == 200 and abs(r.json()["prob_pneumonia"] - reference[k]) < 1e-4
                    if not ok:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.monotonic() - t0)
                i += args.clients

        async def prober() -> None:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                r = await client.get("/healthz")
                health.append(time.monotonic() - t0)
                if r.status_code != 200:
                    errors.append(f"healthz HTTP {r.status_code}")
                await asyncio.sleep(0.25)

        await asyncio.gather(prober(), *(worker(c) for c in range(args.clients)))
        elapsed = time.monotonic() - start
    return {
        "endpoint": path,
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {"p50": round(_pct(latencies, 50), 1), "p95": round(_pct(latencies, 95), 1),
                       "max": round(_pct(latencies, 100), 1)},
        "healthz_ms": {"n": len(health), "p50": round(_pct(health, 50), 1), "p95": round(_pct(health, 95), 1),
                       "max": round(_pct(health, 100), 1)},
        "first_errors": errors[:5],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--endpoint", choices=["predict", "explain"], default="predict")
    ap.add_argument("--image-size", type=int, default=256, help="side of the phantom PNGs uploaded")
    ap.add_argument("--images", type=int, default=8, help="distinct phantoms cycled through")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-c", "from pneumoscope.cli import main; main()", "serve",
        "--checkpoint", str(args.checkpoint), "--port", str(port), "--device", args.device,
        "--precision", args.precision, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--max-pending", str(max(256, args.clients * 2)),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    try:
        import httpx2

        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                print(server.stderr.read().decode(errors="replace"), file=sys.stderr)
                return 2
            try:
                if httpx2.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("server did not start", file=sys.stderr)
                return 2
            time.sleep(0.2)
        model = httpx2.get(base + "/api/model").json()
        result = asyncio.run(_run(args, base, _phantoms(args.images, args.image_size)))
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    result["server"] = {"model": model["id"], "device": model["device"], "precision": model["precision"],
                        "batch_size": args.batch_size, "workers": args.workers}
    result["host"] = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
