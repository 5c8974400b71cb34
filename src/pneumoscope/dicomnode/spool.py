"""The node's on-disk state: every instance and result lives in a file until the PACS confirms it.

Layout of ``--spool DIR``::

    incoming/<key>.dcm          received; written (fsync + rename) before C-STORE success
    scored/<key>.dcm, .json     scored; its results wait in the outbox (the JSON holds P and timings)
    outbox/<dest>/<key>.sr.dcm  results for one destination; removed when that destination confirms
    outbox/<dest>/<key>.sc.dcm
    failed/<key>.dcm, .txt      could not be scored (e.g. undecodable pixels); kept for a person
    stats.json                  counters, for ``pneumoscope listen --status``

A file moves from one state to the next with ``os.replace``, so after a crash (even
``kill -9``) every instance is in exactly one folder, and a restart resumes from there:
``incoming/`` is scored again (the result UIDs are deterministic, so a re-scored instance
overwrites its own results), and ``scored/`` entries whose outbox files are all gone are
released. ``<key>`` is the SOP Instance UID (or a hash of it when it holds other characters).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_UID_RE = re.compile(r"^[0-9.]{1,64}$")
STATES = ("incoming", "scored", "outbox", "failed")


def key_of(sop_instance_uid: str) -> str:
    """A file-name-safe key for an instance."""
    uid = str(sop_instance_uid).strip().rstrip("\x00")
    return uid if _UID_RE.match(uid) else "h" + hashlib.sha256(uid.encode("utf-8")).hexdigest()[:40]


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temp file, fsync, rename, fsync the folder. All or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    """The folders of one spool, plus counters that survive restarts."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            for name in STATES:
                (self.root / name).mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"{self.root}: the spool folder is not writable ({exc.strerror or exc})") from None
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter(read_stats(self.root))
        for name in ("incoming", "scored"):  # temp files of writes a crash interrupted
            for tmp in (self.root / name).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ paths

    def incoming(self, key: str) -> Path:
        return self.root / "incoming" / f"{key}.dcm"

    def scored(self, key: str) -> Path:
        return self.root / "scored" / f"{key}.dcm"

    def scored_info(self, key: str) -> Path:
        return self.root / "scored" / f"{key}.json"

    def outbox_dir(self, slug: str) -> Path:
        d = self.root / "outbox" / slug
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ------------------------------------------------------------------ transitions

    def receive(self, key: str, data: bytes) -> Path:
        """Make a received instance durable (before C-STORE success is answered)."""
        path = self.incoming(key)
        durable_write(path, data)
        return path

    def pending(self) -> list[Path]:
        """Received instances not yet scored, oldest first."""
        files = [p for p in (self.root / "incoming").glob("*.dcm")]
        return sorted(files, key=_mtime)

    def mark_scored(self, key: str, info: dict[str, Any]) -> None:
        """Record the score, then move the instance from ``incoming/`` to ``scored/``."""
        durable_write(self.scored_info(key), json.dumps(info).encode("utf-8"))
        os.replace(self.incoming(key), self.scored(key))
        _fsync_dir(self.root / "scored")

    def mark_failed(self, key: str, reason: str) -> None:
        """Keep an instance that cannot be scored in ``failed/``, with the reason beside it."""
        durable_write(self.root / "failed" / f"{key}.txt", (reason + "\n").encode("utf-8"))
        src = self.incoming(key)
        if src.exists():
            os.replace(src, self.root / "failed" / f"{key}.dcm")

    def read_info(self, key: str) -> dict[str, Any]:
        """What :meth:`mark_scored` recorded for a scored instance (empty if unreadable)."""
        try:
            info = json.loads(self.scored_info(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def release(self, key: str) -> None:
        """Delete a scored instance whose results every destination confirmed."""
        self.scored(key).unlink(missing_ok=True)
        self.scored_info(key).unlink(missing_ok=True)

    def scored_keys(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "scored").glob("*.dcm"))

    # ------------------------------------------------------------------ counters

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter and persist the counters (atomically)."""
        with self._lock:
            self.stats[name] += n
            durable_write(self.root / "stats.json", json.dumps(dict(self.stats), sort_keys=True).encode("utf-8"))


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def read_stats(root: str | Path) -> dict[str, int]:
    try:
        data = json.loads((Path(root) / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)}


def spool_status(root: str | Path) -> dict[str, Any]:
    """Depths of a spool's folders and its counters (what ``listen --status`` prints).

    Raises:
        ConfigError: ``root`` is not a spool folder.
    """
    r = Path(root)
    if not (r / "incoming").is_dir():
        raise ConfigError(f"{r}: not a pneumoscope spool (no incoming/ folder); expected the --spool of `pneumoscope listen`")
    outbox: dict[str, int] = {}
    for d in sorted((r / "outbox").glob("*")):
        if d.is_dir():
            outbox[d.name] = len({p.name.split(".sr.")[0].split(".sc.")[0] for p in d.glob("*.dcm")})
    return {
        "spool": str(r),
        "incoming": len(list((r / "incoming").glob("*.dcm"))),
        "scored_awaiting_delivery": len(list((r / "scored").glob("*.dcm"))),
        "failed": len(list((r / "failed").glob("*.dcm"))),
        "outbox": outbox,
        "counters": read_stats(r),
    }
