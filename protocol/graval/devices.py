"""GraVal devices: what a miner claims, what it reads live, and the supported-GPU table.

The seam shared by the miner and the validator. The miner (``miner.inventory``) builds
``DeviceSpec`` (static claims) and ``LiveDeviceInfo`` (live readings) and sends them in
the ``Inventory`` / ``DeviceInfo`` synapses; the validator checks a claim against the
table of supported GPUs (``gpus.toml`` beside this file, one ``GpuModel`` per row) with
``match_model``, then the live readings against the claim with ``check_live``. Both
checks raise ``DeviceRejected`` whose ``reason`` is a stable machine-readable string.

The matched row also says how big a GraVal challenge is on that model (``graval_n``,
``graval_b``), how long it should take (``challenge_macs_per_s`` and the timing window)
and how much the device weighs in scoring (``compute_multiplier``).
"""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

GPU_TABLE_PATH = Path(__file__).with_name("gpus.toml")
GIB = 1 << 30
LIVE_MEMORY_TOLERANCE = 0.01  # live total memory vs the claim
LIVE_CLOCK_TOLERANCE = 0.05  # live SM clock above the model's max clock
#: Two claims answered by one device in one sweep take 2x the time of one; every GPU row's
#: window must refuse that (README, GraVal: "Timing").
MAX_WINDOW_HIGH = 2.0
#: The fewest rebuilds a prover short of 10% of the matrices needs, as a share of the access
#: steps (Belady's optimum at 64 steps per matrix measures 2.1-2.4%: README, GraVal).
MIN_REBUILD_SHARE = 0.02

RejectReason = Literal[
    "unsupported_model", "memory_mismatch", "sm_mismatch", "clock_out_of_range", "cc_mismatch",
    "cpu_not_allowed", "uuid_mismatch", "name_mismatch",
]
REJECT_REASONS: frozenset[str] = frozenset(get_args(RejectReason))

_CC = re.compile(r"^\d+\.\d+$")
_UUID_PREFIX = {"cuda": "GPU-", "cpu": "CPU-"}


class DeviceRejected(Exception):
    """A device claim or reading that the validator refuses; ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class GpuTableError(ValueError):
    """The GPU table file is unreadable or one of its rows is invalid (names the file and row)."""


class DeviceSpec(BaseModel):
    """One device as the miner claims it: static properties that do not change at run time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["cuda", "cpu"]
    index: int = Field(..., ge=0, description="device ordinal on the miner (CUDA index)")
    name: str = Field(..., min_length=1, max_length=128, description="e.g. 'NVIDIA H100 80GB HBM3'")
    uuid: str = Field(..., min_length=5, max_length=128, pattern=r"^\S+$", description="'GPU-...' or 'CPU-...'")
    memory_bytes: int = Field(..., gt=0)
    sm_count: int = Field(..., gt=0, description="streaming multiprocessors (CPU: logical cores)")
    max_sm_clock_mhz: int = Field(..., gt=0)
    max_mem_clock_mhz: int = Field(..., ge=0)
    compute_capability: str = Field(..., description="'9.0' for CUDA devices, 'cpu' for the pseudo device")

    @model_validator(mode="after")
    def _consistent_kind(self) -> "DeviceSpec":
        if not self.uuid.startswith(_UUID_PREFIX[self.kind]):
            raise ValueError(f"a {self.kind} device uuid starts with {_UUID_PREFIX[self.kind]!r}")
        if self.kind == "cpu" and self.compute_capability != "cpu":
            raise ValueError("the compute capability of a cpu device is 'cpu'")
        if self.kind == "cuda" and not _CC.match(self.compute_capability):
            raise ValueError("a cuda compute capability looks like '9.0'")
        return self

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


