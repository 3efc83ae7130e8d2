"""How one start of a chute instance is launched: where it runs, its command line, its environment.

The seam between ``miner.instances`` (which supervises instances and routes requests to them)
and the runtimes an instance can run on:

- a plain process serving a port of the miner's range (``--chutes.runtime process``);
- bubblewrap (``miner.sandboxing``, the default), serving a Unix socket the miner bound
  outside the sandbox (``--fd``);
- a registry chute's own image (``miner.containers``, ``--chutes.runtime container``),
  serving a socket in its scratch folder;

with the image's cached pip environment (``miner.environments``), whose interpreter then runs
the instance, and the refusal of what a runtime cannot run (``refusal``: the autoscaler's and
the hosting file's load-time check). Confined, the process the miner starts is the host-side
wrapper (cgroup shell, unshare, bubblewrap, the engine's client), which gets only ``PATH`` and
the locale: nothing of the miner's environment and nothing of the chute's (bubblewrap's PID 1
keeps what it was started with, and the chute can read ``/proc/1/environ``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from canopy.image_environment import ImageEnvironment
from miner.containers import ContainerImages, InstanceContainer
from miner.environments import EnvironmentCache
from miner.instance_state import Confinement, Instance, InstanceSpec
from miner.processes import LAUNCHER
from miner.sandboxing import InstanceSandbox, scratch_folder
from node.egress import SYSTEM_PATH
from node.egress import check_available as check_egress

#: what a container engine's client needs to find its service (the operator's own settings)
ENGINE_ENV = ("HOME", "XDG_RUNTIME_DIR", "DOCKER_HOST", "DOCKER_CONFIG", "CONTAINER_HOST", "CONTAINERS_CONF")


@dataclass
class Launcher:
    """The miner's runtime settings for its instances (see the module docstring); ``tag`` names
    this miner's scratch folders and cgroups apart from other miners' on the host."""

    python: str
    cwd: str | None
    env: dict[str, str] | None
    sandbox: bool
    environments: EnvironmentCache
    containers: ContainerImages | None
    memory_mb: int
    max_pids: int
    grace_s: float
    tag: str
    egress_prohibited: tuple[str, ...] = ()

    def refusal(self, environment: ImageEnvironment, egress: bool = False, *, pinned: bool = False) -> str | None:
        """Why this runtime cannot run a chute with ``environment`` (and ``egress``), naming the
        fix; None when it can. The container runtime builds every image step (for registry
        chutes); the others serve only what needs no root."""
        if self.containers is not None and not pinned:
            return None
        if egress and self.sandbox:
            try:
                check_egress()
            except RuntimeError as error:
                return str(error)
        return environment.refusal()

    def memory_cap_mb(self, spec: InstanceSpec) -> int:
        """A confined instance's memory cap: ``memory_mb`` per GPU its NodeSelector gave it (a
        chute that asks for 8 GPUs gets 8 times a 1-GPU chute's host memory), at least one share."""
        return self.memory_mb * max(1, sum(1 for device in spec.devices if device.kind == "cuda"))

    async def confine(self, instance: Instance) -> tuple[str, Confinement | None]:
        """The Python that runs ``instance`` and where: a registry chute in its image's container
        (``containers``), else in bubblewrap (``sandbox``) with its image's cached environment
        (built now for the first instance of that image), else as a plain process.
        RuntimeError (EnvironmentBuildError, a failed image build, no egress tools) names why not."""
        spec = instance.spec
        env = {**spec.environment.env, "CUDA_VISIBLE_DEVICES": instance.cuda_visible_devices(),
               "CANOPY_INSTANCE_ID": instance.id}
        if self.containers is not None and spec.cwd is not None:
            tag = await self.containers.ensure(revision=spec.revision, dockerfile=spec.dockerfile, bundle=Path(spec.cwd))
            scratch = scratch_folder(self.tag)
            return "python", InstanceContainer.prepare(
                self.containers.engine, tag=tag, name=f"canopy-{self.tag}-{scratch.name}", scratch=scratch,
                gpu_uuids=[d.uuid for d in spec.devices if d.kind == "cuda"], env=env, egress=spec.egress)
        interpreter = await self.environments.ensure(spec.environment, spec.ref)
        python = str(interpreter) if interpreter else self.python
        if not self.sandbox:
            return python, None
        return python, InstanceSandbox.prepare(
            tag=self.tag, ref=spec.ref, bundle=spec.cwd, cwd=self.cwd or os.getcwd(),
            gpu_indexes=[d.index for d in spec.devices if d.kind == "cuda"], env=env,
            environment=interpreter.parent.parent if interpreter else None, egress=spec.egress,
            egress_prohibited=self.egress_prohibited)

    def command(self, instance: Instance, python: str, confinement: Confinement | None = None) -> list[str]:
        """The command line of one start: ``canopy.instance serve`` on the instance's port, or on
        its confinement's socket and wrapped by it."""
        where = confinement.serve_args() if confinement else ["--host", "127.0.0.1", "--port", str(instance.port)]
        # a chain's dependencies run inside the instance, from the chute's own code: the miner
        # gives no CANOPY_CHUTE_URLS (and a sandboxed instance has no network to reach one)
        serve = ["serve", instance.spec.ref, *where, "--local-dependencies"]
        if instance.spec.concurrency_override:
            serve += ["--concurrency", str(instance.spec.concurrency)]
        # in-flight requests get most of our grace period; SIGKILL comes after all of it
        serve += ["--graceful-timeout", f"{max(0.1, self.grace_s * 0.8):g}"]
        memory_mb = self.memory_cap_mb(instance.spec)
        if isinstance(confinement, InstanceContainer):
            return confinement.command(serve, memory_mb=memory_mb, max_pids=self.max_pids)
        command = [python, "-c", LAUNCHER, *serve]
        if confinement is None:
            return command
        return confinement.command(command, name=f"canopy-{self.tag}-{confinement.scratch.name}",
                                   memory_mb=memory_mb, max_pids=self.max_pids)

    def environment(self, instance: Instance) -> dict[str, str]:
        """The environment of the process the miner starts (see the module docstring)."""
        if instance.sandbox is not None:
            kept = ("LANG", "LC_ALL") + (ENGINE_ENV if isinstance(instance.sandbox, InstanceContainer) else ())
            return {"PATH": SYSTEM_PATH, **{k: os.environ[k] for k in kept if k in os.environ}}
        env = dict(os.environ if self.env is None else self.env)
        env.update(instance.spec.environment.env)
        env.update(CUDA_VISIBLE_DEVICES=instance.cuda_visible_devices(), CANOPY_INSTANCE_ID=instance.id,
                   CANOPY_MINER_PID=str(os.getpid()), PYTHONUNBUFFERED="1")
        return env
