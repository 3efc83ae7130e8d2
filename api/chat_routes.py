"""``POST /chat``: the two request shapes Bittensor users already send to subnet validators.

Seam: the Bittensor chat API, on the gateway's one admission step (``api.admission.admit``:
auth, body, idempotency, rate limits, the request log and refunds; a client that hangs up
cancels the miner calls). Each request is one ``RequestLog`` row with route ``/chat`` and
costs one credit, reserved before any miner is called, kept when at least one miner
answered, refunded otherwise.

The shape is told apart by its fields (``request_shape``): ``roles``/``k``/``exclude``/
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
  ``finish_reason: "error"`` and the OpenAI ``error`` envelope (``_SubnetOneStream``).
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
from typing import Any, AsyncIterator, Iterator, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field, StrictBool

from api.admission import Admission, admit, no_answer, request_body
from api.directory import CHAT_PATH, Route
from api.errors import ApiError, InvalidRequest, NoMinerAvailable, NotFound, UpstreamFailed
from api.gateway import Caller, Directory
from api.keys import KeyError_, KeyInfo, parse_strategy
from api.requestlog import RequestRecord
from api.upstream import Call, NoAnswer
from canopy.streaming import until_disconnect
from canopy.templates.openai_schema import ChatMessageIn, Sampling
from protocol import errors as wire

router = APIRouter()
ROUTE = "/chat"
SN1_FIELDS = frozenset({"roles", "k", "exclude", "sampling_mode", "prefer", "timeout"})
VALIDATOR_FIELDS = frozenset({"uids", "top_n", "respond_on_first_success"})
MAX_MINERS = 64


class SamplingFields(Sampling):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=256,
                              description="default: the first model GET /v1/models lists for the key")


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


def request_shape(data: dict[str, Any]) -> type[ValidatorChatIn] | type[SubnetOneChatIn]:
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


@dataclass
class _Answer:
    route: Route
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
    payload.update(body.model_dump(include={"max_tokens", "temperature", "top_p", "seed"}, exclude_none=True))
    if stream:
        payload["stream_options"] = {"include_usage": True}
    return payload


def _model(directory: Directory, model: str | None, key: KeyInfo) -> str:
    if model is None:
        served = directory.models(key.allows_model)
        if not served:
            raise NoMinerAvailable("no model is served right now; retry shortly")
        return served[0]
    if not directory.known_model(model) or not key.allows_model(model):
        raise NotFound(f"the model {model!r} is not served here (GET /v1/models lists them)", param="model")
    return model


async def _ask(upstream: Caller, route: Route, payload: dict[str, Any], timeout_s: float, tried: list[int],
               steered: bool) -> _Answer:
    """One miner, not streamed: its answer or its error (never raises, but for cancellation)."""
    started = time.perf_counter()
    try:
        call = await upstream.open([route], CHAT_PATH, payload, stream=False, race=1, timeout_s=timeout_s, tried=tried,
                                   steered=steered)
    except NoAnswer as failure:
        return _Answer(route, (time.perf_counter() - started) * 1000.0, error=failure.detail,
                       timed_out=failure.timed_out, client_error=failure.client_error)
    return await _read(call, started)


async def _fan_out(upstream: Caller, routes: list[Route], payload: dict[str, Any], timeout_s: float, *,
                   first_only: bool, tried: list[int], steered: bool) -> list[_Answer]:
    """Every route asked in parallel, the answers in the routes' order; with ``first_only`` the rest
    are cancelled at the first answer, and the failures before it and that answer come back."""
    tasks = [asyncio.ensure_future(_ask(upstream, route, payload, timeout_s, tried, steered)) for route in routes]
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
    return no_answer(answers[-1].error if answers else "no answer", len(answers),
                     client_error=bool(answers) and all(a.client_error for a in answers),
                     timed_out=bool(answers) and all(a.timed_out for a in answers))


def _describe(record: RequestRecord, body: ValidatorChatIn | SubnetOneChatIn, data: dict[str, Any]) -> None:
    record.prompt = {"roles": body.roles, "messages": body.messages} if isinstance(body, SubnetOneChatIn) \
        else data.get("messages")


@router.post(ROUTE, tags=["bittensor"], openapi_extra=request_body(ValidatorChatIn, SubnetOneChatIn))
async def chat(request: Request) -> Response:
    """Bittensor chat: the validator-endpoint shape or the Subnet 1 API shape (see the module doc)."""
    async with admit(request, ROUTE, request_shape, _describe) as admission:
        body = admission.body
        model = admission.record.model = _model(admission.gateway.directory, body.model, admission.key)
        await admission.moderate(admission.data.get("messages"), "messages")  # before any credit
        if isinstance(body, ValidatorChatIn):
            return await _validator_shape(admission, body, model)
        return await _subnet_one_shape(admission, body, model)


def _settle(admission: Admission[Any], answers: list[_Answer], served: _Answer) -> None:
    admission.served_by(served.route)
    admission.record.prompt_tokens = sum(a.prompt_tokens for a in answers if a.ok)
    admission.record.completion_tokens = sum(a.completion_tokens for a in answers if a.ok)


async def _validator_shape(admission: Admission[Any], body: ValidatorChatIn, model: str) -> Response:
    gateway, record = admission.gateway, admission.record
    if body.uids is not None and body.top_n is not None:
        raise InvalidRequest("send uids or top_n, not both", param="top_n")
    if body.uids is not None:
        strategy, fan_out = "uids:" + ",".join(str(uid) for uid in dict.fromkeys(body.uids)), True
    elif body.top_n is not None:
        strategy, fan_out = f"top_n:{body.top_n}", True
    else:
        strategy, fan_out = admission.key.default_strategy or "default", False
    try:
        record.strategy = parse_strategy(strategy)
    except KeyError_ as error:
        raise InvalidRequest(str(error), param="uids") from None
    routes = gateway.directory.candidates(model, record.strategy, CHAT_PATH)
    if not routes:
        raise NoMinerAvailable(f"no miner can serve {model!r} with strategy {record.strategy} right now; "
                               "retry shortly")
    await admission.charge()
    payload = _payload(body, model, [m.model_dump(exclude_none=True) for m in body.messages], stream=False)
    timeout_s = gateway.config.request_timeout_s
    if fan_out:
        answers = await until_disconnect(_fan_out(
            gateway.upstream, routes, payload, timeout_s, first_only=body.respond_on_first_success,
            tried=record.miners_tried, steered=True), admission.request.receive)
        if not any(a.ok for a in answers):
            raise _no_answer(answers)
        failed = [a.failure() for a in answers if not a.ok]
    else:
        started = time.perf_counter()
        call = await admission.call(routes, CHAT_PATH, payload, stream=False, race=gateway.config.race,
                                    timeout_s=timeout_s, steered=record.strategy != "default")
        answer = await until_disconnect(_read(call, started), admission.request.receive)
        if not answer.ok:
            raise UpstreamFailed(f"the miner failed mid-answer: {answer.error}")
        answers = [answer]
        hotkeys = {r.uid: r.hotkey for r in reversed(routes)}
        failed = [{"uid": uid, "responder_hotkey": hotkeys.get(uid), "error": "failed before answering",
                   "response_ms": None} for uid in record.miners_tried if uid != answer.route.uid]
    ok = [a for a in answers if a.ok]
    _settle(admission, answers, ok[0])
    record.answer = json.dumps([a.content for a in ok])
    return await admission.answer(JSONResponse({"choices": [
        {"index": i, "uid": a.route.uid, "responder_hotkey": a.route.hotkey,
         "message": {"role": "assistant", "content": a.content}, "response_ms": round(a.response_ms, 3)}
        for i, a in enumerate(ok)], "failed_responses": failed}, headers=admission.headers))


async def _read(call: Call, started: float) -> _Answer:
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


def _sn1_routes(directory: Directory, body: SubnetOneChatIn, model: str, record: RequestRecord) -> tuple[list[Route], bool]:
    """The miners to ask, and whether the caller steered the choice (``top_incentive``, or an
    ``exclude`` that took out a miner the gateway could have drawn): then they earn nothing."""
    excluded = set(body.exclude)
    if body.sampling_mode == "top_incentive":
        record.strategy = f"top_n:{body.k}"
        hosts = directory.candidates(model, f"top_n:{len(directory.routes) or 1}", CHAT_PATH)
        return [r for r in hosts if r.uid not in excluded][: body.k], True
    record.strategy = f"random:{body.k}"
    candidates = directory.candidates(model, "default", CHAT_PATH)
    eligible = [r for r in candidates if r.uid not in excluded]
    return random.sample(eligible, min(body.k, len(eligible))), len(eligible) < len(candidates)


async def _subnet_one_shape(admission: Admission[Any], body: SubnetOneChatIn, model: str) -> Response:
    gateway, record = admission.gateway, admission.record
    if len(body.roles) != len(body.messages):
        raise InvalidRequest(f"roles ({len(body.roles)}) and messages ({len(body.messages)}) must pair up",
                             param="roles")
    routes, steered = _sn1_routes(gateway.directory, body, model, record)
    if not routes:
        raise NoMinerAvailable(f"no miner can serve {model!r} ({body.sampling_mode}, {len(body.exclude)} "
                               "excluded) right now; retry shortly")
    await admission.charge()
    messages = [{"role": role, "content": text} for role, text in zip(body.roles, body.messages)]
    payload = _payload(body, model, messages, stream=body.stream)
    timeout_s = body.timeout or gateway.config.request_timeout_s
    started = time.perf_counter()
    if not body.stream:
        answers = await until_disconnect(_fan_out(
            gateway.upstream, routes, payload, timeout_s, first_only=body.prefer is None, tried=record.miners_tried,
            steered=steered), admission.request.receive)
        ok = [a for a in answers if a.ok]
        if not ok:
            raise _no_answer(answers)
        served = ok[0] if body.prefer is None else (max if body.prefer == "longest" else min)(
            ok, key=lambda a: len(a.content or ""))
        _settle(admission, answers, served)
        record.answer = served.content
        return await admission.answer(JSONResponse({
            "selected_uid": served.route.uid, "responder_hotkey": served.route.hotkey,
            "message": {"role": "assistant", "content": served.content}, "finish_reason": served.finish_reason,
            "response_ms": round(served.response_ms, 3),
            "responses": [{"uid": a.route.uid, "content": a.content, "response_ms": round(a.response_ms, 3)}
                          for a in ok],
            "failed_responses": [a.failure() for a in answers if not a.ok]}, headers=admission.headers))
    call = await admission.call(routes, CHAT_PATH, payload, stream=True, race=min(body.k, gateway.config.max_race),
                                timeout_s=timeout_s, steered=steered)
    admission.served_by(call.route)
    relay = _SubnetOneStream(call, started, "application/x-ndjson" in admission.request.headers.get("accept", ""))
    return admission.stream(call, relay.frames(), status=200, media_type=relay.media_type, failure=relay.failed,
                            answer=relay.answer)


def _deltas(events: str) -> list[tuple[str, str | None]]:
    """(content delta, finish_reason) of each OpenAI chunk in complete SSE events."""
    out = []
    for event in events.split("\n\n"):
        for line in event.splitlines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta or choice.get("finish_reason"):
                    out.append((delta, choice.get("finish_reason")))
    return out


class _SubnetOneStream:
    """A miner's OpenAI SSE re-cut as Subnet 1 chunks, as SSE (``data: ...`` ending in
    ``data: [DONE]``) or NDJSON; a failure mid-stream is a last chunk with ``finish_reason: "error"``."""

    def __init__(self, call: Call, started: float, ndjson: bool) -> None:
        self.call, self.started, self.ndjson = call, started, ndjson
        self.media_type = "application/x-ndjson" if ndjson else "text/event-stream"
        self.chunks: list[str] = []
        self.timings: list[float] = []
        self.sequence = 0

    def answer(self) -> str:
        return "".join(self.chunks)

    def _chunk(self, delta: str, finish_reason: str | None, **extra: Any) -> str:
        self.sequence += 1
        text = json.dumps({"delta": delta, "finish_reason": finish_reason, "accumulated_chunks": list(self.chunks),
                           "accumulated_chunks_timings": list(self.timings), "timestamp": time.time(),
                           "sequence_number": self.sequence, "selected_uid": self.call.route.uid, **extra})
        return text + "\n" if self.ndjson else f"data: {text}\n\n"

    def _cut(self, events: str) -> Iterator[str]:
        for delta, finish_reason in _deltas(events):
            if delta:
                self.chunks.append(delta)
                self.timings.append(round(time.perf_counter() - self.started, 6))
            yield self._chunk(delta, finish_reason)

    async def frames(self) -> AsyncIterator[str]:
        buffer = ""
        async for piece in self.call.pieces():
            complete, _, buffer = (buffer + piece).rpartition("\n\n")
            for frame in self._cut(complete):
                yield frame
        for frame in self._cut(buffer):
            yield frame
        if not self.ndjson:
            yield "data: [DONE]\n\n"

    def failed(self, error: ApiError) -> list[str]:
        return [self._chunk("", "error", **error.body()), *([] if self.ndjson else ["data: [DONE]\n\n"])]
