"""A miner process that claims its CPU pseudo-device but cannot prove it: it commits to
random Merkle roots instead of computing the GraVal products (``RandomRoots`` of the cheat
matrix). Everything else is the real ``neurons/miner.py``. Started by the devnet tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import neurons.miner as miner_neuron  # noqa: E402
from canopy.neuron import run_neuron  # noqa: E402
from miner.graval import service  # noqa: E402
from tests.validator.graval.cheats import RandomRoots  # noqa: E402

_honest_init = service.GravalService.__init__


def _cheating_init(self, devices, **kwargs) -> None:  # noqa: ANN001 - mirrors GravalService.__init__
    kwargs["prover_factory"] = lambda spec, backend: RandomRoots(spec, backend)
    _honest_init(self, devices, **kwargs)


service.GravalService.__init__ = _cheating_init

if __name__ == "__main__":
    run_neuron("miner", miner_neuron.main)
