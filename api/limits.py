"""Rate limits: fixed-window counters per key and rule, in-process or shared through Redis.

Seam: the gateway's ``RateLimiter`` (``api.gateway``), applied by the admission step before
a miner is called. Each rule ("10/60s",
"100/1h") has its own counter, so the rules are independent; a request is admitted only
when every rule has room, and then counts against all of them (a refused request counts
against none). ``Decision`` carries what the ``x-ratelimit-limit/remaining/reset`` and
``Retry-After`` headers need, for the tightest rule.

``MemoryRateLimiter`` serves one process (the check and the increments run without an
``await`` between them, so they are atomic in the event loop). ``RedisRateLimiter`` keeps
the counters in Redis for several API replicas; one Lua script checks and increments
every rule atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

from api.keys import RateRule

_SCRIPT = """
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i]) then
    return {0, i, count}
  end
end
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('PEXPIRE', key, ARGV[#KEYS + i]) end
end
return {1, 0, unpack(counts)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int = 0
    remaining: int = 0
    reset_s: float = 0.0  # seconds until the tightest rule's window ends
    rule: RateRule | None = None

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.reset_s))

    def headers(self) -> dict[str, str]:
        if self.rule is None:
            return {}
        headers = {"x-ratelimit-limit": str(self.limit), "x-ratelimit-remaining": str(max(0, self.remaining)),
                   "x-ratelimit-reset": str(math.ceil(self.reset_s))}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


def _window(rule: RateRule, now: float) -> tuple[int, float]:
    """(window number, seconds until it ends)."""
    index = int(now // rule.window_s)
    return index, (index + 1) * rule.window_s - now


def _tightest(rules: Sequence[RateRule], counts: Sequence[int], now: float) -> Decision:
    best: Decision | None = None
    for rule, count in zip(rules, counts):
        remaining = rule.limit - count
        decision = Decision(True, rule.limit, remaining, _window(rule, now)[1], rule)
        if best is None or remaining < best.remaining:
            best = decision
    return best or Decision(True)


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int, int, int], int] = {}

    async def check(self, subject: str, rules: Sequence[RateRule], now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        keys = [(subject, rule.limit, rule.window_s, _window(rule, now)[0]) for rule in rules]
        for rule, key in zip(rules, keys):
            count = self._counts.get(key, 0)
            if count >= rule.limit:
                return Decision(False, rule.limit, 0, _window(rule, now)[1], rule)
        for key in keys:
            self._counts[key] = self._counts.get(key, 0) + 1
        if len(self._counts) > 100_000:
            self._expire(now)
        return _tightest(rules, [self._counts[key] for key in keys], now)

    def _expire(self, now: float) -> None:
        for key in [k for k in self._counts if (k[3] + 1) * k[2] <= now]:
            del self._counts[key]

    async def close(self) -> None:
        pass


class RedisRateLimiter:
    def __init__(self, url: str, *, prefix: str = "canopy:rl:") -> None:
        import redis.asyncio as redis_asyncio  # only when configured

        self.client = redis_asyncio.Redis.from_url(url)
        self.prefix = prefix
        self.script = self.client.register_script(_SCRIPT)

    async def check(self, subject: str, rules: Sequence[RateRule], now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        if not rules:
            return Decision(True)
        keys = [f"{self.prefix}{subject}:{rule.limit}/{rule.window_s}:{_window(rule, now)[0]}" for rule in rules]
        expiries = [int(math.ceil(_window(rule, now)[1] * 1000)) + 1000 for rule in rules]
        answer = await self.script(keys=keys, args=[rule.limit for rule in rules] + expiries)
        if int(answer[0]) == 0:
            rule = rules[int(answer[1]) - 1]
            return Decision(False, rule.limit, 0, _window(rule, now)[1], rule)
        return _tightest(rules, [int(count) for count in answer[2:]], now)

    async def close(self) -> None:
        await self.client.aclose()
