"""SubtensorChain against an in-memory subtensor (``tests.support.fake_substrate``).

Every test drives the real bittensor 11 Client, reads and intents; only the Substrate
underneath is faked, so the SDK's own decoding, quantization, signing and error mapping
run as they do against a node. Fully offline.
"""

from __future__ import annotations

import ipaddress
import math

import bittensor as bt
import bittensor_core
import pytest
from bittensor import timelock
from bittensor.settings import NETWORKS

from node.wallets import create_devnet_wallet
from chain.base import (
    AxonInfo,
    Chain,
    ChainError,
    InvalidWeights,
    NotRegistered,
    RateLimited,
    SubnetNotFound,
)
from chain.subtensor import LATENT_LITE_ENDPOINT, SubtensorChain
from tests.support.devnet import address
from tests.support.fake_substrate import FakeNeuron, FakeSubstrate, axon_record

NETUID = 7
HEAD = 5000
TAO = 10**9
U16 = 65535
VERSION_KEY = 3  # the subnet's weights_version


@pytest.fixture(autouse=True)
def _sdk_cache_in_tmp(tmp_path, monkeypatch):
    """Client.connect caches token symbols on disk; keep that out of ~/.bittensor."""
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))


@pytest.fixture(scope="module")
def wallets(tmp_path_factory) -> dict[str, bt.Wallet]:
    root = tmp_path_factory.mktemp("wallets")
    return {name: create_devnet_wallet(name, "default", root) for name in ("validator", "miner", "newcomer")}


@pytest.fixture
def fake(wallets) -> FakeSubstrate:
    """Netuid 7 with a validator, two serving miners (IPv4, IPv6) and one idle uid."""
    fake = FakeSubstrate(block=HEAD)
    subnet = fake.add_subnet(
        NETUID,
        address("Owner"),
        address("OwnerCold"),
        tempo=360,
        weights_rate_limit=100,
        reveal_period=2,
        max_validators=32,
        max_allowed_uids=192,
        immunity_period=4096,
        min_allowed_weights=2,
        max_weights_limit=49151,
        weights_version=VERSION_KEY,
    )
    validator, miner = wallets["validator"], wallets["miner"]
    subnet.neurons = [
        FakeNeuron(
            validator.hotkey.ss58_address,
            validator.coldkeypub.ss58_address,
            alpha_stake=1_500 * TAO,
            tao_stake=100 * TAO,
            validator_permit=True,
            dividends=32768,
            consensus=1000,
            trust=2000,
            emission=2 * TAO,
            last_update=HEAD - 200,
            registered_at=100,
        ),
        FakeNeuron(
            miner.hotkey.ss58_address,
            miner.coldkeypub.ss58_address,
            alpha_stake=10 * TAO,
            axon=axon_record(int(ipaddress.IPv4Address("203.0.113.7")), 8091, protocol=4, version=1, block=900),
            incentive=49151,
            consensus=40000,
            trust=30000,
            emission=TAO // 2,
            last_update=1200,
            registered_at=1200,
        ),
        FakeNeuron(
            address("Charlie"),
            address("CharlieCold"),
            axon=axon_record(int(ipaddress.IPv6Address("2001:db8::1")), 9000, ip_type=6, protocol=4, version=2),
            incentive=16384,
            registered_at=1300,
        ),
        FakeNeuron(address("Dave"), address("DaveCold"), registered_at=4000),
    ]
    return fake


@pytest.fixture
async def chain(fake):
    chain = SubtensorChain("local", client=bt.Client("local", substrate=fake))
    yield chain
    await chain.close()


def included(fake: FakeSubstrate, function: str) -> list:
    return [e for e in fake.extrinsics if e.function == function]


def assert_signed_by(extrinsic, ss58: str) -> None:
    assert extrinsic.signer == ss58
    assert bittensor_core.verify_signature(extrinsic.payload, extrinsic.signature, ss58)


# Construction and lifecycle -----------------------------------------------------------


@pytest.mark.parametrize(
    "network, endpoint",
    [
        ("finney", NETWORKS["finney"]),
        ("test", NETWORKS["test"]),
        ("local", NETWORKS["local"]),
        ("archive", NETWORKS["archive"]),
        ("latent-lite", LATENT_LITE_ENDPOINT),
        ("ws://10.0.0.5:9944", "ws://10.0.0.5:9944"),
        ("wss://node.example:443", "wss://node.example:443"),
    ],
)
def test_network_names_resolve_through_the_sdk(network, endpoint):
    chain = SubtensorChain(network)  # builds the RPC client without connecting
    assert isinstance(chain, Chain)
    assert chain.network == network
    assert chain.endpoint == endpoint


