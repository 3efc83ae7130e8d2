"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

Seam: the public OpenAI API, on the gateway's one admission step (``api.admission.admit``:
auth, body, ``Idempotency-Key``, rate limits, then the request log and refunds on every
exit). The bodies are the SDK's OpenAI models (``ChatCompletionIn``, ``CompletionIn`` of
``canopy.templates.openai_schema``). After admission a request goes: model (404 when no
miner serves it or the key may not use it) → moderation → candidates (strategy: the
``x-canopy-strategy`` header or ``strategy`` field, else the key's default; any but
``default`` is a steered call, served but never scored) → one credit reserved →
``Upstream.open`` (race ``x-canopy-race`` / ``race``) → the miner's JSON or SSE relayed.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.admission import Admission, admit, request_body
from api.directory import CHAT_PATH, COMPLETIONS_PATH
from api.errors import InvalidRequest, NoMinerAvailable, NotFound, UpstreamFailed, sse_error
from api.keys import KeyError_, parse_strategy
from api.requestlog import RequestRecord
from canopy.templates.openai_schema import ChatCompletion, ChatCompletionIn, Completion, CompletionIn, ModelCard, ModelList
from protocol import errors as wire

router = APIRouter(tags=["openai"])
CANOPY_FIELDS = ("strategy", "race")


def _describe(record: RequestRecord, body: ChatCompletionIn | CompletionIn, data: dict) -> None:
    record.model, record.prompt = body.model, data.get("messages", data.get("prompt"))


async def _generate(admission: Admission[ChatCompletionIn] | Admission[CompletionIn], path: str, field: str) -> Response:
    """The request's miner answer, relayed: JSON as it came, or its SSE with a typed error event
    if the miner fails after the first byte."""
    body, key, gateway, request = admission.body, admission.key, admission.gateway, admission.request
    if not gateway.directory.known_model(body.model) or not key.allows_model(body.model):
        raise NotFound(f"the model {body.model!r} is not served here (GET /v1/models lists them)", param="model")
    await admission.moderate(admission.data.get(field), field)
    try:
        strategy = parse_strategy(request.headers.get("x-canopy-strategy") or body.strategy or key.default_strategy
                                  or "default")
    except KeyError_ as error:
        raise InvalidRequest(str(error), param="strategy") from None
    admission.record.strategy = strategy
    race = _race(request.headers.get("x-canopy-race"), body.race, gateway.config.race, gateway.config.max_race)
    routes = gateway.directory.candidates(body.model, strategy, path)
    if not routes:
        raise NoMinerAvailable(f"no miner can serve {body.model!r} with strategy {strategy} right now "
                               "(all busy, unverified or not ready); retry shortly")
    await admission.charge()
    payload = {k: v for k, v in admission.data.items() if k not in CANOPY_FIELDS}
    if body.stream:
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    call = await admission.call(routes, path, payload, stream=body.stream, race=race,
                                timeout_s=gateway.config.request_timeout_s, steered=strategy != "default")
    admission.served_by(call.route)
    if body.stream:
        return admission.stream(call, call.pieces(), status=call.status, media_type="text/event-stream",
                                failure=lambda error: [sse_error(error)])
    try:
        # No disconnect watcher here: a JSON answer is ready when its first byte comes (the
        # wait is before it, watched above); the rest is bounded by the idle timeout.
        text = await call.read()
    except wire.ProtocolError as error:
        raise UpstreamFailed(f"the miner failed mid-answer: {error.type}", headers=admission.headers) from None
    finally:
        await call.close()
    record = admission.record
    record.prompt_tokens, record.completion_tokens, record.answer = call.prompt_tokens, call.completion_tokens, text
    return await admission.answer(Response(text, status_code=call.status, headers=admission.headers,
                                           media_type=call.content_type.split(";")[0] or None))


def _race(header: str | None, field: int | None, default: int, most: int) -> int:
    if header is not None:
        if not header.isdigit() or not 1 <= int(header) <= most:
            raise InvalidRequest(f"x-canopy-race must be 1..{most}", param="race")
        return int(header)
    if field is not None and field > most:
        raise InvalidRequest(f"race must be 1..{most}", param="race")
    return field or default


@router.post(CHAT_PATH, openapi_extra=request_body(ChatCompletionIn), responses={200: {"model": ChatCompletion}})
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions: JSON with ``usage``, or SSE chunks ending in ``data: [DONE]``."""
    async with admit(request, CHAT_PATH, ChatCompletionIn, _describe) as admission:
        return await _generate(admission, CHAT_PATH, "messages")


@router.post(COMPLETIONS_PATH, openapi_extra=request_body(CompletionIn), responses={200: {"model": Completion}})
async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions."""
    async with admit(request, COMPLETIONS_PATH, CompletionIn, _describe) as admission:
        return await _generate(admission, COMPLETIONS_PATH, "prompt")


@router.get("/v1/models", responses={200: {"model": ModelList}})
async def models(request: Request) -> Response:
    """The LLM models verified miners serve now, filtered by what the key may use."""
    async with admit(request, "/v1/models") as admission:
        names = admission.gateway.directory.models(admission.key.allows_model)
        listed = ModelList(data=[ModelCard(id=name, created=0) for name in names])
        return await admission.answer(JSONResponse(listed.model_dump(exclude_none=True), headers=admission.headers))
