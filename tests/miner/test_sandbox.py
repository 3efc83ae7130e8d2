"""A hostile chute in the miner's sandbox (``miner.sandbox`` through ``InstanceManager(sandbox=True)``).

The chute is written here, to a folder that stands for its verified bundle, and started by
a real InstanceManager in bubblewrap. Its cord tries what a stranger's code would try and
returns what it saw: the miner's hotkey file, its wallets folder, the store, the miner's
``/proc/<pid>/environ`` and a secret in the miner's environment; TCP to a port the miner
listens on (its "axon") and to an outside address; writes outside its scratch folder. The
test asserts it saw nothing, reached nothing and wrote nowhere but its scratch folder,
while an ordinary call of the same instance is served over the sandbox's Unix socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from miner.instances import InstanceManager, InstanceSpec
from tests.support import free_port
from tests.support.chutes import cpu_devices

if shutil.which("bwrap") is None and os.environ.get("CANOPY_REQUIRE_BWRAP"):
    pytest.fail("bubblewrap is missing though ./run.sh test requires it (apt-get install bubblewrap)", pytrace=False)
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is installed by ./run.sh test")

HOSTILE = '''
import os, socket
from canopy import Chute, NodeSelector

chute = Chute(username="mallory", name="snoop", node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0))


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("utf-8", "replace")
    except OSError as error:
        return f"refused: {type(error).__name__}"


def _connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as error:
        return f"refused: {type(error).__name__}"


def _write(path):
    try:
        with open(path, "w") as handle:
            handle.write("pwned")
        return "written"
    except OSError as error:
        return f"refused: {type(error).__name__}"


@chute.cord()
async def look(self, targets: dict) -> dict:
    return {
        "files": {path: _read(path) for path in targets["files"]},
        "listing": {path: (sorted(os.listdir(path)) if os.path.isdir(path) else "absent") for path in targets["dirs"]},
        "env": dict(os.environ),
        "tcp": {f"{host}:{port}": _connect(host, port) for host, port in targets["tcp"]},
        "writes": {path: _write(path) for path in targets["writes"]},
        "home_write": _write(os.path.join(os.environ["HOME"], "mine.txt")),
        "tmp_write": _write("/tmp/mine.txt"),
    }
'''


async def test_a_hostile_chute_sees_reaches_and_writes_nothing_of_the_miner(tmp_path, monkeypatch):
    bundle = tmp_path / "bundles" / "ff"
    bundle.mkdir(parents=True)
    (bundle / "snoop.py").write_text(HOSTILE)
    wallets = tmp_path / "home" / ".bittensor" / "wallets" / "miner" / "hotkeys"
    wallets.mkdir(parents=True)
    hotkey = wallets / "default"
    hotkey.write_text('{"secretPhrase": "the miner hotkey seed"}')
    store = tmp_path / "canopy" / "validator.sqlite"
    store.parent.mkdir()
    store.write_text("the store")
    monkeypatch.setenv("CANOPY_TEST_SECRET", "miner-only secret value")

    async def axon(reader, writer):
        writer.close()

    server = await asyncio.start_server(axon, "127.0.0.1", free_port())
    axon_port = server.sockets[0].getsockname()[1]
    manager = InstanceManager([InstanceSpec(chute_id="snoop", name="snoop", ref="snoop:chute", devices=tuple(cpu_devices(1)),
                                            cwd=str(bundle))], log_dir=tmp_path / "logs", sandbox=True, start_timeout_s=60)
    try:
        await manager.start()
        [instance] = manager.instances
        assert instance.ready, instance.last_error
        assert instance.port is None and instance.scratch is not None, "reached over its Unix socket, no port"
        targets = {"files": [str(hotkey), str(store), f"/proc/{os.getpid()}/environ", "/etc/shadow"],
                   "dirs": [str(tmp_path / "home" / ".bittensor"), str(tmp_path), str(tmp_path / "canopy"), "/root"],
                   "tcp": [["127.0.0.1", axon_port], ["127.0.0.1", 22], ["1.1.1.1", 53]],
                   "writes": [str(bundle / "snoop.py"), str(tmp_path / "canopy" / "planted"), "/usr/planted"]}
        async with manager.session_for(instance).post(instance.url + "/look", json=targets) as response:
            assert response.status == 200, await response.text()
            seen = await response.json()
        assert all(text.startswith("refused") for text in seen["files"].values()), seen["files"]
        listing = seen["listing"]
        assert listing[str(tmp_path / "home" / ".bittensor")] == listing[str(tmp_path / "canopy")] == "absent", listing
        assert listing[str(tmp_path)] == ["bundles"], "of the miner's folder, only the way to its own bundle"
        assert listing["/root"] in ("absent", [".pyenv"]), "of root's home, at most the interpreter's folder"
        assert "CANOPY_TEST_SECRET" not in seen["env"] and not any("secret" in v for v in seen["env"].values())
        assert seen["env"]["HOME"] == str(instance.scratch)
        assert all(result.startswith("refused") for result in seen["tcp"].values()), seen["tcp"]
        assert all(result.startswith("refused") for result in seen["writes"].values()), seen["writes"]
        assert (seen["home_write"], seen["tmp_write"]) == ("written", "written"), "its scratch folder and /tmp are its own"
        assert (bundle / "snoop.py").read_text() == HOSTILE and not (tmp_path / "canopy" / "planted").exists()
        assert hotkey.read_text() == '{"secretPhrase": "the miner hotkey seed"}'
        assert (instance.scratch / "mine.txt").read_text() == "pwned", "what it wrote at HOME is in its scratch folder"
    finally:
        await manager.stop()
        server.close()
        await server.wait_closed()
    assert instance.scratch is None, "the scratch folder goes with the instance"
