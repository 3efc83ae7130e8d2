"""The validator in tests: its settings on a devnet and the samples of its metrics."""

from __future__ import annotations

from pathlib import Path

from node.config import NeuronSettings, load_settings
from validator.loop import Validator


def devnet_settings(ledger_path: Path, netuid: int, *flags: str) -> NeuronSettings:
    """A validator's settings on the devnet file ``ledger_path``: CPU devices allowed, wandb off."""
    return load_settings(["--network", "devnet", "--devnet.path", str(ledger_path), "--netuid", str(netuid),
                          "--graval.allow_cpu", "--wandb.mode", "disabled", *flags])


def sample(validator: Validator, name: str, **labels) -> float:
    """The value of one of the validator's Prometheus samples (0 when it was never set)."""
    return validator.metrics.registry.get_sample_value(name, labels or None) or 0.0
