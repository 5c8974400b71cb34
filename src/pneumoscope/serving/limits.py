"""Limits on request bodies that uvicorn does not set: a deadline, and a server-wide byte budget.

uvicorn bounds how long an idle keep-alive connection stays open (``timeout_keep_alive``)
and how large an incomplete set of headers may grow, but once a request's headers have
arrived it waits for the body as long as the client likes. A client that trickles an
upload one byte at a time would hold a connection, and the memory of what it has sent,
for ever. And each request may hold up to ``--max-upload-mb`` in memory, so many of them
at once could hold ``--max-connections`` times that. :class:`BodyLimits` gives every
request a fixed time to deliver its whole body and counts the body bytes held by all
requests in progress against one budget.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from .uploads import ApiError

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimits:
    """ASGI middleware: a body deadline per request and a byte budget over all requests.

    Both wrap the ``receive`` channel, so they hold wherever the body is read. A body late
    by ``seconds`` (counted from when the request's headers arrived) raises
    :class:`~.uploads.ApiError` 408 inside the reader, which the app answers as JSON, and the
    connection is then closed since its body was never consumed. A body chunk that would
    take the bytes held by all requests in progress past ``max_bytes`` raises 503 with
    Retry-After. A request's bytes count until the app has answered it (the upload is held
    in memory that long). Once the last body chunk has arrived, ``receive`` is passed through
    untouched (it then only waits for a disconnect, which may take as long as the response).
    """

    def __init__(
        self, app: Callable[[Message, Receive, Send], Awaitable[None]], seconds: float, max_bytes: int | None = None
    ) -> None:
        self.app = app
        self.seconds = float(seconds)
        self.max_bytes = max_bytes
        self.inflight_bytes = 0

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        done = False
        held = 0

        async def limited_receive() -> Message:
            nonlocal done, held
            if done:
                return await receive()
            try:
                # wait_for rather than asyncio.timeout: the package supports Python 3.10.
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ApiError(
                    408, f"the request body did not arrive within {self.seconds:g} s (--body-timeout); "
                    "the upload was too slow", headers={"Connection": "close"},
                ) from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                done = True
            n = len(message.get("body", b""))
            if n:
                if self.max_bytes is not None and self.inflight_bytes + n > self.max_bytes:
                    done = True
                    raise ApiError(
                        503, f"the server is busy receiving {self.inflight_bytes / 1e6:,.0f} MB of uploads "
                        f"(--max-inflight-upload-mb {self.max_bytes / 1e6:g}); retry shortly",
                        headers={"Retry-After": "1", "Connection": "close"},
                    )
                held += n
                self.inflight_bytes += n
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.inflight_bytes -= held
