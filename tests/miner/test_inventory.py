"""miner.inventory: the CPU pseudo-device, and the NVML path against a fake pynvml."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from miner import inventory
from protocol.graval.devices import DeviceRejected, check_live, load_gpu_table, match_model

H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY = 81559 * (1 << 20)
FAKE_UUIDS = ["GPU-11111111-aaaa-bbbb-cccc-000000000000", "GPU-22222222-aaaa-bbbb-cccc-000000000000"]


@pytest.fixture
def no_gpu_backends(monkeypatch):
    """Neither pynvml nor torch imports, whatever this machine has."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "torch", None)


def fake_pynvml(uuids: list[str], *, init_fails: bool = False) -> types.ModuleType:
    """Just enough of nvidia-ml-py's pynvml for two (or more) H100 SXM cards."""
    module = types.ModuleType("pynvml")
    module.NVML_CLOCK_SM, module.NVML_CLOCK_MEM, module.NVML_TEMPERATURE_GPU = 1, 2, 0
    module.calls = {"init": 0, "shutdown": 0}

    class NVMLError(Exception):
        pass

    def init():
        module.calls["init"] += 1
        if init_fails:
            raise NVMLError("Driver Not Loaded")

    def handle_by_uuid(uuid):
        if uuid not in uuids:
            raise NVMLError("Not Found")
        return uuids.index(uuid)

    module.NVMLError = NVMLError
    module.nvmlInit = init
    module.nvmlShutdown = lambda: module.calls.__setitem__("shutdown", module.calls["shutdown"] + 1)
    module.nvmlDeviceGetCount = lambda: len(uuids)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetHandleByUUID = handle_by_uuid
    module.nvmlDeviceGetUUID = lambda handle: uuids[handle]
    module.nvmlDeviceGetName = lambda handle: H100_NAME.encode()  # older bindings return bytes
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(
        total=H100_MEMORY, used=(1 + handle) << 30, free=H100_MEMORY - ((1 + handle) << 30))
    module.nvmlDeviceGetCudaComputeCapability = lambda handle: (9, 0)
    module.nvmlDeviceGetNumGpuCores = lambda handle: 16896  # 132 SMs x 128
    module.nvmlDeviceGetMaxClockInfo = lambda handle, kind: {1: 1980, 2: 2619}[kind]
    module.nvmlDeviceGetClockInfo = lambda handle, kind: {1: 1755, 2: 2619}[kind]
    module.nvmlDeviceGetTemperature = lambda handle, sensor: 41
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=87, memory=30)
    return module


# --- the devnet switch -----------------------------------------------------------------


def test_the_cpu_device_is_allowed_on_the_devnet_only():
    assert inventory.cpu_device_allowed("devnet")
    assert not any(inventory.cpu_device_allowed(net) for net in ("finney", "test", "local", "ws://127.0.0.1:9944"))


# --- the CPU pseudo-device -------------------------------------------------------------


def test_without_gpus_the_cpu_device_appears_only_when_allowed(no_gpu_backends):
    assert inventory.discover_devices(allow_cpu=False) == []
    [device] = inventory.discover_devices(allow_cpu=True, cpu_memory_bytes=64 << 20)
    assert device.kind == "cpu" and device.index == 0 and device.compute_capability == "cpu"
    assert device.name == "CPU pseudo-device (devnet)" and device.memory_bytes == 64 << 20
    assert device.sm_count == (os.cpu_count() or 1) and device.max_sm_clock_mhz > 0
    assert device.uuid.startswith("CPU-") and len(device.uuid) == 4 + 16


@pytest.mark.skipif(Path("/proc/driver/nvidia").exists(), reason="this machine has an NVIDIA driver")
def test_on_this_gpu_less_machine_nothing_is_discovered_without_allow_cpu():
    assert inventory.discover_devices(allow_cpu=False) == []


def test_the_cpu_uuid_is_stable_and_salted(no_gpu_backends):
    first = inventory.discover_devices(allow_cpu=True, salt="/home/a/.canopy")[0].uuid
    assert inventory.discover_devices(allow_cpu=True, salt="/home/a/.canopy")[0].uuid == first
    assert inventory.discover_devices(allow_cpu=True, salt="/home/b/.canopy")[0].uuid != first
    assert inventory.cpu_uuid() != first


