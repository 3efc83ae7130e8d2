"""The demo's dishonest miner: ``neurons.miner`` whose GraVal prover commits to random
roots instead of computing the products, so it claims a device it cannot prove (the
validator gives it weight 0). Run it as a module with the miner's flags
(``python -m neurons.demo_cheater ...``). Nothing else differs from the honest miner: it
registers, serves its axon, hosts chutes and answers Inventory like any other.
"""

from __future__ import annotations

import functools

from miner.graval.adversaries import RandomRoots


def main() -> None:
    import neurons.miner as miner_neuron
    from node.runtime import run_neuron

    run_neuron("miner", functools.partial(miner_neuron.serve, prover_factory=RandomRoots))


if __name__ == "__main__":
    main()
