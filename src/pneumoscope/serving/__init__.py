"""The web viewer and HTTP API (``pneumoscope serve``)."""

from __future__ import annotations

from .app import DISCLAIMER, create_app
from .server import serve
from .settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "DISCLAIMER", "ServeSettings", "create_app", "serve"]
