"""The two ``POST /chat`` request shapes Bittensor users send, and how to tell them apart.

Callers: ``api.chat_routes`` (which documents the responses). ``ValidatorChatIn`` is the
validator-endpoint shape (role/content ``messages``, ``uids`` or ``top_n``,
``respond_on_first_success``); ``SubnetOneChatIn`` the Subnet 1 API shape (parallel
``roles`` and string ``messages``, ``k``, ``exclude``, ``timeout``, ``prefer``,
``sampling_mode``). ``request_shape`` picks one by its fields; fields of both are a 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.errors import InvalidRequest
from api.openai_routes import ChatMessageIn

SN1_FIELDS = frozenset({"roles", "k", "exclude", "sampling_mode", "prefer", "timeout"})
VALIDATOR_FIELDS = frozenset({"uids", "top_n", "respond_on_first_success"})
MAX_MINERS = 64


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=256,
                              description="default: the first model GET /v1/models lists for the key")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None


class ValidatorChatIn(SamplingFields):
    """The validator-endpoint shape."""

    messages: list[ChatMessageIn] = Field(..., min_length=1)
    uids: list[int] | None = Field(None, min_length=1, max_length=MAX_MINERS)
    top_n: int | None = Field(None, ge=1, le=MAX_MINERS)
    respond_on_first_success: StrictBool = True


class SubnetOneChatIn(SamplingFields):
    """The Subnet 1 API shape: ``roles`` and ``messages`` are parallel lists of strings."""

    roles: list[Literal["system", "user", "assistant"]] = Field(..., min_length=1)
    messages: list[str] = Field(..., min_length=1)
    k: int = Field(5, ge=1, le=MAX_MINERS)
    exclude: list[int] = Field(default_factory=list, max_length=1024)
    timeout: float | None = Field(None, gt=0, le=600)
    prefer: Literal["longest", "shortest"] | None = None
    sampling_mode: Literal["random", "top_incentive"] = "random"
    stream: StrictBool = True


def request_shape(data: dict[str, Any]) -> type[SamplingFields]:
    sn1, validator = SN1_FIELDS & data.keys(), VALIDATOR_FIELDS & data.keys()
    if sn1 and validator:
        field = sorted(validator)[0]
        raise InvalidRequest(f"{field} belongs to the validator-endpoint shape, {sorted(sn1)[0]} to the Subnet 1 "
                             "shape; send one shape", param=field, code="invalid_value")
    if sn1:
        return SubnetOneChatIn
    if validator:
        return ValidatorChatIn
    messages = data.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
        return SubnetOneChatIn
    return ValidatorChatIn


