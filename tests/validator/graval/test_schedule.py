"""When miners are (re-)verified: new at once, random intervals after a pass, backoff after failures."""

from __future__ import annotations

import random

from validator.graval.schedule import ReverifySchedule


def test_new_miners_are_due_at_once_and_passed_ones_after_a_random_interval():
    schedule = ReverifySchedule(interval_s=3600, retry_s=60, rng=random.Random(1))
    assert schedule.due(["a", "b"], now=0) == ["a", "b"]
    times = {schedule.record(hotkey, True, now=0) for hotkey in ("a", "b")}
    assert all(1800 <= t <= 5400 for t in times) and len(times) == 2
    assert schedule.due(["a", "b"], now=1000) == []
    assert schedule.due(["a", "b"], now=5400) == ["a", "b"]


def test_failures_back_off_exponentially_up_to_the_interval_and_reset_on_success():
    schedule = ReverifySchedule(interval_s=600, retry_s=60, rng=random.Random(2))
    delays = [schedule.record("a", False, now=0) for _ in range(6)]
    assert delays == [60, 120, 240, 480, 600, 600]
    schedule.record("a", True, now=0)
    assert schedule.record("a", False, now=0) == 60


def test_miners_that_left_are_forgotten():
    schedule = ReverifySchedule()
    schedule.record("gone", True, now=0)
    schedule.forget({"stays"})
    assert schedule.due(["gone"], now=0) == ["gone"]  # back as new if it re-registers
