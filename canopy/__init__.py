"""Canopy: the chute SDK and the shared core (config, wallets, logging, CLI).

The SDK (``from canopy import Chute, NodeSelector, Image``) follows the Chutes SDK's shape:
a ``Chute`` with ``@chute.cord()`` routes and ``@chute.on_startup()`` hooks, a
``NodeSelector`` for its hardware, an ``Image`` for its container; ``depends`` and
``run_local`` build chains of chutes (``canopy.chains``). Imports are lazy so the core
(config, wallets, logging) loads without FastAPI or the SDK's other dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def spec_version(version: str = __version__) -> int:
    """The integer a validator sends as ``version_key`` with its weights: 1.2.3 -> 10203."""
    major, minor, patch = (int(part) for part in version.split(".")[:3])
    return major * 10000 + minor * 100 + patch


__spec_version__ = spec_version()

_EXPORTS = {
    "Chute": "canopy.chute",
    "ChuteInfo": "canopy.chute",
    "CordInfo": "canopy.chute",
    "load_chute": "canopy.chute",
    "chute_id": "canopy.chute",
    "NodeSelector": "canopy.node_selector",
    "Cord": "canopy.cord",
    "depends": "canopy.chains",
    "run_local": "canopy.chains",
    "RemoteChuteError": "canopy.chains",
    "Image": "canopy.image",
}

__all__ = ["__version__", "__spec_version__", "spec_version", *_EXPORTS]

if TYPE_CHECKING:
    from canopy.chains import RemoteChuteError, depends, run_local
    from canopy.chute import Chute, ChuteInfo, CordInfo, chute_id, load_chute
    from canopy.cord import Cord
    from canopy.image import Image
    from canopy.node_selector import NodeSelector


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'canopy' has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise AttributeError(f"canopy.{name} is not available: {module_name} is missing") from exc
        raise
    value = getattr(module, name)
    globals()[name] = value
    return value
