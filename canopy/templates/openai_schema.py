"""The OpenAI wire shapes, one set for every side: the LLM chute, the gateway and the validator.

Seam: the OpenAI API between Canopy's parts. ``canopy.templates.llm`` (``build_llm_chute``)
uses the request models as its cords' input schemas and the builders and stream formatters
below to turn engine output (``canopy.templates.cpu_llm``) into replies; the gateway
(``api``) admits its OpenAI routes' bodies with ``ChatCompletionIn`` / ``CompletionIn`` and
answers ``GET /v1/models`` with ``ModelList``; the validator's synthetic checks
(``validator.synthetic``) parse the chunks a miner streams with ``ChatCompletionChunk``. The
wire format is the OpenAI API's (as vLLM's OpenAI server also speaks it), so the ``openai``
client parses it: ``chat.completion`` / ``chat.completion.chunk`` / ``text_completion``
objects, ``usage``, streams of ``data: {json}\\n\\n`` lines ending in ``data: [DONE]\\n\\n``
(a final chunk with empty ``choices`` and the usage first when ``stream_options.include_usage``).
/v1/models and vLLM's /tokenize and /detokenize bodies are here too.

Two views of one request share ``Sampling``: the chute's (``ChatCompletionRequest``,
``CompletionRequest``) tolerates unknown fields (the client sends many) and refuses what
its engine cannot honour (-> 422): ``n`` != 1, logprobs, ``echo``/``suffix``/``best_of`` on
completions, several prompts in one completion request, non-text content parts, ``top_p``
0. The gateway's (``ChatCompletionIn``, ``CompletionIn``) checks the types only and relays
the rest to the chute, plus Canopy's routing fields (``strategy``, ``race``). Token counts
in ``Usage`` are strict integers: a reader refuses ``"5"``, ``5.0`` or ``true``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterable, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

FinishReason = Literal["stop", "length"]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


def new_id(prefix: str) -> str:
    """A response id such as ``chatcmpl-<32 hex>`` / ``cmpl-<32 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


# -- requests ----------------------------------------------------------------------------------


class TextPart(BaseModel):
    """A text content part (``{"type": "text", "text": ...}``); other part types are refused."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Role


class ChatMessageIn(_Message):  # as the gateway admits it: content parts of any type (the chute judges them)
    content: str | list[dict[str, Any]] | None = None


class ChatMessage(_Message):  # as the CPU engine reads it: text content parts only
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined with newlines)."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = False


class Sampling(BaseModel):
    """The sampling fields of every generation request, in OpenAI's ranges."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None


class _Sampling(Sampling):
    """The chute's generation request: what its engine honours."""

    model_config = ConfigDict(extra="allow")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported (one choice per request)")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        if len(items) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    @property
    def include_usage(self) -> bool:
        """Whether a streamed reply ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``CpuLlmEngine.generate`` (OpenAI defaults: temperature 1, top_p 1)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {"max_tokens": self.requested_max_tokens(), "temperature": 1.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p, "seed": self.seed, "stop": stop}


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported by this model server")
        return value

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``; None = no limit."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plain_messages(self) -> list[dict[str, str]]:
        """``[{"role", "content"}]`` with text parts joined, for a chat template."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampling):
    """POST /v1/completions: one prompt, a string or token ids (a 1-element list is accepted)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> str | list[int]:
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            value = value[0]
        if isinstance(value, str) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        return value

    @model_validator(mode="after")
    def _supported(self) -> "CompletionRequest":
        if self.echo:
            raise ValueError("echo is not supported by this model server")
        if self.suffix:
            raise ValueError("suffix is not supported by this model server")
        if self.best_of not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        if self.logprobs is not None:
            raise ValueError("logprobs are not supported by this model server")
        return self


class TokenizeRequest(BaseModel):
    """vLLM's POST /tokenize: either ``prompt`` or ``messages``."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool | None = False

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        return self


class DetokenizeRequest(BaseModel):
    """vLLM's POST /detokenize."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int]


class _Relayed(Sampling):
    """A generation request as the gateway admits it before relaying it to a miner's chute."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., min_length=1, max_length=256)
    stream: StrictBool = False
    n: int | None = Field(None, ge=1, le=1)
    strategy: str | None = Field(None, description="Canopy: default, top_n:N or uids:1,2 (else the key's default)")
    race: int | None = Field(None, ge=1, le=8, description="Canopy: race up to k miners, relay the first")


class ChatCompletionIn(_Relayed):  # the gateway's POST /v1/chat/completions
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionIn(_Relayed):  # the gateway's POST /v1/completions
    prompt: str | list[str] = Field(...)


