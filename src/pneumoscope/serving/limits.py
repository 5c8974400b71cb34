"""Limits that uvicorn does not set: a deadline on the request body.

uvicorn bounds how long an idle keep-alive connection stays open (``timeout_keep_alive``)
and how large an incomplete set of headers may grow, but once a request's headers have
arrived it waits for the body as long as the client likes. A client that trickles an
upload one byte at a time would hold a connection, and the memory of what it has sent,
for ever. :class:`BodyDeadline` gives every request a fixed time to deliver its whole body.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from .uploads import ApiError

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyDeadline:
    """ASGI middleware: the body must arrive within ``seconds`` of the request's start.

    The deadline wraps the ``receive`` channel, so it holds wherever the body is read. A
    late body raises :class:`~.uploads.ApiError` (408) inside the reader, which the app
    answers as JSON; the connection is then closed, since its body was never consumed.
    Once the last body chunk has arrived, ``receive`` is passed through untouched (it then
    only waits for a disconnect, which may take as long as the response does).
    """

    def __init__(self, app: Callable[[Message, Receive, Send], Awaitable[None]], seconds: float) -> None:
        self.app = app
        self.seconds = float(seconds)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        done = False

        async def timed_receive() -> Message:
            nonlocal done
            if done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408, f"the request body did not arrive within {self.seconds:g} s (--body-timeout); "
                    "the upload was too slow", headers={"Connection": "close"},
                ) from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                done = True
            return message

        await self.app(scope, timed_receive, send)
