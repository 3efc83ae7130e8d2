"""The supported-GPU table (gpus.toml) and the device checks of protocol.graval.devices."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from protocol.graval.devices import (
    GPU_TABLE_PATH, DeviceRejected, DeviceSpec, GpuModel, GpuTableError, LiveDeviceInfo, check_live, load_gpu_table,
    match_model,
)

GIB = 1 << 30
H100 = dict(kind="cuda", index=0, name="NVIDIA H100 80GB HBM3", uuid="GPU-8f3c1a2b-0000-1111-2222-333344445555",
            memory_bytes=81559 * (1 << 20), sm_count=132, max_sm_clock_mhz=1980, max_mem_clock_mhz=2619,
            compute_capability="9.0")
# What NVML calls each supported model, and the row it must match (and only it).
NAMES = {
    "NVIDIA H100 80GB HBM3": "h100", "NVIDIA H100 PCIe": "h100_pcie", "NVIDIA H200": "h200",
    "NVIDIA A100-SXM4-80GB": "a100_80gb", "NVIDIA A100 80GB PCIe": "a100_80gb", "NVIDIA A100-PCIE-40GB": "a100_40gb",
    "NVIDIA L40S": "l40s", "NVIDIA RTX A6000": "a6000", "NVIDIA GeForce RTX 4090": "rtx4090",
    "NVIDIA GeForce RTX 3090": "rtx3090", "NVIDIA A10": "a10", "NVIDIA L4": "l4", "CPU pseudo-device (devnet)": "cpu",
}


@pytest.fixture(scope="module")
def table() -> list[GpuModel]:
    return load_gpu_table()


def spec(**changes) -> DeviceSpec:
    return DeviceSpec(**{**H100, **changes})


def live(claim: DeviceSpec, **changes) -> LiveDeviceInfo:
    fields = dict(uuid=claim.uuid, name=claim.name, memory_total_bytes=claim.memory_bytes, memory_used_bytes=512 << 20,
                  sm_clock_mhz=345, mem_clock_mhz=2619, temperature_c=31.0, utilization_pct=0.0, sampled_at=time.time())
    return LiveDeviceInfo(**{**fields, **changes})


def rejection(call, *args, **kwargs) -> str:
    with pytest.raises(DeviceRejected) as caught:
        call(*args, **kwargs)
    return caught.value.reason


# --- the table -------------------------------------------------------------------------


def test_the_table_loads_with_unique_ids_and_the_expected_rows(table):
    ids = [model.id for model in table]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(NAMES.values())
    assert [model.id for model in table if model.devnet_only] == ["cpu"]


def test_every_row_is_consistent(table):
    for model in table:
        assert model.graval_b == model.graval_n // 64
        assert model.window_low < 1 < model.window_high and model.compute_multiplier > 0
        if model.devnet_only:
            assert model.graval_n == 1024 and model.compute_multiplier == 0.001
        else:
            assert model.graval_n == (16384 if model.memory_gb_min >= 38 else 8192)
            assert model.sm_count and model.window_low == 0.25 and model.window_high < 1.84  # README: a rebuilding prover needs >= 1.84x
    by_id = {model.id: model for model in table}
    assert by_id["h100"].compute_multiplier == 1.0 and by_id["h100"].sm_count == 132
    assert by_id["h100_pcie"].sm_count == 114 and by_id["h200"].sm_count == 132


@pytest.mark.parametrize("name,row", sorted(NAMES.items()))
def test_each_real_name_matches_exactly_one_row(table, name, row):
    assert [model.id for model in table if model.matches_name(name)] == [row]


def test_the_timing_window_scales_with_the_work(table):
    h100 = next(model for model in table if model.id == "h100")
    low, high = h100.timing_window("fill", int(h100.fill_macs_per_s))
    assert (low, high) == pytest.approx((h100.window_low, h100.window_high))
    assert h100.timing_window("access", int(2 * h100.access_macs_per_s))[1] == pytest.approx(2 * h100.window_high)


def test_an_uncalibrated_row_earns_the_lowest_multiplier_of_the_rows_holding_its_proven_memory(table):
    from protocol.graval.devices import uncalibrated_multiplier  # noqa: PLC0415

    h100 = next(model for model in table if model.id == "h100")
    proven = int(0.95 * h100.memory_gb_min * (1 << 30))
    could_be = [m.compute_multiplier for m in table if not m.devnet_only and m.memory_gb_max * (1 << 30) >= proven]
    assert not h100.calibrated and uncalibrated_multiplier(h100, proven, table) == min(could_be) < h100.compute_multiplier
    calibrated = h100.model_copy(update={"calibrated": True})
    assert uncalibrated_multiplier(calibrated, proven, table) == h100.compute_multiplier


def test_a_gpu_row_whose_access_steps_are_too_slow_to_separate_a_short_memory_is_refused(tmp_path):
    rows = GPU_TABLE_PATH.read_text().replace("access_macs_per_s = 4.0e14", "access_macs_per_s = 1.0e14", 1)
    bad = tmp_path / "gpus.toml"
    bad.write_text(rows)
    with pytest.raises(GpuTableError, match="short of 10% of the memory"):
        load_gpu_table(bad)


def test_a_gpu_row_whose_window_lets_one_device_answer_two_claims_is_refused(tmp_path):
    rows = GPU_TABLE_PATH.read_text().replace("window_high = 1.5", "window_high = 2.5", 1)
    bad = tmp_path / "gpus.toml"
    bad.write_text(rows)
    with pytest.raises(GpuTableError, match="window_high must stay below 2"):
        load_gpu_table(bad)


def test_a_bad_row_is_reported_with_its_file_and_number(tmp_path):
    rows = GPU_TABLE_PATH.read_text().replace("sm_count = 114", "sm_count = -1")
    bad = tmp_path / "gpus.toml"
    bad.write_text(rows)
    with pytest.raises(GpuTableError) as caught:
        load_gpu_table(bad)
    message = str(caught.value)
    assert str(bad) in message and "row 2" in message and "h100_pcie" in message and "sm_count" in message


@pytest.mark.parametrize("text,expected", [
    ('[[gpu]]\nid = "x"\n[[gpu]', "cannot read"),
    ('title = "no rows"\n', "[[gpu]]"),
])
def test_an_unreadable_table_names_the_file(tmp_path, text, expected):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(GpuTableError, match="broken.toml") as caught:
        load_gpu_table(path)
    assert expected in str(caught.value)


def test_duplicate_ids_are_refused(tmp_path):
    text = GPU_TABLE_PATH.read_text().replace('id = "h100_pcie"', 'id = "h100"')
    path = tmp_path / "dup.toml"
    path.write_text(text)
    with pytest.raises(GpuTableError, match=r"row 2 .*duplicate id, already used by row 1"):
        load_gpu_table(path)


# --- the models ------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"uuid": "8f3c-no-prefix"}, {"uuid": "CPU-0011"}, {"compute_capability": "cpu"}, {"memory_bytes": 0},
    {"sm_count": 0}, {"index": -1}, {"extra": 1}, {"kind": "rocm"}, {"uuid": "GPU-a b"},
])
def test_malformed_specs_are_refused(changes):
    with pytest.raises(ValidationError):
        spec(**changes)


def test_specs_are_frozen_and_live_used_memory_cannot_exceed_total():
    with pytest.raises(ValidationError):
        spec().sm_count = 1
    with pytest.raises(ValidationError):
        live(spec(), memory_used_bytes=spec().memory_bytes + 1)


# --- match_model -----------------------------------------------------------------------


def test_a_real_h100_matches(table):
    assert match_model(spec(), table, allow_cpu=False).id == "h100"
    pcie = spec(name="NVIDIA H100 PCIe", sm_count=114, max_sm_clock_mhz=1755, max_mem_clock_mhz=1593)
    assert match_model(pcie, table, allow_cpu=False).id == "h100_pcie"


@pytest.mark.parametrize("changes,reason", [
    ({"name": "NVIDIA H800"}, "unsupported_model"),
    ({"name": "NVIDIA A10G"}, "unsupported_model"),
    ({"name": "CPU pseudo-device (devnet)"}, "unsupported_model"),  # a cuda device never matches the cpu row
    ({"memory_bytes": 40 * GIB}, "memory_mismatch"),
    ({"sm_count": 114}, "sm_mismatch"),
    ({"max_sm_clock_mhz": 2400}, "clock_out_of_range"),
    ({"max_sm_clock_mhz": 1000}, "clock_out_of_range"),
    ({"compute_capability": "8.0"}, "cc_mismatch"),
])
def test_each_static_mismatch_is_rejected_with_its_reason(table, changes, reason):
    assert rejection(match_model, spec(**changes), table, allow_cpu=False) == reason


def test_the_cpu_device_is_matched_only_when_allowed(table):
    cpu = DeviceSpec(kind="cpu", index=0, name="CPU pseudo-device (devnet)", uuid="CPU-0123456789abcdef",
                     memory_bytes=256 << 20, sm_count=7, max_sm_clock_mhz=2400, max_mem_clock_mhz=0,
                     compute_capability="cpu")
    assert rejection(match_model, cpu, table, allow_cpu=False) == "cpu_not_allowed"
    assert match_model(cpu, table, allow_cpu=True).id == "cpu"


def test_rejections_carry_a_known_reason_and_a_message():
    error = DeviceRejected("sm_mismatch", "132 vs 114")
    assert error.reason == "sm_mismatch" and error.message == "132 vs 114" and "sm_mismatch" in str(error)
    with pytest.raises(ValueError):
        DeviceRejected("made_up", "no")


# --- check_live ------------------------------------------------------------------------


def test_a_consistent_live_reading_passes_even_at_idle_clocks(table):
    claim = spec()
    model = match_model(claim, table, allow_cpu=False)
    check_live(claim, live(claim), model)
    check_live(claim, live(claim, sm_clock_mhz=2070, memory_total_bytes=int(claim.memory_bytes * 0.995)), model)


@pytest.mark.parametrize("changes,reason", [
    ({"uuid": "GPU-00000000-other"}, "uuid_mismatch"),
    ({"name": "NVIDIA H100 PCIe"}, "name_mismatch"),
    ({"memory_total_bytes": 78 * GIB}, "memory_mismatch"),
    ({"memory_total_bytes": 82 * GIB}, "memory_mismatch"),
    ({"sm_clock_mhz": 2100}, "clock_out_of_range"),
])
def test_each_live_mismatch_is_rejected_with_its_reason(table, changes, reason):
    claim = spec()
    model = match_model(claim, table, allow_cpu=False)
    assert rejection(check_live, claim, live(claim, **changes), model) == reason
