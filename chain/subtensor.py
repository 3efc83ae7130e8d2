"""The real-chain adapter of the Chain port: ``SubtensorChain`` over ``bittensor.Client``.

``chain.connect`` picks it whenever ``--network`` names a real chain (finney, test,
local, archive, latent-lite or a ws:// / wss:// URL). The client can be given
(``client=bittensor.Client(substrate=...)``, e.g. over an in-memory ``bittensor.Substrate``).

Reads go through bittensor's typed reads (``client.subnets.metagraph``, the
``subnet_hyperparameters`` read) pinned to one block; writes go through its intents
(``SetWeights``, ``ServeAxon``, ``BurnedRegister``), so signing, u16 quantization and
the plain/commit-reveal choice stay the SDK's. Every refusal becomes a typed error of
``chain.base`` before it leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
from collections import Counter
from typing import Any, Iterator, Sequence

import bittensor as bt
from bittensor import hyperparams as hp
from bittensor.settings import RAO_PER_TAO

from chain.base import (
    AxonInfo,
    Chain,
    ChainError,
    Hyperparameters,
    InvalidWeights,
    Metagraph,
    Neuron,
    NotRegistered,
    RateLimited,
    SubnetNotFound,
    WeightsSubmission,
)

#: Network names bittensor 11 resolves itself (``bittensor.settings.NETWORKS``).
SDK_NETWORKS = ("finney", "test", "local", "archive")
#: bittensor 11 dropped the v10 name ``latent-lite``; this is the endpoint v10 used,
#: still listed in the SDK's finney fallback pool.
LATENT_LITE_ENDPOINT = "wss://lite.sub.latent.to:443"

_UIDS = bt.storage.SubtensorModule.Uids
_NETWORKS_ADDED = bt.storage.SubtensorModule.NetworksAdded
#: The chain-wide weights-min-stake floor (rao), which also gates validator permits.
_STAKE_THRESHOLD = bt.storage.SubtensorModule.StakeThreshold

# Names as the ``subnet_hyperparameters`` read returns them; any it omits (it never
# lists max_allowed_uids) are read from their storage item (``hyperparams.STORAGE_ITEMS``).
_HYPERPARAMETERS = (
    *("tempo", "weights_rate_limit", "commit_reveal_weights_enabled", "commit_reveal_period"),
    *("max_validators", "max_allowed_uids", "immunity_period", "min_allowed_weights", "max_weights_limit"),
)


def endpoint_for(network: str) -> str:
    """What to hand ``bittensor.Client``: SDK network names and URLs pass through."""
    if network in SDK_NETWORKS or network.startswith(("ws://", "wss://")):
        return network
    if network == "latent-lite":
        return LATENT_LITE_ENDPOINT
    raise ValueError(
        f"unknown network {network!r}: use one of {', '.join((*SDK_NETWORKS, 'latent-lite'))} "
        "or a ws:// / wss:// URL (the embedded devnet is chain.devnet, not this adapter)"
    )


class SubtensorChain(Chain):
    """The Chain port over a real subtensor node. Connects on first use."""

    def __init__(
        self,
        network: str,
        *,
        client: bt.Client | None = None,
        wait_for_finalization: bool = False,
    ) -> None:
        endpoint = endpoint_for(network)
        self.network = network
        self._client = client if client is not None else bt.Client(endpoint)
        self._wait_for_finalization = wait_for_finalization
        self._connected = False
        self._connect_lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        """The websocket endpoint the client talks to."""
        return self._client.endpoint

    def __repr__(self) -> str:
        return f"SubtensorChain(network={self.network!r}, endpoint={self.endpoint!r})"

    # Lifecycle ------------------------------------------------------------------

    async def _ready(self) -> bt.Client:
        if not self._connected:
            async with self._connect_lock:
                if not self._connected:
                    with _sdk_errors(f"connecting to {self.network} ({self.endpoint})"):
                        await self._client.connect()
                    self._connected = True
        return self._client

    async def close(self) -> None:
        """Close the client's connection; safe to call twice."""
        self._connected = False
        await self._client.close()

    # Reads ------------------------------------------------------------------------

    async def block(self) -> int:
        client = await self._ready()
        with _sdk_errors("reading the block height"):
            return await client.block()

    async def metagraph(self, netuid: int) -> Metagraph:
        client = await self._ready()
        with _sdk_errors(f"reading the metagraph of netuid {netuid}"):
            return await self._metagraph_at(await client.at(), netuid)

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        client = await self._ready()
        with _sdk_errors(f"reading the hyperparameters of netuid {netuid}"):
            return await self._hyperparameters_at(await client.at(), netuid)

    async def _metagraph_at(self, view: bt.Snapshot, netuid: int) -> Metagraph:
        graph = await view.subnets.metagraph(netuid, commitments=False)
        if graph is None:
            raise self._subnet_not_found(netuid)
        return _to_metagraph(graph)

    async def _hyperparameters_at(self, view: bt.Snapshot, netuid: int) -> Hyperparameters:
        params = await view.read("subnet_hyperparameters", netuid=netuid)
        if params is None:
            raise self._subnet_not_found(netuid)
        missing = [name for name in _HYPERPARAMETERS if params.get(name) is None]
        values = await asyncio.gather(
            *(view.query(hp.STORAGE_ITEMS[name], [netuid]) for name in missing), view.query(_STAKE_THRESHOLD, [])
        )
        params = {**params, **dict(zip(missing, values)), "stake_threshold": values[-1]}
        return Hyperparameters(
            tempo=int(params["tempo"]),
            weights_rate_limit=int(params["weights_rate_limit"]),
            commit_reveal_enabled=bool(params["commit_reveal_weights_enabled"]),
            commit_reveal_period=int(params["commit_reveal_period"]),
            max_validators=int(params["max_validators"]),
            max_allowed_uids=int(params["max_allowed_uids"]),
            immunity_period=int(params["immunity_period"]),
            min_allowed_weights=int(params["min_allowed_weights"]),
            max_weight_limit=hp.normalized("max_weights_limit", int(params["max_weights_limit"])) or 0.0,
            stake_threshold=int(params["stake_threshold"] or 0) / RAO_PER_TAO,
        )

    async def _uid(self, netuid: int, hotkey: str) -> int | None:
        """The hotkey's uid on the subnet (None when unregistered); SubnetNotFound if no subnet."""
        client = await self._ready()
        with _sdk_errors(f"looking up {hotkey} on netuid {netuid}"):
            view = await client.at()
            uid, exists = await asyncio.gather(
                view.query(_UIDS, [netuid, hotkey]), view.query(_NETWORKS_ADDED, [netuid])
            )
        if not exists:
            raise self._subnet_not_found(netuid)
        return None if uid is None else int(uid)

    # Writes ------------------------------------------------------------------------

    async def set_weights(
        self,
        wallet: bt.Wallet,
        netuid: int,
        uids: Sequence[int],
        weights: Sequence[float],
        *,
        version_key: int = 0,
    ) -> WeightsSubmission:
        """Submit through ``SetWeights``, which commits instead when the subnet runs commit-reveal.

        The vector is validated and the weights rate limit checked here first, so a
        refusal we can predict never costs a signature; the chain's own refusals are
        mapped to the same errors.
        """
        uid_list, weight_list = _validated_weights(uids, weights)
        client = await self._ready()
        hotkey = _hotkey(wallet)
        with _sdk_errors(f"reading netuid {netuid} before setting weights"):
            view = await client.at()
            params, graph = await asyncio.gather(
                self._hyperparameters_at(view, netuid), self._metagraph_at(view, netuid)
            )
        own = graph.by_hotkey(hotkey)
        if own is None:
            raise self._not_registered(hotkey, netuid)
        unknown = sorted(uid for uid in uid_list if graph.by_uid(uid) is None)
        if unknown:
            raise InvalidWeights(f"uids {unknown} are not registered on netuid {netuid} ({len(graph)} uids)")
        wait = _blocks_until_allowed(graph.block, own.last_update, params.weights_rate_limit)
        if wait:
            raise RateLimited(
                f"uid {own.uid} set weights on netuid {netuid} {graph.block - own.last_update} blocks ago; "
                f"the weights rate limit is {params.weights_rate_limit} blocks: retry in {wait} blocks",
                retry_in_blocks=wait,
            )
        intent = bt.SetWeights(netuid=netuid, uids=uid_list, weights=weight_list, version_key=version_key)
        try:
            result = await self._submit(intent, wallet, f"set weights on netuid {netuid}", invalid=InvalidWeights)
        except RateLimited as refusal:
            retry = await self._weights_retry(netuid, hotkey, params.weights_rate_limit)
            raise RateLimited(str(refusal), retry_in_blocks=retry) from refusal
        reveal_round = result.data.get("reveal_round")  # only the commit-reveal path sets it
        return WeightsSubmission(
            block=_inclusion_block(result) or graph.block,
            uids=tuple(uid_list),
            weights=tuple(weight_list),
            commit_reveal=reveal_round is not None,
            message="set" if reveal_round is None else f"committed, revealed at drand round {reveal_round}",
        )

    async def serve_axon(self, wallet: bt.Wallet, netuid: int, ip: str, port: int) -> None:
        """Publish ``ip:port`` through the ``ServeAxon`` intent, signed by the hotkey."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise ChainError(f"axon ip {ip!r} is not an IPv4 or IPv6 address: set --axon.external_ip") from None
        if address.is_unspecified:
            raise ChainError(f"axon ip {ip} cannot be published: set --axon.external_ip to a reachable address")
        if not 0 < port < 65536:
            raise ChainError(f"axon port {port} is outside 1..65535: set --axon.external_port")
        hotkey = _hotkey(wallet)
        if await self._uid(netuid, hotkey) is None:
            raise self._not_registered(hotkey, netuid)
        intent = bt.ServeAxon(netuid=netuid, ip=str(address), port=port)
        await self._submit(intent, wallet, f"serve axon on netuid {netuid}")

    async def register(self, wallet: bt.Wallet, netuid: int) -> int:
        """Burned registration (the coldkey pays the burn); a no-op when already registered."""
        hotkey = _hotkey(wallet)
        uid = await self._uid(netuid, hotkey)
        if uid is not None:
            return uid
        intent = bt.BurnedRegister(netuid=netuid, hotkey_ss58=hotkey)
        try:
            await self._submit(intent, wallet, f"register on netuid {netuid}")
        except ChainError:
            uid = await self._uid(netuid, hotkey)  # registered meanwhile by another process
            if uid is None:
                raise
            return uid
        uid = await self._uid(netuid, hotkey)
        if uid is None:
            raise ChainError(f"registration of {hotkey} on netuid {netuid} was included but no uid appeared; retry")
        return uid

    async def _submit(
        self, intent: bt.Intent, wallet: bt.Wallet, action: str, *, invalid: type[ChainError] = ChainError
    ) -> bt.ExtrinsicResult:
        """Execute an intent, waiting for inclusion; every refusal becomes a typed error."""
        client = await self._ready()
        try:
            result = await client.execute(
                intent, wallet, wait_for_inclusion=True, wait_for_finalization=self._wait_for_finalization
            )
        except bt.ChainError as error:  # refused by the intent's own preflight, before signing
            raise _refusal(error, action, invalid) from error
        except bt.BittensorError as error:
            raise ChainError(f"{action} failed: {error}") from error
        if not result.success:
            raise _refusal(result.error or bt.ChainError(result.message or "extrinsic failed"), action, invalid)
        return result

    async def _weights_retry(self, netuid: int, hotkey: str, rate_limit: int) -> int:
        """Blocks until the chain accepts weights again, from fresh state (at least 1)."""
        with contextlib.suppress(ChainError):
            graph = await self.metagraph(netuid)
            own = graph.by_hotkey(hotkey)
            if own is not None:
                return max(1, _blocks_until_allowed(graph.block, own.last_update, rate_limit))
        return 1

    # Errors ---------------------------------------------------------------------------

    def _subnet_not_found(self, netuid: int) -> SubnetNotFound:
        return SubnetNotFound(f"netuid {netuid} does not exist on {self.network}: check --netuid and --network")

    def _not_registered(self, hotkey: str, netuid: int) -> NotRegistered:
        return NotRegistered(
            f"hotkey {hotkey} is not registered on netuid {netuid} ({self.network}): register it with "
            f"`btcli subnets register --netuid {netuid} --network {self.network}`"
        )



# Translation ------------------------------------------------------------------------------


def _refusal(error: bt.ChainError, action: str, invalid: type[ChainError]) -> ChainError:
    """A chain (or intent preflight) refusal as the port's error, by bittensor's ErrorCode."""
    name = f" ({error.name})" if error.name else ""
    message = f"{action} refused by the chain{name}: {error.message}; {error.remediation}"
    kind: type[ChainError] = {
        bt.ErrorCode.RATE_LIMITED: RateLimited,
        bt.ErrorCode.NOT_REGISTERED: NotRegistered,
        bt.ErrorCode.SUBNET_NOT_EXISTS: SubnetNotFound,
        bt.ErrorCode.INVALID_ARGUMENT: invalid,
        bt.ErrorCode.LIMIT_EXCEEDED: invalid,
    }.get(error.code, ChainError)
    return kind(message)


def _to_metagraph(graph: bt.Metagraph) -> Metagraph:
    """bittensor's typed metagraph as the port's plain dataclasses (amounts in TAO units)."""
    axons = list(graph.raw.get("axons") or [])
    neurons = tuple(
        Neuron(
            uid=n.uid,
            hotkey=n.hotkey,
            coldkey=n.coldkey,
            # total_stake is the chain's stake weight (alpha + root TAO x tao_weight), in rao.
            stake=n.total_stake.rao / RAO_PER_TAO,
            validator_permit=n.validator_permit,
            axon=_axon(axons[n.uid] if n.uid < len(axons) else None),
            incentive=n.incentive,
            dividends=n.dividends,
            emission=n.emission.rao / RAO_PER_TAO,
            consensus=n.consensus,
            trust=n.trust,
            last_update=n.last_update,
            registered_at=n.block_at_registration,
        )
        for n in graph.neurons
    )
    return Metagraph(netuid=graph.netuid, block=graph.block, neurons=neurons)


def _axon(record: Any) -> AxonInfo | None:
    """The runtime's ``AxonInfo`` record (ip as u128), or None when nothing is served."""
    if not isinstance(record, dict) or not int(record.get("ip") or 0):
        return None
    raw_ip = int(record["ip"])
    ip = ipaddress.IPv6Address(raw_ip) if int(record.get("ip_type") or 4) == 6 else ipaddress.IPv4Address(raw_ip)
    return AxonInfo(
        ip=str(ip),
        port=int(record.get("port") or 0),
        protocol=int(record.get("protocol") or 0),
        version=int(record.get("version") or 0),
    )


