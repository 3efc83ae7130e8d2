"""Placement: which of the miner's devices a chute's ``NodeSelector`` can use, and why not.

``include`` / ``exclude`` tokens are GPU-table ids (the rows of ``protocol/graval/gpus.toml``)
or case-insensitive substrings of the device name; VRAM is compared in nominal GB with
``VRAM_SLACK`` (``canopy.node_selector``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from canopy.node_selector import VRAM_SLACK, NodeSelector
from protocol.graval.devices import DeviceSpec, GpuModel, load_gpu_table


@lru_cache(maxsize=1)
def _gpu_table() -> dict[str, GpuModel]:
    return {model.id: model for model in load_gpu_table()}


def device_matches_token(device: DeviceSpec, token: str) -> bool:
    """True when ``device`` is the GPU-table model ``token`` or its name contains ``token``."""
    model = _gpu_table().get(token.lower())
    if model is not None:
        return model.devnet_only == (device.kind == "cpu") and model.matches_name(device.name)
    return token.lower() in device.name.lower()


def device_problem(selector: NodeSelector, device: DeviceSpec) -> str:
    """Why ``device`` cannot serve ``selector`` ("" when it can)."""
    if selector.include and not any(device_matches_token(device, t) for t in selector.include):
        return f"not one of include={selector.include}"
    if selector.exclude:
        hit = next((t for t in selector.exclude if device_matches_token(device, t)), None)
        if hit is not None:
            return f"excluded by {hit!r}"
    if device.memory_gib < selector.min_vram_gb_per_gpu * VRAM_SLACK:
        return f"{device.memory_gib:.1f} GiB < {selector.min_vram_gb_per_gpu} GB"
    return ""

def matching_devices(selector: NodeSelector, devices: Sequence[DeviceSpec]) -> list[DeviceSpec]:
    """The devices to use (the first ``gpu_count`` that qualify, in order), [] if too few do."""
    chosen = [d for d in devices if not device_problem(selector, d)]
    return chosen[: selector.gpu_count] if len(chosen) >= selector.gpu_count else []

def explain(selector: NodeSelector, devices: Sequence[DeviceSpec]) -> str:
    """Why ``devices`` cannot satisfy ``selector`` ("" when they can)."""
    if matching_devices(selector, devices):
        return ""
    need = f"needs {selector.gpu_count} GPU(s) with >= {selector.min_vram_gb_per_gpu} GB each"
    if selector.include:
        need += f", include={selector.include}"
    if selector.exclude:
        need += f", exclude={selector.exclude}"
    if not devices:
        return f"{need}; no devices are available"
    problems = [f"#{d.index} {d.name!r}: {p}" for d in devices if (p := device_problem(selector, d))]
    good = len(devices) - len(problems)
    text = f"{need}; {good} of {len(devices)} device(s) qualify"
    return text + ("; " + "; ".join(problems) if problems else "")
