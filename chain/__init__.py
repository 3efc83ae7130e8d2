"""The Chain port and its adapters; ``connect`` picks the adapter for a ``--network``.

Code above this package imports ``chain.base`` types and calls ``connect(network,
devnet)``; it never talks to bittensor's chain API directly.
"""

from __future__ import annotations

from canopy.extras import require_node_extra

require_node_extra(__name__)

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
    from chain.options import DevnetSettings


def connect(network: str, devnet: "DevnetSettings") -> Chain:
    """The Chain for ``network``: the devnet file (``network == "devnet"``), or a real chain through bittensor."""
    if network == "devnet":
        from chain.devnet import DevnetChain

        from canopy.paths import canopy_home

        path = devnet.path if devnet.path is not None else canopy_home() / "devnet.sqlite"  # node.config's default
        return DevnetChain(path, block_time=devnet.block_time)
    from chain.subtensor import SubtensorChain

    return SubtensorChain(network)


__all__ = [
    "AxonInfo", "Chain", "ChainError", "Hyperparameters", "InvalidWeights", "Metagraph", "Neuron",
    "NotRegistered", "NoValidatorPermit", "RateLimited", "SubnetNotFound", "WeightsSubmission", "connect",
]
