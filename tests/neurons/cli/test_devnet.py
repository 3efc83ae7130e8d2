"""`canopy devnet ...` from the shell's point of view (Typer's runner, real files)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from canopy.cli.main import app
from chain.devnet import DevnetLedger


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("CANOPY_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args))

    return invoke


def test_init_register_stake_metagraph(run, tmp_path):
    assert run("devnet", "init", "--tempo", "5", "--stake-threshold", "100").exit_code == 0
    result = run("devnet", "register", "--wallet.name", "owner", "--wallet.hotkey", "validator", "--stake", "1000")
    assert result.exit_code == 0 and "uid 0" in result.output
    assert run("devnet", "register", "--wallet.name", "miner1").exit_code == 0
    result = run("devnet", "stake", "--wallet.name", "miner1", "--amount", "5")
    assert result.exit_code == 0 and "5.00 τ in total" in result.output

    graph = DevnetLedger(tmp_path / "devnet.sqlite").metagraph(1)
    assert [(n.uid, n.validator_permit) for n in graph.neurons] == [(0, True), (1, False)]
    assert (tmp_path / "wallets" / "owner" / "hotkeys" / "validator").exists()

    table = run("devnet", "metagraph").output
    assert "Subnet 1" in table and "1,000.00" in table and "COLDKEY" in table


def test_init_is_idempotent_and_reset_starts_over(run):
    run("devnet", "init")
    run("devnet", "register", "--wallet.name", "a")
    assert "exists" in run("devnet", "init").output
    run("devnet", "init", "--reset")
    assert "0 uids" in run("devnet", "metagraph").output


def test_errors_name_the_fix(run):
    result = run("devnet", "metagraph")
    assert result.exit_code == 1 and "canopy devnet init" in result.output
    run("devnet", "init")
    result = run("devnet", "metagraph", "--netuid", "4")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = run("devnet", "stake", "--wallet.name", "ghost", "--amount", "1")
    assert result.exit_code == 1 and "canopy devnet register --wallet.name ghost" in result.output
    result = run("devnet", "init", "--tempo", "0")
    assert result.exit_code != 0
