"""Run the model off the event loop: one model thread, micro-batching, bounded admission.

Requests never run the model on the event loop, so ``/healthz`` and uploads stay responsive
while it computes. The model runs on a single thread of its own: Grad-CAM hooks a layer
of the shared model, so two explanations must never overlap inside it, and on a CPU one
batched call beats several competing ones. Requests that arrive while the model is busy
wait in a queue and are run together as one batch (up to ``batch_size`` images) when it is
free, so throughput grows with load instead of latency. Decoding uploads and rendering
overlays run on a small separate pool. At most ``max_pending`` images, holding at most
``max_inflight_pixels`` source pixels together, are admitted at once; more get 503 with
Retry-After rather than an unbounded queue. Requests are admitted on their images' header
sizes, before any of them is decoded, so the budget holds for the decoding too. Large images
(over ``LARGE_IMAGE_PIXELS``) are decoded on at most ``workers - 1`` of the decode threads,
so one thread stays free for ordinary X-rays, which never wait behind a queue of huge ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from ..explanation.cam import explain
from ..inference import Predictor
from .uploads import ApiError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Images above this many pixels (a 4000 x 4000 detector has 16 M) take the large-image lane.
LARGE_IMAGE_PIXELS = 20_000_000


@dataclass
class ModelOutput:
    """What the model thread returns for one image."""

    prob: float  # P(positive class), from Predictor.probabilities
    raw: np.ndarray | None = None  # the raw CAM at the layer's resolution (explain only)


@dataclass
class _Job:
    kind: str  # "predict" | "explain"
    method: str
    grays: list[np.ndarray]
    future: asyncio.Future = field(repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.method if self.kind == "explain" else "")


class InferenceEngine:
    """The model behind the API: batched, on its own thread, with bounded admission."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        batch_size: int = 16,
        workers: int = 2,
        max_pending: int = 256,
        max_inflight_pixels: int | None = None,
    ) -> None:
        self.predictor = predictor
        self.batch_size = max(1, batch_size)
        self.max_pending = max(1, max_pending)
        self.max_inflight_pixels = max_inflight_pixels
        self.inflight_pixels = 0  # source pixels (width x height) of the admitted images
        self.workers = max(1, workers)
        self._model_pool: ThreadPoolExecutor | None = None
        self._cpu_pool: ThreadPoolExecutor | None = None
        self._jobs: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._large_lane: asyncio.Semaphore | None = None
        self.pending = 0
        self.batches = 0  # model calls so far (for tests and /healthz)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the pools and the batcher (the app's lifespan does; restartable after stop)."""
        if self._task is not None:
            return
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pneumoscope-model")
        self._cpu_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pneumoscope-cpu")
        self._wake = asyncio.Event()
        self._large_lane = asyncio.Semaphore(max(1, self.workers - 1))
        self._task = asyncio.create_task(self._run(), name="pneumoscope-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down"))
        for pool in (self._model_pool, self._cpu_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._model_pool = self._cpu_pool = None
        self._large_lane = None

    # ------------------------------------------------------------------ admission

    @contextlib.contextmanager
    def admit(self, n: int, pixels: int = 0) -> Iterator[None]:
        """Hold room for ``n`` images of ``pixels`` source pixels in all, or raise 503 when saturated.

        The caller reads the pixel count from the images' headers and enters this block
        before decoding them, so a flood of large images is refused while it is still cheap.
        """
        if self.pending + n > self.max_pending:
            raise ApiError(
                503, f"the server is busy ({self.pending} images in progress); retry shortly",
                headers={"Retry-After": "1"},
            )
        budget = self.max_inflight_pixels
        if budget is not None and pixels and self.inflight_pixels + pixels > budget:
            raise ApiError(
                503, f"the server is busy ({self.inflight_pixels / 1e6:,.0f} of {budget / 1e6:,.0f} megapixels "
                "in progress, --max-inflight-megapixels); retry shortly",
                headers={"Retry-After": "1"},
            )
        self.pending += n
        self.inflight_pixels += pixels
        try:
            yield
        finally:
            self.pending -= n
            self.inflight_pixels -= pixels

    # ------------------------------------------------------------------ work

    async def run_cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the decode/render pool, off the event loop."""
        if self._cpu_pool is None:
            await self.start()  # an ASGI server run without lifespan events
        assert self._cpu_pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cpu_pool, functools.partial(fn, *args, **kwargs))

    async def run_cpu_sized(self, pixels: int, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run_cpu` for work on an image of ``pixels`` pixels: large ones share fewer threads."""
        if pixels <= LARGE_IMAGE_PIXELS:
            return await self.run_cpu(fn, *args)
        if self._large_lane is None:
            await self.start()
        assert self._large_lane is not None
        async with self._large_lane:
            return await self.run_cpu(fn, *args)

    async def predict(self, grays: list[np.ndarray]) -> list[ModelOutput]:
        return await self._submit("predict", "", grays)

    async def explain(self, grays: list[np.ndarray], method: str) -> list[ModelOutput]:
        return await self._submit("explain", method, grays)

    async def _submit(self, kind: str, method: str, grays: list[np.ndarray]) -> list[ModelOutput]:
        if self._task is None or self._wake is None:
            await self.start()  # an ASGI server run without lifespan events
        assert self._wake is not None
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(kind, method, list(grays), future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take_batch()
            if not batch:
                continue
            grays = [g for job in batch for g in job.grays]
            first = batch[0]
            try:
                outputs = await loop.run_in_executor(
                    self._model_pool, self._compute, first.kind, first.method, grays
                )
            except asyncio.CancelledError:
                for job in batch:
                    if not job.future.done():
                        job.future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - delivered to the requests, which answer it
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for job in batch:
                n = len(job.grays)
                if not job.future.done():
                    job.future.set_result(outputs[start : start + n])
                start += n

    def _take_batch(self) -> list[_Job]:
        """The first waiting job plus the following ones of the same kind that fit a batch."""
        batch: list[_Job] = []
        n = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # the client went away while it waited
                self._jobs.popleft()
                continue
            if batch and (job.key != batch[0].key or n + len(job.grays) > self.batch_size):
                break
            batch.append(self._jobs.popleft())
            n += len(job.grays)
        return batch

    def _compute(self, kind: str, method: str, grays: list[np.ndarray]) -> list[ModelOutput]:
        """Model thread: probabilities through the Predictor, then Grad-CAM for its decision."""
        p = self.predictor
        out: list[ModelOutput] = []
        for i in range(0, len(grays), self.batch_size):
            x = p.batch_tensor(grays[i : i + self.batch_size])
            probs = [float(v) for v in p.probabilities(x).tolist()]
            if kind == "predict":
                out.extend(ModelOutput(prob) for prob in probs)
                continue
            names = list(p.ckpt.class_names)
            # Explain the class the Predictor decided (its threshold, its calibration).
            targets = torch.tensor([names.index(p.label_of(prob)) for prob in probs])
            exp = explain(
                p.ckpt.model, x, method=method, layer=p.ckpt.target_layer, target=targets,
                precision=p.precision, class_names=names, temperature=p.temperature,
            )
            raws = exp.raw.float().cpu().numpy()
            out.extend(ModelOutput(prob, raws[k]) for k, prob in enumerate(probs))
        return out
