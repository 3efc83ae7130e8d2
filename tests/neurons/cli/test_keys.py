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


def test_keys_owner_scopes_and_chutes(tmp_path):
    url = sqlite_url(tmp_path / "api.sqlite")
    created = keys(url, "create", "--name", "dep", "--owner", "alice", "--scope", "invoke", "--scope", "deploy",
                   "--chute", "alice/llm")
    assert created.exit_code == 0, created.output
    listed = keys(url, "list")
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.output and "invoke, deploy" in listed.output and "alice/llm" in listed.output
    root = keys(url, "create", "--name", "root", "--admin")
    assert root.exit_code == 0, root.output
    assert "invoke, admin" in keys(url, "list").output
    edited = keys(url, "edit", "dep", "--owner", "bob", "--scope", "invoke", "--all-chutes")
    assert edited.exit_code == 0 and "bob" in edited.output and "deploy" not in edited.output, edited.output
    promoted = keys(url, "edit", "dep", "--admin")
    assert promoted.exit_code == 0 and "invoke, admin" in promoted.output, promoted.output
    for bad, message in ((["--scope", "root"], "unknown scope"), (["--owner", "bad owner"], "owner"),
                         (["--chute", "nochute"], "owner/name")):
        refused = keys(url, "create", "--name", "nope", *bad)
        assert refused.exit_code == 1 and message in refused.output, refused.output
        refused = keys(url, "edit", "dep", *bad)
        assert refused.exit_code == 1 and message in refused.output, refused.output
    after = keys(url, "list").output
    assert "nope" not in after and "bob" in after
