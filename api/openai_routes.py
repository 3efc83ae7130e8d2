"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

Callers: ``api.app.build_app`` includes ``router``; the parts come from ``app.state``
(keys, credits, limiter, directory, upstream, request log, config, metrics) and the shared
steps from ``api.pipeline``. One request goes: auth (``Authorization: Bearer``) → body
(size, JSON, pydantic shape) → ``Idempotency-Key`` (a stored answer is replayed) → rate limits (the
global default rules and the key's own, per key) → model → moderation (``api.moderation``,
a flag is 400 ``content_policy_violation``) → candidates (strategy: the
``x-canopy-strategy`` header or ``strategy`` field, else the key's default; any but ``default``
is a steered call, served but never scored) → one credit
reserved (``api.credits``, in memory) → ``Upstream.open`` (race ``x-canopy-race`` / ``race``) → relayed JSON or SSE →
credit kept on success, refunded otherwise → one ``RequestLog`` row.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.directory import CHAT_PATH, COMPLETIONS_PATH
from api.errors import ApiError, InvalidRequest, NoMinerAvailable, NotFound, UpstreamFailed, sse_error
from api.idempotency import Claim
from api.keys import KeyError_, KeyInfo, parse_strategy
from api.moderation import moderate
from api.pipeline import (
    admit, answer_error, authenticate, charge, claim_or_replay, client_closed, log_request, miner_headers,
    parse_body, refund, request_body, stream_ended,
)
from api.requestlog import RequestRecord
from api.upstream import NoAnswer
from protocol import errors as wire
from protocol.asgi import ClientGone, WatchedStreamingResponse, until_disconnect

router = APIRouter()
CANOPY_FIELDS = ("strategy", "race")


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(..., min_length=1, max_length=256)
    stream: StrictBool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=1)
    seed: int | None = None
    strategy: str | None = Field(None, description="Canopy: default, top_n:N or uids:1,2 (else the key's default)")
    race: int | None = Field(None, ge=1, le=8, description="Canopy: race up to k miners, relay the first")


class ChatCompletionIn(_Common):
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionIn(_Common):
    prompt: str | list[str] = Field(...)


async def _serve(request: Request, kind: type[_Common], path: str) -> Response:
    state = request.app.state
    record = RequestRecord(id=request.scope["state"]["request_id"], route=path)
    claim: Claim | None = None
    try:
        key = await authenticate(request, record)
        body, data = await parse_body(request, kind)
        record.model = body.model
        record.prompt = data.get("messages", data.get("prompt"))
        claim, replay = await claim_or_replay(request, record, key, path, data)
        if replay is not None:
            return replay
        limit_headers = await admit(request, key)
        if not state.directory.known_model(body.model) or not key.allows_model(body.model):
            raise NotFound(f"the model {body.model!r} is not served here (GET /v1/models lists them)", param="model")
        if isinstance(body, ChatCompletionIn):  # api.moderation: before any credit or miner
            await moderate(request, data.get("messages"), "messages")
        else:
            await moderate(request, data.get("prompt"), "prompt")
        strategy_text = request.headers.get("x-canopy-strategy") or body.strategy or key.default_strategy or "default"
        try:
            strategy = parse_strategy(strategy_text)
        except KeyError_ as error:
            raise InvalidRequest(str(error), param="strategy") from None
        record.strategy = strategy
        race = _race(request, body)
        routes = state.directory.candidates(body.model, strategy, path)
        if not routes:
            raise NoMinerAvailable(f"no miner can serve {body.model!r} with strategy {strategy} right now "
                                   "(all busy, unverified or not ready); retry shortly")
        await charge(request, key, record)
        payload = {k: v for k, v in data.items() if k not in CANOPY_FIELDS}
        if body.stream:
            payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        try:
            call = await until_disconnect(state.upstream.open(
                routes, path, payload, stream=body.stream, race=race, timeout_s=state.config.request_timeout_s,
                tried=record.miners_tried, steered=strategy != "default"), request.receive)
        except NoAnswer as failure:
            refund(request, key, record)
            raise answer_error(failure) from None
        except ClientGone:
            return await client_closed(request, key, record)
        record.miners_tried, record.uid, record.hotkey = call.tried, call.route.uid, call.route.hotkey
        headers = {**limit_headers, **miner_headers(call.route)}
        if body.stream:
            stream, claim = _relay(request, call, key, record, claim), None  # the stream settles the claim
            return WatchedStreamingResponse(stream, status_code=call.status,
                                            media_type="text/event-stream", headers=headers)
        try:
            # No disconnect watcher here: a JSON answer is ready when its first byte comes (the
            # wait is before it, watched above); the rest is bounded by the idle timeout.
            text = await call.read()
        except wire.ProtocolError as error:
            refund(request, key, record)
            raise UpstreamFailed(f"the miner failed mid-answer: {error.type}", headers=headers) from None
        finally:
            await call.close()
        record.prompt_tokens, record.completion_tokens, record.answer = call.prompt_tokens, call.completion_tokens, text
        if call.status >= 400:
            refund(request, key, record)
        if claim is not None:
            await claim.finish(call.status, text, {**headers, "content-type": call.content_type})
        log_request(request, record, call.status)
        return Response(text, status_code=call.status, media_type=call.content_type.split(";")[0] or None,
                        headers=headers)
    except ApiError as error:
        log_request(request, record, error.status, error.log_error or error.code or error.type)
        raise
    except Exception as error:  # a bug: give the credit back, log it, answer 500 in the envelope
        if record.charged:
            refund(request, key, record)
        log_request(request, record, 500, type(error).__name__)
        raise
    finally:
        if claim is not None:
            claim.release()  # not answered (an error, a hang-up): a retry is served afresh


