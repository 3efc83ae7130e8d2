"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

Callers: ``api.app.build_app`` includes ``router``; the parts come from ``app.state``
(keys, limiter, directory, upstream, request log, config, metrics). One request goes:
auth (``Authorization: Bearer``) → body (size, JSON, pydantic shape) → rate limits (the
global default rules and the key's own, per key) → model → moderation (``api.moderation``,
a flag is 400 ``content_policy_violation``) → candidates (strategy: the
``x-canopy-strategy`` header or ``strategy`` field, else the key's default) → one credit
reserved → ``Upstream.open`` (race ``x-canopy-race`` / ``race``) → relayed JSON or SSE →
credit kept on success, refunded otherwise → one ``RequestLog`` row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from api.directory import CHAT_PATH, COMPLETIONS_PATH
from api.errors import (
    ApiError, InsufficientCredits, InvalidRequest, NoMinerAvailable, NotFound, PayloadTooLarge, RateLimited,
    Unauthorized, UpstreamFailed, UpstreamTimeout, sse_error,
)
from api.idempotency import Claim, claim_for
from api.keys import KeyError_, KeyInfo, KeyRejected, parse_strategy
from api.moderation import moderate
from api.requestlog import RequestRecord
from api.upstream import NoAnswer
from protocol import errors as wire

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


#: Request-body schemas for the OpenAPI document (``api.app`` adds them to its components).
COMPONENTS: dict[str, Any] = {}


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    COMPONENTS[model.__name__] = schema
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _authenticate(request: Request, record: RequestRecord) -> KeyInfo:
    try:
        key = await request.app.state.keys.authenticate(_bearer(request))
    except KeyRejected as rejected:
        raise Unauthorized(str(rejected), code="invalid_api_key" if rejected.reason != "missing" else "missing_api_key")
    record.key_id = key.id
    return key


async def _admit(request: Request, key: KeyInfo) -> dict[str, str]:
    """Rate limits: the global default rules and the key's own, each counted per key."""
    rules = (*request.app.state.config.global_rate_limits, *key.rate_limits)
    decision = await request.app.state.limiter.check(f"key:{key.id}", rules)
    if not decision.allowed:
        raise RateLimited(f"rate limit {decision.rule} reached; retry in {decision.retry_after_s} s",
                          headers=decision.headers())
    return decision.headers()


async def _body(request: Request, model: type[BaseModel]) -> tuple[BaseModel, dict[str, Any]]:
    raw = await request.body()
    limit = request.app.state.config.max_body_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_type")
    try:
        return model.model_validate(data), data
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param,
                             code="invalid_value") from None


def _miner_headers(route: Any) -> dict[str, str]:
    return {"x-canopy-miner-uid": str(route.uid), "x-canopy-miner-hotkey": route.hotkey}


def _log(request: Request, record: RequestRecord, status: int, error: str = "") -> None:
    record.status, record.error = status, error or record.error
    request.app.state.request_log.write(record)
    request.app.state.metrics.observe(record.route, status, time.perf_counter() - record.started)


async def _serve(request: Request, kind: type[_Common], path: str) -> Response:
    state = request.app.state
    record = RequestRecord(id=request.scope["state"]["request_id"], route=path)
    claim: Claim | None = None
    try:
        key = await _authenticate(request, record)
        body, data = await _body(request, kind)
        record.model = body.model
        record.prompt = data.get("messages", data.get("prompt"))
        claim = await claim_for(request, key.id, path, data)  # Idempotency-Key: api.idempotency
        if claim is not None and claim.replay is not None:
            record.strategy = "replay"
            _log(request, record, claim.replay.status)
            return claim.replay.response()
        limit_headers = await _admit(request, key)
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
        if not await state.keys.reserve(key.id, unlimited=key.credits is None):
            raise InsufficientCredits("the API key has no credits left")
        record.charged = 1
        payload = {k: v for k, v in data.items() if k not in CANOPY_FIELDS}
        if body.stream:
            payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        try:
            call = await _unless_disconnected(request, state.upstream.open(
                routes, path, payload, stream=body.stream, race=race, timeout_s=state.config.request_timeout_s,
                tried=record.miners_tried))
        except NoAnswer as failure:
            await _refund(request, key, record)
            raise _failure(failure) from None
        except ClientClosed:
            return await _client_closed(request, key, record)
        record.miners_tried, record.uid, record.hotkey = call.tried, call.route.uid, call.route.hotkey
        headers = {**limit_headers, **_miner_headers(call.route)}
        if body.stream:
            stream, claim = _relay(request, call, key, record, claim), None  # the stream settles the claim
            return StreamingResponse(stream, status_code=call.status,
                                     media_type="text/event-stream", headers=headers)
        try:
            text = await _unless_disconnected(request, call.read())
        except wire.ProtocolError as error:
            await _refund(request, key, record)
            raise UpstreamFailed(f"the miner failed mid-answer: {error.type}", headers=headers) from None
        except ClientClosed:
            return await _client_closed(request, key, record)
        finally:
            await call.close()
        record.prompt_tokens, record.completion_tokens, record.answer = call.prompt_tokens, call.completion_tokens, text
        if call.status >= 400:
            await _refund(request, key, record)
        if claim is not None:
            await claim.finish(call.status, text, {**headers, "content-type": call.content_type})
        _log(request, record, call.status)
        return Response(text, status_code=call.status, media_type=call.content_type.split(";")[0] or None,
                        headers=headers)
    except ApiError as error:
        _log(request, record, error.status, error.log_error or error.code or error.type)
        raise
    except Exception as error:  # a bug: give the credit back, log it, answer 500 in the envelope
        if record.charged:
            await _refund(request, key, record)
        _log(request, record, 500, type(error).__name__)
        raise
    finally:
        if claim is not None:
            claim.release()  # not answered (an error, a hang-up): a retry is served afresh


