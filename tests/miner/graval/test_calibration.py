"""The calibration seam: the window the measured variance justifies, the separation table's
verdicts, and the gpus.toml row it renders (miner/graval/calibration.py)."""

from __future__ import annotations

import math

import pytest

from miner.graval import calibration as cal

from miner.graval import separation
from miner.graval.backends import NumpyBackend
from protocol.graval.devices import MAX_WINDOW_HIGH, load_gpu_table
from protocol.graval.spec import ChallengeSpec
from tests.support.chutes import fake_h100s

(H100,) = fake_h100s(1)


def tiny(m: int = 4) -> ChallengeSpec:
    return ChallengeSpec.fresh("GPU-calibration-test", n=64, b=8, m=m, steps=4 * m)


def fake_calibration(fill_rates: list[float], access_rates: list[float]) -> cal.Calibration:
    result = cal.Calibration("test")
    for fill, access in zip(fill_rates, access_rates):
        result.runs.append(cal.Run(16384, 256, 10, 640, fill_s=1e12 / fill, access_s=1e12 / access,
                                   fill_macs=10**12, access_macs=10**12))
    return result


def test_the_window_grows_with_the_measured_variance_and_shrinks_with_more_runs():
    quiet = cal.derive_window(0.01, 0.005, 3)
    assert quiet.high == pytest.approx((1 + cal.DEVICE_SPREAD) * (1 + cal.K_SIGMA * cal.cv_upper_bound(0.01, 3)))
    assert 1.15 < quiet.high < 1.4 and quiet.low == cal.WINDOW_LOW_MAX
    assert cal.derive_window(0.03, 0.01, 3).high > quiet.high  # more variance, wider
    assert cal.derive_window(0.03, 0.01, 10).high < cal.derive_window(0.03, 0.01, 3).high  # more runs, tighter bound
    assert cal.cv_upper_bound(0.01, 3) == pytest.approx(0.01 * math.sqrt(2 / 0.2107))
    assert cal.cv_upper_bound(0.01, 40) < cal.cv_upper_bound(0.01, 31) < cal.cv_upper_bound(0.01, 30)


def test_no_window_and_so_no_row_when_the_variance_would_let_one_gpu_answer_two_claims():
    with pytest.raises(cal.WindowRefused, match="vary too much"):
        cal.derive_window(0.08, 0.01, 3)  # bound 25%: window_high 2.5
    with pytest.raises(cal.WindowRefused, match="at least 3"):
        cal.derive_window(0.0, 0.0, 2)
    devnet = cal.derive_window(0.08, 0.01, 3, limit=None)  # the devnet's CPU row has no such limit
    assert devnet.high > MAX_WINDOW_HIGH


def test_a_rendered_row_is_valid_calibrated_and_keeps_the_matched_rows_identity():
    calibration = fake_calibration([4.1e14, 4.0e14, 4.2e14], [3.0e14, 3.1e14, 2.9e14])
    window = cal.derive_window(calibration.fill_cv, calibration.access_cv, 3)
    h100 = next(model for model in load_gpu_table() if model.id == "h100")
    row = cal._validate(cal.render_row(calibration, window, n=16384, b=256, steps_per_matrix=64, device=H100, model=h100))
    assert row.calibrated and row.id == "h100" and row.name_pattern == h100.name_pattern and row.sm_count == 132
    assert row.fill_macs_per_s == pytest.approx(4.1e14, rel=1e-3) and row.access_macs_per_s == pytest.approx(3.0e14, rel=1e-3)
    assert row.window_high == pytest.approx(window.high, abs=1e-3) and row.window_high < MAX_WINDOW_HIGH
    unknown = cal._validate(cal.render_row(calibration, window, n=16384, b=256, steps_per_matrix=64, device=H100))
    assert unknown.matches_name(H100.name) and unknown.memory_gb_min < H100.memory_gib < unknown.memory_gb_max
    assert not unknown.devnet_only and unknown.sm_count == 132


def test_an_honest_run_is_verified_and_the_separation_verdicts_follow_the_window():
    backend = NumpyBackend()
    result = cal.calibrate(backend, tiny, 3, verify_samples=20)
    assert result.verified is True and result.runs[0].verified and result.runs[1].verified is None
    assert result.fill_rate > 0 and result.access_rate > 0
    window = cal.Window(low=0.5, high=1.5, cv=0.0, cv_bound=0.0, runs=3)
    rows = separation.separation_table(backend, lambda: tiny(m=10), window, honest_runs=2,
                                cases=("honest", "half memory", "90% memory", "two claims"))
    assert [row.case for row in rows] == ["honest (worst of 2)", "half memory", "90% memory", "two claims (a)",
                                          "two claims (b)"]
    for row in rows:
        outside = [ratio for ratio in (row.fill_ratio, row.access_ratio) if not math.isnan(ratio) and window.refuses(ratio)]
        assert row.refused == bool(outside)
    assert "keeps 5 of 10" in rows[1].detail and "keeps 9 of 10" in rows[2].detail
    assert "two claims (b)" in separation.format_table(rows, window)
