"""Entry points on top of every layer: the miner, validator and API processes (console
scripts ``canopy-miner``, ``canopy-validator``, ``canopy-api``; or ``python -m neurons.ROLE``),
the demo (``python -m neurons.demo``) and the node commands of the ``canopy`` CLI (``neurons.cli``).
"""

from canopy.extras import require_node_extra

require_node_extra(__name__)