def test_the_cpu_device_matches_the_table_and_its_live_reading_passes(no_gpu_backends):
    table = load_gpu_table()
    [device] = inventory.discover_devices(allow_cpu=True, salt="x")
    model = match_model(device, table, allow_cpu=True)
    assert model.id == "cpu"
    reading = inventory.live_info(device)
    assert reading.uuid == device.uuid and reading.memory_total_bytes == device.memory_bytes
    assert 0 < reading.memory_used_bytes <= device.memory_bytes and reading.sampled_at > 0
    check_live(device, reading, model)
    with pytest.raises(DeviceRejected) as caught:
        match_model(device, table, allow_cpu=False)
    assert caught.value.reason == "cpu_not_allowed"


# --- NVML (fake pynvml) ----------------------------------------------------------------


def test_the_nvml_path_reports_two_h100s(monkeypatch):
    fake = fake_pynvml(FAKE_UUIDS)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = inventory.discover_devices(allow_cpu=True)  # GPUs found: no CPU device even when allowed
    assert [(d.index, d.uuid) for d in devices] == list(enumerate(FAKE_UUIDS))
    for device in devices:
        assert device.kind == "cuda" and device.name == H100_NAME and device.memory_bytes == H100_MEMORY
        assert device.sm_count == 132 and device.compute_capability == "9.0"
        assert (device.max_sm_clock_mhz, device.max_mem_clock_mhz) == (1980, 2619)
    assert fake.calls["init"] == fake.calls["shutdown"] == 1
    table = load_gpu_table()
    assert {match_model(d, table, allow_cpu=False).id for d in devices} == {"h100"}


def test_the_nvml_live_reading_agrees_with_the_claim(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(FAKE_UUIDS))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    table = load_gpu_table()
    second = inventory.discover_devices(allow_cpu=False)[1]
    reading = inventory.live_info(second)
    assert reading.uuid == second.uuid and reading.memory_used_bytes == 2 << 30
    assert (reading.sm_clock_mhz, reading.temperature_c, reading.utilization_pct) == (1755, 41.0, 87.0)
    check_live(second, reading, match_model(second, table, allow_cpu=False))


@pytest.mark.parametrize("visible,expected", [
    ("1", [FAKE_UUIDS[1]]),
    ("1,0", [FAKE_UUIDS[1], FAKE_UUIDS[0]]),
    ("22222222", [FAKE_UUIDS[1]]),
    ("0,7,1", [FAKE_UUIDS[0]]),  # CUDA stops at the first invalid entry
    ("", []),
])
def test_cuda_visible_devices_is_honoured(monkeypatch, visible, expected):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(FAKE_UUIDS))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    devices = inventory.discover_devices(allow_cpu=False)
    assert [(d.index, d.uuid) for d in devices] == list(enumerate(expected))


def test_a_driverless_nvml_falls_back_to_the_next_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(FAKE_UUIDS, init_fails=True))
    monkeypatch.setitem(sys.modules, "torch", None)
    [device] = inventory.discover_devices(allow_cpu=True)
    assert device.kind == "cpu"


def test_the_module_imports_no_gpu_library():
    source = Path(inventory.__file__).read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not any(name in line for line in top_level for name in ("pynvml", "torch", "cupy"))


def test_cupy_path_builds_specs_when_only_cupy_is_installed(monkeypatch):
    import sys
    import types

    from miner import inventory

    props = {"name": b"NVIDIA H100 80GB HBM3", "totalGlobalMem": 85520809984, "multiProcessorCount": 132,
             "major": 9, "minor": 0, "uuid": bytes(range(16)), "clockRate": 1980000}
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda index: props,
                                    memGetInfo=lambda: (80 << 30, 85520809984))
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda index: types.SimpleNamespace(
        __enter__=lambda self: self, __exit__=lambda self, *a: None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(inventory, "_discover_nvml", lambda: None)
    monkeypatch.setattr(inventory, "_discover_torch", lambda: [])
    monkeypatch.setattr(inventory, "_smi_query", lambda uuid, fields: None)
    (device,) = inventory.discover_devices(allow_cpu=False)
    assert device.uuid == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert (device.sm_count, device.max_sm_clock_mhz, device.compute_capability) == (132, 1980, "9.0")
