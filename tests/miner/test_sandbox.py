"""Hostile chutes in the miner's sandbox (``node.sandbox`` through ``InstanceManager(sandbox=True)``).

Each chute is written here, to a folder that stands for its verified bundle, described as the
API would (``allow_external_egress`` comes from its code) and started by a real
InstanceManager in bubblewrap. The snoop's cord tries what a stranger's code would try and
returns what it saw: the miner's hotkey file (a real bittensor wallet), its wallets folder,
the store (a real SQLite file), the miner's ``/proc/<pid>/environ`` and a secret in the
miner's environment; TCP to the miner's "axon" (on loopback and on the host's own address),
to another loopback port and to an outside address; writes outside its scratch folder. It
sees, reaches and writes nothing; with ``allow_external_egress`` it reaches (or tries) the
outside while the miner's ports stay refused. A second chute forks without end (stopped at
its process cap, the miner and another instance unaffected) and allocates past its memory
cap (killed by the kernel mid-call, the chute service's caller gets ``instance_crashed``,
it restarts, its failure naming the cap).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import tempfile
from pathlib import Path

import pytest

from chain.base import Neuron
from miner.chutes_service import ChutesService
from miner.hosting import ChuteEntry, HostedPlan, describe_chute
from miner.instances import InstanceManager, InstanceSpec
from node.egress import host_addresses
from node.sandbox import NOBODY
from node.wallets import create_devnet_wallet
from protocol.axon import Caller
from protocol.chutes import Invoke
from protocol.errors import InstanceCrashed
from tests.support import free_port
from tests.support.chutes import cpu_devices

if shutil.which("bwrap") is None and os.environ.get("CANOPY_REQUIRE_BWRAP"):
    pytest.fail("bubblewrap is missing though ./run.sh test requires it (apt-get install bubblewrap)", pytrace=False)
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is installed by ./run.sh test")

HOSTILE = """
import errno, os, socket
from canopy import Chute, NodeSelector

chute = Chute(username="mallory", name="snoop", node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0),
              allow_external_egress=EGRESS)


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("utf-8", "replace")
    except OSError as error:
        return f"refused: {type(error).__name__}"


def _connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except TimeoutError:
        return "timed out"
    except OSError as error:
        return f"refused: {type(error).__name__} {errno.errorcode.get(error.errno, error.errno)}"


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
        "environs": {path: _read(path) for path in targets.get("environs", [])},
        "listing": {path: (sorted(os.listdir(path)) if os.path.isdir(path) else "absent") for path in targets["dirs"]},
        "env": dict(os.environ),
        "tcp": {f"{host}:{port}": _connect(host, port) for host, port in targets["tcp"]},
        "writes": {path: _write(path) for path in targets["writes"]},
        "home_write": _write(os.path.join(os.environ["HOME"], "mine.txt")),
        "tmp_write": _write("/tmp/mine.txt"),
        "uid": os.getuid(),
    }
"""


def outside_address() -> str:
    """An address of the package index (reachable from CI): the outside a chute may try."""
    try:
        return socket.getaddrinfo("pypi.org", 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError:
        return "151.101.0.223"


def own_address() -> str | None:
    """This host's first address that is not loopback (a service bound to 0.0.0.0 answers there)."""
    return next((net.split("/")[0] for net in host_addresses() if not net.startswith("127.")), None)


