"""DevnetChain: the Chain port over the embedded devnet ledger.

``chain.connect`` picks it for ``--network devnet``. Each call runs the ledger's short
SQLite transaction in a worker thread, so a writer waiting on another process's lock never
blocks the event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Sequence

import bittensor as bt

from chain.base import Chain, Hyperparameters, Metagraph, WeightsSubmission
from chain.devnet.ledger import DevnetLedger


class DevnetChain(Chain):
    """An async Chain on one devnet file; cheap to create, one per process is plenty."""

    network = "devnet"

    def __init__(self, path: str | Path, *, block_time: float | None = None, ledger: DevnetLedger | None = None) -> None:
        self.ledger = ledger or DevnetLedger(path, block_time=block_time)

    async def block(self) -> int:
        return self.ledger.block()

    async def metagraph(self, netuid: int) -> Metagraph:
        return await asyncio.to_thread(self.ledger.metagraph, netuid)

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        return await asyncio.to_thread(self.ledger.hyperparameters, netuid)

    async def set_weights(
        self,
        wallet: bt.Wallet,
        netuid: int,
        uids: Sequence[int],
        weights: Sequence[float],
        *,
        version_key: int = 0,
    ) -> WeightsSubmission:
        hotkey = wallet.hotkey.ss58_address
        return await asyncio.to_thread(
            self.ledger.set_weights, netuid, hotkey, list(uids), list(weights), version_key=version_key
        )

    async def serve_axon(self, wallet: bt.Wallet, netuid: int, ip: str, port: int) -> None:
        await asyncio.to_thread(self.ledger.serve_axon, netuid, wallet.hotkey.ss58_address, ip, port)

    async def register(self, wallet: bt.Wallet, netuid: int) -> int:
        coldkey = wallet.coldkeypub.ss58_address
        return await asyncio.to_thread(self.ledger.register, netuid, wallet.hotkey.ss58_address, coldkey)
