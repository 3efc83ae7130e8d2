"""The miner directory on a fixed view (no miner processes; a real SQLite registry): which miners,
in which order, only registry chutes at their current revision, and the cold-start wait."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from api.directory import MinerDirectory
from api.requestlog import RequestRecord
from api.keys import RateRule
from canopy.chute import chute_id
from node.config import ConfigError, load_settings
from chain.base import AxonInfo, Metagraph, Neuron
from neurons.api import gateway_config
from protocol.chutes import HostedChute, HostedCord
from protocol.dendrite import Result, Target
from protocol.graval.synapses import InventoryResponse
from store.queries import ValidatorStore
from store.registry import ChuteRegistry
from tests.support.network import StaticChain
from tests.support.store import bundle_of, description, sqlite_url

CHAT = [HostedCord(path="/v1/chat/completions")]
OWNER = "tests"
#: The registry's chutes: name -> (model, public); each deployed at the revision of "NAME v1".
DEPLOYED = {"c": ("m", True), "c4": ("m", True), "c5": ("m", True), "other": ("other", True), "mine": ("secret", False),
            "img": ("", True)}


def revision(name: str, version: str = "v1") -> str:
    return bundle_of(f"{name} {version}")[0]


async def deploy(registry: ChuteRegistry, name: str, version: str = "v1") -> None:
    model, public = DEPLOYED[name]
    rev, data = bundle_of(f"{name} {version}")
    await registry.put_revision(OWNER, name, rev, data, description(OWNER, name, model=model), public=public,
                                max_instances=2, shutdown_after_seconds=60)


def miner(uid: int, incentive: float) -> Neuron:
    return Neuron(uid=uid, hotkey=f"hk{uid}", coldkey=f"ck{uid}", stake=0.0, validator_permit=False,
                  axon=AxonInfo("127.0.0.1", 9000 + uid), incentive=incentive)


def llm(model: str = "m", ready: int = 1, concurrency: int = 2, name: str = "c", rev: str | None = None) -> HostedChute:
    """A hosted chute ``tests/NAME`` at revision ``rev`` (default: the one deployed)."""
    return HostedChute(chute_id=chute_id(OWNER, name), name=name, model=model, cords=CHAT, instances=ready,
                       ready_instances=ready, concurrency=concurrency, revision=revision(name) if rev is None else rev)


class FakeDendrite:
    def __init__(self, inventories: dict[str, list[HostedChute] | None]) -> None:
        self.inventories = inventories
        self.queries = 0

    async def query(self, targets, synapse, timeout=None):
        self.queries += 1
        results = []
        for neuron in targets:
            chutes = self.inventories.get(neuron.hotkey)
            target = Target(neuron.hotkey, neuron.axon.url)
            results.append(Result(target, "ok", 200, 0.01, None, InventoryResponse(chutes=chutes)) if chutes is not None
                           else Result(target, "timeout", 0, 5.0))
        return results


class FakeStore:
    """Scores and verifications as the test sets them; the registry on a real SQLite ``engine``."""

    def __init__(self, scores: dict[str, float], verified: dict[str, bool], engine) -> None:
        self.scores, self.verified, self.engine = scores, verified, engine
        self.flagged: set[tuple[str, str]] = set()

    async def flagged_since(self, since: float) -> set[tuple[str, str]]:
        return set(self.flagged)

    async def load_scores(self):
        return self.scores, 1

    async def latest_verifications(self):
        return {f"dev-{hotkey}": SimpleNamespace(miner_hotkey=hotkey, ok=ok) for hotkey, ok in self.verified.items()}


@pytest.fixture
async def directory(tmp_path):
    graph = Metagraph(netuid=7, block=1, neurons=tuple(miner(uid, incentive) for uid, incentive in
                                                        [(1, 0.1), (2, 0.2), (3, 0.5), (4, 0.3), (5, 0.9)]))
    dendrite = FakeDendrite({"hk1": [llm()], "hk2": [llm()], "hk3": [llm(ready=0)],
                             "hk4": [llm(model="other", name="other")], "hk5": None})
    validator_store = await ValidatorStore.open(sqlite_url(tmp_path / "registry.sqlite"))
    registry = ChuteRegistry(validator_store.engine)
    for name in DEPLOYED:
        await deploy(registry, name)
    store = FakeStore({"hk1": 0.2, "hk2": 0.8, "hk3": 1.0}, {"hk1": True, "hk2": True, "hk3": True, "hk4": False},
                      validator_store.engine)
    found = MinerDirectory(StaticChain(graph), 7, dendrite, store)
    await found.refresh()
    yield found
    await found.stop()
    await validator_store.close()


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
    directory.dendrite.inventories["hk5"] = [llm(model="m", name="c5")]
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
    chutes = gateway_config(load_settings(["--api.cold_start_wait_s", "3", "--api.chute_domain", "Chutes.Example.com."]).api)
    assert (chutes.cold_start_wait_s, chutes.chute_domain) == (3.0, "chutes.example.com")
    assert gateway_config(load_settings([]).api).chute_domain is None
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
    directory.dendrite.inventories["hk4"] = [llm(model="other", name="other"), llm(model="m", name="c4")]
    directory.start()
    try:
        for _ in range(100):
            if any(r.chute.chute_id == chute_id(OWNER, "c4") for r in directory.routes):
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


def uids(routes) -> list[int]:
    return [route.uid for route in routes]


async def test_only_registry_chutes_at_their_current_revision_are_routed(directory):
    inventories, registry = directory.dendrite.inventories, directory.registry
    inventories["hk1"] = [llm(rev=revision("c", "v0")), llm(name="ghost", model="m", rev=revision("ghost")),
                          llm(name="c4", rev="")]
    await directory.refresh()
    assert uids(directory.candidates("m")) == [2], "uid 1 runs an old revision, a chute never deployed, no revision"
    assert {r.chute.name for r in directory.routes if r.uid == 1} == set()

    await deploy(registry, "c", "v2")
    directory.registered(await registry.get(OWNER, "c"))
    assert directory.candidates("m") == [], "a deploy made here drops the old revision's routes at once"
    inventories["hk2"] = [llm(rev=revision("c", "v2"))]
    await directory.refresh()
    assert uids(directory.candidates("m")) == [2] and directory.chute(OWNER, "c").revision == revision("c", "v2")

    assert await registry.delete(OWNER, "c")
    directory.unregistered(chute_id(OWNER, "c"))
    assert directory.candidates("m") == [] and directory.chute(OWNER, "c") is None
    await directory.refresh()
    assert directory.chute_by_id(chute_id(OWNER, "c")) is None and directory.candidates("m") == []


async def test_a_redeploy_keeps_the_previous_revision_serving_until_a_host_of_the_new_one_is_ready(directory):
    inventories, registry = directory.dendrite.inventories, directory.registry
    img = chute_id(OWNER, "img")
    inventories["hk1"] = [llm(name="img", model="")]
    inventories["hk2"] = [llm(name="img", model="")]
    await directory.refresh()
    await deploy(registry, "img", "v2")
    directory.registered(await registry.get(OWNER, "img"))
    assert uids(directory.chute_candidates(img)) == [2, 1], "nobody runs v2 yet: the v1 hosts take the calls"
    assert all(r.chute.revision == revision("img") for r in directory.chute_candidates(img))
    inventories["hk1"] = [llm(name="img", model="", ready=0, rev=revision("img", "v2"))]  # v2 starting on uid 1
    await directory.refresh()
    assert uids(directory.chute_candidates(img)) == [2], "still v1, on the host that keeps it"
    inventories["hk1"] = [llm(name="img", model="", rev=revision("img", "v2"))]
    await directory.refresh()
    assert [(r.uid, r.chute.revision) for r in directory.chute_candidates(img)] == [(1, revision("img", "v2"))], \
        "a v2 host is ready: only v2 from now on"
    inventories["hk1"] = [llm(name="img", model="", rev=revision("img", "v2"), concurrency=1)]
    await directory.refresh()
    [route] = directory.chute_candidates(img)
    directory.acquire(route)
    assert directory.chute_candidates(img) == [], "v2 at capacity: wait for it, never back to v1"
    directory.release(route)


async def test_a_host_flagged_on_a_deterministic_probe_gets_none_of_that_chutes_calls(directory):
    inventories = directory.dendrite.inventories
    img = chute_id(OWNER, "img")
    inventories["hk1"] = [llm(name="img", model=""), llm()]
    inventories["hk2"] = [llm(name="img", model="")]
    directory.store.flagged = {("hk1", img), ("hk1", chute_id(OWNER, "c"))}
    await directory.refresh()
    assert uids(directory.chute_candidates(img)) == [2], "uid 1 answered the chute's probe unlike its other hosts"
    assert 1 in uids(directory.candidates("m")), "an LLM's greedy drift is judged by the score, not by a ban"


async def test_every_chute_is_routed_by_id_and_private_ones_never_by_model(directory):
    directory.dendrite.inventories["hk1"] = [llm(name="img", model="", ready=2), llm(name="mine", model="secret")]
    directory.dendrite.inventories["hk2"] = [llm(name="img", model="", ready=1)]
    await directory.refresh()
    img = chute_id(OWNER, "img")
    assert uids(directory.chute_candidates(img)) == [2, 1], "by score: 0.8 before 0.2"
    assert directory.instances(img) == 3 and directory.instances(chute_id(OWNER, "nothing")) == 0
    assert uids(directory.chute_candidates(img, "uids:1")) == [1]
    assert uids(directory.chute_candidates(img, "top_n:1")) == [2], "uid 2 has the higher incentive"
    assert "" not in directory.models() and not directory.known_model("")
    assert "secret" not in directory.models() and not directory.known_model("secret")
    assert directory.candidates("secret") == [], "a private LLM chute is called at its own path, by its owner"
    assert uids(directory.chute_candidates(chute_id(OWNER, "mine"))) == [1]
    assert directory.chute(OWNER, "mine").public is False
    assert directory.chute_by_host("Tests-Mine") == directory.chute(OWNER, "mine")
    assert directory.chute_by_host("tests-nothing") is None


async def test_a_cold_start_wait_refreshes_often_once_for_every_waiter(directory):
    directory.hurry_s = 0.1
    img = chute_id(OWNER, "img")
    before = directory.dendrite.queries
    waiters = [asyncio.create_task(directory.wait_for_capacity(img, 5.0)) for _ in range(20)]
    await asyncio.sleep(0.45)
    assert not any(task.done() for task in waiters)
    directory.dendrite.inventories["hk1"] = [llm(name="img", model="")]
    started = asyncio.get_running_loop().time()
    found = await asyncio.gather(*waiters)
    assert asyncio.get_running_loop().time() - started < 1.0, "found within a few hurry_s"
    assert all(uids(routes) == [1] for routes in found)
    refreshes = directory.dendrite.queries - before
    assert 3 <= refreshes <= 10, f"about one refresh per 0.1 s for all 20 waiters, not one each: {refreshes}"

    started = asyncio.get_running_loop().time()
    assert await directory.wait_for_capacity(chute_id(OWNER, "c5"), 0.3) == []
    assert 0.3 <= asyncio.get_running_loop().time() - started < 0.6
