"""``/admin/miners``' devices (``api.admin_series._devices``) on the validator's real store: per
hotkey and uuid, with the owner, whether the GPU-table row is calibrated and the multiplier
the device earns (0 unless it passed and its hotkey owns it)."""

from __future__ import annotations

import pytest

from api.admin_series import _devices
from protocol.graval.devices import GIB
from validator.graval.session import DeviceResult
from store.queries import ValidatorStore


@pytest.fixture
async def store(tmp_path):
    opened = await ValidatorStore.open(f"sqlite+aiosqlite:///{tmp_path / 'validator.sqlite'}")
    yield opened
    await opened.close()


async def test_admin_devices_show_owner_calibration_and_the_multiplier_earned(store):
    await store.record_device_results([
        DeviceResult("victim", "GPU-1", True, "ok", model_id="h100", memory_bytes=79 * GIB),
        DeviceResult("victim", "GPU-2", True, "ok", model_id="h200", memory_bytes=140 * GIB),
        DeviceResult("victim", "GPU-3", False, "too_slow", model_id="h100", memory_bytes=79 * GIB)])
    await store.record_device_results([DeviceResult("thief", "GPU-1", True, "ok", model_id="h100",
                                                    memory_bytes=79 * GIB)])
    devices = await _devices(store)
    victim = {device["uuid"]: device for device in devices["victim"]}
    # uncalibrated rows (the table as shipped): the cheapest row that holds the memory proven
    assert (victim["GPU-1"]["ok"], victim["GPU-1"]["calibrated"], victim["GPU-1"]["multiplier"]) == (True, False, 0.55)
    assert victim["GPU-2"]["multiplier"] == 1.3 and victim["GPU-1"]["owner"] == "victim"
    assert (victim["GPU-3"]["multiplier"], victim["GPU-3"]["owner"]) == (0.0, None)  # failed: owns nothing
    (thief,) = devices["thief"]  # its claim of the victim's uuid, shown apart and earning nothing
    assert (thief["uuid"], thief["ok"], thief["reason"], thief["owner"], thief["multiplier"]) == (
        "GPU-1", False, "uuid_taken", "victim", 0.0)
