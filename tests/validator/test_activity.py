"""ActivityWindow: the incremental window sums equal a full re-read at every step."""

from __future__ import annotations

import random

from validator.activity import ActivityWindow
from store.queries import ORGANIC, SYNTHETIC

WINDOW = 1000.0


def rows(rng: random.Random, start: float, end: float, count: int) -> list[dict]:
    out = []
    for _ in range(count):
        ok = rng.random() < 0.8
        synthetic = rng.random() < 0.6
        out.append(dict(miner_hotkey=f"m{rng.randrange(4)}", chute_id=f"c{rng.randrange(3)}",
                        source=SYNTHETIC if synthetic else ORGANIC, ok=ok, compute_s=rng.uniform(0, 2),
                        latency_s=rng.uniform(0.01, 1), ttft_s=rng.choice([None, rng.uniform(0.01, 0.5)]),
                        flagged=synthetic and ok and rng.random() < 0.1, created_at=rng.uniform(start, end),
                        steered=not synthetic and rng.random() < 0.3))
    return out


def same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for hotkey in a:
        x, y = a[hotkey], b[hotkey]
        if (x.invocations_ok, x.chutes_served, x.synthetic_ok, x.synthetic_total, x.flagged, x.organic_ok) != \
                (y.invocations_ok, y.chutes_served, y.synthetic_ok, y.synthetic_total, y.flagged, y.organic_ok):
            return False
        if abs(x.compute_seconds - y.compute_seconds) > 1e-6 or x.latency_by_chute.keys() != y.latency_by_chute.keys():
            return False
        if any(abs(x.latency_by_chute[c] - y.latency_by_chute[c]) > 1e-6 for c in x.latency_by_chute):
            return False
    return True


async def test_incremental_window_matches_a_full_read_as_rows_arrive_and_expire(store):
    rng = random.Random(7)
    window = ActivityWindow(store, WINDOW, full_refresh_s=1e9)  # never refresh: every step is incremental
    now = 5000.0
    await store.record_invocations(rows(rng, now - 2 * WINDOW, now, 300))
    assert same(await window.current(now), await store.activity_since(now - WINDOW))
    for _ in range(12):
        # new rows: most recent, some written late with an older created_at (inside or outside the window)
        await store.record_invocations(rows(rng, now - 50, now + 100, 40) + rows(rng, now - 2 * WINDOW, now, 5))
        now += rng.uniform(50, 300)  # rows leave the window
        assert same(await window.current(now), await store.activity_since(now - WINDOW)), now
    now += 10 * WINDOW
    assert await window.current(now) == {} == await store.activity_since(now - WINDOW)


async def test_a_full_refresh_picks_up_rows_an_incremental_read_missed(store):
    window = ActivityWindow(store, WINDOW, full_refresh_s=100.0)
    await store.record_invocations([dict(miner_hotkey="m", chute_id="c", source=ORGANIC, ok=True, compute_s=1.0,
                                         created_at=990.0)])
    assert (await window.current(1000.0))["m"].compute_seconds == 1.0
    window.last_id += 5  # as if a concurrent writer's ids ran ahead of what was committed
    await store.record_invocations([dict(miner_hotkey="m", chute_id="c", source=ORGANIC, ok=True, compute_s=2.0,
                                         created_at=995.0)])
    assert (await window.current(1010.0))["m"].compute_seconds == 1.0  # missed incrementally
    assert (await window.current(1101.0))["m"].compute_seconds == 3.0  # the hourly full read corrects it
