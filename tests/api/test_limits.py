"""Rate limits: independent rules, refusals that count against nothing, headers, and the same
behaviour from the Redis limiter that several replicas share (a real redis-server)."""

from __future__ import annotations

import asyncio

import pytest

from api.keys import RateRule
from api.limits import MemoryRateLimiter, RedisRateLimiter
from tests.support.redis_server import REDIS_SERVER

RULES = (RateRule(3, 60), RateRule(5, 3600))


async def exercise(limiter) -> None:
    now = 7200.0 + 10  # 10 s into a minute window and into an hour window
    decisions = [await limiter.check("k1", RULES, now) for _ in range(3)]
    assert all(d.allowed for d in decisions) and [d.remaining for d in decisions] == [2, 1, 0]
    refused = await limiter.check("k1", RULES, now)
    assert not refused.allowed and refused.rule == RULES[0] and refused.retry_after_s == 50
    assert refused.headers() == {"x-ratelimit-limit": "3", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "50",
                                 "Retry-After": "50"}
    assert (await limiter.check("k2", RULES, now)).allowed  # another key has its own counters
    # the next minute: the minute rule has room again; the hour rule counted 3 (refusals count nowhere)
    later = [await limiter.check("k1", RULES, now + 60) for _ in range(3)]
    assert [d.allowed for d in later] == [True, True, False]
    assert later[1].rule == RULES[1] and later[1].remaining == 0 and later[2].rule == RULES[1]
    assert (await limiter.check("k1", (), now)).allowed  # no rules, no limit


async def test_memory_limiter():
    await exercise(MemoryRateLimiter())


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed")
async def test_redis_limiter_behaves_the_same_and_is_shared(redis_url):  # noqa: F811
    first, second = RedisRateLimiter(redis_url, prefix="t1:"), RedisRateLimiter(redis_url, prefix="t1:")
    try:
        await exercise(first)
        rules = (RateRule(10, 60),)
        decisions = await asyncio.gather(*(limiter.check("shared", rules, 100.0)
                                           for limiter in [first, second] * 15))
        assert sum(d.allowed for d in decisions) == 10  # two replicas, one budget
    finally:
        await first.close()
        await second.close()
