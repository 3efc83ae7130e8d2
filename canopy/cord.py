"""Cord: one route of a chute (a decorated function), its validation and its schemas.

Made with ``@chute.cord(...)``; an instance serves each as one FastAPI route, ``CordInfo``
describes it (what a miner's ``Inventory`` lists), and Python code can await it (over
``CANOPY_DEV_URL`` in dev mode, directly inside ``run_local``). The request body is the
function's first argument after ``self``, validated into its type hint (a pydantic model, or
anything pydantic's TypeAdapter understands); no hint, ``Any`` or a plain ``dict`` pass the
JSON through.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import traceback
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationError

if TYPE_CHECKING:
    from canopy.chute import Chute

RESERVED_PREFIX = "/_canopy"
#: where a passthrough cord forwards when it names no port (as in the Chutes SDK)
DEFAULT_PASSTHROUGH_PORT = 8000
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]*$")
_STREAM_ORIGINS = {"AsyncIterator", "AsyncGenerator", "AsyncIterable", "Iterator", "Generator"}
_HERE = os.path.dirname(os.path.abspath(__file__))
_INTERNAL_FILES = {os.path.join(_HERE, name) for name in ("cord.py", "instance.py", "chains.py", "chute.py")}
_INTERNAL_DIRS = tuple(os.path.dirname(m.__file__ or "") for m in (asyncio,)) + (
    os.sep + "anyio" + os.sep, os.sep + "concurrent" + os.sep, os.sep + "starlette" + os.sep)


class CordDefinitionError(ValueError):
    """A cord is declared wrongly (bad path, duplicate route, unusable signature)."""


class CordInfo(BaseModel):
    """What a cord looks like from outside: route, streaming, schemas."""

    path: str
    method: str
    stream: bool
    passthrough: bool
    public_api_path: str
    public_api_method: str
    input_schema: dict | None
    minimal_input_schema: dict | None
    output_schema: dict | None
    output_content_type: str


def validate_path(path: Any, what: str = "path") -> str:
    """``path`` as a cord route, else CordDefinitionError saying what is wrong.

    As in the Chutes SDK, ``"echo"`` means ``"/echo"`` and a trailing ``/`` is dropped, so
    chutes written for it keep their paths."""
    if not isinstance(path, str) or not path.strip("/"):
        if path != "/":
            raise CordDefinitionError(f"cord {what} must be a non-empty string such as '/echo', got {path!r}")
    path = "/" + path.lstrip("/") if not path.startswith("/") else path
    if len(path) > 1 and path.endswith("/") and not path.endswith("//"):
        path = path[:-1]
    if not _PATH_RE.match(path):
        raise CordDefinitionError(f"cord {what} {path!r} may only contain letters, digits and _ . / -")
    if ".." in path or "//" in path:
        raise CordDefinitionError(f"cord {what} {path!r} must not contain '..' or '//'")
    if path.startswith(RESERVED_PREFIX):
        raise CordDefinitionError(f"cord {what} {path!r} is reserved: paths under {RESERVED_PREFIX} belong to the instance")
    return path


def validate_method(method: Any, what: str = "method") -> str:
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise CordDefinitionError(f"cord {what} must be one of {', '.join(METHODS)}, got {method!r}")
    return method.upper()


def exception_frames(exc: BaseException) -> list[dict]:
    """The traceback of ``exc`` as [{"file","line","function","code"}], SDK plumbing left out."""
    frames = []
    for frame in traceback.extract_tb(exc.__traceback__):
        path = os.path.abspath(frame.filename)
        if path in _INTERNAL_FILES or any(d in path for d in _INTERNAL_DIRS) or path.endswith(os.sep + "threading.py"):
            continue
        frames.append({"file": frame.filename, "line": frame.lineno, "function": frame.name, "code": frame.line or ""})
    return frames


def remote_error(exc: BaseException) -> dict:
    """The ``remote`` part of a typed error: exception type, message and frames."""
    return {"type": type(exc).__name__, "message": str(exc), "traceback": exception_frames(exc)}


def validation_detail(exc: ValidationError) -> list[dict]:
    """pydantic's errors as JSON (``loc``, ``msg``, ``type``, ``input``), without doc URLs."""
    return json.loads(exc.json(include_url=False, include_context=False))


