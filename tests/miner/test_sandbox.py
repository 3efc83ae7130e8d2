"""A hostile chute in the miner's sandbox (``node.sandbox`` through ``InstanceManager(sandbox=True)``).

The chute is written here, to a folder that stands for its verified bundle, and started by
a real InstanceManager in bubblewrap. Its cord tries what a stranger's code would try and
returns what it saw: the miner's hotkey file, its wallets folder, the store, the miner's
``/proc/<pid>/environ`` and a secret in the miner's environment; TCP to a port the miner
listens on (its "axon") and to an outside address; writes outside its scratch folder. The
test asserts it saw nothing, reached nothing and wrote nowhere but its scratch folder,
while an ordinary call of the same instance is served over the sandbox's Unix socket. A
second chute forks without end (stopped at its process cap, the miner and another
instance unaffected) and allocates past its memory cap (killed by the kernel mid-call,
restarted, its failure naming the cap).
"""

from __future__ import annotations

import asyncio
import os
import shutil

import aiohttp
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


GREEDY = '''
import os, time
from canopy import Chute, NodeSelector

chute = Chute(username="mallory", name="greedy", node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0))


@chute.cord()
async def forks(self) -> dict:
    made, error = 0, ""
    for _ in range(10_000):
        try:
            pid = os.fork()
        except OSError as failure:
            error = type(failure).__name__
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        made += 1
    return {"made": made, "error": error}


@chute.cord()
async def hog(self) -> dict:
    blocks = [bytearray(16 << 20) for _ in range(64)]  # 1 GiB, touched page by page
    return {"held": sum(len(block) for block in blocks)}


@chute.cord()
async def ping(self) -> dict:
    return {"pong": True}
'''


async def test_fork_bombs_and_memory_hogs_hit_their_caps_and_the_rest_keeps_serving(tmp_path):
    bundle = tmp_path / "bundles" / "greedy"
    bundle.mkdir(parents=True)
    (bundle / "greedy.py").write_text(GREEDY)
    spec = dict(ref="greedy:chute", devices=tuple(cpu_devices(1)), cwd=str(bundle))
    manager = InstanceManager([InstanceSpec(chute_id="bomb", name="bomb", **spec),
                               InstanceSpec(chute_id="calm", name="calm", **spec)],
                              log_dir=tmp_path / "logs", sandbox=True, start_timeout_s=60, memory_mb=192, max_pids=64,
                              backoff_base_s=0.2)

    async def post(instance, path):
        async with manager.session_for(instance).post(instance.url + path, json={}) as response:
            return response.status, await response.json()

    try:
        await manager.start()
        bomb, calm = manager.instances
        assert bomb.ready and calm.ready and bomb.cgroup is not None, bomb.last_error
        status, forked = await post(bomb, "/forks")
        assert status == 200 and forked["error"] == "BlockingIOError" and forked["made"] < 64, forked
        assert await post(calm, "/ping") == (200, {"pong": True}), "the other instance keeps serving"
        assert (await asyncio.create_subprocess_exec("true")).pid > 0, "the miner can still start processes"

        with pytest.raises(aiohttp.ClientError):
            await post(bomb, "/hog")  # past 192 MiB: the kernel kills it mid-call
        manager.report_failure(bomb, "dropped a request (test)")
        assert await manager.wait_ready(bomb, 30), bomb.last_error
        assert bomb.restarts >= 1 and "memory cap" in bomb.failures[-1], list(bomb.failures)
        assert await post(bomb, "/ping") == (200, {"pong": True}), "restarted"
        assert await post(calm, "/ping") == (200, {"pong": True})
    finally:
        await manager.stop()