class Miner:
    """What a hostile chute goes after: the miner's real wallet (made with bittensor) under its
    HOME, its store (a real SQLite file) under $CANOPY_HOME, a secret in its environment, its
    axon (listening on every address) and another local service (loopback only)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.home, self.canopy = root / "home", root / "canopy"
        monkeypatch.setenv("HOME", str(self.home))
        monkeypatch.setenv("CANOPY_HOME", str(self.canopy))
        monkeypatch.setenv("CANOPY_TEST_SECRET", "miner-only secret value")
        wallet = create_devnet_wallet("miner", "default", self.home / ".bittensor" / "wallets")
        self.hotkey = Path(wallet.hotkey_file.path)
        self.hotkey_text = self.hotkey.read_text()
        self.store = self.canopy / "validator.sqlite"
        self.canopy.mkdir()
        with sqlite3.connect(self.store) as db:
            db.execute("CREATE TABLE api_keys (hash TEXT)")
            db.execute("INSERT INTO api_keys VALUES ('the stored key hashes')")
        self.servers: list[asyncio.Server] = []

    async def listen(self, host: str) -> int:
        async def close(reader, writer):
            writer.close()

        server = await asyncio.start_server(close, host, free_port())
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


async def _hostile(tmp_path: Path, miner: Miner, *, egress: bool) -> tuple[InstanceManager, Path, dict]:
    """The hostile chute deployed as a bundle; its InstanceSpec built from its own description
    (so ``allow_external_egress`` comes from the SDK, through ChuteInfo), started sandboxed."""
    bundle = tmp_path / "bundles" / "ff"
    bundle.mkdir(parents=True)
    (bundle / "snoop.py").write_text(HOSTILE.replace("EGRESS", str(egress)))
    info = await describe_chute("snoop:chute", cwd=bundle)
    assert info.allow_external_egress is egress
    spec = InstanceSpec(chute_id="snoop", name="snoop", ref="snoop:chute", devices=tuple(cpu_devices(1)), cwd=str(bundle),
                        environment=info.environment, egress=info.allow_external_egress)
    manager = InstanceManager([spec], log_dir=tmp_path / "logs", sandbox=True, start_timeout_s=60)
    await manager.start()
    return manager, bundle, manager.instances[0].__dict__


async def _look(manager: InstanceManager, targets: dict) -> dict:
    [instance] = manager.instances
    assert instance.ready, instance.last_error
    async with manager.session_for(instance).post(instance.url + "/look", json=targets) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.fixture
def miner_root():
    """The miner's home and $CANOPY_HOME, outside /tmp (which the sandbox replaces with its own)."""
    root = Path(tempfile.mkdtemp(prefix="canopy-miner-", dir="/var/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def test_a_hostile_chute_sees_reaches_and_writes_nothing_of_the_miner(tmp_path, miner_root, monkeypatch):
    miner = Miner(miner_root, monkeypatch)
    axon_port, local_port = await miner.listen("0.0.0.0"), await miner.listen("127.0.0.1")
    manager, bundle, _ = await _hostile(tmp_path, miner, egress=False)
    try:
        [instance] = manager.instances
        assert instance.port is None and instance.sandbox is not None, "reached over its Unix socket, no port"
        scratch = instance.sandbox.scratch
        tcp = [["127.0.0.1", axon_port], ["127.0.0.1", local_port], [outside_address(), 443]]
        tcp += [[own_address(), axon_port]] if own_address() else []
        seen = await _look(manager, {
            "files": [str(miner.hotkey), str(miner.store), f"/proc/{os.getpid()}/environ", "/etc/shadow",
                      str(instance.sandbox.socket)],
            "environs": [f"/proc/{pid}/environ" for pid in range(1, 6)],
            "dirs": [str(miner.home / ".bittensor" / "wallets"), str(tmp_path), str(miner_root), str(miner.canopy),
                     str(instance.sandbox.socket.parent), "/root"],
            "tcp": tcp,
            "writes": [str(bundle / "snoop.py"), str(miner.canopy / "planted"), "/usr/planted"]})
        assert all(text.startswith("refused") for text in seen["files"].values()), seen["files"]
        listing = seen["listing"]
        assert listing[str(miner.home / ".bittensor" / "wallets")] == "absent", listing
        assert listing[str(miner.canopy)] == ["models"], "of $CANOPY_HOME only the shared model cache"
        assert listing[str(miner_root)] == ["canopy"], "of the miner's home folder, only the way to the cache"
        assert listing[str(tmp_path)] == ["bundles"], "of the bundles' folder, only the way to its own"
        assert listing[str(instance.sandbox.socket.parent)] == [instance.sandbox.scratch.name], \
            "the socket the miner reaches it on is not in its sandbox (nothing to swap for a link)"
        environs = "".join(seen["environs"].values())
        assert "CANOPY_TEST_SECRET" not in environs and "miner-only secret value" not in environs, environs
        assert f"HOME={miner.home}" not in environs and f"CANOPY_HOME={miner.canopy}" not in environs, \
            "bubblewrap's own PID 1 holds none of the miner's environment"
        assert listing["/root"] in ("absent", [".pyenv"]), "of root's home, at most the interpreter's folder"
        assert "CANOPY_TEST_SECRET" not in seen["env"] and not any("secret" in v for v in seen["env"].values())
        assert seen["env"]["HOME"] == str(scratch) and seen["uid"] == NOBODY, "not the miner's user"
        assert all(result.startswith("refused") for result in seen["tcp"].values()), seen["tcp"]
        assert all(result.startswith("refused") for result in seen["writes"].values()), seen["writes"]
        assert (seen["home_write"], seen["tmp_write"]) == ("written", "written"), "its scratch folder and /tmp are its own"
        assert (bundle / "snoop.py").read_text() == HOSTILE.replace("EGRESS", "False")
        assert not (miner.canopy / "planted").exists() and miner.hotkey.read_text() == miner.hotkey_text
        assert (scratch / "mine.txt").read_text() == "pwned", "what it wrote at HOME is in its scratch folder"
    finally:
        await manager.stop()
        await miner.close()
    assert instance.sandbox is None and not scratch.exists(), "the scratch folder goes with the instance"


@pytest.mark.skipif(shutil.which("slirp4netns") is None and not os.environ.get("CANOPY_REQUIRE_BWRAP"),
                    reason="slirp4netns is installed by ./run.sh test")
async def test_with_external_egress_the_outside_is_tried_and_the_miners_ports_stay_refused(tmp_path, miner_root,
                                                                                            monkeypatch):
    miner = Miner(miner_root, monkeypatch)
    axon_port, local_port = await miner.listen("0.0.0.0"), await miner.listen("127.0.0.1")
    outside = outside_address()
    manager, _, _ = await _hostile(tmp_path, miner, egress=True)
    try:
        own = own_address()
        seen = await _look(manager, {
            "files": [str(miner.hotkey)], "dirs": [], "writes": [],
            "tcp": [["127.0.0.1", axon_port], ["127.0.0.1", local_port], ["10.0.2.2", axon_port],
                    ["169.254.169.254", 80], [outside, 443]] + ([[own, axon_port]] if own else [])})
    finally:
        await manager.stop()
        await miner.close()
    tcp = seen["tcp"]
    assert seen["files"][str(miner.hotkey)].startswith("refused"), "egress opens the network, not the files"
    # the outside has a route (no ENETUNREACH as without egress) and is not prohibited (no
    # EACCES): connected where the network lets it, else timed out or turned away out there
    tried = tcp.pop(f"{outside}:443")
    assert "ENETUNREACH" not in tried and "EACCES" not in tried, f"the outside is tried: {seen['tcp']}"
    # its own loopback (nothing listens there), no way to the host's (10.0.2.2), the host's own
    # addresses and the cloud metadata address prohibited by route
    assert all(result.startswith("refused") for result in tcp.values()), tcp
    if own:
        assert tcp[f"{own}:{axon_port}"] == "refused: PermissionError EACCES", tcp


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
        assert bomb.ready and calm.ready and bomb.sandbox is not None and bomb.sandbox.cgroup is not None, bomb.last_error
        status, forked = await post(bomb, "/forks")
        assert status == 200 and forked["error"] == "BlockingIOError" and forked["made"] < 64, forked
        assert await post(calm, "/ping") == (200, {"pong": True}), "the other instance keeps serving"
        assert (await asyncio.create_subprocess_exec("true")).pid > 0, "the miner can still start processes"

        # Through the miner's chute service, as an Invoke from the axon: past 192 MiB the kernel
        # kills it mid-call and the caller gets instance_crashed.
        info = await describe_chute("greedy:chute", cwd=bundle)
        hosted = HostedPlan(entry=ChuteEntry(ref="greedy:chute"), info=info, devices=[list(cpu_devices(1))]).hosted_chute()
        service = ChutesService(manager, [hosted.model_copy(update={"chute_id": "bomb"})])
        caller = Caller(hotkey="validator", nonce_ns=0, neuron=Neuron(uid=1, hotkey="validator", coldkey="c", stake=1.0,
                                                                      validator_permit=True, axon=None))
        with pytest.raises(InstanceCrashed):
            [chunk async for chunk in service.invoke(Invoke(chute_id="bomb", path="/hog", payload=None), caller)]
        assert service.ledger.recent[-1].error == "instance_crashed"
        assert await manager.wait_ready(bomb, 30), bomb.last_error
        assert bomb.restarts >= 1 and "memory cap" in bomb.failures[-1], list(bomb.failures)
        assert await post(bomb, "/ping") == (200, {"pong": True}), "restarted"
        assert await post(calm, "/ping") == (200, {"pong": True})
    finally:
        await manager.stop()
