"""`canopy run MODULE:chute --dev` and the examples/echo_chute.py example."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

import canopy
from canopy.cli.main import app
from canopy.instance import describe
from tests.support import ROOT, free_port
from tests.support.instances import get_json, post


def test_run_refuses_a_chute_that_does_not_load() -> None:
    result = CliRunner().invoke(app, ["run", "no_such_chute_mod:chute", "--dev"])
    assert result.exit_code == 2 and "no module named 'no_such_chute_mod'" in result.output


def test_canopy_run_dev_serves_the_echo_example(tmp_path) -> None:
    port = free_port()
    canopy_bin = os.path.join(os.path.dirname(sys.executable), "canopy")
    command = [canopy_bin] if os.path.exists(canopy_bin) else [sys.executable, "-m", "canopy.cli.main"]
    log = (tmp_path / "run.log").open("w")
    process = subprocess.Popen([*command, "run", "examples/echo_chute.py:chute", "--dev", "--port", str(port)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if get_json(url + "/_canopy/health")[1].get("status") == "ready":
                    break
            except OSError:
                time.sleep(0.05)
        status, body = post(url + "/echo", {"text": "hi", "times": 2})
        assert status == 200 and body["text"] == "hi hi"
        script = subprocess.run([sys.executable, "examples/echo_chute.py"], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "CANOPY_DEV_URL": url}, timeout=30)
        assert script.returncode == 0, script.stderr
        assert "'text': 'hello hello'" in script.stdout and "{'index': 2, 'text': 'hi'}" in script.stdout
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        log.close()


async def test_echo_example_runs_locally(capsys) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import echo_chute
    finally:
        sys.path.remove(str(ROOT / "examples"))
    async with canopy.run_local(echo_chute.chute):
        out = await echo_chute.echo({"text": "a", "times": 3})
        assert out.text == "a a a"
        chunks = [chunk async for chunk in await echo_chute.stream({"text": "b", "times": 2})]
        assert [chunk.text for chunk in chunks] == ["b", "b"]
    assert describe("examples/echo_chute.py:chute") == 0
    assert '"name":"echo"' in capsys.readouterr().out
