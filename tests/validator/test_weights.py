"""WeightSetter against a real DevnetChain on a tmp ledger whose clock the test moves by hand:
once per tempo, the weights rate limit, the coldkey dedupe of the vector, nothing set without
scores, refusals recorded and retried with backoff in blocks, restore() from the store, and
the version_key that goes with every submission."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from node.wallets import create_devnet_wallet
from chain import ChainError, RateLimited
from chain.devnet import DevnetChain, DevnetLedger
from tests.support.devnet import ManualClock, address
from store.tables import WeightSubmission
from validator.weights import WeightSetter

NETUID, VERSION = 1, 7


class ScriptedChain(DevnetChain):
    """The devnet chain, refusing the first set_weights calls with the errors in ``failures``."""

    def __init__(self, ledger: DevnetLedger, failures: list[ChainError] | None = None) -> None:
        super().__init__(ledger.path, ledger=ledger)
        self.failures = list(failures or [])
        self.calls: list[dict] = []

    async def set_weights(self, wallet, netuid, uids, weights, *, version_key=0):
        self.calls.append(dict(uids=list(uids), weights=list(weights), version_key=version_key))
        if self.failures:
            raise self.failures.pop(0)
        return await super().set_weights(wallet, netuid, uids, weights, version_key=version_key)


@pytest.fixture(scope="module")
def wallet(tmp_path_factory):
    return create_devnet_wallet("weights-validator", "default", tmp_path_factory.mktemp("wallets"))


@pytest.fixture
def subnet(tmp_path, wallet, store):
    """A factory: the subnet (miners m1, m2 and m3, m2 and m3 of one coldkey), then the
    validator registered at block ``at_block`` with ``stake``; returns the pieces."""

    def make(*, tempo: int = 10, rate_limit: int = 0, stake: float = 1000.0, at_block: int = 5,
             failures: list[ChainError] | None = None, commit_reveal: bool = False) -> SimpleNamespace:
        clock = ManualClock()
        ledger = DevnetLedger(tmp_path / "devnet.sqlite", block_time=1.0, clock=clock)
        ledger.create_subnet(NETUID, tempo=tempo, weights_rate_limit=rate_limit, stake_threshold=10,
                             commit_reveal=commit_reveal)
        miners = {name: address(name) for name in ("m1", "m2", "m3")}
        for name, cold in (("m1", "ColdA"), ("m2", "ColdB"), ("m3", "ColdB")):
            ledger.register(NETUID, miners[name], address(cold))
        clock.advance_blocks(at_block)
        me = wallet.hotkey.ss58_address
        uid = ledger.register(NETUID, me, wallet.coldkeypub.ss58_address)
        if stake:
            ledger.add_stake(NETUID, me, stake)
        chain = ScriptedChain(ledger, failures)
        setter = WeightSetter(chain, wallet, NETUID, store, version_key=VERSION, retry_blocks=2)
        return SimpleNamespace(clock=clock, ledger=ledger, chain=chain, setter=setter, uid=uid, hk=miners)

    return make


async def attempt(net: SimpleNamespace, scores: dict[str, float], *, at: int | None = None, setter=None):
    """Move the clock to block ``at`` (if given) and let the setter decide."""
    if at is not None:
        net.clock.advance_blocks(at - net.ledger.block())
    block = await net.chain.block()
    return await (setter or net.setter).maybe_set(block, scores, await net.chain.metagraph(NETUID))


async def submissions(store) -> list:
    async with store.sessions() as session:
        return list((await session.scalars(select(WeightSubmission).order_by(WeightSubmission.id))).all())


async def test_sets_once_per_tempo_with_the_version_key(subnet, store):
    net = subnet(tempo=10)
    scores = {net.hk["m1"]: 0.25, net.hk["m2"]: 0.75}
    first = await attempt(net, scores)
    assert first.ok and first.block == 5 and (first.uids, first.weights) == ([0, 1], [0.25, 0.75])
    assert net.ledger.weights(NETUID)[net.uid] == pytest.approx({0: 0.25, 1: 0.75})
    assert net.chain.calls[0]["version_key"] == VERSION
    row = await store.last_weights()
    assert (row.block, row.ok, row.version_key, row.commit_reveal) == (5, True, VERSION, False)
    assert json.loads(row.uids) == [0, 1] and json.loads(row.weights) == [0.25, 0.75]

    for block in (6, 10, 14):  # inside the tempo: nothing goes to the chain
        assert await attempt(net, scores, at=block) is None
    assert len(net.chain.calls) == 1 and len(await submissions(store)) == 1
    again = await attempt(net, {net.hk["m1"]: 1.0}, at=15)
    assert again.ok and again.block == 15 and net.ledger.weights(NETUID)[net.uid] == {0: 1.0}
    assert net.ledger.metagraph(NETUID).by_uid(net.uid).last_update == 15


async def test_commit_reveal_subnets_get_a_commitment(subnet, store):
    net = subnet(commit_reveal=True)
    outcome = await attempt(net, {net.hk["m1"]: 1.0})
    assert outcome.ok and outcome.commit_reveal and outcome.message.startswith("committed")
    assert (await store.last_weights()).commit_reveal


async def test_waits_out_the_weights_rate_limit(subnet):
    net = subnet(tempo=1, rate_limit=4, at_block=5)  # registering counts as an update at block 5
    scores = {net.hk["m1"]: 1.0}
    assert await attempt(net, scores, at=6) is None
    assert net.setter.next_attempt_block == 9 and net.chain.calls == []
    assert await attempt(net, scores, at=8) is None and net.chain.calls == []
    outcome = await attempt(net, scores, at=9)
    assert outcome.ok and outcome.block == 9


async def test_one_hotkey_per_coldkey_in_the_vector(subnet):
    net = subnet()
    scores = {net.hk["m1"]: 0.2, net.hk["m2"]: 0.3, net.hk["m3"]: 0.6, address("unregistered"): 5.0}
    graph = await net.chain.metagraph(NETUID)
    uids, weights = net.setter.vector(scores, graph)
    assert uids == [0, 2] and weights == pytest.approx([0.25, 0.75])  # m2 loses to m3 (same coldkey)
    outcome = await attempt(net, scores)
    assert outcome.uids == [0, 2] and net.ledger.weights(NETUID)[net.uid] == pytest.approx({0: 0.25, 2: 0.75})


@pytest.mark.parametrize("scores", [{}, {"m1": 0.0}, {"nobody": 1.0}], ids=["empty", "zero", "unregistered"])
async def test_nothing_is_set_without_scores_and_it_says_so(subnet, store, logs, scores):
    net = subnet(tempo=10)
    scores = {net.hk.get(hotkey, address(hotkey)): value for hotkey, value in scores.items()}
    assert await attempt(net, scores) is None
    assert net.chain.calls == [] and await store.last_weights(ok_only=False) is None
    assert net.setter.next_attempt_block == 5 + 10 // 2
    assert any("no miner has a score yet" in line for line in logs)


async def test_a_chain_error_is_recorded_and_retried_with_backoff(subnet, store):
    net = subnet(tempo=10, failures=[ChainError("node unreachable")] * 4)
    scores = {net.hk["m1"]: 1.0}
    failed = await attempt(net, scores, at=5)
    assert not failed.ok and failed.message == "ChainError: node unreachable" and failed.uids == [0]
    assert net.setter.next_attempt_block == 7  # retry_blocks x 2^0
    assert await attempt(net, scores, at=6) is None and len(net.chain.calls) == 1
    # 2, 4, 8, then capped at the tempo (10)
    for block, next_block in ((7, 11), (11, 19), (19, 29)):
        assert not (await attempt(net, scores, at=block)).ok
        assert net.setter.next_attempt_block == next_block
    assert await attempt(net, scores, at=28) is None
    done = await attempt(net, scores, at=29)
    assert done.ok and done.block == 29 and len(net.chain.calls) == 5
    rows = await submissions(store)
    assert [(row.block, row.ok) for row in rows] == [(5, False), (7, False), (11, False), (19, False), (29, True)]
    assert all(row.version_key == VERSION for row in rows)
    assert (await store.last_weights()).block == 29 and (await store.last_weights(ok_only=False)).block == 29
    assert net.setter.next_attempt_block == 29  # the failure count starts over


async def test_a_rate_limit_refusal_waits_the_blocks_it_names(subnet, store):
    net = subnet(failures=[RateLimited("weights set 1 blocks ago", retry_in_blocks=4)])
    scores = {net.hk["m1"]: 1.0}
    refused = await attempt(net, scores, at=5)
    assert not refused.ok and refused.message.startswith("RateLimited")
    assert net.setter.next_attempt_block == 9
    assert await attempt(net, scores, at=8) is None and len(net.chain.calls) == 1
    assert (await attempt(net, scores, at=9)).ok


async def test_without_a_permit_the_chain_refuses_and_the_setter_waits_a_tempo(subnet, store):
    net = subnet(tempo=10, stake=0)
    refused = await attempt(net, {net.hk["m1"]: 1.0}, at=5)
    assert not refused.ok and refused.message.startswith("NoValidatorPermit")
    assert net.setter.next_attempt_block == 15 and not (await store.last_weights(ok_only=False)).ok


async def test_restore_resumes_the_tempo_from_the_store(subnet, store, wallet):
    net = subnet(tempo=10)
    scores = {net.hk["m1"]: 1.0}
    assert (await attempt(net, scores, at=5)).ok
    fresh = WeightSetter(net.chain, wallet, NETUID, store, version_key=VERSION)
    await fresh.restore()
    assert fresh.last_set_block == 5
    assert await attempt(net, scores, at=12, setter=fresh) is None and len(net.chain.calls) == 1
    resumed = await attempt(net, scores, at=15, setter=fresh)
    assert resumed.ok and resumed.block == 15


async def test_restore_from_an_empty_store_sets_at_once(subnet, store, wallet):
    net = subnet()
    fresh = WeightSetter(net.chain, wallet, NETUID, store, version_key=VERSION)
    await fresh.restore()
    assert fresh.last_set_block is None and (await attempt(net, {net.hk["m1"]: 1.0}, setter=fresh)).ok
