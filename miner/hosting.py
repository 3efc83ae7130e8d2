"""What the miner hosts: the hosting config file, chute descriptions, and device placement.

The miner reads its config with ``load_hosting_config`` then plans with ``plan_hosting``.
The result, a ``HostingPlan``, feeds ``miner.instances.InstanceManager`` (one
``InstanceSpec`` per instance) and the Inventory reply (``refused``).

The config file (``--chutes.config``) is TOML::

    [[chutes]]
    ref = "examples.echo_chute:chute"   # module:attr or path/to/file.py:attr
    instances = 1                        # 1..64
    concurrency = 4                      # optional: overrides the chute's own

The miner never imports chute code: each ref is described by a child process,
``python -m canopy.instance describe REF``, which prints the ChuteInfo JSON. A ref that
fails to load is logged with the reason and refused; the other chutes go on. Then each
chute's NodeSelector is matched against the device inventory, instance by instance, in
config order: an instance takes the devices ``NodeSelector.matches`` picks among those no
earlier instance took (the devnet's CPU pseudo-device is shared); a chute that gets no
instance is refused with the selector's explanation.

These are the miner's pinned chutes: their instances are ``pinned`` (the autoscaler,
``miner.autoscaler``, never stops them) and carry the revision ``canopy deploy`` would give
their code (``HostedPlan.revision``, set by the miner from ``miner.bundles.pinned_revision``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canopy.chute import ChuteInfo
from miner.instances import InstanceSpec
from miner.placement import explain, matching_devices
from protocol.chutes import HostedChute, HostedCord, RefusedChute
from protocol.graval.devices import DeviceSpec

MAX_INSTANCES = 64
DESCRIBE_TIMEOUT_S = 180.0


class HostingConfigError(ValueError):
    """The hosting config file is missing or wrong; the message names the file and the fix."""


class ChuteEntry(BaseModel):
    """One ``[[chutes]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str = Field(..., min_length=1, max_length=512, description="module:attr or path/to/file.py:attr")
    instances: int = Field(1, ge=1, le=MAX_INSTANCES, description="instances to run (1..64)")
    concurrency: int | None = Field(None, ge=1, le=1024, description="requests at once per instance (default: the chute's)")


class HostingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    chutes: list[ChuteEntry] = Field(default_factory=list)


def parse_hosting_config(text: str, source: str = "<hosting config>") -> HostingConfig:
    """Validate the TOML ``text``; HostingConfigError names ``source``, the line or the field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise HostingConfigError(f"{source} is not valid TOML: {error}") from None
    try:
        return HostingConfig.model_validate(raw)
    except ValidationError as error:
        problems = []
        for problem in error.errors(include_url=False):
            where = _location(problem["loc"])
            if problem["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown key (allowed: {_allowed(problem['loc'])})")
            else:
                problems.append(f"{where}: {problem['msg']}")
        raise HostingConfigError(f"{source}: " + "; ".join(problems)) from None


def load_hosting_config(path: str | os.PathLike[str]) -> HostingConfig:
    """Read and validate the hosting config file at ``path``."""
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise HostingConfigError(f"hosting config {file} does not exist: fix --chutes.config") from None
    except (OSError, UnicodeDecodeError) as error:
        raise HostingConfigError(f"hosting config {file} cannot be read: {error}") from None
    return parse_hosting_config(text, str(file))


def _location(loc: Sequence[object]) -> str:
    """('chutes', 1, 'instances') -> 'chutes[1].instances' (1-based, as a reader counts tables)."""
    text = ""
    for part in loc:
        text += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _allowed(loc: Sequence[object]) -> str:
    model = ChuteEntry if any(isinstance(part, int) for part in loc) else HostingConfig
    return ", ".join(model.model_fields)


# --- describing a chute (in a child process) ---------------------------------------------


class DescribeError(RuntimeError):
    """``canopy.instance describe`` failed: the chute does not load (message says why)."""


async def describe_chute(ref: str, *, python: str | None = None, cwd: str | os.PathLike[str] | None = None,
                         timeout_s: float = DESCRIBE_TIMEOUT_S) -> ChuteInfo:
    """The ChuteInfo of ``ref``, from ``python -m canopy.instance describe REF`` (never imported here)."""
    process = await asyncio.create_subprocess_exec(
        python or sys.executable, "-m", "canopy.instance", "describe", ref, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise DescribeError(f"describing {ref} took more than {timeout_s:g}s (does importing it start work?)") from None
    if process.returncode != 0:
        raise DescribeError(_last_lines(stderr) or f"describe exited with code {process.returncode}")
    try:
        return ChuteInfo.model_validate_json(stdout)
    except ValidationError as error:
        raise DescribeError(f"describe printed no valid ChuteInfo ({error.error_count()} error(s))") from None


def _last_lines(raw: bytes, count: int = 3) -> str:
    lines = [line.strip().removeprefix("error: ") for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:])


# --- placement ---------------------------------------------------------------------------


@dataclass
class HostedPlan:
    """One chute to host: its description and the devices of each of its instances."""

    entry: ChuteEntry
    info: ChuteInfo
    devices: list[list[DeviceSpec]] = field(default_factory=list)  # one list per instance
    revision: str = ""  # what ``canopy deploy`` would name its code (``miner.bundles.pinned_revision``)

    @property
    def concurrency(self) -> int:
        return self.entry.concurrency or self.info.concurrency

    def instance_specs(self) -> list[InstanceSpec]:
        return [InstanceSpec(chute_id=self.info.chute_id, name=self.info.name, ref=self.entry.ref,
                             devices=tuple(devices), concurrency=self.concurrency,
                             concurrency_override=self.entry.concurrency is not None, revision=self.revision,
                             pinned=True, environment=self.info.environment, egress=self.info.allow_external_egress)
                for devices in self.devices]

    def hosted_chute(self) -> HostedChute:
        """What callers see of it in Inventory (the live counts are filled in by the service)."""
        info = self.info
        return HostedChute(chute_id=info.chute_id, name=info.name, username=info.username, tagline=info.tagline,
                           ref=self.entry.ref, revision=self.revision, model=info.model,
                           cords=[HostedCord.model_validate(cord.model_dump()) for cord in info.cords],
                           instances=len(self.devices), concurrency=self.concurrency)


@dataclass
class HostingPlan:
    hosted: list[HostedPlan] = field(default_factory=list)
    refused: list[RefusedChute] = field(default_factory=list)

    def instance_specs(self) -> list[InstanceSpec]:
        return [spec for chute in self.hosted for spec in chute.instance_specs()]

    def hosted_chutes(self) -> list[HostedChute]:
        return [chute.hosted_chute() for chute in self.hosted]


Describe = Callable[[str], Awaitable[ChuteInfo]]


def shareable(device: DeviceSpec) -> bool:
    """The devnet's CPU pseudo-device can serve several instances; a GPU serves one."""
    return device.kind == "cpu"


async def plan_hosting(config: HostingConfig, devices: Sequence[DeviceSpec], *,
                       describe: Describe | None = None) -> HostingPlan:
    """Describe every chute of ``config`` (concurrently) and place its instances on ``devices``."""
    describe = describe or describe_chute
    results = await asyncio.gather(*(describe(entry.ref) for entry in config.chutes), return_exceptions=True)
    plan = HostingPlan()
    taken: set[str] = set()
    seen: dict[str, str] = {}
    for entry, result in zip(config.chutes, results):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            reason = f"does not load: {result}"
            logger.error("chute {} refused: {}", entry.ref, reason)
            plan.refused.append(RefusedChute(ref=entry.ref, reason=reason))
            continue
        info = result
        if info.chute_id in seen:
            reason = f"chute {info.username}/{info.name} is already listed as {seen[info.chute_id]}"
            logger.error("chute {} refused: {}", entry.ref, reason)
            plan.refused.append(RefusedChute(ref=entry.ref, reason=reason, chute_id=info.chute_id))
            continue
        seen[info.chute_id] = entry.ref
        placed = _place(entry, info, devices, taken)
        if not placed.devices:
            why = explain(info.node_selector, devices)
            reason = why or "every device it could use is taken by the chutes listed before it"
            logger.error("chute {} ({}) refused: {}", info.name, entry.ref, reason)
            plan.refused.append(RefusedChute(ref=entry.ref, reason=reason, chute_id=info.chute_id))
            continue
        if len(placed.devices) < entry.instances:
            logger.warning("chute {}: only {} of {} instances fit on the free devices", info.name,
                           len(placed.devices), entry.instances)
        plan.hosted.append(placed)
    return plan


def _place(entry: ChuteEntry, info: ChuteInfo, devices: Sequence[DeviceSpec], taken: set[str]) -> HostedPlan:
    """Pick devices for up to ``entry.instances`` instances; GPUs picked are added to ``taken``."""
    placed = HostedPlan(entry=entry, info=info)
    for _ in range(entry.instances):
        free = [device for device in devices if shareable(device) or device.uuid not in taken]
        chosen = matching_devices(info.node_selector, free)
        if not chosen:
            break
        taken.update(device.uuid for device in chosen if not shareable(device))
        placed.devices.append(list(chosen))
    return placed
