"""The miner's device inventory: which devices it offers, and live readings of them.

``discover_devices`` builds the static ``DeviceSpec`` claims the miner sends in the
``Inventory`` synapse; ``live_info`` the ``LiveDeviceInfo`` it answers ``DeviceInfo``
with. Backends, in order: NVML (``pynvml`` from the ``nvidia-ml-py`` package of the
``gpu`` extra) when it imports and a driver answers, else ``torch.cuda`` when available,
else cupy (``cupy-cuda12x``), else none. On the devnet only (``cpu_device_allowed``) a machine without a GPU offers one
CPU pseudo-device so the whole subnet can run on a laptop.

GPU libraries are imported lazily, inside the functions, never at module import. Device
``index`` is the position among the CUDA-visible devices (``CUDA_VISIBLE_DEVICES`` is
honoured); the prover should still select its device by uuid, since CUDA's default
ordering (fastest first) may differ from NVML's (PCI bus order).
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import subprocess
import time
from pathlib import Path

from loguru import logger

from protocol.graval.devices import DeviceSpec, LiveDeviceInfo

MIB = 1 << 20
DEFAULT_CPU_MEMORY_BYTES = 256 * MIB
CPU_DEVICE_NAME = "CPU pseudo-device (devnet)"
# CUDA cores per SM by compute capability (NVML gives cores, not SMs).
_CORES_PER_SM = {(7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
                 (9, 0): 128, (10, 0): 128, (10, 3): 128, (12, 0): 128, (12, 1): 128}


def cpu_device_allowed(network: str) -> bool:
    """The CPU pseudo-device exists on the devnet only."""
    return network == "devnet"


def discover_devices(*, allow_cpu: bool, cpu_memory_bytes: int = DEFAULT_CPU_MEMORY_BYTES,
                     salt: str = "") -> list[DeviceSpec]:
    """The devices this machine offers: its GPUs, else (``allow_cpu``) one CPU pseudo-device.

    ``salt`` (e.g. the miner's CANOPY_HOME) makes the pseudo-device's uuid differ between
    two miners on one machine; it is unused for GPUs, whose uuids come from the driver.
    """
    devices = _discover_nvml()
    if devices is None:
        devices = _discover_torch() or _discover_cupy()
    if not devices and allow_cpu:
        devices = [cpu_device(memory_bytes=cpu_memory_bytes, salt=salt)]
    return devices


def live_info(spec: DeviceSpec) -> LiveDeviceInfo:
    """A live reading of ``spec``'s device (NVML, else torch, for CUDA; /proc for the CPU)."""
    if spec.kind == "cpu":
        return _live_cpu(spec)
    reading = _live_nvml(spec)
    if reading is not None:
        return reading
    return _live_torch(spec) if _torch_cuda() is not None else _live_cupy(spec)


# --- the CPU pseudo-device -------------------------------------------------------------


def cpu_device(*, memory_bytes: int = DEFAULT_CPU_MEMORY_BYTES, salt: str = "") -> DeviceSpec:
    """The devnet's stand-in for a GPU; its uuid is stable for (machine, salt)."""
    return DeviceSpec(kind="cpu", index=0, name=CPU_DEVICE_NAME, uuid=cpu_uuid(salt), memory_bytes=memory_bytes,
                      sm_count=os.cpu_count() or 1, max_sm_clock_mhz=_cpu_max_mhz(), max_mem_clock_mhz=0,
                      compute_capability="cpu")


def cpu_uuid(salt: str = "") -> str:
    """'CPU-' + 16 hex digits of BLAKE2b over the machine id (or hostname) and ``salt``."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    material = f"{machine or socket.gethostname()}|{salt}".encode()
    return "CPU-" + hashlib.blake2b(material, digest_size=8).hexdigest()


def _cpuinfo_mhz() -> list[float]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    values = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == "cpu mhz":
            try:
                values.append(float(value))
            except ValueError:
                pass
    return values


def _cpu_max_mhz() -> int:
    """cpufreq's max frequency, else the highest 'cpu MHz' in /proc/cpuinfo, else 1000."""
    try:
        return max(1, int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) // 1000)
    except (OSError, ValueError):
        pass
    readings = _cpuinfo_mhz()
    return max(1, round(max(readings))) if readings else 1000


def _process_rss_bytes() -> int:
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _live_cpu(spec: DeviceSpec) -> LiveDeviceInfo:
    readings = _cpuinfo_mhz()
    try:
        utilization = min(100.0, 100.0 * os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        utilization = None
    return LiveDeviceInfo(
        uuid=spec.uuid, name=spec.name, memory_total_bytes=spec.memory_bytes,
        memory_used_bytes=min(_process_rss_bytes(), spec.memory_bytes),  # the pseudo device's memory is a budget
        sm_clock_mhz=round(sum(readings) / len(readings)) if readings else spec.max_sm_clock_mhz,
        mem_clock_mhz=0, temperature_c=None, utilization_pct=utilization, sampled_at=time.time())


# --- NVML ------------------------------------------------------------------------------


def _nvml():
    """pynvml, initialised, or None when the package or a driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError and its subclasses (no driver, no library)
        logger.debug("NVML unavailable: {}", exc)
        return None
    return pynvml


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _visible_indices(uuids: list[str]) -> list[int]:
    """NVML indices of the CUDA-visible devices, in CUDA_VISIBLE_DEVICES order when it is set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (item.strip() for item in visible.split(",")):
        if entry.isdigit() and int(entry) < len(uuids):
            found = [int(entry)]
        else:  # a uuid or a unique prefix of one, with or without "GPU-"
            prefix = entry if entry.startswith("GPU-") else "GPU-" + entry
            found = [i for i, uuid in enumerate(uuids) if entry and uuid.startswith(prefix)]
        if len(found) != 1:
            break  # CUDA stops at the first invalid entry
        chosen.append(found[0])
    return chosen


def _nvml_sm_count(pynvml, handle, cc: tuple[int, int], uuid: str) -> int | None:
    try:
        cores = pynvml.nvmlDeviceGetNumGpuCores(handle)
        per_sm = _CORES_PER_SM.get(cc)
        if per_sm and cores and cores % per_sm == 0:
            return cores // per_sm
    except Exception as exc:  # NVMLError_NotSupported / FunctionNotFound on old drivers
        logger.debug("NVML gives no core count for {}: {}", uuid, exc)
    return _torch_sm_counts().get(uuid)


def _discover_nvml() -> list[DeviceSpec] | None:
    """The GPUs NVML sees, or None when NVML is not usable (so torch is tried)."""
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(handle)) for handle in handles]
        devices = []
        for index, nvml_index in enumerate(_visible_indices(uuids)):
            handle, uuid = handles[nvml_index], uuids[nvml_index]
            cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            sm_count = _nvml_sm_count(pynvml, handle, cc, uuid)
            if sm_count is None:
                logger.warning("skipping GPU {}: its SM count is unknown (update the driver or install torch)", uuid)
                continue
            devices.append(DeviceSpec(
                kind="cuda", index=index, name=_text(pynvml.nvmlDeviceGetName(handle)), uuid=uuid,
                memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total), sm_count=sm_count,
                max_sm_clock_mhz=int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
                max_mem_clock_mhz=int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
                compute_capability=f"{cc[0]}.{cc[1]}"))
        return devices
    finally:
        pynvml.nvmlShutdown()


