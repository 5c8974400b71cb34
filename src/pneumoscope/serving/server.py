"""Run the app with uvicorn (what ``pneumoscope serve`` calls)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..net import bind_socket, in_use
from .settings import ServeSettings


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _bind(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` (as uvicorn would) so that a busy port is a one-line error, not a log line.

    Raises:
        ConfigError: The address is in use, not this machine's, or not allowed.
    """
    name = host.strip().strip("[]")
    try:
        sock = bind_socket(name, port)
    except OSError as exc:
        where = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        if in_use(exc):
            raise ConfigError(f"{where} is already in use (another server?); choose a free port with --port") from None
        raise ConfigError(f"cannot listen on {where} ({exc.strerror or exc}); check --host and --port") from None
    return sock


def serve(
    checkpoint: str | Path, settings: ServeSettings, *, log_level: str = "info",
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Validate the settings, bind the port, load the model once, and serve until interrupted.

    Args:
        on_listening: Called with the server's URL once it accepts connections (not before);
            by default the URL is printed to stderr. With ``port`` 0 the URL has the port
            the system chose.

    Raises:
        ConfigError: A setting is invalid (e.g. a public ``host`` without an API key),
            raised before anything is loaded or bound; or the port cannot be bound (in
            use), raised before the model is loaded.
        CheckpointError: The checkpoint cannot be loaded.
    """
    import uvicorn

    from .app import create_app

    settings.with_env_key().validate()
    sock = _bind(settings.host, settings.port)
    try:
        app = create_app(checkpoint, settings)
        config = uvicorn.Config(
            app, host=settings.host, port=sock.getsockname()[1], log_level=log_level, server_header=False,
            # Beyond this many connections or requests at once uvicorn answers 503 itself, before
            # the app: the outer bound; the app's own budgets (pixels, images) answer JSON within it.
            limit_concurrency=settings.max_connections,
        )
        url = _url(settings.host.strip().strip("[]"), sock.getsockname()[1])
        announce = on_listening or (lambda u: print(f"serving at {u}", file=sys.stderr, flush=True))

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if self.started:  # the socket is listening: say so now, not before
                    announce(url)

        Server(config).run(sockets=[sock])
    finally:
        sock.close()

