"""One sandboxed start of a chute instance: its policy, cgroup, network and scratch folder.

The seam between ``miner.instances`` (which supervises instances and does not care how one
is confined) and the node's confinement parts: ``node.sandbox`` (bubblewrap), ``node.egress``
(slirp4netns for chutes with ``allow_external_egress``) and ``miner.limits`` (the cgroup's
memory and process caps). ``InstanceSandbox.prepare`` makes a fresh scratch folder and the
policy; ``command`` wraps the instance's command line; ``started`` finishes what needs the
process (egress); ``close`` undoes it all when the process is gone.

What a sandboxed instance is given: a registry chute its unpacked bundle as working directory;
a pinned chute (the hosting file's, the operator's own code) only the folder its reference
lives in (``node.sandbox.ref_root``), with the node's secrets inside it masked, and the
miner's working directory as its own, empty but for that; either one its cached environment
(``miner.environments``) read-only when its image pip-installs something.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import psutil
from loguru import logger

from miner.limits import InstanceCgroup
from node.egress import Egress
from node.sandbox import SandboxPolicy, hidden_from_chutes, ref_root, sandboxed


@dataclass
class InstanceSandbox:
    """What one sandboxed start of an instance holds (see the module docstring)."""

    policy: SandboxPolicy
    listener: socket.socket
    cgroup: InstanceCgroup | None = None
    egress: Egress | None = None

    @property
    def scratch(self) -> Path:
        return self.policy.scratch

    @property
    def socket(self) -> Path:
        """Where the miner reaches the instance: a socket the miner bound in its own folder (beside
        the scratch folder, never inside the sandbox: the chute cannot swap it for a link to
        another socket of the host), whose listening fd the instance inherits (``--fd``)."""
        return Path(self.listener.getsockname())

    def serve_args(self) -> list[str]:
        return ["--fd", str(self.listener.fileno())]

    @classmethod
    def prepare(cls, *, tag: str, ref: str, bundle: str | None, cwd: str, gpu_indexes: Sequence[int],
                env: Mapping[str, str], environment: Path | None, egress: bool,
                egress_prohibited: Sequence[str] = ()) -> "InstanceSandbox":
        """A fresh scratch folder, the listening socket and the policy (EgressUnavailable first)."""
        way_out = Egress(egress_prohibited) if egress else None
        scratch = scratch_folder(tag)
        scratch.mkdir(mode=0o700)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(scratch.parent / f"{scratch.name}.sock"))
        listener.listen(1024)
        listener.set_inheritable(True)
        readonly: list[Path] = [environment] if environment is not None else []
        masked: tuple[Path, ...] = ()
        chdir = None
        if bundle is None:  # a pinned chute: only the folder its reference names, in the miner's cwd
            root = ref_root(ref, Path(cwd))
            if root is not None:  # else a module of the runtime: it works in its scratch folder
                readonly.append(root)
                masked = hidden_from_chutes([root])
                chdir = Path(cwd)
        policy = SandboxPolicy(bundle=Path(bundle) if bundle else None, scratch=scratch, gpu_indexes=tuple(gpu_indexes),
                               env=dict(env), readonly=tuple(readonly), masked=masked, chdir=chdir,
                               network="egress" if egress else "none")
        return cls(policy=policy, listener=listener, egress=way_out)

    def command(self, command: Sequence[str], *, name: str, memory_mb: int, max_pids: int) -> list[str]:
        """``command`` in the sandbox, in a network namespace of its own (with egress when asked),
        in a cgroup of its own (``name``) where the host allows one."""
        wrapped = sandboxed(command, self.policy)
        if self.egress is not None:
            wrapped = self.egress.wrap(wrapped)
        self.cgroup = InstanceCgroup.create(name, memory_bytes=memory_mb << 20, max_pids=max_pids)
        if self.cgroup is None:
            logger.warning("{}: no cgroup can be made here: it runs without memory and process caps", name)
            return wrapped
        return self.cgroup.entered(wrapped)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.listener.fileno(), *(self.egress.pass_fds if self.egress is not None else ()))

    async def started(self, pid: int) -> None:
        """The process ``pid`` runs: connect its network to the outside if it has egress."""
        if self.egress is not None:
            await self.egress.attach(pid)

    @staticmethod
    def terminate(pid: int) -> None:
        """SIGTERM what runs inside the sandbox of process ``pid`` (not bubblewrap itself: it would
        exit at once and take the instance with it by SIGKILL, before its graceful shutdown)."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name() != "bwrap":
                        child.send_signal(signal.SIGTERM)

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()

    async def close(self) -> None:
        """Once the process is gone: end its egress, remove its cgroup and scratch folder."""
        if self.egress is not None:
            await self.egress.close()
        with contextlib.suppress(OSError):
            path = self.socket
            self.listener.close()
            path.unlink()
        shutil.rmtree(self.policy.scratch, ignore_errors=True)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
            self.cgroup = None


def scratch_folder(tag: str) -> Path:
    """A new scratch folder's path for one start of an instance (not made yet), in the miner's
    ``canopy-TAG`` folder (made, 0700): short, since a Unix socket path must fit 108 bytes."""
    parent = Path(tempfile.gettempdir()) / f"canopy-{tag}"
    parent.mkdir(mode=0o700, exist_ok=True)
    scratch = parent / secrets.token_hex(4)
    shutil.rmtree(scratch, ignore_errors=True)
    return scratch


def pip_build_sandbox(command: list[str], work: Path, scratch: Path) -> list[str]:
    """``miner.environments``' pip run in bubblewrap: the node's network (pip reaches the
    package index; wheels only, so no package code runs), ``work`` the only folder it writes."""
    policy = SandboxPolicy(bundle=None, scratch=scratch, writable=(work,), chdir=scratch, network="host",
                           env={"PIP_NO_CACHE_DIR": "1", **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}})
    return sandboxed(command, policy)
