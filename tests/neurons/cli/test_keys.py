"""``canopy keys``: create prints the key once, list shows hints only, edits and refusals."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from canopy.cli.main import app
from tests.support.store import sqlite_url

runner = CliRunner()


def keys(url: str, *args: str):
    return runner.invoke(app, ["keys", *args, "--database-url", url], env={"COLUMNS": "200"})


def test_keys_lifecycle(tmp_path):
    url = sqlite_url(tmp_path / "api.sqlite")
    created = keys(url, "create", "--name", "alice", "--credits", "10", "--rate-limit", "10/60s", "--expires", "in 30 days")
    assert created.exit_code == 0, created.output
    key = re.search(r"^(cnp_\S+)$", created.output, re.MULTILINE).group(1)
    listed = keys(url, "list")
    assert listed.exit_code == 0 and "alice" in listed.output and key not in listed.output
    assert f"cnp_…{key[-4:]}" in listed.output and "10/60s" in listed.output and "active" in listed.output
    assert "15" in keys(url, "edit", "alice", "--add-credits", "5").output
    assert "disabled" in keys(url, "disable", "alice").output
    assert "active" in keys(url, "enable", "alice").output
    again = keys(url, "create", "--name", "alice")
    assert again.exit_code == 1 and "exists already" in again.output
    bad = keys(url, "create", "--name", "bob", "--rate-limit", "lots")
    assert bad.exit_code == 1 and "N/Ws" in bad.output
    assert keys(url, "delete", "alice", "--yes").exit_code == 0
    missing = keys(url, "edit", "alice", "--credits", "1")
    assert missing.exit_code == 1 and "no key named 'alice'" in missing.output
