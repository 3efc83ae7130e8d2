"""The Chain port: the one interface every neuron uses to read and write the chain.

The seam between the neurons and the chain they run on: reads (block, metagraph,
hyperparameters) and writes (weights, axon records, registration). Two adapters implement
it: ``chain.subtensor.SubtensorChain`` (a real chain through ``bittensor.Client``) and
``chain.devnet.DevnetChain`` (an embedded chain in one SQLite file).

Everything here is plain data: adapters translate their own types into these, so code
above the port never imports bittensor's chain types.
"""

from __future__ import annotations

import abc
import ipaddress
from dataclasses import dataclass, field
from typing import Sequence

import bittensor as bt


class ChainError(Exception):
    """A chain read or write failed. The message says what to do about it."""


class SubnetNotFound(ChainError):
    """The netuid does not exist on this chain."""


class NotRegistered(ChainError):
    """The hotkey has no uid on the netuid."""


class RateLimited(ChainError):
    """The chain refused a write because its rate limit has not elapsed."""

    def __init__(self, message: str, retry_in_blocks: int = 0) -> None:
        super().__init__(message)
        self.retry_in_blocks = retry_in_blocks


class InvalidWeights(ChainError):
    """The weights vector was refused (length mismatch, unknown uid, negative, empty)."""


class NoValidatorPermit(ChainError):
    """Only uids with a validator permit may set weights on other uids."""


@dataclass(frozen=True)
class AxonInfo:
    """Where a neuron serves: the record ``serve_axon`` writes on chain."""

    ip: str
    port: int
    protocol: int = 4
    version: int = 0

    @property
    def is_serving(self) -> bool:
        """True when the record points somewhere a client can connect to."""
        if self.port <= 0 or not self.ip:
            return False
        try:
            return not ipaddress.ip_address(self.ip).is_unspecified
        except ValueError:
            return False

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Neuron:
    """One uid of a subnet, as the metagraph shows it. Stake is in TAO."""

    uid: int
    hotkey: str
    coldkey: str
    stake: float
    validator_permit: bool
    axon: AxonInfo | None
    incentive: float = 0.0
    dividends: float = 0.0
    emission: float = 0.0
    consensus: float = 0.0
    trust: float = 0.0
    last_update: int = 0
    registered_at: int = 0

    @property
    def is_serving(self) -> bool:
        return self.axon is not None and self.axon.is_serving


@dataclass(frozen=True)
class Metagraph:
    """A snapshot of one subnet at one block."""

    netuid: int
    block: int
    neurons: tuple[Neuron, ...] = ()
    _by_hotkey: dict[str, Neuron] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for neuron in self.neurons:
            self._by_hotkey[neuron.hotkey] = neuron

    def __len__(self) -> int:
        return len(self.neurons)

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        return self._by_hotkey.get(hotkey)

    def by_uid(self, uid: int) -> Neuron | None:
        for neuron in self.neurons:
            if neuron.uid == uid:
                return neuron
        return None

    @property
    def hotkeys(self) -> list[str]:
        return [n.hotkey for n in self.neurons]

    def validators(self) -> list[Neuron]:
        return [n for n in self.neurons if n.validator_permit]

    def serving_miners(self) -> list[Neuron]:
        """Neurons with a reachable axon and no validator permit."""
        return [n for n in self.neurons if n.is_serving and not n.validator_permit]


@dataclass(frozen=True)
class Hyperparameters:
    """The subnet settings the neurons act on."""

    tempo: int
    weights_rate_limit: int
    commit_reveal_enabled: bool = False
    commit_reveal_period: int = 1
    max_validators: int = 64
    max_allowed_uids: int = 256
    immunity_period: int = 0
    min_allowed_weights: int = 0
    max_weight_limit: float = 1.0
    #: Least stake (TAO) for a validator permit and for setting weights (subtensor's StakeThreshold).
    stake_threshold: float = 0.0


@dataclass(frozen=True)
class WeightsSubmission:
    """What a successful ``set_weights`` did."""

    block: int
    uids: tuple[int, ...]
    weights: tuple[float, ...]
    commit_reveal: bool = False
    message: str = ""


class Chain(abc.ABC):
    """The chain as the neurons see it. All methods are coroutines.

    Writes raise a ``ChainError`` subclass on refusal; reads raise ``SubnetNotFound``
    for an unknown netuid.
    """

    network: str = ""

    @abc.abstractmethod
    async def block(self) -> int:
        """The current block height."""

    @abc.abstractmethod
    async def metagraph(self, netuid: int) -> Metagraph:
        """Every uid of the subnet with stake, permits, axons and incentive."""

    @abc.abstractmethod
    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        """Tempo, weights rate limit, commit-reveal and the other subnet settings."""

    @abc.abstractmethod
    async def set_weights(
        self,
        wallet: bt.Wallet,
        netuid: int,
        uids: Sequence[int],
        weights: Sequence[float],
        *,
        version_key: int = 0,
    ) -> WeightsSubmission:
        """Set (or commit, where the subnet uses commit-reveal) the wallet's weights."""

    @abc.abstractmethod
    async def serve_axon(self, wallet: bt.Wallet, netuid: int, ip: str, port: int) -> None:
        """Publish the wallet hotkey's axon address on the subnet."""

    @abc.abstractmethod
    async def register(self, wallet: bt.Wallet, netuid: int) -> int:
        """Register the wallet's hotkey on the subnet (a no-op when it already is); returns its uid."""

    async def uid_of(self, netuid: int, hotkey: str) -> int | None:
        """The uid of a hotkey on the subnet, or None when it is not registered."""
        neuron = (await self.metagraph(netuid)).by_hotkey(hotkey)
        return None if neuron is None else neuron.uid

    async def blocks_since_last_update(self, netuid: int, uid: int) -> int:
        """Blocks since the uid last set weights (the weights rate limit counts these)."""
        graph = await self.metagraph(netuid)
        neuron = graph.by_uid(uid)
        if neuron is None:
            raise NotRegistered(f"uid {uid} is not registered on netuid {netuid}")
        return graph.block - neuron.last_update

    async def close(self) -> None:
        """Release connections; safe to call twice."""

    async def __aenter__(self) -> "Chain":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
