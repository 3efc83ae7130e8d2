"""Chute: one serverless app (cords + startup/shutdown hooks + hardware needs), and loading one.

The SDK's centre, shaped like the Chutes SDK so a chute written for it ports with an import
change::

    chute = Chute(username="me", name="echo", image="python:3.11-slim",
                  node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=24), concurrency=4)

    @chute.on_startup()
    async def init(self):
        self.prefix = ">"

    @chute.cord(public_api_path="/echo")
    async def echo(self, args: EchoArgs) -> EchoOut: ...

``load_chute`` loads one by reference (``module:attr`` or ``path/to/file.py:attr``), and
``Chute.describe`` gives its ``ChuteInfo`` (cords, schemas, hardware needs), which
``python -m canopy.instance describe`` prints for a host that never imports chute code.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from canopy.cord import Cord, CordDefinitionError, CordInfo
from canopy.image_environment import ImageEnvironment, image_environment
from canopy.node_selector import NodeSelector

if TYPE_CHECKING:
    from canopy.image import Image

__all__ = ["CANOPY_NAMESPACE", "Chute", "ChuteInfo", "ChuteLoadError", "CordInfo", "chute_id", "load_chute"]

#: The namespace of chute ids: ``uuid5(CANOPY_NAMESPACE, "username/name")``.
CANOPY_NAMESPACE = uuid.UUID("5c1e0a2b-7f3d-5e8a-9b64-0c4a7d2e1f90")
#: What a chute's username and name may be (the registry checks owners and names by the same rules).
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:-]{0,127}$")
F = TypeVar("F", bound=Callable[..., Any])


def chute_id(username: str, name: str) -> str:
    """The stable id of chute ``username/name``."""
    return str(uuid.uuid5(CANOPY_NAMESPACE, f"{username}/{name}"))


def check_username(value: Any, what: str = "chute username") -> str:
    """``value`` when it is a chute username (an owner), else ValueError naming ``what`` and the rule."""
    if not isinstance(value, str) or not USERNAME_RE.match(value):
        raise ValueError(f"{what} {value!r}: 1-64 letters, digits, _ . - (starting with a letter or digit)")
    return value


def check_chute_name(value: Any) -> str:
    """``value`` when it is a chute name, else ValueError naming the rule."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"chute name {value!r}: 1-128 letters, digits, _ . / : - (starting with a letter or digit)")
    return value


class ChuteLoadError(Exception):
    """A chute reference cannot be loaded; the message says what to fix."""


class ChuteInfo(BaseModel):
    """A chute as the miner and validator see it."""

    chute_id: str
    username: str
    name: str
    tagline: str
    readme: str
    image: str
    node_selector: NodeSelector
    concurrency: int
    max_instances: int
    cords: list[CordInfo]
    model: str = ""  # the model an LLM chute serves (OpenAI ``model``), "" for other chutes
    # what a runtime without containers serves of the image (canopy.image_environment)
    environment: ImageEnvironment = Field(default_factory=ImageEnvironment)
    # the Chutes SDK's field: the instance may open connections to the internet (never to the miner's ports)
    allow_external_egress: bool = False
    # the image as a Dockerfile (what a container runtime builds), "" when the chute names none
    dockerfile: str = Field("", max_length=65536)


def image_reference(image: Any) -> str:
    """A string naming ``image`` (a ``canopy.image.Image``, a tag string, or None -> "")."""
    if image is None:
        return ""
    if isinstance(image, str):
        return image
    for attr in ("reference", "uid", "tag_name"):
        value = getattr(image, attr, None)
        value = value() if callable(value) else value
        if isinstance(value, str) and value:
            return value
    username, name, tag = (getattr(image, a, None) for a in ("username", "name", "tag"))
    if isinstance(name, str):
        return f"{username}/{name}:{tag or 'latest'}" if username else f"{name}:{tag or 'latest'}"
    return str(image)


def dockerfile_of(image: Any) -> str:
    """``image`` as a Dockerfile: an ``Image``'s rendering, ``FROM ref`` for a reference, "" for none."""
    render = getattr(image, "render", None)
    if callable(render):
        return str(render())
    return f"FROM {image}\n" if isinstance(image, str) and image.strip() else ""


