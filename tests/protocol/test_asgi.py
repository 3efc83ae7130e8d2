"""``protocol.asgi.until_disconnect`` and ``WatchedStreamingResponse``: a stream stops when its client leaves."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn

from canopy.streaming import ClientGone, WatchedStreamingResponse, until_disconnect
from protocol.asgi import bind_socket


class Client:
    """An ASGI ``receive`` whose client hangs up when ``leave()`` is called."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> dict:
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_work_that_ends_first_is_returned_and_leaves_no_cancel_behind():
    client = Client()
    assert await until_disconnect(asyncio.sleep(0.01, result="answer"), client.receive) == "answer"
    assert asyncio.current_task().cancelling() == 0
    client.leave()
    await asyncio.sleep(0.01)  # the watcher is gone: a late hang-up cancels nothing
    assert asyncio.current_task().cancelling() == 0


async def test_a_hang_up_cancels_the_work_at_its_await_and_the_caller_carries_on():
    client, cleaned = Client(), asyncio.Event()

    async def idle_stream() -> None:
        try:
            await asyncio.sleep(30)  # a model thinking between two tokens
        finally:
            cleaned.set()

    asyncio.get_running_loop().call_later(0.05, client.leave)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ClientGone):
        await until_disconnect(idle_stream(), client.receive)
    assert asyncio.get_running_loop().time() - started < 5 and cleaned.is_set()
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0.01)  # the task is usable: no cancel left pending


async def test_work_that_swallows_the_cancel_still_counts_as_a_hang_up():
    client = Client()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return

    asyncio.get_running_loop().call_later(0.02, client.leave)
    with pytest.raises(ClientGone):
        await until_disconnect(stubborn(), client.receive)
    assert asyncio.current_task().cancelling() == 0


async def test_a_cancel_from_elsewhere_propagates():
    client = Client()
    task = asyncio.create_task(until_disconnect(asyncio.sleep(30), client.receive))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_shutdown_during_a_hang_up_still_propagates():
    client = Client()

    async def watched() -> None:
        await until_disconnect(asyncio.sleep(30), client.receive)

    task = asyncio.create_task(watched())
    await asyncio.sleep(0.02)
    client.leave()
    task.cancel()  # the server stops in the same instant
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_served_stream_stops_when_its_http_client_leaves():
    """Over real HTTP on uvicorn: the body iterator, idle between chunks, is closed when the client goes."""
    closed = asyncio.Event()

    async def chunks():
        try:
            yield b"first\n"
            await asyncio.sleep(30)
            yield b"never\n"
        finally:
            closed.set()

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await WatchedStreamingResponse(chunks(), media_type="text/plain")(scope, receive, send)

    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as http:
            async with http.stream("GET", f"http://127.0.0.1:{port}/") as response:
                async for line in response.aiter_lines():
                    assert line == "first"
                    break
        await asyncio.wait_for(closed.wait(), timeout=5)
    finally:
        server.should_exit = True
        await serving
