"""The DICOM node: a pynetdicom Storage SCP, a scoring worker and one outbox per destination.

The C-STORE handler is kept tiny: it checks that the dataset parses, skips what is not a
frontal chest radiograph (counted and logged), writes the instance to the spool durably and
only then answers success. A single worker thread scores spooled instances with the
checkpoint (P(pneumonia) through :class:`~pneumoscope.inference.Predictor`, then Grad-CAM of
the decided class) and puts a TID 1500 SR and an overlay Secondary Capture into every
destination's outbox. Outbox threads deliver them; when every destination has confirmed an
instance's results, the spooled instance is deleted and one log line says how it went.

Logs carry UIDs, outcomes, probabilities and timings, never a patient's name or ID.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.results import Algorithm, overlay_sc, pneumonia_sr, to_dicom_bytes
from ..errors import ConfigError, ImageReadError
from .destinations import Destination, make_sender, parse_destination, read_auth_file
from .outbox import Outbox
from .rules import SCORED_CLASSES, SKIPPED_CLASSES, skip_reason
from .spool import Spool, key_of

logger = logging.getLogger("pneumoscope.dicomnode")

_CANNOT_UNDERSTAND = 0xC210  # C-STORE failure: the dataset could not be parsed
_OUT_OF_RESOURCES = 0xA700  # C-STORE failure: the spool could not be written


@dataclass
class NodeSettings:
    """Everything ``pneumoscope listen`` configures.

    Attributes:
        spool: The spool folder (see :mod:`.spool`).
        send_to: Destination URLs (``dimse://AE@host:port``, ``dicomweb[s]://host:port/path``).
        host: Interface to listen on.
        port: TCP port (0: any free port; :attr:`DicomNode.port` tells which).
        ae_title: The node's AE title (called by the PACS, calling when it sends results).
        allow_aet: Calling AE titles allowed to associate; empty: any.
        auth_file: DICOMweb credentials file (``basic USER:PASSWORD`` or ``bearer TOKEN``).
        retry_min: First delay after a failed delivery, seconds (doubles each time).
        retry_max: Longest delay between delivery attempts, seconds.
        max_associations: Concurrent associations accepted.
        device: Torch device for the model.
        precision: ``auto``, ``fp32`` or ``bf16``.
        timeout: Network timeout for outgoing associations and requests, seconds.
    """

    spool: Path
    send_to: list[str]
    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "PNEUMOSCOPE"
    allow_aet: list[str] = field(default_factory=list)
    auth_file: Path | None = None
    retry_min: float = 2.0
    retry_max: float = 300.0
    max_associations: int = 16
    device: str = "auto"
    precision: str = "auto"
    timeout: float = 30.0

    def destinations(self) -> list[Destination]:
        """Parse and check the settings that need no model (called before loading it).

        Raises:
            ConfigError: No destination, a bad URL, a bad AE title or retry setting, an unreadable auth file.
        """
        if not self.send_to:
            raise ConfigError("no destination; pass --send-to dimse://AE@host:port or --send-to dicomweb://host:port/path")
        dests = [parse_destination(u) for u in self.send_to]
        if len({d.slug for d in dests}) != len(dests):
            raise ConfigError("the same --send-to destination is given twice")
        for ae in [self.ae_title, *self.allow_aet]:
            if not (1 <= len(ae) <= 16) or not ae.isascii() or "\\" in ae or not ae.strip():
                raise ConfigError(f"bad AE title {ae!r}; expected 1-16 ASCII characters")
        if not (0 < self.retry_min <= self.retry_max):
            raise ConfigError(f"retry delays must satisfy 0 < min <= max, got {self.retry_min} and {self.retry_max}")
        if not (1 <= self.port <= 65535 or self.port == 0):
            raise ConfigError(f"bad port {self.port}; expected 1-65535")
        if any(d.scheme != "dimse" for d in dests) and self.auth_file is not None:
            read_auth_file(self.auth_file)
        return dests


class Scorer:
    """P(pneumonia) and the Grad-CAM overlay of one image, with the checkpoint's contract."""

    def __init__(self, predictor: Any) -> None:
        from ..serving.app import model_id

        self.predictor = predictor
        ckpt = predictor.ckpt
        self.algorithm = Algorithm(model_id=model_id(ckpt), threshold=float(predictor.threshold), method="gradcam")

    def score(self, gray: np.ndarray) -> tuple[float, str, np.ndarray]:
        """``(P(pneumonia), label, overlay RGB)`` for a ``[0, 1]`` grey image."""
        from ..explanation.cam import explain
        from ..explanation.overlay import render_overlay
        from ..inference import _display

        p = self.predictor
        names = list(p.ckpt.class_names)
        x = p.batch_tensor([gray])
        prob = float(p.probabilities(x)[0])
        label = p.label_of(prob)
        exp = explain(
            p.ckpt.model, x, method="gradcam", layer=p.ckpt.target_layer,
            target=torch.tensor([names.index(label)]), precision=p.precision, class_names=names,
            temperature=p.temperature,
        )
        rgb = render_overlay(_display(gray), exp.raw[0].float().cpu().numpy(), "hotspot")
        return prob, label, rgb


class DicomNode:
    """The running node. ``start()`` binds the port and starts the worker and outboxes."""

    def __init__(self, settings: NodeSettings, predictor: Any, *, senders: dict[str, Any] | None = None) -> None:
        """Build the node (nothing listens until :meth:`start`).

        Args:
            settings: The node's settings.
            predictor: A loaded :class:`~pneumoscope.inference.Predictor`.
            senders: Replace the sender of a destination URL (tests); default: DIMSE/DICOMweb senders.

        Raises:
            ConfigError: Bad settings (see :meth:`NodeSettings.destinations`).
        """
        self.settings = settings
        dests = settings.destinations()
        self.spool = Spool(settings.spool)
        self.scorer = Scorer(predictor)
        auth = read_auth_file(settings.auth_file) if settings.auth_file is not None else None
        self.outboxes: list[Outbox] = []
        for d in dests:
            sender = (senders or {}).get(d.url) or make_sender(
                d, calling_ae=settings.ae_title, auth=auth, timeout=settings.timeout,
            )
            self.outboxes.append(Outbox(
                self.spool, d, sender, on_delivered=self._delivered,
                retry_min=settings.retry_min, retry_max=settings.retry_max,
            ))
        self._release_lock = threading.Lock()
        self._work = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server: Any = None
        self.port: int = settings.port

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind the port, resume what the spool holds, start the worker and the outboxes.

        Raises:
            ConfigError: The port is in use or cannot be bound.
        """
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        for name in ("pynetdicom", "pydicom", "highdicom"):
            # pynetdicom's INFO/DEBUG output can dump datasets (patient names); keep it out of the logs.
            logging.getLogger(name).setLevel(logging.WARNING)
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = max(8, s.max_associations)
        ae.require_calling_aet = list(s.allow_aet)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = s.timeout
        ae.add_supported_context(Verification)
        syntaxes = decodable_transfer_syntaxes()
        for sop in (*SCORED_CLASSES, *SKIPPED_CLASSES):
            ae.add_supported_context(sop, syntaxes)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: 0x0000)]
        try:
            self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise _bind_error(s.host, s.port, exc) from None
        self.port = int(self._server.server_address[1])
        self._stop.clear()
        for key in self.spool.scored_keys():  # results confirmed just before a crash
            self._try_release(key)
        current = {ob.dir.name for ob in self.outboxes}
        for folder in sorted((self.spool.root / "outbox").glob("*")):
            left = len(list(folder.glob("*.dcm"))) if folder.is_dir() and folder.name not in current else 0
            if left:
                logger.warning("outbox %s holds %d result file(s) for a destination not given with --send-to; "
                               "they stay there until it is given again", folder.name, left)
        for ob in self.outboxes:
            ob.start()
        self._worker = threading.Thread(target=self._run_worker, name="pneumoscope-scorer", daemon=True)
        self._worker.start()
        self._work.set()
        logger.info(
            "listening as %s on %s:%d; spool %s; %d waiting to be scored; sending to %s",
            s.ae_title, s.host, self.port, self.spool.root, len(self.spool.pending()),
            ", ".join(ob.dest.url for ob in self.outboxes),
        )

    def stop(self) -> None:
        """Stop accepting, finish the instance being scored, stop the outboxes. The spool keeps the rest."""
        if self._server is not None:
            # Abort the open associations too: a PACS that keeps one open for reuse must see the
            # node go, not have its next C-STORE answered by a node that no longer scores.
            for assoc in list(self._server.active_associations):
                assoc.abort()
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._work.set()
        if self._worker is not None:
            self._worker.join(60)
            self._worker = None
        for ob in self.outboxes:
            ob.stop()

    def __enter__(self) -> "DicomNode":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> dict[str, Any]:
        from .spool import spool_status

        return spool_status(self.spool.root)

    def idle(self) -> bool:
        """Nothing waiting to be scored and every outbox empty (tests and the bench wait for it)."""
        return not self.spool.pending() and all(ob.depth() == 0 for ob in self.outboxes) \
            and not self.spool.scored_keys()

    # ------------------------------------------------------------------ receiving

    def _on_store(self, event: Any) -> int:
        """C-STORE: parse, skip or spool durably, then answer."""
        calling = str(event.assoc.requestor.ae_title).strip()
        expected_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            ds = event.dataset
            uid = str(ds.SOPInstanceUID)
            ds.get("Modality")  # touch a few elements: a garbage stream fails here
            ds.get("SOPClassUID")
        except Exception as exc:  # noqa: BLE001 - anything a malformed stream raises
            self.spool.count("refused_malformed")
            logger.warning("instance %s from %s: refused, the dataset cannot be parsed (%s)",
                           expected_uid or "?", calling, type(exc).__name__)
            return _CANNOT_UNDERSTAND
        if uid != expected_uid:
            self.spool.count("refused_malformed")
            logger.warning("instance %s from %s: refused, its SOP Instance UID differs from the request's",
                           expected_uid or "?", calling)
            return _CANNOT_UNDERSTAND
        reason = skip_reason(ds)
        if reason is not None:
            self.spool.count("received")
            self.spool.count(f"skipped_{reason}")
            logger.info("instance %s outcome=skipped reason=%s from=%s", uid, reason, calling)
            return 0x0000
        try:
            self.spool.receive(key_of(uid), event.encoded_dataset(include_meta=True))
        except OSError as exc:
            logger.error("instance %s: cannot write the spool (%s); refused", uid, exc.strerror or exc)
            return _OUT_OF_RESOURCES
        self.spool.count("received")
        self._work.set()
        return 0x0000

    # ------------------------------------------------------------------ scoring

    def _run_worker(self) -> None:
        while not self._stop.is_set():
            self._work.wait(1.0)
            self._work.clear()
            for path in self.spool.pending():
                if self._stop.is_set():
                    return
                try:
                    self.process(path)
                except Exception:  # noqa: BLE001 - one bad instance must not stop the node
                    logger.exception("instance %s: unexpected error while scoring; left in the spool", path.stem)
                    self._stop.wait(1.0)

    def process(self, path: Path) -> None:
        """Score one spooled instance and queue its results (the worker's unit of work)."""
        import pydicom

        from ..data.io import read_image

        key = path.stem
        received = _mtime(path)
        t0 = time.time()
        try:
            ds = pydicom.dcmread(path)
            gray = read_image(path)
            prob, label, rgb = self.scorer.score(gray)
            algorithm = self.scorer.algorithm
            sr = pneumonia_sr(ds, prob, algorithm)
            sc = overlay_sc(
                rgb, ds, algorithm,
                derivation=f"Grad-CAM overlay (hotspot), model {algorithm.model_id}; predicted {label}, "
                           f"P(pneumonia) {prob:.3f} at threshold {algorithm.threshold:.3f}",
            )
            objects = {"sr": to_dicom_bytes(sr), "sc": to_dicom_bytes(sc)}
        except OSError:
            raise  # the disk, not the instance: leave it in incoming/ and try again
        except Exception as exc:  # noqa: BLE001 - undecodable pixels or attributes highdicom refuses
            # A library's message may quote attribute values (names, IDs): it goes to failed/<key>.txt,
            # the log only gets its type.
            detail = exc.problem if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
            self.spool.mark_failed(key, detail)
            self.spool.count("failed")
            why = exc.problem if isinstance(exc, ImageReadError) else type(exc).__name__
            logger.warning("instance %s outcome=failed reason=%r latency=%.2fs (details in failed/%s.txt)",
                           key, why, time.time() - received, key)
            return
        info = {"prob": prob, "label": label, "received": received, "scored": time.time(),
                "score_seconds": time.time() - t0}
        for ob in self.outboxes:
            ob.put(key, objects)
        self.spool.mark_scored(key, info)
        self.spool.count("scored")
        self._try_release(key)

    # ------------------------------------------------------------------ delivery

    def _delivered(self, key: str, outbox: Outbox) -> None:
        self._try_release(key)

    def _try_release(self, key: str) -> None:
        """Delete a scored instance once every outbox is rid of its results; log its one line."""
        with self._release_lock:
            if not self.spool.scored(key).exists() or any(ob.holds(key) for ob in self.outboxes):
                return
            info = self.spool.read_info(key)
            dests = " ".join(f"{ob.dest.url}=ok(attempts={max(1, ob.attempts.get(key, 1))})" for ob in self.outboxes)
            received = float(info.get("received", time.time()))
            logger.info(
                "instance %s outcome=%s P=%s latency=%.2fs destinations: %s",
                key, f"scored:{info.get('label', '?')}",
                f"{info['prob']:.4f}" if "prob" in info else "?", time.time() - received, dests,
            )
            self.spool.count("delivered")
            self.spool.release(key)  # last: idle() turns true only when the line is logged


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom can decode pixel data from here (compressed ones need pylibjpeg)."""
    import pydicom.uid as dicom_uid
    from pydicom.pixels import get_decoder

    out: list[str] = []
    for ts in dicom_uid.AllTransferSyntaxes:
        try:
            if get_decoder(ts).is_available:
                out.append(str(ts))
        except (NotImplementedError, ValueError):
            continue
    # The uncompressed defaults first: a requestor that offers several gets the simplest.
    first = [str(dicom_uid.ExplicitVRLittleEndian), str(dicom_uid.ImplicitVRLittleEndian)]
    return first + [t for t in out if t not in first]


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return time.time()


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    from ..net import in_use

    what = "the port is already in use" if in_use(exc) else (exc.strerror or str(exc))
    return ConfigError(f"cannot listen on {host}:{port}: {what}")


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` for a moment, as the server will (``SO_REUSEADDR``), and let it go.

    Raises:
        ConfigError: The port is in use or cannot be bound (same message as :meth:`DicomNode.start`).
    """
    from ..net import bind_socket

    try:
        bind_socket(host, port).close()
    except OSError as exc:  # socket.gaierror included: an unknown host
        raise _bind_error(host, port, exc) from None


def load_node(settings: NodeSettings, checkpoint: str | Path) -> DicomNode:
    """Check the settings, then load the checkpoint, then build the node (in that order, so a bad
    URL is reported before the model is loaded).

    Raises:
        ConfigError: Bad settings.
        CheckpointError: The checkpoint cannot be loaded.
    """
    from ..inference import Predictor

    settings.destinations()
    check_port(settings.host, settings.port)  # a busy port is refused before the spool is created
    Spool(settings.spool)  # an unwritable spool is reported before the model is loaded
    predictor = Predictor(checkpoint, device=settings.device, precision=settings.precision, batch_size=1)
    return DicomNode(settings, predictor)
