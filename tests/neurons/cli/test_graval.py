"""``canopy graval calibrate`` on the CPU pseudo-device: it proves, self-checks, prints the
separation table and a row the table accepts."""

from __future__ import annotations

import tomllib

from typer.testing import CliRunner

from canopy.cli.main import app
from protocol.graval.devices import GpuModel


def test_calibrate_prints_a_row_the_table_accepts():
    result = CliRunner().invoke(app, ["graval", "calibrate", "--cpu", "--cpu-memory-mb", "16", "--runs", "1",
                                      "--sep-m", "2"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "matches table row cpu" in result.output
    assert "separation" in result.output and "half memory" in result.output and "two claims (b)" in result.output
    row_text = result.output[result.output.index("[[gpu]]"):]
    model = GpuModel(**tomllib.loads(row_text)["gpu"][0])
    assert model.calibrated and model.devnet_only and model.graval_n == 1024
    assert model.fill_macs_per_s > 1e6 and model.access_macs_per_s > 1e6
    assert (model.window_low, model.window_high) == (0.001, 100.0)  # the devnet row keeps its wide window


def test_calibrate_without_a_gpu_names_the_fix():
    result = CliRunner().invoke(app, ["graval", "calibrate"])
    assert result.exit_code == 1
    assert "--cpu" in result.output
