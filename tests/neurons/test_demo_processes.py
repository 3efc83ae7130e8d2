"""The demo's process management (neurons/demo_processes.py): --keep records, stop ends them."""

from __future__ import annotations

import json
import time

from neurons.demo_processes import DemoPaths, is_demo_process, keep, spawn, stop_kept, stop_pids

SLEEPER = ["-c", "import time; time.sleep(120)"]
STUBBORN = ["-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"]


def _sleeper(paths: DemoPaths, name: str):
    """A process whose command line names the demo's folder, as the demo's neurons' do
    (returned once it runs that command: right after the fork it still shows ours)."""
    process = spawn(paths, name, [*SLEEPER, str(paths.chain)])
    deadline = time.monotonic() + 10
    while not is_demo_process(process.pid, paths) and time.monotonic() < deadline:
        time.sleep(0.02)
    return process


def test_kept_processes_are_recorded_and_stopped(tmp_path):
    paths = DemoPaths(tmp_path)
    processes = {"api": _sleeper(paths, "api"), "miner1": _sleeper(paths, "miner1")}
    keep(paths, processes, "http://127.0.0.1:8000")
    recorded = json.loads(paths.pids.read_text())
    assert recorded["api_url"] == "http://127.0.0.1:8000"
    assert recorded["processes"] == {name: process.pid for name, process in processes.items()}
    assert stop_kept(paths) == ["api", "miner1"]
    assert not paths.pids.exists()
    for process in processes.values():
        assert process.wait(timeout=5) is not None
    assert stop_kept(paths) == [], "nothing left: nothing to stop"


def test_a_process_ignoring_sigint_is_killed_after_the_grace(tmp_path):
    process = spawn(DemoPaths(tmp_path), "stubborn", STUBBORN)
    time.sleep(0.5)  # let it install its handler
    started = time.monotonic()
    stop_pids([process.pid], grace_s=0.5)
    assert process.wait(timeout=5) == -9 and time.monotonic() - started < 4


def test_a_broken_pids_file_is_dropped(tmp_path):
    paths = DemoPaths(tmp_path)
    paths.pids.write_text("{not json")
    assert stop_kept(paths) == [] and not paths.pids.exists()
    paths.pids.write_text(json.dumps({"processes": {"gone": 999_999_999}}))
    assert stop_kept(paths) == [] and not paths.pids.exists()


def test_a_recorded_pid_now_used_by_another_program_is_left_alone(tmp_path):
    paths = DemoPaths(tmp_path / "demo")
    stranger = spawn(DemoPaths(tmp_path / "elsewhere"), "stranger", SLEEPER)  # not the demo's
    try:
        keep(paths, {"api": stranger}, "http://127.0.0.1:8000")
        assert stop_kept(paths) == [] and stranger.poll() is None, "a reused pid is not ours to stop"
    finally:
        stranger.kill()
        stranger.wait()
