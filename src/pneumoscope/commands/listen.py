"""``pneumoscope listen``: the DICOM node a PACS sends chest radiographs to (see :mod:`pneumoscope.dicomnode`)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer

from ..cli import CHECKPOINT_HELP, Precision, _say, app, user_errors
from ..errors import ConfigError


@app.command()
@user_errors
def listen(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
    spool: Path = typer.Option(..., "--spool", help="Folder for received instances and pending results (kept across restarts)."),
    send_to: List[str] = typer.Option(
        [], "--send-to",
        help="Where results go: dimse://AE@host:port (C-STORE) or dicomweb://host:port/path (STOW-RS; "
             "dicomwebs:// for HTTPS). Repeat for several.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(11112, "--port", help="DICOM port the PACS sends to."),
    ae_title: str = typer.Option("PNEUMOSCOPE", "--ae-title", help="This node's AE title."),
    allow_aet: Optional[str] = typer.Option(
        None, "--allow-aet", help="Comma-separated calling AE titles allowed to associate (default: any)."),
    auth_file: Optional[Path] = typer.Option(
        None, "--auth-file", help="DICOMweb credentials: a file with one line 'basic USER:PASSWORD' or 'bearer TOKEN'."),
    retry_min: float = typer.Option(2.0, "--retry-min", help="First delay after a failed delivery, seconds (doubles)."),
    retry_max: float = typer.Option(300.0, "--retry-max", help="Longest delay between delivery attempts, seconds."),
    max_associations: int = typer.Option(16, "--max-associations", help="Concurrent associations (at least 8)."),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    device: str = typer.Option("auto", "--device"),
    status: bool = typer.Option(False, "--status", help="Print the spool's and outboxes' depth as JSON and exit."),
) -> None:
    """DICOM node: score each radiograph a PACS sends and return an SR and an overlay into its study."""
    from ..dicomnode import NodeSettings, load_node, spool_status

    if status:
        typer.echo(json.dumps(spool_status(spool), indent=2))
        return
    if checkpoint is None:
        raise ConfigError("--checkpoint is required (a best.ckpt from `pneumoscope train`)")
    settings = NodeSettings(
        spool=spool, send_to=list(send_to), host=host, port=port, ae_title=ae_title,
        allow_aet=[a.strip() for a in (allow_aet or "").split(",") if a.strip()],
        auth_file=auth_file, retry_min=retry_min, retry_max=retry_max, max_associations=max_associations,
        device=device, precision=precision.value,
    )
    log = logging.getLogger("pneumoscope.dicomnode")
    handler = logging.StreamHandler()  # the node's one line per instance, on stderr
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    # The topmost folder of --spool that does not exist yet (None: the spool exists).
    new_root = next((p for p in (*reversed(spool.absolute().parents), spool.absolute()) if not p.exists()), None)
    try:
        try:
            node = load_node(settings, checkpoint)
            node.start()
        except BaseException:
            if new_root is not None:  # refused at start-up: leave no spool behind (only empty folders go)
                _remove_empty_folders(new_root)
            raise
        _say(f"listening as {ae_title} on {host}:{node.port} (Ctrl-C to stop; "
             f"`pneumoscope listen --status --spool {spool}`)")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        finally:
            node.stop()
            _say("stopped; anything not yet delivered stays in the spool")
    finally:
        log.removeHandler(handler)


def _remove_empty_folders(root: Path) -> None:
    """Remove ``root`` and the folders under it, deepest first, as long as they are empty."""
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass
    try:
        root.rmdir()
    except OSError:
        pass
