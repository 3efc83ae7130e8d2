"""Synapse models: the typed requests and responses that travel between dendrite and axon.

The request/response contract of the wire: the axon routes one POST per synapse class,
validates bodies into it and checks the protocol version header; the dendrite serialises
a synapse and parses the declared response model. A new synapse subclasses ``Synapse``::

    class InventoryResponse(SynapseResponse):
        gpus: list[Gpu]

    class Inventory(Synapse):
        response_model: ClassVar[type[SynapseResponse]] = InventoryResponse

Bodies are JSON, encoded and decoded by pydantic's Rust core (never pickle). Each
synapse is served at ``POST /synapse/<route_name>``; ``route_name`` defaults to the
class name. A streaming synapse sets ``streaming = True`` and its ``response_model``
is the type of one chunk (see ``protocol.axon`` for the NDJSON framing).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

#: The wire version this code speaks. Major changes are incompatible; minor are additive.
PROTOCOL_VERSION = "1.0"
#: The header that carries the caller's protocol version on every synapse request.
PROTOCOL_HEADER = "X-Canopy-Protocol"
#: Where synapse routes live.
ROUTE_PREFIX = "/synapse/"


def major_of(version: str) -> int | None:
    """The major part of ``"1.4"``; None when it is not a version string."""
    head = version.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None


class SynapseResponse(BaseModel):
    """Base of every response (and of every stream chunk). Unknown fields are ignored so
    that a newer axon can add fields without breaking older dendrites."""

    model_config = ConfigDict(extra="ignore")


class Synapse(BaseModel):
    """Base of every request. Subclasses declare their fields and these class settings:

    - ``response_model``: what the handler returns (for streaming: one chunk);
    - ``route_name``: the last path segment (default: the class name);
    - ``protocol_version``: the version carried in ``X-Canopy-Protocol`` (default:
      ``PROTOCOL_VERSION``); the axon refuses a request whose major version differs;
    - ``streaming``: True when the handler is an async generator of chunks;
    - ``max_body_bytes``: a larger request body this synapse may carry than the axon's
      ``--axon.max_body_bytes`` (None: the axon's limit; e.g. a chute bundle delivery).

    Unknown request fields are refused (422), so a typo in a caller shows up at once.
    """

    model_config = ConfigDict(extra="forbid")

    response_model: ClassVar[type[SynapseResponse]] = SynapseResponse
    route_name: ClassVar[str] = ""
    protocol_version: ClassVar[str] = PROTOCOL_VERSION
    streaming: ClassVar[bool] = False
    max_body_bytes: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "route_name" not in cls.__dict__:
            cls.route_name = cls.__name__
        if major_of(cls.protocol_version) is None:
            raise TypeError(f"{cls.__name__}.protocol_version must look like '1.0', got {cls.protocol_version!r}")

    @classmethod
    def route(cls) -> str:
        """The path this synapse is served at, e.g. ``/synapse/Echo``."""
        return ROUTE_PREFIX + cls.route_name

    def to_json(self) -> bytes:
        """The request body, as the dendrite signs and sends it."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def parse_response(cls, body: bytes) -> SynapseResponse:
        """Decode one response (or one stream chunk); raises pydantic.ValidationError."""
        return cls.response_model.model_validate_json(body)


# --- built-in synapses: liveness checks, tests and the benchmark ----------------------


class Pong(SynapseResponse):
    hotkey: str = ""
    protocol_version: str = PROTOCOL_VERSION


class Ping(Synapse):
    """Is the axon up and willing to serve me? The axon answers with its hotkey."""

    response_model: ClassVar[type[SynapseResponse]] = Pong


class EchoResponse(SynapseResponse):
    text: str


class Echo(Synapse):
    """Returns ``text`` unchanged: the smallest useful round trip."""

    response_model: ClassVar[type[SynapseResponse]] = EchoResponse
    text: str
