"""``Idempotency-Key``: a retried POST returns the first answer without calling a miner or charging again.

Seam: the gateway's idempotency part. The admission step (``api.admission``) claims the key
once the body is parsed (``claim_header``) and settles the claim (``Claim.finish`` or
``Claim.release``); the log retention prunes old records (``IdempotencyStore.prune``).
Records are ``store.api_tables.IdempotencyRecord`` rows, one per (API key, Idempotency-Key).

How a request with the header goes:

1. ``claim`` inserts a *pending* row (``status = 0``). The unique constraint on
   (key_id, idempotency_key) makes this the atomic step: of two concurrent duplicates only
   one insert succeeds, only that one goes on to call a miner.
2. The loser reads the existing row: the same request hash and a finished answer → the
   stored answer is replayed (status, body, content type, the ``x-canopy-miner-*``
   headers, plus ``x-canopy-idempotent-replay: true``); a different body (or route) under
   the same key → 422 ``idempotency_key_reused``; still pending → it waits for the first
   to finish (up to ``wait_s``), then replays it, or answers 409 ``idempotency_in_progress``.
3. The winner stores the answer when the miner answered (``finish``; chute 4xx answers are
   stored too, they would not change on a retry), or deletes the pending row when the
   request failed on our side (no miner, timeout, 5xx, client hung up: ``release``), so a
   retry is served afresh.

Streaming requests (``stream: true``) are supported: the relayed SSE body is stored once the
stream has ended cleanly and replayed as one ``text/event-stream`` body. A record expires
after ``ttl_s`` (24 h by default); a pending row older than ``stale_s`` (a crashed replica)
is taken over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, cast

from fastapi.responses import Response
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from api.batch import BackgroundWrites
from api.errors import ApiError, InvalidRequest
from store.api_tables import IdempotencyRecord

HEADER = "idempotency-key"
REPLAY_HEADER = "x-canopy-idempotent-replay"
PENDING = 0
KEPT_HEADERS = ("x-canopy-miner-uid", "x-canopy-miner-hotkey", "content-type")
DEFAULT_TTL_S = 24 * 3600.0


class IdempotencyConflict(ApiError):
    status, type, code = 409, "invalid_request_error", "idempotency_in_progress"


class IdempotencyMismatch(ApiError):
    status, type, code = 422, "invalid_request_error", "idempotency_key_reused"


def request_hash(path: str, data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


@dataclass
class Stored:
    status: int
    body: str
    headers: dict[str, str]

    def response(self) -> Response:
        headers = {k: v for k, v in self.headers.items() if k != "content-type"}
        headers[REPLAY_HEADER] = "true"
        return Response(self.body, status_code=self.status, media_type=self.headers.get("content-type"),
                        headers=headers)


@dataclass
class Claim:
    """The right to serve one (key, Idempotency-Key); ``replay`` is set when the answer exists already."""

    store: "IdempotencyStore"
    row_id: int | None = None
    replay: Stored | None = None
    settled: bool = False

    async def finish(self, status: int, body: str, headers: dict[str, str]) -> None:
        """Keep the answer for retries (statuses >= 500 are not kept: the claim is released)."""
        if self.settled or self.row_id is None:
            return
        self.settled = True
        if status >= 500 or status == PENDING:
            await self.store._delete(self.row_id)
            return
        kept = {k: v for k, v in headers.items() if k.lower() in KEPT_HEADERS}
        await self.store._fill(self.row_id, status, body, kept)

    def release(self) -> None:
        """Forget the pending row (the request failed on our side); runs in its own task."""
        if self.settled or self.row_id is None:
            return
        self.settled = True
        self.store.spawn(self.store._delete(self.row_id))

    def finish_later(self, status: int, body: str, headers: dict[str, str]) -> None:
        """``finish`` in its own task (from a stream's ``finally``, which a client can cancel)."""
        if self.settled or self.row_id is None:
            return
        self.store.spawn(self.finish(status, body, headers))


class IdempotencyStore:
    def __init__(self, engine: AsyncEngine, *, ttl_s: float = DEFAULT_TTL_S, wait_s: float = 60.0,
                 stale_s: float | None = None, poll_s: float = 0.05) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.ttl_s, self.wait_s, self.poll_s = ttl_s, wait_s, poll_s
        self.stale_s = stale_s if stale_s is not None else max(2 * wait_s + 30.0, 60.0)
        self._writes = BackgroundWrites()
        self.spawn, self.drain = self._writes.spawn, self._writes.drain  # finishing and freeing claims

    async def claim_header(self, value: str | None, key_id: int, path: str, data: Any) -> Claim | None:
        """The claim of a request whose ``Idempotency-Key`` header is ``value`` (None without one)."""
        if value is None:
            return None
        value = value.strip()
        if not value or len(value) > 255 or not value.isprintable():
            raise InvalidRequest("Idempotency-Key must be 1-255 printable characters", param="Idempotency-Key",
                                 code="invalid_value")
        return await self.claim(key_id, value, request_hash(path, data))

    async def claim(self, key_id: int, idempotency_key: str, digest: str, now: float | None = None) -> Claim:
        """Claim the key (a pending row), or the stored answer to replay; 422/409 as described above."""
        deadline = time.monotonic() + self.wait_s
        while True:
            now_ = time.time() if now is None else now
            try:
                async with self.sessions.begin() as session:
                    row = IdempotencyRecord(key_id=key_id, idempotency_key=idempotency_key, request_hash=digest,
                                            status=PENDING, body="", headers="{}", created_at=now_)
                    session.add(row)
                return Claim(self, row_id=row.id)
            except IntegrityError:
                pass
            async with self.sessions() as session:
                existing = (await session.scalars(select(IdempotencyRecord).where(
                    IdempotencyRecord.key_id == key_id, IdempotencyRecord.idempotency_key == idempotency_key))).first()
            if existing is None:  # released or pruned in between: claim again
                continue
            age = now_ - existing.created_at
            if age > self.ttl_s or (existing.status == PENDING and age > self.stale_s):
                await self._delete(existing.id, created_at=existing.created_at)
                continue
            if existing.request_hash != digest:
                raise IdempotencyMismatch(
                    "this Idempotency-Key was already used with a different request body; use a new key",
                    param="Idempotency-Key")
            if existing.status != PENDING:
                return Claim(self, replay=Stored(existing.status, existing.body, json.loads(existing.headers or "{}")),
                             settled=True)
            if time.monotonic() >= deadline:
                raise IdempotencyConflict("a request with this Idempotency-Key is still in progress; retry shortly",
                                          param="Idempotency-Key", headers={"Retry-After": "1"})
            await asyncio.sleep(self.poll_s)

    async def _fill(self, row_id: int, status: int, body: str, headers: dict[str, str]) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(IdempotencyRecord).where(IdempotencyRecord.id == row_id)
                                  .values(status=status, body=body, headers=json.dumps(headers)))

    async def _delete(self, row_id: int, created_at: float | None = None) -> None:
        statement = delete(IdempotencyRecord).where(IdempotencyRecord.id == row_id)
        if created_at is not None:  # only the row we looked at, not a fresh claim by someone else
            statement = statement.where(IdempotencyRecord.created_at == created_at)
        async with self.sessions.begin() as session:
            await session.execute(statement)

    async def prune(self, before: float | None = None) -> int:
        """Delete records created before ``before`` (default: older than ``ttl_s``); returns how many."""
        before = time.time() - self.ttl_s if before is None else before
        async with self.sessions.begin() as session:
            pruned = await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < before))
            return cast(CursorResult, pruned).rowcount or 0

