"""The runtime comparison of ``bench/miner.py``: sandboxed instances against plain processes.

Two miners serve the same chutes in one run: one runs its instances as processes reached
over TCP (``--chutes.runtime process``), the other runs them in bubblewrap
(``node.sandbox``, ``InstanceManager(sandbox=True)``) reached over a Unix socket
(``--chutes.runtime sandbox``). A sandboxed instance sees only its bundle folder, so the
second miner's instance specs name a bundle made here (``make_bundle``: a copy of the
modules the refs import, refs unchanged) as their working directory; the sandbox clears the
environment, so the bench's settings go into the bundle too (``SETTINGS_FILE``, read by
``bench/miner.py`` when it is imported there).

Here: whether the sandbox can run at all (``sandbox_missing``: bubblewrap installed and able
to make its namespaces), the bundle, starting the sandboxed miner (``start_sandboxed``: why
not, where it cannot), the parent's handle on a miner child (``MinerChild``: its first JSON
line, then one command a line) and the child's side of it (``answer_commands``,
``sandbox_facts``), the cold-start rounds (``cold_starts``: a fresh echo instance added to
each miner in turn, timed from ``add`` to its first healthy answer, then drained) and the figures with their
targets (``figures``, ``checks``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

#: target per figure: the sandboxed path's throughput over the process path's, via the miner's axon
RUNTIME_TARGETS = {"echo_sandbox_ratio": 0.8, "llm_sandbox_ratio": 0.95}
#: environment for the bench's own chutes inside the sandbox (its environment is cleared)
SETTINGS_FILE = "miner_env.json"


#: what the cached-environment cold starts' image pip-installs (small, pure Python, one wheel)
ENV_PACKAGE = "cowsay==6.1"


def sandbox_missing() -> str:
    """'' when bubblewrap is installed and can make its namespaces here, else why not."""
    from node.sandbox import SandboxUnavailable, bwrap_path

    try:
        bwrap = bwrap_path()
    except SandboxUnavailable as error:
        return str(error)
    probe = subprocess.run([bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc",
                            "--dev", "/dev", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"bubblewrap cannot make its namespaces here (exit {probe.returncode}): {probe.stderr.strip()[-300:]}"
    return ""


def make_bundle(refs: Sequence[str], root: Path, dest: Path, settings: Mapping[str, str]) -> Path:
    """``dest`` holding what ``refs`` import from ``root`` (each ref's module file, or package
    folder, and the ``__init__.py`` files above it), as a registry chute's bundle folder holds
    its code, and ``SETTINGS_FILE`` beside each module. A ref found nowhere under ``root``
    (an installed package) is left to the virtualenv, which the sandbox has."""
    dest.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        parts = ref.partition(":")[0].split(".")
        for depth in range(1, len(parts)):
            init = root.joinpath(*parts[:depth], "__init__.py")
            if init.is_file():
                (dest / init.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(init, dest / init.relative_to(root))
        module, package = root.joinpath(*parts[:-1], parts[-1] + ".py"), root.joinpath(*parts)
        if module.is_file():
            copy = dest / module.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(module, copy)
        elif package.is_dir():
            copy = dest / package.relative_to(root) / "__init__.py"
            shutil.copytree(package, copy.parent, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            continue
        copy.with_name(SETTINGS_FILE).write_text(json.dumps(dict(settings)))
    return dest


def sandbox_facts(instance: Any) -> dict[str, Any]:
    """What the miner child reports of an instance: ``socket``, the Unix socket the miner
    reaches it on (None: TCP, a plain process); ``caps``, whether it got its cgroup."""
    socket = getattr(getattr(instance.session, "connector", None), "path", None)
    cgroup = getattr(instance.sandbox, "cgroup", None)  # miner.sandboxing.InstanceSandbox's
    return {"socket": socket, "caps": cgroup is not None}


async def answer_commands(manager: Any, specs: Sequence[Any]) -> None:
    """The miner child's side of ``MinerChild.ask``, until its stdin closes: ``cold REF``
    adds a fresh instance of REF (as the autoscaler does), answers how long it took to
    answer its health route (``cold_start_s``, polled here every 5 ms from ``add``: the
    manager's own ``cold_start_s``, also answered, only sees readiness at its polling
    backoff's ticks, up to 250 ms apart), then drains it."""
    import aiohttp

    from miner.instances import HEALTH_PATH, State

    from canopy.image_environment import ImageEnvironment

    by_ref = {spec.ref: spec for spec in specs}
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, _, ref = line.strip().partition(" ")
        if command not in ("cold", "cold-env") or ref not in by_ref:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
            continue
        spec = by_ref[ref]
        if command == "cold-env":  # as if its image pip-installed ENV_PACKAGE: run from that environment
            spec = dataclasses.replace(spec, environment=ImageEnvironment(pip=[ENV_PACKAGE]))
        started = time.monotonic()
        instance = manager.add(spec)
        answered: float | None = None
        while instance.state is State.STARTING and time.monotonic() < started + 600:
            if answered is None and instance.url:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with manager.session_for(instance).get(instance.url + HEALTH_PATH,
                                                                 timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            answered = time.monotonic() - started
            await asyncio.sleep(0.005)
        ready = instance.state is State.READY
        answer = {"cold_start_s": answered or instance.cold_start_s, "manager_cold_start_s": instance.cold_start_s,
                  "sandboxed": sandbox_facts(instance)["socket"] is not None,
                  "error": "" if ready else instance.last_error or instance.state.value}
        await manager.drain(instance, 10)
        print(json.dumps(answer), flush=True)


class MinerChild:
    """The parent's handle on a miner child process: its first JSON line (what it serves),
    then one command a line on its stdin, one JSON line back; closing stdin stops it."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, env=dict(env))

    async def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, self.process.stdout.readline)
        if not line:
            raise RuntimeError(f"the {self.name} miner exited ({self.process.wait()}) without an answer")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("error"):
            raise RuntimeError(f"the {self.name} miner: {answer['error']}")
        return answer

    async def started(self, refs: Sequence[str]) -> dict[str, Any]:
        """What it serves, once every instance is ready (RuntimeError naming why not)."""
        miner = await self._line()
        if miner["refused"]:
            raise RuntimeError(f"the {self.name} miner refused chutes: {miner['refused']}")
        for ref in refs:
            chute = miner["chutes"][ref]
            if chute["ready"] != "ready":
                raise RuntimeError(f"the {self.name} miner's instance of {ref} did not start: {chute['error']}")
        return miner

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return await self._line()

    def close(self) -> None:
        from bench.children import end

        end(self.process)


async def start_sandboxed(command: list[str], refs: Sequence[str], root: Path, bundle: Path, settings: Mapping[str, str],
                          env: Mapping[str, str]) -> tuple[MinerChild | None, dict[str, Any] | None, str]:
    """The sandboxed miner (``command`` with ``--bundle``), its instances ready: (child, what it
    serves, ""), or (child or None, None, why not) when the sandbox cannot run here."""
    missing = sandbox_missing()
    if missing:
        return None, None, missing
    make_bundle(refs, root, bundle, settings)
    child = MinerChild("sandboxed", [*command, "--bundle", str(bundle)], root, env)
    try:
        miner = await child.started(refs)
    except RuntimeError as error:
        return child, None, str(error)
    unsandboxed = [ref for ref, chute in miner["chutes"].items() if not chute["socket"]]
    if unsandboxed:
        return child, None, f"the sandboxed miner ran {unsandboxed} as plain processes (no Unix socket)"
    return child, miner, ""


async def cold_starts(miners: Mapping[str, MinerChild], ref: str, rounds: int, command: str = "cold") -> dict[str, float]:
    """Median cold start (``answer_commands``) of a fresh instance of ``ref`` per miner, the
    miners taking turns (the first one alternating), one instance starting at a time;
    ``command`` ``cold-env``: from a cached pip environment (built by a first, unmeasured start)."""
    samples: dict[str, list[float]] = {name: [] for name in miners}
    names = list(miners)
    if command == "cold-env":
        for name in names:
            answer = await miners[name].ask(f"{command} {ref}")
            if answer["error"]:
                raise RuntimeError(f"the {name} miner could not build or start from {ENV_PACKAGE}'s environment: "
                                   f"{answer['error']}")
    for index in range(max(1, rounds)):
        for name in names[index % len(names):] + names[:index % len(names)]:
            answer = await miners[name].ask(f"{command} {ref}")
            if answer["sandboxed"] != (name == "sandboxed"):
                raise RuntimeError(f"the {name} miner's fresh instance of {ref} ran {'in' if answer['sandboxed'] else 'out of'} "
                                   "the sandbox")
            samples[name].append(float(answer["cold_start_s"]))
    return {name: statistics.median(values) for name, values in samples.items()}


def figures(echo: Mapping[str, float], llm: Mapping[str, Mapping[str, float]], cold: Mapping[str, float]) -> dict[str, Any]:
    """The comparison's figures from rounds that took the paths in turn: ``via`` (the process
    miner's axon), ``sandboxed`` (the sandboxed miner's), ``direct`` and ``sandboxed_direct``
    (each instance alone: TCP, the Unix socket), and the cold starts."""
    return {
        "echo_sandboxed_rps": echo["sandboxed"], "echo_process_rps": echo["via"],
        "echo_sandbox_ratio": echo["sandboxed"] / echo["via"],
        "echo_sandboxed_direct_rps": echo["sandboxed_direct"], "echo_process_direct_rps": echo["direct"],
        "echo_sandbox_direct_ratio": echo["sandboxed_direct"] / echo["direct"],
        "llm_sandboxed_tok_s": llm["sandboxed"]["tok_s"], "llm_process_tok_s": llm["via"]["tok_s"],
        "llm_sandbox_ratio": llm["sandboxed"]["tok_s"] / llm["via"]["tok_s"],
        "llm_ttft_sandboxed_s": llm["sandboxed"]["ttft_s"], "llm_ttft_process_s": llm["via"]["ttft_s"],
        "cold_start_sandboxed_s": cold["sandboxed"], "cold_start_process_s": cold["process"],
        "cold_start_ratio": cold["sandboxed"] / cold["process"],
    }


def env_figures(cold: Mapping[str, float]) -> dict[str, float]:
    """Cold starts from a cached pip environment (``cold-env``), sandboxed against not."""
    return {"cold_start_env_sandboxed_s": cold["sandboxed"], "cold_start_env_process_s": cold["process"],
            "cold_start_env_ratio": cold["sandboxed"] / cold["process"]}


def checks(results: Mapping[str, Any], compared: bool) -> dict[str, bool | None]:
    """Met per runtime target: None when the comparison was not asked for, False when the
    sandbox could not run (``sandbox_unavailable`` says why)."""
    if not compared:
        return {name: None for name in RUNTIME_TARGETS}
    return {name: name in results and results[name] >= target for name, target in RUNTIME_TARGETS.items()}