def validation_message(detail: list[dict]) -> str:
    """'invalid payload: foo: Field required; ...' from ``validation_detail``."""
    fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or '(body)'}: {e.get('msg')}" for e in detail)
    return f"invalid payload: {fields}"


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (pydantic models, dataclasses, datetimes ... converted)."""
    return pydantic_core.to_jsonable_python(value)


def encode_chunk(chunk: Any) -> bytes:
    """One streamed chunk on the wire: str/bytes as-is, anything else as an SSE ``data:`` event."""
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode()
    if isinstance(chunk, BaseModel):
        return b"data: " + chunk.model_dump_json().encode() + b"\n\n"
    return b"data: " + json.dumps(to_jsonable(chunk), separators=(",", ":")).encode() + b"\n\n"


def is_async_iterator(value: Any) -> bool:
    return hasattr(value, "__aiter__") and not isinstance(value, (str, bytes, dict, BaseModel))


def _schema(tp: Any, ref_template: str | None = None) -> dict | None:
    if tp is None:
        return None
    if isinstance(tp, dict):
        return tp
    try:
        adapter = TypeAdapter(tp)
        return adapter.json_schema(ref_template=ref_template) if ref_template else adapter.json_schema()
    except Exception:  # noqa: BLE001 - a type pydantic cannot describe simply has no schema
        return None


def _stream_item(tp: Any) -> Any:
    """X for AsyncIterator[X] / AsyncGenerator[X, ...] / Iterator[X]; None when ``tp`` is no stream type."""
    origin = typing.get_origin(tp)
    if origin is not None and getattr(origin, "__name__", "") in _STREAM_ORIGINS:
        args = typing.get_args(tp)
        return args[0] if args else Any
    return None


async def _in_threads(iterator: typing.Iterator[Any]) -> typing.AsyncIterator[Any]:
    """A sync generator's items, each produced in a worker thread (the event loop keeps serving)."""
    done = object()
    try:
        while (item := await asyncio.to_thread(next, iterator, done)) is not done:
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


