"""miner.containers: the container runtime's build folder, its ``run`` command line, the engine
check, and what it accepts that the sandbox refuses.

A live engine (Podman or Docker answering ``info``) runs the last test: an echo chute built
into its image and called over its Unix socket. The build machines have none, so there it is
skipped; everything before it runs everywhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from canopy import Chute, Image
from canopy.image_environment import image_environment
from miner.containers import (APP, CONTAINER_USER, ContainerEngine, ContainerImages, ContainerUnavailable, build_context,
                              run_command)
from miner.environments import EnvironmentCache
from miner.instances import InstanceManager, InstanceSpec
from tests.support import ROOT
from tests.support.chutes import cpu_devices, fake_h100s

ROOTY = Image(username="alice", name="rooty", tag="1").from_base("debian:bookworm-slim").apt_install(["git"])


def test_the_build_folder_is_the_chutes_dockerfile_then_our_layer(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "rooty.py").write_text("chute = None\n")
    dockerfile = Chute(username="alice", name="rooty", image=ROOTY).describe().dockerfile
    context = build_context(tmp_path / "context", dockerfile=dockerfile, bundle=bundle)
    text = (context / "Dockerfile").read_text()
    assert text.startswith(dockerfile.strip()), "the author's steps first, apt_install included"
    assert "apt-get install -y --no-install-recommends git" in text
    ours = text[len(dockerfile.strip()):]
    assert f"COPY bundle {APP}" in ours and f"USER {CONTAINER_USER}" in ours.splitlines()[-2]
    assert ours.rstrip().endswith("ENTRYPOINT []"), "the instance's command is the runtime's"
    assert (context / "bundle" / "rooty.py").is_file() and (context / "canopy-sdk" / "canopy" / "instance.py").is_file()
    requirements = (context / "canopy-sdk" / "requirements.txt").read_text()
    assert "fastapi" in requirements and "bittensor" not in requirements, "the SDK's requirements, not the node's"


@pytest.mark.parametrize("engine, gpu_flags, egress_network", [
    ("podman", ["--device", "nvidia.com/gpu=GPU-a", "--device", "nvidia.com/gpu=GPU-b"], "slirp4netns:allow_host_loopback=false"),
    ("docker", ["--gpus", '"device=GPU-a,GPU-b"'], "bridge"),
])
def test_the_run_command_confines_the_instance(tmp_path, engine, gpu_flags, egress_network):
    container = ContainerEngine(name=engine, binary=f"/usr/bin/{engine}")
    serve = ["serve", "rooty:chute", "--uds", str(tmp_path / "instance.sock")]
    argv = run_command(container, name="canopy-x-1", tag="canopy-chute:ab", scratch=tmp_path, gpu_uuids=["GPU-a", "GPU-b"],
                       env={"CANOPY_INSTANCE_ID": "x-1"}, memory_mb=512, max_pids=64, egress=False, serve=serve)
    text = " ".join(argv)
    for flag in ("--rm", "--init", "--read-only", "--cap-drop ALL", "--security-opt no-new-privileges",
                 f"--user {CONTAINER_USER}", "--memory 512m", "--memory-swap 512m", "--pids-limit 64", "--network none",
                 f"--volume {tmp_path}:{tmp_path}:rw", f"--env HOME={tmp_path}", "--env CANOPY_INSTANCE_ID=x-1"):
        assert flag in text, flag
    assert argv[argv.index("--pids-limit") + 2:][:len(gpu_flags)] == gpu_flags or " ".join(gpu_flags) in text
    assert argv[-len(serve) - 4:] == ["canopy-chute:ab", "python", "-m", "canopy.instance", *serve]
    egress = run_command(container, name="n", tag="t", scratch=tmp_path, gpu_uuids=[], env={}, memory_mb=512,
                         max_pids=64, egress=True, serve=serve)
    assert egress[egress.index("--network") + 1] == egress_network and "--gpus" not in egress and "--device" not in egress


def test_no_engine_is_refused_naming_the_fix(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "docker"  # an installed client whose daemon is down
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(ContainerUnavailable) as refused:
        ContainerEngine.detect()
    message = str(refused.value)
    assert "podman is not installed" in message and "Cannot connect to the Docker daemon" in message
    assert "apt-get install podman" in message and "--chutes.runtime sandbox" in message


def test_the_container_runtime_takes_root_steps_the_sandbox_refuses(tmp_path):
    environment = image_environment(ROOTY)
    engine = ContainerEngine(name="podman", binary="/usr/bin/podman")
    containers = InstanceManager(log_dir=tmp_path, containers=ContainerImages(engine, tmp_path / "images"),
                                 environments=EnvironmentCache(tmp_path / "envs"))
    sandboxed = InstanceManager(log_dir=tmp_path, environments=EnvironmentCache(tmp_path / "envs"))
    assert containers.refusal(environment) is None, "built in the image: apt_install is the image's business"
    assert "apt_install('git')" in (sandboxed.refusal(environment) or "")
    assert "apt_install('git')" in (containers.refusal(environment, pinned=True) or ""), \
        "pinned chutes run in bubblewrap on this runtime too"


def _live_engine() -> ContainerEngine | None:
    try:
        return ContainerEngine.detect(os.environ.get("CANOPY_CONTAINER_ENGINE") or None)
    except ContainerUnavailable:
        return None


@pytest.mark.slow
@pytest.mark.skipif(_live_engine() is None, reason="no Podman or Docker answers here (the build machines have none)")
async def test_a_registry_chute_runs_in_its_built_image(tmp_path):
    engine = _live_engine()
    assert engine is not None
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "echo_chute.py").write_text((Path(ROOT) / "examples" / "echo_chute.py").read_text())
    images = ContainerImages(engine, tmp_path / "images")
    spec = InstanceSpec(chute_id="echo", name="echo", ref="echo_chute:chute", devices=tuple(cpu_devices(1)), cwd=str(bundle),
                        revision="e" * 64, dockerfile="FROM python:3.11-slim-bookworm\n")
    manager = InstanceManager([spec], log_dir=tmp_path / "logs", containers=images, start_timeout_s=900)
    try:
        await manager.start()
        [instance] = manager.instances
        assert instance.ready, instance.last_error
        async with manager.session_for(instance).post(instance.url + "/echo", json={"text": "hi"}) as response:
            assert response.status == 200, await response.text()
        assert images.builds == 1
    finally:
        await manager.stop()


def test_gpu_uuids_reach_the_engine_not_indexes():
    assert ContainerEngine(name="docker", binary="docker").gpu_flags([d.uuid for d in fake_h100s(1)])[1].startswith('"device=GPU-')
