"""Fixtures of the entry-point tests: a devnet (netuid 1, stake threshold 100) in the test's folder."""

from __future__ import annotations

import pytest

from chain.devnet import DevnetLedger


@pytest.fixture
def devnet(tmp_path) -> DevnetLedger:
    ledger = DevnetLedger(tmp_path / "devnet.sqlite", block_time=1.0)
    ledger.create_subnet(1, stake_threshold=100)
    return ledger
