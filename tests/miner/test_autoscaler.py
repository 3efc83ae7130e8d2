"""miner.autoscaler.decide: which instances start and drain, as a pure function of what runs and is announced."""

from __future__ import annotations

import pytest

from canopy.chute import chute_id
from miner.autoscaler import Decision, Running, decide
from protocol.registry import AnnouncedChute, ChuteDemand
from tests.support.chutes import cpu_devices, fake_h100s

OLD, NEW = "0" * 64, "1" * 64
A, B, C = chute_id("alice", "a"), chute_id("bob", "b"), chute_id("carol", "c")
GPU = {"gpu_count": 1, "min_vram_gb_per_gpu": 16}


def announced(*chutes: AnnouncedChute) -> dict[str, AnnouncedChute]:
    return {c.chute_id: c for c in chutes}


def chute(cid: str, *, revision: str = NEW, calls: int = 0, refused: int = 0, instances: int = 0, warmup: bool = False,
          idle_s: float | None = None, max_instances: int = 4, shutdown_after_seconds: int = 300,
          selector: dict | None = None, rank: int | None = None) -> AnnouncedChute:
    return AnnouncedChute(chute_id=cid, owner="o", name=f"chute-{cid[:4]}", revision=revision,
                          node_selector=GPU if selector is None else selector, max_instances=max_instances,
                          shutdown_after_seconds=shutdown_after_seconds, rank=rank,
                          demand=ChuteDemand(calls=calls, refused=refused, instances=instances, warmup=warmup,
                                             idle_s=idle_s))


def running(instance_id: str, cid: str, devices, *, revision: str = NEW, ready: bool = True, **fields) -> Running:
    return Running(instance_id=instance_id, chute_id=cid, revision=revision, devices=tuple(d.uuid for d in devices),
                   ready=ready, **fields)


def run(chutes, instances=(), devices=None, *, bundles=(OLD, NEW), **options) -> list[Decision]:
    return decide(chutes, list(instances), fake_h100s(2) if devices is None else devices,
                  has_bundle=lambda revision: revision in bundles, **options)


def summary(decisions: list[Decision]) -> list[tuple[str, str, str]]:
    return [(d.action, d.instance_id or d.chute_id, d.reason) for d in decisions]


def test_demand_starts_the_most_valuable_chute_first_on_a_free_gpu():
    gpus = fake_h100s(1)
    decisions = run(announced(chute(A, calls=2), chute(B, refused=3), chute(C)), devices=gpus)
    [start] = decisions
    assert (start.action, start.chute_id, start.reason, start.revision) == ("start", B, "demand", NEW)
    assert start.devices == (gpus[0],) and "value 12.00" in start.detail, "refused calls weigh 4: 3 x 4 / (0 + 1)"
    both = run(announced(chute(A, calls=2), chute(B, refused=3), chute(C)))
    assert summary(both) == [("start", B, "demand"), ("start", A, "demand")], "C has no demand: nothing for it"
    assert {d.devices[0].uuid for d in both} == {g.uuid for g in fake_h100s(2)}, "one GPU each"
    [warm] = run(announced(chute(C, warmup=True)))
    assert (warm.action, warm.reason) == ("start", "warmup")


def test_one_start_per_chute_per_decision_and_none_while_ours_is_starting():
    gpus = fake_h100s(4)
    assert summary(run(announced(chute(A, refused=50)), devices=gpus)) == [("start", A, "demand")]
    starting = running("a-1", A, gpus[:1], ready=False)
    assert run(announced(chute(A, refused=50)), [starting], devices=gpus) == []
    ready = running("a-1", A, gpus[:1])
    [again] = run(announced(chute(A, refused=50, instances=1)), [ready], devices=gpus)
    assert again.action == "start" and again.devices == (gpus[1],), "the next GPU; the first one is taken"


