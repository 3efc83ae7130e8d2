"""The dendrite: the validator-side client that signs synapses and calls miner axons.

The client half of the wire (the server half is ``protocol.axon.Axon``).
``SynapseCaller`` is the part of it a GraVal verifier relies on, so a wrapper that edits
answers can stand in for a ``Dendrite``; a target is anything ``TargetLike``.

One ``aiohttp.ClientSession`` per dendrite: keep-alive connections (closed by the client
before the axon's own keep-alive expires), TCP_NODELAY (aiohttp sets it on every
connection it opens), and a connection limit sized for fan-out to hundreds of axons.
Every attempt is signed afresh with btauth/1 (receiver = the target's hotkey, a strictly
increasing nanosecond nonce, the exact path sent). ``call`` and ``query`` never raise for
a miner's failure: each returns a ``Result`` with a status, the HTTP status, the latency
and the typed error. ``stream`` yields chunks as they arrive and raises the typed error.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import AsyncGenerator, Protocol, Sequence, TypeAlias

import aiohttp
import bittensor as bt
from bittensor import http_auth
from bittensor.signing import resolve_signer
from bittensor.wallets import CRYPTO_TYPE_NAMES
from pydantic import ValidationError

from chain.base import Neuron
from protocol import errors
from protocol.synapse import PROTOCOL_HEADER, Synapse, SynapseResponse

OK, TIMEOUT, CONNECTION_ERROR, HTTP_ERROR, DECODE_ERROR = "ok", "timeout", "connection_error", "http_error", "decode_error"
DEFAULT_TIMEOUT = 12.0


@dataclass(frozen=True)
class Target:
    """Where to send a synapse: the receiving hotkey and the axon's base URL."""

    hotkey: str
    url: str


class Addressed(Protocol):
    """Anything that names its hotkey and base URL (an ``Axon``)."""

    @property
    def hotkey(self) -> str: ...

    @property
    def url(self) -> str: ...


#: What ``call``, ``query`` and ``stream`` accept as a target.
TargetLike: TypeAlias = Target | Neuron | tuple[str, str] | Addressed


