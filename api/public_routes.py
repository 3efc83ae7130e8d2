"""Public chute calls: ``POST|GET /chutes/{owner}/{name}{public_api_path}`` (and on a chute's own host).

Seam: the gateway's door to every registry chute's cords, on the same admission step as the
LLM routes (``api.admission.admit``: auth, rate limits, one credit reserved before a miner is
called and refunded when none answered, the request log) and the same ``Upstream`` (race,
failover before the first byte, organic ``Invocation`` rows). The chute and the revision come
from the registry (``api.directory``'s view; a chute deployed a moment ago on another replica
is read from the store); only miners at the current revision are called.

- The cord is the one whose ``public_api_path`` and ``public_api_method`` match; the miner is
  asked for its own ``path`` and ``method`` with the body as JSON (a GET: the query parameters
  as an object, or nothing). A POST body is any JSON value, or empty; ``Idempotency-Key`` works
  as on the LLM routes (not for binary answers, which are never kept).
- 404 ``not_found`` names the unknown chute, or the unknown path with the chute's public paths;
  403 for another owner's private chute (``store.scopes``); the cord's 422 is relayed as 422
  ``invalid_payload`` with its ``detail`` (the failing fields).
- Answers keep their content type: a streaming cord's SSE or NDJSON is relayed as it arrives
  (a miner failing mid-stream ends it with an error event or line), a binary body (the
  miner's base64 chunks, e.g. ``image/png``) is sent as bytes.
- Cold start: when no miner can take the call, a ``no_capacity`` demand event is recorded (the
  validators announce it, miners start an instance) and the call waits up to
  ``ApiConfig.cold_start_wait_s`` while the directory refreshes every ``hurry_s``; then 503
  ``no_capacity`` with ``Retry-After``.

With ``ApiConfig.chute_domain`` set, ``ChuteHostMiddleware`` maps a request for host
``OWNER-NAME.<domain>`` (case-insensitive) to ``/chutes/OWNER/NAME{path}``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Iterable, MutableMapping

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.admission import Admission, Replayed, admit, no_answer
from api.chute_routes import ChuteNotFound, DetailedError, cords_of, require
from api.directory import Route
from api.errors import ApiError, InvalidRequest, PayloadTooLarge, UpstreamFailed, envelope, sse_error
from api.gateway import Gateway
from api.idempotency import HEADER
from api.keys import KeyError_, parse_strategy
from api.upstream import Call, NoAnswer
from canopy.streaming import until_disconnect
from protocol import errors as wire
from store.registry import ChuteRecord

router = APIRouter(tags=["chutes"])
ROUTE = "/chutes/{owner}/{name}{path}"  # the request log's route of every public call
MAX_NAME_PARTS = 4  # a chute name may hold "/": the longest one tried has this many parts
RETRY_AFTER_S = 5


class InvalidInput(DetailedError):
    """The cord's schema refused the body: its failing fields are in ``detail``."""

    status, type, code = 422, "invalid_request_error", "invalid_payload"


