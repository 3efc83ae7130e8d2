"""The demo (``neurons.demo``) end to end: ``./run.sh demo --keep`` then ``./run.sh demo stop``.

The devnet, three miner processes (one a cheater), the API, signed pings, the validator's
steps (GraVal, synthetic calls, scores), weights, an epoch, the chutes deployed with
``canopy deploy`` and picked up by the miners, a chat answer through the API with the
openai client, the echo chute at its public route, then the subnet left running (the API answering, the validator a
process) until stopped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from canopy.templates.model_files import models_root
from tests.support import ROOT


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_demo_prints_an_answer_and_the_weights_then_keeps_serving_until_stopped(tmp_path):
    # a fresh home, but the converted model of the test session (converting takes ~40 s)
    env = {**os.environ, "CANOPY_HOME": str(tmp_path), "COLUMNS": "160", "CANOPY_MODEL_CACHE": str(models_root())}
    try:
        result = subprocess.run([sys.executable, "-m", "neurons.demo", "--keep"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        _check_output(result)
        kept = json.loads((tmp_path / "demo" / "pids.json").read_text())
        assert sorted(kept["processes"]) == ["api", "miner1", "miner2", "miner3", "validator"]
        health = httpx.get(kept["api_url"] + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["serving_miners"] == 3, health.text
    finally:
        stopped = subprocess.run([sys.executable, "-m", "neurons.demo", "stop"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped: api, miner1, miner2, miner3, validator" in stopped.stdout, stopped
    assert not (tmp_path / "demo" / "pids.json").exists()
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""  # every process was stopped


def _check_output(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Signed Ping from the validator" in out
    assert len(re.findall(r"│ ok", out)) == 3
    assert len(re.findall(r"│ verified", out)) == 3  # 1 + 2 honest CPU pseudo-devices; the cheater's fails
    assert "Deployed with canopy deploy" in out and "canopy/echo" in out and "canopy/smollm2-135m-instruct" in out
    assert "Chutes hosted (Inventory)" in out and len(re.findall(r"│ smollm2-135m-instruct", out)) == 3  # picked up
    echo = re.search(r"POST http://127\.0\.0\.1:\d+/chutes/canopy/echo/echo .*hello from the public API", out)
    assert echo, out  # the echo chute, deployed and picked up, answered at its public route
    answer = re.search(r"^A (.+)$", out, re.MULTILINE)
    assert answer and len(answer.group(1).split()) >= 3, out  # a real streamed chat answer
    served = re.search(r"served by miner uid (\d+) \(.+\) in [\d.]+ s, through the API with the openai client", out)
    assert served and served.group(1) in ("1", "2"), out  # the API routes to verified miners only
    assert "The subnet: devices, scores (validator), weights and incentive (devnet)" in out
    assert re.search(r"curl -s http://127\.0\.0\.1:\d+/v1/chat/completions -H 'Authorization: Bearer cnp_", out)
    weights = re.search(r"Weights set at block \d+: uid 1 = ([\d.]+), uid 2 = ([\d.]+), uid 3 = ([\d.]+)", out)
    assert weights, out
    w1, w2, w3 = map(float, weights.groups())
    # the scoring formula: miner2 has two verified devices, miner1 one; miner3 (the cheater)
    # proved nothing and gets nothing
    assert w2 > w1 > w3 == 0 and abs(w1 + w2 + w3 - 1) < 0.01, (w1, w2, w3)
    rows = [line for line in out.splitlines() if re.match(r"^\s+[0-3]\s+[\d,]+\.\d\d", line)]
    assert len(rows) == 4
    miners = [row for row in rows if "127.0.0.1:" in row]
    header = next([t for t in line.split() if t != "τ"] for line in out.splitlines() if "INCENT" in line.split())
    incentive = [float(row.split()[header.index("INCENT")]) for row in miners]  # the epoch paid by those weights
    assert len(miners) == 3 and incentive[1] > incentive[0] > incentive[2] == 0, miners
    assert "Left running in the background" in out and "./run.sh demo stop" in out
