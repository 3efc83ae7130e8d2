"""The scoring window's invocation sums, kept up to date step by step instead of re-read.

Read once per validator step (``ActivityWindow.current``). Re-aggregating a week of
invocations every 12 s costs seconds at a million rows (bench/validator.py), so the window
keeps per-(miner, chute) sums in memory and, each step, adds the rows written since the last
step (``id`` above the last one seen, inside the window) and subtracts the rows that left
the window (``created_at`` between the old and the new start, already counted). Both reads
use indexes and touch only what changed. A full re-read at start-up and every
``full_refresh_s`` (an hour) corrects what an incremental read can miss: a writer (the API
on Postgres) committing an id lower than one already seen.
"""

from __future__ import annotations

import time

from store.queries import ChuteSums, MinerActivity, ValidatorStore, activity_from_sums


class ActivityWindow:
    def __init__(self, store: ValidatorStore, window_s: float, *, full_refresh_s: float = 3600.0) -> None:
        self.store = store
        self.window_s = window_s
        self.full_refresh_s = full_refresh_s
        self.sums: dict[tuple[str, str], ChuteSums] = {}
        self.last_id = 0
        self.start = 0.0  # the window's start at the last update
        self.refreshed_at = float("-inf")

    async def current(self, now: float | None = None) -> dict[str, MinerActivity]:
        now = time.time() if now is None else now
        start = now - self.window_s
        if now - self.refreshed_at >= self.full_refresh_s:
            await self._full(start, now)
        else:
            await self._advance(start)
        return activity_from_sums(self.sums.values())

    async def _full(self, start: float, now: float) -> None:
        upto = await self.store.last_invocation_id()
        self.sums = {(s.hotkey, s.chute_id): s for s in await self.store.invocation_sums(since=start, upto_id=upto)}
        self.last_id, self.start, self.refreshed_at = upto, start, now

    async def _advance(self, start: float) -> None:
        upto = await self.store.last_invocation_id()
        if upto > self.last_id:
            for part in await self.store.invocation_sums(since=start, after_id=self.last_id, upto_id=upto):
                self._apply(part, +1)
        if start > self.start:
            for part in await self.store.invocation_sums(since=self.start, before=start, upto_id=self.last_id):
                self._apply(part, -1)
        self.last_id, self.start = max(upto, self.last_id), max(start, self.start)

    def _apply(self, part: ChuteSums, sign: int) -> None:
        key = (part.hotkey, part.chute_id)
        current = self.sums.get(key)
        if current is None:
            current = self.sums[key] = ChuteSums(part.hotkey, part.chute_id)
        current.add(part, sign)
        if current.empty:
            del self.sums[key]
