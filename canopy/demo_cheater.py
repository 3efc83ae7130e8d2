"""The demo's dishonest miner: ``neurons/miner.py`` whose GraVal prover commits to random
Merkle roots instead of computing the products, so it claims a device it cannot prove.

Callers: ``canopy.demo`` (the third miner, to show the validator giving it weight 0) and
the devnet tests (``tests/neurons/cheating_miner.py``). Run it as a module with the
miner's flags (``python -m canopy.demo_cheater ...``). Nothing else differs from the honest miner: it registers, serves its axon, hosts
chutes and answers Inventory like any other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from miner.graval.prover import Prover
from protocol.graval.synapses import Commitment


class RandomRoots(Prover):
    """Commits to random roots without computing anything, then opens honestly computed data."""

    def prove(self) -> Commitment:
        honest = super().prove()
        return honest.model_copy(update={
            "matrix_roots": [os.urandom(32).hex() for _ in honest.matrix_roots],
            "state_roots": [os.urandom(32).hex() for _ in honest.state_roots],
        })


def install() -> None:
    """Make every ``GravalService`` built from now on use ``RandomRoots``."""
    from miner.graval import service

    honest_init = service.GravalService.__init__

    def cheating_init(self, devices, **kwargs) -> None:  # noqa: ANN001 - mirrors GravalService.__init__
        kwargs["prover_factory"] = lambda spec, backend: RandomRoots(spec, backend)
        honest_init(self, devices, **kwargs)

    service.GravalService.__init__ = cheating_init


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: ``neurons`` is not a package
    import neurons.miner as miner_neuron
    from canopy.neuron import run_neuron

    install()
    run_neuron("miner", miner_neuron.main)


if __name__ == "__main__":
    main()
