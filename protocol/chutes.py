"""Chute synapses: invoking a cord of a chute hosted on a miner, and what the miner hosts.

The seam between whoever invokes a chute on a miner (``Dendrite.stream(miner,
Invoke(...))``) and the miner that hosts it (``miner.chutes_service``). ``HostedChute``
and ``RefusedChute`` also travel in GraVal's ``Inventory`` reply.

``Invoke`` is a streaming synapse: the reply is NDJSON, one ``InvokeChunk`` per line.

- A refusal before any chunk is an ordinary typed HTTP error: 404 ``not_found`` (no such
  chute or cord), 422 ``invalid_payload`` (the cord's schema refused the payload; the
  instance's failing fields are in ``detail``), 413 ``payload_too_large``, 429 ``busy``
  (every instance of the chute is at its concurrency), 503 ``chute_unavailable`` (no
  instance is ready), 500 ``remote_error`` (the cord raised; ``detail.remote`` holds the
  remote type, message and frames), 502 ``instance_crashed``, 504 ``instance_timeout``.
- Otherwise chunks carry ``data``: a text piece of the instance's response body, as it
  arrived (``encoding`` "base64" for a binary content type). The first chunk carries the
  instance's HTTP ``status`` and ``content_type``. The last chunk has ``done=True`` with
  ``compute_s`` and, when the body or its SSE events carried OpenAI ``usage``, the token
  counts; a reply the miner buffered (``stream=False``, or a non-streaming cord) is one
  chunk that is both first and last.
- A failure after the first chunk ends the stream with a chunk whose ``error`` names it
  (``instance_crashed``, ``remote_error``, ``instance_timeout``) and ``done=True``.

The error kinds of a chute call (``chute_unavailable``, ``remote_error``, ``instance_crashed``,
``instance_timeout``) are part of ``protocol.errors`` and travel like every other.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol import errors
from protocol.synapse import Synapse, SynapseResponse

MAX_CHUTES = 256
MAX_CORDS = 256


# --- error kinds -----------------------------------------------------------------------


# The kinds a chute call adds live in protocol.errors with the rest of the vocabulary.
ChuteUnavailable, RemoteChuteError = errors.ChuteUnavailable, errors.RemoteChuteError
InstanceCrashed, InstanceTimeout = errors.InstanceCrashed, errors.InstanceTimeout


# --- Invoke ----------------------------------------------------------------------------


class Usage(SynapseResponse):
    """OpenAI token usage as the chute reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChunkError(SynapseResponse):
    """Why a stream ended early: ``type`` is one of the error kinds above."""

    type: str
    message: str = ""
    remote: dict[str, Any] | None = None


class InvokeChunk(SynapseResponse):
    """One line of an Invoke reply (see the module docstring for the sequence)."""

    data: str | None = None
    encoding: Literal["utf-8", "base64"] | None = None
    status: int | None = None
    content_type: str | None = None
    done: bool = False
    compute_s: float | None = None
    usage: Usage | None = None
    error: ChunkError | None = None


class Invoke(Synapse):
    """Call ``method path`` of chute ``chute_id`` with the JSON ``payload``.

    ``stream`` True forwards the instance's body piece by piece as it arrives; False has
    the miner collect the whole body and send it as one chunk.
    """

    response_model: ClassVar[type[SynapseResponse]] = InvokeChunk
    streaming: ClassVar[bool] = True

    chute_id: str = Field(..., min_length=1, max_length=128)
    path: str = Field(..., min_length=1, max_length=256, pattern=r"^/\S*$")
    method: str = Field("POST", pattern=r"^(GET|POST|PUT|PATCH|DELETE)$")
    payload: Any = None
    stream: bool = True
    # The registry revision (sha256 of the code bundle) the caller wants served; None: any the
    # miner hosts under ``chute_id`` (its newest ready one). A miner without it answers 404.
    revision: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


# --- what the miner hosts (the Inventory reply) -------------------------------------------


class HostedCord(BaseModel):
    """A cord as callers need it (the fields of ``canopy.chute.CordInfo``)."""

    model_config = ConfigDict(extra="ignore")

    path: str
    method: str = "POST"
    stream: bool = False
    passthrough: bool = False
    public_api_path: str = ""
    public_api_method: str = ""
    input_schema: dict[str, Any] | None = None
    minimal_input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    output_content_type: str = "application/json"


class HostedChute(BaseModel):
    """A chute this miner serves: identity, cords with schemas, capacity and current load."""

    model_config = ConfigDict(extra="ignore")

    chute_id: str
    name: str
    username: str = ""
    tagline: str = ""
    ref: str = ""
    # The sha256 of the code bundle its instances run (the registry's revision when it was
    # deployed; a pinned chute's own code bundled the same way); "" when unknown.
    revision: str = ""
    model: str = ""  # an LLM chute's OpenAI model name ("" for other chutes)
    cords: list[HostedCord] = Field(default_factory=list, max_length=MAX_CORDS)
    instances: int = 0
    ready_instances: int = 0
    concurrency: int = 1  # per instance
    in_flight: int = 0

    @property
    def capacity(self) -> int:
        return self.ready_instances * self.concurrency

    @property
    def load(self) -> float:
        """In-flight requests over ready capacity (1.0 = full; inf when nothing is ready)."""
        return self.in_flight / self.capacity if self.capacity else float("inf")


class RefusedChute(BaseModel):
    """A chute in the hosting config that this miner does not serve, and why."""

    model_config = ConfigDict(extra="ignore")

    ref: str
    reason: str
    chute_id: str | None = None
