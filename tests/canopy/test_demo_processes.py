"""The demo's process management (canopy/demo_processes.py): --keep records, stop ends them."""

from __future__ import annotations

import json
import time

from canopy.demo_processes import DemoPaths, keep, spawn, stop_kept, stop_pids

SLEEPER = ["-c", "import time; time.sleep(120)"]
STUBBORN = ["-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"]


def test_kept_processes_are_recorded_and_stopped(tmp_path):
    paths = DemoPaths(tmp_path)
    processes = {"api": spawn(paths, "api", SLEEPER), "miner1": spawn(paths, "miner1", SLEEPER)}
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
