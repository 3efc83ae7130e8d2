"""Autoscaler: which registry chutes this miner runs, and how many instances of each.

The seam between what validators announce (``miner.announcements``, merged over the fresh
announcements) and the instances the miner runs (``miner.instances``, served by
``miner.chutes_service``). ``decide`` is a pure function of the announced chutes, the
running instances and the devices; ``Autoscaler`` applies its decisions every
``--chutes.autoscale_interval_s``, on ``poke()`` (a bundle arrived, an instance drained) and
on every ``Announce`` (``miner.registry_service``).

The rules, in the order ``decide`` applies them:

1. **Withdrawn**: every non-pinned instance of a chute no fresh announcement names drains.
   With no fresh announcement at all (every validator silent for ``--chutes.announce_ttl_s``:
   restarting, or this miner cut off), ``Autoscaler`` decides nothing and keeps what runs.
2. **Rollover**: the non-pinned instances of a chute at a revision other than the announced
   one drain once an instance of the announced revision has been ready for
   ``ROLLOVER_OVERLAP_S`` (callers' views catch up meanwhile; the drain lets the calls in
   flight finish: no call is dropped).
3. **Idle**: a non-pinned ready instance whose chute had no user demand for more than its
   ``shutdown_after_seconds`` while it was ready drains (``users_idle_s``: the announced
   ``idle_s`` counts organic calls, refusals and warm-ups, never the validators' probes,
   which reach every hosted chute every few minutes); so does one that failed to become ready
   ``FAILED_STARTS`` times in a row.
4. **Start**: the value of a chute is its demand, ``ChuteDemand.points`` (``calls + 4 x
   refused``, + 10 when its owner asked for a warm-up), per instance it would have
   network-wide: ``value = demand / (instances + 1)`` where ``instances`` is the larger of
   the validators' count and our ready instances, plus ours still starting. A chute with
   ``value > 0``, fewer network-wide instances than ``max_instances`` and no instance of
   ours still starting gets one start, highest value first, on the devices its
   ``NodeSelector`` picks among the free ones (a GPU holds one instance, the devnet's CPU
   pseudo-device ``cpu_slots``). A second instance here (one of ours is ready) needs calls
   that found no capacity: the validators' instance counts lag a step behind, and without
   that rule every miner would top the chute up to ``max_instances`` on its own. Not started:

   - a revision stopped here for idleness or preempted, until demand newer than the stop
     arrives (the announced ``idle_s``, seconds since the chute's latest call, refusal or
     warm-up, is younger than the stop); one that failed to start, for ``FAILING_COOLDOWN_S``;
   - a chute whose demand is stale: its latest demand is older than its
     ``shutdown_after_seconds`` (+ ``STALE_GRACE_S``), so an instance would idle out;
   - a chute where this miner's ``rank`` (its place in the validators' rendezvous order)
     is ``max_instances`` or more, unless calls keep finding no capacity: refused calls
     while the network has fewer ready instances than ``max_instances``, for
     ``RANK_PATIENCE_S`` per place past ``max_instances`` (so the first-ranked miners start
     a chute and the others only stand in when they do not);
   - a chute this miner pins (the hosting file's code serves it, whatever the registry's).

   A chute announced at a new revision while we run an older one gets a start of the new
   revision first, whatever its demand, rank or ``max_instances``.
5. **Preempt**: a chute that does not fit drains the lowest-value non-pinned instance
   whose devices would make it fit, when that instance's value (its chute's demand per
   instance it has) is at most ``PREEMPT_RATIO`` of the chute's; it starts once the devices
   are free. A rollover that does not fit beside the old revision drains the old one first.
6. **Wanted**: a start of a revision with no verified bundle is not made: the revision is
   ``wanted`` (the ``Announce`` reply asks the validator for it).

Pinned (hosting file) instances are never drained; they count as the chute's instances when
they run its announced revision. Every decision is logged with its reason and counted in
``canopy_miner_autoscaler_decisions_total{action,reason}``; ``canopy_miner_instances{chute,
revision}`` gauges the instances in routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter as Tally
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from loguru import logger
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from canopy.node_selector import NodeSelector
from miner.announcements import Announcements
from miner.bundles import BundleStore
from miner.chutes_service import ChutesService
from miner.instances import Instance, InstanceManager, InstanceSpec
from miner.placement import matching_devices
from protocol.chutes import HostedChute
from protocol.graval.devices import DeviceSpec
from protocol.registry import AnnouncedChute

PREEMPT_RATIO = 0.5
FAILED_STARTS = 3
FAILING_COOLDOWN_S = 300.0
STALE_GRACE_S = 30.0
RANK_PATIENCE_S = 30.0
#: How long both revisions serve side by side in a rollover: callers (the API refreshes its
#: view every few seconds) still send calls for the old one until they see the new one.
ROLLOVER_OVERLAP_S = 10.0


@dataclass(frozen=True)
class Running:
    """A running instance as ``decide`` sees it."""

    instance_id: str
    chute_id: str
    revision: str
    devices: tuple[str, ...] = ()  # uuids
    in_flight: int = 0
    idle_s: float = 0.0  # since its last call (validators' probes included)
    ready_s: float = 0.0  # since it became ready
    ready: bool = False
    pinned: bool = False
    draining: bool = False
    failed_starts: int = 0  # starts in a row that never became ready


@dataclass(frozen=True)
class Decision:
    """``start`` an instance on ``devices``, ``drain`` instance ``instance_id``, or ``want`` a bundle."""

    action: str
    chute_id: str
    revision: str
    reason: str  # demand, warmup, rollover, withdrawn, idle, failing, preempted, no_bundle
    detail: str
    devices: tuple[DeviceSpec, ...] = ()
    instance_id: str = ""


def _free(devices: Sequence[DeviceSpec], used: Mapping[str, int], cpu_slots: int) -> list[DeviceSpec]:
    return [d for d in devices if used.get(d.uuid, 0) < (cpu_slots if d.kind == "cpu" else 1)]


def users_idle_s(r: Running, chute: AnnouncedChute) -> float:
    """Seconds the chute has had no user demand while ``r`` was ready: the announced ``idle_s``
    (since the latest organic call, refusal or warm-up the validators saw; their own probes
    are not demand, or a probed chute would never idle out), at most the instance's time
    since it became ready. No demand in the validators' window counts as forever."""
    users = chute.demand.idle_s if chute.demand.idle_s is not None else math.inf
    return min(users, r.ready_s)


