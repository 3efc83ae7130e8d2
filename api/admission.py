"""The one admission step of every gateway route: ``async with admit(...) as admission``.

Seam: between a route handler (``api.openai_routes``, ``api.chat_routes``), which only does
its own work (pick the miners, call them, shape the answer), and the gateway's parts
(``api.gateway.Gateway``). Entering ``admit`` authenticates (``Authorization: Bearer``,
401), parses and validates the body (size, JSON object, the route's pydantic shape: 400/413),
claims the ``Idempotency-Key`` (``api.idempotency``: a stored answer is sent again, as the
``Replayed`` exception the app answers with) and applies the rate limits (the global rules
and the key's own, per key: 429). Inside, the handler calls ``moderate`` (400
``content_policy_violation``), ``charge`` (one credit reserved in memory, 402 when none is
left), ``call`` (``Upstream.open`` watched for a hang-up; no miner answering is 400/502/504)
and ends with ``answer`` (a JSON reply) or ``stream`` (a relayed stream, which settles when
it ends). Leaving it, on every path, writes the request's one ``RequestLog`` row and gives
the credit back unless an answer was delivered: an ``ApiError`` (its status), a client that
hung up (``ClientGone``: 499, which the app answers), any other exception (500), a chute's
4xx (relayed, not charged), a stream that broke (502) or was left (499). An unanswered
claim is released, so a retry is served afresh.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, AsyncIterator, Callable, Generic, Iterable, Sequence

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from api.directory import Route
from api.errors import (
    ApiError, ContentPolicyViolation, InsufficientCredits, InvalidRequest, PayloadTooLarge, RateLimited, Unauthorized,
    UpstreamFailed, UpstreamTimeout,
)
from api.gateway import gateway_of
from api.idempotency import HEADER, Claim
from api.keys import KeyInfo, KeyRejected
from api.moderation import input_texts
from api.requestlog import RequestRecord
from api.upstream import Call, NoAnswer
from canopy.streaming import ClientGone, WatchedStreamingResponse, until_disconnect
from protocol import errors as wire

B = TypeVar("B", bound=BaseModel, default=BaseModel)  # no body: BaseModel

#: Request-body schemas for the OpenAPI document (``api.app`` adds them to its components).
COMPONENTS: dict[str, Any] = {}


def request_body(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting the route's JSON body: one of ``models`` (routes read it themselves)."""
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        COMPONENTS.update(schema.pop("$defs", {}))
        COMPONENTS[model.__name__] = schema
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in models]
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}}}}


class Replayed(Exception):
    """The stored answer to a retried ``Idempotency-Key``: ``api.app`` sends ``response``."""

    def __init__(self, response: Response) -> None:
        super().__init__("replayed")
        self.response = response


async def bearer_key(request: Request) -> KeyInfo:
    """The key in ``Authorization: Bearer``, or 401 (missing, unknown, disabled, expired)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        return await gateway_of(request).keys.authenticate(token.strip() if scheme.lower() == "bearer" else None)
    except KeyRejected as rejected:
        raise Unauthorized(str(rejected), code="invalid_api_key" if rejected.reason != "missing" else "missing_api_key")


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or 413/400."""
    raw = await request.body()
    limit = gateway_of(request).config.max_body_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_type")
    return data