@pytest.mark.parametrize("network", ["devnet", "mainnet", "http://127.0.0.1:9944"])
def test_unknown_network_is_refused(network):
    with pytest.raises(ValueError, match="unknown network"):
        SubtensorChain(network)


async def test_connects_lazily_and_close_closes_the_client(fake, chain):
    assert not fake.connected
    assert await chain.block() == HEAD
    assert fake.connected
    await chain.close()
    await chain.close()
    assert fake.closed


async def test_unreachable_node_is_a_chain_error_naming_the_endpoint(fake, chain, monkeypatch):
    async def refuse() -> None:
        raise bt.RpcConnectionError("connection refused")

    monkeypatch.setattr(fake, "connect", refuse)
    with pytest.raises(ChainError, match=r"connecting to local \(ws://127.0.0.1:9944\).*connection refused"):
        await chain.block()


# Reads ----------------------------------------------------------------------------------


async def test_metagraph_translates_every_neuron(chain, wallets):
    graph = await chain.metagraph(NETUID)

    assert (graph.netuid, graph.block, len(graph)) == (NETUID, HEAD, 4)
    validator, miner, ipv6_miner, idle = graph.neurons
    assert [n.uid for n in graph.neurons] == [0, 1, 2, 3]

    assert validator.hotkey == wallets["validator"].hotkey.ss58_address
    assert validator.coldkey == wallets["validator"].coldkeypub.ss58_address
    assert validator.stake == pytest.approx(1_518.0)  # alpha 1500 + root 100 x tao_weight 0.18
    assert validator.validator_permit and validator.axon is None
    assert validator.dividends == pytest.approx(32768 / U16)
    assert validator.consensus == pytest.approx(1000 / U16)
    assert validator.trust == pytest.approx(2000 / U16)
    assert validator.emission == pytest.approx(2.0)
    assert (validator.last_update, validator.registered_at) == (HEAD - 200, 100)

    assert miner.hotkey == wallets["miner"].hotkey.ss58_address
    assert miner.stake == pytest.approx(10.0)
    assert not miner.validator_permit
    assert miner.axon == AxonInfo(ip="203.0.113.7", port=8091, protocol=4, version=1)
    assert miner.incentive == pytest.approx(0.75, abs=1e-4)
    assert miner.emission == pytest.approx(0.5)
    assert miner.last_update == 1200

    assert ipv6_miner.axon == AxonInfo(ip="2001:db8::1", port=9000, protocol=4, version=2)
    assert ipv6_miner.axon.url == "http://[2001:db8::1]:9000"
    assert idle.axon is None and idle.stake == 0.0 and idle.registered_at == 4000

    assert [n.uid for n in graph.serving_miners()] == [1, 2]
    assert graph.by_hotkey(wallets["miner"].hotkey.ss58_address) is miner


async def test_hyperparameters_read(chain):
    params = await chain.hyperparameters(NETUID)

    assert params.tempo == 360
    assert params.weights_rate_limit == 100
    assert params.commit_reveal_enabled is False
    assert params.commit_reveal_period == 2
    assert params.max_validators == 32
    assert params.max_allowed_uids == 192  # not in the v3 read: from MaxAllowedUids storage
    assert params.immunity_period == 4096
    assert params.min_allowed_weights == 2
    assert params.max_weight_limit == pytest.approx(49151 / U16)
    assert params.stake_threshold == pytest.approx(1000.0)  # StakeThreshold storage, rao -> TAO


async def test_hyperparameters_follow_commit_reveal(fake, chain):
    fake.subnets[NETUID].commit_reveal = True
    assert (await chain.hyperparameters(NETUID)).commit_reveal_enabled is True


@pytest.mark.parametrize("read", ["metagraph", "hyperparameters"])
async def test_unknown_netuid_raises_subnet_not_found(chain, read):
    with pytest.raises(SubnetNotFound, match="netuid 99"):
        await getattr(chain, read)(99)


async def test_uid_helpers_of_the_port(chain, wallets):
    assert await chain.uid_of(NETUID, wallets["miner"].hotkey.ss58_address) == 1
    assert await chain.uid_of(NETUID, wallets["newcomer"].hotkey.ss58_address) is None
    assert await chain.blocks_since_last_update(NETUID, 0) == 200


# serve_axon --------------------------------------------------------------------------------


async def test_serve_axon_submits_the_call_signed_by_the_hotkey(fake, chain, wallets):
    miner = wallets["miner"]
    await chain.serve_axon(miner, NETUID, "198.51.100.20", 8092)

    (served,) = included(fake, "serve_axon")
    assert served.module == "SubtensorModule" and served.error is None
    assert served.params["netuid"] == NETUID
    assert served.params["ip"] == int(ipaddress.IPv4Address("198.51.100.20"))
    assert served.params["port"] == 8092
    assert served.params["ip_type"] == 4
    assert_signed_by(served, miner.hotkey.ss58_address)
    assert (await chain.metagraph(NETUID)).neurons[1].axon == AxonInfo("198.51.100.20", 8092, 4, 1)