def _may_start(chute: AnnouncedChute, stopped: tuple[str, float] | None, unmet_s: float) -> bool:
    """Rule 4's exceptions: whether ``chute`` may get a demand start (not a rollover)."""
    demand = chute.demand
    if stopped is not None:
        why, ago = stopped
        if why == "failing":
            if ago < FAILING_COOLDOWN_S:
                return False
        elif demand.idle_s is None or demand.idle_s >= ago:
            return False  # no demand newer than the stop
    if demand.idle_s is not None and demand.idle_s > chute.shutdown_after_seconds + STALE_GRACE_S:
        return False
    if chute.rank is not None and chute.rank >= chute.max_instances:
        return demand.refused > 0 and unmet_s >= RANK_PATIENCE_S * (chute.rank - chute.max_instances + 1)
    return True


def decide(announced: Mapping[str, AnnouncedChute], running: Sequence[Running], devices: Sequence[DeviceSpec], *,
           has_bundle: Callable[[str], bool], cpu_slots: int = 8,
           stopped: Mapping[str, tuple[str, float]] | None = None,
           unmet_s: Mapping[str, float] | None = None, rollover_overlap_s: float = ROLLOVER_OVERLAP_S) -> list[Decision]:
    """The decisions for this moment (see the module docstring). ``stopped``: revision ->
    (why it was stopped here: "idle", "preempted" or "failing"; seconds ago); ``unmet_s``:
    chute_id -> seconds its calls have kept finding no capacity."""
    stopped = dict(stopped or {})
    unmet_s = unmet_s or {}
    decisions: list[Decision] = []
    drained: set[str] = set()
    used: Tally[str] = Tally(uuid for r in running for uuid in r.devices)
    active = [r for r in running if not r.draining]

    def drain(r: Running, reason: str, detail: str) -> None:
        drained.add(r.instance_id)
        decisions.append(Decision("drain", r.chute_id, r.revision, reason, detail, instance_id=r.instance_id))

    def current(chute_id: str) -> list[Running]:
        spec = announced[chute_id]
        return [r for r in active if r.chute_id == chute_id and r.revision == spec.revision and r.instance_id not in drained]

    def network(chute_id: str) -> int:
        mine = current(chute_id)
        ready = sum(r.ready for r in mine)
        return max(announced[chute_id].demand.instances, ready) + len(mine) - ready

    def instance_value(r: Running) -> float:
        spec = announced.get(r.chute_id)
        if spec is None or r.revision != spec.revision:
            return 0.0
        return spec.demand.points() / max(network(r.chute_id), 1)

    for r in active:  # 1. withdrawn
        if not r.pinned and r.chute_id not in announced:
            drain(r, "withdrawn", f"chute {r.chute_id} is no longer announced")
    for r in active:  # 2. rollover, once the new revision is ready
        spec = announced.get(r.chute_id)
        if r.pinned or spec is None or r.revision == spec.revision or r.instance_id in drained:
            continue
        if any(n.ready and n.ready_s >= rollover_overlap_s for n in current(r.chute_id)):
            drain(r, "rollover", f"revision {spec.revision[:12]} of {spec.owner}/{spec.name} is ready")
    for r in active:  # 3. idle, or failing to start
        spec = announced.get(r.chute_id)
        if r.pinned or spec is None or r.instance_id in drained:
            continue
        idle_for = users_idle_s(r, spec)
        if r.ready and not r.in_flight and idle_for > spec.shutdown_after_seconds:
            drain(r, "idle", f"no user demand for {idle_for:.0f}s (shutdown_after_seconds {spec.shutdown_after_seconds})")
            stopped[r.revision] = ("idle", 0.0)
        elif not r.ready and r.failed_starts >= FAILED_STARTS:
            drain(r, "failing", f"failed to become ready {r.failed_starts} times in a row")
            stopped[r.revision] = ("failing", 0.0)

    pinned = {r.chute_id for r in running if r.pinned}
    candidates: list[tuple[bool, float, str, str]] = []  # (rollover, value, chute_id, reason)
    for chute_id, spec in announced.items():  # 4. starts
        mine = current(chute_id)
        if chute_id in pinned or any(not r.ready for r in mine):
            continue  # the hosting file's code serves it; or one start at a time: ours is still starting
        older = [r for r in active if r.chute_id == chute_id and not r.pinned and r.revision != spec.revision
                 and r.instance_id not in drained]
        rollover = bool(older) and not mine
        value = spec.demand.points() / (network(chute_id) + 1)
        stop = stopped.get(spec.revision)
        if stop is not None and stop[0] == "failing" and stop[1] < FAILING_COOLDOWN_S:
            continue  # not even for a rollover: the old revision serves on meanwhile
        if not rollover and not _may_start(spec, stop, unmet_s.get(chute_id, 0.0)):
            continue
        if rollover:
            candidates.append((True, value, chute_id, "rollover"))
        elif value > 0 and network(chute_id) < spec.max_instances and (not mine or spec.demand.refused):
            only_warmup = spec.demand.warmup and not (spec.demand.calls or spec.demand.refused)
            candidates.append((False, value, chute_id, "warmup" if only_warmup else "demand"))
    candidates.sort(key=lambda c: (not c[0], -c[1], c[2]))

    for rollover, value, chute_id, reason in candidates:
        spec = announced[chute_id]
        label = f"{spec.owner}/{spec.name}@{spec.revision[:12]}"
        try:
            selector = NodeSelector.model_validate(spec.node_selector)
        except ValidationError as error:
            logger.warning("autoscaler: {} has an invalid node selector ({} error(s)); not hosting it", label,
                           error.error_count())
            continue
        chosen = matching_devices(selector, _free(devices, used, cpu_slots))
        victim: Running | None = None
        waiting = False
        if not chosen:
            soon = used.copy()  # the devices of the instances draining now will be free shortly
            for r in running:
                if r.draining or r.instance_id in drained:
                    soon.subtract(r.devices)
            waiting = bool(matching_devices(selector, _free(devices, soon, cpu_slots)))
            victims = [] if waiting else [r for r in active if not r.pinned and r.instance_id not in drained and (
                r.chute_id != chute_id or (rollover and r.revision != spec.revision))]
            for r in sorted(victims, key=lambda r: (instance_value(r), r.chute_id != chute_id)):
                own_old = r.chute_id == chute_id  # (only for a rollover) the old revision makes room
                if not own_old and (value <= 0 or instance_value(r) > PREEMPT_RATIO * value):
                    continue
                freed = used.copy()
                freed.subtract(r.devices)
                if matching_devices(selector, _free(devices, freed, cpu_slots)):
                    victim = r
                    break
            if victim is None and not waiting:
                continue  # it does not fit here
        if not has_bundle(spec.revision):
            decisions.append(Decision("want", chute_id, spec.revision, "no_bundle",
                                      f"{label}: no verified bundle yet (wanted for a {reason} start)"))
            continue
        if waiting:
            continue  # it fits once the draining instances are gone
        if victim is not None:
            if victim.chute_id == chute_id:
                drain(victim, "rollover", f"no room for both revisions: {label} starts once it is gone")
            else:
                drain(victim, "preempted", f"for {label} (value {value:.2f}; its value {instance_value(victim):.2f})")
            continue
        used.update(device.uuid for device in chosen)
        detail = f"{label}: value {value:.2f}, {network(chute_id)} instance(s) network-wide, max {spec.max_instances}"
        decisions.append(Decision("start", chute_id, spec.revision, reason, detail, devices=tuple(chosen)))
    return decisions


