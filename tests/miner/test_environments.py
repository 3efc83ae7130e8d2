"""A chute whose Image pip-installs what the miner lacks (``miner.environments``), and one
whose Image needs root (refused at load time).

The chute is written here to a folder that stands for its bundle; its ``ChuteInfo`` comes
from ``describe_chute`` (the SDK's ``Image`` -> ``ImageEnvironment``), as the API's inspection
gives it to the registry and the validator announces it. The install is real: pip from the
package index (reachable in CI: only the package registries are), in the build sandbox.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import time

import pytest
from prometheus_client import CollectorRegistry

from canopy.image_environment import ImageEnvironment
from miner.announcements import Announcements
from miner.autoscaler import Autoscaler
from miner.bundles import BundleStore
from miner.chutes_service import ChutesService
from miner.environments import MARKER, EnvironmentBuildError, EnvironmentCache
from miner.hosting import describe_chute
from miner.instances import InstanceManager, InstanceSpec
from miner.sandboxing import pip_build_sandbox
from protocol.registry import AnnouncedChute, Announce, ChuteDemand
from tests.support.chutes import cpu_devices
from tests.support.logs import captured_logs

if shutil.which("bwrap") is None and os.environ.get("CANOPY_REQUIRE_BWRAP"):
    pytest.fail("bubblewrap is missing though ./run.sh test requires it (apt-get install bubblewrap)", pytrace=False)

PACKAGE = "cowsay==6.1"  # small, pure Python, one wheel, not among the miner's packages

MOO = '''
from canopy import Chute, Image, NodeSelector

image = Image(username="alice", name="moo", tag="1").from_base("parachutes/python:3.12").pip_install("cowsay==6.1")
chute = Chute(username="alice", name="moo", image=image, node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0))


@chute.cord()
async def say(self, text: str) -> dict:
    import cowsay  # what the image installs: not in the miner's virtualenv

    return {"said": cowsay.get_output_string("cow", text), "from": cowsay.__file__}
'''

# Shaped like the Chutes SDK README's example: an image that is only a base, a pydantic input.
BASE_ONLY = '''
from pydantic import BaseModel, Field
from canopy import Chute, Image, NodeSelector

image = Image(username="chutes", name="base-python", tag="3.12.7", readme="## cuda + python").from_base(
    "parachutes/base-python:3.12.7")
chute = Chute(username="test", name="example", image=image, readme="## Example Chute",
              node_selector=NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0))


class MicroArgs(BaseModel):
    foo: str = Field(..., max_length=100)
    bar: int = Field(0, ge=0, le=100)


@chute.on_startup()
async def initialize(self):
    self.billygoat = "billy"


@chute.cord(public_api_path="/echo")
async def echo(self, args: MicroArgs) -> str:
    return f"{self.billygoat} says: {args.foo} x {args.bar}"
'''

ROOTY = '''
from canopy import Chute, Image

image = Image(username="alice", name="rooty", tag="1").apt_install(["git"]).pip_install("cowsay==6.1")
chute = Chute(username="alice", name="rooty", image=image)


@chute.cord()
async def hello(self) -> dict:
    return {"hello": True}
'''


async def test_an_image_pip_install_is_built_once_and_a_second_instance_reuses_it(tmp_path):
    assert importlib.util.find_spec("cowsay") is None, "the test needs a package the miner's virtualenv lacks"
    bundle = tmp_path / "bundles" / "moo"
    bundle.mkdir(parents=True)
    (bundle / "moo.py").write_text(MOO)
    info = await describe_chute("moo:chute", cwd=bundle)
    assert info.environment.pip == [PACKAGE] and info.environment.refusal() is None
    environments = EnvironmentCache(tmp_path / "environments", wrap=pip_build_sandbox)
    spec = InstanceSpec(chute_id=info.chute_id, name="moo", ref="moo:chute", devices=tuple(cpu_devices(1)), cwd=str(bundle),
                        environment=info.environment)
    manager = InstanceManager([spec, spec], log_dir=tmp_path / "logs", sandbox=True, start_timeout_s=120,
                              environments=environments)

    async def say(instance, text: str) -> dict:
        async with manager.session_for(instance).post(instance.url + "/say", json=text) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    try:
        with captured_logs("INFO") as lines:
            await manager.start()
        first, second = manager.instances
        assert first.ready and second.ready, (first.last_error, second.last_error)
        assert environments.builds == 1, "two instances of one image starting together share one build"
        folder = environments.folder(info.environment)
        assert json.loads((folder / MARKER).read_text())["pip"] == [PACKAGE]
        assert any("pip install cowsay==6.1" in line for line in lines), "the build is announced in the log"
        assert any("Successfully installed cowsay-6.1" in line for line in lines), "with pip's progress"
        for instance in (first, second):
            answer = await say(instance, "moo")
            assert "moo" in answer["said"] and answer["from"].startswith(str(folder)), answer

        third = manager.add(spec)  # later, as the autoscaler adds one
        started = time.monotonic()
        assert await manager.wait_ready(third, 60), third.last_error
        assert environments.builds == 1, "the cached environment is reused: no second install"
        assert "moo" in (await say(third, "moo again"))["said"]
        assert time.monotonic() - started < 30
    finally:
        await manager.stop()


async def test_an_image_that_needs_root_is_refused_at_load_time_naming_the_steps(tmp_path):
    bundle = tmp_path / "bundles" / "rooty"
    bundle.mkdir(parents=True)
    (bundle / "rooty.py").write_text(ROOTY)
    info = await describe_chute("rooty:chute", cwd=bundle)
    manager = InstanceManager(log_dir=tmp_path / "logs", sandbox=True, environments=EnvironmentCache(tmp_path / "envs"))
    why = manager.refusal(info.environment)
    assert why is not None and "apt_install('git')" in why and "--chutes.runtime container" in why, why
    assert manager.refusal(ImageEnvironment(pip=[PACKAGE])) is None, "pip installs alone are served"

    # The autoscaler drops it when the announcement comes (logged once, counted), and goes on
    # with the rest: the servable chute is wanted (its bundle asked for), the refused one never.
    rooty = AnnouncedChute(chute_id="rooty", owner="alice", name="rooty", revision="ab" * 32, concurrency=1,
                           node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
                           environment=info.environment, demand=ChuteDemand(calls=50))
    fine = rooty.model_copy(update={"chute_id": "fine", "name": "fine", "revision": "cd" * 32,
                                    "environment": ImageEnvironment(pip=[PACKAGE])})
    announcements = Announcements(ttl_s=60)
    announcements.update("validator", 1.0, Announce(chutes=[rooty, fine]), time.monotonic())
    registry = CollectorRegistry()
    autoscaler = Autoscaler(manager, ChutesService(manager, []), announcements, BundleStore(tmp_path / "bundles-store"),
                            cpu_devices(1), registry=registry)
    with captured_logs("ERROR") as lines:
        first = await autoscaler.step()
        await asyncio.sleep(0)
        second = await autoscaler.step()
    assert [(d.action, d.chute_id) for d in first] == [("want", "fine")], first
    assert all(d.chute_id != "rooty" for d in second)
    refusals = [line for line in lines if "not hosting alice/rooty" in line]
    assert len(refusals) == 1 and "apt_install('git')" in refusals[0], lines
    assert registry.get_sample_value("canopy_miner_autoscaler_decisions_total",
                                     {"action": "refuse", "reason": "runtime"}) == 1.0


async def test_an_image_that_is_only_a_base_runs_on_the_base_runtime(tmp_path):
    bundle = tmp_path / "bundles" / "example"
    bundle.mkdir(parents=True)
    (bundle / "example.py").write_text(BASE_ONLY)
    info = await describe_chute("example:chute", cwd=bundle)
    assert info.environment.pip == [] and info.environment.refusal() is None
    assert info.dockerfile.splitlines()[2] == "FROM parachutes/base-python:3.12.7"
    environments = EnvironmentCache(tmp_path / "environments")
    manager = InstanceManager([InstanceSpec(chute_id=info.chute_id, name="example", ref="example:chute",
                                            devices=tuple(cpu_devices(1)), cwd=str(bundle), environment=info.environment)],
                              log_dir=tmp_path / "logs", sandbox=True, start_timeout_s=60, environments=environments)
    try:
        await manager.start()
        [instance] = manager.instances
        assert instance.ready and instance.sandbox is not None, instance.last_error
        async with manager.session_for(instance).post(instance.url + "/echo", json={"foo": "hi", "bar": 3}) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == "billy says: hi x 3"
        assert environments.builds == 0, "nothing to install: the base runtime serves it"
    finally:
        await manager.stop()


def test_a_build_that_fails_or_overruns_names_what_and_its_last_lines():
    from miner.processes import run_logged

    env = {"PATH": "/usr/bin:/bin"}
    with pytest.raises(EnvironmentBuildError, match=r"environment x: pip failed \(exit code 3\): .*no such wheel"):
        run_logged(["sh", "-c", "echo Collecting a; echo 'ERROR: no such wheel'; exit 3"], label="environment x",
                   what="pip", env=env, timeout_s=30, error=EnvironmentBuildError)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"image y: docker build did not finish within 0.5s"):
        run_logged(["sleep", "30"], label="image y", what="docker build", env=env, timeout_s=0.5)
    assert time.monotonic() - started < 10, "killed at its timeout, not waited for"
