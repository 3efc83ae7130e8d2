"""The wire between validator and miner (DESIGN.md decision 3).

Modules: ``synapse`` (request/response models, protocol version), ``errors`` (typed JSON
errors), ``nonces`` (replay protection stores), ``admission`` (stake-priority load
shedding), ``asgi`` (the axon's transport), ``axon`` (miner-side server), ``dendrite``
(validator-side client), ``chutes`` (invoking hosted chutes), ``graval`` (GPU
verification), ``options`` (``--axon.*``). Import the module you need, e.g. ``from
protocol.axon import Axon``; this package imports nothing so that models can be used
without loading the HTTP stack.
"""

from canopy.extras import require_node_extra

require_node_extra(__name__, ("numpy",))  # the GraVal modules run in the GPU check kit too