def test_max_instances_counts_the_network_and_our_own():
    assert run(announced(chute(A, calls=9, instances=2, max_instances=2))) == []
    ours = running("a-1", A, fake_h100s(1))
    assert run(announced(chute(A, calls=9, instances=0, max_instances=1)), [ours]) == [], \
        "our ready instance counts even before the validators report it"
    assert run(announced(chute(A, calls=9, instances=1, max_instances=2)), [ours]) == [], \
        "a second instance here only when calls find no capacity"
    assert summary(run(announced(chute(A, refused=2, instances=1, max_instances=2)), [ours])) == [("start", A, "demand")]


def test_a_selector_must_fit_the_free_devices_and_a_cpu_device_holds_its_slots():
    assert run(announced(chute(A, calls=5, selector={"gpu_count": 1, "min_vram_gb_per_gpu": 100}))) == []
    assert run(announced(chute(A, calls=5, selector={"gpu_count": 3, "min_vram_gb_per_gpu": 16}))) == []
    [cpu] = cpu_devices(1)
    on_cpu = {"gpu_count": 1, "min_vram_gb_per_gpu": 0, "include": ["cpu"]}
    held = [running(f"b-{i}", B, [cpu], pinned=True) for i in range(2)]
    assert summary(run(announced(chute(A, calls=5, selector=on_cpu)), held, [cpu], cpu_slots=3)) == [("start", A, "demand")]
    assert run(announced(chute(A, calls=5, selector=on_cpu)), held, [cpu], cpu_slots=2) == [], "its 2 slots are taken"
    assert run(announced(chute(A, calls=5, selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0, "include": 7}))) == [], \
        "an invalid selector is skipped, not a crash"


def test_an_idle_instance_drains_after_shutdown_after_seconds_and_is_not_restarted_at_once():
    gpus = fake_h100s(2)
    idle = running("a-1", A, gpus[:1], idle_s=1, ready_s=900)  # the validators' probes reach it, users do not
    busy = running("a-2", A, gpus[1:], idle_s=0, ready_s=900, in_flight=1)
    decisions = run(announced(chute(A, calls=3, instances=2, idle_s=301)), [idle, busy])
    assert summary(decisions) == [("drain", "a-1", "idle")], "busy is never idle; nothing starts in its place"
    quiet = announced(chute(A, calls=3, instances=2, max_instances=2))  # no user demand in the validators' window
    assert summary(run(quiet, [running("a-1", A, gpus[:1], ready_s=301)])) == [("drain", "a-1", "idle")]
    assert run(quiet, [running("a-1", A, gpus[:1], ready_s=299)]) == [], "ready for less than shutdown_after_seconds"
    assert run(announced(chute(A, calls=3, instances=2, max_instances=2, idle_s=299)),
               [running("a-1", A, gpus[:1], ready_s=900)]) == [], "a user called 299 s ago"
    assert run(announced(chute(A, calls=3, idle_s=40)), stopped={NEW: ("idle", 30.0)}) == [], \
        "stopped for idleness: the demand before the stop does not start it again"
    assert run(announced(chute(A, calls=3)), stopped={NEW: ("idle", 30.0)}) == [], "no idle_s: no newer demand"
    assert summary(run(announced(chute(A, calls=3, idle_s=5)), stopped={NEW: ("idle", 30.0)})) == [
        ("start", A, "demand")], "a call after the stop starts it again"
    assert run(announced(chute(A, refused=3, idle_s=5)), stopped={NEW: ("preempted", 30.0)}) != [], \
        "a preempted chute comes back with newer demand too"
    assert run(announced(chute(A, refused=3, idle_s=5)), stopped={OLD: ("idle", 30.0)}) != [], "per revision"


def test_stale_demand_starts_nothing():
    assert run(announced(chute(A, calls=50, idle_s=400, shutdown_after_seconds=300))) == [], \
        "its latest call is older than an instance would live idle"
    assert run(announced(chute(A, calls=50, idle_s=320, shutdown_after_seconds=300))) != [], "within the grace"