class ClientClosed(Exception):
    """The client hung up while the miners were working."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """``await work``, cancelled (miner calls included) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ClientClosed()
    return task.result()


async def _client_closed(request: Request, key: KeyInfo, record: RequestRecord) -> Response:
    await _refund(request, key, record)
    _log(request, record, 499, "client_closed")
    return Response(status_code=499)


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
        await _refund(request, key, record)
        yield sse_error(UpstreamFailed(f"the miner failed mid-stream: {error.type}: {error.message}"))
    finally:  # synchronous up to the last line: a client that hung up cancels every await here
        status = _stream_ended(request, key, record, call, "".join(pieces), status)
        if claim is not None:  # a clean stream is kept for replay; anything else frees the key
            if call.finished and not record.error and status < 500:
                claim.finish_later(status, record.answer, {**_miner_headers(call.route),
                                                           "content-type": "text/event-stream"})
            else:
                claim.release()
        _log(request, record, status)
        await call.close()


def _stream_ended(request: Request, key: KeyInfo, record: RequestRecord, call: Any, answer: str, status: int) -> int:
    """Record what a relayed stream carried; a stream the client hung up on is a 499 and its
    credit goes back (in a task: this runs in a ``finally`` that must not await). Returns the status."""
    record.prompt_tokens, record.completion_tokens = call.prompt_tokens, call.completion_tokens
    record.answer = answer
    if not call.finished and not record.error:
        status, record.error = 499, "client_closed"
        if record.charged:
            record.charged = 0
            request.app.state.request_log.spawn(request.app.state.keys.refund(key.id))
    return status


async def _refund(request: Request, key: KeyInfo, record: RequestRecord) -> None:
    if record.charged:
        record.charged = 0
        await request.app.state.keys.refund(key.id)


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


def _failure(failure: NoAnswer) -> ApiError:
    last = failure.last
    detail = f"{last.type}: {last.message}" if last is not None else "no answer"
    if failure.client_error:
        return InvalidRequest(f"the chute refused the request: {detail}", code="invalid_payload")
    if failure.timed_out:
        return UpstreamTimeout(f"no miner answered in time ({len(failure.tried)} tried): {detail}")
    return UpstreamFailed(f"every miner tried failed ({len(failure.tried)} tried): {detail}")


@router.post("/v1/chat/completions", tags=["openai"], openapi_extra=_request_body(ChatCompletionIn))
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions: JSON with ``usage``, or SSE chunks ending in ``data: [DONE]``."""
    return await _serve(request, ChatCompletionIn, CHAT_PATH)


@router.post("/v1/completions", tags=["openai"], openapi_extra=_request_body(CompletionIn))
async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions."""
    return await _serve(request, CompletionIn, COMPLETIONS_PATH)


@router.get("/v1/models", tags=["openai"])
async def models(request: Request) -> JSONResponse:
    """The LLM models verified miners serve now, filtered by what the key may use."""
    record = RequestRecord(id=request.scope["state"]["request_id"], route="/v1/models")
    try:
        key = await _authenticate(request, record)
        headers = await _admit(request, key)
    except ApiError as error:
        _log(request, record, error.status, error.code or error.type)
        raise
    names = request.app.state.directory.models(key.allows_model)
    _log(request, record, 200)
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "canopy"} for name in names]}, headers=headers)
