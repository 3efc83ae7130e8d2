"""What the validator shows the operator: Prometheus ``/metrics`` and a wandb run of scores.

Counted at each step, GraVal round, synthetic call and weights submission.
``ValidatorMetrics`` owns its own registry (so tests and several validators in one process
stay apart) and serves it on ``--validator.metrics_port`` when that is set. ``ScoreTracker`` logs the
scores and weights of every step to a wandb run, ``offline`` by default (files under
``$CANOPY_HOME/wandb``, uploaded later with ``wandb sync``), ``online`` once the operator
has run ``wandb login``, or ``disabled``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from canopy.paths import canopy_home
from node.config import WandbSettings

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ValidatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps = Counter("canopy_validator_steps", "Validator steps finished.", registry=r)
        self.step_seconds = Histogram("canopy_validator_step_seconds", "Wall time of one step.", registry=r,
                                      buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.block = Gauge("canopy_validator_block", "Chain block of the last step.", registry=r)
        self.miners = Gauge("canopy_validator_miners", "Miners by state this step.", ["state"], registry=r)
        self.challenges = Counter("canopy_validator_challenges", "GraVal device verifications by result.",
                                  ["result", "reason"], registry=r)
        self.sweeps = Counter("canopy_validator_sweeps", "GraVal re-verification sweeps started (every device at once).",
                              registry=r)
        self.devices = Gauge("canopy_validator_verified_devices",
                             "Devices credited this step (latest verification passed, owned by the miner) by GPU-table "
                             "row and whether that row is calibrated (uncalibrated rows earn the lowest multiplier "
                             "among the rows that could hold the memory proven).", ["model", "calibrated"], registry=r)
        self.invocations = Counter("canopy_validator_invocations", "Synthetic invocations by chute kind and outcome.",
                                   ["kind", "result"], registry=r)
        self.invocation_latency = Histogram("canopy_validator_invocation_latency_seconds",
                                            "Latency of successful synthetic invocations.", ["kind"],
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("canopy_validator_ttft_seconds", "Time to first token of synthetic LLM calls.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.flagged = Counter("canopy_validator_flagged", "Synthetic LLM outputs that disagreed with the majority.",
                               registry=r)
        self.weights_set = Counter("canopy_validator_weights_set", "set_weights attempts by result.", ["result"], registry=r)
        self.score = Gauge("canopy_validator_score", "Smoothed score per miner uid.", ["uid"], registry=r)
        self._server: Any = None

    def serve(self, port: int, ip: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``ip:port`` from a daemon thread."""
        self._server = start_http_server(port, addr=ip, registry=self.registry)
        logger.info("metrics: Prometheus /metrics on http://{}:{}/metrics", ip, port)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        if isinstance(self._server, tuple):
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._server = None

    def verified_devices(self, counts: Mapping[tuple[str, bool], int]) -> None:
        """(model id, calibrated) -> devices credited this step."""
        self.devices.clear()
        for (model, calibrated), count in counts.items():
            self.devices.labels(model=model, calibrated=str(calibrated).lower()).set(count)

    def scores(self, uid_scores: Mapping[int, float]) -> None:
        self.score.clear()
        for uid, value in uid_scores.items():
            self.score.labels(uid=str(uid)).set(value)


class ScoreTracker:
    """A wandb run with one log entry per validator step (lazy: wandb loads on the first step)."""

    def __init__(self, settings: WandbSettings, *, name: str, config: Mapping[str, Any]) -> None:
        self.settings = settings
        self.name = name
        self.config = dict(config)
        self.run: Any = None
        self.failed = False

    @property
    def enabled(self) -> bool:
        return self.settings.mode != "disabled" and not self.failed

    def _start(self) -> None:
        import wandb  # heavy; only when tracking is on

        folder = Path(self.settings.dir or canopy_home() / "wandb").expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=self.settings.project, entity=self.settings.entity, name=self.name,
                              mode=self.settings.mode, dir=str(folder), config=self.config, reinit="finish_previous")
        logger.info("wandb: run {} ({} mode) in {}", self.name, self.settings.mode, folder)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        try:
            if self.run is None:
                self._start()
            self.run.log(dict(values), step=step)
        except Exception as error:  # noqa: BLE001 - tracking must never stop the validator
            self.failed = True
            logger.warning("wandb: tracking turned off after an error: {} (scores are still in the store)", error)

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as error:  # noqa: BLE001
                logger.warning("wandb: finishing the run failed: {}", error)
            self.run = None
