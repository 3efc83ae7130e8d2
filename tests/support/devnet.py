"""The devnet in tests: a clock the test moves by hand, and real ss58 addresses from names.

``DevnetLedger(path, clock=ManualClock())`` makes block heights whatever the test says.
"""

from __future__ import annotations

from bittensor.keyfiles import Keypair


class ManualClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_blocks(self, blocks: int, block_time: float = 1.0) -> None:
        self.now += blocks * block_time


def address(name: str) -> str:
    """The real ss58 address of the dev URI ``//name`` (cheap, deterministic)."""
    return Keypair.create_from_uri(f"//{name}").ss58_address

