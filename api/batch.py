"""Write-behind batching for the API's per-request rows (request log, organic invocations).

Seam: under the request log (``api.requestlog``) and the organic invocation rows
(``api.upstream``), above the database. SQLite has one
writer at a time: a transaction per request made every API request wait on the others'
commits (``bench/api.py``: four transactions per request capped the gateway at ~70 rps).
Rows are queued here and written by one background task in a single transaction per
``max_delay_s`` (or per ``max_batch`` rows), off every answer's path; the task outlives
the request that queued the row (a client hanging up does not lose its log row).
``drain`` writes everything queued so far (shutdown, tests).

``BackgroundWrites`` is the unbatched kind: one write in its own task (an idempotency
record, a late refund), kept referenced until it ends and awaited by ``drain``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine

from loguru import logger


class BatchWriter:
    def __init__(self, flush: Callable[[list[Any]], Awaitable[Any]], *, what: str, max_delay_s: float = 0.05,
                 max_batch: int = 1000) -> None:
        self.flush, self.what = flush, what
        self.max_delay_s, self.max_batch = max_delay_s, max_batch
        self._queue: list[Any] = []
        self._task: asyncio.Task | None = None

    def add(self, item: Any) -> None:
        self._queue.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._queue:
                if len(self._queue) < self.max_batch:
                    await asyncio.sleep(self.max_delay_s)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                try:
                    await self.flush(batch)
                except Exception as error:  # a full disk must not fail the answers
                    logger.warning("could not write {} {}: {}", len(batch), self.what, error)
        finally:
            self._task = None

    async def drain(self) -> None:
        while self._task is not None:
            await asyncio.shield(self._task)


class BackgroundWrites:
    """Writes that run in their own tasks, so a request cancelled by its client cannot cut them short."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
