"""The miner role: devices (``miner.inventory``), GraVal proving (``miner.graval``), chute
hosting (``miner.hosting``, ``miner.placement``, ``miner.instances``, ``miner.processes``,
``miner.chutes_service``) and registry chutes (``miner.announcements``, ``miner.bundles``,
``miner.autoscaler``, ``miner.registry_service``).
"""

from canopy.extras import require_node_extra

require_node_extra(__name__, ("numpy",))  # the GraVal modules run in the GPU check kit too

