"""``canopy graval calibrate`` on the CPU pseudo-device: it proves, self-checks and prints a table row."""

from __future__ import annotations

import tomllib

from typer.testing import CliRunner

from canopy.cli.main import app
from protocol.graval.devices import GpuModel


def test_calibrate_prints_a_row_the_table_accepts():
    result = CliRunner().invoke(app, ["graval", "calibrate", "--cpu", "--cpu-memory-mb", "16", "--runs", "1"])
    assert result.exit_code == 0, result.output
    assert "matches table row cpu" in result.output
    row_text = result.output[result.output.index("[[gpu]]"):]
    row = tomllib.loads(row_text)["gpu"][0]
    model = GpuModel(**row)
    assert model.challenge_macs_per_s > 1e6 and model.graval_n == 1024


def test_calibrate_without_a_gpu_names_the_fix():
    result = CliRunner().invoke(app, ["graval", "calibrate"])
    assert result.exit_code == 1
    assert "--cpu" in result.output
