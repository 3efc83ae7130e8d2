"""ASGI and socket plumbing under the axon: raw replies, body reading, NDJSON, uvicorn.

The transport under the axon's request pipeline. The axon answers synapse requests at
the ASGI level (no router, middleware or Request objects on the hot path) with these
helpers, streams with ``NdjsonResponse`` (``canopy.streaming``'s disconnect-watched
response), and runs uvicorn inside the caller's event loop with ``EmbeddedServer`` (which
leaves signals to the process that embeds it) on a socket from ``bind_socket``.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, AsyncGenerator, AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from canopy.streaming import ClientGone, WatchedStreamingResponse
from protocol import errors
from protocol.admission import PriorityGate

JSON = b"application/json"
NDJSON = "application/x-ndjson"


async def send_body(send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """One complete JSON reply."""
    headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: errors.ProtocolError) -> None:
    extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]
    await send_body(send, error.status, error.to_json(), extra)


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The whole request body, refusing anything over ``limit`` bytes: at once when
    ``Content-Length`` says so, otherwise as soon as the running total passes it."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(f"body of {declared.decode()} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise errors.PayloadTooLarge(f"body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


class NdjsonResponse(WatchedStreamingResponse):
    """A streamed reply that frees its admission slot and closes the handler's generator
    however the response ends: finished, failed, or cut off by a client disconnect."""

    media_type = NDJSON

    def __init__(self, lines: AsyncIterator[bytes], chunks: AsyncGenerator[Any, None], gate: PriorityGate) -> None:
        super().__init__(lines, media_type=NDJSON)
        self._chunks = chunks
        self._gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._gate.release()
            with contextlib.suppress(Exception):
                await self._chunks.aclose()


class EmbeddedServer(uvicorn.Server):
    """uvicorn without signal capture: the process that embeds the axon owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; raises OSError (e.g. port in use) instead of exiting as uvicorn does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every reply waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def server_config(app: ASGIApp) -> uvicorn.Config:
    """uvicorn settings for an axon: httptools, no access log, no proxy-header rewriting
    (the axon faces the internet directly), long keep-alive for the dendrite's pool."""
    return uvicorn.Config(
        app, http="httptools", lifespan="off", log_level="warning", access_log=False, proxy_headers=False,
        server_header=False, date_header=False, timeout_keep_alive=75, timeout_graceful_shutdown=3,
    )
