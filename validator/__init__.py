"""The validator role: GraVal sessions and sweeps, synthetic checks, scoring windows,
scores and weights (``validator.loop`` runs a step).
"""

from canopy.extras import require_node_extra

require_node_extra(__name__)