class CordMethodNotAllowed(ApiError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class NoCapacity(ApiError):
    status, type, code = 503, "api_error", "no_capacity"


# --- which chute, which cord -------------------------------------------------------------------


def _splits(rest: str) -> list[tuple[str, str]]:
    """(name, public path) readings of ``rest`` (``NAME{path}``), the longest name first."""
    parts = rest.split("/")
    return [("/".join(parts[:i]), "/" + "/".join(parts[i:])) for i in range(min(len(parts), MAX_NAME_PARTS), 0, -1)
            if parts[0]]


async def resolve(gateway: Gateway, owner: str, rest: str) -> tuple[ChuteRecord, str]:
    """The chute ``/chutes/{owner}/{rest}`` names and the public path after its name, or 404."""
    readings = _splits(rest)
    for name, path in readings:
        record = gateway.directory.chute(owner, name)
        if record is not None:
            return record, path
    for name, path in reversed(readings):  # not in the directory's view yet: the store, shortest name first
        record = await gateway.registry.get(owner, name)
        if record is not None:
            gateway.directory.registered(record)
            return record, path
    name = rest.split("/", 1)[0]
    raise ChuteNotFound(f"no chute {owner}/{name} is deployed (GET /chutes lists them)")


def cord_of(record: ChuteRecord, path: str, method: str) -> dict[str, Any]:
    """The cord of ``record`` served at public ``method path``, or 404 listing its paths (405: another method)."""
    cords = cords_of(record)
    at_path = [c for c in cords if (c.get("public_api_path") or c.get("path")) == path]
    for cord in at_path:
        if (cord.get("public_api_method") or cord.get("method") or "POST") == method:
            return cord
    if at_path:
        methods = sorted({str(c.get("public_api_method") or c.get("method") or "POST") for c in at_path})
        raise CordMethodNotAllowed(f"{path} of chute {record.ref} takes {', '.join(methods)}, not {method}")
    paths = sorted({str(c.get("public_api_path") or c.get("path")) for c in cords}) or ["none"]
    raise ChuteNotFound(f"chute {record.ref} has no path {path} (its public paths: {', '.join(paths)})")


# --- the call ---------------------------------------------------------------------------------


async def _payload(request: Request, gateway: Gateway) -> Any:
    if request.method == "GET":
        return dict(request.query_params) or None
    limit, chunks, size = gateway.config.max_body_bytes, [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", code="invalid_json") from None


async def _claim(admission: Admission[Any], payload: Any) -> None:
    """The ``Idempotency-Key`` claim of a POST (a stored answer is replayed), as ``admit`` does for JSON routes."""
    claim = await admission.gateway.idempotency.claim_header(admission.request.headers.get(HEADER), admission.key.id,
                                                             admission.record.route + admission.record.model, payload)
    admission.claim = claim
    if claim is not None and claim.replay is not None:
        admission.record.strategy = "replay"
        admission.log(claim.replay.status)
        raise Replayed(claim.replay.response())


async def _routes(admission: Admission[Any], record: ChuteRecord, strategy: str) -> list[Route]:
    """The miners to call; none: a ``no_capacity`` event, a cold-start wait, then 503."""
    gateway = admission.gateway
    routes = gateway.directory.chute_candidates(record.chute_id, strategy)
    if routes:
        return routes
    await gateway.registry.record_demand(record.chute_id, "no_capacity")
    wait_s = gateway.config.cold_start_wait_s
    routes = await until_disconnect(gateway.directory.wait_for_capacity(record.chute_id, wait_s, strategy),
                                    admission.request.receive)
    if not routes:
        raise NoCapacity(f"no miner runs chute {record.ref} yet (waited {wait_s:g} s); an instance is being "
                         f"started: retry in a little while", headers={"Retry-After": str(RETRY_AFTER_S)})
    return routes


async def _open(admission: Admission[Any], routes: list[Route], cord: dict[str, Any], payload: Any,
                steered: bool) -> Call:
    """``Upstream.open`` watched for a hang-up (``Admission.call`` with the cord's method); the
    cord's 422 becomes ``InvalidInput`` with its failing fields."""
    gateway = admission.gateway
    try:
        return await until_disconnect(gateway.upstream.open(
            routes, str(cord.get("path")), payload, stream=bool(cord.get("stream")), race=gateway.config.race,
            timeout_s=gateway.config.request_timeout_s, tried=admission.record.miners_tried, steered=steered,
            method=str(cord.get("method") or "POST")), admission.request.receive)
    except NoAnswer as failure:
        if isinstance(failure.last, wire.InvalidPayload):
            raise InvalidInput(f"the chute refused the body: {failure.last.message}", detail=failure.last.detail,
                               param=_first_field(failure.last.detail)) from None
        raise no_answer(failure.detail, len(failure.tried), client_error=failure.client_error,
                        timed_out=failure.timed_out) from None


def _first_field(detail: Any) -> str | None:
    first = detail[0] if isinstance(detail, list) and detail else None
    loc = first.get("loc") if isinstance(first, dict) else None
    parts = [str(part) for part in loc if part != "body"] if isinstance(loc, list) else []
    return ".".join(parts) or None


def _stream_failure(media_type: str) -> Callable[[ApiError], Iterable[str | bytes]]:
    """The last frames of a stream whose miner failed after the first byte."""
    if "event-stream" in media_type:
        return lambda error: [sse_error(error)]
    if "ndjson" in media_type:
        return lambda error: [json.dumps(error.body()) + "\n"]
    return lambda error: []


async def _relay(admission: Admission[Any], call: Call, stream: bool) -> Response:
    media_type = call.content_type
    binary = call.first_chunk.encoding == "base64"
    if stream and not binary:
        return admission.stream(call, call.pieces(), status=call.status, media_type=media_type,
                                failure=_stream_failure(media_type))
    try:
        pieces = [piece async for piece in call.pieces()]
    except wire.ProtocolError as error:
        raise UpstreamFailed(f"the miner failed mid-answer: {error.type}", headers=admission.headers) from None
    finally:
        await call.close()
    record = admission.record
    record.prompt_tokens, record.completion_tokens = call.prompt_tokens, call.completion_tokens
    if binary:
        body: bytes | str = b"".join(base64.b64decode(piece) for piece in pieces)
        record.answer = f"<{len(body)} bytes of {media_type}>"
        if admission.claim is not None:  # a binary answer is not kept for replay (the store keeps text)
            admission.claim.release()
            admission.claim = None
    else:
        body = record.answer = "".join(pieces)
    return await admission.answer(Response(body, status_code=call.status, headers=admission.headers,
                                           media_type=media_type))


PUBLIC_CALL = "/chutes/{owner}/{rest:path}"
CALL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the cord's answer, in its content type (JSON, SSE, NDJSON, bytes)"},
    503: {"description": "no_capacity: no miner runs the chute yet (Retry-After)"}}


@router.get(PUBLIC_CALL, response_model=None, responses=CALL_RESPONSES, operation_id="call_chute_get")
@router.post(PUBLIC_CALL, response_model=None, responses=CALL_RESPONSES, operation_id="call_chute_post")
async def call_chute(request: Request, owner: str, rest: str) -> Response:
    """Call a cord of chute ``owner/NAME`` at its ``public_api_path`` (see the module doc)."""
    async with admit(request, ROUTE) as admission:
        gateway = admission.gateway
        record, path = await resolve(gateway, owner, rest)
        admission.record.model = record.ref[:256]
        require(admission.key, "invoke", record)
        cord = cord_of(record, path, request.method)
        payload = await _payload(request, gateway)
        admission.record.prompt = payload
        if request.method == "POST":
            await _claim(admission, payload)
        if isinstance(payload, dict):
            await admission.moderate(payload.get("messages", payload.get("prompt")), "messages")
        try:
            strategy = parse_strategy(request.headers.get("x-canopy-strategy") or admission.key.default_strategy
                                      or "default")
        except KeyError_ as error:
            raise InvalidRequest(str(error), param="x-canopy-strategy") from None
        admission.record.strategy = strategy
        routes = await _routes(admission, record, strategy)
        await admission.charge()
        call = await _open(admission, routes, cord, payload, steered=strategy != "default")
        admission.served_by(call.route)
        return await _relay(admission, call, bool(cord.get("stream")))


# --- a chute's own host ------------------------------------------------------------------------


class ChuteHostMiddleware:
    """Serves ``OWNER-NAME.<domain>{path}`` as ``/chutes/OWNER/NAME{path}``; an unknown chute host is 404."""

    def __init__(self, app: ASGIApp, domain: str) -> None:
        self.app, self.suffix = app, "." + domain.strip().strip(".").lower()

    def _label(self, scope: Scope) -> str | None:
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
        if host and not host.endswith("]"):
            host = host.rsplit(":", 1)[0] if ":" in host else host
        if not host.endswith(self.suffix):
            return None
        label = host[: -len(self.suffix)]
        return label if label and "." not in label else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        label = self._label(scope) if scope["type"] == "http" else None
        if label is None:
            await self.app(scope, receive, send)
            return
        gateway: Gateway = scope["app"].state
        record = gateway.directory.chute_by_host(label)
        if record is None:
            body = envelope(f"no chute is served at {label}{self.suffix}", "invalid_request_error", None, "not_found")
            await JSONResponse(body, status_code=404)(scope, receive, send)
            return
        prefix = f"/chutes/{record.owner}/{record.name}"
        routed: MutableMapping[str, Any] = dict(scope)
        routed["path"] = prefix + scope["path"]
        routed["raw_path"] = prefix.encode() + (scope.get("raw_path") or scope["path"].encode())
        await self.app(routed, receive, send)
