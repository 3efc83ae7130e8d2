"""When devices are verified: a new miner at once, then sweeps at random (exponential) gaps;
backoff only for a first round that reached nobody."""

from __future__ import annotations

import math
import random
import statistics

from validator.graval.schedule import MAX_GAP, MIN_GAP, ReverifySchedule


def test_new_miners_are_due_at_once_and_then_only_sweeps_reverify_them():
    schedule = ReverifySchedule(interval_s=3600, retry_s=60, rng=random.Random(1))
    assert schedule.due(["a", "b"], now=0) == ["a", "b"]
    assert {schedule.record(hotkey, True, now=0) for hotkey in ("a", "b")} == {math.inf}
    assert schedule.due(["a", "b"], now=1e9) == []  # their next rounds are sweeps
    schedule.expedite("b")  # a device never challenged for b
    assert schedule.due(["a", "b"], now=0) == ["b"]


def test_a_first_round_that_reached_nobody_backs_off_up_to_the_interval():
    schedule = ReverifySchedule(interval_s=600, retry_s=60, rng=random.Random(2))
    delays = [schedule.record("a", False, now=0) for _ in range(6)]
    assert delays == [60, 120, 240, 480, 600, 600]
    schedule.record("a", True, now=0)
    assert schedule.record("a", False, now=0) == 60


def test_sweep_gaps_are_exponential_around_the_interval_and_bounded():
    schedule = ReverifySchedule(interval_s=3600, rng=random.Random(3))
    assert not schedule.sweep_due(now=0)  # the first one comes a random gap after start
    gaps = []
    now = 0.0
    for _ in range(4000):
        now = schedule.next_sweep_at
        assert schedule.sweep_due(now) and not schedule.sweep_due(now - 1.0)
        gaps.append(schedule.sweep_started(now) - now)
    assert min(gaps) == MIN_GAP * 3600 and max(gaps) == MAX_GAP * 3600
    assert 0.9 * 3600 < statistics.mean(gaps) < 1.05 * 3600
    # memoryless: having waited half an hour says little about the wait left (uniform gaps would say "< 1 h")
    left = [gap - 1800 for gap in gaps if gap > 1800]
    assert statistics.median(left) > 0.5 * statistics.median(gaps)


def test_a_restart_draws_the_next_sweep_from_the_last_one_stored():
    schedule = ReverifySchedule(interval_s=100, rng=random.Random(4))
    at = schedule.restore_sweep(1000.0, now=5000.0)
    assert 1000 + MIN_GAP * 100 <= at <= 1000 + MAX_GAP * 100 and schedule.sweep_due(5000.0)  # overdue: at once
    assert schedule.restore_sweep(None, now=5000.0) >= 5000 + MIN_GAP * 100  # none yet: a gap from now
    schedule.restore("a")
    assert schedule.due(["a", "new"], now=0) == ["new"]


def test_miners_that_left_are_forgotten():
    schedule = ReverifySchedule()
    schedule.record("gone", True, now=0)
    schedule.forget({"stays"})
    assert schedule.due(["gone"], now=0) == ["gone"]  # back as new if it re-registers
