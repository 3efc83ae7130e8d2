"""The public API's FastAPI app: ``build_app`` wires the injected parts into the routes.

Seam: the gateway's assembly, for ``neurons/api.py`` (the real gateway), the benchmark and the
tests. Every dependency is passed in, typed by its seam (``api.gateway``): the key store
(``api.keys``), the rate limiter (``api.limits``), the miner directory (``api.directory``),
the upstream caller (``api.upstream``), the validator store (organic invocations, its
engine for the request log), an optional moderator (``api.moderation``) and the knobs
(``ApiConfig``); they become the app's typed state (``api.gateway.Gateway``). The routes
live in ``api.openai_routes`` (``/v1``), ``api.chat_routes`` (``/chat``), ``api.chute_routes``
(``/chutes``: deploy, list, get, delete, warmup), ``api.public_routes`` (the chutes' public
calls, and their own hosts under ``ApiConfig.chute_domain``), ``api.admin_routes`` and
``api.admin_series`` (``/admin``), the web UI in ``api.web``.

Here: the request-id middleware (``x-request-id`` on every response, a bounded body by
``Content-Length``: ``ApiConfig.max_body_bytes``, but a bundle upload (``POST /chutes``) may
reach ``canopy.bundle.MAX_BUNDLE_BYTES``; an unexpected exception answered as a 500
envelope), the error handlers
(everything in OpenAI's envelope; an idempotent replay and a client's hang-up, 499, raised by
``api.admission``), ``/health``, ``/metrics`` (prometheus-client, the app's own registry) and
the docs at ``/docs``.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any, Awaitable, Callable, MutableMapping, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api.admission import COMPONENTS, Replayed
from api.errors import ApiError, InvalidRequest, PayloadTooLarge, envelope
from api.gateway import ApiConfig, Caller, Directory, Gateway, RateLimiter, Store, gateway_of
from api.keys import KeyStore
from api.moderation import Moderator
from api.requestlog import RequestRecord
from canopy.bundle import MAX_BUNDLE_BYTES
from canopy.streaming import ClientGone

#: The route whose body is a chute bundle, bounded by ``MAX_BUNDLE_BYTES`` instead of the gateway's cap.
UPLOAD = ("POST", "/chutes")

class RequestIdMiddleware:
    """Gives each request an id (``scope["state"]["request_id"]``), echoes it as ``x-request-id``,
    refuses a declared body over the limit with 413 before reading it.

    An id is this app's 64 random bits and a counter (``req_`` + 32 hex digits): unique across
    replicas writing one request log, without a ``getrandom`` call per request (``uuid4`` was
    1.5% of the gateway's CPU in py-spy)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.id_prefix = "req_" + secrets.token_hex(8)
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self.id_prefix}{next(self._counter):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        started = False

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        limit = MAX_BUNDLE_BYTES if (scope["method"], scope["path"].rstrip("/")) == UPLOAD else self.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            error = PayloadTooLarge(f"the request body is over {limit} bytes")
            await JSONResponse(error.body(), status_code=error.status)(scope, receive, send_with_id)
            app = scope.get("app")
            if app is not None and scope["path"].startswith("/v1/"):
                gateway: Gateway = app.state
                record = RequestRecord(id=request_id, route=scope["path"][:64], status=error.status,
                                       error=error.code or "")
                gateway.request_log.write(record)
                gateway.metrics.observe(record.route, error.status, 0.0)
            return
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:  # a bug: logged with the request id, answered in the envelope
            logger.opt(exception=error).error("API request {} failed", request_id)
            if not started:
                body = envelope(f"internal error (request {request_id})", "server_error")
                await JSONResponse(body, status_code=500)(scope, receive, send_with_id)


def build_app(*, keys: KeyStore, limiter: RateLimiter, directory: Directory, upstream: Caller, store: Store,
              config: ApiConfig | None = None, health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
              moderator: Moderator | None = None) -> FastAPI:
    """The gateway app. ``health`` is an optional ``async () -> dict`` merged into ``/health``;
    ``moderator`` (``api.moderation.Moderator``) checks inputs before miners are called."""
    from api.admin_routes import router as admin_router
    from api.admin_series import router as series_router
    from api.chat_routes import router as chat_router
    from api.chute_routes import router as chute_router
    from api.openai_routes import router as openai_router
    from api.public_routes import ChuteHostMiddleware, router as public_router
    from api.web import mount_ui

    config = config or ApiConfig()
    app = FastAPI(title="Canopy API", version="0.1.0",
                  description="OpenAI-compatible gateway to the miners of a Canopy subnet.")
    app.state = Gateway(keys=keys, limiter=limiter, directory=directory, upstream=upstream, store=store, config=config,
                        moderator=moderator, health=health)
    # the management routes before the public calls: /chutes/{owner}/{rest:path} would match them too
    for router in (openai_router, chat_router, admin_router, series_router, chute_router, public_router):
        app.include_router(router)
    mount_ui(app)  # the web UI at /ui/ (static files, not in the OpenAPI document)
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            _document_auth_and_errors(schema)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    if config.chute_domain:
        app.add_middleware(ChuteHostMiddleware, domain=config.chute_domain)  # inside the request-id middleware
    app.add_middleware(RequestIdMiddleware, max_body_bytes=config.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(Replayed)
    async def replayed(request: Request, replay: Replayed) -> Response:
        return replay.response

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, gone: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        problem = InvalidRequest(str(first.get("msg", "invalid request")), param=_param(first.get("loc", ())))
        return JSONResponse(problem.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return JSONResponse(envelope(str(error.detail), kind, None, None), status_code=error.status_code,
                            headers=error.headers)

    @app.get("/health", tags=["ops"])
    async def health_route(request: Request) -> dict:
        gateway = gateway_of(request)
        directory = gateway.directory
        body = {"status": "ok", "miners": len({r.hotkey for r in directory.routes}),
                "models": directory.models(), "refreshed": directory.refreshed_at > 0}
        if gateway.health is not None:
            body.update(await gateway.health())
        return body

    @app.get("/metrics", tags=["ops"])
    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(gateway_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


ERROR_SCHEMA: dict[str, Any] = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def _document_auth_and_errors(schema: dict[str, Any]) -> None:
    """The OpenAPI document's bearer auth (every route but ``ops``) and error envelope (``default``
    response); FastAPI's 422 is dropped: a request that fails validation is answered 400."""
    components = schema["components"]
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "an API key (canopy keys create); /admin/* needs one made with --admin"}
    components["schemas"]["Error"] = ERROR_SCHEMA
    error = {"description": "an error in OpenAI's envelope",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "ops" in operation.get("tags", ()):
                continue
            operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = error
    if "HTTPValidationError" not in str(schema.get("paths")):
        for name in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(name, None)


def _param(loc: Any) -> str | None:
    parts = [str(part) for part in loc if part not in ("body",)]
    return ".".join(parts) or None


async def close_gateway(app: FastAPI) -> None:
    """Write what the gateway still holds: queued log, idempotency and invocation rows, and
    the credit leases (given back to their keys). Call after the server stopped."""
    gateway = cast(Gateway, app.state)
    await gateway.request_log.drain()
    await gateway.idempotency.drain()
    await gateway.upstream.drain()
    await gateway.credits.close()
