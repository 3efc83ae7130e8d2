"""The steps every gateway route shares: auth, body, limits, request log, refunds, hang-ups (499).

Callers: ``api.openai_routes`` (``/v1/...``), ``api.chat_routes`` (``/chat``) and, for the
OpenAPI request bodies, ``api.admin_routes``. Each step reads its part from
``request.app.state`` (keys, limiter, config, credits, request log, metrics) and raises the
typed ``api.errors.ApiError`` its failure answers with; ``log_request`` writes the request's
one ``RequestLog`` row. A route is these steps in order, then its own miner calls.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from api.errors import (
    ApiError, InsufficientCredits, InvalidRequest, PayloadTooLarge, RateLimited, Unauthorized, UpstreamFailed, UpstreamTimeout,
)
from api.idempotency import Claim, claim_for
from api.keys import KeyInfo, KeyRejected
from api.requestlog import RequestRecord
from api.upstream import NoAnswer


#: Request-body schemas for the OpenAPI document (``api.app`` adds them to its components).
COMPONENTS: dict[str, Any] = {}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    COMPONENTS[model.__name__] = schema
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def bearer_key(request: Request) -> KeyInfo:
    """The key in ``Authorization: Bearer``, or 401 (missing, unknown, disabled, expired)."""
    try:
        return await request.app.state.keys.authenticate(_bearer(request))
    except KeyRejected as rejected:
        raise Unauthorized(str(rejected), code="invalid_api_key" if rejected.reason != "missing" else "missing_api_key")


async def authenticate(request: Request, record: RequestRecord) -> KeyInfo:
    key = await bearer_key(request)
    record.key_id = key.id
    return key


async def claim_or_replay(request: Request, record: RequestRecord, key: KeyInfo, route: str,
                          data: Any) -> tuple[Claim | None, Response | None]:
    """``Idempotency-Key`` (``api.idempotency``): this request's claim, or the stored answer
    to send again (logged as a replay)."""
    claim = await claim_for(request, key.id, route, data)
    if claim is None or claim.replay is None:
        return claim, None
    record.strategy = "replay"
    log_request(request, record, claim.replay.status)
    return None, claim.replay.response()


async def admit(request: Request, key: KeyInfo) -> dict[str, str]:
    """Rate limits: the global default rules and the key's own, each counted per key."""
    rules = (*request.app.state.config.global_rate_limits, *key.rate_limits)
    decision = await request.app.state.limiter.check(f"key:{key.id}", rules)
    if not decision.allowed:
        raise RateLimited(f"rate limit {decision.rule} reached; retry in {decision.retry_after_s} s",
                          headers=decision.headers())
    return decision.headers()


async def parse_body(request: Request, model: type[BaseModel]) -> tuple[BaseModel, dict[str, Any]]:
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


async def charge(request: Request, key: KeyInfo, record: RequestRecord) -> None:
    """Reserve the request's credit (``api.credits``), or 402 when the key has none left."""
    if not await request.app.state.credits.reserve(key):
        raise InsufficientCredits("the API key has no credits left")
    record.charged = 1


def miner_headers(route: Any) -> dict[str, str]:
    return {"x-canopy-miner-uid": str(route.uid), "x-canopy-miner-hotkey": route.hotkey}


def log_request(request: Request, record: RequestRecord, status: int, error: str = "") -> None:
    record.status, record.error = status, error or record.error
    request.app.state.request_log.write(record)
    request.app.state.metrics.observe(record.route, status, time.perf_counter() - record.started)


async def client_closed(request: Request, key: KeyInfo, record: RequestRecord) -> Response:
    refund(request, key, record)
    log_request(request, record, 499, "client_closed")
    return Response(status_code=499)


def stream_ended(request: Request, key: KeyInfo, record: RequestRecord, call: Any, answer: str, status: int) -> int:
    """Record what a relayed stream carried; a stream the client hung up on is a 499 and its
    credit goes back. Synchronous: it runs in a ``finally`` that must not await. Returns the status."""
    record.prompt_tokens, record.completion_tokens = call.prompt_tokens, call.completion_tokens
    record.answer = answer
    if not call.finished and not record.error:
        status, record.error = 499, "client_closed"
        refund(request, key, record)
    return status


def refund(request: Request, key: KeyInfo, record: RequestRecord) -> None:
    """Give the request's credit back (``api.credits``: in memory, safe in a ``finally``)."""
    if record.charged:
        record.charged = 0
        request.app.state.credits.refund(key.id)


def answer_error(failure: NoAnswer) -> ApiError:
    last = failure.last
    detail = f"{last.type}: {last.message}" if last is not None else "no answer"
    if failure.client_error:
        return InvalidRequest(f"the chute refused the request: {detail}", code="invalid_payload")
    if failure.timed_out:
        return UpstreamTimeout(f"no miner answered in time ({len(failure.tried)} tried): {detail}")
    return UpstreamFailed(f"every miner tried failed ({len(failure.tried)} tried): {detail}")
