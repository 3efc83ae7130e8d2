"""Devnet fixtures: a ledger on a tmp file with a clock the test moves by hand."""

from __future__ import annotations

import pytest
from bittensor.keyfiles import Keypair

from chain.devnet import DevnetLedger


class ManualClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_blocks(self, blocks: int, block_time: float = 1.0) -> None:
        self.now += blocks * block_time


def address(name: str) -> str:
    """A real ss58 address derived from a dev URI (cheap, deterministic)."""
    return Keypair.create_from_uri(f"//{name}").ss58_address


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(tmp_path, clock) -> DevnetLedger:
    return DevnetLedger(tmp_path / "devnet.sqlite", block_time=1.0, clock=clock)
