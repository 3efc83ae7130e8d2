"""The dependency graph of chutes and ``run_local``: a whole chain hosted in one process.

Part of ``canopy.chains`` (re-exported there and as ``canopy.run_local``). Dependencies are
found from the ``depends(...)`` proxies that a chute's cords and hooks refer to (module
globals and closures named in their code), plus ``chute.uses(...)``-style explicit entries
(``chute._dependencies``). ``run_local`` hosts a graph for a script or a test;
``start_local_dependencies`` hosts a dev-mode instance's dependencies beside it.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

from canopy.chute import Chute


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names) | set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def dependencies_of(chute: Chute) -> list[Chute]:
    """The chutes that ``chute`` calls through ``depends(...)`` proxies, in first-use order."""
    from canopy.chains import ChuteProxy

    found: list[Chute] = []

    def add(value: Any) -> None:
        if isinstance(value, ChuteProxy):
            value = value.chute
        if isinstance(value, Chute) and value is not chute and value not in found:
            found.append(value)

    functions = [cord.func for cord in chute.cords.values()] + chute.startup_hooks + chute.shutdown_hooks
    for func in functions:
        func = getattr(func, "__func__", func)
        code = getattr(func, "__code__", None)
        if code is None:
            continue
        names = _code_names(code)
        namespace = getattr(func, "__globals__", {})
        for name in names:
            if isinstance(namespace.get(name), ChuteProxy):
                add(namespace[name])
        for cell in getattr(func, "__closure__", None) or ():
            try:
                add(cell.cell_contents) if isinstance(cell.cell_contents, ChuteProxy) else None
            except ValueError:  # an empty cell
                pass
    for extra in chute._dependencies:
        add(extra)
    return found


def dependency_order(roots: list[Chute], *, skip: Any = None) -> list[Chute]:
    """Every chute reachable from ``roots``, dependencies before their dependents.
    ``skip(chute)`` true leaves a dependency (and what only it needs) out. Cycles raise ValueError."""
    order: list[Chute] = []
    visiting: list[Chute] = []

    def visit(chute: Chute) -> None:
        if chute in order:
            return
        if chute in visiting:
            cycle = " -> ".join(f"{c.username}/{c.name}" for c in visiting[visiting.index(chute):] + [chute])
            raise ValueError(f"chutes depend on each other in a cycle: {cycle}")
        visiting.append(chute)
        for dep in dependencies_of(chute):
            if skip is None or not skip(dep):
                visit(dep)
        visiting.pop()
        order.append(chute)

    for root in roots:
        visit(root)
    return order


class LocalGraph:
    """Chutes hosted in this process: startup hooks (dependencies first) on start, shutdown
    hooks (reverse order) on stop; while started, their cords and proxies to them run directly.

    Use it as ``async with run_local(a, b):`` or ``with run_local(a, b) as graph:`` (sync: the
    hooks run on a private event loop; run coroutines there with ``graph.run(coro)``)."""

    def __init__(self, chutes: list[Chute], *, include_roots: bool = True, skip: Any = None) -> None:
        for chute in chutes:
            if not isinstance(chute, Chute):
                raise TypeError(f"run_local() takes Chute objects, got {chute!r}")
        order = dependency_order(list(chutes), skip=skip)
        self.chutes = order if include_roots else [c for c in order if c not in chutes]
        self.started: list[Chute] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> "LocalGraph":
        for chute in self.chutes:
            chute._set_hosted(True)
            self.started.append(chute)
            try:
                await chute.run_startup()
            except BaseException:
                await self.stop()
                raise
        return self

    async def stop(self) -> None:
        first: BaseException | None = None
        while self.started:
            chute = self.started.pop()
            try:
                await chute.run_shutdown()
            except Exception as exc:  # noqa: BLE001 - every chute still gets its shutdown
                first = first or exc
            finally:
                chute._set_hosted(False)
        if first is not None:
            raise first

    async def __aenter__(self) -> "LocalGraph":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> "LocalGraph":
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("run_local() inside a running event loop: use `async with canopy.run_local(...)`")
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self.start())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        try:
            self._loop.run_until_complete(self.stop())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            self._loop = None

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on the graph's loop (sync ``with`` use only)."""
        if self._loop is None:
            raise RuntimeError("graph.run() is for `with run_local(...) as graph:`; in async code just await")
        return self._loop.run_until_complete(coro)


def run_local(*chutes: Chute) -> LocalGraph:
    """Host ``chutes`` and everything they depend on in this process (a context manager)."""
    if not chutes:
        raise TypeError("run_local() needs at least one Chute")
    return LocalGraph(list(chutes))


async def start_local_dependencies(chute: Chute) -> LocalGraph:
    """Start, in this process, the dependencies of ``chute`` that CANOPY_CHUTE_URLS does not name."""
    from canopy.chains import chute_urls

    urls = chute_urls()

    def has_url(dep: Chute) -> bool:
        return dep.chute_id in urls or f"{dep.username}/{dep.name}" in urls

    return await LocalGraph([chute], include_roots=False, skip=has_url).start()
