"""Placement: which devices a NodeSelector can use (matching_devices) and why not (explain)."""

from __future__ import annotations

from canopy.node_selector import NodeSelector
from miner.placement import explain, matching_devices
from miner.inventory import cpu_device
from protocol.graval.devices import GIB, DeviceSpec


def gpu(index: int, name: str, gib: float, sms: int = 132, clock: int = 1980, cc: str = "9.0") -> DeviceSpec:
    return DeviceSpec(kind="cuda", index=index, name=name, uuid=f"GPU-{index:08d}-test", memory_bytes=int(gib * GIB),
                      sm_count=sms, max_sm_clock_mhz=clock, max_mem_clock_mhz=2619, compute_capability=cc)


H100 = gpu(0, "NVIDIA H100 80GB HBM3", 79.6)
H100B = gpu(1, "NVIDIA H100 80GB HBM3", 79.6)
RTX4090 = gpu(2, "NVIDIA GeForce RTX 4090", 23.99, sms=128, clock=3105, cc="8.9")
L4 = gpu(3, "NVIDIA L4", 22.5, sms=58, clock=2040, cc="8.9")
A100 = gpu(4, "NVIDIA A100-SXM4-80GB", 80.0, sms=108, clock=1410, cc="8.0")


def test_matches_picks_the_first_qualifying_devices() -> None:
    devices = [RTX4090, H100, H100B]
    assert matching_devices(NodeSelector(gpu_count=1, min_vram_gb_per_gpu=24), devices) == [RTX4090]
    assert matching_devices(NodeSelector(gpu_count=1, min_vram_gb_per_gpu=40), devices) == [H100]
    assert matching_devices(NodeSelector(gpu_count=2, min_vram_gb_per_gpu=80), devices) == [H100, H100B]
    assert matching_devices(NodeSelector(gpu_count=3, min_vram_gb_per_gpu=80), devices) == []
    # nominal GB: an L4 "24 GB" reports 22.5 GiB and still counts as 24
    assert matching_devices(NodeSelector(min_vram_gb_per_gpu=24), [L4]) == [L4]
    assert matching_devices(NodeSelector(min_vram_gb_per_gpu=32), [L4]) == []


def test_include_and_exclude_by_table_id_or_name() -> None:
    devices = [RTX4090, A100, H100]
    assert matching_devices(NodeSelector(include=["h100"]), devices) == [H100]
    assert matching_devices(NodeSelector(include=["a100_80gb", "h100"]), devices) == [A100]
    assert matching_devices(NodeSelector(include=["RTX"]), devices) == [RTX4090]  # a name substring
    assert matching_devices(NodeSelector(exclude=["rtx4090"]), devices) == [A100]
    assert matching_devices(NodeSelector(exclude=["nvidia"]), devices) == []


def test_cpu_pseudo_device() -> None:
    cpu = cpu_device(memory_bytes=64 << 20)
    assert matching_devices(NodeSelector(min_vram_gb_per_gpu=0, include=["cpu"]), [cpu]) == [cpu]
    assert matching_devices(NodeSelector(min_vram_gb_per_gpu=0, include=["h100"]), [cpu]) == []
    assert matching_devices(NodeSelector(), [cpu]) == []  # 64 MiB is not 16 GB
    assert matching_devices(NodeSelector(min_vram_gb_per_gpu=0, include=["cpu"]), [H100]) == []


def test_explain_says_why() -> None:
    assert explain(NodeSelector(min_vram_gb_per_gpu=24), [H100]) == ""
    text = explain(NodeSelector(gpu_count=2, min_vram_gb_per_gpu=40, exclude=["a100_80gb"]), [RTX4090, A100, H100])
    assert "needs 2 GPU(s) with >= 40 GB" in text and "1 of 3 device(s) qualify" in text
    assert "RTX 4090" in text and "< 40 GB" in text and "excluded by 'a100_80gb'" in text
    assert "no devices" in explain(NodeSelector(), [])
    assert "not one of include=['h100']" in explain(NodeSelector(include=["h100"]), [RTX4090])
