"""The FastAPI app: the viewer page, ``/api/predict``, ``/api/explain``, ``/api/model``, ``/healthz``.

Built by :func:`create_app` from a checkpoint and :class:`~.settings.ServeSettings`; the model
is loaded once, when the app is created. Every error is JSON ``{"error": "..."}``; user
mistakes get a 4xx status, never a traceback.

Memory is a budget, not a consequence of what clients send: a request's images are sized
from their headers first, refused as a whole when they hold more pixels than
``max_request_megapixels`` (413) or than the server's in-flight budget has room for (503 with
Retry-After), and only then decoded, at reduced size (the larger of the model input and the
overlay's display size), so an admitted 100-megapixel image holds a 1024-pixel copy, not a
full-size float array.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..checkpoint import Checkpoint
from ..data.io import read_dicom_bytes, read_image_bytes, read_image_size_bytes, to_uint8
from ..data.results import Algorithm, overlay_sc, to_dicom_bytes
from ..errors import ImageReadError, ImageTooLargeError, PneumoscopeError
from ..explanation.cam import METHODS
from ..explanation.overlay import DEFAULT_OPACITY, STYLES, heat_layer, render_overlay
from ..inference import MAX_OVERLAY_SIDE, Predictor
from ..inference import _display as display_image  # the overlay size the CLI uses too
from .dicom_panel import dicom_panel
from .engine import InferenceEngine, ModelOutput
from .limits import BodyLimits
from .settings import ServeSettings
from .uploads import ApiError, Upload, read_uploads

logger = logging.getLogger(__name__)

DISCLAIMER = (
    "Research tool. The model was trained on paediatric chest radiographs; its output is not "
    "a diagnosis and must not be used for clinical decisions."
)
FORMATS = ("json", "png", "dicom")
#: The query options of ``/api/explain``; ``/api/predict`` and ``/api/model`` take none.
EXPLAIN_OPTIONS = ("format", "method", "style", "layers")
# The header probe itself refuses nothing for size: the limit is checked after it, so that
# the message names --max-megapixels (decoding still passes max_pixels as a backstop).
_PROBE_MAX_PIXELS = 1 << 62

_ERROR_SCHEMA = {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"],
}}}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": why, "content": _ERROR_SCHEMA}
    for code, why in {
        400: "Malformed request or unknown option", 401: "Missing or wrong API key",
        408: "The request body arrived too slowly",
        413: "Upload, image, pixels per request or file count over the limit",
        415: "Not multipart, or not an image type",
        422: "The file is not a readable image", 503: "Server busy; retry",
    }.items()
}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                            "description": "One or more chest X-rays (JPEG, PNG, BMP, TIFF or DICOM)."}},
}}}}}


#: Paths that describe the API; with an API key they need it too, unless ``public_docs``.
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})


@dataclass
class _Decoded:
    upload: Upload
    pixels: int = 0  # width x height from the header, before decoding
    gray: np.ndarray | None = None
    error: ImageReadError | None = None


def model_id(ckpt: Checkpoint) -> str:
    """``<architecture>-<first 12 hex of the checkpoint file's SHA-256>``: names the exact weights."""
    if ckpt.path is None or not Path(ckpt.path).is_file():
        return f"{ckpt.architecture}-unsaved"
    h = hashlib.sha256()
    with open(ckpt.path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"{ckpt.architecture}-{h.hexdigest()[:12]}"


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _stem(name: str) -> str:
    import re

    base = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "image"


def _status_of(exc: ImageReadError) -> int:
    return 413 if isinstance(exc, ImageTooLargeError) else 422


def check_options(request: Request, known: tuple[str, ...] = ()) -> None:
    """Refuse query options the route does not take (400), before the body is read."""
    unknown = [k for k in dict.fromkeys(request.query_params.keys()) if k not in known]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        takes = f"known options: {', '.join(known)}" if known else "it takes no options"
        raise ApiError(400, f"unknown option{'s' if len(unknown) > 1 else ''} {names} for {request.url.path}; {takes}")


def create_app(checkpoint: str | Path | Checkpoint, settings: ServeSettings | None = None) -> FastAPI:
    """Load the checkpoint once and build the app.

    Args:
        checkpoint: A pneumoscope checkpoint file (or a loaded :class:`Checkpoint`).
        settings: Limits, device, precision, API key; defaults otherwise. Host/port are
            only used by :func:`pneumoscope.serving.serve`.

    Raises:
        CheckpointError: The checkpoint cannot be loaded.
        ConfigError: A setting is invalid.
    """
    settings = (settings or ServeSettings()).validate()
    predictor = Predictor(checkpoint, device=settings.device, precision=settings.precision, batch_size=settings.batch_size)
    ckpt = predictor.ckpt
    engine = InferenceEngine(
        predictor, batch_size=settings.batch_size, workers=settings.workers, max_pending=settings.max_pending,
        max_inflight_pixels=settings.max_inflight_pixels,
    )
    # Nothing downstream looks at more than this: the model input, or the overlay's display size.
    decode_side = max(MAX_OVERLAY_SIDE, ckpt.preprocessing.image_size)
    mid = model_id(ckpt)
    names = list(ckpt.class_names)
    positive = names[ckpt.positive_index]
    created = _meta_created(ckpt)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="pneumoscope",
        version=__version__,
        summary="Explainable pneumonia detection on chest X-rays (research use, not a diagnosis).",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.predictor = predictor
    app.state.model_id = mid
    app.add_middleware(BodyLimits, seconds=settings.body_timeout, max_bytes=settings.max_inflight_upload_bytes)

    # ----------------------------------------------------------------- errors

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ImageReadError)
    async def _image_error(_: Request, exc: ImageReadError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=_status_of(exc))

    @app.exception_handler(PneumoscopeError)
    async def _user_error(_: Request, exc: PneumoscopeError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('query', 'body'))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error")
        return JSONResponse({"error": "internal server error (see the server log)"}, status_code=500)

    # ----------------------------------------------------------------- auth

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        path = request.url.path
        protected = path.startswith("/api/") or (path in DOC_PATHS and not settings.public_docs)
        if settings.api_key and protected and not _key_ok(request, settings.api_key):
            return JSONResponse(
                {"error": "missing or wrong API key; send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"},
                status_code=401, headers={"WWW-Authenticate": "Bearer"},
            )
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ----------------------------------------------------------------- helpers

    def probe(uploads: list[Upload]) -> list[_Decoded]:
        """Header only: each file's pixel count, or its error (unreadable header, over --max-megapixels)."""
        items = []
        for up in uploads:
            try:
                width, height = read_image_size_bytes(up.data, up.filename, max_pixels=_PROBE_MAX_PIXELS)
                if width * height > settings.max_pixels:
                    raise ImageTooLargeError(
                        up.filename, f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
                        f"{settings.max_megapixels:g} megapixels (--max-megapixels); refusing to decode it",
                    )
                items.append(_Decoded(up, pixels=width * height))
            except ImageReadError as exc:
                items.append(_Decoded(up, error=exc))
        return items

    async def decode(items: list[_Decoded]) -> None:
        """Decode the admitted files at reduced size; a file that fails keeps its error."""
        def one(d: _Decoded) -> None:
            try:
                d.gray = read_image_bytes(d.upload.data, d.upload.filename, max_pixels=settings.max_pixels,
                                          max_side=decode_side)
            except ImageReadError as exc:
                d.error = exc

        for d in items:
            if d.error is None:
                await engine.run_cpu_sized(d.pixels, one, d)

    def result_row(up: Upload, out: ModelOutput) -> dict[str, Any]:
        probs = {names[0]: 1.0 - out.prob, positive: out.prob} if len(names) == 2 else {positive: out.prob}
        row = {
            "filename": up.filename,
            "label": predictor.label_of(out.prob),
            "prob_pneumonia": out.prob,
            "probabilities": probs,
            "threshold": predictor.threshold,
            "model": mid,
        }
        panel = dicom_panel(up.data, up.filename, show_patient=settings.show_patient)
        if panel is not None:
            row["dicom"] = panel  # a DICOM upload: the header fields of the viewer's panel
        return row

    def error_row(d: _Decoded) -> dict[str, Any]:
        assert d.error is not None
        return {"filename": d.upload.filename, "error": str(d.error), "status": _status_of(d.error)}

    async def receive(request: Request) -> list[_Decoded]:
        """Read the upload and size its images from their headers; nothing is decoded yet."""
        uploads = await read_uploads(request, max_bytes=settings.max_upload_bytes, max_files=settings.max_files)
        # Off the event loop (a DICOM header can be long), but not behind the decode pool's queue.
        items = await asyncio.to_thread(probe, uploads)
        if len(items) == 1 and items[0].error is not None:
            raise items[0].error  # a single file: the request fails with the file's status
        total = sum(d.pixels for d in items)
        if total > settings.max_request_pixels:
            raise ApiError(
                413, f"the images in this request hold {total:,} pixels together, more than the limit of "
                f"{settings.max_request_pixels:,} per request (--max-request-megapixels); send fewer or smaller images",
            )
        return items

    @asynccontextmanager
    async def admitted(items: list[_Decoded]) -> AsyncIterator[list[_Decoded]]:
        """Admit the readable files against the server's budget (503 when full), then decode them.

        Yields the files that decoded; the budget is held until the block ends.
        """
        ok = [d for d in items if d.error is None]
        with engine.admit(len(ok), pixels=sum(d.pixels for d in ok)):
            await decode(ok)
            if len(items) == 1 and items[0].error is not None:
                raise items[0].error
            yield [d for d in ok if d.gray is not None]

    def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if len(rows) == 1:
            return rows[0]
        return {"model": mid, "threshold": predictor.threshold, "results": rows}

    # ----------------------------------------------------------------- routes

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        })

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        types = {"viewer.js": "text/javascript", "viewer.css": "text/css"}
        if name not in types:
            raise ApiError(404, f"no static file {name!r}")
        body = resources.files(__package__).joinpath(f"static/{name}").read_bytes()
        return Response(body, media_type=types[name])

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness: answers at once, even while the model is busy."""
        return {"status": "ok", "model": mid, "pending": engine.pending}

    @app.get("/api/model", tags=["model"])
    async def model_info(request: Request) -> dict[str, Any]:
        """What the server runs: architecture, classes, Grad-CAM layer, operating point, training data."""
        check_options(request)
        info = ckpt.info or {}
        data_cfg = (ckpt.config or {}).get("data", {})
        source = info.get("data")
        return {
            "id": mid,
            "architecture": ckpt.architecture,
            "class_names": names,
            "positive_class": positive,
            "layer": ckpt.target_layer,
            "threshold": predictor.threshold,
            "image_size": ckpt.preprocessing.image_size,
            "methods": list(METHODS),
            "styles": list(STYLES),
            "default_opacity": DEFAULT_OPACITY,
            "training_data": {
                "source": Path(str(source)).name if source else None,  # a name, not the server's path
                "train_counts": dict(zip(names, info["train_counts"])) if info.get("train_counts") else None,
                "validation_source": info.get("val_source", data_cfg.get("val_source")),
                "validation": info.get("validation"),
            },
            "created": created,
            "version": __version__,
            "device": str(predictor.device),
            "precision": predictor.precision,
            "limits": {
                "max_upload_mb": settings.max_upload_mb, "max_megapixels": settings.max_megapixels,
                "max_request_megapixels": settings.max_request_megapixels, "max_files": settings.max_files,
            },
            "auth_required": bool(settings.api_key),
            "show_patient": settings.show_patient,
            "disclaimer": DISCLAIMER,
        }

    @app.post("/api/predict", tags=["inference"], responses=_ERROR_RESPONSES, openapi_extra=_UPLOAD_BODY)
    async def predict(request: Request) -> dict[str, Any]:
        """Classify one or more images: label, probabilities, threshold, model id.

        One file gives one result object; several give ``{"results": [...]}`` where a file
        that cannot be read has its own ``error`` and ``status``.
        """
        check_options(request)
        decoded = await receive(request)
        async with admitted(decoded) as ok:
            outputs = await engine.predict([d.gray for d in ok]) if ok else []
        by_id = {id(d): o for d, o in zip(ok, outputs)}
        return combine([result_row(d.upload, by_id[id(d)]) if d.error is None else error_row(d) for d in decoded])

    @app.post("/api/explain", tags=["inference"], responses={
        **_ERROR_RESPONSES,
        200: {"content": {"application/json": {}, "image/png": {}, "application/dicom": {}},
              "description": "JSON (default), the overlay PNG (format=png) or a DICOM Secondary Capture (format=dicom)"},
    }, openapi_extra=_UPLOAD_BODY)
    async def explain_route(
        request: Request,
        format: str = Query("json", description="json | png | dicom (png and dicom: one file only)"),
        method: str = Query(next(iter(METHODS)), description="explanation method: one of /api/model's methods"),
        style: str = Query("hotspot", description="hotspot (the seed's red top 5 %) | heatmap (jet)"),
        layers: bool = Query(False, description="also return the display image and the RGBA colour layer (for viewers)"),
    ) -> Any:
        """Predict and explain: the JSON of /api/predict plus the Grad-CAM overlay."""
        check_options(request, EXPLAIN_OPTIONS)
        if format not in FORMATS:
            raise ApiError(400, f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
        if method not in METHODS:
            raise ApiError(400, f"unknown explanation method {method!r}; available: {', '.join(METHODS)}")
        if style not in STYLES:
            raise ApiError(400, f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
        decoded = await receive(request)
        if format != "json" and len(decoded) > 1:
            raise ApiError(400, f"format={format} takes one file; send several files with format=json")
        async with admitted(decoded) as ok:
            outputs = await engine.explain([d.gray for d in ok], method) if ok else []
        by_id = {id(d): o for d, o in zip(ok, outputs)}

        if format == "json":
            def render(d: _Decoded) -> dict[str, Any]:
                out = by_id[id(d)]
                assert d.gray is not None and out.raw is not None
                disp = display_image(d.gray)
                row = result_row(d.upload, out)
                row["explanation"] = {
                    "method": method, "layer": ckpt.target_layer, "target": row["label"], "style": style,
                    "opacity": DEFAULT_OPACITY[style], "width": int(disp.shape[1]), "height": int(disp.shape[0]),
                }
                row["overlay_png"] = _b64(_png(render_overlay(disp, out.raw, style)))
                if layers:
                    row["image_png"] = _b64(_png(to_uint8(disp)))
                    row["heatmap_png"] = _b64(_png(heat_layer(out.raw, disp.shape, style)))
                return row

            rows = [await engine.run_cpu(render, d) if d.error is None else error_row(d) for d in decoded]
            return combine(rows)

        d = decoded[0]
        out = by_id[id(d)]
        label = predictor.label_of(out.prob)
        headers = {
            "X-Pneumoscope-Label": label, "X-Pneumoscope-Prob-Pneumonia": f"{out.prob:.6f}",
            "X-Pneumoscope-Threshold": f"{predictor.threshold:.6f}", "X-Pneumoscope-Model": mid,
        }
        stem = _stem(d.upload.filename)
        if format == "png":
            def png() -> bytes:
                assert d.gray is not None and out.raw is not None
                return _png(render_overlay(display_image(d.gray), out.raw, style))

            body = await engine.run_cpu(png)
            headers["Content-Disposition"] = f'inline; filename="{stem}.overlay.png"'
            return Response(body, media_type="image/png", headers=headers)

        def dicom() -> bytes:
            assert d.gray is not None and out.raw is not None
            try:
                source = read_dicom_bytes(d.upload.data, d.upload.filename)
            except ImageReadError:
                source = None  # a JPEG/PNG: the overlay starts a new study
            rgb = render_overlay(display_image(d.gray), out.raw, style)
            algorithm = Algorithm(model_id=mid, threshold=predictor.threshold, method=method)
            ds = overlay_sc(
                rgb, source, algorithm,
                derivation=f"{method} overlay ({style}) of layer {ckpt.target_layer}, model {mid}; "
                           f"predicted {label}, P({positive}) {out.prob:.3f} at threshold {predictor.threshold:.3f}",
            )
            return to_dicom_bytes(ds)

        body = await engine.run_cpu(dicom)
        headers["Content-Disposition"] = f'attachment; filename="{stem}.overlay.dcm"'
        return Response(body, media_type="application/dicom", headers=headers)

    return app


def _meta_created(ckpt: Checkpoint) -> str | None:
    if ckpt.path is None:
        return None
    try:
        from ..checkpoint import read_metadata

        return read_metadata(ckpt.path).get("created")
    except PneumoscopeError:
        return None


def _key_ok(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return bool(given) and hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))
