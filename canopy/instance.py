"""The chute instance: one chute served over HTTP by one process (FastAPI on uvicorn).

Launched by the miner (``miner.instances``) as::

    python -m canopy.instance serve REF --host 127.0.0.1 --port PORT [--concurrency N]
    python -m canopy.instance describe REF     # ChuteInfo JSON on stdout; exit 2 when REF fails to load

and by ``canopy run --dev`` (``canopy.cli.run``). ``create_app`` builds the app:

- ``GET /_canopy/health``: 200 ``{"status":"ready","in_flight":k,"concurrency":c}`` once the
  startup hooks ran; 503 ``starting`` before, 503 ``failed`` (with the error) if one raised,
  after which ``serve`` exits non-zero (3). ``GET /_canopy/info``: the ChuteInfo.
- one route per cord: JSON body -> the cord. 200 JSON (header ``X-Canopy-Compute-S``), or a
  streaming body; typed errors ``{"error": {"type", "message", ...}}``: 422 invalid_payload
  (pydantic ``detail`` with ``loc``), 429 busy (``concurrency`` requests in flight; no
  queueing), 503 unavailable (not ready), 404 not_found, 502 upstream_unavailable
  (passthrough), 500 remote_error with the remote exception type, message and frames. A
  stream failing after its first chunk ends with ``data: {"error": {...}}``.

Startup hooks run in a task started by the lifespan (health answers ``starting`` meanwhile);
shutdown hooks run in the lifespan's exit, which uvicorn reaches on SIGTERM after its
graceful shutdown has let in-flight requests finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from loguru import logger
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from canopy import __version__
from canopy.chute import Chute, ChuteLoadError, load_chute
from canopy.cord import (Cord, encode_chunk, is_async_iterator, remote_error, to_jsonable, validation_detail,
                         validation_message)
from canopy.streaming import WatchedStreamingResponse

if TYPE_CHECKING:
    from canopy.chains_local import LocalGraph

COMPUTE_HEADER = "X-Canopy-Compute-S"
STARTUP_FAILED_EXIT = 3
LOAD_FAILED_EXIT = 2
_REF = "#/components/schemas/{model}"


def error_response(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    """The typed error body every instance reply uses: ``{"error": {"type", "message", ...}}``."""
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status_code=status)


def _remote_error_response(exc: BaseException, cord: Cord) -> JSONResponse:
    logger.error("cord {} raised {}", cord.path, "".join(traceback.format_exception(exc)).strip())
    return error_response(500, "remote_error", f"{type(exc).__name__}: {exc}", remote=remote_error(exc))


def invalid_payload_response(exc: ValidationError) -> JSONResponse:
    detail = validation_detail(exc)
    return error_response(422, "invalid_payload", validation_message(detail), detail=detail)


class InstanceState:
    """What health reports: lifecycle status, the error of a failed startup, requests in flight."""

    def __init__(self, chute: Chute, concurrency: int, instance_id: str) -> None:
        self.chute = chute
        self.concurrency = concurrency
        self.instance_id = instance_id
        self.status = "starting"
        self.error: str | None = None
        self.in_flight = 0
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        self.session: Any = None  # aiohttp.ClientSession for passthrough cords
        self.local_graph: LocalGraph | None = None  # dependencies run in-process (``canopy run --dev``)

    def health(self) -> tuple[int, dict]:
        body: dict[str, Any] = {"status": self.status, "chute_id": self.chute.chute_id,
                                "instance_id": self.instance_id}
        if self.status == "ready":
            body.update(in_flight=self.in_flight, concurrency=self.concurrency, ready_after_s=self.ready_after_s)
            return 200, body
        if self.error:
            body["error"] = self.error
        return 503, body


class _Stream(WatchedStreamingResponse):
    """A streaming response that always runs ``on_close`` (client gone, error, or done)."""

    def __init__(self, content: AsyncGenerator[bytes, None], on_close: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._content.aclose()
            await self._on_close()


def _stream_body(first: Any, rest: AsyncIterator[Any], cord: Cord) -> AsyncGenerator[bytes, None]:
    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield encode_chunk(first)
            async for chunk in rest:
                yield encode_chunk(chunk)
        except Exception as exc:  # noqa: BLE001 - the client gets a typed error chunk
            logger.error("stream of cord {} failed: {}", cord.path, "".join(traceback.format_exception(exc)).strip())
            error = {"error": {"type": "remote_error", "message": f"{type(exc).__name__}: {exc}",
                               "remote": remote_error(exc)}}
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
    return body()


def _make_handler(cord: Cord, state: InstanceState) -> Callable:
    async def handler(request: Request) -> Response:
        if state.status != "ready":
            return error_response(503, "unavailable", f"the instance is {state.status}", state=state.status)
        if state.in_flight >= state.concurrency:
            return error_response(429, "busy", f"{state.in_flight} of {state.concurrency} requests in flight",
                                  in_flight=state.in_flight, concurrency=state.concurrency)
        state.in_flight += 1
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.in_flight -= 1

        response: Response | None = None
        started = time.perf_counter()
        try:
            response = await _respond(cord, state, request, release)
            if not isinstance(response, StreamingResponse):
                response.headers[COMPUTE_HEADER] = f"{time.perf_counter() - started:.6f}"
            return response
        except ValidationError as exc:
            return invalid_payload_response(exc)
        except HTTPException as exc:
            return error_response(exc.status_code, "http_error", str(exc.detail))
        except Exception as exc:  # noqa: BLE001 - typed error with the remote traceback
            return _remote_error_response(exc, cord)
        finally:
            if not isinstance(response, _Stream):  # a live stream releases its slot when it ends
                await release()

    handler.__name__ = cord.name
    handler.__doc__ = cord.func.__doc__
    return handler


async def _respond(cord: Cord, state: InstanceState, request: Request, release: Callable) -> Response:
    body = await request.body()
    try:
        payload = json.loads(body) if body.strip() else (dict(request.query_params) if cord.method == "GET" else {})
    except ValueError as exc:
        return error_response(400, "malformed_json", f"the request body is not JSON: {exc}")
    if cord.passthrough:
        if cord._adapter is not None:
            cord.validate(payload)
        return await _passthrough(cord, state, body, payload, release)
    result = await cord.run(cord.validate(payload))
    if is_async_iterator(result):
        return await _stream_response(cord, result, release)
    if isinstance(result, Response):
        return result
    if isinstance(result, (bytes, str)) and cord.output_content_type != "application/json":
        return Response(result, media_type=cord.output_content_type)
    return Response(json.dumps(to_jsonable(result), separators=(",", ":")), media_type="application/json")


async def _stream_response(cord: Cord, result: Any, release: Callable) -> Response:
    iterator = result.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        return Response(b"", media_type=cord.stream_content_type)
    except Exception as exc:  # noqa: BLE001
        return _remote_error_response(exc, cord)
    return _Stream(_stream_body(first, iterator, cord), release, media_type=cord.stream_content_type)


async def _passthrough(cord: Cord, state: InstanceState, body: bytes, payload: Any, release: Callable) -> Response:
    import aiohttp

    url = f"http://127.0.0.1:{cord.passthrough_port}{cord.passthrough_path}"
    stream = cord.stream or (isinstance(payload, dict) and payload.get("stream") is True)
    if state.session is None:
        state.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
    try:
        upstream = await state.session.request(cord.method, url, data=body or None,
                                               headers={"Content-Type": "application/json"})
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        return error_response(502, "upstream_unavailable", f"passthrough upstream {url} is unavailable: {exc}")
    media_type = upstream.headers.get("Content-Type", "application/octet-stream")
    if stream and upstream.status < 400:
        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                async for chunk in upstream.content.iter_any():
                    yield chunk
            finally:
                upstream.release()
        return _Stream(chunks(), release, status_code=upstream.status, media_type=media_type)
    try:
        data = await upstream.read()
    finally:
        upstream.release()
    return Response(data, status_code=upstream.status, media_type=media_type)


def _openapi(app: FastAPI, chute: Chute) -> Callable[[], dict]:
    def build() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=f"{chute.username}/{chute.name}", version=__version__,
                             description=chute.readme or chute.tagline or None, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})

        def hoist(part: dict | None, tp: Any) -> dict | None:
            if part is None:
                return None
            part = dict(part)
            components.update(part.pop("$defs", {}))
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                components[tp.__name__] = part
                return {"$ref": _REF.format(model=tp.__name__)}
            return part

        for cord in chute.cords.values():
            operation = schema.get("paths", {}).get(cord.path, {}).get(cord.method.lower())
            if operation is None:
                continue
            body = hoist(cord.input_schema(_REF), None if cord._input_schema_override else cord.input_type)
            if cord.takes_input:
                operation["requestBody"] = {"required": cord.input_type is not None,
                                            "content": {"application/json": {"schema": body or {}}}}
            out = hoist(cord.output_schema(_REF), None if cord._output_schema_override else cord.output_type)
            media = cord.output_content_type
            content = {media: {"schema": out or ({"type": "string"} if cord.stream else {})}}
            operation["responses"] = {
                "200": {"description": "the cord's result" + (" (streamed)" if cord.stream else ""), "content": content},
                "422": {"description": "invalid payload (error.detail holds pydantic errors with loc)"},
                "429": {"description": "busy: the instance's concurrency is used up"},
                "500": {"description": "remote_error: the cord raised (type, message, traceback)"},
            }
        app.openapi_schema = schema
        return schema
    return build


def create_app(chute: Chute, dev: bool = False, *, concurrency: int | None = None, instance_id: str | None = None,
               on_startup_failed: Callable[[BaseException], Any] | None = None,
               local_dependencies: bool = False) -> FastAPI:
    """The FastAPI app serving ``chute``. ``dev``: permissive CORS and local dependencies;
    ``local_dependencies`` (``dev`` implies it; the miner asks for it): dependencies of the
    chute without a URL in CANOPY_CHUTE_URLS run in-process, from the chute's own code."""
    state = InstanceState(chute, concurrency or chute.concurrency,
                          instance_id or os.environ.get("CANOPY_INSTANCE_ID", "") or "local")

    async def startup() -> None:
        try:
            if dev or local_dependencies:
                from canopy.chains import start_local_dependencies

                state.local_graph = await start_local_dependencies(chute)
            await chute.run_startup()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported by health, then the process exits (SystemExit too)
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.error("startup of chute {}/{} failed, the instance will exit: {}", chute.username, chute.name,
                         "".join(traceback.format_exception(exc)).strip())
            if on_startup_failed is not None:
                on_startup_failed(exc)
            return
        state.status, state.ready_after_s = "ready", round(time.monotonic() - state.started_at, 3)
        logger.info("chute {}/{} ready after {:.2f}s ({} cords, concurrency {})", chute.username, chute.name,
                    state.ready_after_s, len(chute.cords), state.concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        chute._set_hosted(True)
        task = asyncio.create_task(startup())
        try:
            yield
        finally:
            previous, state.status = state.status, "stopping"
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if previous == "ready":
                logger.info("stopping chute {}/{}: running shutdown hooks", chute.username, chute.name)
                with contextlib.suppress(Exception):
                    await chute.run_shutdown()
            graph = state.local_graph
            if graph is not None:
                with contextlib.suppress(Exception):
                    await graph.stop()
            if state.session is not None:
                await state.session.close()
            chute._set_hosted(False)

    app = FastAPI(title=f"{chute.username}/{chute.name}", version=__version__, lifespan=lifespan,
                  description=chute.readme or chute.tagline or "")
    app.state.canopy = state
    if dev:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

    @app.get("/_canopy/health", include_in_schema=False)
    async def health() -> JSONResponse:
        status, body = state.health()
        return JSONResponse(body, status_code=status)

    @app.get("/_canopy/info", include_in_schema=False)
    async def info() -> JSONResponse:
        return JSONResponse(chute.describe().model_dump(mode="json"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no cord at {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return error_response(exc.status_code, kind, message)

    for cord in chute.cords.values():
        app.add_api_route(cord.path, _make_handler(cord, state), methods=[cord.method], name=cord.name,
                          summary=cord.name, description=(cord.func.__doc__ or "").strip() or None)
    app.openapi = _openapi(app, chute)  # type: ignore[method-assign]  # FastAPI's documented way to replace the schema
    return app


# -- the process ------------------------------------------------------------------------


def _setup_logging(role: str) -> None:
    try:
        from canopy.logging import LoggingSettings
        from canopy.logging import setup_logging

        setup_logging(LoggingSettings(debug=bool(os.environ.get("CANOPY_DEBUG"))), role=role)
    except Exception:  # noqa: BLE001 - logging must never stop an instance
        pass


def serve(ref: str | Chute, host: str = "127.0.0.1", port: int = 8000, *, concurrency: int | None = None,
          dev: bool = False, graceful_timeout_s: float = 30.0, failed_exit_delay_s: float | None = None,
          uds: str | None = None, fd: int | None = None, local_dependencies: bool = False) -> int:
    """Serve a chute until SIGTERM/SIGINT; the exit code (0, 2 load failed, 3 startup failed)."""
    import uvicorn

    try:
        chute = ref if isinstance(ref, Chute) else load_chute(ref)
    except ChuteLoadError as exc:
        logger.error("cannot load chute {}: {}", ref, exc)
        return LOAD_FAILED_EXIT
    delay = failed_exit_delay_s if failed_exit_delay_s is not None else float(
        os.environ.get("CANOPY_FAILED_EXIT_DELAY_S", "1.0"))
    exit_code = 0
    server: uvicorn.Server | None = None

    def startup_failed(_: BaseException) -> None:
        nonlocal exit_code
        exit_code = STARTUP_FAILED_EXIT
        asyncio.get_running_loop().call_later(delay, setattr, server, "should_exit", True)

    app = create_app(chute, dev=dev, concurrency=concurrency, on_startup_failed=startup_failed,
                     local_dependencies=local_dependencies)
    config = uvicorn.Config(app, host=host, port=port, uds=uds, fd=fd, log_config=None, access_log=dev, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s,  # type: ignore[arg-type]  # uvicorn annotates int; a float works
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    logger.info("serving chute {}/{} ({}) on {} (concurrency {})", chute.username, chute.name, chute.chute_id,
                f"unix:{uds}" if uds else f"fd {fd}" if fd is not None else f"http://{host}:{port}",
                concurrency or chute.concurrency)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with these no-op handlers in
    # place that re-raise is harmless, so a stopped instance exits 0 instead of dying by signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(server.serve())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if exit_code:
        logger.error("chute {}/{} exited: a startup hook failed", chute.username, chute.name)
    elif not server.started:
        return 1  # e.g. the port was taken (uvicorn logged why)
    return exit_code


def describe(ref: str) -> int:
    """Print the ChuteInfo JSON of ``ref`` on stdout (exit 0), or why it cannot load on stderr (exit 2)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # a chatty module must not corrupt the JSON
            info = load_chute(ref).describe()
    except ChuteLoadError as exc:
        print(f"error: cannot load chute {ref!r}: {exc}", file=sys.stderr)
        return LOAD_FAILED_EXIT
    except Exception as exc:  # noqa: BLE001 - e.g. a schema pydantic cannot build
        print(f"error: cannot describe chute {ref!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return LOAD_FAILED_EXIT
    sys.stdout.write(info.model_dump_json() + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canopy.instance", description="Serve or describe one chute.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve the chute over HTTP until SIGTERM")
    run.add_argument("ref", help="MODULE:ATTR or path/to/file.py:ATTR (ATTR defaults to chute)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--uds", default=None, help="serve on this Unix socket instead of host:port (a container)")
    run.add_argument("--fd", type=int, default=None, help="serve on this inherited listening Unix socket (the miner's "
                                                           "sandbox: the miner binds it where the chute cannot reach)")
    run.add_argument("--concurrency", type=int, default=None, help="override the chute's concurrency")
    run.add_argument("--dev", action="store_true", help="development mode (CORS, local dependencies)")
    run.add_argument("--local-dependencies", action="store_true",
                     help="run the chutes this one depends on in this process when CANOPY_CHUTE_URLS names none (the miner)")
    run.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    info = commands.add_parser("describe", help="print the ChuteInfo JSON")
    info.add_argument("ref")
    args = parser.parse_args(argv)
    if args.command == "describe":
        return describe(args.ref)
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    _setup_logging("instance")
    return serve(args.ref, args.host, args.port, concurrency=args.concurrency, dev=args.dev,
                 graceful_timeout_s=args.graceful_timeout, uds=args.uds, fd=args.fd,
                 local_dependencies=args.local_dependencies)


if __name__ == "__main__":
    sys.exit(main())
