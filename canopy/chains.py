"""Chains of chutes (after truss chains): one chute calling another's cords.

``other = canopy.depends(other_chute, retries=3, timeout=30)`` at module level gives a proxy
whose attributes are the other chute's cords: ``await other.shout(payload)``. Where the call
goes is decided per call:

- the target is hosted in this process (``canopy.run_local(...)``, ``canopy run --dev``):
  the cord runs directly, its payload still validated, and its result goes through the same
  JSON (or SSE) round trip as over the network, so local and remote runs return alike;
- else the URL of the target from env ``CANOPY_CHUTE_URLS`` (JSON ``{"<chute_id or
  username/name>": "http://host:port"}``, set by whoever hosts the chute, e.g. the miner),
  called with aiohttp: exponential backoff on connection errors and 429/502/503/504,
  ``timeout`` seconds per attempt.

A failure comes back as ``RemoteChuteError`` with the remote exception's type, message and
frames (from the instance's typed 500 body), and its str shows the remote stack trace.
``http_call`` is the one HTTP path to a cord, for chains and for the dev client alike.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from pydantic import TypeAdapter, ValidationError

from canopy.chute import Chute, load_chute
from canopy.cord import (Cord, encode_chunk, exception_frames, is_async_iterator, to_jsonable, validation_detail,
                         validation_message)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
URLS_ENV = "CANOPY_CHUTE_URLS"


class RemoteChuteError(Exception):
    """A call to another chute failed; carries the remote exception's type, message and frames."""

    def __init__(self, target: str, path: str, *, kind: str, message: str, status: int | None = None,
                 remote_type: str | None = None, frames: list[dict] | None = None, detail: Any = None) -> None:
        self.target, self.path, self.kind, self.status = target, path, kind, status
        self.remote_type = remote_type or kind
        self.remote_message = message
        self.frames = list(frames or [])
        self.detail = detail
        super().__init__(self._render())

    def _render(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        text = f"chute {self.target} cord {self.path} failed{status}: {self.remote_type}: {self.remote_message}"
        if self.frames:
            lines = ["Remote traceback (most recent call last):"]
            for frame in self.frames:
                lines.append(f'  File "{frame.get("file")}", line {frame.get("line")}, in {frame.get("function")}')
                if frame.get("code"):
                    lines.append(f"    {frame['code']}")
            lines.append(f"{self.remote_type}: {self.remote_message}")
            text += "\n" + "\n".join(lines)
        return text

    @classmethod
    def from_error(cls, target: str, path: str, error: dict, status: int | None = None) -> "RemoteChuteError":
        """From an instance's typed error ``{"type", "message", "remote"?: {...}, "detail"?}``."""
        remote = error.get("remote") or {}
        return cls(target, path, kind=str(error.get("type", "error")), status=status,
                   message=str(remote.get("message", error.get("message", ""))),
                   remote_type=remote.get("type"), frames=remote.get("traceback"), detail=error.get("detail"))


class ChuteUnresolved(RuntimeError):
    """No way to reach a dependency: not hosted here and no URL for it."""


class SSEDecoder:
    """Incremental Server-Sent-Events parser: bytes in, ``data`` payloads out (JSON parsed when it is
    JSON; OpenAI's ``[DONE]`` terminator dropped; a block that is not SSE at all comes out as text)."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, data: bytes | str) -> list[Any]:
        self._buffer += data.decode() if isinstance(data, bytes) else data
        self._buffer = self._buffer.replace("\r\n", "\n")
        events = []
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            events.extend(self._decode(block))
        return events

    def flush(self) -> list[Any]:
        block, self._buffer = self._buffer, ""
        return self._decode(block) if block.strip() else []

    @staticmethod
    def _decode(block: str) -> list[Any]:
        lines = block.split("\n")
        data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        if not data:
            is_sse = all(line.startswith((":", "event:", "id:", "retry:")) or not line for line in lines)
            return [] if is_sse else [block]
        text = "\n".join(data)
        if text == "[DONE]":
            return []
        try:
            return [json.loads(text)]
        except ValueError:
            return [text]


def _check_error_chunk(chunk: Any, target: str, path: str) -> Any:
    if isinstance(chunk, dict) and set(chunk) == {"error"} and isinstance(chunk["error"], dict):
        raise RemoteChuteError.from_error(target, path, chunk["error"])
    return chunk


async def http_call(base_url: str, path: str, payload: Any, *, method: str = "POST", timeout: float | None = 30.0,
                    retries: int = 0, backoff_s: float = 0.25, target: str = "") -> Any:
    """Call a cord over HTTP: parsed JSON, or an async iterator of chunks for a streamed reply
    (SSE events decoded, JSON data parsed; other media types as bytes)."""
    import aiohttp

    url = base_url.rstrip("/") + path
    target = target or base_url
    body = None if payload is None else json.dumps(to_jsonable(payload)).encode()
    attempt = 0
    session: aiohttp.ClientSession | None
    response: aiohttp.ClientResponse | None
    while True:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout,
                                                                       sock_read=timeout))
        try:
            response = await asyncio.wait_for(
                session.request(method, url, data=body, headers={"Content-Type": "application/json"}), timeout)
        except asyncio.TimeoutError as exc:  # before OSError: TimeoutError is one
            await session.close()
            raise RemoteChuteError(target, path, kind="timeout", message=f"no reply from {url} in {timeout}s") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            await session.close()
            if attempt < retries:
                await asyncio.sleep(backoff_s * 2 ** attempt)
                attempt += 1
                continue
            raise RemoteChuteError(target, path, kind="connection_failed", message=f"cannot reach {url}: {exc}") from exc
        if response.status in RETRY_STATUSES and attempt < retries:
            response.release()
            await session.close()
            await asyncio.sleep(backoff_s * 2 ** attempt)
            attempt += 1
            continue
        break
    try:
        if response.status >= 400:
            raw = await response.read()
            try:
                error = json.loads(raw).get("error")
            except (ValueError, AttributeError):
                error = None
            if not isinstance(error, dict):
                error = {"type": "http_error", "message": raw.decode(errors="replace")[:2000]}
            raise RemoteChuteError.from_error(target, path, error, status=response.status)
        if response.content_type == "application/json":
            return await asyncio.wait_for(response.json(), timeout)
        if response.content_type == "text/event-stream" or response.headers.get("Transfer-Encoding") == "chunked":
            owned, response, session = (response, session), None, None  # the iterator closes them
            return _iterate(*owned, target=target, path=path)
        return await response.read()
    except asyncio.TimeoutError as exc:
        raise RemoteChuteError(target, path, kind="timeout", message=f"reply from {url} took over {timeout}s") from exc
    finally:
        if response is not None:
            response.release()
        if session is not None:
            await session.close()


async def _iterate(response: Any, session: Any, *, target: str, path: str) -> AsyncIterator[Any]:
    sse = response.content_type == "text/event-stream"
    decoder = SSEDecoder()
    try:
        async for data in response.content.iter_any():
            if not sse:
                yield data
                continue
            for chunk in decoder.feed(data):
                yield _check_error_chunk(chunk, target, path)
        for chunk in decoder.flush() if sse else ():
            yield _check_error_chunk(chunk, target, path)
    finally:
        response.release()
        await session.close()


async def _local_stream(iterator: Any, cord: Cord, target: str) -> AsyncIterator[Any]:
    """A local stream as a remote caller would see it (each chunk encoded, then decoded)."""
    sse = cord.stream_content_type.startswith("text/event-stream")
    decoder = SSEDecoder()
    try:
        async for chunk in iterator:
            data = encode_chunk(chunk)
            if not sse:
                yield data
                continue
            for item in decoder.feed(data):
                yield _check_error_chunk(item, target, cord.path)
        for item in decoder.flush() if sse else ():
            yield _check_error_chunk(item, target, cord.path)
    except RemoteChuteError:
        raise
    except Exception as exc:  # noqa: BLE001 - like the error chunk of a remote stream
        raise RemoteChuteError(target, cord.path, kind="remote_error", remote_type=type(exc).__name__,
                               message=str(exc), frames=exception_frames(exc)) from exc


def chute_urls() -> dict[str, str]:
    """``CANOPY_CHUTE_URLS`` parsed ({} when unset)."""
    raw = os.environ.get(URLS_ENV, "").strip()
    if not raw:
        return {}
    try:
        urls = json.loads(raw)
    except ValueError as exc:
        raise ChuteUnresolved(f"{URLS_ENV} is not JSON ({exc}); expected {{\"<chute_id or user/name>\": \"http://host:port\"}}") from None
    if not isinstance(urls, dict):
        raise ChuteUnresolved(f"{URLS_ENV} must be a JSON object of chute -> URL")
    return {str(k): str(v) for k, v in urls.items()}


class RemoteCord:
    """A cord of a dependency, called through its ChuteProxy (``await other.shout(payload)``)."""

    def __init__(self, proxy: "ChuteProxy", cord: Cord) -> None:
        self.proxy, self.cord = proxy, cord

    async def __call__(self, payload: Any = None, /, **fields: Any) -> Any:
        if payload is None and fields:
            payload = fields
        chute, cord = self.proxy.chute, self.cord
        label = f"{chute.username}/{chute.name}"
        if chute.hosted:
            return await self._call_direct(payload, label)
        url = self.proxy.url()
        if url is None:
            raise ChuteUnresolved(
                f"cannot reach chute {label} ({chute.chute_id}): it is not hosted in this process and "
                f"{URLS_ENV} has no entry for it; set {URLS_ENV}='{{\"{label}\": \"http://host:port\"}}' or wrap "
                f"the calls in `canopy.run_local(...)`")
        result = await http_call(url, cord.path, payload, method=cord.method, timeout=self.proxy.timeout,
                                 retries=self.proxy.retries, backoff_s=self.proxy.backoff_s, target=label)
        return self._typed(result)

    async def _call_direct(self, payload: Any, label: str) -> Any:
        cord = self.cord
        try:
            result = await cord.call_local(payload)
        except ValidationError as exc:
            detail = validation_detail(exc)
            raise RemoteChuteError(label, cord.path, kind="invalid_payload", status=422,
                                   message=validation_message(detail), detail=detail) from exc
        except Exception as exc:  # noqa: BLE001 - same shape as a remote failure
            raise RemoteChuteError(label, cord.path, kind="remote_error", status=500, remote_type=type(exc).__name__,
                                   message=str(exc), frames=exception_frames(exc)) from exc
        if is_async_iterator(result):
            return _local_stream(result, cord, label)
        if isinstance(result, (bytes, str)) and cord.output_content_type != "application/json":
            return result.encode() if isinstance(result, str) else result
        return self._typed(json.loads(json.dumps(to_jsonable(result))))

    def _typed(self, result: Any) -> Any:
        """JSON results as the cord's declared output type (e.g. its pydantic model)."""
        out = self.cord.output_type
        if out is None or is_async_iterator(result) or isinstance(result, bytes):
            return result
        try:
            return TypeAdapter(out).validate_python(result)
        except ValidationError:
            return result

    def __repr__(self) -> str:
        return f"<RemoteCord {self.cord.path} of {self.proxy!r}>"


class ChuteProxy:
    """What ``depends`` returns: attribute access gives the dependency's cords."""

    def __init__(self, target: Chute | str, *, retries: int = 3, timeout: float = 30.0, backoff_s: float = 0.25,
                 url: str | None = None) -> None:
        if not isinstance(target, (Chute, str)):
            raise TypeError(f"depends() takes a Chute or a 'module:attr' reference, got {target!r}")
        if retries < 0 or timeout <= 0:
            raise ValueError("depends(): retries must be >= 0 and timeout > 0")
        self._target, self.retries, self.timeout, self.backoff_s, self._url = target, retries, timeout, backoff_s, url

    @property
    def chute(self) -> Chute:
        if isinstance(self._target, str):
            self._target = load_chute(self._target)
        return self._target

    def url(self) -> str | None:
        if self._url:
            return self._url
        urls = chute_urls()
        chute = self.chute
        return urls.get(chute.chute_id) or urls.get(f"{chute.username}/{chute.name}")

    def __getattr__(self, name: str) -> RemoteCord:
        if name.startswith("_"):
            raise AttributeError(name)
        cord = self.chute.cord_by_name(name)
        if cord is None:
            names = sorted(c.name for c in self.chute.cords.values())
            raise AttributeError(f"chute {self.chute.username}/{self.chute.name} has no cord {name!r} (cords: {names})")
        return RemoteCord(self, cord)

    def __repr__(self) -> str:
        target = self._target if isinstance(self._target, str) else f"{self._target.username}/{self._target.name}"
        return f"<depends {target} retries={self.retries} timeout={self.timeout}>"


def depends(target: Chute | str, *, retries: int = 3, timeout: float = 30.0, backoff_s: float = 0.25,
            url: str | None = None) -> ChuteProxy:
    """A proxy to another chute's cords (``await proxy.cord_name(payload)``); see the module doc."""
    return ChuteProxy(target, retries=retries, timeout=timeout, backoff_s=backoff_s, url=url)


from canopy.chains_local import LocalGraph, dependencies_of, run_local, start_local_dependencies  # noqa: E402

__all__ = ["ChuteProxy", "ChuteUnresolved", "LocalGraph", "RemoteChuteError", "RemoteCord", "SSEDecoder",
           "chute_urls", "dependencies_of", "depends", "http_call", "run_local", "start_local_dependencies"]
