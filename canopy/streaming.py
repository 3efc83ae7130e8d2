"""Client-disconnect watching for ASGI streams: the seam under every streamed answer (a chute
instance's, the axon's, the gateway's). A client that hangs up cancels the work at its
current ``await`` instead of letting it run to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable, TypeVar

from starlette.responses import StreamingResponse

Receive = Callable[[], Any]
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected: before its request body arrived, or while its answer was
    being made (``until_disconnect``)."""


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """``await work`` in this task; if the client disconnects first, ``work`` is cancelled at
    its current ``await`` (miner calls, a stream's generator) and ``ClientGone`` is raised.

    One watcher task cancels this one, where Starlette's ``StreamingResponse`` opens an anyio
    task group per response (measured with py-spy: ~10% of a miner's CPU per ``Invoke``) and
    the API used to run the work in a second task. uvicorn drops the writes to a closed
    connection silently, so without a watcher a stream whose client left would run to its end."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        with contextlib.suppress(Exception):
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        result = await work
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:  # a cancel from elsewhere (shutdown) still propagates
            raise
        raise ClientGone() from None
    finally:
        watcher.cancel()
    if gone:  # the work caught the cancel and ended on its own
        task.uncancel()
        raise ClientGone()
    return result


class WatchedStreamingResponse(StreamingResponse):
    """``StreamingResponse`` whose client-disconnect watch is ``until_disconnect``: the body
    iterator is cancelled at its current ``await`` when the client leaves, as Starlette does."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        with contextlib.suppress(ClientGone):
            await until_disconnect(self.stream_response(send), receive)
        if self.background is not None:
            await self.background()