class Cord:
    """One route of a chute. Awaitable-callable: ``await cord(payload)`` (see ``__call__``)."""

    #: The body's type (a pydantic model or any type pydantic validates), None: JSON passed through.
    input_type: Any
    #: The reply's model, None for bytes, text or an unannotated reply.
    output_type: Any

    def __init__(self, chute: "Chute", func: Callable, *, path: str | None = None, method: str = "POST",
                 stream: bool = False, passthrough: bool = False, passthrough_path: str | None = None,
                 passthrough_port: int | None = None, public_api_path: str | None = None,
                 public_api_method: str | None = None, input_schema: Any = None, minimal_input_schema: Any = None,
                 output_content_type: str | None = None, output_schema: Any = None,
                 provision_timeout: int | float | None = None) -> None:
        if not callable(func):
            raise CordDefinitionError(f"@cord decorates a function, got {func!r}")
        self.chute = chute
        self.func = func
        self.name: str = getattr(func, "__name__", "cord")
        self.path = validate_path(path if path is not None else "/" + self.name)
        self.method = validate_method(method)
        self.public_api_path = validate_path(public_api_path if public_api_path is not None else self.path,
                                             "public_api_path")
        self.public_api_method = validate_method(public_api_method if public_api_method is not None else self.method,
                                                 "public_api_method")
        self.is_async_gen = inspect.isasyncgenfunction(func)
        self.is_gen = inspect.isgeneratorfunction(func)
        self.is_coroutine = inspect.iscoroutinefunction(func)
        self.stream = bool(stream) or self.is_async_gen or self.is_gen
        self.passthrough = bool(passthrough)
        if self.passthrough and passthrough_port is None:
            passthrough_port = DEFAULT_PASSTHROUGH_PORT  # the Chutes SDK's default upstream
        self.passthrough_port = passthrough_port
        self.passthrough_path = validate_path(passthrough_path if passthrough_path is not None else self.path,
                                              "passthrough_path")
        if self.passthrough and not (isinstance(passthrough_port, int) and 0 < passthrough_port < 65536):
            raise CordDefinitionError(f"passthrough cord {self.path!r} needs passthrough_port (1..65535), "
                                      f"got {passthrough_port!r}")
        self.output_content_type = output_content_type or ("text/event-stream" if self.stream else "application/json")
        #: the media type of a streamed reply (also when a non-stream cord returns an async iterator)
        self.stream_content_type = output_content_type or "text/event-stream"
        if provision_timeout is not None and (isinstance(provision_timeout, bool) or not isinstance(
                provision_timeout, (int, float)) or provision_timeout <= 0):
            raise CordDefinitionError(f"cord {self.name!r}: provision_timeout must be a positive number of seconds, "
                                      f"got {provision_timeout!r}")
        #: accepted for Chutes SDK compatibility (how long a remote caller waits for provisioning)
        self.provision_timeout = provision_timeout
        self._inspect_signature(input_schema, minimal_input_schema)
        self._output_schema_override: dict | None = None
        if isinstance(output_schema, dict):
            self._output_schema_override = output_schema
        elif isinstance(output_schema, type) and issubclass(output_schema, BaseModel):
            self.output_type = output_schema
        elif output_schema is not None:
            raise CordDefinitionError(f"cord {self.name!r}: output_schema must be a pydantic model class or a JSON "
                                      f"schema dict")
        self.__doc__ = func.__doc__
        self.__name__ = self.name
        self.__wrapped__ = func

    # -- signature and schemas -------------------------------------------------------

    def _inspect_signature(self, input_schema: Any, minimal_input_schema: Any) -> None:
        try:
            hints = typing.get_type_hints(self.func)
        except Exception:  # noqa: BLE001 - unresolvable (e.g. local) annotations: use them raw
            hints = dict(getattr(self.func, "__annotations__", {}))
        params = list(inspect.signature(self.func).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not positional:
            raise CordDefinitionError(f"cord {self.name!r} must take `self` (the chute) as its first argument")
        rest = positional[2:] + [p for p in params if p.kind == p.KEYWORD_ONLY]
        required = [p.name for p in rest if p.default is p.empty]
        if required:
            raise CordDefinitionError(f"cord {self.name!r}: the request body is the one argument after self; "
                                      f"{required} need defaults")
        body = positional[1] if len(positional) > 1 else None
        self.takes_input = body is not None
        hint = hints.get(body.name, inspect.Parameter.empty) if body is not None else None
        if isinstance(input_schema, type) and issubclass(input_schema, BaseModel):
            self.input_type = input_schema
        elif hint in (inspect.Parameter.empty, Any, None) or isinstance(hint, str):
            self.input_type = None  # JSON passes through unvalidated
        else:
            self.input_type = hint
        self._adapter = TypeAdapter(self.input_type) if self.input_type is not None else None
        self._input_schema_override = input_schema if isinstance(input_schema, dict) else None
        if input_schema is not None and self._input_schema_override is None and self.input_type is not input_schema:
            raise CordDefinitionError(f"cord {self.name!r}: input_schema must be a pydantic model class or a JSON schema dict")
        if minimal_input_schema is not None and not isinstance(minimal_input_schema, dict) and not (
                isinstance(minimal_input_schema, type) and issubclass(minimal_input_schema, BaseModel)):
            raise CordDefinitionError(f"cord {self.name!r}: minimal_input_schema must be a pydantic model class or a dict")
        self._minimal_input = minimal_input_schema
        out = hints.get("return")
        item = _stream_item(out) if out is not None else None
        if item is not None or self.stream:
            out = item if item not in (None, Any, str, bytes) else None
        if isinstance(out, type) and issubclass(out, (bytes, str)) or out in (None, type(None), Any):
            out = None
        elif isinstance(out, type) and out.__module__.startswith("starlette"):
            out = None
        self.output_type = out

    def input_schema(self, ref_template: str | None = None) -> dict | None:
        if self._input_schema_override is not None:
            return self._input_schema_override
        return _schema(self.input_type, ref_template)

    def minimal_input_schema(self, ref_template: str | None = None) -> dict | None:
        return _schema(self._minimal_input, ref_template)

    def output_schema(self, ref_template: str | None = None) -> dict | None:
        if self._output_schema_override is not None:
            return self._output_schema_override
        return _schema(self.output_type, ref_template)

    def info(self) -> CordInfo:
        return CordInfo(path=self.path, method=self.method, stream=self.stream, passthrough=self.passthrough,
                        public_api_path=self.public_api_path, public_api_method=self.public_api_method,
                        input_schema=self.input_schema(), minimal_input_schema=self.minimal_input_schema(),
                        output_schema=self.output_schema(), output_content_type=self.output_content_type)

    # -- calling ---------------------------------------------------------------------

    def validate(self, payload: Any) -> Any:
        """``payload`` as the function's argument; pydantic.ValidationError when it does not fit."""
        if self._adapter is None:
            return payload
        if isinstance(self.input_type, type) and isinstance(payload, self.input_type):
            return payload
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        return self._adapter.validate_python(payload)

    async def run(self, arg: Any) -> Any:
        """Call the function with an already validated argument: its result, or an async iterator."""
        args = (self.chute, arg) if self.takes_input else (self.chute,)
        if self.is_async_gen:
            return self.func(*args)
        if self.is_gen:
            return _in_threads(self.func(*args))
        if self.is_coroutine:
            result = await self.func(*args)
        else:
            result = await asyncio.to_thread(self.func, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def call_local(self, payload: Any = None) -> Any:
        """Validate ``payload`` and call the function in this process (passthrough: forward it)."""
        if self.passthrough:
            return await self._passthrough_local(payload)
        return await self.run(self.validate(payload))

    async def _passthrough_local(self, payload: Any) -> Any:
        import aiohttp

        if self._adapter is not None:
            self.validate(payload)
        url = f"http://127.0.0.1:{self.passthrough_port}{self.passthrough_path}"
        async with aiohttp.ClientSession() as session:
            async with session.request(self.method, url, json=to_jsonable(payload)) as response:
                if response.content_type == "application/json":
                    return await response.json()
                return await response.read()

    async def __call__(self, payload: Any = None, /, **fields: Any) -> Any:
        """Call the cord: directly where its chute is hosted (an instance, ``run_local``),
        else over HTTP at ``CANOPY_DEV_URL`` (``canopy run --dev``). ``fields`` build the payload
        when none is given: ``await echo(foo="bar")``. Streaming cords give an async iterator."""
        if payload is None and fields:
            payload = fields
        if self.chute.hosted:
            return await self.call_local(payload)
        url = os.environ.get("CANOPY_DEV_URL", "").strip()
        if not url:
            raise RuntimeError(
                f"cord {self.name!r} of chute {self.chute.username}/{self.chute.name} is not hosted in this process: "
                f"serve it with `canopy run MODULE:chute --dev --port 8000` and set CANOPY_DEV_URL=http://127.0.0.1:8000 "
                f"to call it from a script, or wrap the calls in `canopy.run_local(chute)`")
        from canopy.dev import call_cord

        return await call_cord(url, self, payload)

    def __repr__(self) -> str:
        return f"<Cord {self.method} {self.path} of {self.chute.username}/{self.chute.name}>"
