"""The axon: the miner-side HTTP server that authenticates, filters and serves synapses.

The server half of the wire (the client half is ``protocol.dendrite.Dendrite``): a neuron
builds one ``Axon``, attaches a handler per synapse and starts it. Replay protection is
the ``protocol.nonces.NonceStore`` it is given (in-process by default, Redis to share it
between workers of one hotkey).

One ``POST /synapse/<Name>`` route per attached synapse, plus an unauthenticated
``GET /health``. Synapse routes are answered at the ASGI level, ahead of the FastAPI
app (``axon.app``), which serves ``/health``, any route a caller adds to it, and typed
404/405 replies. Each synapse request passes, in order (the first failure answers with a
typed JSON error, see ``protocol.errors``, and nothing is recorded):

1. protocol version header (major must match) and ``Content-Length`` against the cap;
2. the claimed hotkey against the cached metagraph: unknown / no permit / low stake.
   Deciding on the *claimed* hotkey before the signature is safe (it can only refuse)
   and cheap: blacklisted traffic costs neither a body read nor a signature check;
3. the body, read with a running size cap (chunked bodies included);
4. btauth/1 over the raw body bytes, bound to this axon's hotkey as receiver;
5. the payload parsed into the synapse model (400 malformed JSON, 422 invalid fields);
6. the nonce recorded in the store (401 replayed); last, so failures store nothing;
7. stake-priority admission (``protocol.admission``, 429 ``busy``);
8. the handler. Exceptions become 500 ``handler_error`` without a traceback.

Streaming format: a synapse whose handler is an async generator is answered with
``Content-Type: application/x-ndjson``: one JSON object per line, one line per chunk,
flushed as produced. If the handler fails after the first chunk, the last line is an
error body ``{"error": {"type": "handler_error", ...}}``; a failure before the first
chunk is an ordinary 500.

The metagraph is read from the chain at ``start()`` and refreshed in the background every
``metagraph_refresh_s``; the request path never calls the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, cast

import bittensor as bt
from bittensor import http_auth
from fastapi import FastAPI
from loguru import logger
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from protocol.options import AxonSettings
from chain.base import Chain, Metagraph, Neuron
from canopy.streaming import ClientGone, until_disconnect
from protocol import asgi, errors
from protocol.admission import PriorityGate
from protocol.nonces import ACCEPT_ALL, NonceStore, as_nonce_store
from protocol.synapse import PROTOCOL_HEADER, PROTOCOL_VERSION, Ping, Pong, Synapse, major_of

_AUTH_ERRORS: dict[type[http_auth.AuthError], type[errors.ProtocolError]] = {
    http_auth.MalformedAuth: errors.MalformedAuth,
    http_auth.WrongReceiver: errors.WrongReceiver,
    http_auth.StaleRequest: errors.StaleRequest,
    http_auth.ReplayedRequest: errors.ReplayedRequest,
    http_auth.BadSignature: errors.BadSignature,
}
_AUTH_HEADERS = frozenset(
    name.lower().encode()
    for name in (http_auth.HEADER_VERSION, http_auth.HEADER_HOTKEY, http_auth.HEADER_RECEIVER,
                 http_auth.HEADER_NONCE, http_auth.HEADER_CRYPTO, http_auth.HEADER_SIGNATURE)
)
_HOTKEY = http_auth.HEADER_HOTKEY.lower()
_NOTHING = object()  # an empty stream's first chunk
_PROTOCOL = PROTOCOL_HEADER.lower().encode()


@dataclass(frozen=True)
class SignedRequest:
    """A request exactly as its sender signed it: a handler may show it to a third party as
    evidence of what that sender asked (GraVal: the challenge that keeps a device busy)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Caller:
    """The authenticated sender of a request, as its handler sees it."""

    hotkey: str
    nonce_ns: int
    neuron: Neuron
    signed: SignedRequest | None = None

    @property
    def uid(self) -> int:
        return self.neuron.uid

    @property
    def stake(self) -> float:
        return self.neuron.stake


#: A synapse handler: a coroutine function returning the response (model or dict of its
#: fields), or an async generator function of chunks (``Axon.attach`` checks which).
Handler = Callable[[Any, Caller], Awaitable[Any] | AsyncIterator[Any]]


@dataclass(frozen=True)
class _Route:
    synapse: type[Synapse]
    handler: Handler
    streaming: bool
    major: int
    long_running: bool = False


