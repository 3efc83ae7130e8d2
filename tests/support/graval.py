"""GraVal in tests: small CPU pseudo-devices and the GPU-table row they are judged by.

Devices are CPU pseudo-devices matched to the table's ``cpu`` row, shrunk to n=512 so a
4 MiB device (8 matrices, 128 access steps) proves in a fraction of a second; a 16 MiB one
(``BIG_MEMORY``, 56 matrices) makes a cheat's slowdown vary less from one order to the next.
Timing tests judge a device against a throughput measured on this machine; ``phase_macs``
is the work of each phase that such a rate divides.
"""

from __future__ import annotations

from miner.inventory import cpu_device
from protocol.graval.devices import DeviceSpec, GpuModel, load_gpu_table
from protocol.graval.spec import plan

N, B, MEMORY = 512, 8, 4 << 20  # 4 MiB at n=512: 8 matrices (and 6 of workspace), 128 access steps
BIG_MEMORY = 16 << 20  # 56 matrices: the cheats' slowdowns vary less from one order to the next

#: Timing tests judge a device against this machine's own speed; when another process takes
#: the cores the honest side can miss the window too, which says nothing about the verifier.
#: Such an attempt is measured again (a cheat passing is a failure at once, never retried).
NOISY_BOX_ATTEMPTS = 3


def cpu_row(**update) -> GpuModel:
    """The table's ``cpu`` row at this module's n and b (``update`` overrides any field)."""
    row = next(model for model in load_gpu_table() if model.id == "cpu")
    return row.model_copy(update={"graval_n": N, "graval_b": B, "memory_gb_min": 1 / 1024, **update})


def devices(count: int, salt: str = "a", memory: int = MEMORY) -> list[DeviceSpec]:
    """``count`` CPU pseudo-devices, their uuids derived from ``salt``."""
    return [cpu_device(memory_bytes=memory, salt=f"{salt}{i}").model_copy(update={"index": i}) for i in range(count)]


def phase_macs(memory: int = MEMORY) -> tuple[int, int]:
    """The multiply-accumulates of the fill and of the access phase of a proof of ``memory``."""
    spec = plan("CPU-x", memory, n=N, b=B, steps_per_matrix=cpu_row().graval_steps_per_matrix)
    return spec.fill_macs, spec.access_macs