def as_target(target: TargetLike) -> Target:
    """A ``Target`` from a Neuron (chain/base.py), a Target, an Axon, or a (hotkey, url) pair.
    A neuron that serves no axon gets an empty ``url`` (its calls fail as connection errors)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, tuple):
        return Target(str(target[0]), str(target[1]).rstrip("/"))
    if isinstance(target, Neuron):
        return Target(target.hotkey, target.axon.url if target.axon is not None and target.is_serving else "")
    return Target(target.hotkey, str(target.url).rstrip("/"))


@dataclass(frozen=True)
class Result:
    """What one call to one axon gave: never an exception."""

    target: Target
    status: str
    http_status: int
    latency_s: float
    error: errors.ProtocolError | None = None
    response: SynapseResponse | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def hotkey(self) -> str:
        return self.target.hotkey


class SynapseCaller(Protocol):
    """One signed call to one axon under a hotkey: what a GraVal verifier needs from a dendrite.
    ``Dendrite`` is one; so is a wrapper that edits answers (``validator.identity.ClaimFilter``)."""

    @property
    def hotkey(self) -> str: ...

    async def call(self, target: TargetLike, synapse: Synapse, timeout: float | None = None, *, retries: int = 0) -> Result:
        ...


class Dendrite:
    """Signs and sends synapses for one wallet's hotkey."""

    def __init__(
        self,
        wallet: bt.Wallet,
        *,
        connection_limit: int = 1024,
        keepalive_s: float = 60.0,
        default_timeout: float = DEFAULT_TIMEOUT,
        max_response_bytes: int = 64 << 20,
    ) -> None:
        self.signer = resolve_signer(wallet, role="hotkey")
        self.hotkey: str = self.signer.ss58_address
        self._scheme = CRYPTO_TYPE_NAMES[self.signer.crypto_type]
        self.connection_limit = connection_limit
        self.keepalive_s = keepalive_s
        self.default_timeout = default_timeout
        self.max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        self._last_nonce = 0
        self._timeouts: dict[tuple[float, float | None], aiohttp.ClientTimeout] = {}

    # --- plumbing ------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """The one shared session, created on first use inside the running event loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.connection_limit, limit_per_host=0, keepalive_timeout=self.keepalive_s, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False,
                skip_auto_headers=("User-Agent",), raise_for_status=False,
            )
        return self._session

    def _timeout(self, total: float | None, idle: float | None = None) -> aiohttp.ClientTimeout:
        key = (self.default_timeout if total is None else total, idle)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=key[0], sock_read=idle)
        return timeout

    def _nonce(self) -> int:
        nonce = time.time_ns()
        if nonce <= self._last_nonce:
            nonce = self._last_nonce + 1
        self._last_nonce = nonce
        return nonce

    def sign(self, target: Target, path: str, body: bytes, protocol_version: str) -> dict[str, str]:
        """The headers for one attempt: btauth/1 bound to ``target.hotkey`` plus our protocol.

        Equivalent to ``http_auth.sign`` (same normative ``build_payload``, same headers)
        with the signer resolved once in the constructor instead of on every request.
        """
        nonce = self._nonce()
        payload = http_auth.build_payload(
            scheme=self._scheme, method="POST", path=path, body=body, nonce_ns=nonce,
            sender_ss58=self.hotkey, receiver_ss58=target.hotkey,
        )
        headers = {
            http_auth.HEADER_VERSION: http_auth.VERSION,
            http_auth.HEADER_HOTKEY: self.hotkey,
            http_auth.HEADER_NONCE: str(nonce),
            http_auth.HEADER_SIGNATURE: "0x" + bytes(self.signer.sign(payload)).hex(),
            http_auth.HEADER_RECEIVER: target.hotkey,
            "Content-Type": "application/json",
            PROTOCOL_HEADER: protocol_version,
        }
        if self._scheme != "sr25519":
            headers[http_auth.HEADER_CRYPTO] = self._scheme
        return headers

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared <= self.max_response_bytes:
            return await response.read()
        parts, size = [], 0
        async for part in response.content.iter_any():
            size += len(part)
            if size > self.max_response_bytes:
                raise errors.DecodeError(f"response exceeds {self.max_response_bytes} bytes")
            parts.append(part)
        return b"".join(parts)

    # --- one call ------------------------------------------------------------------------

    async def call(self, target: TargetLike, synapse: Synapse, timeout: float | None = None, *, retries: int = 0) -> Result:
        """Send ``synapse`` to one axon and wait for its response (or failure) up to ``timeout`` s.
        Connection failures are retried ``retries`` times, each with a fresh signature."""
        return await self._call(as_target(target), type(synapse), synapse.to_json(), timeout, retries)

    async def _call(
        self, target: Target, kind: type[Synapse], body: bytes, timeout: float | None, retries: int
    ) -> Result:
        if not target.url:
            return Result(target, CONNECTION_ERROR, 0, 0.0, errors.ConnectionFailed("the neuron serves no axon"))
        path = kind.route()
        url = target.url + path
        client_timeout = self._timeout(timeout)
        started = time.perf_counter()
        for attempt in range(retries + 1):
            headers = self.sign(target, path, body, kind.protocol_version)
            try:
                async with self.session.post(url, data=body, headers=headers, timeout=client_timeout) as response:
                    status = response.status
                    payload = await self._read(response)
            except errors.DecodeError as error:
                return Result(target, DECODE_ERROR, status, time.perf_counter() - started, error)
            except TimeoutError:
                timed_out = errors.RequestTimeout(f"no response within {client_timeout.total:g}s")
                return Result(target, TIMEOUT, 0, time.perf_counter() - started, timed_out)
            except (aiohttp.ClientError, OSError, ValueError) as error:  # ValueError: an unusable URL
                if attempt < retries:
                    continue
                failure = errors.ConnectionFailed(f"{type(error).__name__}: {error}")
                return Result(target, CONNECTION_ERROR, 0, time.perf_counter() - started, failure)
            break
        latency = time.perf_counter() - started
        if status != 200:
            return Result(target, HTTP_ERROR, status, latency, errors.error_from_body(status, payload))
        try:
            return Result(target, OK, status, latency, None, kind.parse_response(payload))
        except ValidationError as error:
            problem = errors.DecodeError(f"invalid {kind.response_model.__name__}: {error.error_count()} error(s)")
            return Result(target, DECODE_ERROR, status, latency, problem)

    async def query(
        self, targets: Sequence[TargetLike], synapse: Synapse, timeout: float | None = None, *, retries: int = 0
    ) -> list[Result]:
        """Send ``synapse`` to every target concurrently; one ``Result`` per target, in order."""
        body = synapse.to_json()
        kind = type(synapse)
        return list(await asyncio.gather(*(self._call(as_target(t), kind, body, timeout, retries) for t in targets)))

    # --- streaming -----------------------------------------------------------------------

    async def stream(
        self, target: TargetLike, synapse: Synapse, timeout: float | None = None, *, idle_timeout: float | None = None
    ) -> AsyncGenerator[SynapseResponse, None]:
        """Yield the chunks of a streaming synapse (NDJSON lines) as they arrive.

        ``timeout`` bounds the whole stream, ``idle_timeout`` the gap between reads.
        Raises a ``protocol.errors.ProtocolError``: the axon's typed error for a refused
        request or a failure mid-stream, ``RequestTimeout``, ``ConnectionFailed`` or
        ``DecodeError``.
        """
        resolved = as_target(target)
        if not resolved.url:
            raise errors.ConnectionFailed("the neuron serves no axon")
        kind = type(synapse)
        body = synapse.to_json()
        path = kind.route()
        headers = self.sign(resolved, path, body, kind.protocol_version)
        try:
            async with self.session.post(
                resolved.url + path, data=body, headers=headers, timeout=self._timeout(timeout, idle_timeout)
            ) as response:
                if response.status != 200:
                    raise errors.error_from_body(response.status, await self._read(response))
                buffer = b""
                async for part in response.content.iter_any():
                    buffer += part
                    if len(buffer) > self.max_response_bytes:
                        raise errors.DecodeError(f"a stream line exceeds {self.max_response_bytes} bytes")
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield _decode_line(kind, line)
                if buffer.strip():
                    yield _decode_line(kind, buffer)
        except TimeoutError:
            raise errors.RequestTimeout("the stream timed out") from None
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise errors.ConnectionFailed(f"{type(error).__name__}: {error}") from None

    # --- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session and its connections; safe to call twice."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> "Dendrite":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _decode_line(kind: type[Synapse], line: bytes) -> SynapseResponse:
    """One NDJSON line: a chunk, or the terminal ``{"error": {...}}`` line (raised)."""
    if line.startswith(b'{"error"'):
        try:
            payload = json.loads(line)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.keys() == {"error"} and isinstance(payload["error"], dict):
            raise errors.error_from_body(200, line)
    try:
        return kind.parse_response(line)
    except ValidationError as error:
        raise errors.DecodeError(f"invalid {kind.response_model.__name__} chunk: {error.error_count()} error(s)") from None