def _live_nvml(spec: DeviceSpec) -> LiveDeviceInfo | None:
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(spec.uuid)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        temperature = utilization = None
        try:
            temperature = float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
            utilization = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception as exc:  # optional readings: not supported on every board
            logger.debug("NVML optional readings for {}: {}", spec.uuid, exc)
        return LiveDeviceInfo(
            uuid=_text(pynvml.nvmlDeviceGetUUID(handle)), name=_text(pynvml.nvmlDeviceGetName(handle)),
            memory_total_bytes=int(memory.total), memory_used_bytes=int(memory.used),
            sm_clock_mhz=int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            mem_clock_mhz=int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
            temperature_c=temperature, utilization_pct=utilization, sampled_at=time.time())
    finally:
        pynvml.nvmlShutdown()


# --- torch.cuda (no NVML bindings) ---------------------------------------------------------


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _torch_uuid(props) -> str:
    raw = str(getattr(props, "uuid", "") or "")
    return raw if raw.startswith("GPU-") else f"GPU-{raw}"


def _torch_sm_counts() -> dict[str, int]:
    torch = _torch_cuda()
    if torch is None:
        return {}
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return {_torch_uuid(p): p.multi_processor_count for p in props}


def _smi_query(uuid: str, fields: str) -> list[int] | None:
    """Integer fields of one GPU from nvidia-smi (torch does not expose clocks)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--id={uuid}", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [int(float(value)) for value in out.strip().split(",")]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _discover_torch() -> list[DeviceSpec]:
    torch = _torch_cuda()
    if torch is None:
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = _torch_uuid(props)
        clocks = _smi_query(uuid, "clocks.max.sm,clocks.max.mem")
        if clocks is None or clocks[0] <= 0:
            logger.warning("skipping GPU {}: its max clock is unknown (install nvidia-ml-py: pip install -e .[gpu])", uuid)
            continue
        devices.append(DeviceSpec(
            kind="cuda", index=index, name=props.name, uuid=uuid, memory_bytes=int(props.total_memory),
            sm_count=props.multi_processor_count, max_sm_clock_mhz=clocks[0], max_mem_clock_mhz=max(0, clocks[1]),
            compute_capability=f"{props.major}.{props.minor}"))
    return devices


def _live_torch(spec: DeviceSpec) -> LiveDeviceInfo:
    torch = _torch_cuda()
    if torch is None:
        raise RuntimeError(f"no NVML and no CUDA torch: cannot read device {spec.uuid}")
    free, total = torch.cuda.mem_get_info(spec.index)
    clocks = _smi_query(spec.uuid, "clocks.sm,clocks.mem") or [0, 0]
    return LiveDeviceInfo(
        uuid=_torch_uuid(torch.cuda.get_device_properties(spec.index)), name=torch.cuda.get_device_name(spec.index),
        memory_total_bytes=int(total), memory_used_bytes=int(total - free), sm_clock_mhz=clocks[0],
        mem_clock_mhz=clocks[1], sampled_at=time.time())


# --- cupy (no NVML bindings, no torch) -----------------------------------------------------


def _cupy_runtime():
    try:
        import cupy
    except ImportError:
        return None
    try:
        return cupy.cuda.runtime if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 - no driver
        return None


def _cupy_uuid(props: dict) -> str:
    raw = bytes(props.get("uuid", b""))
    text = raw.hex()
    return f"GPU-{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}" if len(raw) == 16 else f"GPU-{text}"


def _discover_cupy() -> list[DeviceSpec]:
    runtime = _cupy_runtime()
    if runtime is None:
        return []
    devices = []
    for index in range(runtime.getDeviceCount()):
        props = runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        clocks = _smi_query(_cupy_uuid(props), "clocks.max.sm,clocks.max.mem") or [int(props.get("clockRate", 0)) // 1000, 0]
        if clocks[0] <= 0:
            logger.warning("skipping GPU {}: its max clock is unknown (install nvidia-ml-py)", index)
            continue
        devices.append(DeviceSpec(
            kind="cuda", index=index, name=name, uuid=_cupy_uuid(props), memory_bytes=int(props["totalGlobalMem"]),
            sm_count=int(props["multiProcessorCount"]), max_sm_clock_mhz=clocks[0], max_mem_clock_mhz=max(0, clocks[1]),
            compute_capability=f"{props['major']}.{props['minor']}"))
    return devices


def _live_cupy(spec: DeviceSpec) -> LiveDeviceInfo:
    runtime = _cupy_runtime()
    if runtime is None:
        raise RuntimeError(f"no NVML, torch or cupy: cannot read device {spec.uuid}")
    import cupy

    with cupy.cuda.Device(spec.index):
        free, total = runtime.memGetInfo()
    props = runtime.getDeviceProperties(spec.index)
    clocks = _smi_query(spec.uuid, "clocks.sm,clocks.mem") or [0, 0]
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return LiveDeviceInfo(uuid=_cupy_uuid(props), name=name, memory_total_bytes=int(total),
                          memory_used_bytes=int(total - free), sm_clock_mhz=clocks[0], mem_clock_mhz=clocks[1],
                          sampled_at=time.time())