class Autoscaler:
    """Applies ``decide`` to an ``InstanceManager`` and a ``ChutesService`` on a timer."""

    def __init__(self, manager: InstanceManager, service: ChutesService, announcements: Announcements,
                 bundles: BundleStore, devices: Sequence[DeviceSpec], *, cpu_slots: int = 8, interval_s: float = 2.0,
                 drain_timeout_s: float = 60.0, registry: CollectorRegistry | None = None,
                 rollover_overlap_s: float = ROLLOVER_OVERLAP_S) -> None:
        self.manager, self.service, self.announcements, self.bundles = manager, service, announcements, bundles
        self.rollover_overlap_s = rollover_overlap_s
        self.devices = list(devices)
        self.cpu_slots, self.interval_s, self.drain_timeout_s = cpu_slots, interval_s, drain_timeout_s
        registry = REGISTRY if registry is None else registry
        self.decisions_total = Counter("canopy_miner_autoscaler_decisions", "Autoscaler decisions by action and reason.",
                                       ["action", "reason"], registry=registry)
        self.instances_gauge = Gauge("canopy_miner_instances", "Chute instances in routing, by chute and revision.",
                                     ["chute", "revision"], registry=registry)
        self.wanted: list[str] = []
        self._gauged: set[tuple[str, str]] = set()
        self._frozen = False  # no fresh announcement: nothing decided until one arrives
        self._stopped: dict[str, tuple[str, float]] = {}  # revision -> (why, when) of a stop by idleness, ...
        self._unmet_since: dict[str, float] = {}  # chute_id -> since when its calls find no capacity
        self._refused: set[str] = set()  # revisions this miner's runtime cannot run (logged once each)
        self._draining: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- what runs ------------------------------------------------------------------------

    def running(self) -> list[Running]:
        now = time.monotonic()
        return [Running(instance_id=i.id, chute_id=i.spec.chute_id, revision=i.spec.revision,
                        devices=tuple(d.uuid for d in i.spec.devices), in_flight=i.in_flight, idle_s=i.idle_s(now),
                        ready_s=now - i.ready_since if i.ready_since is not None else 0.0,
                        ready=i.ready, pinned=i.spec.pinned, draining=i.draining or i.id in self._draining,
                        failed_starts=i.starts if i.cold_start_s is None and not i.alive else 0)
                for i in self.manager.instances]

    def running_revisions(self, announced: Mapping[str, AnnouncedChute] | None = None) -> dict[str, str]:
        return running_revisions(self.manager, announced)

    # --- the loop -------------------------------------------------------------------------

    def poke(self) -> None:
        """Decide again now (a bundle arrived, devices came free)."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="autoscaler")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._draining.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self.step()
            except Exception:
                logger.exception("autoscaler: a decision failed")

    async def step(self) -> list[Decision]:
        """Decide once and apply it (starts at once, drains in the background)."""
        async with self._lock:
            now = time.monotonic()
            if not self.announcements.fresh(now):
                # No validator announced within --chutes.announce_ttl_s (all restarting, or this
                # miner cut off): keep what runs as it is rather than drain every registry chute.
                if not self._frozen and any(not i.spec.pinned for i in self.manager.instances):
                    logger.warning("autoscaler: no fresh announcement from any validator: keeping the registry "
                                   "instances as they are until one arrives")
                self._frozen = True
                return []
            self._frozen = False
            announced = self._runnable(self.announcements.merged(now))
            self._track(announced, now)
            decisions = decide(announced, self.running(), self.devices, has_bundle=self.bundles.has,
                               cpu_slots=self.cpu_slots,
                               stopped={rev: (why, now - at) for rev, (why, at) in self._stopped.items()},
                               unmet_s={cid: now - since for cid, since in self._unmet_since.items()},
                               rollover_overlap_s=self.rollover_overlap_s)
            wanted = []
            for decision in decisions:
                if decision.action == "want":
                    wanted.append(decision.revision)
                    if decision.revision in self.wanted:
                        continue  # asked for already: not a new decision
                self._apply(decision, announced, now)
            self.wanted = wanted
            self._export()
            return decisions

    def _track(self, announced: Mapping[str, AnnouncedChute], now: float) -> None:
        """Forget the stops of revisions no longer announced (and old failures); note since when
        each chute's calls find no capacity."""
        current = {chute.revision for chute in announced.values()}
        self._stopped = {rev: (why, at) for rev, (why, at) in self._stopped.items()
                         if rev in current and (why != "failing" or now - at < FAILING_COOLDOWN_S)}
        for chute_id, chute in announced.items():
            if chute.demand.refused and chute.demand.instances < chute.max_instances:
                self._unmet_since.setdefault(chute_id, now)
            else:
                self._unmet_since.pop(chute_id, None)
        for chute_id in set(self._unmet_since) - set(announced):
            del self._unmet_since[chute_id]

    def _runnable(self, announced: Mapping[str, AnnouncedChute]) -> dict[str, AnnouncedChute]:
        """The announced chutes this miner's runtime can run: one whose image needs root steps
        (apt, arbitrary commands) is refused here, at load time, once per revision with the
        reason and the fix, and never started."""
        kept: dict[str, AnnouncedChute] = {}
        for chute_id, chute in announced.items():
            why = self.manager.refusal(chute.environment, chute.allow_external_egress)
            if why is None:
                kept[chute_id] = chute
            elif chute.revision not in self._refused:
                self._refused.add(chute.revision)
                self.decisions_total.labels("refuse", "runtime").inc()
                logger.error("autoscaler: not hosting {}/{} ({}): {}", chute.owner, chute.name, chute.revision[:12], why)
        return kept

    # --- applying -------------------------------------------------------------------------

    def _apply(self, decision: Decision, announced: Mapping[str, AnnouncedChute], now: float) -> None:
        logger.info("autoscaler: {} {} ({}): {}", decision.action, decision.instance_id or decision.chute_id,
                    decision.reason, decision.detail)
        self.decisions_total.labels(decision.action, decision.reason).inc()
        if decision.action == "start":
            self._start(decision, announced[decision.chute_id])
        elif decision.action == "drain":
            instance = next((i for i in self.manager.instances if i.id == decision.instance_id), None)
            if instance is None or instance.id in self._draining:
                return
            if decision.reason in ("idle", "failing", "preempted"):
                self._stopped[decision.revision] = (decision.reason, now)
            instance.draining = True  # out of routing now, before the task runs
            self._draining[instance.id] = asyncio.create_task(self._drain(instance), name=f"drain:{instance.id}")

    def _start(self, decision: Decision, spec: AnnouncedChute) -> None:
        try:
            entry, folder = self.bundles.entry(spec.revision), self.bundles.folder(spec.revision)
        except (KeyError, ValueError, OSError) as error:
            logger.error("autoscaler: cannot start {}@{}: {}", spec.name, spec.revision[:12], error)
            return
        self._stopped.pop(spec.revision, None)
        key = (spec.chute_id, spec.revision)
        if key not in self.service.chutes:
            self.service.register(HostedChute(
                chute_id=spec.chute_id, name=spec.name, username=spec.owner, tagline=spec.tagline, ref=entry,
                revision=spec.revision, model=spec.model, cords=spec.cords, concurrency=spec.concurrency))
        self.manager.add(InstanceSpec(chute_id=spec.chute_id, name=spec.name, ref=entry, devices=decision.devices,
                                      concurrency=spec.concurrency, concurrency_override=True, revision=spec.revision,
                                      cwd=str(folder), pinned=False, environment=spec.environment,
                                      egress=spec.allow_external_egress, dockerfile=spec.dockerfile))

    async def _drain(self, instance: Instance) -> None:
        try:
            await self.manager.drain(instance, self.drain_timeout_s)
            chute_id, revision = instance.spec.chute_id, instance.spec.revision
            if not any(i.spec.revision == revision for i in self.manager.by_chute.get(chute_id, [])):
                self.service.unregister(chute_id, revision)
        finally:
            self._draining.pop(instance.id, None)
            self.poke()

    def _export(self) -> None:
        counts: Tally[tuple[str, str]] = Tally((i.spec.chute_id, i.spec.revision) for i in self.manager.instances
                                               if not i.draining)
        for labels in self._gauged - set(counts):
            with contextlib.suppress(KeyError):
                self.instances_gauge.remove(*labels)
        for labels, count in counts.items():
            self.instances_gauge.labels(*labels).set(count)
        self._gauged = set(counts)


def running_revisions(manager: InstanceManager, announced: Mapping[str, AnnouncedChute] | None = None,
                      ) -> dict[str, str]:
    """chute_id -> the revision its ready instances run (the announced one when it is among them)."""
    ready: dict[str, set[str]] = {}
    for instance in manager.instances:
        if instance.ready and instance.spec.revision:
            ready.setdefault(instance.spec.chute_id, set()).add(instance.spec.revision)
    result = {}
    for chute_id, revisions in ready.items():
        wanted = announced.get(chute_id) if announced else None
        result[chute_id] = wanted.revision if wanted and wanted.revision in revisions else sorted(revisions)[0]
    return result