def test_an_instance_that_keeps_failing_to_start_drains():
    failing = running("a-1", A, fake_h100s(1), ready=False, failed_starts=3)
    assert summary(run(announced(chute(A, refused=9)), [failing])) == [("drain", "a-1", "failing")]
    assert run(announced(chute(A, refused=9)), [running("a-1", A, fake_h100s(1), ready=False, failed_starts=2)]) == []
    assert run(announced(chute(A, refused=9, idle_s=1)), stopped={NEW: ("failing", 299.0)}) == [], \
        "a revision that failed to start stays cold, whatever the demand"
    assert run(announced(chute(A, refused=9, idle_s=1)), stopped={NEW: ("failing", 301.0)}) != [], "then it is tried again"


def test_a_miner_ranked_past_max_instances_stands_in_only_when_calls_keep_finding_no_capacity():
    assert summary(run(announced(chute(A, warmup=True, rank=1, max_instances=2)))) == [("start", A, "warmup")]
    assert run(announced(chute(A, warmup=True, rank=2, max_instances=2))) == [], "the first two ranked start it"
    refused = announced(chute(A, refused=4, rank=2, max_instances=2))
    assert run(refused, unmet_s={A: 29.0}) == [], "refusals for a moment: the first-ranked are starting"
    assert summary(run(refused, unmet_s={A: 31.0})) == [("start", A, "demand")], "refusals that last: it stands in"
    assert run(announced(chute(A, refused=4, rank=3, max_instances=2)), unmet_s={A: 31.0}) == [], \
        "one patience period more per place"
    old = running("a-old", A, fake_h100s(1), revision=OLD)
    assert summary(run(announced(chute(A, rank=5, max_instances=1)), [old])) == [("start", A, "rollover")], \
        "a rollover of what runs here ignores the rank"


def test_a_chute_the_miner_pins_gets_no_registry_instance():
    pinned = running("a-pinned", A, fake_h100s(1), revision=OLD, pinned=True)
    assert run(announced(chute(A, refused=50, warmup=True)), [pinned]) == []


def test_a_clearly_more_valuable_chute_preempts_the_cheapest_instance_that_frees_room():
    gpus = fake_h100s(2)
    held = [running("b-1", B, gpus[:1]), running("c-1", C, gpus[1:])]
    chutes = announced(chute(A, refused=10), chute(B, calls=8, instances=1), chute(C, calls=1, instances=1))
    assert summary(run(chutes, held)) == [("drain", "c-1", "preempted")], "C is worth 1 an instance, A 40: C goes"
    waiting = [held[0], running("c-1", C, gpus[1:], draining=True)]
    assert run(chutes, waiting) == [], "A starts once the draining instance is gone: nothing more is preempted"
    close = announced(chute(A, calls=3), chute(B, calls=2, instances=1), chute(C, calls=2, instances=1))
    assert run(close, held) == [], "2 is not clearly lower than 3"
    pinned = [running("b-1", B, gpus[:1], pinned=True), running("c-1", C, gpus[1:], pinned=True)]
    assert run(chutes, pinned) == [], "pinned instances are never preempted"


def test_rollover_starts_the_new_revision_then_drains_the_old_once_it_is_ready():
    gpus = fake_h100s(2)
    old = running("a-old", A, gpus[:1], revision=OLD, in_flight=2)
    [start] = run(announced(chute(A)), [old])
    assert (start.action, start.revision, start.reason) == ("start", NEW, "rollover"), "even with no demand"
    assert start.devices == (gpus[1],)
    starting = running("a-new", A, gpus[1:], ready=False)
    assert run(announced(chute(A)), [old, starting]) == [], "the old one serves until the new one is ready"
    just_ready = running("a-new", A, gpus[1:], ready_s=2.0)
    assert run(announced(chute(A)), [old, just_ready]) == [], "both serve while callers' views catch up"
    ready = running("a-new", A, gpus[1:], ready_s=10.0)
    assert summary(run(announced(chute(A)), [old, ready])) == [("drain", "a-old", "rollover")]
    crowded = run(announced(chute(A, calls=1)), [old], devices=gpus[:1])
    assert summary(crowded) == [("drain", "a-old", "rollover")], "no room for both: the old one makes room"
    assert "no room for both" in crowded[0].detail


