"""The devnet ledger behaves like a chain: registration, stake, permits, weights, epochs."""

from __future__ import annotations

import pytest

from chain.base import ChainError, InvalidWeights, NotRegistered, NoValidatorPermit, RateLimited, SubnetNotFound
from chain.devnet import DevnetLedger, epoch_blocks
from tests.support.devnet import ManualClock, address

COLD = address("Owner")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(tmp_path, clock) -> DevnetLedger:
    return DevnetLedger(tmp_path / "devnet.sqlite", block_time=1.0, clock=clock)


def register(ledger, netuid, *names):
    return [ledger.register(netuid, address(name), COLD) for name in names]


def test_block_height_comes_from_the_clock_and_block_time_is_fixed_at_genesis(tmp_path, clock):
    ledger = DevnetLedger(tmp_path / "c.sqlite", block_time=2.0, clock=clock)
    assert ledger.block() == 0
    clock.advance_blocks(5, block_time=2.0)
    assert ledger.block() == 5
    reopened = DevnetLedger(tmp_path / "c.sqlite", block_time=12.0, clock=clock)
    assert reopened.block_time == 2.0 and reopened.block() == 5


def test_registration_assigns_uids_and_is_idempotent(ledger):
    ledger.create_subnet(1)
    assert register(ledger, 1, "a", "b", "c") == [0, 1, 2]
    assert ledger.register(1, address("b"), COLD) == 1
    graph = ledger.metagraph(1)
    assert [n.hotkey for n in graph.neurons] == [address(x) for x in "abc"]
    assert all(n.coldkey == COLD for n in graph.neurons)


def test_a_hotkey_belongs_to_one_coldkey(ledger):
    ledger.create_subnet(1)
    ledger.register(1, address("a"), COLD)
    with pytest.raises(ChainError, match="another coldkey"):
        ledger.register(1, address("a"), address("Thief"))


def test_full_subnet_replaces_the_lowest_emission_uid_outside_immunity(ledger, clock):
    ledger.create_subnet(1, max_allowed_uids=3, immunity_period=5, tempo=3, stake_threshold=10, weights_rate_limit=0)
    register(ledger, 1, "v", "m1", "m2")
    ledger.add_stake(1, address("v"), 1000)
    ledger.set_weights(1, address("v"), [1, 2], [1.0, 0.0001])
    clock.advance_blocks(10)  # past immunity, and epochs run: m2 earns the least
    assert ledger.register(1, address("new"), COLD) == 2
    graph = ledger.metagraph(1)
    assert graph.by_uid(2).hotkey == address("new")
    assert graph.by_hotkey(address("m2")) is None


def test_replacement_inside_immunity_takes_the_lowest_anyway(ledger):
    ledger.create_subnet(1, max_allowed_uids=2, immunity_period=100)
    register(ledger, 1, "a", "b")
    uid = ledger.register(1, address("c"), COLD)
    assert uid == 0  # all immune, equal emission: the oldest, lowest uid goes


def test_permits_follow_stake_and_threshold(ledger):
    ledger.create_subnet(1, max_validators=1, stake_threshold=100)
    register(ledger, 1, "a", "b", "c")
    ledger.add_stake(1, address("b"), 50)
    assert [n.validator_permit for n in ledger.metagraph(1).neurons] == [False, False, False]
    ledger.add_stake(1, address("b"), 60)
    ledger.add_stake(1, address("c"), 500)
    graph = ledger.metagraph(1)
    assert [n.validator_permit for n in graph.neurons] == [False, False, True]
    assert graph.by_uid(1).stake == pytest.approx(110)
    ledger.remove_stake(1, address("c"), 450)
    assert [n.validator_permit for n in ledger.metagraph(1).neurons] == [False, True, False]
    with pytest.raises(ChainError, match="holds only"):
        ledger.remove_stake(1, address("c"), 51)


def test_stake_and_axon_need_registration_and_valid_input(ledger):
    ledger.create_subnet(1)
    with pytest.raises(NotRegistered, match="canopy devnet register"):
        ledger.add_stake(1, address("nobody"), 10)
    register(ledger, 1, "a")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ChainError):
            ledger.add_stake(1, address("a"), bad)
    for ip, port in (("0.0.0.0", 8091), ("127.0.0.1", 0), ("not-an-ip", 80), ("127.0.0.1", 70000)):
        with pytest.raises(ChainError, match="invalid axon"):
            ledger.serve_axon(1, address("a"), ip, port)
    ledger.serve_axon(1, address("a"), "127.0.0.1", 8091)
    axon = ledger.metagraph(1).by_uid(0).axon
    assert (axon.ip, axon.port, axon.is_serving) == ("127.0.0.1", 8091, True)


