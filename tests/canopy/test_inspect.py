"""canopy.inspect: a bundled chute read in a child process, and each way it can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from canopy.bundle import BundleError, build_bundle, unpack_bundle
from canopy.inspect import ChuteInspectionError, inspect_bundle

ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo_chute.py"
HEAD = "from canopy import Chute\n\nchute = Chute(username='me', name='probe')\n"


def bundle_of(tmp_path: Path, source: str, files: dict[str, str] | None = None, attr: str = "chute") -> bytes:
    folder = tmp_path / "src"
    folder.mkdir(parents=True)
    (folder / "probe_chute.py").write_text(source)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return build_bundle(f"{folder}/probe_chute.py:{attr}").data


def failure(data: bytes, timeout_s: float = 60) -> ChuteInspectionError:
    with pytest.raises(ChuteInspectionError) as caught:
        inspect_bundle(data, timeout_s=timeout_s)
    assert "\n" not in str(caught.value)
    return caught.value


def test_the_echo_example_round_trips_with_its_cords_and_node_selector() -> None:
    built = build_bundle(f"{ECHO}:chute")
    info = inspect_bundle(built.data, revision=built.revision)
    assert (info.username, info.name, info.image, info.concurrency) == ("canopy", "echo", "python:3.11-slim", 16)
    assert (info.node_selector.gpu_count, info.node_selector.min_vram_gb_per_gpu) == (1, 0)
    assert [(cord.method, cord.path, cord.stream) for cord in info.cords] == [("POST", "/echo", False),
                                                                             ("POST", "/stream", True)]
    assert info.cords[0].input_schema and "text" in info.cords[0].input_schema["properties"]
    with pytest.raises(BundleError, match="not the announced revision"):
        inspect_bundle(built.data, revision="f" * 64)


def test_the_chute_runs_in_a_clean_child_not_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANOPY_WALLET_PASSWORD", "hunter2")
    monkeypatch.setenv("DATABASE_URL", "postgres://secret")
    source = HEAD.replace("name='probe')", "name='probe', tagline=TAG)") .replace(
        "from canopy", "import os, sys\nprint('chatty import')\n"
        "TAG = '|'.join([os.getcwd(), os.environ.get('PYTHONPATH', ''), str(os.getpid()),\n"
        "                ','.join(k for k in os.environ if k.startswith('CANOPY_') or k == 'DATABASE_URL')])\n"
        "from canopy", 1)
    info = inspect_bundle(bundle_of(tmp_path, source))
    cwd, pythonpath, pid, secrets = info.tagline.split("|")
    assert cwd == pythonpath and Path(cwd).name == "bundle" and not Path(cwd).exists()  # a temp folder, removed
    assert int(pid) != os.getpid() and secrets == ""
    assert "probe_chute" not in sys.modules


def test_an_import_error_names_the_problem_and_shows_the_failing_line(tmp_path: Path) -> None:
    data = bundle_of(tmp_path, "import helper\n" + HEAD, {"helper.py": "X = 1\nraise RuntimeError('no GPU here')\n"})
    error = failure(data)
    assert str(error).startswith("importing module 'probe_chute' failed: RuntimeError: no GPU here (at helper.py:2)")
    assert 'File "helper.py", line 2, in <module>' in error.detail
    assert "raise RuntimeError('no GPU here')" in error.detail
    assert error.detail.splitlines()[-1] == "RuntimeError: no GPU here"
    assert error.detail.startswith("Traceback") and "importlib" not in error.detail  # the chute's frames only

    error = failure(bundle_of(tmp_path / "b", "import torchx_not_installed\n" + HEAD))
    assert "ModuleNotFoundError: No module named 'torchx_not_installed'" in str(error)
    assert "import torchx_not_installed" in error.detail


def test_a_missing_attribute_or_a_non_chute(tmp_path: Path) -> None:
    error = failure(bundle_of(tmp_path, HEAD, attr="app"))
    assert str(error) == "probe_chute has no attribute 'app'; it defines chute (use probe_chute:chute)"
    error = failure(bundle_of(tmp_path / "b", HEAD + "app = 42\n", attr="app"))
    assert str(error).startswith("probe_chute:app is a int, not a canopy.Chute")


def test_a_cord_path_clash_names_both_cords(tmp_path: Path) -> None:
    cords = ("@chute.cord(path='/run')\nasync def first(self, args: dict) -> dict:\n    return args\n\n"
             "@chute.cord(path='/run')\nasync def second(self, args: dict) -> dict:\n    return args\n")
    error = failure(bundle_of(tmp_path, HEAD + cords))
    assert str(error) == ("invalid cord: chute me/probe: POST /run is already the cord 'first'; "
                          "give 'second' another path= (or method=)")
    assert "CordDefinitionError" in error.detail

    # a clash made behind Chute's back (a cord's path changed after it was declared)
    moved = cords.replace("path='/run')\nasync def second", "path='/other')\nasync def second")
    error = failure(bundle_of(tmp_path / "b", HEAD + moved + "chute.cords['/other'].path = '/run'\n"))
    assert str(error) == ("cord path clash: POST /run is both the cord 'first' and the cord 'second'; "
                          "give one of them another path")


def test_a_chute_that_sleeps_at_import_is_killed_at_the_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    source = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n" + HEAD
    started = time.monotonic()
    error = failure(bundle_of(tmp_path, source), timeout_s=3)
    assert time.monotonic() - started < 15
    assert str(error).startswith("the chute took longer than 3 s to import; it was stopped")
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_child_that_dies_without_a_result(tmp_path: Path) -> None:
    error = failure(bundle_of(tmp_path, "import os, sys\nprint('bye', file=sys.stderr)\nos._exit(3)\n" + HEAD))
    assert str(error) == "the inspection of the chute exited with code 3 without a result"
    assert error.detail == "bye"
    error = failure(bundle_of(tmp_path / "b", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n" + HEAD))
    assert str(error) == "the inspection of the chute was killed by SIGKILL without a result"


def test_the_command_prints_one_json_line(tmp_path: Path) -> None:
    folder = tmp_path / "unpacked"
    entry = unpack_bundle(build_bundle(f"{ECHO}:chute").data, folder)

    def run(entry: str) -> tuple[int, dict]:
        done = subprocess.run([sys.executable, "-m", "canopy.inspect", str(folder), entry], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        lines = done.stdout.splitlines()
        assert len(lines) == 1, done.stdout
        return done.returncode, json.loads(lines[0])

    code, result = run(entry)
    assert code == 0 and result["ok"] is True and result["chute"]["name"] == "echo"
    assert [cord["path"] for cord in result["chute"]["cords"]] == ["/echo", "/stream"]
    (folder / "chatty.py").write_text("print('hello from the chute')\n" + HEAD)  # goes to stderr
    code, result = run("chatty:chute")
    assert code == 0 and result["chute"]["name"] == "probe"
    code, result = run("no_such_module:chute")
    assert code == 1 and result["ok"] is False and "no module named 'no_such_module'" in result["error"]
    assert set(result) == {"ok", "error", "detail"}
