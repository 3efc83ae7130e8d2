"""Deploy end to end on the devnet: an author deploys, the network hosts, callers call.

A devnet with a validator process, its API process (one SQLite store) and three miner
processes: ``m1`` and ``m2`` honest and started **without** a hosting file, and ``tamper``,
which pins its own code under the name of the author's chute (same owner and name, so the
same chute id; other code, so another revision). The author ``alice`` deploys, with the
real ``canopy`` CLI, a chute this test writes to its temporary folder and a private one;
the author ``me`` runs README.md's deploy examples as written (``examples/echo_chute.py``:
deploy, list, get, call, warmup, delete). One test walks the issue's checks in order, so
the subnet starts once:

1. both honest miners pick the chutes up and they are callable through
   ``/chutes/alice/...`` within a bounded time; a bad payload gets the cord's 422 naming
   the field, an unknown cord 404, the private chute called with ``bob``'s key 403;
2. the tampered copy gets no traffic (every answer comes from m1 or m2) and no synthetic
   call, so no score for the chute, while it stays in its own Inventory;
3. redeploy under load: a client calling in a loop sees every call succeed while the new
   revision rolls out, then only the new behaviour;
4. delete: the API answers 404 and the miners stop the instances.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from canopy.chute import chute_id
from tests.support import ROOT
from tests.support.subnet import DeployNet

SHOUT = '''
from pydantic import BaseModel, Field
from canopy import Chute, NodeSelector

chute = Chute(username="alice", name="shout", node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0),
              concurrency=8)


class Words(BaseModel):
    text: str = Field(..., max_length=100)


@chute.cord(public_api_path="/shout")
async def shout(self, args: Words) -> dict:
    return {"text": args.text.upper() + SUFFIX, "version": VERSION}
'''
SHOUT_ID = chute_id("alice", "shout")
# An image that pip-installs what the miners' virtualenv lacks: each miner builds the
# environment (from the announced ChuteInfo.environment) before its first instance.
MOO = '''
from pydantic import BaseModel
from canopy import Chute, Image, NodeSelector

image = Image(username="alice", name="moo", tag="1").from_base("parachutes/python:3.12").pip_install("cowsay==6.1")
chute = Chute(username="alice", name="moo", image=image, node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0))


class Say(BaseModel):
    text: str


@chute.cord(public_api_path="/say")
async def say(self, args: Say) -> dict:
    import cowsay

    return {"said": cowsay.get_output_string("cow", args.text), "module": cowsay.__file__}
'''
MOO_ID = chute_id("alice", "moo")


def chute_file(folder: Path, name: str, body: str, **constants: object) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in constants.items()) + body)
    return f"{path}:chute"


def run_readme_deploy_block(net: DeployNet, key: str) -> subprocess.CompletedProcess:
    """README.md's "Deploying a chute" shell block, with bash, ``canopy`` on PATH, from the
    repository root; only the API's address is replaced by this test's."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Deploying a chute"):]
    block = re.search(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)
    assert block is not None, "the README's deploy section has no bash block"
    script = block.group(1).replace("http://127.0.0.1:8000", net.api_url)
    env = {**os.environ, "MY_KEY": key, "CANOPY_HOME": str(net.home), "COLUMNS": "200",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_deploy_call_redeploy_and_delete_on_the_devnet(tmp_path):
    tampered = chute_file(tmp_path / "tamper", "shout", SHOUT.replace("args.text.upper()", '"pwned"'),
                          SUFFIX="", VERSION=666)
    (tmp_path / "tamper.toml").write_text(f'[[chutes]]\nref = "{tampered}"\n')
    net = DeployNet(tmp_path, miners={"m1": 1, "m2": 1, "tamper": 1},
                    miner_flags={"tamper": ["--chutes.config", str(tmp_path / "tamper.toml")]},
                    api_flags=["--api.cold_start_wait_s", "60", "--api.rate_limit", "100000/60s"])
    try:
        await net.start()
        alice = await net.key("alice", owner="alice")
        bob = await net.key("bob", owner="bob", scopes=("invoke",))

        # 1. Deploy with the CLI; both honest miners pick it up; the public calls.
        v1 = chute_file(tmp_path / "v1", "shout", SHOUT, SUFFIX="", VERSION=1)
        deployed = net.cli("deploy", v1, "--max-instances", "3", "--json", key=alice)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        first = json.loads(deployed.stdout)
        assert (first["owner"], first["name"], first["chute_id"]) == ("alice", "shout", SHOUT_ID)
        assert any(url.endswith("/chutes/alice/shout/shout") for url in first["urls"])
        secret = chute_file(tmp_path / "private", "secret", SHOUT.replace('name="shout"', 'name="secret"'),
                            SUFFIX="?", VERSION=1)
        assert net.cli("deploy", secret, "--private", key=alice).returncode == 0

        async def hosted_by_both() -> bool:
            seen = await net.inventories("m1", "m2", "tamper")
            return all(any(c.chute_id == SHOUT_ID and c.revision == first["revision"] and c.ready_instances
                           for c in seen[name]) for name in ("m1", "m2"))

        await net.until("both honest miners hosting alice/shout", hosted_by_both, 90)
        async with aiohttp.ClientSession() as http:
            served_by = set()
            for _ in range(12):
                status, body, headers = await net.call(http, "/chutes/alice/shout/shout", {"text": "hi"}, key=alice)
                assert (status, body) == (200, {"text": "HI", "version": 1}), body
                served_by.add(int(headers["x-canopy-miner-uid"]))
            status, body, _ = await net.call(http, "/chutes/alice/shout/shout", {"txt": "hi"}, key=alice)
            assert status == 422 and "text" in json.dumps(body), body
            status, body, _ = await net.call(http, "/chutes/alice/shout/whisper", {"text": "hi"}, key=alice)
            assert status == 404 and "/whisper" in json.dumps(body), body
            status, body, _ = await net.call(http, "/chutes/alice/nothing/shout", {"text": "hi"}, key=alice)
            assert status == 404 and "alice/nothing" in json.dumps(body), body
            status, body, _ = await net.call(http, "/chutes/alice/secret/shout", {"text": "hi"}, key=bob)
            assert status == 403, body
            status, body, _ = await net.call(http, "/chutes/alice/secret/shout", {"text": "hi"}, key=alice)
            assert (status, body) == (200, {"text": "HI?", "version": 1}), body

            # The image's pip installs: deployed with the CLI, built by each miner, imported by the cord.
            assert net.cli("deploy", chute_file(tmp_path / "moo", "moo", MOO), key=alice).returncode == 0

            async def moo_hosted() -> bool:
                seen = await net.inventories("m1", "m2")
                return any(c.chute_id == MOO_ID and c.ready_instances for name in seen for c in seen[name])

            await net.until("a miner hosting alice/moo (its pip environment built)", moo_hosted, 180)
            status, body, _ = await net.call(http, "/chutes/alice/moo/say", {"text": "moo"}, key=alice)
            assert status == 200 and "moo" in body["said"] and "/environments/" in body["module"], body

            # The README's deploy examples, run as written (owner "me"): deploy, list, get, call, warmup, delete.
            me = await net.key("me", owner="me")
            readme = await asyncio.to_thread(run_readme_deploy_block, net, me)
            assert readme.returncode == 0, readme.stdout[-3000:] + readme.stderr[-3000:]
            assert '"text":"hello"' in readme.stdout.replace(" ", "") and "me/echo" in readme.stdout, readme.stdout

            # 2. The tampered copy: listed by its miner, under another revision; no traffic, no score.
            tamper_listing = [c for c in (await net.inventories("tamper"))["tamper"] if c.chute_id == SHOUT_ID]
            assert tamper_listing and tamper_listing[0].revision not in ("", first["revision"])
            assert net.uids["tamper"] not in served_by and served_by <= {net.uids["m1"], net.uids["m2"]}

            async def probed_honest_miners() -> bool:
                store = await net.store()
                try:
                    activity = await store.activity_since(0)
                finally:
                    await store.close()
                return all(SHOUT_ID in activity.get(net.hotkeys[name], _Empty).latency_by_chute for name in ("m1", "m2"))

            await net.until("a synthetic round over the honest hosts of alice/shout", probed_honest_miners, 60)
            store = await net.store()
            try:
                rows = await store.invocation_sums(since=0)
            finally:
                await store.close()
            assert not [row for row in rows if row.hotkey == net.hotkeys["tamper"] and row.chute_id == SHOUT_ID]
            assert [row for row in rows if row.hotkey == net.hotkeys["m1"] and row.chute_id == SHOUT_ID]

            # 3. Redeploy under load.
            answers: list[tuple[int, object]] = []
            stop = asyncio.Event()

            async def caller() -> None:
                while not stop.is_set():
                    status, body, _ = await net.call(http, "/chutes/alice/shout/shout", {"text": "go"}, key=alice)
                    answers.append((status, body.get("version", body) if isinstance(body, dict) else body))

            callers = [asyncio.create_task(caller()) for _ in range(2)]
            await asyncio.sleep(1.0)
            v2 = chute_file(tmp_path / "v2", "shout", SHOUT, SUFFIX="!", VERSION=2)
            redeployed = await asyncio.to_thread(net.cli, "deploy", v2, "--max-instances", "3", "--json", key=alice)
            assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr
            assert json.loads(redeployed.stdout)["revision"] != first["revision"]

            async def new_behaviour_settled() -> bool:
                return len(answers) > 20 and all(version == 2 for _, version in answers[-10:])

            await net.until("only the new revision answering", new_behaviour_settled, 120)
            stop.set()
            await asyncio.gather(*callers)
            assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
            versions = [version for _, version in answers]
            switch = versions.index(2)
            assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2}, versions

            # 4. Delete: 404 at the API, the instances stopped on the miners.
            deleted = net.cli("chutes", "delete", "alice/shout", "--yes", key=alice)
            assert deleted.returncode == 0, deleted.stdout + deleted.stderr

            async def gone() -> bool:
                status, _, _ = await net.call(http, "/chutes/alice/shout/shout", {"text": "hi"}, key=alice)
                return status == 404

            await net.until("404 for the deleted chute", gone, 15)

            async def stopped() -> bool:
                seen = await net.inventories("m1", "m2")
                return not any(c.chute_id == SHOUT_ID for name in ("m1", "m2") for c in seen[name])

            await net.until("the honest miners stopping alice/shout", stopped, 90)
    finally:
        outputs = net.stop()
        for name, (code, output) in outputs.items():
            print(f"===== {name} (exit {code})\n{output[-6000:]}")
    assert all(code == 0 for code, _ in outputs.values()), {name: code for name, (code, _) in outputs.items()}


class _Empty:
    latency_by_chute: dict = {}

