"""The Chain port and its adapters; ``connect`` picks the adapter for a ``--network``.

Callers: every neuron and the CLI. Code above this package imports ``chain.base`` types
and calls ``connect(settings)``; it never talks to bittensor's chain API directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chain.base import (
    AxonInfo,
    Chain,
    ChainError,
    Hyperparameters,
    InvalidWeights,
    Metagraph,
    Neuron,
    NotRegistered,
    NoValidatorPermit,
    RateLimited,
    SubnetNotFound,
    WeightsSubmission,
)

if TYPE_CHECKING:
    from canopy.config import NeuronSettings


def connect(settings: "NeuronSettings") -> Chain:
    """The Chain for ``settings.network``: the devnet file, or a real chain through bittensor."""
    if settings.is_devnet:
        from chain.devnet import DevnetChain

        return DevnetChain(settings.devnet.path, block_time=settings.devnet.block_time)
    from chain.subtensor import SubtensorChain

    return SubtensorChain(settings.network)


__all__ = [
    "AxonInfo", "Chain", "ChainError", "Hyperparameters", "InvalidWeights", "Metagraph", "Neuron",
    "NotRegistered", "NoValidatorPermit", "RateLimited", "SubnetNotFound", "WeightsSubmission", "connect",
]