def test_a_withdrawn_chute_drains_and_pinned_instances_are_left_alone():
    gpus = fake_h100s(2)
    instances = [running("a-1", A, gpus[:1], in_flight=1), running("b-pinned", B, gpus[1:], pinned=True, idle_s=1e6,
                                                                  revision="")]
    assert summary(run({}, instances)) == [("drain", "a-1", "withdrawn")]
    pinned_stale = running("b-pinned", B, gpus[1:], pinned=True, revision=OLD, idle_s=1e6)
    decisions = run(announced(chute(B, revision=NEW, shutdown_after_seconds=0)), [pinned_stale], devices=gpus[1:])
    assert decisions == [], "a pinned instance is neither rolled over, idled out nor preempted"


def test_a_start_without_a_verified_bundle_is_wanted_and_takes_no_device():
    gpus = fake_h100s(1)
    decisions = run(announced(chute(A, refused=5), chute(B, calls=1)), devices=gpus, bundles=(OLD,))
    assert [(d.action, d.chute_id, d.revision, d.reason) for d in decisions] == [
        ("want", A, NEW, "no_bundle"), ("want", B, NEW, "no_bundle")]
    b_ready = {OLD, "2" * 64}
    mixed = run(announced(chute(A, refused=5), chute(B, calls=1, revision="2" * 64)), devices=gpus, bundles=b_ready)
    assert summary(mixed) == [("want", A, "no_bundle"), ("start", B, "demand")], "the GPU goes to what can start"
    assert run(announced(chute(A, refused=5, selector={"gpu_count": 4, "min_vram_gb_per_gpu": 16})), bundles=()) == [], \
        "a chute that cannot fit here is not wanted"


@pytest.mark.parametrize("ready_s", [0.0, 10.0])
def test_zero_shutdown_after_seconds_stops_at_the_first_idle_moment(ready_s):
    instance = running("a-1", A, fake_h100s(1), ready_s=ready_s)
    expected = [("drain", "a-1", "idle")] if ready_s > 0 else []
    assert summary(run(announced(chute(A, calls=1, instances=1, max_instances=1, shutdown_after_seconds=0)), [instance])) == expected


def test_a_new_revision_that_fails_to_start_is_not_retried_at_once_and_the_old_one_serves_on():
    gpus = fake_h100s(2)
    old = running("a-old", A, gpus[:1], revision=OLD)
    failing = running("a-new", A, gpus[1:], ready=False, failed_starts=3)
    assert summary(run(announced(chute(A, calls=5)), [old, failing])) == [("drain", "a-new", "failing")], \
        "no rollover start of the revision that just failed"
    assert run(announced(chute(A, calls=5)), [old], stopped={NEW: ("failing", 10.0)}) == []
    idle_old = running("a-old", A, gpus[:1], revision=OLD, ready_s=400)
    assert summary(run(announced(chute(A)), [idle_old], stopped={NEW: ("failing", 10.0)})) == [
        ("drain", "a-old", "idle")], "an old revision nobody calls idles out like any other"


def test_a_bundle_is_wanted_while_the_chute_waits_for_a_draining_instance():
    gpus = fake_h100s(1)
    leaving = running("b-1", B, gpus, draining=True)
    assert summary(run(announced(chute(A, refused=5)), [leaving], devices=gpus, bundles=())) == [("want", A, "no_bundle")]
    assert run(announced(chute(A, refused=5)), [leaving], devices=gpus) == [], "with the bundle: it waits for the device"
