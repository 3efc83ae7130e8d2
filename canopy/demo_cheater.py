"""The demo's dishonest miner: ``neurons/miner.py`` whose GraVal prover commits to random
roots instead of computing the products, so it claims a device it cannot prove.

Callers: ``canopy.demo`` (the third miner, to show the validator giving it weight 0) and
the devnet tests (``tests/neurons/cheating_miner.py``). Run it as a module with the
miner's flags (``python -m canopy.demo_cheater ...``). Nothing else differs from the honest miner: it registers, serves its axon, hosts
chutes and answers Inventory like any other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from miner.graval.adversaries import RandomRoots


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
