"""miner.announcements: per-validator announcements merged by stake, freshness and summed demand."""

from __future__ import annotations

import pytest

from canopy.chute import chute_id
from miner.announcements import Announcements
from protocol.chutes import HostedCord
from protocol.registry import Announce, AnnouncedChute, ChuteDemand

OLD, NEW = "a" * 64, "b" * 64
LLM, IMG = chute_id("alice", "llm"), chute_id("bob", "img")


def chute(cid: str, revision: str, *, calls: int = 0, refused: int = 0, instances: int = 0, warmup: bool = False,
          max_instances: int = 1, cord: str = "/go") -> AnnouncedChute:
    owner, name = ("alice", "llm") if cid == LLM else ("bob", "img")
    return AnnouncedChute(chute_id=cid, owner=owner, name=name, revision=revision, max_instances=max_instances,
                          cords=[HostedCord(path=cord)],
                          demand=ChuteDemand(calls=calls, refused=refused, instances=instances, warmup=warmup))


def test_the_spec_is_the_highest_stake_validators_and_demand_is_summed():
    announcements = Announcements(ttl_s=60)
    announcements.update("v-small", 10.0, Announce(chutes=[chute(LLM, OLD, calls=5, refused=1, instances=3,
                                                                 max_instances=2, cord="/old")]), now=100)
    announcements.update("v-big", 500.0, Announce(chutes=[chute(LLM, NEW, calls=7, instances=2, warmup=True,
                                                               max_instances=4, cord="/new")]), now=101)
    announcements.update("v-mid", 50.0, Announce(chutes=[chute(IMG, OLD, calls=2)]), now=102)
    merged = announcements.merged(now=110)
    assert set(merged) == {LLM, IMG}
    llm = merged[LLM]
    assert (llm.revision, llm.max_instances, llm.cords[0].path) == (NEW, 4, "/new"), "the big validator's spec wins"
    assert llm.demand == ChuteDemand(calls=12, refused=1, instances=3, warmup=True)
    assert merged[IMG].demand == ChuteDemand(calls=2) and merged[IMG].revision == OLD
    assert announcements.revisions(now=110) == {NEW, OLD}


def test_an_announcement_counts_for_its_ttl_only_and_a_later_one_replaces_it():
    announcements = Announcements(ttl_s=30)
    announcements.update("v-big", 500.0, Announce(chutes=[chute(LLM, NEW, calls=7)]), now=100)
    announcements.update("v-small", 10.0, Announce(chutes=[chute(LLM, OLD, calls=1), chute(IMG, OLD, calls=3)]), now=120)
    assert announcements.merged(now=129)[LLM].revision == NEW
    later = announcements.merged(now=131)  # the big validator went quiet: the small one's view is all there is
    assert later[LLM].revision == OLD and later[LLM].demand.calls == 1 and IMG in later
    announcements.update("v-small", 10.0, Announce(chutes=[chute(IMG, OLD, calls=4)]), now=140)
    assert set(announcements.merged(now=141)) == {IMG}, "a chute its latest announcement leaves out is withdrawn"
    assert announcements.merged(now=141)[IMG].demand.calls == 4, "replaced, not added to the previous one"
    assert announcements.merged(now=200) == {}, "nothing fresh: nothing announced"
    assert [r.hotkey for r in announcements.fresh(now=141)] == ["v-small"]


def test_idle_s_is_the_time_since_the_latest_demand_any_validator_saw_counted_to_now():
    announcements = Announcements(ttl_s=60)
    announcements.update("v-a", 5.0, Announce(chutes=[chute(LLM, NEW).model_copy(update={
        "demand": ChuteDemand(calls=1, idle_s=30.0)})]), now=100)  # its latest call at 70
    announcements.update("v-b", 9.0, Announce(chutes=[chute(LLM, NEW).model_copy(update={
        "demand": ChuteDemand(calls=1, idle_s=20.0)})]), now=95)  # at 75: the latest
    announcements.update("v-c", 1.0, Announce(chutes=[chute(LLM, NEW), chute(IMG, NEW)]), now=100)  # none
    merged = announcements.merged(now=110)
    assert merged[LLM].demand.idle_s == 35.0 and merged[LLM].demand.calls == 2
    assert merged[IMG].demand.idle_s is None, "no validator saw demand for it"


def test_equal_stakes_break_ties_by_hotkey_and_the_ttl_must_be_positive():
    announcements = Announcements(ttl_s=60)
    announcements.update("v-b", 5.0, Announce(chutes=[chute(LLM, NEW)]), now=0)
    announcements.update("v-a", 5.0, Announce(chutes=[chute(LLM, OLD)]), now=0)
    assert announcements.merged(now=1)[LLM].revision == OLD
    with pytest.raises(ValueError, match="ttl must be positive"):
        Announcements(ttl_s=0)