async def _relay(request: Request, call: Any, key: KeyInfo, record: RequestRecord, claim: Claim | None = None):
    """The SSE pieces as they arrive; a failure after the first byte becomes a typed error event."""
    pieces: list[str] = []
    status = call.status
    try:
        async for piece in call.pieces():
            pieces.append(piece)
            yield piece
    except wire.ProtocolError as error:
        status, record.error = 502, error.type
        refund(request, key, record)
        yield sse_error(UpstreamFailed(f"the miner failed mid-stream: {error.type}: {error.message}"))
    finally:  # synchronous up to the last line: a client that hung up cancels every await here
        status = stream_ended(request, key, record, call, "".join(pieces), status)
        if claim is not None:  # a clean stream is kept for replay; anything else frees the key
            if call.finished and not record.error and status < 500:
                claim.finish_later(status, record.answer, {**miner_headers(call.route),
                                                           "content-type": "text/event-stream"})
            else:
                claim.release()
        log_request(request, record, status)
        await call.close()


def _race(request: Request, body: _Common) -> int:
    header = request.headers.get("x-canopy-race")
    config = request.app.state.config
    if header is not None:
        if not header.isdigit() or not 1 <= int(header) <= config.max_race:
            raise InvalidRequest(f"x-canopy-race must be 1..{config.max_race}", param="race")
        return int(header)
    if body.race is not None:
        if body.race > config.max_race:
            raise InvalidRequest(f"race must be 1..{config.max_race}", param="race")
        return body.race
    return config.race


@router.post("/v1/chat/completions", tags=["openai"], openapi_extra=request_body(ChatCompletionIn))
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions: JSON with ``usage``, or SSE chunks ending in ``data: [DONE]``."""
    return await _serve(request, ChatCompletionIn, CHAT_PATH)


@router.post("/v1/completions", tags=["openai"], openapi_extra=request_body(CompletionIn))
async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions."""
    return await _serve(request, CompletionIn, COMPLETIONS_PATH)


@router.get("/v1/models", tags=["openai"])
async def models(request: Request) -> JSONResponse:
    """The LLM models verified miners serve now, filtered by what the key may use."""
    record = RequestRecord(id=request.scope["state"]["request_id"], route="/v1/models")
    try:
        key = await authenticate(request, record)
        headers = await admit(request, key)
    except ApiError as error:
        log_request(request, record, error.status, error.code or error.type)
        raise
    names = request.app.state.directory.models(key.allows_model)
    log_request(request, record, 200)
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "canopy"} for name in names]}, headers=headers)
