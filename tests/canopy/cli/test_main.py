"""The root CLI loads a command group only when it runs: ``canopy --help`` imports no node code."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from canopy.cli.main import COMMANDS, app

NODE_PACKAGES = ("validator", "api", "miner", "chain", "bittensor", "torch", "sqlalchemy", "wandb")


def test_help_lists_every_command_without_importing_the_node_stack():
    probe = ("import sys, json\n"
             "from typer.testing import CliRunner\n"
             "from canopy.cli.main import app\n"
             "result = CliRunner().invoke(app, ['--help'])\n"
             "print(json.dumps({'code': result.exit_code, 'out': result.output,\n"
             "                  'modules': sorted({m.split('.')[0] for m in sys.modules})}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert all(name in report["out"] for name in COMMANDS)
    assert not set(report["modules"]) & set(NODE_PACKAGES), set(report["modules"]) & set(NODE_PACKAGES)


def test_a_lazy_command_group_runs_and_keeps_its_subcommands():
    runner = CliRunner()
    assert runner.invoke(app, ["version"]).exit_code == 0
    result = runner.invoke(app, ["graval", "--help"])
    assert result.exit_code == 0 and "calibrate" in result.output  # a one-command group stays a group
    assert runner.invoke(app, ["nope"]).exit_code != 0
