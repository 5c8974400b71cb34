"""Where results go: ``dimse://AE@host:port`` (C-STORE SCU) or ``dicomweb[s]://host:port/path`` (STOW-RS).

A destination is parsed once, at start-up, so a bad URL is a one-line error before the node
binds its port. Credentials for DICOMweb never travel on the command line: they are read from a
file (``--auth-file``) holding one line, ``basic USER:PASSWORD`` or ``bearer TOKEN``.

Senders report two kinds of failure: :class:`DestinationDown` (nothing was confirmed: no
association, connection refused, HTTP 5xx), after which the outbox backs off the whole
destination, and per-file refusals returned by :meth:`Sender.send`, which only delay that file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_AE_RE = re.compile(r"^[ -~]{1,16}$")  # DICOM AE title: up to 16 printable ASCII characters
# C-STORE statuses that mean "stored" (success and the warnings: coercion, elements discarded).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DestinationDown(Exception):
    """The destination confirmed nothing (unreachable, association refused, server error)."""


@dataclass(frozen=True)
class Destination:
    """A parsed ``--send-to`` URL.

    Attributes:
        url: As given (shown in logs and ``--status``; holds no secret).
        scheme: ``dimse``, ``dicomweb`` or ``dicomwebs``.
        host: Host name or address.
        port: TCP port.
        ae_title: The called AE title (DIMSE only).
        path: The DICOMweb service root (DICOMweb only), e.g. ``/dicom-web``.
    """

    url: str
    scheme: str
    host: str
    port: int
    ae_title: str = ""
    path: str = ""

    @property
    def slug(self) -> str:
        """A stable folder name for this destination's outbox."""
        base = re.sub(r"[^A-Za-z0-9]+", "-", f"{self.scheme}-{self.ae_title}-{self.host}-{self.port}").strip("-")
        return f"{base}-{hashlib.sha1(self.url.encode('utf-8')).hexdigest()[:8]}"

    @property
    def http_url(self) -> str:
        proto = "https" if self.scheme == "dicomwebs" else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{proto}://{host}:{self.port}{self.path}"


def parse_destination(url: str) -> Destination:
    """Parse ``dimse://AE@host:port`` or ``dicomweb[s]://host[:port]/path``.

    Raises:
        ConfigError: The URL is not one of those forms (the message shows the expected forms).
    """
    expected = "expected dimse://AE@host:port or dicomweb://host:port/path (dicomwebs:// for HTTPS)"
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad destination URL {text!r} ({exc}); {expected}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("dimse", "dicomweb", "dicomwebs") or not host:
        raise ConfigError(f"bad destination URL {text!r}; {expected}")
    if parts.password is not None or (scheme != "dimse" and parts.username):
        raise ConfigError(
            f"bad destination URL {text!r}: credentials do not belong on the command line; "
            "put them in a file and pass --auth-file"
        )
    if scheme == "dimse":
        ae = parts.username or ""
        if not ae or not _AE_RE.match(ae) or ae != ae.strip() or "\\" in ae:
            raise ConfigError(f"bad destination URL {text!r}: the called AE title (1-16 characters) is missing; {expected}")
        if port is None:
            raise ConfigError(f"bad destination URL {text!r}: no port; {expected}")
        if parts.path not in ("", "/"):
            raise ConfigError(f"bad destination URL {text!r}: a DIMSE destination has no path; {expected}")
        return Destination(text, scheme, host, port, ae_title=ae)
    default_port = 443 if scheme == "dicomwebs" else 80
    return Destination(text, scheme, host, port or default_port, path=parts.path.rstrip("/"))


def read_auth_file(path: str | Path) -> tuple[str, str]:
    """``("basic", "user:password")`` or ``("bearer", token)`` from a one-line file.

    Raises:
        ConfigError: Missing or unreadable file, or a line that is neither form.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the auth file ({exc.strerror or exc})") from None
    kind, _, secret = text.partition(" ")
    kind, secret = kind.lower(), secret.strip()
    if kind == "basic" and ":" in secret:
        return kind, secret
    if kind == "bearer" and secret and "\n" not in secret:
        return kind, secret
    raise ConfigError(f"{p}: expected one line 'basic USER:PASSWORD' or 'bearer TOKEN'")


class Sender(Protocol):
    def send(self, files: list[Path]) -> dict[Path, str]:
        """Store ``files``; return ``{file: reason}`` for the ones the destination refused.

        Raises:
            DestinationDown: Nothing was confirmed.
        """


class DimseSender:
    """C-STORE SCU: one association per batch of files."""

    def __init__(self, dest: Destination, calling_ae: str, timeout: float = 30.0) -> None:
        self.dest = dest
        self.calling_ae = calling_ae
        self.timeout = timeout

    def send(self, files: list[Path]) -> dict[Path, str]:
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = min(self.timeout, 10.0)
        for sop in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title)
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "no association (unreachable?)"
            raise DestinationDown(why)
        refused: dict[Path, str] = {}
        try:
            for f in files:
                ds = pydicom.dcmread(f)
                status = assoc.send_c_store(ds)
                if not assoc.is_established and not status:
                    raise DestinationDown("association lost")
                code = int(status.Status) if status and "Status" in status else None
                if code is None:
                    raise DestinationDown("no C-STORE response")
                if code not in _STORED:
                    refused[f] = f"C-STORE status 0x{code:04X}"
        finally:
            if assoc.is_established:
                assoc.release()
        return refused


class DicomWebSender:
    """STOW-RS through dicomweb-client: one request per batch of files."""

    def __init__(self, dest: Destination, auth: tuple[str, str] | None = None, timeout: float = 30.0) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.dest = dest
        session = requests.Session()
        if auth is not None:
            kind, secret = auth
            if kind == "basic":
                user, _, password = secret.partition(":")
                session.auth = (user, password)
            else:
                session.headers["Authorization"] = f"Bearer {secret}"
        self.client = DICOMwebClient(dest.http_url, session=session, timeout=timeout)

    def send(self, files: list[Path]) -> dict[Path, str]:
        import pydicom
        import requests

        datasets = [pydicom.dcmread(f) for f in files]
        try:
            response = self.client.store_instances(datasets)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if 400 <= code < 500 and code not in (401, 403, 408, 429):
                return {f: f"STOW-RS HTTP {code}" for f in files}
            raise DestinationDown(f"HTTP {code}") from None
        except (requests.RequestException, OSError) as exc:
            raise DestinationDown(type(exc).__name__) from None
        failed = {
            str(item.get("ReferencedSOPInstanceUID", ""))
            for item in (response.get("FailedSOPSequence", []) if response is not None else [])
        }
        return {f: "STOW-RS failed" for f, ds in zip(files, datasets) if str(ds.SOPInstanceUID) in failed}


def make_sender(dest: Destination, *, calling_ae: str, auth: tuple[str, str] | None, timeout: float = 30.0) -> Sender:
    """The sender for a destination."""
    if dest.scheme == "dimse":
        return DimseSender(dest, calling_ae, timeout)
    return DicomWebSender(dest, auth, timeout)
