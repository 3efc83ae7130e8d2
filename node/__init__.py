"""Node-side core shared by the miner, the validator and the API: the settings every neuron
loads (``node.config``), wallets (``node.wallets``) and the neuron runtime (``node.runtime``).
"""

from canopy.extras import require_node_extra

require_node_extra(__name__)

