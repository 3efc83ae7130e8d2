"""``canopy devices``: list the owners of device uuids, reassign and pin one, release one."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner

from canopy.cli.main import app
from validator.graval.session import DeviceResult
from store.queries import ValidatorStore
from tests.support.store import sqlite_url

runner = CliRunner()


def devices(url: str, *args: str):
    return runner.invoke(app, ["devices", *args, "--database-url", url], env={"COLUMNS": "250"})


async def _seed(url: str) -> None:
    store = await ValidatorStore.open(url)
    try:
        await store.record_device_results([DeviceResult("hk-victim", "GPU-1", True, "ok", model_id="h100"),
                                           DeviceResult("hk-victim", "GPU-2", True, "ok", model_id="h100")])
        await store.record_device_results([DeviceResult("hk-thief", "GPU-1", True, "ok", model_id="h100")])
    finally:
        await store.close()


async def _owners(url: str) -> dict[str, tuple[str, bool]]:
    store = await ValidatorStore.open(url)
    try:
        return {uuid: (owner.hotkey, owner.pinned) for uuid, owner in (await store.device_owners()).items()}
    finally:
        await store.close()


def test_devices_list_owner_and_release(tmp_path):
    url = sqlite_url(tmp_path / "validator.sqlite")
    asyncio.run(_seed(url))
    listed = devices(url, "list")
    assert listed.exit_code == 0, listed.output
    assert "GPU-1" in listed.output and "hk-victim" in listed.output and "hk-thief" not in listed.output
    assert "ok h100" in listed.output

    moved = devices(url, "owner", "GPU-1", "--hotkey", "hk-thief", "--pin")
    assert moved.exit_code == 0 and "belongs to hk-thief (was hk-victim), pinned" in moved.output
    assert asyncio.run(_owners(url)) == {"GPU-1": ("hk-thief", True), "GPU-2": ("hk-victim", False)}
    mine = devices(url, "list", "--hotkey", "hk-thief")
    assert "GPU-1" in mine.output and "GPU-2" not in mine.output and "yes" in mine.output
    assert "uuid_taken" in mine.output  # its last claim of GPU-1 was refused, before the override

    released = devices(url, "release", "GPU-2")
    assert released.exit_code == 0 and "released (was hk-victim)" in released.output
    assert asyncio.run(_owners(url)) == {"GPU-1": ("hk-thief", True)}
    again = devices(url, "release", "GPU-2")
    assert again.exit_code == 1 and "no owner recorded for GPU-2" in again.output
