"""Settings of the web viewer / HTTP API (``pneumoscope serve``): one dataclass, flags override it."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..runtime import PRECISIONS

#: Environment variable read for the API key when ``--api-key`` is not given.
API_KEY_ENV = "PNEUMOSCOPE_API_KEY"

_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


@dataclass
class ServeSettings:
    """How the server binds, what it accepts, and how it runs the model.

    Attributes:
        host: Interface to bind. Anything but loopback requires ``api_key``.
        port: TCP port.
        api_key: When set, every ``/api/`` call must send it (``X-API-Key: KEY`` or
            ``Authorization: Bearer KEY``) or gets 401. ``None``: read ``PNEUMOSCOPE_API_KEY``
            (see :meth:`from_env`).
        device: ``auto``/``cpu``/``cuda[:N]``.
        precision: ``auto``/``fp32``/``bf16``.
        max_upload_mb: Largest request body (all files together), in MB (10**6 bytes).
            Enforced while the body streams in: a bigger upload is cut off with 413.
        max_inflight_upload_mb: Most request-body bytes held by all requests in progress
            together, in MB; a body chunk beyond it gets 503 with Retry-After. Bounds the
            memory of uploads, which each request holds until it is answered.
        max_megapixels: Largest image (width x height), checked from the header before
            any pixel is decoded (413).
        max_request_megapixels: Most pixels in one request, all its images together, read
            from their headers before any is decoded (413).
        max_inflight_megapixels: Most pixels of admitted images (being decoded, waiting for
            or in the model) in the whole server at once; a request that would pass it gets
            503 with Retry-After before any of its images is decoded. Bounds the decoding
            work queued, and so the wait of every request behind it.
        max_files: Most files in one request (413).
        batch_size: Most images per model call; waiting requests are batched up to it.
        workers: Threads that decode uploads and render overlays (the model itself runs
            on one thread of its own, so requests never interleave inside it).
        max_pending: Most images waiting for or in the model at once; beyond it requests
            get 503 with Retry-After instead of queueing without bound.
        show_patient: Return a DICOM upload's patient name and ID with its result (the
            viewer's DICOM panel shows them). Off by default: without it they never leave
            the server.
        max_connections: uvicorn's ``limit_concurrency``: beyond this many open connections
            or requests at once, uvicorn itself answers 503 (plain text) without calling
            the app.
        body_timeout: Seconds a request may take to deliver its whole body, counted from
            when its headers arrived; a slower upload gets 408 and the connection is closed
            (uvicorn itself bounds only idle keep-alive time).
        public_docs: With an API key set, still serve ``/docs`` and ``/openapi.json``
            without it (by default they need the key like ``/api/``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    device: str = "auto"
    precision: str = "auto"
    max_upload_mb: float = 50.0
    max_inflight_upload_mb: float = 400.0
    max_megapixels: float = 100.0
    max_request_megapixels: float = 256.0
    max_inflight_megapixels: float = 512.0
    max_files: int = 16
    batch_size: int = 16
    workers: int = 2
    max_pending: int = 256
    show_patient: bool = False
    max_connections: int = 64
    body_timeout: float = 60.0
    public_docs: bool = False

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_inflight_upload_bytes(self) -> int:
        return int(self.max_inflight_upload_mb * 1_000_000)

    @property
    def max_pixels(self) -> int:
        return max(1, int(self.max_megapixels * 1_000_000))

    @property
    def max_request_pixels(self) -> int:
        return max(1, int(self.max_request_megapixels * 1_000_000))

    @property
    def max_inflight_pixels(self) -> int:
        return max(1, int(self.max_inflight_megapixels * 1_000_000))

    def with_env_key(self) -> ServeSettings:
        """Take the API key from ``PNEUMOSCOPE_API_KEY`` when none was given."""
        if not self.api_key and os.environ.get(API_KEY_ENV):
            self.api_key = os.environ[API_KEY_ENV]
        return self

    def validate(self) -> ServeSettings:
        """Check every value; raises ConfigError naming the flag to fix."""
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: expected 0-65535")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        for flag, value in (
            ("--max-upload-mb", self.max_upload_mb), ("--max-megapixels", self.max_megapixels),
            ("--max-inflight-upload-mb", self.max_inflight_upload_mb),
            ("--max-request-megapixels", self.max_request_megapixels),
            ("--max-inflight-megapixels", self.max_inflight_megapixels), ("--body-timeout", self.body_timeout),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{flag} {value!r}: expected a positive number")
        for flag, value in (
            ("--max-files", self.max_files), ("--batch-size", self.batch_size),
            ("--workers", self.workers), ("--max-pending", self.max_pending),
            ("--max-connections", self.max_connections),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{flag} {value!r}: expected a positive integer")
        if self.max_upload_mb > self.max_inflight_upload_mb:
            raise ConfigError(
                f"--max-upload-mb {self.max_upload_mb:g} is more than --max-inflight-upload-mb "
                f"{self.max_inflight_upload_mb:g}: such an upload could never be received; raise the latter"
            )
        if self.max_request_megapixels > self.max_inflight_megapixels:
            raise ConfigError(
                f"--max-request-megapixels {self.max_request_megapixels:g} is more than --max-inflight-megapixels "
                f"{self.max_inflight_megapixels:g}: such a request could never be admitted; raise the latter"
            )
        if not self.host.strip():
            raise ConfigError("--host is empty; use 127.0.0.1 (this machine only) or an interface address")
        if not is_loopback(self.host) and not self.api_key:
            raise ConfigError(
                f"--host {self.host} would accept connections from other machines without "
                f"authentication; pass --api-key KEY (or set {API_KEY_ENV}), or bind 127.0.0.1"
            )
        return self