async def test_serve_axon_unregistered_hotkey_raises_not_registered(fake, chain, wallets):
    with pytest.raises(NotRegistered, match="btcli subnets register"):
        await chain.serve_axon(wallets["newcomer"], NETUID, "198.51.100.20", 8092)
    assert fake.signed == []


async def test_serve_axon_chain_refusal_maps_to_not_registered(fake, chain, wallets):
    """Deregistered between our check and dispatch: the chain's error is mapped."""
    miner_hotkey = wallets["miner"].hotkey.ss58_address
    fake.before_dispatch.append(lambda _: setattr(fake.subnets[NETUID].neurons[1], "hotkey", address("Eve")))
    with pytest.raises(NotRegistered, match="HotKeyNotRegisteredInNetwork"):
        await chain.serve_axon(wallets["miner"], NETUID, "198.51.100.20", 8092)
    assert [e.error for e in fake.extrinsics] == ["HotKeyNotRegisteredInNetwork"]
    assert fake.extrinsics[0].signer == miner_hotkey


async def test_serve_axon_refuses_an_unroutable_ip_before_submitting(fake, chain, wallets):
    with pytest.raises(ChainError, match="external_ip"):
        await chain.serve_axon(wallets["miner"], NETUID, "0.0.0.0", 8092)
    assert fake.signed == []


# set_weights ---------------------------------------------------------------------------------


async def test_set_weights_plain_path_submits_u16_weights(fake, chain, wallets):
    validator = wallets["validator"]
    submission = await chain.set_weights(validator, NETUID, [1, 2, 3], [0.5, 0.25, 0.25], version_key=VERSION_KEY)

    (call,) = included(fake, "set_mechanism_weights")
    assert call.error is None
    assert call.params["netuid"] == NETUID and call.params["mecid"] == 0
    assert call.params["dests"] == [1, 2, 3]
    assert call.params["weights"] == [U16, 32768, 32768]  # max-upscaled u16 by the intent
    assert call.params["version_key"] == VERSION_KEY
    assert_signed_by(call, validator.hotkey.ss58_address)
    assert included(fake, "commit_timelocked_mechanism_weights") == []

    assert submission.commit_reveal is False
    assert submission.block == HEAD + 1 == call.block
    assert submission.uids == (1, 2, 3) and submission.weights == (0.5, 0.25, 0.25)
    assert fake.subnets[NETUID].neurons[0].last_update == HEAD + 1


async def test_set_weights_commit_reveal_path_commits_timelocked(fake, chain, wallets):
    fake.subnets[NETUID].commit_reveal = True
    validator = wallets["validator"]
    before = timelock.current_round()
    submission = await chain.set_weights(validator, NETUID, [1, 2], [0.6, 0.4], version_key=VERSION_KEY)

    assert included(fake, "set_mechanism_weights") == []
    (commit,) = included(fake, "commit_timelocked_mechanism_weights")
    assert commit.error is None
    assert commit.params["netuid"] == NETUID and commit.params["mecid"] == 0
    assert commit.params["commit_reveal_version"] == 4
    assert isinstance(commit.params["commit"], bytes) and len(commit.params["commit"]) > 100
    # Revealed by drand some epochs from now: reveal period 2 x tempo 360 x 12 s = 2.4 h.
    reveal_round = commit.params["reveal_round"]
    assert before < reveal_round <= before + (3 * 361 * 12) // timelock.QUICKNET_PERIOD + 10
    assert_signed_by(commit, validator.hotkey.ss58_address)

    assert submission.commit_reveal is True
    assert str(reveal_round) in submission.message
    assert submission.block == commit.block
    assert fake.subnets[NETUID].commits[0][0]["reveal_round"] == reveal_round


async def test_weights_rate_limit_is_enforced_before_anything_is_submitted(fake, chain, wallets):
    fake.subnets[NETUID].neurons[0].last_update = HEAD - 40

    with pytest.raises(RateLimited) as refusal:
        await chain.set_weights(wallets["validator"], NETUID, [1, 2], [0.5, 0.5])

    assert refusal.value.retry_in_blocks == 60
    assert "40 blocks ago" in str(refusal.value)
    assert "LastUpdate" not in fake.storage_reads  # refused before the SDK intent even ran
    assert fake.signed == [] and fake.composed == [] and fake.extrinsics == []


