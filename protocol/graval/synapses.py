"""GraVal synapses: what the validator asks a miner's axon and what the miner answers.

``Inventory`` (claimed devices, and the chutes hosted on them), ``DeviceInfo`` (live
readings), ``Prove`` (fill phase on one device, answered with the fill root), ``Access``
(access phase in the order of a seed sent after that root, answered with the access
root) and ``Open`` (reveal picked rows and columns with the tree nodes that prove them). Served by
``miner.graval.service`` (Inventory's chutes by ``miner.chutes_service``), called by
``validator.graval.session``. Data travels as base64 inside JSON, never pickled.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from protocol.chutes import MAX_CHUTES, HostedChute, RefusedChute
from protocol.graval.devices import DeviceSpec, LiveDeviceInfo
import numpy as np

from protocol.graval.lattice import DIGEST_BYTES, Q, digest_bytes
from protocol.graval.spec import ChallengeSpec
from protocol.synapse import Synapse, SynapseResponse

MAX_OPEN_LEAVES = 4096


class DeviceLoad(BaseModel):
    """Memory a device's hosted instances hold right now (weights, KV cache): a re-verifying
    sweep proves the rest, beside the instances, so serving never stops for a proof."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uuid: str = Field(..., min_length=1, max_length=128)
    reserved_bytes: int = Field(0, ge=0)


class InventoryResponse(SynapseResponse):
    devices: list[DeviceSpec] = Field(default_factory=list, max_length=64)
    loads: list[DeviceLoad] = Field(default_factory=list, max_length=64)
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


def _check_digest(value: str) -> str:
    raw = base64.b64decode(value, validate=True)
    if len(raw) != DIGEST_BYTES:
        raise ValueError(f"a digest is {DIGEST_BYTES} bytes")
    return value


Digest = Annotated[str, AfterValidator(_check_digest)]


def encode_digest(digest: Any) -> str:
    return base64.b64encode(digest_bytes(digest)).decode()


class FillCommitment(SynapseResponse):
    """The prover's answer to ``Prove``: the lattice Merkle root over every row of every matrix."""

    challenge_id: str = Field(..., max_length=64)
    fill_root: Digest = Field(..., description="base64 digest")
    prover_seconds: float = 0.0  # as the miner reports it; the validator times the round trip itself
    backend: str = Field("", max_length=64)


class Prove(Synapse):
    """Fill: run this challenge's fill phase on the device ``spec.uuid`` and commit to the matrices."""

    response_model: ClassVar[type[SynapseResponse]] = FillCommitment
    spec: ChallengeSpec


class AccessCommitment(SynapseResponse):
    """The prover's answer to ``Access``: the root over every column of every access state."""

    challenge_id: str = Field(..., max_length=64)
    access_root: Digest = Field(..., description="base64 digest")
    prover_seconds: float = 0.0


class Access(Synapse):
    """Run the access phase of a committed challenge in the order drawn from ``access_seed``
    (sent only after the fill root arrived) and commit to the states."""

    response_model: ClassVar[type[SynapseResponse]] = AccessCommitment
    challenge_id: str = Field(..., min_length=1, max_length=64)
    access_seed: str = Field(..., min_length=64, max_length=64, description="32 random bytes, hex")

    @field_validator("access_seed")
    @classmethod
    def _hex(cls, value: str) -> str:
        bytes.fromhex(value)
        return value.lower()


class LeafRef(BaseModel):
    """Row ``leaf`` of matrix M_index (kind "M"), or column ``leaf`` of state X_index (kind "X")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["M", "X"]
    index: int = Field(..., ge=0)
    leaf: int = Field(..., ge=0)


class LeafOpening(LeafRef):
    data: str  # base64 of the int8 entries
    digest: str  # base64 of the leaf's digest (checked against the data by the validator)

    @classmethod
    def build(cls, ref: LeafRef, data: bytes, digest: Any) -> "LeafOpening":
        return cls(kind=ref.kind, index=ref.index, leaf=ref.leaf,
                   data=base64.b64encode(data).decode(), digest=encode_digest(digest))

    @property
    def ref(self) -> LeafRef:
        return LeafRef(kind=self.kind, index=self.index, leaf=self.leaf)

    def raw(self) -> bytes:
        return base64.b64decode(self.data, validate=True)

    def raw_digest(self) -> bytes:
        return base64.b64decode(self.digest, validate=True)


class TreeNodes(BaseModel):
    """The nodes of one commitment tree ("M": the fill's, "X": the access's) that the opened
    leaves need to reach its root (a multiproof), each sent once, packed: ``levels`` one
    byte per node (0 = leaves), ``positions`` little-endian uint64, ``digests`` the digests
    one after the other. Packed so the validator decodes thousands of nodes in one pass."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tree: Literal["M", "X"]
    levels: str = ""
    positions: str = ""
    digests: str = ""

    @classmethod
    def pack(cls, tree: Literal["M", "X"], levels: list[int], positions: list[int], digests: list[Any]) -> "TreeNodes":
        encode = base64.b64encode
        packed = b"".join(digest_bytes(digest) for digest in digests)
        return cls(tree=tree, levels=encode(np.asarray(levels, dtype=np.uint8).tobytes()).decode(),
                   positions=encode(np.asarray(positions, dtype="<u8").tobytes()).decode(), digests=encode(packed).decode())

    def unpack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(levels, positions, digests as count x K int64); ValueError when malformed."""
        levels = np.frombuffer(base64.b64decode(self.levels, validate=True), dtype=np.uint8).astype(np.int64)
        positions = np.frombuffer(base64.b64decode(self.positions, validate=True), dtype="<u8")
        raw = base64.b64decode(self.digests, validate=True)
        if len(positions) != len(levels) or len(raw) != len(levels) * DIGEST_BYTES or (positions >= 2**62).any():
            raise ValueError("the packed tree nodes do not line up")
        digests = np.frombuffer(raw, dtype="<u2").astype(np.int64).reshape(len(levels), DIGEST_BYTES // 2)
        if (digests >= Q).any():
            raise ValueError("a digest coordinate is not below Q")
        return levels, positions.astype(np.int64), digests


class Openings(SynapseResponse):
    challenge_id: str
    leaves: list[LeafOpening] = Field(default_factory=list, max_length=MAX_OPEN_LEAVES)
    nodes: list[TreeNodes] = Field(default_factory=list, max_length=2)


class Open(Synapse):
    """Reveal these leaves of the committed challenge ``challenge_id``, with the tree nodes
    the validator needs to lead them to the two roots (a multiproof)."""

    response_model: ClassVar[type[SynapseResponse]] = Openings
    challenge_id: str = Field(..., min_length=1, max_length=64)
    leaves: list[LeafRef] = Field(..., min_length=1, max_length=MAX_OPEN_LEAVES)