def _validated_weights(uids: Sequence[int], weights: Sequence[float]) -> tuple[list[int], list[float]]:
    """Refuse a vector the chain would refuse, before anything is signed."""
    if len(uids) != len(weights):
        raise InvalidWeights(f"{len(uids)} uids but {len(weights)} weights: pass one weight per uid")
    if not uids:
        raise InvalidWeights("the weights vector is empty")
    try:
        uid_list = [int(uid) for uid in uids]
        weight_list = [float(weight) for weight in weights]
    except (TypeError, ValueError) as error:
        raise InvalidWeights(f"uids must be integers and weights numbers: {error}") from None
    if any(not 0 <= uid <= 65535 for uid in uid_list):
        raise InvalidWeights("uids must be in 0..65535")
    duplicates = sorted(uid for uid, count in Counter(uid_list).items() if count > 1)
    if duplicates:
        raise InvalidWeights(f"duplicate uids {duplicates}: each uid may appear once")
    if any(not math.isfinite(weight) for weight in weight_list):
        raise InvalidWeights("weights must be finite numbers (no NaN or infinity)")
    if any(weight < 0 for weight in weight_list):
        raise InvalidWeights("weights must not be negative")
    if not any(weight > 0 for weight in weight_list):
        raise InvalidWeights("all weights are zero: nothing to set")
    return uid_list, weight_list


def _blocks_until_allowed(block: int, last_update: int, rate_limit: int) -> int:
    """Blocks left before the chain accepts weights (it allows ``block - last >= limit``)."""
    if rate_limit <= 0 or last_update <= 0:
        return 0
    return max(0, rate_limit - (block - last_update))


def _inclusion_block(result: bt.ExtrinsicResult) -> int | None:
    """The block number from an ``extrinsic_id`` like ``"1234-0002"``."""
    height, _, _ = (result.extrinsic_id or "").partition("-")
    return int(height) if height.isdigit() else None


def _hotkey(wallet: bt.Wallet) -> str:
    address: str = bt.public_view(wallet, "hotkey").ss58_address
    return address


@contextlib.contextmanager
def _sdk_errors(action: str) -> Iterator[None]:
    """bittensor's read and connection failures as the port's ChainError."""
    try:
        yield
    except bt.RpcConnectionError as error:
        raise ChainError(f"{action}: the node did not answer ({error}); check --network and retry") from error
    except bt.BittensorError as error:
        raise ChainError(f"{action} failed: {error}") from error
