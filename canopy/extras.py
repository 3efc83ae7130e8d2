"""The seam between the SDK install and its extras: a node package imported without the
``node`` extra stops with one line naming the install that brings it."""

from __future__ import annotations

import functools
import importlib.util

#: What the ``node`` extra installs that a node package cannot start without (one module per
#: distribution of requirements.txt's ``[node]`` section that every node role imports).
NODE_MODULES = ("bittensor", "pydantic_settings", "sqlalchemy", "alembic", "numpy", "redis", "prometheus_client")


class MissingExtra(ImportError):
    """A package of Canopy's node stack was imported where its extra is not installed."""


def require_node_extra(package: str, modules: tuple[str, ...] = NODE_MODULES) -> None:
    """Raise ``MissingExtra`` (one line: what is missing, the pip command) unless ``modules``
    of the ``node`` extra are installed; called at the top of each node package's
    ``__init__``. ``protocol`` and ``miner`` ask for numpy alone: their GraVal modules also
    run in the GPU check kit (``bench/gpu_check.py``), which carries numpy and no bittensor."""
    missing = _missing(modules)
    if missing:
        raise MissingExtra(f"{package} is part of Canopy's node stack and needs the node extra "
                           f"({', '.join(missing)} missing): pip install \"canopy[node]\"")


@functools.cache
def _missing(modules: tuple[str, ...]) -> list[str]:
    """The ``modules`` not installed, looked up once per process (every node package asks)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]