class Chute:
    """One app: its cords (routes), hooks, image and hardware needs. Hooks and cords get the
    Chute itself as ``self`` and keep their state on it (``self.model = ...``)."""

    def __init__(self, username: str, name: str, image: "Image | str | None" = None, readme: str = "",
                 tagline: str = "", node_selector: NodeSelector | dict | None = None,
                 concurrency: int = 1, max_instances: int = 1, allow_external_egress: bool = False,
                 **extra: Any) -> None:
        check_username(username)
        check_chute_name(name)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 1024:
            raise ValueError(f"chute concurrency must be an integer in 1..1024, got {concurrency!r}")
        if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
            raise ValueError(f"chute max_instances must be a positive integer, got {max_instances!r}")
        if not isinstance(allow_external_egress, bool):
            raise ValueError(f"allow_external_egress must be True or False, got {allow_external_egress!r}")
        try:
            selector = (node_selector if isinstance(node_selector, NodeSelector)
                        else NodeSelector.model_validate(node_selector or {}))
        except ValidationError as exc:
            raise ValueError(f"chute {username}/{name}: invalid node_selector: {exc}") from None
        self.username = username
        self.name = name
        self.chute_id = chute_id(username, name)
        self.image = image
        self.readme = readme or ""
        self.tagline = tagline or ""
        self.node_selector: NodeSelector = selector
        self.concurrency = concurrency
        self.max_instances = max_instances
        #: the instance may reach the internet (its sandbox still never reaches the miner's ports)
        self.allow_external_egress = allow_external_egress
        self.extra: dict[str, Any] = dict(extra)
        self.cords: dict[str, Cord] = {}
        self._startup: list[tuple[int, int, Callable]] = []  # (priority, order, hook)
        self._shutdown: list[tuple[int, int, Callable]] = []
        self._hosted = 0
        self._dependencies: list[Any] = []  # explicit ``uses`` entries (canopy.chains)
        #: The model an LLM chute serves (``ChuteInfo.model``); None for other chutes.
        self.model_name: str | None = None

    # -- declaration -----------------------------------------------------------------

    def cord(self, path: str | None = None, method: str = "POST", stream: bool = False, passthrough: bool = False,
             passthrough_path: str | None = None, passthrough_port: int | None = None,
             public_api_path: str | None = None, public_api_method: str | None = None, input_schema: Any = None,
             minimal_input_schema: Any = None, output_content_type: str | None = None, output_schema: Any = None,
             provision_timeout: int | float | None = None) -> Callable[[F], Cord]:
        """Decorator: make the function a cord (route) of this chute. See ``canopy.cord.Cord``."""
        if callable(path) and not isinstance(path, str):
            raise CordDefinitionError("use @chute.cord() with parentheses")

        def decorate(func: F) -> Cord:
            cord = Cord(self, func, path=path, method=method, stream=stream, passthrough=passthrough,
                        passthrough_path=passthrough_path, passthrough_port=passthrough_port,
                        public_api_path=public_api_path, public_api_method=public_api_method,
                        input_schema=input_schema, minimal_input_schema=minimal_input_schema,
                        output_content_type=output_content_type, output_schema=output_schema,
                        provision_timeout=provision_timeout)
            for other in self.cords.values():
                if other.path == cord.path and other.method == cord.method:
                    raise CordDefinitionError(
                        f"chute {self.username}/{self.name}: {cord.method} {cord.path} is already the cord "
                        f"{other.name!r}; give {cord.name!r} another path= (or method=)")
                if (other.public_api_path, other.public_api_method) == (cord.public_api_path, cord.public_api_method):
                    raise CordDefinitionError(
                        f"chute {self.username}/{self.name}: public API {cord.public_api_method} {cord.public_api_path} "
                        f"is already used by the cord {other.name!r}")
            key = cord.path if cord.path not in self.cords else f"{cord.method} {cord.path}"
            self.cords[key] = cord
            return cord

        return decorate

    def on_startup(self, priority: int = 50) -> Callable[[F], F]:
        """Decorator: run the function (sync or async, gets the chute as ``self``) before serving.
        Hooks run by ``priority`` (lower first), then in declaration order."""
        def decorate(func: F) -> F:
            self._startup.append((priority, len(self._startup), _check_hook(func, "on_startup")))
            self._startup.sort(key=lambda entry: entry[:2])
            return func
        return decorate

    def on_shutdown(self, priority: int = 50) -> Callable[[F], F]:
        """Decorator: run the function when the instance stops (SIGTERM, end of ``run_local``)."""
        def decorate(func: F) -> F:
            self._shutdown.append((priority, len(self._shutdown), _check_hook(func, "on_shutdown")))
            self._shutdown.sort(key=lambda entry: entry[:2])
            return func
        return decorate

    # -- hosting ---------------------------------------------------------------------

    @property
    def hosted(self) -> bool:
        """True while this process hosts the chute (an instance, ``run_local``): cords run directly."""
        return self._hosted > 0

    def _set_hosted(self, on: bool) -> None:
        self._hosted = max(0, self._hosted + (1 if on else -1))

    async def run_startup(self) -> None:
        """Run the startup hooks in declaration order (sync ones in a worker thread)."""
        for _, _, hook in self._startup:
            await _run_hook(hook, self)

    async def run_shutdown(self) -> None:
        """Run every shutdown hook (in declaration order) even if one raises; raise the first error after."""
        first: BaseException | None = None
        for _, _, hook in self._shutdown:
            try:
                await _run_hook(hook, self)
            except Exception as exc:  # noqa: BLE001 - later hooks still run
                from loguru import logger

                logger.error("shutdown hook {} of {}/{} raised: {}", hook.__name__, self.username, self.name,
                             "".join(traceback.format_exception(exc)).strip())
                first = first or exc
        if first is not None:
            raise first

    @property
    def startup_hooks(self) -> list[Callable]:
        return [hook for _, _, hook in self._startup]

    @property
    def shutdown_hooks(self) -> list[Callable]:
        return [hook for _, _, hook in self._shutdown]

    def describe(self) -> ChuteInfo:
        return ChuteInfo(chute_id=self.chute_id, username=self.username, name=self.name, tagline=self.tagline,
                         readme=self.readme, image=image_reference(self.image), node_selector=self.node_selector,
                         concurrency=self.concurrency, max_instances=self.max_instances,
                         cords=[c.info() for c in self.cords.values()], model=str(self.model_name or ""),
                         environment=image_environment(self.image), allow_external_egress=self.allow_external_egress,
                         dockerfile=dockerfile_of(self.image))

    def cord_by_name(self, name: str) -> Cord | None:
        """The cord whose function is called ``name`` (or whose path is ``/name``)."""
        for cord in self.cords.values():
            if cord.name == name:
                return cord
        return self.cords.get("/" + name.lstrip("/"))

    if TYPE_CHECKING:
        # Hooks and cords keep their own state on the chute (``self.engine = ...``).
        def __setattr__(self, name: str, value: Any) -> None: ...

    def __getattr__(self, item: str) -> Any:
        # Cords by function name (``self.other_cord(...)`` inside a cord), as in the Chutes SDK.
        if item.startswith("_") or "cords" not in self.__dict__:
            raise AttributeError(item)
        cord = self.cord_by_name(item)
        if cord is None:
            raise AttributeError(f"chute {self.username}/{self.name} has no attribute or cord {item!r}")
        return cord

    def __repr__(self) -> str:
        return f"<Chute {self.username}/{self.name} ({self.chute_id}) cords={list(self.cords)}>"


