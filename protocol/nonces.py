"""Replay protection for btauth/1: the nonce-store seam of the axon and its two stores.

``NonceStore`` is the contract the axon takes: record a ``(hotkey, nonce)`` once, without
blocking the event loop (``acheck_and_store``), say how long records are kept
(``retention``, checked against the verifier's freshness window) and answer a start-up
``ping`` (a shared store fails fast there when it is unreachable). Two stores meet it:

- ``LocalNonceStore``: the per-process default, any synchronous bittensor
  ``http_auth.NonceStore`` (``InMemoryNonceStore`` unless given another) behind the
  async contract;
- ``RedisNonceStore``: one store shared by several axon workers of one hotkey (the miner
  builds it from ``--redis_url``), so a request replayed to another worker is refused.

Why the axon does not let ``http_auth.verify`` consult the store: ``verify`` is
synchronous, so a Redis-backed store called from inside it would block the event loop
for a network round trip on every request. The axon instead calls ``verify`` with
``ACCEPT_ALL`` (signature, receiver and freshness are still checked), then parses the
payload, and only then records the nonce with ``await store.acheck_and_store(...)``.
Recording last also means a request that fails any check leaves nothing behind. The
synchronous ``check_and_store`` of both stores stays available for code that calls
``http_auth.verify`` directly.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import redis
import redis.asyncio as aioredis
from bittensor import http_auth

DEFAULT_RETENTION = 60.0


@runtime_checkable
class NonceStore(Protocol):
    """What the axon needs from a replay-protection store."""

    @property
    def retention(self) -> float | None:
        """Seconds a record is kept (None: unknown, not checked); must cover ``max_age + allowed_skew``."""
        ...

    async def acheck_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        """Record the pair: True when it was new, False when it was already seen (a replay).
        Raises when the store cannot answer (the axon then refuses the request)."""
        ...

    async def ping(self) -> bool:
        """True when the store answers; raises when it is unreachable."""
        ...


class AcceptAllNonces:
    """A store that records nothing: lets ``http_auth.verify`` check everything but replay."""

    retention = None

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        return True


ACCEPT_ALL = AcceptAllNonces()


class LocalNonceStore:
    """This process's nonces: a synchronous bittensor store (default ``InMemoryNonceStore``)
    behind ``NonceStore``. Each check is an in-memory dict lookup, run on the event loop."""

    def __init__(self, store: http_auth.NonceStore | None = None, *, retention: float = DEFAULT_RETENTION) -> None:
        self.store: http_auth.NonceStore = store if store is not None else http_auth.InMemoryNonceStore(retention)

    @property
    def retention(self) -> float | None:
        """The wrapped store's retention when it declares one (bittensor's in-memory store does)."""
        return self.store.retention if isinstance(self.store, http_auth.InMemoryNonceStore) else None

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        return self.store.check_and_store(hotkey_ss58, nonce_ns)

    async def acheck_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        return bool(self.store.check_and_store(hotkey_ss58, nonce_ns))

    async def ping(self) -> bool:
        return True


def as_nonce_store(store: NonceStore | http_auth.NonceStore | None) -> NonceStore:
    """The store the axon uses: ``store`` itself when it meets ``NonceStore``; a synchronous
    bittensor store (or None, for a fresh in-memory one) wrapped in ``LocalNonceStore``."""
    if isinstance(store, NonceStore):
        return store
    return LocalNonceStore(store)


class RedisNonceStore:
    """Seen nonces in Redis: one key per ``(hotkey, nonce)``, written with ``SET NX EX``.

    ``SET NX`` is atomic on the server, so of two workers that race on the same nonce
    exactly one sees True. Keys expire after ``retention`` seconds, which must cover the
    verifier's freshness window (``max_age + allowed_skew``); anything older is refused
    as stale before the store is consulted.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        retention: float = DEFAULT_RETENTION,
        prefix: str = "canopy:nonce:",
        socket_timeout: float = 2.0,
    ) -> None:
        if retention <= 0:
            raise ValueError("retention must be positive")
        self.url = url
        self.retention = retention
        self.prefix = prefix
        self._expire_ms = int(math.ceil(retention * 1000))
        self._socket_timeout = socket_timeout
        self._sync: redis.Redis | None = None
        self._async: aioredis.Redis | None = None

    def _key(self, hotkey_ss58: str, nonce_ns: int) -> str:
        return f"{self.prefix}{hotkey_ss58}:{nonce_ns}"

    def _client(self) -> aioredis.Redis:
        if self._async is None:
            self._async = aioredis.Redis.from_url(self.url, socket_timeout=self._socket_timeout)
        return self._async

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        """Blocking variant, for ``http_auth.verify(nonce_store=...)`` callers."""
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, socket_timeout=self._socket_timeout)
        return bool(self._sync.set(self._key(hotkey_ss58, nonce_ns), b"1", nx=True, px=self._expire_ms))

    async def acheck_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        """Non-blocking variant, used by the axon."""
        return bool(await self._client().set(self._key(hotkey_ss58, nonce_ns), b"1", nx=True, px=self._expire_ms))

    async def ping(self) -> bool:
        """True when Redis answers; axons call this at start-up to fail fast."""
        return bool(await self._client().ping())

    async def aclose(self) -> None:
        """Close both connection pools; safe to call twice."""
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None
