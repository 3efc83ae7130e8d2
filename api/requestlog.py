"""The request log: one ``RequestLog`` row per API request, written off the hot path.

Callers: ``api.openai_routes`` (``RequestRecord`` per request, ``RequestLogger.write``
when it ends, including requests refused at auth), ``neurons/api.py`` and tests
(``drain`` before reading the table). Prompts and answers are kept only when the operator
opts in (``log_prompts``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from api.tables import RequestLog


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes."""

    id: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    key_id: int | None = None
    model: str = ""
    strategy: str = ""
    miners_tried: list[int] = field(default_factory=list)
    uid: int | None = None
    hotkey: str = ""
    status: int = 0
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged: int = 0
    prompt: Any = None
    answer: str | None = None

    def row(self, log_prompts: bool) -> RequestLog:
        return RequestLog(
            id=self.id, key_id=self.key_id, route=self.route, model=self.model[:256], strategy=self.strategy,
            miners_tried=json.dumps(self.miners_tried), uid=self.uid, hotkey=self.hotkey, status=self.status,
            error=self.error[:64], latency_ms=(time.perf_counter() - self.started) * 1000.0,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, charged=self.charged,
            prompt=json.dumps(self.prompt) if log_prompts and self.prompt is not None else None,
            answer=self.answer if log_prompts else None, created_at=time.time())


class RequestLogger:
    def __init__(self, engine: AsyncEngine, *, log_prompts: bool = False) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.log_prompts = log_prompts
        self._pending: set[asyncio.Task] = set()

    def write(self, record: RequestRecord) -> None:
        """Schedule the row (the response does not wait for the database)."""
        self.spawn(self._insert(record.row(self.log_prompts)))

    def spawn(self, work: Any) -> None:
        """Run a database write in its own task: it outlives a request cancelled by its client."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _insert(self, row: RequestLog) -> None:
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except Exception as error:
            logger.warning("could not write the request log row {}: {}", row.id, error)

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
