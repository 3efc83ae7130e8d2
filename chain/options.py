"""The chain layer's option types (``--devnet.*``); the node settings nest them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DevnetSettings(BaseModel):
    path: str | None = Field(None, description="The devnet chain file (default: $CANOPY_HOME/devnet.sqlite).")
    block_time: float = Field(1.0, gt=0, le=60, description="Seconds per devnet block.")
