"""GraVal synapses: what the validator asks a miner's axon and what the miner answers.

``Inventory`` (claimed devices, and the chutes hosted on them), ``DeviceInfo`` (live
readings), ``Prove`` (run a challenge on one device, answer with Merkle roots) and
``Open`` (reveal picked rows and columns with their paths). Served by
``miner.graval.service`` (Inventory's chutes by ``miner.chutes_service``), called by
``validator.graval.session``. Data travels as base64 inside JSON, never pickled.
"""

from __future__ import annotations

import base64
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.chutes import MAX_CHUTES, HostedChute, RefusedChute
from protocol.graval.devices import DeviceSpec, LiveDeviceInfo
from protocol.graval.merkle import DIGEST
from protocol.graval.spec import ChallengeSpec
from protocol.synapse import Synapse, SynapseResponse

MAX_OPEN_LEAVES = 4096


class InventoryResponse(SynapseResponse):
    devices: list[DeviceSpec] = Field(default_factory=list, max_length=64)
    # What the miner hosts on them (miner.chutes_service); empty from a miner hosting nothing.
    chutes: list[HostedChute] = Field(default_factory=list, max_length=MAX_CHUTES)
    refused: list[RefusedChute] = Field(default_factory=list, max_length=MAX_CHUTES)


class Inventory(Synapse):
    """Which devices do you offer, and which chutes run on them with what load?
    (device specs are checked against the GPU table)."""

    response_model: ClassVar[type[SynapseResponse]] = InventoryResponse


class DeviceInfoResponse(SynapseResponse):
    devices: list[LiveDeviceInfo] = Field(default_factory=list, max_length=64)


class DeviceInfo(Synapse):
    """Live readings (memory, clocks) of the named devices, compared with their claims."""

    response_model: ClassVar[type[SynapseResponse]] = DeviceInfoResponse
    uuids: list[str] = Field(..., min_length=1, max_length=64)


class Commitment(SynapseResponse):
    """The prover's answer to ``Prove``: one root per matrix and per access state."""

    challenge_id: str
    matrix_roots: list[str]
    state_roots: list[str]
    prover_seconds: float = 0.0  # as the miner reports it; the validator times the round trip itself
    backend: str = ""

    @field_validator("matrix_roots", "state_roots")
    @classmethod
    def _digests(cls, roots: list[str]) -> list[str]:
        for root in roots:
            if len(root) != 2 * DIGEST:
                raise ValueError(f"a root is {2 * DIGEST} hex characters")
            bytes.fromhex(root)
        return roots


class Prove(Synapse):
    """Run this challenge on the device ``spec.uuid`` and commit to its results."""

    response_model: ClassVar[type[SynapseResponse]] = Commitment
    spec: ChallengeSpec


class LeafRef(BaseModel):
    """Row ``leaf`` of matrix M_index (kind "M"), or column ``leaf`` of state X_index (kind "X")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["M", "X"]
    index: int = Field(..., ge=0)
    leaf: int = Field(..., ge=0)


class LeafOpening(LeafRef):
    data: str  # base64 of the int8 entries
    path: list[str] = Field(..., max_length=32)

    @classmethod
    def build(cls, ref: LeafRef, data: bytes, path: list[bytes]) -> "LeafOpening":
        return cls(kind=ref.kind, index=ref.index, leaf=ref.leaf,
                   data=base64.b64encode(data).decode(), path=[sibling.hex() for sibling in path])

    @property
    def ref(self) -> LeafRef:
        return LeafRef(kind=self.kind, index=self.index, leaf=self.leaf)

    def raw(self) -> bytes:
        return base64.b64decode(self.data, validate=True)

    def siblings(self) -> list[bytes]:
        return [bytes.fromhex(sibling) for sibling in self.path]


class Openings(SynapseResponse):
    challenge_id: str
    leaves: list[LeafOpening] = Field(default_factory=list, max_length=MAX_OPEN_LEAVES)


class Open(Synapse):
    """Reveal these leaves of the committed challenge ``challenge_id``."""

    response_model: ClassVar[type[SynapseResponse]] = Openings
    challenge_id: str = Field(..., min_length=1, max_length=64)
    leaves: list[LeafRef] = Field(..., min_length=1, max_length=MAX_OPEN_LEAVES)