# -- responses ---------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: StrictInt
    completion_tokens: StrictInt
    total_tokens: StrictInt

    @classmethod
    def of(cls, usage: "Usage | dict[str, int]") -> "Usage":
        if isinstance(usage, Usage):
            return usage
        prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """A ``text_completion``: the whole reply, or (with usage None) one streamed chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "canopy"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


def chat_completion(model: str, text: str, finish_reason: str | None, usage: Usage | dict[str, int], *,
                    id: str | None = None, created: int | None = None) -> ChatCompletion:  # noqa: A002
    """The non-streaming reply for a finished generation."""
    return ChatCompletion(id=id or new_id("chatcmpl"), created=created or int(time.time()), model=model,
                          choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=_reason(finish_reason))],
                          usage=Usage.of(usage))


def completion(model: str, text: str, finish_reason: str | None, usage: Usage | dict[str, int], *,
               id: str | None = None, created: int | None = None) -> Completion:  # noqa: A002
    """The non-streaming /v1/completions reply."""
    return Completion(id=id or new_id("cmpl"), created=created or int(time.time()), model=model,
                      choices=[CompletionChoice(text=text, finish_reason=_reason(finish_reason))], usage=Usage.of(usage))


def model_list(model_id: str, max_model_len: int | None = None, created: int | None = None) -> ModelList:
    """The /v1/models reply for one served model."""
    return ModelList(data=[ModelCard(id=model_id, created=created or int(time.time()), root=model_id,
                                     max_model_len=max_model_len)])


def error_body(message: str, type: str = "invalid_request_error", code: int | str | None = 400,  # noqa: A002
               param: str | None = None) -> dict[str, Any]:
    """An OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _reason(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


# -- server-sent events ------------------------------------------------------------------------

SSE_DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """One SSE event: ``data: <compact json>\\n\\n``."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json()
    else:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {body}\n\n"


def _chunk_dict(chunk: BaseModel, include_usage: bool) -> dict[str, Any]:
    """A stream chunk as OpenAI sends it: deltas carry only the fields they set; ``usage`` is
    present (null until the last chunk) only when include_usage was asked."""
    data = chunk.model_dump(mode="json")
    for choice in data["choices"]:
        if "delta" in choice:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    if not include_usage:
        data.pop("usage", None)
    return data


class _StreamFormatter:
    """Shared by the two formatters: ids, usage and the chunk envelope (``chunk_model``)."""

    prefix = "chatcmpl"
    chunk_model: type[ChatCompletionChunk] | type[Completion] = ChatCompletionChunk

    def __init__(self, model: str, include_usage: bool = False, id: str | None = None,  # noqa: A002
                 created: int | None = None) -> None:
        self.model, self.include_usage = model, include_usage
        self.id, self.created = id or new_id(self.prefix), created or int(time.time())

    def _chunk(self, choices: list[Any], usage: Usage | None = None) -> str:
        chunk = self.chunk_model(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return sse(_chunk_dict(chunk, self.include_usage))

    def usage(self, usage: Usage | dict[str, int]) -> str:
        """The last chunk when include_usage: no choices, the usage."""
        return self._chunk([], Usage.of(usage))


class ChatStreamFormatter(_StreamFormatter):
    """The SSE lines of one streamed chat completion, in order: ``start()`` (role), ``delta(text)``
    for each piece, ``finish(reason)``, ``usage(...)`` when include_usage, then ``SSE_DONE``."""

    def start(self) -> str:
        return self._chunk([ChatChunkChoice(delta=ChoiceDelta(role="assistant", content=""), finish_reason=None)])

    def delta(self, text: str) -> str:
        return self._chunk([ChatChunkChoice(delta=ChoiceDelta(content=text), finish_reason=None)])

    def finish(self, reason: str | None) -> str:
        return self._chunk([ChatChunkChoice(delta=ChoiceDelta(), finish_reason=_reason(reason))])


class CompletionStreamFormatter(_StreamFormatter):
    """The SSE lines of one streamed /v1/completions reply: ``delta(text)``..., ``finish(reason)``,
    ``usage(...)`` when include_usage, then ``SSE_DONE``."""

    prefix = "cmpl"
    chunk_model = Completion

    def delta(self, text: str) -> str:
        return self._chunk([CompletionChoice(text=text, finish_reason=None)])

    def finish(self, reason: str | None) -> str:
        return self._chunk([CompletionChoice(text="", finish_reason=_reason(reason))])


class StreamedGeneration(Protocol):
    """What the stream helpers consume (``cpu_llm.AsyncGeneration`` is one): an async iterable of
    text pieces whose ``finish_reason`` and ``usage`` are set once it is exhausted."""

    finish_reason: str | None
    usage: dict[str, int]

    def __aiter__(self) -> Any: ...


async def stream_chat(generation: StreamedGeneration, model: str, include_usage: bool = False,
                      id: str | None = None) -> AsyncIterable[str]:  # noqa: A002
    """SSE lines for a chat completion as its pieces arrive, ending with ``SSE_DONE``."""
    fmt = ChatStreamFormatter(model, include_usage, id=id)
    yield fmt.start()
    async for piece in generation:
        if piece:
            yield fmt.delta(piece)
    yield fmt.finish(generation.finish_reason)
    if include_usage:
        yield fmt.usage(generation.usage)
    yield SSE_DONE


async def stream_completion(generation: StreamedGeneration, model: str, include_usage: bool = False,
                            id: str | None = None) -> AsyncIterable[str]:  # noqa: A002
    """SSE lines for a /v1/completions stream, ending with ``SSE_DONE``."""
    fmt = CompletionStreamFormatter(model, include_usage, id=id)
    async for piece in generation:
        if piece:
            yield fmt.delta(piece)
    yield fmt.finish(generation.finish_reason)
    if include_usage:
        yield fmt.usage(generation.usage)
    yield SSE_DONE
