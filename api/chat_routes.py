"""``POST /chat``: the two request shapes Bittensor users already send to subnet validators.

Callers: ``api.app.build_app`` includes ``router``. It goes through the routes' shared
steps (``api.pipeline``: auth, body checks, idempotency, rate limits, miner headers,
request log, refunds), ``protocol.asgi.until_disconnect`` (a client that hangs up cancels the
miner calls), ``Upstream.open`` for every miner call and ``api.chat_stream`` for the Subnet 1 stream; each
request is one ``RequestLog`` row with route ``/chat`` and costs one credit, reserved
before any miner is called, kept when at least one miner answered, refunded otherwise.

The shape is told apart by its fields (``_shape``): ``roles``/``k``/``exclude``/
``sampling_mode``/``prefer``/``timeout`` (or ``messages`` as plain strings) is the
**Subnet 1 API shape**; ``uids``/``top_n``/``respond_on_first_success`` (or ``messages``
as role/content objects) is the **validator-endpoint shape**; fields of both is a 400.

The model is the request's ``model`` when given, else the first model
``GET /v1/models`` would list for the key (alphabetical).

Validator-endpoint shape (``ValidatorChatIn``) → JSON
``{"choices": [{"index", "uid", "responder_hotkey", "message": {"role", "content"}, "response_ms"}],
"failed_responses": [{"uid", "responder_hotkey", "error", "response_ms"}]}``:

- ``uids`` (those miners, when they host the model) or ``top_n`` (the N hosts with the
  most incentive) are all queried in parallel, one choice per miner that answered, in
  the order of the candidates; ``respond_on_first_success`` (default true) returns with
  the first answer and cancels the rest (not listed anywhere);
- neither: the key's default strategy (else ``default``), one miner with failover, the
  miners that failed before it in ``failed_responses``.

Subnet 1 API shape (``SubnetOneChatIn``): ``k`` miners (``sampling_mode`` ``top_incentive``:
the k hosts with the most incentive; ``random`` (default): k random verified, ready
miners), minus the ``exclude``d uids; ``timeout`` per request (default: the gateway's).

- ``stream`` true (default): the k race (up to ``max_race`` at once, the rest fail over)
  and the first with content is relayed as chunks ``{"delta", "finish_reason",
  "accumulated_chunks", "accumulated_chunks_timings", "timestamp", "sequence_number",
  "selected_uid"}`` (timings: seconds since the request started). SSE (``data: {..}``,
  ending ``data: [DONE]``) unless the client accepts ``application/x-ndjson`` (one JSON
  object per line). A failure after the stream started is one last chunk with
  ``finish_reason: "error"`` and the OpenAI ``error`` envelope (``api.chat_stream``).
- ``stream`` false: the k are asked in parallel; with ``prefer`` ``longest``/``shortest``
  all answers are awaited and that one is chosen, without ``prefer`` the first answer
  wins. JSON ``{"selected_uid", "responder_hotkey", "message", "finish_reason",
  "response_ms", "responses": [{"uid", "content", "response_ms"}], "failed_responses"}``.

Every response carries ``x-request-id`` and ``x-canopy-miner-uid``/``-hotkey`` of the
(first) serving miner. No miner answering is a 502/504 envelope; none available, 503.

Scoring: only miners the gateway chose earn from a call (``default`` with failover, and
``random`` without an ``exclude`` that took out a candidate). ``uids``, ``top_n``,
``top_incentive``, a key's ``uids``/``top_n`` default and a narrowing ``exclude`` are
steered: served, billed and logged the same, their ``Invocation`` rows marked ``steered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from api.chat_shapes import SamplingFields, SubnetOneChatIn, ValidatorChatIn, request_shape as _shape
from api.chat_stream import relay_sn1
from api.directory import CHAT_PATH
from api.errors import (
    ApiError, InvalidRequest, NoMinerAvailable, NotFound, UpstreamFailed, UpstreamTimeout,
)
from api.idempotency import Claim
from api.keys import KeyError_, KeyInfo, parse_strategy
from api.moderation import moderate
from api.pipeline import (
    admit, answer_error, authenticate, charge, claim_or_replay, client_closed, log_request, miner_headers,
    parse_body, refund, request_body,
)
from api.requestlog import RequestRecord
from api.upstream import NoAnswer
from protocol import errors as wire
from protocol.asgi import ClientGone, WatchedStreamingResponse, until_disconnect

router = APIRouter()
ROUTE = "/chat"
class _Any(BaseModel):
    model_config = ConfigDict(extra="allow")


@dataclass
class _Answer:
    route: Any
    response_ms: float
    content: str | None = None
    finish_reason: str | None = None
    error: str = ""
    timed_out: bool = False
    client_error: bool = False  # the chute refused the payload (CLIENT_ERRORS): the request's fault
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.content is not None

    def failure(self) -> dict[str, Any]:
        return {"uid": self.route.uid, "responder_hotkey": self.route.hotkey, "error": self.error,
                "response_ms": round(self.response_ms, 3)}


def _payload(body: SamplingFields, model: str, messages: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        if getattr(body, name) is not None:
            payload[name] = getattr(body, name)
    if stream:
        payload["stream_options"] = {"include_usage": True}
    return payload


def _model(request: Request, body: SamplingFields, key: KeyInfo) -> str:
    directory = request.app.state.directory
    if body.model is None:
        served = directory.models(key.allows_model)
        if not served:
            raise NoMinerAvailable("no model is served right now; retry shortly")
        return served[0]
    if not directory.known_model(body.model) or not key.allows_model(body.model):
        raise NotFound(f"the model {body.model!r} is not served here (GET /v1/models lists them)", param="model")
    return body.model


async def _ask(request: Request, route: Any, payload: dict[str, Any], timeout_s: float,
               tried: list[int], steered: bool) -> _Answer:
    """One miner, not streamed: its answer or its error (never raises, but for cancellation)."""
    started = time.perf_counter()
    try:
        call = await request.app.state.upstream.open([route], CHAT_PATH, payload, stream=False, race=1,
                                                     timeout_s=timeout_s, tried=tried, steered=steered)
    except NoAnswer as failure:
        last = failure.last
        return _Answer(route, (time.perf_counter() - started) * 1000.0,
                       error=f"{last.type}: {last.message}" if last is not None else "no answer",
                       timed_out=failure.timed_out, client_error=failure.client_error)
    return await _read(call, started)


async def _fan_out(request: Request, routes: list[Any], payload: dict[str, Any], timeout_s: float, *,
                   first_only: bool, tried: list[int], steered: bool) -> list[_Answer]:
    """Every route asked in parallel, the answers in the routes' order; with ``first_only`` the rest
    are cancelled at the first answer, and the failures before it and that answer come back."""
    tasks = [asyncio.ensure_future(_ask(request, route, payload, timeout_s, tried, steered)) for route in routes]
    try:
        if not first_only:
            return list(await asyncio.gather(*tasks))
        seen: list[_Answer] = []
        for next_done in asyncio.as_completed(tasks):
            seen.append(await next_done)
            if seen[-1].ok:
                break
        return seen
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _no_answer(answers: list[_Answer]) -> ApiError:
    detail = answers[-1].error if answers else "no answer"
    if answers and all(a.client_error for a in answers):  # as api.pipeline.answer_error: a 400, not a 502
        return InvalidRequest(f"the chute refused the request: {detail}", code="invalid_payload")
    if answers and all(a.timed_out for a in answers):
        return UpstreamTimeout(f"no miner answered in time ({len(answers)} tried): {detail}")
    return UpstreamFailed(f"every miner tried failed ({len(answers)} tried): {detail}")


@router.post(ROUTE, tags=["bittensor"], openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"oneOf": [
        request_body(ValidatorChatIn)["requestBody"]["content"]["application/json"]["schema"],
        request_body(SubnetOneChatIn)["requestBody"]["content"]["application/json"]["schema"]]}}}}})
async def chat(request: Request) -> Response:
    """Bittensor chat: the validator-endpoint shape or the Subnet 1 API shape (see the module doc)."""
    record = RequestRecord(id=request.scope["state"]["request_id"], route=ROUTE)
    key, claim = None, None
    try:
        key = await authenticate(request, record)
        _, data = await parse_body(request, _Any)
        body, _ = await parse_body(request, _shape(data))  # Starlette keeps the body: parsed again, not re-read
        record.prompt = data.get("messages") if isinstance(body, ValidatorChatIn) else \
            {"roles": body.roles, "messages": body.messages}
        claim, replay = await claim_or_replay(request, record, key, ROUTE, data)
        if replay is not None:
            return replay
        limit_headers = await admit(request, key)
        model = _model(request, body, key)
        record.model = model
        await moderate(request, data.get("messages"), "messages")  # api.moderation: before any credit
        if isinstance(body, ValidatorChatIn):
            response = await _validator_shape(request, body, key, model, record, limit_headers)
        else:
            response = await _subnet_one_shape(request, body, key, model, record, limit_headers, claim)
        if isinstance(response, WatchedStreamingResponse):
            claim = None  # the stream keeps or frees it when it ends
        elif claim is not None:
            await claim.finish(response.status_code, bytes(response.body).decode(), dict(response.headers))
        return response
    except ApiError as error:
        if key is not None:
            refund(request, key, record)
        log_request(request, record, error.status, error.log_error or error.code or error.type)
        raise
    except ClientGone:
        return await client_closed(request, key, record)
    except Exception as error:  # a bug: give the credit back, log it, answer 500 in the envelope
        if key is not None:
            refund(request, key, record)
        log_request(request, record, 500, type(error).__name__)
        raise
    finally:
        if claim is not None:
            claim.release()  # not answered (or answered and kept: then this does nothing)


def _settle(record: RequestRecord, answers: list[_Answer], served: _Answer) -> dict[str, str]:
    record.uid, record.hotkey = served.route.uid, served.route.hotkey
    record.prompt_tokens = sum(a.prompt_tokens for a in answers if a.ok)
    record.completion_tokens = sum(a.completion_tokens for a in answers if a.ok)
    return miner_headers(served.route)


async def _validator_shape(request: Request, body: ValidatorChatIn, key: KeyInfo, model: str,
                           record: RequestRecord, limit_headers: dict[str, str]) -> Response:
    state = request.app.state
    if body.uids is not None and body.top_n is not None:
        raise InvalidRequest("send uids or top_n, not both", param="top_n")
    if body.uids is not None:
        strategy, fan_out = "uids:" + ",".join(str(uid) for uid in dict.fromkeys(body.uids)), True
    elif body.top_n is not None:
        strategy, fan_out = f"top_n:{body.top_n}", True
    else:
        strategy, fan_out = key.default_strategy or "default", False
    try:
        record.strategy = parse_strategy(strategy)
    except KeyError_ as error:
        raise InvalidRequest(str(error), param="uids") from None
    routes = state.directory.candidates(model, record.strategy, CHAT_PATH)
    if not routes:
        raise NoMinerAvailable(f"no miner can serve {model!r} with strategy {record.strategy} right now; "
                               "retry shortly")
    await charge(request, key, record)
    payload = _payload(body, model, [m.model_dump(exclude_none=True) for m in body.messages], stream=False)
    timeout_s = state.config.request_timeout_s
    if fan_out:
        answers = await until_disconnect(_fan_out(
            request, routes, payload, timeout_s, first_only=body.respond_on_first_success,
            tried=record.miners_tried, steered=True), request.receive)
        if not any(a.ok for a in answers):
            raise _no_answer(answers)
        failed = [a.failure() for a in answers if not a.ok]
    else:
        started = time.perf_counter()
        try:
            call = await until_disconnect(state.upstream.open(
                routes, CHAT_PATH, payload, stream=False, race=state.config.race, timeout_s=timeout_s,
                tried=record.miners_tried, steered=record.strategy != "default"), request.receive)
        except NoAnswer as failure:
            raise answer_error(failure) from None
        answer = await until_disconnect(_read(call, started), request.receive)
        if not answer.ok:
            raise UpstreamFailed(f"the miner failed mid-answer: {answer.error}")
        answers = [answer]
        failed = [{"uid": uid, "responder_hotkey": _hotkey(routes, uid), "error": "failed before answering",
                   "response_ms": None} for uid in record.miners_tried if uid != answer.route.uid]
    ok = [a for a in answers if a.ok]
    headers = {**limit_headers, **_settle(record, answers, ok[0])}
    record.answer = json.dumps([a.content for a in ok])
    log_request(request, record, 200)
    return JSONResponse({"choices": [
        {"index": i, "uid": a.route.uid, "responder_hotkey": a.route.hotkey,
         "message": {"role": "assistant", "content": a.content}, "response_ms": round(a.response_ms, 3)}
        for i, a in enumerate(ok)], "failed_responses": failed}, headers=headers)


def _hotkey(routes: list[Any], uid: int) -> str | None:
    return next((r.hotkey for r in routes if r.uid == uid), None)


async def _read(call: Any, started: float) -> _Answer:
    answer = _Answer(call.route, 0.0)
    try:
        text = await call.read()
        answer.prompt_tokens, answer.completion_tokens = call.prompt_tokens, call.completion_tokens
        if call.status >= 400:
            answer.error = f"http_{call.status}"
        else:
            choice = json.loads(text)["choices"][0]
            answer.content = (choice.get("message") or {}).get("content") or ""
            answer.finish_reason = choice.get("finish_reason")
    except wire.ProtocolError as error:
        answer.error = f"{error.type}: {error.message}"
    except (ValueError, LookupError, TypeError, AttributeError) as error:
        answer.error = f"malformed answer: {type(error).__name__}"
    finally:
        answer.response_ms = (time.perf_counter() - started) * 1000.0
        await call.close()
    return answer


def _sn1_routes(request: Request, body: SubnetOneChatIn, model: str,
                record: RequestRecord) -> tuple[list[Any], bool]:
    """The miners to ask, and whether the caller steered the choice (``top_incentive``, or an
    ``exclude`` that took out a miner the gateway could have drawn): then they earn nothing."""
    directory = request.app.state.directory
    excluded = set(body.exclude)
    if body.sampling_mode == "top_incentive":
        record.strategy = f"top_n:{body.k}"
        hosts = directory.candidates(model, f"top_n:{len(directory.routes) or 1}", CHAT_PATH)
        return [r for r in hosts if r.uid not in excluded][: body.k], True
    record.strategy = f"random:{body.k}"
    candidates = directory.candidates(model, "default", CHAT_PATH)
    eligible = [r for r in candidates if r.uid not in excluded]
    return random.sample(eligible, min(body.k, len(eligible))), len(eligible) < len(candidates)


async def _subnet_one_shape(request: Request, body: SubnetOneChatIn, key: KeyInfo, model: str,
                            record: RequestRecord, limit_headers: dict[str, str], claim: Claim | None) -> Response:
    state = request.app.state
    if len(body.roles) != len(body.messages):
        raise InvalidRequest(f"roles ({len(body.roles)}) and messages ({len(body.messages)}) must pair up",
                             param="roles")
    routes, steered = _sn1_routes(request, body, model, record)
    if not routes:
        raise NoMinerAvailable(f"no miner can serve {model!r} ({body.sampling_mode}, {len(body.exclude)} "
                               "excluded) right now; retry shortly")
    await charge(request, key, record)
    messages = [{"role": role, "content": text} for role, text in zip(body.roles, body.messages)]
    payload = _payload(body, model, messages, stream=body.stream)
    timeout_s = body.timeout or state.config.request_timeout_s
    started = time.perf_counter()
    if not body.stream:
        answers = await until_disconnect(_fan_out(
            request, routes, payload, timeout_s, first_only=body.prefer is None, tried=record.miners_tried,
            steered=steered), request.receive)
        ok = [a for a in answers if a.ok]
        if not ok:
            raise _no_answer(answers)
        served = ok[0] if body.prefer is None else (max if body.prefer == "longest" else min)(
            ok, key=lambda a: len(a.content or ""))
        headers = {**limit_headers, **_settle(record, answers, served)}
        record.answer = served.content
        log_request(request, record, 200)
        return JSONResponse({
            "selected_uid": served.route.uid, "responder_hotkey": served.route.hotkey,
            "message": {"role": "assistant", "content": served.content}, "finish_reason": served.finish_reason,
            "response_ms": round(served.response_ms, 3),
            "responses": [{"uid": a.route.uid, "content": a.content, "response_ms": round(a.response_ms, 3)}
                          for a in ok],
            "failed_responses": [a.failure() for a in answers if not a.ok]}, headers=headers)
    try:
        call = await until_disconnect(state.upstream.open(
            routes, CHAT_PATH, payload, stream=True, race=min(body.k, state.config.max_race), timeout_s=timeout_s,
            tried=record.miners_tried, steered=steered), request.receive)
    except NoAnswer as failure:
        raise answer_error(failure) from None
    record.uid, record.hotkey = call.route.uid, call.route.hotkey
    ndjson = "application/x-ndjson" in request.headers.get("accept", "")
    return WatchedStreamingResponse(relay_sn1(request, call, key, record, started, ndjson, claim), status_code=200,
                                    media_type="application/x-ndjson" if ndjson else "text/event-stream",
                                    headers={**limit_headers, **miner_headers(call.route)})
