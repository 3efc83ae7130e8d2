"""Chutes hosted in tests: the refs of the small test chutes and the devices they run on.

The chutes live in ``tests/miner/chutes``; instance processes import them by module ref
with the repository root (``tests.support.ROOT``) as their working directory.
``cpu_devices`` are CPU pseudo-devices any machine has; ``fake_h100s`` are H100 claims for
placement (nothing touches CUDA).
"""

from __future__ import annotations

from miner.inventory import cpu_device
from protocol.graval.devices import DeviceSpec

ECHO = "tests.miner.chutes.echo:chute"
BAD_HOOK = "tests.miner.chutes.bad_hook:chute"
STUBBORN = "tests.miner.chutes.stubborn:chute"
BROKEN_IMPORT = "tests.miner.chutes.broken_import:chute"
GPU_ONLY = "tests.miner.chutes.gpu_only:chute"
H100_NAME = "NVIDIA H100 80GB HBM3"


def cpu_devices(count: int = 1, salt: str = "miner-tests") -> list[DeviceSpec]:
    return [cpu_device(salt=f"{salt}{i}").model_copy(update={"index": i}) for i in range(count)]


def fake_h100s(count: int) -> list[DeviceSpec]:
    return [DeviceSpec(kind="cuda", index=i, name=H100_NAME, uuid=f"GPU-{i:08d}-aaaa-bbbb-cccc-000000000000",
                       memory_bytes=81559 << 20, sm_count=132, max_sm_clock_mhz=1980, max_mem_clock_mhz=2619,
                       compute_capability="9.0") for i in range(count)]
