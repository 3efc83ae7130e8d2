"""Container runtime: a registry chute's instance in the image its author described.

The seam between ``miner.instances`` (``--chutes.runtime container``) and a container engine
on the GPU host: Podman (GPUs through CDI, ``nvidia-ctk cdi generate``) or Docker (with the
NVIDIA Container Toolkit). Unlike the bubblewrap sandbox it runs every step of the chute's
``Image``, root-only ones included (``apt_install``, ``run_command``), since they run inside
the image build, not on the host.

- ``ContainerEngine.detect`` finds an engine that answers (``podman info`` / ``docker info``)
  or raises ``ContainerUnavailable`` naming the fix.
- ``build_context`` writes the build folder of one revision: the chute's own Dockerfile
  (``ChuteInfo.dockerfile``, rendered from its ``Image`` when the bundle is inspected) plus a
  layer of ours: the Canopy SDK's requirements and package, the bundle in ``/app``, the user
  ``65534``. ``ContainerImages.ensure`` builds it once per revision (``canopy-chute:<rev>``).
- ``run_command`` is the instance's ``<engine> run``: no capabilities, no new privileges, a
  read-only root with a private ``/tmp``, user 65534, ``--memory``/``--pids-limit``, its GPUs
  only, no network (``--network none``) unless the chute allows external egress (Podman:
  slirp4netns without the host's loopback; Docker: its default bridge, so firewall the
  bridge's gateway on such hosts), and the scratch folder bind-mounted at the same path: the
  instance serves on a Unix socket there, which the miner reaches as it does a sandboxed one.

Tested here: the build folder and the run command line (``tests/miner/test_containers.py``).
Not tested here: a live engine (the build machines have neither a Docker daemon nor Podman);
the README says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from loguru import logger

import canopy
from canopy.image import DEFAULT_BASE
from miner.processes import run_logged

ENGINES = ("podman", "docker")
SOCKET_NAME = "instance.sock"  # in the container's scratch folder
CONTAINER_USER = "65534:65534"
APP = "/app"
SDK = "/opt/canopy-sdk"
BUILD_TIMEOUT_S = 3600.0


class ContainerUnavailable(RuntimeError):
    """No container engine answers here; the message names the fix."""


@dataclass(frozen=True)
class ContainerEngine:
    """One engine binary (``podman`` or ``docker``) whose service answered."""

    name: str
    binary: str

    @classmethod
    def detect(cls, preferred: str | None = None) -> "ContainerEngine":
        """The first engine (``preferred`` only, when given) whose ``info`` succeeds."""
        problems = []
        for name in [preferred] if preferred else ENGINES:
            binary = shutil.which(name)
            if binary is None:
                problems.append(f"{name} is not installed")
                continue
            try:
                answer = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as error:
                problems.append(f"`{name} info` failed ({error})")
                continue
            if answer.returncode == 0:
                return cls(name=name, binary=binary)
            lines = (answer.stderr or answer.stdout).strip().splitlines()
            problems.append(f"`{name} info` failed ({lines[-1] if lines else 'no reason'})")
        raise ContainerUnavailable(
            f"--chutes.runtime container needs Podman or Docker answering on this host: {'; '.join(problems)}. "
            f"Install one (apt-get install podman, with `nvidia-ctk cdi generate` for the GPUs; or Docker with the "
            f"NVIDIA Container Toolkit) and start it, or use --chutes.runtime sandbox")

    def gpu_flags(self, uuids: Sequence[str]) -> list[str]:
        """Only these GPUs: CDI devices (Podman) or ``--gpus device=...`` (Docker)."""
        if not uuids:
            return []
        if self.name == "podman":
            return [flag for uuid in uuids for flag in ("--device", f"nvidia.com/gpu={uuid}")]
        return ["--gpus", f"\"device={','.join(uuids)}\""]

    def network_flags(self, egress: bool) -> list[str]:
        if not egress:
            return ["--network", "none"]
        if self.name == "podman":
            return ["--network", "slirp4netns:allow_host_loopback=false"]
        return ["--network", "bridge"]


def image_tag(revision: str) -> str:
    return f"canopy-chute:{revision[:32]}"


def sdk_requirements() -> list[str]:
    """The Canopy SDK's own requirements (its installed metadata), for the image's layer."""
    try:
        requires = importlib.metadata.requires("canopy") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    return sorted(r for r in requires if "extra ==" not in r)


def build_context(folder: Path, *, dockerfile: str, bundle: Path) -> Path:
    """Write the build folder: the chute's Dockerfile, then our layer (SDK, bundle, user)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(bundle, folder / "bundle", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(Path(canopy.__file__).parent, folder / "canopy-sdk" / "canopy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (folder / "canopy-sdk" / "requirements.txt").write_text("\n".join(sdk_requirements()) + "\n")
    own = dockerfile.strip() or f"FROM {DEFAULT_BASE}"
    layer = [
        "",
        "# --- added by the Canopy miner: the SDK, the chute's bundle, an unprivileged user ---",
        "USER root",
        f"COPY canopy-sdk {SDK}",
        f"RUN python -m pip install --no-cache-dir -r {SDK}/requirements.txt",
        f"COPY bundle {APP}",
        f'ENV PYTHONPATH="{SDK}:{APP}" PYTHONUNBUFFERED="1" PYTHONDONTWRITEBYTECODE="1"',
        f"WORKDIR {APP}",
        f"USER {CONTAINER_USER}",
        "ENTRYPOINT []",
    ]
    (folder / "Dockerfile").write_text(own + "\n" + "\n".join(layer) + "\n")
    return folder


