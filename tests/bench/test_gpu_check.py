"""The GPU check kit (bench/gpu_check.py, ``./run.sh gpu-check``): its dry run on the CPU,
and the wheels it needs beyond NumPy / PyTorch / CuPy."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.support import ROOT

WHEELS = ROOT / "bench" / "gpu_check_wheels.txt"


def test_the_dry_run_checks_bit_exactness_verification_and_separation():
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--plain"], cwd=ROOT, capture_output=True,
                          text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dry_run"] is True and result["backends_checked"] == ["numpy"]
    assert result["bit_exact"] == {"torch-cpu": True}
    assert result["met"]["bit_exact"] and result["met"]["honest_verified"]
    assert "total_s" in result["not_measured"] and "total_s" not in result["met"]  # the time target is a GPU's
    entry = result["per_backend"]["numpy"]
    assert entry["verified"] is True and entry["verify_samples_per_phase"] == 410
    window = entry["window"]
    rows = {row["case"]: row for row in entry["separation"]}
    assert set(rows) == {"honest (worst of 3)", "half memory", "90% memory", "two claims (a)", "two claims (b)",
                         "two processes (a)", "two processes (b)"}
    for row in rows.values():
        ratios = [ratio for ratio in (row["fill_ratio"], row["access_ratio"]) if ratio is not None]
        assert row["refused"] == any(not window["window_low"] <= ratio <= window["window_high"] for ratio in ratios)
    half = rows["half memory"]
    assert half["refused"] and (half["stopped"] or half["access_ratio"] > 2), half  # ~15x its MACs: always out
    assert (entry["row"] is None) == (entry["window_refused"] is not None)
    assert set(result["targets"]) >= {"bit_exact", "honest_verified", "cheats_refused", "total_s"}


def test_the_kit_imports_nothing_beyond_numpy_and_its_wheel_list():
    """Every module the kit loads on a CPU proof, a verification and a row is in the
    standard library, numpy, or a distribution of bench/gpu_check_wheels.txt."""
    names = [re.split(r"[=;<>]", line)[0].strip() for line in WHEELS.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    modules = {name.replace("-", "_").lower() for name in names}
    script = f"""
import sys
allowed = set(sys.stdlib_module_names) | {{"numpy", "canopy", "miner", "protocol", "bench"}} | set({sorted(modules)!r})
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in allowed and not name.startswith("_"):  # _sysconfigdata_*, __mp_main__
            raise ModuleNotFoundError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_check", "--dry-run", "--backends", "numpy", "--n", "256", "--check-n", "64", "--runs", "3", "--plain"]
import runpy
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["per_backend"]["numpy"]["verified"] is True
    assert result["bit_exact"]["torch-cpu"] is False  # torch is the host's, not one of the list: it was blocked


def test_the_wheel_list_is_pinned_like_requirements():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", (ROOT / "requirements.txt").read_text(), re.M))
    listed = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", WHEELS.read_text(), re.M))
    assert {"pydantic", "pydantic-core", "loguru", "threadpoolctl"} <= set(listed)
    for name, version in listed.items():
        if name in pins:
            assert pins[name] == version, name
