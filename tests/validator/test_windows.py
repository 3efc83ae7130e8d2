"""From store rows to scoring windows (``validator.windows``): latency quality against the
median of each chute, which claimed devices count for a miner, and which miners get a window."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from validator.scoring import DeviceEntry, ScoringSettings, raw_scores
from store.queries import MinerActivity
from validator.windows import build_windows, device_entries, latency_quality

MULTIPLIERS = {"h100": 1.0, "a100": 0.5}


def multiplier(row) -> float:
    return MULTIPLIERS.get(row.model_id, 0.0)


def timed(**latency_by_chute: float) -> MinerActivity:
    return MinerActivity(latency_by_chute=dict(latency_by_chute))


def row(hotkey: str, model: str = "h100", ok: bool = True) -> SimpleNamespace:
    """A stand-in for a ``DeviceVerification`` row (the fields ``device_entries`` reads)."""
    return SimpleNamespace(miner_hotkey=hotkey, model_id=model, ok=ok)


def miner(hotkey: str, uid: int, coldkey: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(hotkey=hotkey, uid=uid, coldkey=coldkey or f"cold-{hotkey}")


def test_latency_quality_is_half_at_the_median_and_rises_when_faster():
    quality = latency_quality({"fast": timed(echo=1.0), "median": timed(echo=2.0), "slow": timed(echo=4.0)})
    assert quality["median"] == pytest.approx(0.5)
    assert quality["fast"] == pytest.approx(2 / 3) and quality["fast"] > 0.5
    assert quality["slow"] == pytest.approx(1 / 3) and quality["slow"] < 0.5


def test_latency_quality_is_the_mean_over_a_miners_chutes():
    activity = {"a": timed(echo=1.0, llm=3.0), "b": timed(echo=1.0, llm=1.0), "c": timed(llm=2.0), "idle": MinerActivity()}
    quality = latency_quality(activity)
    # echo: median 1 -> a 0.5; llm: median 2 -> a 2/5, b 2/3, c 1/2
    assert quality["a"] == pytest.approx((0.5 + 2 / 5) / 2)
    assert quality["b"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert quality["c"] == pytest.approx(0.5)
    assert "idle" not in quality  # unmeasured: build_windows gives it 0.5
    assert latency_quality({"alone": timed(echo=0.0)}) == {"alone": 0.5}  # 0 / (0 + 0)


def rows(*entries: tuple[str, str, SimpleNamespace]) -> dict:
    """``latest`` as the store gives it: keyed (hotkey, uuid)."""
    return {(hotkey, uuid): found for hotkey, uuid, found in entries}


def test_device_entries_count_only_claimed_devices_last_verified_for_this_hotkey():
    latest = rows(("m1", "GPU-1", row("m1")), ("m1", "GPU-2", row("m1", "a100")), ("m2", "GPU-3", row("m2")),
                  ("m1", "GPU-4", row("m1", ok=False)), ("m1", "GPU-5", row("m1", "unknown-model")),
                  ("m1", "GPU-unclaimed", row("m1")))
    claimed = ["GPU-2", "GPU-1", "GPU-3", "GPU-4", "GPU-5", "GPU-never-verified", "GPU-1"]
    entries = device_entries("m1", claimed, latest, multiplier)
    assert entries == [DeviceEntry("GPU-1", "h100", 1.0, True), DeviceEntry("GPU-2", "a100", 0.5, True),
                       DeviceEntry("GPU-4", "h100", 0.0, False), DeviceEntry("GPU-5", "unknown-model", 0.0, True)]
    assert device_entries("m2", claimed, latest, multiplier) == [DeviceEntry("GPU-3", "h100", 1.0, True)]
    assert device_entries("m3", claimed, latest, multiplier) == []


def test_another_hotkeys_claim_of_a_uuid_changes_nothing_and_only_the_owner_is_credited():
    # m2 claimed m1's GPU-1 later and was refused: m1's own latest row still counts
    latest = rows(("m1", "GPU-1", row("m1")), ("m2", "GPU-1", row("m2", ok=False)), ("m2", "GPU-2", row("m2")))
    owners = {"GPU-1": "m1", "GPU-2": "m1"}  # the operator gave GPU-2 to m1: m2's pass of it no longer counts
    assert device_entries("m1", ["GPU-1"], latest, multiplier, owners) == [DeviceEntry("GPU-1", "h100", 1.0, True)]
    assert device_entries("m2", ["GPU-1", "GPU-2"], latest, multiplier, owners) == [
        DeviceEntry("GPU-1", "h100", 0.0, False), DeviceEntry("GPU-2", "h100", 0.0, False)]
    assert device_entries("m2", ["GPU-2"], latest, multiplier, {}) == [DeviceEntry("GPU-2", "h100", 0.0, False)]


def test_a_failed_device_does_not_count_towards_capacity():
    latest = rows(("m1", "GPU-ok", row("m1")), ("m1", "GPU-bad", row("m1", ok=False)))
    (window,) = build_windows([miner("m1", 1)], {"m1": ["GPU-ok", "GPU-bad"]}, latest, {}, multiplier)
    assert window.capacity() == pytest.approx(1.0) and [d.uuid for d in window.verified()] == ["GPU-ok"]
    (failed,) = build_windows([miner("m1", 1)], {"m1": ["GPU-bad"]}, latest, {}, multiplier)
    assert failed.capacity() == 0 and raw_scores([failed], ScoringSettings()) == {"m1": 0.0}


def test_build_windows_skips_miners_that_did_not_answer_inventory():
    neurons = [miner("m1", 1), miner("m2", 2, coldkey="shared"), miner("offline", 3)]
    latest = rows(("m1", "GPU-1", row("m1")), ("m2", "GPU-2", row("m2")), ("offline", "GPU-3", row("offline")))
    activity = {
        "m1": MinerActivity(compute_seconds=12.0, invocations_ok=4, chutes_served=2, synthetic_ok=3, synthetic_total=4,
                            flagged=9, latency_by_chute={"echo": 1.0}),
        "m2": MinerActivity(latency_by_chute={"echo": 3.0}),
        "offline": MinerActivity(compute_seconds=99.0, invocations_ok=99),
    }
    windows = build_windows(neurons, {"m1": ["GPU-1"], "m2": ["GPU-2"]}, latest, activity, multiplier)
    assert [w.hotkey for w in windows] == ["m1", "m2"]
    m1, m2 = windows
    assert (m1.uid, m1.coldkey, m2.coldkey) == (1, "cold-m1", "shared")
    assert (m1.compute_seconds, m1.invocations_ok, m1.chutes_served) == (12.0, 4, 2)
    assert (m1.synthetic_ok, m1.synthetic_total) == (3, 4)
    assert m1.flagged == 4  # never more than the synthetic calls it was judged on
    assert m1.latency_quality == pytest.approx(2 / 3) and m2.latency_quality == pytest.approx(2 / 5)
    # a miner that answered Inventory but has no activity yet: zero work, latency at the median
    (fresh,) = build_windows([miner("m1", 1)], {"m1": ["GPU-1"]}, latest, {}, multiplier)
    assert (fresh.compute_seconds, fresh.flagged, fresh.latency_quality, fresh.synthetic_total) == (0.0, 0, 0.5, 0)
    assert build_windows(neurons, {}, latest, activity, multiplier) == []
