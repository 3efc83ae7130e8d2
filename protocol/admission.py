"""Stake-priority admission: how an axon decides who is served when it is saturated.

The axon's load-shedding step: one ``PriorityGate`` per axon, sized by
``AxonSettings.max_concurrency``. The gate never queues without bound:

- below ``capacity`` requests in flight, a request is admitted at once;
- at capacity it waits in a queue of at most ``queue_size`` entries; when the queue is
  full, the lowest-stake entry (the newcomer included, ties going against the newcomer)
  is refused with ``Busy`` (HTTP 429 with ``Retry-After``);
- a freed slot goes to the highest-stake waiter (first come first served among equals);
- nobody waits longer than ``max_wait_s``: past it the waiter is refused with ``Busy``.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from protocol.errors import Busy


@dataclass(eq=False)
class _Waiter:
    stake: float
    order: int
    future: asyncio.Future[None] = field(repr=False)

    @property
    def rank(self) -> tuple[float, int]:
        """Higher is served first: more stake, then earlier arrival."""
        return (self.stake, -self.order)


class PriorityGate:
    """A concurrency limit that admits by stake and sheds the lowest-stake load."""

    def __init__(self, capacity: int, queue_size: int, *, max_wait_s: float = 10.0, retry_after_s: int = 1) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.queue_size = max(0, queue_size)
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _busy(self, why: str) -> Busy:
        return Busy(why, headers={"Retry-After": str(self.retry_after_s)})

    async def acquire(self, stake: float) -> None:
        """Take a slot, waiting if needed; raises ``Busy`` when outranked or after ``max_wait_s``."""
        if self.in_flight < self.capacity and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.queue_size:
            lowest = min(self._waiters, key=lambda w: w.rank, default=None)
            if lowest is None or stake <= lowest.stake:
                raise self._busy("the axon is saturated by callers with at least as much stake")
            self._waiters.remove(lowest)
            lowest.future.set_exception(self._busy("outranked by a higher-stake caller while queued"))
        waiter = _Waiter(stake, next(self._order), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await waiter.future
        except TimeoutError:
            self._forget(waiter)
            raise self._busy(f"no slot freed within {self.max_wait_s:g}s") from None
        except asyncio.CancelledError:
            self._forget(waiter)
            raise

    def _forget(self, waiter: _Waiter) -> None:
        """Drop a waiter that gave up; hand its slot on if it had already been granted one."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.future.cancel()
        elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            self.release()

    def release(self) -> None:
        """Give a slot back: to the best-ranked waiter if any, else to the pool."""
        while self._waiters:
            best = max(self._waiters, key=lambda w: w.rank)
            self._waiters.remove(best)
            if not best.future.done():
                best.future.set_result(None)
                return
        self.in_flight -= 1
