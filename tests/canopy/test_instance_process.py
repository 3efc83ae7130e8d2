"""`python -m canopy.instance` as a real process: health, streaming, 429, lifecycle, describe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


from canopy.chute import ChuteInfo
from tests.support import ROOT
from tests.support.instances import Instance, get_json, post, start_instance


def test_health_and_a_cord_over_http(basic_instance: Instance) -> None:
    status, body = basic_instance.health()
    assert status == 200 and body["status"] == "ready" and body["in_flight"] == 0 and body["concurrency"] == 2
    assert post(basic_instance.url + "/echo", {"foo": "hi"}) == (200, {"foo": "hi", "prefix": ">"})
    status, body = post(basic_instance.url + "/echo", {"foo": ["not", "a", "string"]})
    assert status == 422 and body["error"]["detail"][0]["loc"] == ["foo"]
    assert get_json(basic_instance.url + "/_canopy/info")[1]["name"] == "basic"


def test_stream_chunks_arrive_incrementally(basic_instance: Instance) -> None:
    request = urllib.request.Request(basic_instance.url + "/words", data=b'{"foo": "s", "times": 3}')
    started = time.monotonic()
    arrivals: list[tuple[float, bytes]] = []
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        while line := response.readline():
            if line.strip():
                arrivals.append((time.monotonic() - started, line.strip()))
    finished = time.monotonic() - started
    assert [line for _, line in arrivals] == [b'data: {"word":"s0"}', b'data: {"word":"s1"}', b'data: {"word":"s2"}']
    # the cord sleeps 0.3 s after each chunk: the first one must not wait for the last
    assert arrivals[0][0] < finished - 0.5 and arrivals[1][0] - arrivals[0][0] > 0.2


def test_429_when_concurrency_is_used_up(basic_instance: Instance) -> None:
    results: list[tuple[int, dict]] = []
    slow = [threading.Thread(target=lambda: results.append(post(basic_instance.url + "/slow", {"s": 1.0})))
            for _ in range(2)]
    for thread in slow:
        thread.start()
    deadline = time.monotonic() + 5
    while basic_instance.health()[1].get("in_flight") != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    status, body = post(basic_instance.url + "/echo", {"foo": "x"})
    assert status == 429 and body["error"]["type"] == "busy"
    for thread in slow:
        thread.join()
    assert [status for status, _ in results] == [200, 200]
    assert post(basic_instance.url + "/echo", {"foo": "x"})[0] == 200
    assert basic_instance.health()[1]["in_flight"] == 0


def test_failing_startup_hook_reports_failed_and_exits_nonzero(tmp_path: Path) -> None:
    with start_instance("tests.canopy.chutes.broken_startup:chute", tmp_path, wait="failed",
                        env={"CANOPY_FAILED_EXIT_DELAY_S": "1.0"}) as instance:
        status, body = instance.health()
        assert status == 503 and body["status"] == "failed" and "weights file missing" in body["error"]
        assert instance.process.wait(timeout=10) == 3
        assert "startup of chute tester/broken-startup failed" in instance.log.read_text()


def test_sigterm_finishes_in_flight_requests_then_runs_shutdown_hooks(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown.txt"
    with start_instance("tests.canopy.chutes.basic:chute", tmp_path, "--concurrency", "3",
                        env={"BASIC_SHUTDOWN_MARKER": str(marker), "CANOPY_INSTANCE_ID": "inst-7"}) as instance:
        health = instance.health()[1]
        assert health["concurrency"] == 3 and health["instance_id"] == "inst-7"
        result: list = []
        thread = threading.Thread(target=lambda: result.append(post(instance.url + "/slow", {"s": 0.5})))
        thread.start()
        while instance.health()[1].get("in_flight") != 1:
            time.sleep(0.02)
        code = instance.stop()
        thread.join()
        assert result[0][0] == 200  # the in-flight request finished during the graceful shutdown
        assert code == 0
        assert marker.read_text() == "shutdown ran"


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "canopy.instance", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_describe_prints_chute_info_or_exits_2() -> None:
    ok = run_module("describe", "tests.canopy.chutes.basic:chute")
    assert ok.returncode == 0, ok.stderr
    info = ChuteInfo.model_validate_json(ok.stdout)
    assert info.name == "basic" and info.concurrency == 2
    echo = next(c for c in info.cords if c.path == "/echo")
    assert echo.input_schema["required"] == ["foo"] and echo.output_schema["title"] == "EchoOut"
    assert next(c for c in info.cords if c.path == "/words").stream
    broken = run_module("describe", "tests.canopy.chutes.broken_import:chute")
    assert broken.returncode == 2 and broken.stdout == ""
    assert "definitely_not_an_installed_module" in broken.stderr
    missing = run_module("serve", "no_such_chute_module:chute", "--port", "1")
    assert missing.returncode == 2 and "no module named 'no_such_chute_module'" in missing.stderr


def test_a_client_leaving_mid_stream_frees_its_slot(basic_instance: Instance) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", basic_instance.port, timeout=5)
    connection.request("POST", "/words", body=b'{"foo": "q", "times": 10}')
    response = connection.getresponse()
    assert response.readline().startswith(b"data: ")
    assert basic_instance.health()[1]["in_flight"] == 1
    connection.close()
    deadline = time.monotonic() + 5
    while basic_instance.health()[1]["in_flight"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert basic_instance.health()[1]["in_flight"] == 0
