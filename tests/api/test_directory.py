"""The miner directory's strategies on a fixed view (no processes): which miners, in which order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from api.directory import MinerDirectory
from api.requestlog import RequestRecord
from api.keys import RateRule
from node.config import ConfigError, load_settings
from chain.base import AxonInfo, Metagraph, Neuron
from neurons.api import gateway_config
from protocol.chutes import HostedChute, HostedCord
from protocol.dendrite import Result, Target
from protocol.graval.synapses import InventoryResponse
from tests.support.network import StaticChain

CHAT = [HostedCord(path="/v1/chat/completions")]


def miner(uid: int, incentive: float) -> Neuron:
    return Neuron(uid=uid, hotkey=f"hk{uid}", coldkey=f"ck{uid}", stake=0.0, validator_permit=False,
                  axon=AxonInfo("127.0.0.1", 9000 + uid), incentive=incentive)


def llm(model: str = "m", ready: int = 1, concurrency: int = 2, chute_id: str = "c") -> HostedChute:
    return HostedChute(chute_id=chute_id, name=chute_id, model=model, cords=CHAT, instances=ready,
                       ready_instances=ready, concurrency=concurrency)


class FakeDendrite:
    def __init__(self, inventories: dict[str, list[HostedChute] | None]) -> None:
        self.inventories = inventories

    async def query(self, targets, synapse, timeout=None):
        results = []
        for neuron in targets:
            chutes = self.inventories.get(neuron.hotkey)
            target = Target(neuron.hotkey, neuron.axon.url)
            results.append(Result(target, "ok", 200, 0.01, None, InventoryResponse(chutes=chutes)) if chutes is not None
                           else Result(target, "timeout", 0, 5.0))
        return results


class FakeStore:
    def __init__(self, scores: dict[str, float], verified: dict[str, bool]) -> None:
        self.scores, self.verified = scores, verified

    async def load_scores(self):
        return self.scores, 1

    async def latest_verifications(self):
        return {f"dev-{hotkey}": SimpleNamespace(miner_hotkey=hotkey, ok=ok) for hotkey, ok in self.verified.items()}


@pytest.fixture
async def directory():
    graph = Metagraph(netuid=7, block=1, neurons=tuple(miner(uid, incentive) for uid, incentive in
                                                        [(1, 0.1), (2, 0.2), (3, 0.5), (4, 0.3), (5, 0.9)]))
    dendrite = FakeDendrite({"hk1": [llm()], "hk2": [llm()], "hk3": [llm(ready=0)], "hk4": [llm(model="other")],
                             "hk5": None})
    store = FakeStore({"hk1": 0.2, "hk2": 0.8, "hk3": 1.0}, {"hk1": True, "hk2": True, "hk3": True, "hk4": False})
    found = MinerDirectory(StaticChain(graph), 7, dendrite, store)
    await found.refresh()
    return found


async def test_default_is_least_connections_then_score_and_respects_capacity(directory):
    assert [r.uid for r in directory.candidates("m")] == [2, 1], "uid 3 has no ready instance; by score"
    [two, one] = directory.candidates("m")
    directory.acquire(two)
    assert [r.uid for r in directory.candidates("m")] == [1, 2], "least connections first"
    directory.acquire(two)
    assert [r.uid for r in directory.candidates("m")] == [1], "uid 2 is at 1 instance x concurrency 2"
    directory.release(two)
    directory.release(two)
    assert directory.in_flight == {} and [r.uid for r in directory.candidates("m")] == [2, 1]
    directory.acquire(one)
    directory.release(one)
    assert directory.in_flight == {}


async def test_top_n_uids_and_models(directory):
    assert [r.uid for r in directory.candidates("m", "top_n:1")] == [2], "highest incentive among ready hosts"
    assert [r.uid for r in directory.candidates("m", "top_n:5")] == [2, 1]
    assert [r.uid for r in directory.candidates("m", "uids:3,1,4")] == [3, 1], "only uids hosting the model"
    assert directory.candidates("nope") == []
    assert directory.models() == ["m"], "'other' is served by an unverified miner only"
    assert directory.models(lambda model: model != "m") == []
    assert directory.known_model("other") and not directory.known_model("nope")


async def test_the_view_survives_an_unreachable_miner_and_refreshes(directory):
    assert {r.uid for r in directory.routes} == {1, 2, 3, 4}, "uid 5 timed out: not listed"
    directory.dendrite.inventories["hk5"] = [llm(model="m", chute_id="c5")]
    directory.store.verified["hk5"] = True
    await directory.refresh()
    assert [r.uid for r in directory.candidates("m")][0] == 2 and 5 in {r.uid for r in directory.candidates("m")}


def test_api_flags_and_prompt_opt_in():
    settings = load_settings(["--api.rate_limit", "5/s, 100/1h", "--api.timeout_s", "9", "--api.race", "2",
                              "--api.log_prompts"])
    config = gateway_config(settings.api)
    assert config.global_rate_limits == (RateRule(5, 1), RateRule(100, 3600))
    assert (config.request_timeout_s, config.race, config.log_prompts) == (9.0, 2, True)
    assert gateway_config(load_settings([]).api).log_prompts is False
    with pytest.raises(ConfigError, match="--api.rate_limit: .*not N/Ws"):
        load_settings(["--api.rate_limit", "lots"])
    with pytest.raises(ConfigError, match="exceeds --api.max_race"):
        load_settings(["--api.race", "5", "--api.max_race", "4"])
    record = RequestRecord(id="req_1", route="/v1/chat/completions", prompt=[{"role": "user", "content": "hi"}],
                           answer="yo", status=200)
    assert record.row(False)["prompt"] is None and record.row(False)["answer"] is None
    assert "hi" in record.row(True)["prompt"] and record.row(True)["answer"] == "yo"


async def test_the_background_refresh_keeps_the_last_view_when_a_refresh_fails(directory):
    directory.interval_s = 0.01
    directory.dendrite.inventories["hk4"] = [llm(model="other"), llm(model="m", chute_id="c4")]
    directory.start()
    try:
        for _ in range(100):
            if any(r.chute.chute_id == "c4" for r in directory.routes):
                break
            await asyncio.sleep(0.01)
        assert 4 in {r.uid for r in directory.candidates("m", "uids:4")}

        async def broken(*args, **kwargs):
            raise ConnectionError("chain down")

        directory.chain.metagraph = broken
        await asyncio.sleep(0.05)
        assert 4 in {r.uid for r in directory.candidates("m", "uids:4")}, "the last view is kept"
    finally:
        await directory.stop()
    assert directory._task is None
