"""One outbox per destination: result files on disk, delivered with retries and backoff.

A result file is deleted only after the destination confirmed it (C-STORE success, or STOW-RS
without it in the Failed SOP Sequence). While a destination is down the outbox waits
``retry_min * 2**n`` seconds (capped at ``retry_max``) between attempts and keeps every file,
so a PACS that is down for an hour receives everything when it comes back. A file the
destination refuses on its own is retried on the same schedule without holding up the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from .destinations import Destination, DestinationDown, Sender
from .spool import Spool, durable_write

logger = logging.getLogger("pneumoscope.dicomnode")

KINDS = ("sr", "sc")


def _key_of_file(p: Path) -> str:
    # "<key>.<kind>.dcm"; keys are UIDs (dots) so split from the right.
    return p.name.rsplit(".", 2)[0]


class Outbox:
    """Result files for one destination and the thread that delivers them."""

    def __init__(
        self,
        spool: Spool,
        dest: Destination,
        sender: Sender,
        *,
        on_delivered: Callable[[str, "Outbox"], None],
        retry_min: float = 2.0,
        retry_max: float = 300.0,
        batch: int = 16,
    ) -> None:
        self.spool = spool
        self.dest = dest
        self.sender = sender
        self.dir = spool.outbox_dir(dest.slug)
        self.on_delivered = on_delivered
        self.retry_min = max(0.01, float(retry_min))
        self.retry_max = max(self.retry_min, float(retry_max))
        self.batch = max(1, batch)
        self.lock = threading.Lock()  # a key's files appear together (see put / _ready)
        self.wake = threading.Event()
        self.failures = 0  # consecutive DestinationDown
        self.attempts: dict[str, int] = defaultdict(int)  # per key, this process's lifetime
        self._not_before: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ files

    def put(self, key: str, objects: dict[str, bytes]) -> None:
        """Queue a key's result objects (``{"sr": bytes, "sc": bytes}``) durably."""
        with self.lock:
            for kind, data in objects.items():
                durable_write(self.dir / f"{key}.{kind}.dcm", data)
            self._not_before.pop(key, None)
        self.wake.set()

    def holds(self, key: str) -> bool:
        return any((self.dir / f"{key}.{kind}.dcm").exists() for kind in KINDS)

    def depth(self) -> int:
        """Instances with results still waiting here."""
        return len({_key_of_file(p) for p in self.dir.glob("*.dcm")})

    def _ready(self) -> tuple[list[str], dict[str, list[Path]], float]:
        """Keys ready to send (oldest first), their files, and seconds until the next backed-off one."""
        now = time.monotonic()
        with self.lock:
            files = [p for p in self.dir.glob("*.dcm")]
        groups: dict[str, list[Path]] = defaultdict(list)
        for p in files:
            groups[_key_of_file(p)].append(p)
        mtimes = {k: min(_mtime(p) for p in v) for k, v in groups.items()}
        waits = [t - now for k, t in self._not_before.items() if k in groups and t > now]
        ready = [k for k in sorted(groups, key=mtimes.__getitem__) if self._not_before.get(k, 0.0) <= now]
        return ready, groups, min(waits) if waits else 1.0

    # ------------------------------------------------------------------ delivery

    def backoff(self, n: int) -> float:
        return min(self.retry_max, self.retry_min * 2 ** max(0, n - 1))

    def deliver_once(self) -> float:
        """Send one batch. Returns how long to wait before the next attempt (0: more is ready)."""
        ready, groups, wait = self._ready()
        if not ready:
            return wait
        keys = ready[: self.batch]
        files = sorted((p for k in keys for p in groups[k]), key=lambda p: p.name)
        for k in keys:
            self.attempts[k] += 1
        try:
            refused = self.sender.send(files)
        except Exception as exc:  # noqa: BLE001 - DestinationDown or an unexpected failure: keep the files
            self.failures += 1
            delay = self.backoff(self.failures)
            why = str(exc) if isinstance(exc, DestinationDown) else f"{type(exc).__name__}: {exc}"
            logger.warning(
                "destination %s unavailable (%s); %d instance(s) waiting; retry %d in %.1fs",
                self.dest.url, why, len(groups), self.failures, delay,
            )
            return delay
        if self.failures:
            logger.info("destination %s is back after %d failed attempt(s)", self.dest.url, self.failures)
        self.failures = 0
        for k in keys:
            bad = [p for p in groups[k] if p in refused]
            with self.lock:
                for p in groups[k]:
                    if p not in refused:
                        p.unlink(missing_ok=True)
            if bad:
                delay = self.backoff(self.attempts[k])
                self._not_before[k] = time.monotonic() + delay
                logger.warning(
                    "instance %s: %s refused %s (%s); retry in %.1fs",
                    k, self.dest.url, ", ".join(p.name.split(".")[-2] for p in bad), refused[bad[0]], delay,
                )
            else:
                self._not_before.pop(k, None)
                self.on_delivered(k, self)
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wake.clear()
            wait = self.deliver_once()
            if wait > 0:
                # A put() wakes an idle outbox at once; a backing-off one waits its delay out.
                if self.failures:
                    self._stop.wait(wait)
                else:
                    self.wake.wait(min(wait, 1.0))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"outbox-{self.dest.slug}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
