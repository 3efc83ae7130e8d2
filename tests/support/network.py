"""The wire in tests: an in-memory Chain, raw signed requests, recording doubles.

The in-memory chain (``StaticChain``) stands in for the devnet where a fixed metagraph is
all a test needs; ``signed_headers`` and ``raw_post`` build requests byte by byte where a
test must send what a ``Dendrite`` never would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import aiohttp
import bittensor as bt
from bittensor import http_auth

from chain.base import AxonInfo, Chain, Hyperparameters, Metagraph, Neuron, NotRegistered, WeightsSubmission
from protocol.synapse import PROTOCOL_HEADER, PROTOCOL_VERSION

NETUID = 7


class StaticChain(Chain):
    """A Chain whose metagraph is whatever the test puts in ``self.graph``."""

    network = "memory"

    def __init__(self, graph: Metagraph) -> None:
        self.graph = graph
        self.metagraph_reads = 0
        self.served: list[tuple[str, int, str, int]] = []

    async def block(self) -> int:
        return self.graph.block

    async def metagraph(self, netuid: int) -> Metagraph:
        self.metagraph_reads += 1
        return self.graph

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        return Hyperparameters(tempo=360, weights_rate_limit=100)

    async def set_weights(
        self, wallet: bt.Wallet, netuid: int, uids: Sequence[int], weights: Sequence[float], *, version_key: int = 0
    ) -> WeightsSubmission:
        return WeightsSubmission(block=self.graph.block, uids=tuple(uids), weights=tuple(weights))

    async def serve_axon(self, wallet: bt.Wallet, netuid: int, ip: str, port: int) -> None:
        self.served.append((wallet.hotkey.ss58_address, netuid, ip, port))

    async def register(self, wallet: bt.Wallet, netuid: int) -> int:
        neuron = self.graph.by_hotkey(wallet.hotkey.ss58_address)
        if neuron is None:
            raise NotRegistered("the in-memory chain does not register new hotkeys")
        return neuron.uid


def neuron(uid: int, wallet: bt.Wallet, *, stake: float, permit: bool, port: int = 0) -> Neuron:
    axon = AxonInfo("127.0.0.1", port) if port else None
    return Neuron(uid=uid, hotkey=wallet.hotkey.ss58_address, coldkey=wallet.coldkeypub.ss58_address,
                  stake=stake, validator_permit=permit, axon=axon)


class RecordingNonceStore(http_auth.InMemoryNonceStore):
    """The default store, remembering what was written so tests can assert nothing was."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[tuple[str, int]] = []

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        fresh = super().check_and_store(hotkey_ss58, nonce_ns)
        if fresh:
            self.stored.append((hotkey_ss58, nonce_ns))
        return fresh


@dataclass
class Spy:
    """Records every call a handler received."""

    calls: list[tuple[Any, Any]] = field(default_factory=list)


def signed_headers(
    wallet: bt.Wallet,
    receiver: str | None,
    path: str,
    body: bytes,
    *,
    nonce_ns: int | None = None,
    protocol: str | None = PROTOCOL_VERSION,
) -> dict[str, str]:
    headers = http_auth.sign(wallet, method="POST", path=path, body=body, receiver_ss58=receiver,
                             nonce_ns=time.time_ns() if nonce_ns is None else nonce_ns)
    headers["Content-Type"] = "application/json"
    if protocol is not None:
        headers[PROTOCOL_HEADER] = protocol
    return headers


async def raw_post(url: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST with a throwaway session; returns (status, JSON body, headers)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers) as response:
            return response.status, await response.json(content_type=None), dict(response.headers)
