"""Replay protection shared by several axon workers: nonce stores for btauth/1.

Callers: the axon (checks every authenticated request's ``(hotkey, nonce)`` once the
signature and payload are known good), neurons that run several axon workers for one
hotkey (they pass a ``RedisNonceStore`` built from ``--redis_url``), tests.

Two stores satisfy bittensor's ``http_auth.NonceStore`` protocol
(``check_and_store(hotkey, nonce) -> bool`` plus a ``retention`` attribute):
``bittensor.http_auth.InMemoryNonceStore`` (the per-process default) and
``RedisNonceStore`` below.

Why the axon does not let ``http_auth.verify`` consult the store: ``verify`` is
synchronous, so a Redis-backed store called from inside it would block the event loop
for a network round trip on every request. The axon instead calls ``verify`` with
``ACCEPT_ALL`` (signature, receiver and freshness are still checked), then parses the
payload, and only then records the nonce with ``await check_nonce(store, ...)``, which
uses the store's ``acheck_and_store`` coroutine when it has one. Recording last also
means a request that fails any check leaves nothing behind. The synchronous
``check_and_store`` stays available for code that calls ``http_auth.verify`` directly.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import redis
import redis.asyncio as aioredis
from bittensor.http_auth import NonceStore

DEFAULT_RETENTION = 60.0


class AcceptAllNonces:
    """A store that records nothing: lets ``http_auth.verify`` check everything but replay."""

    retention = None

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        return True


ACCEPT_ALL = AcceptAllNonces()


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

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        """Blocking variant, for ``http_auth.verify(nonce_store=...)`` callers."""
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, socket_timeout=self._socket_timeout)
        return bool(self._sync.set(self._key(hotkey_ss58, nonce_ns), b"1", nx=True, px=self._expire_ms))

    async def acheck_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        """Non-blocking variant, used by the axon."""
        if self._async is None:
            self._async = aioredis.Redis.from_url(self.url, socket_timeout=self._socket_timeout)
        return bool(await self._async.set(self._key(hotkey_ss58, nonce_ns), b"1", nx=True, px=self._expire_ms))

    async def ping(self) -> bool:
        """True when Redis answers; axons call this at start-up to fail fast."""
        if self._async is None:
            self._async = aioredis.Redis.from_url(self.url, socket_timeout=self._socket_timeout)
        return bool(await self._async.ping())

    async def aclose(self) -> None:
        """Close both connection pools; safe to call twice."""
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None


async def check_nonce(store: NonceStore | Any, hotkey_ss58: str, nonce_ns: int) -> bool:
    """Record a nonce in any store: awaits ``acheck_and_store`` when the store has one."""
    check = getattr(store, "acheck_and_store", None)
    if check is not None:
        return bool(await check(hotkey_ss58, nonce_ns))
    result = store.check_and_store(hotkey_ss58, nonce_ns)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