class LiveDeviceInfo(BaseModel):
    """A live reading of one device, taken when the validator asks (``DeviceInfo`` synapse)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uuid: str = Field(..., min_length=1, max_length=128)
    name: str = Field(..., min_length=1, max_length=128)
    memory_total_bytes: int = Field(..., gt=0)
    memory_used_bytes: int = Field(..., ge=0)
    sm_clock_mhz: int = Field(..., ge=0, description="current SM clock (idle clocks are low)")
    mem_clock_mhz: int = Field(..., ge=0)
    temperature_c: float | None = None
    utilization_pct: float | None = Field(None, ge=0, le=100)
    sampled_at: float = Field(..., gt=0, description="unix time of the reading")

    @model_validator(mode="after")
    def _used_within_total(self) -> "LiveDeviceInfo":
        if self.memory_used_bytes > self.memory_total_bytes:
            raise ValueError("memory_used_bytes exceeds memory_total_bytes")
        return self


class GpuModel(BaseModel):
    """One row of the supported-GPU table: how to recognise the model and how to challenge it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(..., pattern=r"^[a-z0-9_]{1,32}$")
    name_pattern: str = Field(..., min_length=1, description="regex, searched case-insensitively in DeviceSpec.name")
    memory_gb_min: float = Field(..., gt=0, description="GiB")
    memory_gb_max: float = Field(..., gt=0, description="GiB")
    sm_count: int | None = Field(None, gt=0, description="exact SM count; left out only for the cpu row")
    sm_clock_mhz_min: int = Field(..., gt=0, description="lowest plausible max SM clock")
    sm_clock_mhz_max: int = Field(..., gt=0, description="highest plausible max SM clock")
    compute_capability: str
    graval_n: int = Field(..., ge=64, description="challenge matrix size (power of two)")
    graval_b: int = Field(..., ge=1, description="access-state width: graval_n // 64")
    graval_steps_per_matrix: int = Field(64, ge=1, le=1024, description="access steps per matrix: 64 makes the "
                                         "access phase as long as the fill, long beside a network round trip")
    fill_macs_per_s: float = Field(..., gt=0, description="prover throughput of the fill phase (MAC/s), hashing included")
    access_macs_per_s: float = Field(..., gt=0, description="prover throughput of the access phase (MAC/s), hashing included")
    window_low: float = Field(..., gt=0, description="fastest accepted time of a phase, as a factor of the expected")
    window_high: float = Field(..., gt=0, description="slowest accepted time of a phase, as a factor of the expected")
    compute_multiplier: float = Field(..., gt=0, description="scoring weight, H100 = 1.0")
    calibrated: bool = Field(False, description="the rates were measured on this model by `canopy graval calibrate`; "
                                                "until then a device of this row earns only uncalibrated_multiplier()")
    devnet_only: bool = False

    @field_validator("name_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "GpuModel":
        if self.memory_gb_min > self.memory_gb_max:
            raise ValueError("memory_gb_min exceeds memory_gb_max")
        if self.sm_clock_mhz_min > self.sm_clock_mhz_max:
            raise ValueError("sm_clock_mhz_min exceeds sm_clock_mhz_max")
        if self.graval_n & (self.graval_n - 1):
            raise ValueError("graval_n must be a power of two")
        if self.graval_b != self.graval_n // 64:
            raise ValueError(f"graval_b must be graval_n // 64 = {self.graval_n // 64}")
        if not self.window_low < 1 < self.window_high:
            raise ValueError("the timing window must satisfy window_low < 1 < window_high")
        if not self.devnet_only and self.window_high >= MAX_WINDOW_HIGH:
            raise ValueError(f"window_high must stay below {MAX_WINDOW_HIGH}: one device answering two claims "
                             "of one sweep takes twice the time (README, GraVal)")
        if not self.devnet_only and self.memory_separation <= self.window_high:
            raise ValueError(f"a prover short of 10% of the memory would be only {self.memory_separation:.2f}x "
                             f"slower in the access phase, inside window_high {self.window_high}: an access step "
                             "is too slow beside a fill product on this model (raise graval_steps_per_matrix or "
                             "re-measure)")
        is_cpu = self.compute_capability == "cpu"
        if is_cpu != self.devnet_only:
            raise ValueError("exactly the cpu row (compute_capability 'cpu') is devnet_only")
        if not is_cpu and not _CC.match(self.compute_capability):
            raise ValueError("compute_capability looks like '9.0'")
        if not is_cpu and self.sm_count is None:
            raise ValueError("sm_count is required for a GPU row")
        return self

    def matches_name(self, name: str) -> bool:
        return re.search(self.name_pattern, name, re.IGNORECASE) is not None

    @property
    def memory_separation(self) -> float:
        """How much slower, at least, the access phase of a prover short of 10% of the memory
        is: each rebuild (a fill product, n / b access steps' MACs) costs that many steps'
        time scaled by the access / fill rate ratio the row measured."""
        rebuild_steps = self.graval_n / self.graval_b * self.access_macs_per_s / self.fill_macs_per_s
        return 1 + MIN_REBUILD_SHARE * rebuild_steps

    def expected_seconds(self, phase: Literal["fill", "access"], macs: int) -> float:
        """How long ``macs`` multiply-accumulates of ``phase`` should take on this model."""
        return macs / (self.fill_macs_per_s if phase == "fill" else self.access_macs_per_s)

    def timing_window(self, phase: Literal["fill", "access"], macs: int) -> tuple[float, float]:
        """(fastest, slowest) accepted seconds for ``macs`` multiply-accumulates of ``phase``."""
        expected = self.expected_seconds(phase, macs)
        return expected * self.window_low, expected * self.window_high


def load_gpu_table(path: str | Path | None = None) -> list[GpuModel]:
    """Read and validate the supported-GPU table (default: ``gpus.toml`` beside this module)."""
    path = Path(path) if path is not None else GPU_TABLE_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GpuTableError(f"{path}: cannot read the GPU table: {exc}") from exc
    rows = data.get("gpu")
    if not isinstance(rows, list) or not rows:
        raise GpuTableError(f"{path}: expected one or more [[gpu]] tables")
    table: list[GpuModel] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        label = f"{path}: [[gpu]] row {number} (id={row.get('id')!r})"
        try:
            model = GpuModel.model_validate(row)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            raise GpuTableError(f"{label}: {problems}") from None
        if model.id in seen:
            raise GpuTableError(f"{label}: duplicate id, already used by row {seen[model.id]}")
        seen[model.id] = number
        table.append(model)
    return table


def _first_mismatch(spec: DeviceSpec, model: GpuModel) -> tuple[RejectReason, str] | None:
    """Why ``spec`` is not this model (checked in a fixed order), or None when it is."""
    if not model.memory_gb_min <= spec.memory_gib <= model.memory_gb_max:
        return "memory_mismatch", (f"{spec.memory_gib:.2f} GiB is outside {model.id}'s "
                                   f"{model.memory_gb_min}-{model.memory_gb_max} GiB")
    if model.sm_count is not None and spec.sm_count != model.sm_count:
        return "sm_mismatch", f"{spec.sm_count} SMs, {model.id} has {model.sm_count}"
    if not model.sm_clock_mhz_min <= spec.max_sm_clock_mhz <= model.sm_clock_mhz_max:
        return "clock_out_of_range", (f"max SM clock {spec.max_sm_clock_mhz} MHz is outside {model.id}'s "
                                      f"{model.sm_clock_mhz_min}-{model.sm_clock_mhz_max} MHz")
    if spec.compute_capability != model.compute_capability:
        return "cc_mismatch", f"compute capability {spec.compute_capability}, {model.id} is {model.compute_capability}"
    return None


def match_model(spec: DeviceSpec, table: list[GpuModel], *, allow_cpu: bool) -> GpuModel:
    """The table row that ``spec`` is, or DeviceRejected saying why none is.

    A row matches when its name pattern is found in the name and memory, SM count, max SM
    clock and compute capability all agree. When several rows match the name and none
    agrees, the reason comes from the row that got furthest through the checks.
    """
    if spec.kind == "cpu" and not allow_cpu:
        raise DeviceRejected("cpu_not_allowed", f"{spec.uuid}: the CPU pseudo-device is accepted on the devnet only")
    candidates = [model for model in table if model.devnet_only == (spec.kind == "cpu") and model.matches_name(spec.name)]
    if not candidates:
        raise DeviceRejected("unsupported_model", f"{spec.name!r} is not in the supported-GPU table")
    order = ["memory_mismatch", "sm_mismatch", "clock_out_of_range", "cc_mismatch"]
    best: tuple[RejectReason, str] | None = None
    for model in candidates:
        mismatch = _first_mismatch(spec, model)
        if mismatch is None:
            return model
        if best is None or order.index(mismatch[0]) > order.index(best[0]):
            best = mismatch
    assert best is not None
    raise DeviceRejected(best[0], f"{spec.name!r} ({spec.uuid}): {best[1]}")


def check_live(claim: DeviceSpec, live: LiveDeviceInfo, model: GpuModel) -> None:
    """Raise DeviceRejected unless the live reading is consistent with the claim and its model."""
    if live.uuid != claim.uuid:
        raise DeviceRejected("uuid_mismatch", f"live reading is for {live.uuid}, the claim is {claim.uuid}")
    if live.name.strip() != claim.name.strip():
        raise DeviceRejected("name_mismatch", f"{claim.uuid}: live name {live.name!r}, claimed {claim.name!r}")
    if abs(live.memory_total_bytes - claim.memory_bytes) > LIVE_MEMORY_TOLERANCE * claim.memory_bytes:
        raise DeviceRejected("memory_mismatch", (f"{claim.uuid}: live total memory {live.memory_total_bytes} bytes, "
                                                 f"claimed {claim.memory_bytes}"))
    limit = model.sm_clock_mhz_max * (1 + LIVE_CLOCK_TOLERANCE)
    if live.sm_clock_mhz > limit:
        raise DeviceRejected("clock_out_of_range", (f"{claim.uuid}: live SM clock {live.sm_clock_mhz} MHz is above "
                                                    f"{model.id}'s {model.sm_clock_mhz_max} MHz + 5%"))


def uncalibrated_multiplier(model: GpuModel, proven_bytes: int, table: list[GpuModel]) -> float:
    """The scoring multiplier of a device whose proof passed on ``model`` holding ``proven_bytes``.

    A calibrated row pays its own ``compute_multiplier``. An uncalibrated row's timing
    window says nothing about which GPU answered, only the memory proof holds: the device
    could be any model of the table with that much memory, so it earns the lowest
    multiplier among them (never more than its own row's).
    """
    if model.calibrated:
        return model.compute_multiplier
    able = [row.compute_multiplier for row in table
            if row.devnet_only == model.devnet_only and row.memory_gb_max * GIB >= proven_bytes]
    return min([model.compute_multiplier, *able])


def proven_bytes(row: Any) -> int:
    """The memory a verification proved: ``proven_bytes`` where the result has it, else the
    device's ``memory_bytes`` (the proof fills ~95% of the memory the device claims)."""
    return int(getattr(row, "proven_bytes", None) or row.memory_bytes or 0)


def device_multiplier(table: Iterable[GpuModel]) -> Callable[[Any], float]:
    """The scoring multiplier of a verification (``DeviceResult`` or store row: ``model_id``,
    ``memory_bytes``): ``uncalibrated_multiplier`` of its table row for the memory proven,
    so an uncalibrated row earns no more than the cheapest model that could hold that
    memory. A model id missing from the table gets 0 (the device then does not count)."""
    rows = list(table)
    models = {model.id: model for model in rows}

    @lru_cache(maxsize=4096)
    def of(model_id: str, proven: int) -> float:
        model = models.get(model_id)
        return 0.0 if model is None else uncalibrated_multiplier(model, proven, rows)

    return lambda row: of(row.model_id, proven_bytes(row)) * proven_fraction(row)


def proven_fraction(row: Any) -> float:
    """The share of the device a verification proved: below 1 for a device re-verified beside
    its instances (README, GraVal: serving), whose capacity counts only that share."""
    fraction = getattr(row, "proven_fraction", None)
    return float(fraction) if fraction else 1.0
