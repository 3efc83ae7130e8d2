"""The SDK installs alone: the package built from this tree, installed without extras into a
fresh virtualenv, serves and answers a chute (``canopy run ... --dev``) and refuses the node
stack with one line naming the extra.

The virtualenv gets only what ``pip install canopy`` resolves from the package index (the
SDK's pins); nothing of this repository's ``.venv`` leaks in, and the commands run outside
the checkout so no source package is importable from the working directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT as REPO, free_port

#: Distributions of the node extra that the SDK install must not bring.
NODE_DISTRIBUTIONS = {"bittensor", "sqlalchemy", "alembic", "asyncpg", "redis", "wandb", "torch", "transformers",
                      "numpy", "prometheus-client", "pydantic-settings"}

pytestmark = pytest.mark.slow


def run(*command: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel of this tree, installed without extras."""
    work = tmp_path_factory.mktemp("sdk-install")
    source = work / "source"
    tracked = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout
    for name in filter(None, tracked.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", work / "dist",
                source, cwd=work)
    assert built.returncode == 0, built.stderr
    wheel = next((work / "dist").glob("canopy-*.whl"))
    venv = work / "venv"
    made = run(sys.executable, "-m", "venv", venv, cwd=work)
    assert made.returncode == 0, made.stderr
    installed = run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel,
                    cwd=work)
    assert installed.returncode == 0, installed.stderr
    return venv


def test_the_base_install_holds_no_node_dependency(sdk_venv: Path) -> None:
    listed = run(sdk_venv / "bin" / "python", "-m", "pip", "list", "--format=json", cwd=sdk_venv)
    names = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "canopy" in names and "fastapi" in names
    assert not names & NODE_DISTRIBUTIONS, f"the SDK install pulled in the node stack: {sorted(names & NODE_DISTRIBUTIONS)}"


def test_canopy_run_dev_serves_the_echo_chute(sdk_venv: Path, tmp_path: Path) -> None:
    shutil.copy2(REPO / "examples" / "echo_chute.py", tmp_path / "echo_chute.py")
    port = free_port()
    server = subprocess.Popen([str(sdk_venv / "bin" / "canopy"), "run", "echo_chute.py:chute", "--dev", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while answer is None:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "the chute did not answer within 60 s"
            request = urllib.request.Request(f"http://127.0.0.1:{port}/echo", data=json.dumps({"text": "hello sdk"}).encode(),
                                             headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(0.3)
        assert "hello sdk" in json.dumps(answer)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("package", ["validator", "miner", "api", "chain", "protocol", "node", "store", "neurons.miner"])
def test_a_node_package_names_the_extra(sdk_venv: Path, tmp_path: Path, package: str) -> None:
    result = run(sdk_venv / "bin" / "python", "-c", f"import {package}", cwd=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("canopy.extras.MissingExtra: ") and 'pip install "canopy[node]"' in last, result.stderr


def test_a_node_command_names_the_extra_and_help_lists_it(sdk_venv: Path, tmp_path: Path) -> None:
    helped = run(sdk_venv / "bin" / "canopy", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "keys" in helped.stdout and "run" in helped.stdout
    refused = run(sdk_venv / "bin" / "canopy", "keys", "list", cwd=tmp_path)
    assert refused.returncode == 1
    assert 'pip install "canopy[node]"' in refused.stderr and "Traceback" not in refused.stderr
