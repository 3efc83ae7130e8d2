"""The scoring core: formula, coldkey dedupe, EMA, weights, settings (pure, no I/O)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from protocol.graval.devices import GIB, load_gpu_table
from validator.graval.session import DeviceResult
from validator.scoring import (
    DeviceEntry, MinerWindow, ScoringSettings, dedupe_coldkeys, device_multiplier, devices_from_results, raw_score,
    raw_scores, smooth, to_weights, totals,
)

SETTINGS = ScoringSettings()
H100 = 1.0


def window(hotkey: str, devices: int = 1, *, coldkey: str | None = None, uid: int = 0, failed: int = 0,
           compute_seconds: float = 100.0, **fields) -> MinerWindow:
    entries = [DeviceEntry(f"GPU-{hotkey}-{i}", "h100", H100, True) for i in range(devices)]
    entries += [DeviceEntry(f"GPU-{hotkey}-bad{i}", "h100", H100, False) for i in range(failed)]
    base = dict(invocations_ok=10, chutes_served=1, synthetic_ok=10, synthetic_total=10, latency_quality=0.5)
    base.update(fields)
    return MinerWindow(hotkey=hotkey, coldkey=coldkey or f"cold-{hotkey}", uid=uid, devices=entries,
                       compute_seconds=compute_seconds, **base)


def pipeline(windows: list[MinerWindow], previous: dict[str, float] | None = None, alpha: float = 1.0):
    coldkeys = {w.hotkey: w.coldkey for w in windows}
    raw = dedupe_coldkeys(raw_scores(windows, SETTINGS), coldkeys)
    scores = smooth(previous or {}, raw, alpha)
    uids, weights = to_weights(dedupe_coldkeys(scores, coldkeys), {w.hotkey: w.uid for w in windows})
    return scores, dict(zip(uids, weights))


def test_honest_two_beats_honest_one_beats_cheater():
    # The cheater claims a device it cannot prove: its only verification failed; it even "served" work.
    windows = [window("h1", 1, uid=1), window("h2", 2, uid=2, compute_seconds=200, invocations_ok=20),
               window("cheat", 0, uid=3, failed=1, compute_seconds=500, invocations_ok=50)]
    _, weights = pipeline(windows)
    assert weights[2] > weights[1] > 0
    assert 3 not in weights  # weight 0: dropped from the vector
    assert raw_score(windows[2], SETTINGS, totals(windows)) == 0.0
    assert math.isclose(sum(weights.values()), 1.0)


def test_failed_device_zeroes_that_device():
    two = window("a", 2)
    one_failed = window("a", 1, failed=1)
    assert one_failed.capacity() == pytest.approx(1.0) and two.capacity() == pytest.approx(2.0)
    # the same uuid verified then failed (duplicate entries): the failure wins
    flip = MinerWindow(hotkey="x", coldkey="c", uid=0, devices=[DeviceEntry("GPU-1", "h100", 1.0, True),
                                                                DeviceEntry("GPU-1", "h100", 1.0, False)])
    assert flip.capacity() == 0 and raw_score(flip, SETTINGS) == 0.0
    others = [window("b", 1)]
    assert raw_scores([one_failed, *others], SETTINGS)["a"] < raw_scores([two, *others], SETTINGS)["a"]


def test_devices_from_results_uses_latest_and_the_multiplier_the_proof_earns():
    table = [model.model_copy(update={"calibrated": model.id == "h200"}) for model in load_gpu_table()]
    h100, h200 = 79 * GIB, 140 * GIB
    results = [DeviceResult("hk", "GPU-1", True, "ok", model_id="h200", memory_bytes=h200, verified_at=1.0),
               DeviceResult("hk", "GPU-1", False, "timing", model_id="h200", memory_bytes=h200, verified_at=2.0),
               DeviceResult("hk", "GPU-2", True, "ok", model_id="h100", memory_bytes=h100, verified_at=1.0),
               DeviceResult("hk", "GPU-3", True, "ok", model_id="nope", memory_bytes=h100, verified_at=1.0)]
    entries = devices_from_results(results, table)
    # h100 is uncalibrated: 79 GiB proven could be an A100 80GB (0.55), the cheapest row that holds it
    assert entries == [DeviceEntry("GPU-1", "h200", 1.3, False), DeviceEntry("GPU-2", "h100", 0.55, True),
                       DeviceEntry("GPU-3", "nope", 0.0, True)]
    assert MinerWindow(hotkey="hk", coldkey="c", uid=0, devices=entries).capacity() == pytest.approx(0.55)


def test_an_uncalibrated_row_earns_the_cheapest_multiplier_that_could_hold_the_proven_memory():
    table = load_gpu_table()
    multiplier = device_multiplier(table)
    row = lambda model, gib: DeviceResult("hk", "GPU-1", True, "ok", model_id=model, memory_bytes=int(gib * GIB))  # noqa: E731
    assert multiplier(row("h200", 140)) == 1.3  # only an H200 holds 140 GiB
    assert multiplier(row("h100", 79)) == 0.55 and multiplier(row("rtx4090", 23.5)) == 0.12
    calibrated = device_multiplier([m.model_copy(update={"calibrated": True}) for m in table])
    assert calibrated(row("h100", 79)) == 1.0 and calibrated(row("rtx4090", 23.5)) == 0.25
    assert multiplier(row("cpu", 0.0625)) == 0.001  # the devnet row competes only with itself
    proven = DeviceResult("hk", "GPU-1", True, "ok", model_id="h100", memory_bytes=79 * GIB)
    proven.proven_bytes = 140 * GIB  # what the proof established, where the result carries it
    assert multiplier(proven) == 1.0  # h100's own multiplier at most


def test_a_device_proven_beside_its_instances_counts_the_share_it_proved():
    calibrated = device_multiplier([m.model_copy(update={"calibrated": True}) for m in load_gpu_table()])
    serving = DeviceResult("hk", "GPU-1", True, "ok", model_id="h100", memory_bytes=79 * GIB)
    serving.proven_fraction = 0.25
    assert calibrated(serving) == 0.25
    halves = [DeviceResult(hk, "GPU-x", True, "ok", model_id="h100", memory_bytes=79 * GIB) for hk in ("a", "b")]
    for half in halves:  # one card split between two hotkeys, each proving half: one card's credit in all
        half.proven_fraction = 0.5
    assert sum(calibrated(half) for half in halves) == 1.0


def test_two_hotkeys_of_one_coldkey_earn_no_more_than_one():
    other = window("other", 1, uid=1)
    alone = pipeline([other, window("s1", 1, uid=2, coldkey="split")])[1]
    split = pipeline([other, window("s1", 1, uid=2, coldkey="split"), window("s2", 1, uid=3, coldkey="split")])[1]
    assert split.get(2, 0) + split.get(3, 0) <= alone[2] + 1e-12
    assert min(split.get(2, 0), split.get(3, 0)) == 0  # only the best hotkey keeps its score
    assert dedupe_coldkeys({"a": 0.3, "b": 0.5, "c": 0.2}, {"a": "k", "b": "k"}) == {"a": 0.0, "b": 0.5, "c": 0.2}
    assert dedupe_coldkeys({"b": 0.4, "a": 0.4}, {"a": "k", "b": "k"}) == {"a": 0.4, "b": 0.0}  # ties: smallest


def test_offline_miner_decays_under_ema():
    scores, _ = pipeline([window("on", 1, uid=1), window("off", 1, uid=2)])
    before = scores["off"]
    history = [before]
    for _ in range(30):  # "off" no longer answers: absent from the step's windows
        scores = smooth(scores, raw_scores([window("on", 1, uid=1)], SETTINGS), SETTINGS.ema_alpha)
        history.append(scores.get("off", 0.0))
    assert all(b < a for a, b in zip(history, history[1:]))
    assert history[-1] == pytest.approx(before * (1 - SETTINGS.ema_alpha) ** 30)
    assert smooth({"gone": 1e-10}, {}, 0.5) == {}  # decayed scores are dropped
    # an online miner whose synthetic calls all fail scores 0 this step, so it decays as well
    assert raw_scores([window("on", 1), window("dead", 1, synthetic_ok=0, synthetic_total=10)], SETTINGS)["dead"] == 0


def test_organic_compute_raises_score():
    base = [window("a", 1), window("b", 1)]
    busier = [window("a", 1, compute_seconds=1000, invocations_ok=100, chutes_served=3), window("b", 1)]
    assert raw_scores(busier, SETTINGS)["a"] > raw_scores(base, SETTINGS)["a"]
    assert raw_scores(busier, SETTINGS)["b"] < raw_scores(base, SETTINGS)["b"]


def test_flagged_outputs_and_latency():
    clean, flagged = raw_scores([window("a", 1), window("b", 1, flagged=2)], SETTINGS).values()
    assert flagged < clean
    assert raw_scores([window("a", 1), window("b", 1, flagged=5)], SETTINGS)["b"] == 0.0  # half flagged at penalty 2
    pair = [window("a", 1, latency_quality=0.9), window("b", 1, latency_quality=0.1)]
    fast, slow = raw_scores(pair, SETTINGS).values()
    assert fast > slow


def test_weights_sum_to_one_and_are_deterministic():
    windows = [window(f"m{i}", 1 + i % 3, uid=10 - i, compute_seconds=10.0 * i) for i in range(8)]
    uids, weights = to_weights(raw_scores(windows, SETTINGS), {w.hotkey: w.uid for w in windows})
    assert uids == sorted(uids) and len(uids) == 8
    assert math.isclose(sum(weights), 1.0) and all(w > 0 for w in weights)
    assert to_weights(dict(reversed(list(raw_scores(windows, SETTINGS).items()))),
                      {w.hotkey: w.uid for w in windows}) == (uids, weights)
    assert to_weights({"a": 0.0, "b": 0.0}, {"a": 1, "b": 2}) == ([], [])
    assert to_weights({"a": 1.0, "unregistered": 5.0}, {"a": 4}) == ([4], [1.0])
    with pytest.raises(ValueError):
        to_weights({"a": -1.0}, {"a": 1})
    with pytest.raises(ValueError):
        to_weights({"a": 1.0, "b": 1.0}, {"a": 1, "b": 1})


@pytest.mark.parametrize("bad", [{"weight_capacity": -0.1}, {"ema_alpha": 0}, {"ema_alpha": 1.5}, {"ema_alpha": -0.2},
                                 {"window_s": 0}, {"flag_penalty": -1}, {"untested_availability": 2},
                                 {name: 0 for name in ("weight_capacity", "weight_compute", "weight_invocations",
                                                       "weight_chutes", "weight_availability", "weight_latency")},
                                 {"weight_latency": float("inf")}, {"unknown": 1}])
def test_bad_settings_rejected(bad):
    with pytest.raises(ValidationError):
        ScoringSettings(**bad)


def test_settings_defaults_and_bad_inputs():
    assert SETTINGS.window_s == 7 * 24 * 3600 and 0 < SETTINGS.ema_alpha <= 1
    assert ScoringSettings(ema_alpha=1).ema_alpha == 1
    with pytest.raises(ValueError):
        smooth({}, {}, 0)
    with pytest.raises(ValidationError):
        MinerWindow(hotkey="a", coldkey="c", uid=0, synthetic_ok=3, synthetic_total=2)
    with pytest.raises(ValidationError):
        MinerWindow(hotkey="a", coldkey="c", uid=0, devices=[("GPU-1", "h100", -1.0, True)])
    assert MinerWindow(hotkey="a", coldkey="c", uid=0, devices=[("GPU-1", "h100", 1.0, True)]).capacity() == 1.0
    with pytest.raises(ValueError):
        raw_scores([window("a"), window("a")], SETTINGS)
