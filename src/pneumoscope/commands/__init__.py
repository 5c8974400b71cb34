"""Commands that live in modules of their own; importing this package registers them on ``cli.app``.

``cli.py`` keeps the original commands. A new command goes in ``commands/<name>.py``, decorated
with ``@app.command()`` and ``@user_errors`` from :mod:`pneumoscope.cli`, and is imported here.
"""

from __future__ import annotations
from . import compact, listen, manifest, prepare  # noqa: F401
