"""Where Canopy keeps project-local state (``$CANOPY_HOME``): the SDK's build context and
model files, and the node's devnet chain, wallets and stores."""

from __future__ import annotations

import os
from pathlib import Path


def canopy_home() -> Path:
    """Project-local state (devnet chain, devnet wallets, pids): ``$CANOPY_HOME`` or ./.canopy."""
    return Path(os.environ.get("CANOPY_HOME", ".canopy")).expanduser().resolve()
