"""Limits: a chute instance's memory and process caps, as a cgroup of its own.

The seam between ``miner.instances`` (which starts an instance) and the kernel's control
groups. ``InstanceCgroup.create(name, memory_bytes=..., max_pids=...)`` makes a cgroup under
the miner's own (cgroup v2 when the host has the unified hierarchy with the ``memory`` and
``pids`` controllers, else the v1 ``memory`` and ``pids`` hierarchies) and writes the caps;
``entered(command)`` prefixes a command so that its process joins the cgroup before it
execs (``sh -c 'echo $$ > cgroup.procs; exec ...'``: no window in which it could fork
outside), so everything the instance starts is counted too. An instance past its memory
cap is killed by the kernel (its caller gets ``instance_crashed`` and the supervisor
restarts it); one forking without end gets ``EAGAIN`` at the cap. ``remove()`` deletes the
cgroup once its processes are gone. Where no cgroup can be made (no permission), ``create``
returns None and the miner logs that the instance runs without caps.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from loguru import logger

ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _parents() -> dict[str, Path] | None:
    """Where an instance's cgroups go, per cap ("memory", "pids"); None when none is writable."""
    own = _own_paths()
    unified = ROOT / "cgroup.controllers"
    if unified.exists() and "" in own:  # cgroup v2
        base = ROOT / own[""].lstrip("/")
        available = set((base / "cgroup.controllers").read_text().split()) if (base / "cgroup.controllers").exists() else set()
        if {"memory", "pids"} <= available and os.access(base, os.W_OK):
            return {"memory": base, "pids": base}
        return None
    parents = {}
    for controller in ("memory", "pids"):
        base = ROOT / controller / own.get(controller, "/").lstrip("/")
        if not os.access(base, os.W_OK):
            return None
        parents[controller] = base
    return parents


@dataclass
class InstanceCgroup:
    folders: list[Path]  # one (v2) or one per controller (v1)

    @classmethod
    def create(cls, name: str, *, memory_bytes: int, max_pids: int) -> "InstanceCgroup | None":
        parents = _parents()
        if parents is None:
            return None
        folders: list[Path] = []
        try:
            for controller, parent in parents.items():
                folder = parent / name
                if folder not in folders:
                    folder.mkdir(exist_ok=True)
                    folders.append(folder)
                v2 = (folder / "memory.max").exists() or (folder / "cgroup.type").exists()
                if controller == "memory":
                    (folder / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(memory_bytes))
                    swap = folder / ("memory.swap.max" if v2 else "memory.memsw.limit_in_bytes")
                    with contextlib.suppress(OSError):  # no swap accounting here: the memory cap alone
                        swap.write_text("0" if v2 else str(memory_bytes))
                else:
                    (folder / "pids.max").write_text(str(max_pids))
        except OSError as error:
            logger.warning("cannot make the cgroup {} ({}): the instance runs without memory and process caps", name, error)
            cgroup = cls(folders)
            cgroup.remove()
            return None
        return cls(folders)

    def entered(self, command: Sequence[str]) -> list[str]:
        """``command``, joining this cgroup before it execs."""
        joins = " ".join(f"echo $$ > {shlex.quote(str(folder / 'cgroup.procs'))} &&" for folder in self.folders)
        return ["/bin/sh", "-c", f'{joins} exec "$@"', "canopy-instance", *command]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this cgroup for memory (v2 ``memory.events``,
        v1 ``memory.oom_control``: both count ``oom_kill``)."""
        for folder in self.folders:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError, ValueError):
                    counts = dict(line.split() for line in (folder / name).read_text().splitlines())
                    if int(counts.get("oom_kill", 0)) > 0:
                        return True
        return False

    def remove(self, wait_s: float = 2.0) -> None:
        """Delete the cgroup (its processes gone: the kernel refuses while any is left)."""
        deadline = time.monotonic() + wait_s
        for folder in self.folders:
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        logger.warning("cgroup {} still busy; left in place", folder)
                        break
                    time.sleep(0.05)