def run_command(engine: ContainerEngine, *, name: str, tag: str, scratch: Path, gpu_uuids: Sequence[str],
                env: dict[str, str], memory_mb: int, max_pids: int, egress: bool, serve: Sequence[str]) -> list[str]:
    """``<engine> run`` of one instance serving ``serve`` (``canopy.instance``'s arguments: ``serve
    REF --uds SOCKET ...``, the socket in ``scratch``; see the module docstring)."""
    command = [engine.binary, "run", "--rm", "--init", "--name", name, "--user", CONTAINER_USER,
               "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--memory", f"{memory_mb}m", "--memory-swap", f"{memory_mb}m", "--pids-limit", str(max_pids),
               *engine.network_flags(egress), *engine.gpu_flags(gpu_uuids),
               "--volume", f"{scratch}:{scratch}:rw", "--env", f"HOME={scratch}"]
    for key, value in sorted(env.items()):
        command += ["--env", f"{key}={value}"]
    return [*command, tag, "python", "-m", "canopy.instance", *serve]


class ContainerImages:
    """One image per revision, built at the first instance of it (later ones reuse it)."""

    def __init__(self, engine: ContainerEngine, root: Path) -> None:
        self.engine, self.root = engine, root
        self.builds = 0
        self._building: dict[str, asyncio.Future[str]] = {}

    async def ensure(self, *, revision: str, dockerfile: str, bundle: Path) -> str:
        tag = image_tag(revision or hashlib.sha256(dockerfile.encode()).hexdigest())
        if await self._exists(tag):
            return tag
        if tag not in self._building:
            self._building[tag] = asyncio.ensure_future(self._build(tag, dockerfile, bundle))
            self._building[tag].add_done_callback(lambda _: self._building.pop(tag, None))
        return await asyncio.shield(self._building[tag])

    async def _exists(self, tag: str) -> bool:
        answer = await asyncio.to_thread(subprocess.run, [self.engine.binary, "image", "inspect", tag],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return answer.returncode == 0

    async def _build(self, tag: str, dockerfile: str, bundle: Path) -> str:
        self.builds += 1
        context = await asyncio.to_thread(build_context, self.root / re.sub(r"[^a-z0-9]", "-", tag), dockerfile=dockerfile,
                                          bundle=bundle)
        logger.info("container image {}: {} build (first instance of this revision here)", tag, self.engine.name)
        try:
            await asyncio.to_thread(run_logged, [self.engine.binary, "build", "--tag", tag, str(context)],
                                    label=f"container image {tag}", what=f"{self.engine.name} build",
                                    env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout_s=BUILD_TIMEOUT_S,
                                    progress=("STEP", "Step", "#"))
        finally:
            shutil.rmtree(context, ignore_errors=True)
        return tag


@dataclass
class InstanceContainer:
    """One container start of an instance: the twin of ``miner.sandboxing.InstanceSandbox``
    for ``miner.instances`` (scratch folder and socket, command, terminate, close)."""

    engine: ContainerEngine
    name: str
    tag: str
    scratch: Path
    gpu_uuids: tuple[str, ...]
    env: dict[str, str]
    egress: bool
    pass_fds: tuple[int, ...] = ()

    @property
    def socket(self) -> Path:
        return self.scratch / SOCKET_NAME

    def serve_args(self) -> list[str]:
        return ["--uds", str(self.socket)]

    @classmethod
    def prepare(cls, engine: ContainerEngine, *, tag: str, name: str, scratch: Path, gpu_uuids: Sequence[str],
                env: dict[str, str], egress: bool) -> "InstanceContainer":
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        scratch.chmod(0o777)  # the container's user 65534 serves its socket here (the folder above is the miner's, 0700)
        scratch.parent.chmod(0o711)
        return cls(engine=engine, name=name, tag=tag, scratch=scratch, gpu_uuids=tuple(gpu_uuids), env=env,
                   egress=egress)

    def command(self, serve: Sequence[str], *, memory_mb: int, max_pids: int) -> list[str]:
        """``<engine> run`` of ``python -m canopy.instance SERVE...`` in the chute's image."""
        return run_command(self.engine, name=self.name, tag=self.tag, scratch=self.scratch, gpu_uuids=self.gpu_uuids,
                           env=self.env, memory_mb=memory_mb, max_pids=max_pids, egress=self.egress, serve=serve)

    async def started(self, pid: int) -> None:
        """Nothing to finish: the engine set the container's network up."""

    @staticmethod
    def terminate(pid: int) -> None:
        """SIGTERM the engine's client: it passes the signal on to the container (``--init``)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def oom_killed(self) -> bool:
        try:
            answer = subprocess.run([self.engine.binary, "inspect", "--format", "{{.State.OOMKilled}}", self.name],
                                    capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return answer.stdout.strip() == "true"

    async def close(self) -> None:
        await asyncio.to_thread(subprocess.run, [self.engine.binary, "rm", "--force", self.name],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.scratch, ignore_errors=True)
