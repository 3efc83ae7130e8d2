"""`canopy build module:chute --local`: Dockerfile, build context and the docker invocation."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from canopy.cli.main import app

CHUTE = '''
from canopy.chute import Chute
from canopy.image import Image

image = Image(username="me", name="demo", tag="0.1").from_base("python:3.11-slim").add("app.py", "/app/app.py")
chute = Chute(username="me", name="demo", image=image)
prebuilt = Chute(username="me", name="pre", image="python:3.11-slim")
bare = Chute(username="me", name="bare")
missing = Chute(username="me", name="missing", image=Image("me", "missing", "1").add("nope.py", "/x"))
'''

FAKE_DOCKER = '''#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  info) {info} ;;
  build) echo "Step 1/2 : FROM python:3.11-slim"; echo "Successfully tagged $3"; exit {build_rc} ;;
esac
'''


def _text(output: str) -> str:
    return re.sub(r"\s+", " ", output)


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "app.py").write_text("print('hi')\n")
    (tmp_path / "my_chute.py").write_text(CHUTE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CANOPY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def _fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, info: str, build_rc: int = 0) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.log"
    script = bindir / "docker"
    script.write_text(FAKE_DOCKER.format(log=log, info=info, build_rc=build_rc))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return log


def test_build_writes_context_and_runs_docker(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_docker(project, monkeypatch, info="echo 27.0.1; exit 0")
    out = project / "out"
    result = CliRunner().invoke(app, ["build", "my_chute.py:chute", "--local", "--output", str(out)])
    assert result.exit_code == 0, result.output
    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.splitlines()[2] == "FROM python:3.11-slim"
    assert (out / "app.py").read_text() == "print('hi')\n"
    assert ".git" in (out / ".dockerignore").read_text()
    assert f"build -t me/demo:0.1 {out}" in log.read_text()
    assert "built me/demo:0.1" in _text(result.output)


def test_tag_override_and_default_output(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_docker(project, monkeypatch, info="echo 27.0.1; exit 0")
    result = CliRunner().invoke(app, ["build", "my_chute:chute", "--local", "--tag", "0.2"])
    assert result.exit_code == 0, result.output
    assert (project / "home" / "builds" / "me-demo-0.2" / "Dockerfile").is_file()
    assert "build -t me/demo:0.2" in log.read_text()
    bad = CliRunner().invoke(app, ["build", "my_chute:chute", "--local", "--tag", "-x"])
    assert bad.exit_code == 2 and "--tag" in bad.output


def test_no_engine_is_explained(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_docker(project, monkeypatch, info="echo 'Cannot connect to the Docker daemon' >&2; exit 1")
    out = project / "out"
    result = CliRunner().invoke(app, ["build", "my_chute.py:chute", "--local", "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = _text(result.output)
    assert "docker build skipped" in text and "Cannot connect to the Docker daemon" in text
    assert "systemctl start docker" in text and f"docker build -t me/demo:0.1 {out}" in text
    assert (out / "Dockerfile").is_file()
    strict = CliRunner().invoke(app, ["build", "my_chute.py:chute", "--local", "--output", str(out), "--require-docker"])
    assert strict.exit_code == 1


def test_docker_missing_names_the_install(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = project / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = CliRunner().invoke(app, ["build", "my_chute.py:chute", "--local", "--output", str(project / "o"),
                                      "--require-docker"])
    assert result.exit_code == 1
    assert "apt-get install docker.io" in _text(result.output)


def test_failed_docker_build_fails(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_docker(project, monkeypatch, info="exit 0", build_rc=3)
    result = CliRunner().invoke(app, ["build", "my_chute.py:chute", "--local", "--output", str(project / "o")])
    assert result.exit_code == 3 and "docker build failed" in result.output


def test_nothing_to_build_and_bad_input(project: Path) -> None:
    runner = CliRunner()
    pre = runner.invoke(app, ["build", "my_chute.py:prebuilt", "--local"])
    assert pre.exit_code == 0 and "nothing to build" in _text(pre.output) and "python:3.11-slim" in pre.output
    bare = runner.invoke(app, ["build", "my_chute.py:bare", "--local"])
    assert bare.exit_code == 0 and "nothing to build" in _text(bare.output)
    no_local = runner.invoke(app, ["build", "my_chute.py:chute"])
    assert no_local.exit_code == 2 and "--local" in no_local.output
    missing = runner.invoke(app, ["build", "my_chute.py:missing", "--local", "--output", str(project / "m")])
    assert missing.exit_code == 2 and "nope.py" in missing.output
    unknown = runner.invoke(app, ["build", "no_such_module:chute", "--local"])
    assert unknown.exit_code == 2 and "no_such_module" in unknown.output
