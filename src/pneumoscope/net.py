"""Binding a listening port up front, so a busy one is a one-line error before anything loads.

``serve`` (HTTP) and ``listen`` (DICOM) both use it; each words its own message.
"""

from __future__ import annotations

import errno
import socket

#: The errno of "address already in use" (Windows reports its own WSAEADDRINUSE).
_IN_USE = {errno.EADDRINUSE, 10048}


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``[::1]`` or ``::1`` for IPv6) with ``SO_REUSEADDR``,
    as uvicorn and pynetdicom bind theirs; the caller listens on it or closes it.

    Raises:
        OSError: The address cannot be bound (see :func:`in_use`), or the host is unknown.
    """
    name = host.strip().strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in name else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((name, port))
    except BaseException:
        sock.close()
        raise
    return sock


def in_use(exc: OSError) -> bool:
    """Whether ``exc`` says the port is already taken."""
    return getattr(exc, "errno", None) in _IN_USE
