"""Run the app with uvicorn (what ``pneumoscope serve`` calls)."""

from __future__ import annotations

from pathlib import Path

from .settings import ServeSettings


def serve(checkpoint: str | Path, settings: ServeSettings, *, log_level: str = "info") -> None:
    """Validate the settings, load the model once, and serve until interrupted.

    Raises:
        ConfigError: A setting is invalid (e.g. a public ``host`` without an API key);
            raised before anything is loaded or bound.
        CheckpointError: The checkpoint cannot be loaded.
    """
    import uvicorn

    from .app import create_app

    settings.with_env_key().validate()
    app = create_app(checkpoint, settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=log_level, server_header=False,
        # Beyond this many connections or requests at once uvicorn answers 503 itself, before
        # the app: the outer bound; the app's own budgets (pixels, images) answer JSON within it.
        limit_concurrency=settings.max_connections,
    )
