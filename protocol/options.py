"""The axon's option types (``--axon.*``): the protocol layer owns them; the node settings
(``node.config.NeuronSettings``) nest them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AxonSettings(BaseModel):
    port: int = Field(8091, ge=1, le=65535, description="Port the axon listens on.")
    ip: str = Field("0.0.0.0", description="Interface the axon binds to.")
    external_ip: str | None = Field(
        None, description="IP published on chain for clients to reach (default: --axon.ip, or 127.0.0.1 on the devnet)."
    )
    external_port: int | None = Field(None, ge=1, le=65535, description="Port published on chain (default: --axon.port).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted, in bytes.")
    max_concurrency: int = Field(64, ge=1, description="Requests served at once; past it the lowest-stake callers get 429.")
    min_stake: float = Field(0.0, ge=0, description="Least stake (TAO) a caller must hold to be served.")
    require_permit: bool = Field(True, description="Serve only callers with a validator permit.")