def _check_hook(func: Callable, what: str) -> Callable:
    if not callable(func):
        raise TypeError(f"@{what}() decorates a function, got {func!r}")
    positional = [p for p in inspect.signature(func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(positional) != 1:
        raise TypeError(f"@{what}() hook {func.__name__!r} must take exactly one argument (self, the chute)")
    return func


async def _run_hook(hook: Callable, chute: Chute) -> None:
    if inspect.iscoroutinefunction(hook):
        await hook(chute)
        return
    result = await asyncio.to_thread(hook, chute)
    if inspect.isawaitable(result):
        await result


# -- loading -----------------------------------------------------------------------------


def load_chute(ref: str) -> Chute:
    """The Chute named by ``ref``: "pkg.module:attr" or "path/to/file.py:attr" (attr defaults to
    "chute"). Raises ChuteLoadError with a message naming the fix."""
    if not isinstance(ref, str) or not ref.strip():
        raise ChuteLoadError("empty chute reference: give MODULE:ATTR (e.g. my_chute:chute) or path/to/file.py:chute")
    target, _, attr = ref.strip().rpartition(":") if ":" in ref else (ref.strip(), "", "chute")
    attr = attr or "chute"
    if not target:
        raise ChuteLoadError(f"chute reference {ref!r} has no module before ':'; use MODULE:ATTR")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(Path(target), ref)
    else:
        module = _import_module(target, ref)
    if not hasattr(module, attr):
        found = [k for k, v in vars(module).items() if isinstance(v, Chute)]
        hint = f"; it defines {', '.join(found)} (use {target}:{found[0]})" if found else "; it defines no Chute"
        raise ChuteLoadError(f"{target} has no attribute {attr!r}{hint}")
    value = getattr(module, attr)
    if inspect.isfunction(value):  # a factory: chute = make_chute()
        try:
            value = value()
        except Exception as exc:
            raise ChuteLoadError(f"{target}:{attr}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, Chute):
        raise ChuteLoadError(f"{target}:{attr} is a {type(value).__name__}, not a canopy.Chute; "
                             f"point the reference at the Chute object (chute = Chute(...))")
    return value


def _import_failed(what: str, exc: BaseException) -> ChuteLoadError:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return ChuteLoadError(f"importing {what} failed: {type(exc).__name__}: {exc}{where}; fix the module, "
                          f"or install what it imports in this environment")


def _import_module(name: str, ref: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ChuteLoadError(f"no module named {name!r} (from {ref!r}): run from the directory that holds it, "
                                 f"add it to PYTHONPATH, or give path/to/file.py:ATTR") from exc
        raise _import_failed(f"module {name!r}", exc) from exc
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a module body counts as a failure too
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise _import_failed(f"module {name!r}", exc) from exc


def _import_file(path: Path, ref: str) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ChuteLoadError(f"chute file {str(path)!r} (from {ref!r}) does not exist")
    module_name = path.stem if path.stem.isidentifier() else "canopy_chute_" + re.sub(r"\W", "_", path.stem)
    existing = sys.modules.get(module_name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == str(path):
        return existing
    if existing is not None:
        module_name = f"canopy_chute_{module_name}_{abs(hash(str(path))) % 10**8}"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ChuteLoadError(f"{str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise _import_failed(f"{str(path)!r}", exc) from exc
    return module
