"""What the validator shows the operator: ``ValidatorMetrics`` (its own registry, ``/metrics`` over
real HTTP) and ``ScoreTracker`` (a wandb run: disabled, offline into a tmp folder, and turned off
by an error inside wandb without stopping anything)."""

from __future__ import annotations

import aiohttp
import pytest

from node.config import WandbSettings
from tests.support import free_port
from validator.metrics import ScoreTracker, ValidatorMetrics

NAMES = ("canopy_validator_steps_total", "canopy_validator_step_seconds", "canopy_validator_block",
         "canopy_validator_miners", "canopy_validator_challenges_total", "canopy_validator_invocations_total",
         "canopy_validator_invocation_latency_seconds", "canopy_validator_ttft_seconds",
         "canopy_validator_flagged_total", "canopy_validator_weights_set_total", "canopy_validator_score",
         "canopy_validator_sweeps_total", "canopy_validator_verified_devices")


def test_every_metric_is_rendered_and_registries_stay_apart():
    metrics, other = ValidatorMetrics(), ValidatorMetrics()
    metrics.steps.inc()
    metrics.challenges.labels(result="fail", reason="bad_opening").inc()
    metrics.scores({1: 0.5, 4: 0.25})
    metrics.scores({4: 0.75})  # a uid that left is no longer shown
    text = metrics.render().decode()
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'canopy_validator_challenges_total{reason="bad_opening",result="fail"} 1.0' in text
    assert 'canopy_validator_score{uid="4"} 0.75' in text and 'uid="1"' not in text
    assert other.registry.get_sample_value("canopy_validator_steps_total") == 0.0
    metrics.verified_devices({("h100", False): 3, ("h200", True): 1})
    metrics.verified_devices({("h100", False): 2})  # a model no longer verified is no longer shown
    text = metrics.render().decode()
    assert 'canopy_validator_verified_devices{calibrated="false",model="h100"} 2.0' in text and "h200" not in text


async def test_serve_answers_get_metrics_and_close_stops_it():
    metrics, port = ValidatorMetrics(), free_port()
    metrics.block.set(1234)
    metrics.serve(port)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 200
                body = await response.text()
            assert "canopy_validator_block 1234.0" in body
            metrics.close()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)):
                    pass
    finally:
        metrics.close()  # safe twice


def test_a_disabled_tracker_does_nothing(monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called while disabled"))
    tracker = ScoreTracker(WandbSettings(mode="disabled"), name="off", config={})
    assert not tracker.enabled
    tracker.log(1, {"score/uid_1": 0.5})
    tracker.close()
    assert tracker.run is None and not tracker.failed


@pytest.fixture
def wandb_sandbox(tmp_path, monkeypatch):
    """wandb's own folders under tmp_path, no console capture, no network."""
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return tmp_path / "runs"


@pytest.mark.timeout(90)
def test_an_offline_tracker_writes_a_run_folder_and_close_finishes_it(wandb_sandbox):
    import wandb

    tracker = ScoreTracker(WandbSettings(mode="offline", dir=str(wandb_sandbox), project="canopy-test"),
                           name="validator-test", config={"netuid": 1, "ema_alpha": 0.1})
    assert tracker.run is None  # lazy: nothing starts before the first step
    tracker.log(1, {"score/uid_1": 0.5, "block": 10})
    tracker.log(2, {"score/uid_1": 0.6, "block": 12})
    assert not tracker.failed and tracker.run is not None
    run_id = tracker.run.id
    assert tracker.run.name == "validator-test" and tracker.run.config["netuid"] == 1
    tracker.close()
    assert tracker.run is None and wandb.run is None
    (folder,) = (wandb_sandbox / "wandb").glob(f"offline-run-*-{run_id}")
    assert (folder / f"run-{run_id}.wandb").stat().st_size > 0
    tracker.close()  # safe twice


def test_an_error_inside_wandb_turns_tracking_off_without_raising(wandb_sandbox, monkeypatch, logs):
    import wandb

    calls = []

    def broken_init(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("wandb service failed to start")

    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = ScoreTracker(WandbSettings(mode="offline", dir=str(wandb_sandbox)), name="broken", config={})
    tracker.log(1, {"score/uid_1": 0.5})
    assert tracker.failed and not tracker.enabled and len(calls) == 1
    tracker.log(2, {"score/uid_1": 0.5})  # not retried every step
    assert len(calls) == 1
    assert any("tracking turned off" in line for line in logs)
    tracker.close()


def test_an_error_while_logging_a_step_turns_tracking_off(monkeypatch):
    class BrokenRun:
        finished = False

        def log(self, values, step):
            raise OSError("disk full")

        def finish(self):
            self.finished = True

    tracker = ScoreTracker(WandbSettings(mode="offline"), name="broken", config={})
    tracker.run = run = BrokenRun()
    tracker.log(1, {"score/uid_1": 0.5})
    assert tracker.failed and not tracker.enabled
    tracker.close()
    assert run.finished and tracker.run is None
