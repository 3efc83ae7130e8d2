"""Registry synapses: what validators announce for miners to host, and the code bundles they send.

The seam between a validator's registry (``store.registry``, announced by
``validator.announce``) and a miner's autoscaler (``miner.autoscaler``, fed by
``miner.registry_service``). Both are signed btauth/1 requests from a validator to a miner
axon, which serves only validators it accepts (permit and stake, as for every synapse).

- ``Announce``: every deployed chute at its current revision, with what the miner needs to
  decide whether to host it (node selector, cords, concurrency, ``max_instances``,
  ``shutdown_after_seconds``) and the demand this validator sees (``ChuteDemand``). The
  miner answers the revisions it runs and the bundles it ``wanted`` (chutes it decided to
  host and holds no verified copy of).
- ``DeliverBundle``: the bundle of one wanted revision (base64 of the ``canopy.bundle``
  tar.gz). The miner keeps it only when its sha256 equals an announced revision, so a
  delivery can never swap other code for the code the announcements name. (What an
  accepted validator announces, the miner runs: a chute's code is a stranger's, and its
  isolation on the miner is the sandbox's job, not this check's.)
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from canopy.bundle import MAX_BUNDLE_BYTES
from canopy.image_environment import ImageEnvironment
from protocol.chutes import MAX_CORDS, HostedCord
from protocol.synapse import Synapse, SynapseResponse

REVISION_PATTERN = r"^[0-9a-f]{64}$"
#: The weights of ``ChuteDemand.points``.
REFUSED_WEIGHT, WARMUP_BONUS = 4, 10.0
#: Most chutes in one announcement (a registry holding more announces those most in demand).
MAX_ANNOUNCED = 1024
_REVISION = re.compile(REVISION_PATTERN)


class ChuteDemand(BaseModel):
    """The demand one validator sees for a chute over its last ``Announce.window_s`` seconds."""

    model_config = ConfigDict(extra="ignore")

    calls: int = Field(0, ge=0, description="calls routed to the chute (organic and synthetic)")
    refused: int = Field(0, ge=0, description="calls that found no capacity (waited cold, or 503 no_capacity)")
    instances: int = Field(0, ge=0, description="ready instances the validator knows of, network-wide")
    warmup: bool = Field(False, description="the owner asked for an instance now (canopy warmup)")
    idle_s: float | None = Field(None, ge=0, description="seconds since the latest call, refusal or warmup (None: none "
                                                         "in the window); an instance stopped for idleness is not "
                                                         "started again until newer demand arrives")


    def points(self) -> float:
        """How much the chute is wanted: calls, refusals weighed ``REFUSED_WEIGHT`` (each one a
        caller turned away), ``WARMUP_BONUS`` for an owner's warm-up. The miners' autoscalers rank
        chutes by it (per instance), the validator when it must announce fewer than it holds."""
        return self.calls + REFUSED_WEIGHT * self.refused + (WARMUP_BONUS if self.warmup else 0.0)


class AnnouncedChute(BaseModel):
    """One registry chute at its current revision."""

    model_config = ConfigDict(extra="ignore")

    chute_id: str = Field(..., min_length=1, max_length=64)
    owner: str = Field(..., min_length=1, max_length=64)
    name: str = Field(..., min_length=1, max_length=128)
    revision: str = Field(..., pattern=REVISION_PATTERN)
    node_selector: dict[str, Any] = Field(default_factory=dict)
    cords: list[HostedCord] = Field(default_factory=list, max_length=MAX_CORDS)
    concurrency: int = Field(1, ge=1, le=1024)
    max_instances: int = Field(1, ge=1, le=1 << 16)
    shutdown_after_seconds: int = Field(300, ge=0)
    model: str = ""  # an LLM chute's OpenAI model name
    tagline: str = ""
    # what a runtime without containers serves of the chute's image, and whether it may reach
    # the internet (canopy.image_environment; ChuteInfo's fields as the deploy inspection found them)
    environment: ImageEnvironment = Field(default_factory=ImageEnvironment)
    allow_external_egress: bool = False
    dockerfile: str = Field("", max_length=65536)  # what a miner's container runtime builds
    demand: ChuteDemand = Field(default_factory=ChuteDemand)
    # This miner's place (0 first) in the validator's rendezvous order of the serving miners
    # for this chute (sha256 of chute, revision and hotkey): the first ``max_instances`` start
    # it without waiting, so miners deciding at the same moment do not all start it at once.
    rank: int | None = Field(None, ge=0)


class AnnounceResponse(SynapseResponse):
    running: dict[str, str] = Field(default_factory=dict, description="chute_id -> revision of ready instances")
    wanted: list[str] = Field(default_factory=list, max_length=MAX_ANNOUNCED, description="revisions to deliver")


class Announce(Synapse):
    """The validator's registry and the demand it sees; ``window_s`` is the demand window."""

    response_model: ClassVar[type[SynapseResponse]] = AnnounceResponse
    # every chute's cords with their schemas: more than the axon's usual 1 MiB on a big registry
    max_body_bytes: ClassVar[int | None] = 32 * 1024 * 1024

    chutes: list[AnnouncedChute] = Field(default_factory=list, max_length=MAX_ANNOUNCED)
    window_s: float = Field(60.0, gt=0, le=86400)


class BundleReceipt(SynapseResponse):
    revision: str
    stored: bool
    reason: str = ""


class DeliverBundle(Synapse):
    """The bundle of ``revision``, base64; kept only when its sha256 is ``revision``."""

    response_model: ClassVar[type[SynapseResponse]] = BundleReceipt
    # base64 of the largest bundle, plus the JSON around it
    max_body_bytes: ClassVar[int | None] = MAX_BUNDLE_BYTES * 4 // 3 + 4096

    revision: str = Field(..., pattern=REVISION_PATTERN)
    data: str = Field(..., min_length=4, max_length=MAX_BUNDLE_BYTES * 4 // 3 + 8)

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data is not base64") from None
        return value

    def bundle(self) -> bytes:
        return base64.b64decode(self.data)


def is_revision(value: object) -> bool:
    return isinstance(value, str) and bool(_REVISION.match(value))
