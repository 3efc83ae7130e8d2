"""NodeSelector: what hardware a chute needs (the author's side; the miner's matching of
devices against it is ``miner.placement``).

Seam between chute authors and the miner. Authors put a ``NodeSelector`` on their
``canopy.Chute`` (``node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=24)``).

``include`` / ``exclude`` hold GPU-table ids (``h100``, ``a100_80gb``, ``rtx4090``,
``cpu`` ..., the rows of ``protocol/graval/gpus.toml``) or, for anything else,
case-insensitive substrings of the device name (``"A100"``, ``"RTX"``).

VRAM is compared in nominal GB: drivers report a few percent less than the size on the
box (an L4 or A10 "24 GB" shows 22.5 GiB with ECC on, an L40S "48 GB" 45 GiB), so a
device qualifies when it has at least ``VRAM_SLACK`` (92%) of ``min_vram_gb_per_gpu`` GiB.
The devnet's CPU pseudo-device claims little memory (tens of MiB): a chute meant for it
sets ``min_vram_gb_per_gpu=0`` (and usually ``include=["cpu"]``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

VRAM_SLACK = 0.92
MAX_GPUS = 8


class NodeSelector(BaseModel):
    """How many GPUs a chute instance needs, how much memory each, and which models."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_count: int = Field(1, ge=1, le=MAX_GPUS, description="GPUs per instance (1..8)")
    min_vram_gb_per_gpu: int = Field(16, ge=0, description="nominal GB of memory each GPU must have")
    include: list[str] | None = Field(None, description="only these GPU-table ids / name substrings")
    exclude: list[str] | None = Field(None, description="never these GPU-table ids / name substrings")

    @field_validator("include", "exclude")
    @classmethod
    def _tokens(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            raise ValueError("give a list of GPU ids or name substrings, not a single string")
        if not value:
            raise ValueError("an empty list matches nothing; leave it out (None) instead")
        tokens = []
        for token in value:
            token = token.strip()
            if not token:
                raise ValueError("GPU ids / name substrings must not be empty")
            if token not in tokens:
                tokens.append(token)
        return tokens

    @model_validator(mode="after")
    def _disjoint(self) -> "NodeSelector":
        if self.include and self.exclude:
            both = {t.lower() for t in self.include} & {t.lower() for t in self.exclude}
            if both:
                raise ValueError(f"{sorted(both)} are both included and excluded")
        return self

    def describe(self) -> str:
        """A one-line human summary, e.g. '1 x GPU >= 24 GB (include h100)'."""
        text = f"{self.gpu_count} x GPU >= {self.min_vram_gb_per_gpu} GB"
        if self.include:
            text += f" include {','.join(self.include)}"
        if self.exclude:
            text += f" exclude {','.join(self.exclude)}"
        return text