async def test_chain_refusing_weights_too_fast_maps_to_rate_limited(fake, chain, wallets):
    """Another replica's weights land between our check and our extrinsic."""
    validator = fake.subnets[NETUID].neurons[0]
    fake.before_dispatch.append(lambda extrinsic: setattr(validator, "last_update", extrinsic.block - 1))

    with pytest.raises(RateLimited, match="SettingWeightsTooFast") as refusal:
        await chain.set_weights(wallets["validator"], NETUID, [1, 2], [0.5, 0.5], version_key=VERSION_KEY)

    assert [e.error for e in fake.extrinsics] == ["SettingWeightsTooFast"]
    assert refusal.value.retry_in_blocks == 99  # re-read: last update 1 block ago, limit 100


async def test_pool_rejecting_weights_rate_limit_maps_to_rate_limited(fake, chain, wallets):
    fake.pool_rejections.append("Invalid Transaction: Custom error: 6")

    with pytest.raises(RateLimited, match="RateLimitExceeded") as refusal:
        await chain.set_weights(wallets["validator"], NETUID, [1, 2], [0.5, 0.5], version_key=VERSION_KEY)

    assert len(fake.rejected) == 1 and fake.extrinsics == []
    assert refusal.value.retry_in_blocks == 1


@pytest.mark.parametrize(
    "uids, weights",
    [
        pytest.param([1, 2], [1.0], id="length-mismatch"),
        pytest.param([], [], id="empty"),
        pytest.param([1, 2], [0.5, -0.1], id="negative"),
        pytest.param([1, 2], [0.5, math.nan], id="NaN"),
        pytest.param([1, 2], [0.5, math.inf], id="infinite"),
        pytest.param([1, 2], [0.0, 0.0], id="all-zero"),
        pytest.param([1, 1], [0.5, 0.5], id="duplicate-uid"),
        pytest.param([1, 42], [0.5, 0.5], id="uid-not-on-the-subnet"),
        pytest.param([1, -1], [0.5, 0.5], id="not-a-u16-uid"),
    ],
)
async def test_invalid_weights_are_refused_before_anything_is_submitted(fake, chain, wallets, uids, weights):
    with pytest.raises(InvalidWeights):
        await chain.set_weights(wallets["validator"], NETUID, uids, weights, version_key=VERSION_KEY)
    assert "LastUpdate" not in fake.storage_reads  # refused before the SDK intent even ran
    assert fake.signed == [] and fake.composed == []


async def test_too_few_weights_for_the_subnet_are_invalid(fake, chain, wallets):
    """min_allowed_weights is 2: the intent refuses a single non-self weight before signing."""
    with pytest.raises(InvalidWeights, match="at least 2"):
        await chain.set_weights(wallets["validator"], NETUID, [1], [1.0])
    assert fake.signed == []


async def test_outdated_version_key_refused_by_the_chain_is_invalid_weights(fake, chain, wallets):
    with pytest.raises(InvalidWeights, match="IncorrectWeightVersionKey"):
        await chain.set_weights(wallets["validator"], NETUID, [1, 2], [0.5, 0.5], version_key=VERSION_KEY - 1)
    assert [e.error for e in fake.extrinsics] == ["IncorrectWeightVersionKey"]


async def test_set_weights_from_an_unregistered_hotkey_raises_not_registered(fake, chain, wallets):
    with pytest.raises(NotRegistered):
        await chain.set_weights(wallets["newcomer"], NETUID, [1, 2], [0.5, 0.5])
    assert fake.signed == []


async def test_set_weights_on_an_unknown_netuid_raises_subnet_not_found(fake, chain, wallets):
    with pytest.raises(SubnetNotFound):
        await chain.set_weights(wallets["validator"], 99, [1, 2], [0.5, 0.5])
    assert fake.signed == []


# register ---------------------------------------------------------------------------------------


async def test_register_burns_through_the_mev_shield_and_returns_the_uid(fake, chain, wallets):
    newcomer = wallets["newcomer"]
    coldkey = newcomer.coldkeypub.ss58_address

    assert await chain.register(newcomer, NETUID) == 4

    carrier, inner = fake.extrinsics
    assert (carrier.module, carrier.function) == ("MevShield", "submit_encrypted")
    assert inner.function == "burned_register" and inner.error is None
    assert inner.params == {"netuid": NETUID, "hotkey": newcomer.hotkey.ss58_address}
    assert_signed_by(carrier, coldkey)
    assert_signed_by(inner, coldkey)
    assert inner.nonce == carrier.nonce + 1 and inner.block == carrier.block
    assert (await chain.metagraph(NETUID)).by_hotkey(newcomer.hotkey.ss58_address).coldkey == coldkey


async def test_register_is_a_no_op_when_already_registered(fake, chain, wallets):
    assert await chain.register(wallets["miner"], NETUID) == 1
    assert fake.signed == []


async def test_register_on_an_unknown_netuid_raises_subnet_not_found(fake, chain, wallets):
    with pytest.raises(SubnetNotFound):
        await chain.register(wallets["newcomer"], 99)
    assert fake.signed == []