def validated(model: type[B], data: dict[str, Any]) -> B:
    """``data`` as ``model``, or 400 naming the first field that does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param,
                             code="invalid_value") from None


def miner_headers(route: Route) -> dict[str, str]:
    return {"x-canopy-miner-uid": str(route.uid), "x-canopy-miner-hotkey": route.hotkey}


def no_answer(detail: str, tried: int, *, client_error: bool, timed_out: bool) -> ApiError:
    """No miner answered: the chute refused the payload (400), every one timed out (504), or failed (502)."""
    if client_error:
        return InvalidRequest(f"the chute refused the request: {detail}", code="invalid_payload")
    if timed_out:
        return UpstreamTimeout(f"no miner answered in time ({tried} tried): {detail}")
    return UpstreamFailed(f"every miner tried failed ({tried} tried): {detail}")


Shape = type[B] | Callable[[dict[str, Any]], type[B]]


class Admission(Generic[B]):
    """An admitted request: its ``key``, ``body`` (and the raw ``data``, relayed as sent), the
    ``headers`` every answer carries (rate limits, then the serving miner) and its log ``record``."""

    key: KeyInfo
    body: B

    def __init__(self, request: Request, route: str) -> None:
        self.request, self.gateway = request, gateway_of(request)
        self.record = RequestRecord(id=request.scope["state"]["request_id"], route=route)
        self.data: dict[str, Any] = {}
        self.headers: dict[str, str] = {}
        self.claim: Claim | None = None

    async def _admit(self, shape: Shape[B] | None, describe: Callable[[RequestRecord, B, dict[str, Any]], None] | None,
                     ) -> None:
        self.key = await bearer_key(self.request)
        self.record.key_id = self.key.id
        if shape is not None:
            self.data = await json_object(self.request)
            model: type[B] = shape if isinstance(shape, type) else shape(self.data)
            self.body = validated(model, self.data)
            if describe is not None:
                describe(self.record, self.body, self.data)
            self.claim = await self.gateway.idempotency.claim_header(self.request.headers.get(HEADER), self.key.id,
                                                                     self.record.route, self.data)
            if self.claim is not None and self.claim.replay is not None:
                self.record.strategy = "replay"
                self.log(self.claim.replay.status)
                raise Replayed(self.claim.replay.response())
        rules = (*self.gateway.config.global_rate_limits, *self.key.rate_limits)
        decision = await self.gateway.limiter.check(f"key:{self.key.id}", rules)
        if not decision.allowed:
            raise RateLimited(f"rate limit {decision.rule} reached; retry in {decision.retry_after_s} s",
                              headers=decision.headers())
        self.headers = decision.headers()

    async def moderate(self, value: Any, param: str) -> None:
        """400 ``content_policy_violation`` if the moderator flags ``value``'s texts (before any credit)."""
        moderator, texts = self.gateway.moderator, input_texts(value)
        if moderator is not None and texts:
            verdict = await moderator.check(texts)
            if verdict.flagged:
                raise ContentPolicyViolation(verdict.reason or "the input was flagged by moderation", param=param)

    async def charge(self) -> None:
        """Reserve the request's credit (``api.credits``), or 402 when the key has none left."""
        if not await self.gateway.credits.reserve(self.key):
            raise InsufficientCredits("the API key has no credits left")
        self.record.charged = 1

    def refund(self) -> None:
        """Give the request's credit back (in memory: safe in a ``finally``)."""
        if self.record.charged:
            self.record.charged = 0
            self.gateway.credits.refund(self.key.id)

    def log(self, status: int, error: str = "") -> None:
        record = self.record
        record.status, record.error = status, error or record.error
        self.gateway.request_log.write(record)
        self.gateway.metrics.observe(record.route, status, time.perf_counter() - record.started)

    async def call(self, routes: Sequence[Route], path: str, payload: Any, *, stream: bool, race: int,
                   timeout_s: float, steered: bool) -> Call:
        """``Upstream.open`` until the client hangs up (``ClientGone``); no answer is an ``ApiError``."""
        try:
            return await until_disconnect(self.gateway.upstream.open(
                routes, path, payload, stream=stream, race=race, timeout_s=timeout_s, tried=self.record.miners_tried,
                steered=steered), self.request.receive)
        except NoAnswer as failure:
            raise no_answer(failure.detail, len(failure.tried), client_error=failure.client_error,
                            timed_out=failure.timed_out) from None

    def served_by(self, route: Route) -> None:
        self.record.uid, self.record.hotkey = route.uid, route.hotkey
        self.headers.update(miner_headers(route))

    async def answer(self, response: Response) -> Response:
        """Settle a JSON answer: kept for an ``Idempotency-Key`` retry, logged; a chute's 4xx is not charged."""
        if response.status_code >= 400:
            self.refund()
        if self.claim is not None:
            await self.claim.finish(response.status_code, bytes(response.body).decode(), dict(response.headers))
        self.log(response.status_code)
        return response

    def stream(self, call: Call, frames: AsyncIterator[str], *, status: int, media_type: str,
               failure: Callable[[ApiError], Iterable[str | bytes]],
               answer: Callable[[], str] | None = None) -> WatchedStreamingResponse:
        """Relay ``frames`` (made from ``call``); the stream settles the request when it ends.
        ``failure`` gives the last frames after a mid-stream miner error; ``answer`` the logged text."""
        claim, self.claim = self.claim, None
        relay = self._relay(call, frames, status, media_type, failure, answer, claim)
        return WatchedStreamingResponse(relay, status_code=status, media_type=media_type, headers=self.headers)

    async def _relay(self, call: Call, frames: AsyncIterator[str], status: int, media_type: str,
                     failure: Callable[[ApiError], Iterable[str | bytes]], answer: Callable[[], str] | None,
                     claim: Claim | None) -> AsyncIterator[str | bytes]:
        record, sent = self.record, []
        try:
            async for frame in frames:
                sent.append(frame)
                yield frame
        except wire.ProtocolError as error:
            status, record.error = 502, error.type
            self.refund()
            for last in failure(UpstreamFailed(f"the miner failed mid-stream: {error.type}: {error.message}")):
                yield last
        finally:  # synchronous up to the last line: a client that hung up cancels every await here
            record.prompt_tokens, record.completion_tokens = call.prompt_tokens, call.completion_tokens
            record.answer = answer() if answer is not None else "".join(sent)
            if not call.finished and not record.error:
                status, record.error = 499, "client_closed"
                self.refund()
            if claim is not None:  # a clean stream is kept for replay; anything else frees the key
                if call.finished and not record.error and status < 500:
                    claim.finish_later(status, "".join(sent), {**miner_headers(call.route), "content-type": media_type})
                else:
                    claim.release()
            self.log(status)
            await call.close()


@contextlib.asynccontextmanager
async def admit(request: Request, route: str, shape: Shape[B] | None = None,
                describe: Callable[[RequestRecord, B, dict[str, Any]], None] | None = None,
                ) -> AsyncIterator[Admission[B]]:
    """Admit ``request`` to ``route`` (see the module doc): ``shape`` is the body's model, or picks
    it from the JSON object (None: no body); ``describe`` fills the log record from the body."""
    admission: Admission[B] = Admission(request, route)
    try:
        await admission._admit(shape, describe)
        yield admission
    except Replayed:
        raise
    except ApiError as error:
        admission.refund()
        admission.log(error.status, error.log_error or error.code or error.type)
        raise
    except ClientGone:
        admission.refund()
        admission.log(499, "client_closed")
        raise
    except Exception as error:  # a bug: give the credit back, log it, answer 500 in the envelope
        admission.refund()
        admission.log(500, type(error).__name__)
        raise
    finally:
        if admission.claim is not None:
            admission.claim.release()  # not answered (an error, a hang-up): a retry is served afresh