def test_unknown_subnet_and_bad_addresses_are_refused(ledger):
    with pytest.raises(SubnetNotFound, match="canopy devnet init"):
        ledger.metagraph(7)
    ledger.create_subnet(1)
    with pytest.raises(ChainError, match="already exists"):
        ledger.create_subnet(1)
    with pytest.raises(ChainError, match="ss58"):
        ledger.register(1, "5NotAnAddress", COLD)
    with pytest.raises(ChainError, match="invalid subnet settings: tempo"):
        ledger.create_subnet(2, tempo=0)


@pytest.fixture
def subnet(ledger, clock):
    ledger.create_subnet(1, tempo=9, weights_rate_limit=3, stake_threshold=100)
    register(ledger, 1, "v", "m1", "m2")
    ledger.add_stake(1, address("v"), 1000)
    clock.advance_blocks(3)
    return ledger


def test_weights_rate_limit_refuses_and_says_when(subnet, clock):
    first = subnet.set_weights(1, address("v"), [1, 2], [3, 1])
    assert first.weights == pytest.approx((0.75, 0.25)) and not first.commit_reveal
    with pytest.raises(RateLimited) as refused:
        subnet.set_weights(1, address("v"), [1, 2], [1, 1])
    assert refused.value.retry_in_blocks == 3
    clock.advance_blocks(3)
    subnet.set_weights(1, address("v"), [1, 2], [1, 1])
    assert subnet.weights(1) == {0: {1: 0.5, 2: 0.5}}


def test_rate_limit_counts_from_registration(ledger):
    ledger.create_subnet(1, weights_rate_limit=2, stake_threshold=0)
    register(ledger, 1, "v")
    ledger.add_stake(1, address("v"), 1)
    with pytest.raises(RateLimited):
        ledger.set_weights(1, address("v"), [0], [1])


@pytest.mark.parametrize(
    "uids, weights, message",
    [
        ([1, 2], [1.0], "2 uids but 1 weights"),
        ([], [], "empty"),
        ([1, 1], [1, 1], "duplicate"),
        ([1, 9], [1, 1], "unknown uids"),
        ([1, 2], [1, -1], "non-negative"),
        ([1, 2], [1, float("nan")], "finite"),
        ([1, 2], [0, 0], "sum to zero"),
        ([1, 2], ["a", 1], "numbers"),
    ],
)
def test_invalid_weights_are_refused_and_nothing_changes(subnet, uids, weights, message):
    with pytest.raises(InvalidWeights, match=message):
        subnet.set_weights(1, address("v"), uids, weights)
    assert subnet.weights(1) == {}
    subnet.set_weights(1, address("v"), [1], [1])  # not rate limited: the refusal left no trace


def test_weights_need_a_permit_except_self_weight(subnet):
    with pytest.raises(NoValidatorPermit):
        subnet.set_weights(1, address("m1"), [2], [1])
    assert subnet.set_weights(1, address("m1"), [1], [1]).uids == (1,)


def test_epochs_run_on_schedule_and_pay_incentive_and_dividends(subnet, clock):
    subnet.set_weights(1, address("v"), [1, 2], [3, 1])
    assert subnet.metagraph(1).by_uid(1).incentive == 0  # no epoch yet
    clock.advance_blocks(10)  # one tempo (+1) later an epoch has run
    graph = subnet.metagraph(1)
    assert graph.by_uid(1).incentive == pytest.approx(0.75)
    assert graph.by_uid(2).incentive == pytest.approx(0.25)
    assert graph.by_uid(0).dividends == pytest.approx(1.0)
    epoch_emission = 1.0 * 10  # emission_per_block * (tempo + 1)
    assert graph.by_uid(1).emission == pytest.approx(0.41 * epoch_emission * 0.75)
    assert graph.by_uid(1).stake == pytest.approx(graph.by_uid(1).emission)  # paid into stake
    assert graph.by_uid(0).stake == pytest.approx(1000 + 0.41 * epoch_emission)


def test_epoch_schedule_matches_subtensor():
    # subtensor runs subnet n's epoch at blocks b with (b + n + 1) % (tempo + 1) == 0
    assert epoch_blocks(1, 9, after=0, upto=30) == [8, 18, 28]
    assert epoch_blocks(0, 4, after=4, upto=14) == [9, 14]
    assert epoch_blocks(3, 9, after=6, upto=6) == []


def test_commit_reveal_delays_weights_until_reveal(ledger, clock):
    ledger.create_subnet(1, tempo=4, weights_rate_limit=0, commit_reveal=True, commit_reveal_period=1, stake_threshold=0)
    register(ledger, 1, "v", "m")
    ledger.add_stake(1, address("v"), 10)
    submitted = ledger.set_weights(1, address("v"), [1], [1])
    assert submitted.commit_reveal and "revealed at block 5" in submitted.message
    assert ledger.weights(1) == {}
    clock.advance_blocks(8)  # the epoch at block 8 reveals it
    assert ledger.weights(1) == {0: {1: 1.0}}
