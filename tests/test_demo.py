"""``./run.sh demo --once`` end to end: the devnet, three miner processes, signed pings, an epoch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_once_prints_pings_weights_and_the_metagraph(tmp_path):
    env = {**os.environ, "CANOPY_HOME": str(tmp_path), "COLUMNS": "160"}
    result = subprocess.run(
        [sys.executable, "-m", "canopy.demo", "--once"], cwd=REPO, env=env, capture_output=True, text=True, timeout=200
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Signed Ping from the validator" in out
    assert len(re.findall(r"│ ok", out)) == 3
    assert "Weights set at block" in out and "uid 1 = 0.333" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+[0-3]\s+[\d,]+\.\d\d", line)]
    assert len(rows) == 4
    miners = [row for row in rows if "127.0.0.1:" in row]
    assert len(miners) == 3 and all("0.3333" in row for row in miners)  # equal incentive after the epoch
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""  # every miner process was stopped
