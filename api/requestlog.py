"""The request log: one ``RequestLog`` row per API request, written off the hot path.

Seam: the gateway's request-log part. The admission step fills a ``RequestRecord`` per
request and hands it to ``RequestLogger.write`` when the request ends (refusals at auth
included); ``drain`` writes what is queued. Prompts and answers are kept only when the
operator opts in (``log_prompts``).

Reading and retention (``/admin/logs``, ``/admin/stats``, ``canopy logs``, the log retention):
``parse_since`` ("1h", "30m", "7d", an ISO time or epoch seconds), ``query_logs`` (newest
first), ``log_stats`` (requests, errors, tokens, by status over a window), ``prune_logs``
(delete rows older than a moment) and ``retention_loop`` (prunes every hour).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, cast


from loguru import logger
from sqlalchemy import CursorResult, case, delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from api.batch import BatchWriter
from api.keys import absolute_time
from store.api_tables import RequestLog
from store.queries import bulk_insert

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SINCE_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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

    def row(self, log_prompts: bool) -> dict[str, Any]:
        """The ``RequestLog`` columns (a plain dict: rows are bulk-inserted in batches)."""
        return dict(
            id=self.id, key_id=self.key_id, route=self.route, model=self.model[:256], strategy=self.strategy,
            miners_tried=json.dumps(self.miners_tried), uid=self.uid, hotkey=self.hotkey, status=self.status,
            error=self.error[:64], latency_ms=(time.perf_counter() - self.started) * 1000.0,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, charged=self.charged,
            prompt=json.dumps(self.prompt) if log_prompts and self.prompt is not None else None,
            answer=self.answer if log_prompts else None, created_at=time.time())


class RequestLogger:
    def __init__(self, engine: AsyncEngine, *, log_prompts: bool = False) -> None:
        self.engine = engine
        self.log_prompts = log_prompts
        self._rows = BatchWriter(self._insert_all, what="request log rows")

    def write(self, record: RequestRecord) -> None:
        """Queue the row (the response does not wait for the database; see ``api.batch``)."""
        self._rows.add(record.row(self.log_prompts))

    async def _insert_all(self, rows: list[dict[str, Any]]) -> None:
        await bulk_insert(self.engine, RequestLog.__table__, rows)

    async def drain(self) -> None:
        await self._rows.drain()


def parse_since(text: str, now: float | None = None) -> float:
    """A moment from "1h"/"30m"/"7d" (that long ago), an ISO time (UTC unless it says) or epoch seconds."""
    now = time.time() if now is None else now
    match = _SINCE.match(text)
    if match:
        return now - float(match.group(1)) * _SINCE_S[match.group(2)]
    moment = absolute_time(text)
    if moment is None:
        raise ValueError(f"since {text!r} is not a duration (1h, 30m, 7d), an ISO time or epoch seconds")
    return moment


def log_dict(row: RequestLog) -> dict[str, Any]:
    return {"id": row.id, "created_at": row.created_at, "key_id": row.key_id, "route": row.route, "model": row.model,
            "strategy": row.strategy, "miners_tried": json.loads(row.miners_tried or "[]"), "uid": row.uid,
            "hotkey": row.hotkey, "status": row.status, "error": row.error, "latency_ms": round(row.latency_ms, 3),
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens, "charged": row.charged,
            "prompt": row.prompt, "answer": row.answer}


def _where(statement: Any, key_id: int | None, status: int | None, since: float | None, until: float | None) -> Any:
    if key_id is not None:
        statement = statement.where(RequestLog.key_id == key_id)
    if status is not None:
        statement = statement.where(RequestLog.status == status)
    if since is not None:
        statement = statement.where(RequestLog.created_at >= since)
    if until is not None:
        statement = statement.where(RequestLog.created_at < until)
    return statement


async def query_logs(engine: AsyncEngine, *, key_id: int | None = None, status: int | None = None,
                     since: float | None = None, until: float | None = None, limit: int = 50) -> list[RequestLog]:
    """Request-log rows matching the filters, newest first."""
    statement = _where(select(RequestLog), key_id, status, since, until)
    statement = statement.order_by(RequestLog.created_at.desc(), RequestLog.id.desc()).limit(limit)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        return list((await session.scalars(statement)).all())


async def log_stats(engine: AsyncEngine, *, since: float | None = None, until: float | None = None,
                    key_id: int | None = None) -> dict[str, Any]:
    """Requests, errors (status >= 400), tokens, credits charged, mean latency and counts by status."""
    totals = _where(select(func.count(), func.coalesce(func.sum(case((RequestLog.status >= 400, 1), else_=0)), 0),
                           func.coalesce(func.sum(RequestLog.prompt_tokens), 0),
                           func.coalesce(func.sum(RequestLog.completion_tokens), 0),
                           func.coalesce(func.sum(RequestLog.charged), 0), func.avg(RequestLog.latency_ms)),
                    key_id, status=None, since=since, until=until)
    by_status = _where(select(RequestLog.status, func.count()).group_by(RequestLog.status), key_id, None, since, until)
    async with async_sessionmaker(engine)() as session:
        requests, errors, prompt, completion, charged, latency = (await session.execute(totals)).one()
        statuses = {str(status): count for status, count in (await session.execute(by_status)).all()}
    return {"since": since, "until": until, "key_id": key_id, "requests": requests, "errors": errors,
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "charged": charged, "mean_latency_ms": round(latency, 3) if latency is not None else None,
            "by_status": dict(sorted(statuses.items()))}


async def prune_logs(engine: AsyncEngine, before: float) -> int:
    """Delete request-log rows created before ``before`` (epoch seconds); returns how many."""
    async with async_sessionmaker(engine)() as session, session.begin():
        pruned = await session.execute(delete(RequestLog).where(RequestLog.created_at < before))
        return cast(CursorResult, pruned).rowcount or 0


async def retention_loop(engine: AsyncEngine, retention_days: float, *, idempotency: Any = None,
                         interval_s: float = 3600.0) -> None:
    """Every ``interval_s``: drop request logs older than ``retention_days`` (0 keeps them) and expired
    idempotency records. Runs until cancelled."""
    while True:
        try:
            if retention_days > 0:
                removed = await prune_logs(engine, time.time() - retention_days * 86400)
                if removed:
                    logger.info("pruned {} request-log rows older than {} days", removed, retention_days)
            if idempotency is not None:
                await idempotency.prune()
        except Exception as error:
            logger.warning("request-log retention failed: {}", error)
        await asyncio.sleep(interval_s)