class Axon:
    """Serves attached synapses to authorised callers over HTTP (uvicorn, in-process)."""

    def __init__(
        self,
        wallet: bt.Wallet,
        chain: Chain,
        netuid: int,
        settings: AxonSettings | None = None,
        *,
        nonce_store: NonceStore | http_auth.NonceStore | None = None,
        metagraph_refresh_s: float = 60.0,
        max_age: float = http_auth.DEFAULT_MAX_AGE,
        allowed_skew: float = http_auth.DEFAULT_ALLOWED_SKEW,
        queue_size: int | None = None,
        max_queue_wait_s: float = 10.0,
    ) -> None:
        self.wallet = wallet
        self.chain = chain
        self.netuid = netuid
        self.settings = settings or AxonSettings()
        self.hotkey: str = wallet.hotkey.ss58_address
        self.nonce_store = as_nonce_store(nonce_store)
        retention = self.nonce_store.retention
        if retention is not None and retention < max_age + allowed_skew:
            raise ValueError(f"nonce store retention {retention:g}s is shorter than the {max_age + allowed_skew:g}s window")
        self.metagraph_refresh_s = metagraph_refresh_s
        self.max_age = max_age
        self.allowed_skew = allowed_skew
        capacity = self.settings.max_concurrency
        self.gate = PriorityGate(capacity, capacity if queue_size is None else queue_size, max_wait_s=max_queue_wait_s)
        self.metagraph: Metagraph | None = None
        self.app = self._build_app()
        self._routes: dict[str, _Route] = {}
        self._server: asgi.EmbeddedServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._port: int | None = None
        self.attach(Ping, self._pong)

    def attach(self, synapse: type[Synapse], handler: Handler, *, long_running: bool = False) -> "Axon":
        """Serve ``synapse`` with ``handler(synapse, caller)``: a coroutine returning the
        response model (or a dict of its fields), or an async generator of chunks. A
        handler refuses by raising a ``protocol.errors`` error (sent with its status).
        ``long_running``: a coroutine handler is cancelled when its caller hangs up (long work
        nobody waits for; streams are always watched) and its reply is encoded in a worker
        thread (a large reply must not stall the other requests' streams). It costs a
        watcher task and a thread hop per request, so cheap handlers go without."""
        if not (isinstance(synapse, type) and issubclass(synapse, Synapse)) or synapse is Synapse:
            raise TypeError("attach() takes a Synapse subclass")
        streaming = inspect.isasyncgenfunction(handler)
        if not streaming and not inspect.iscoroutinefunction(handler):
            raise TypeError(f"the handler for {synapse.__name__} must be an async function or async generator")
        if synapse.streaming and not streaming:
            raise TypeError(f"{synapse.__name__} is a streaming synapse: its handler must be an async generator")
        self._routes[synapse.route()] = _Route(synapse, handler, streaming, major_of(synapse.protocol_version) or 0,
                                               long_running)
        return self

    async def _pong(self, synapse: Ping, caller: Caller) -> Pong:
        return Pong(hotkey=self.hotkey)

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="canopy axon", docs_url=None, redoc_url=None, openapi_url=None)

        async def health(request: Request) -> Response:
            block = self.metagraph.block if self.metagraph is not None else None
            return JSONResponse({"status": "ok", "hotkey": self.hotkey, "protocol": PROTOCOL_VERSION, "metagraph_block": block})

        async def http_error(request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
            kind = {404: errors.NotFound, 405: errors.MethodNotAllowed}.get(status)
            error = kind(f"no such route: {request.method} {request.url.path}") if kind else errors.HandlerError("internal error")
            return Response(error.to_json(), error.status, media_type="application/json")

        async def unexpected(request: Request, exc: Exception) -> Response:
            logger.opt(exception=exc).error("axon: unexpected error on {}", request.url.path)
            error = errors.HandlerError("internal error")
            return Response(error.to_json(), error.status, media_type="application/json")

        app.router.add_route("/health", health, methods=["GET"], include_in_schema=False)
        app.add_exception_handler(StarletteHTTPException, http_error)
        app.add_exception_handler(Exception, unexpected)
        return app

    # --- the request path --------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point uvicorn runs: synapse POSTs here, everything else to ``app``."""
        route = self._routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            await asgi.send_error(send, errors.MethodNotAllowed(f"{scope['path']} only accepts POST"))
        else:
            try:
                await self._handle(scope, receive, send, route)
            except ClientGone:
                pass
            except Exception:  # a bug in the pipeline itself: answer if still possible, never leak
                logger.exception("axon: unexpected error on {}", scope["path"])
                with contextlib.suppress(Exception):
                    await asgi.send_error(send, errors.HandlerError("internal error"))

    def _authorize(self, hotkey: str) -> Neuron:
        """The blacklist: registered, permitted and staked enough, from the cached metagraph."""
        metagraph = self.metagraph
        if metagraph is None:
            raise errors.Unavailable("the axon has not loaded the metagraph yet")
        neuron = metagraph.by_hotkey(hotkey)
        if neuron is None:
            raise errors.UnknownHotkey(f"hotkey is not registered on netuid {self.netuid}")
        if self.settings.require_permit and not neuron.validator_permit:
            raise errors.NotValidator("only callers with a validator permit are served")
        if neuron.stake < self.settings.min_stake:
            raise errors.LowStake(f"stake {neuron.stake:g} is below the minimum {self.settings.min_stake:g}")
        return neuron

    @staticmethod
    def _path(scope: Scope) -> str:
        path: str = scope["path"]
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        return path

    def _verify(self, scope: Scope, auth_headers: dict[str, str], body: bytes) -> http_auth.Caller:
        path = self._path(scope)
        try:
            return http_auth.verify(
                auth_headers, body, method=scope["method"], path=path, self_hotkey_ss58=self.hotkey,
                max_age=self.max_age, allowed_skew=self.allowed_skew, require_receiver=True, nonce_store=ACCEPT_ALL,
            )
        except http_auth.AuthError as error:
            raise _AUTH_ERRORS.get(type(error), errors.MalformedAuth)(str(error)) from None

    @staticmethod
    def _parse(route: _Route, body: bytes) -> Synapse:
        try:
            return route.synapse.model_validate_json(body)
        except ValidationError as error:
            problems = error.errors(include_url=False, include_context=False, include_input=False)
            if any(p["type"] == "json_invalid" for p in problems):
                raise errors.MalformedJson("the body is not valid JSON") from None
            fields = [{"loc": ".".join(str(part) for part in p["loc"]), "msg": p["msg"], "type": p["type"]} for p in problems]
            names = ", ".join(f["loc"] or "(body)" for f in fields)
            raise errors.InvalidPayload(f"invalid {route.synapse.__name__} payload: {names}", detail=fields) from None

    async def _record_nonce(self, auth: http_auth.Caller) -> bool:
        try:
            return await self.nonce_store.acheck_and_store(auth.hotkey_ss58, auth.nonce_ns)
        except Exception as error:  # e.g. Redis unreachable: refuse rather than serve unprotected
            logger.warning("axon: nonce store failed: {}", error)
            raise errors.Unavailable("replay protection is unavailable; retry shortly") from None

    async def _handle(self, scope: Scope, receive: Receive, send: Send, route: _Route) -> None:
        auth_headers: dict[str, str] = {}
        version = length = None
        for name, value in scope["headers"]:
            if name in _AUTH_HEADERS:
                auth_headers[name.decode()] = value.decode("latin-1")
            elif name == _PROTOCOL:
                version = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        try:
            if version is None or major_of(version) != route.major:
                raise errors.ProtocolMismatch(
                    f"{route.synapse.__name__} speaks protocol {route.synapse.protocol_version}; "
                    f"request sent {PROTOCOL_HEADER}: {version or 'nothing'}"
                )
            claimed = auth_headers.get(_HOTKEY)
            neuron = self._authorize(claimed) if claimed else None
            body = await asgi.read_body(receive, length, max(self.settings.max_body_bytes, route.synapse.max_body_bytes or 0))
            auth = self._verify(scope, auth_headers, body)
            if neuron is None:
                neuron = self._authorize(auth.hotkey_ss58)
            synapse = self._parse(route, body)
            if not await self._record_nonce(auth):
                raise errors.ReplayedRequest("this nonce was already accepted from this hotkey")
            await self.gate.acquire(neuron.stake)
        except errors.ProtocolError as error:
            await asgi.send_error(send, error)
            return
        caller = Caller(auth.hotkey_ss58, auth.nonce_ns, neuron,
                        SignedRequest(scope["method"], self._path(scope), auth_headers, body))
        if route.streaming:
            await self._stream(route, synapse, caller, scope, receive, send)
            return
        try:
            work = cast("Awaitable[Any]", route.handler(synapse, caller))  # not streaming: a coroutine (attach checks)
            if route.long_running:
                result = await until_disconnect(work, receive)
                reply = await asyncio.to_thread(self._encode, route, result)
            else:
                reply = self._encode(route, await work)
        except ClientGone:
            return  # nobody to answer
        except errors.ProtocolError as refusal:  # a handler refusing with a typed error (404, 422, 429...)
            await asgi.send_error(send, refusal)
            return
        except Exception:
            logger.exception("axon: {} handler failed", route.synapse.__name__)
            await asgi.send_error(send, errors.HandlerError(f"the {route.synapse.__name__} handler failed"))
            return
        finally:
            self.gate.release()
        await asgi.send_body(send, 200, reply)

    @staticmethod
    def _encode(route: _Route, result: Any) -> bytes:
        model = route.synapse.response_model
        if not isinstance(result, model):
            result = model.model_validate(result)
        encoded: bytes = result.__pydantic_serializer__.to_json(result)
        return encoded

    async def _stream(self, route: _Route, synapse: Synapse, caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = cast("AsyncGenerator[Any, None]", route.handler(synapse, caller))  # streaming: an async generator (attach checks)
        try:
            first: Any = await anext(chunks)
        except StopAsyncIteration:
            first = _NOTHING
        except BaseException as failure:
            self.gate.release()
            if not isinstance(failure, Exception):
                raise
            if isinstance(failure, errors.ProtocolError):
                await asgi.send_error(send, failure)
                return
            logger.exception("axon: {} stream failed before its first chunk", route.synapse.__name__)
            await asgi.send_error(send, errors.HandlerError(f"the {route.synapse.__name__} handler failed"))
            return

        async def lines() -> AsyncGenerator[bytes, None]:
            try:
                if first is _NOTHING:
                    return
                yield self._encode(route, first) + b"\n"
                async for chunk in chunks:
                    yield self._encode(route, chunk) + b"\n"
            except Exception:
                logger.exception("axon: {} stream failed", route.synapse.__name__)
                yield errors.HandlerError(f"the {route.synapse.__name__} stream failed").to_json() + b"\n"

        await asgi.NdjsonResponse(lines(), chunks, self.gate)(scope, receive, send)

    # --- lifecycle ---------------------------------------------------------------------

    async def refresh_metagraph(self) -> Metagraph:
        """Read the metagraph from the chain now (the background task does this periodically)."""
        self.metagraph = await self.chain.metagraph(self.netuid)
        return self.metagraph

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.metagraph_refresh_s)
            try:
                await self.refresh_metagraph()
            except Exception as error:  # keep serving on the last good snapshot
                kept = self.metagraph.block if self.metagraph is not None else None
                logger.warning("axon: metagraph refresh failed, keeping block {}: {}", kept, error)

    @property
    def port(self) -> int:
        """The port bound (after ``start``) or configured."""
        return self._port or self.settings.port

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the axon."""
        host = "127.0.0.1" if self.settings.ip in ("0.0.0.0", "") else self.settings.ip
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def published_ip(self) -> str:
        return self.settings.external_ip or self.settings.ip

    @property
    def published_port(self) -> int:
        return self.settings.external_port or self.port

    async def serve(self, chain: Chain | None = None) -> None:
        """Publish this axon's ip:port for the wallet's hotkey on ``chain`` (default: the axon's)."""
        await (chain or self.chain).serve_axon(self.wallet, self.netuid, self.published_ip, self.published_port)

    async def start(self, *, publish: bool = True) -> None:
        """Load the metagraph, bind the port, start uvicorn in this event loop, then publish
        (``serve``) unless ``publish`` is False. Raises OSError when the port is taken."""
        if self._serve_task is not None:
            raise RuntimeError("the axon is already started")
        await self.refresh_metagraph()
        await self.nonce_store.ping()  # a shared store that is unreachable fails the start here
        sock = asgi.bind_socket(self.settings.ip, self.settings.port)
        self._port = sock.getsockname()[1]
        self._server = asgi.EmbeddedServer(asgi.server_config(self))
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"axon:{self._port}")
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("the axon server stopped during start-up")
            await asyncio.sleep(0.005)
        self._refresh_task = asyncio.create_task(self._refresh_forever(), name=f"axon-metagraph:{self._port}")
        if publish:
            await self.serve()
        logger.info("axon {} serving on {} (netuid {})", self.hotkey, self.url, self.netuid)

    async def stop(self) -> None:
        """Stop serving (in-flight requests get a short grace period); safe to call twice."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
            self._refresh_task = None
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
        self._server = None
        self._serve_task = None

    async def __aenter__(self) -> "Axon":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
