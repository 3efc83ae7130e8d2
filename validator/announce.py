"""Announcing the chute registry to the miners, and delivering the bundles they ask for.

The seam between the registry in the validator's store (``store.registry``, filled by the
API's ``POST /chutes``) and the miners' autoscalers (``miner.autoscaler``), over the signed
wire (``protocol.registry``). Every ``--validator.announce_s`` the validator:

1. reads every chute not deleted at its current revision, with the demand of the last
   ``--validator.demand_window_s`` (calls recorded in ``invocations``, calls that found no
   capacity and warmups recorded by the API in ``chute_demand``) and the ready instances
   its last step saw at that revision on verified miners (the API routes to no other);
2. sends one ``Announce`` to every serving miner, each chute with the miner's ``rank`` in a
   rendezvous order (verified miners first) (``rendezvous_order``: the first ``max_instances`` miners start a chute
   at once; the others only when calls keep finding no capacity);
3. for each revision a miner answers as ``wanted`` (and that this announcement named),
   sends that miner the bundle (``DeliverBundle``), which the miner keeps only if its
   sha256 is the revision. Bundles are immutable, so the last few are kept in memory.

A miner that does not answer misses this announcement; the next one repeats everything.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Collection, Mapping, Sequence

from loguru import logger
from pydantic import ValidationError

from canopy.image_environment import ImageEnvironment
from protocol.chutes import HostedCord
from protocol.dendrite import Dendrite
from protocol.registry import MAX_ANNOUNCED, AnnouncedChute, Announce, AnnounceResponse, BundleReceipt, ChuteDemand, DeliverBundle
from store.registry import ChuteRecord, ChuteRegistry, Demand

BUNDLE_CACHE = 8
MAX_WINDOW_S = 86400.0



@dataclass
class AnnounceReport:
    chutes: int = 0
    miners: int = 0
    answered: int = 0
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (miner hotkey, revision) stored by the miner
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (miner hotkey, revision, why)


def announced_chute(record: ChuteRecord, demand: Demand, instances: int, now: float) -> AnnouncedChute | None:
    """The announcement of one registry chute (None when its stored description does not fit one)."""
    description = record.description
    try:
        return AnnouncedChute(
            chute_id=record.chute_id, owner=record.owner, name=record.name, revision=record.revision,
            node_selector=dict(description.get("node_selector") or {}),
            cords=[HostedCord.model_validate(cord) for cord in description.get("cords") or []],
            concurrency=int(description.get("concurrency") or 1), max_instances=record.max_instances,
            shutdown_after_seconds=record.shutdown_after_seconds, model=str(description.get("model") or ""),
            tagline=str(description.get("tagline") or ""),
            environment=ImageEnvironment.model_validate(description.get("environment") or {}),
            allow_external_egress=description.get("allow_external_egress") is True,
            dockerfile=str(description.get("dockerfile") or ""),
            demand=ChuteDemand(calls=demand.calls, refused=demand.refused, instances=instances, warmup=demand.warmups > 0,
                              idle_s=None if demand.last_at is None else max(0.0, now - demand.last_at)))
    except (ValidationError, TypeError, ValueError) as error:
        logger.error("registry chute {} ({}) cannot be announced: {}", record.ref, record.revision[:12], error)
        return None


def rendezvous_order(chute: AnnouncedChute, hotkeys: Sequence[str]) -> list[str]:
    """The miners' order for hosting ``chute``: by sha256 of (chute id, revision, hotkey), the
    same for every validator, different per chute (so load spreads), stable as miners come and go."""
    return sorted(hotkeys, key=lambda hotkey: hashlib.sha256(f"{chute.chute_id}:{chute.revision}:{hotkey}".encode()).digest())


def ranked(announce: Announce, miners: Sequence[Any], preferred: Collection[str] = ()) -> dict[str, Announce]:
    """hotkey -> ``announce`` as that miner gets it: each chute with the miner's ``rank``, the
    ``preferred`` miners (verified ones: the API routes to no other) first. Each chute's order
    is computed once for all the miners."""
    first = [miner.hotkey for miner in miners if miner.hotkey in preferred]
    then = [miner.hotkey for miner in miners if miner.hotkey not in preferred]
    ranks = {chute.chute_id: {hotkey: rank for rank, hotkey in enumerate(rendezvous_order(chute, first)
                                                                      + rendezvous_order(chute, then))}
             for chute in announce.chutes}
    return {miner.hotkey: announce.model_copy(update={"chutes": [
        chute.model_copy(update={"rank": ranks[chute.chute_id][miner.hotkey]}) for chute in announce.chutes]})
        for miner in miners}


class Announcer:
    def __init__(self, registry: ChuteRegistry, dendrite: Dendrite, *, window_s: float = 300.0,
                 timeout_s: float = 10.0, delivery_timeout_s: float = 120.0, deliveries_at_once: int = 4) -> None:
        self.registry, self.dendrite = registry, dendrite
        self.window_s, self.timeout_s, self.delivery_timeout_s = window_s, timeout_s, delivery_timeout_s
        self._bundles: OrderedDict[str, bytes] = OrderedDict()
        self._deliveries = asyncio.Semaphore(deliveries_at_once)
        self._delivering: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def announcement(self, instances: Mapping[tuple[str, str], int], now: float | None = None) -> Announce:
        """The ``Announce`` of the registry as it is now; ``instances``: (chute_id, revision) ->
        ready instances seen network-wide."""
        now = time.time() if now is None else now
        records = await self.registry.list_all()
        # The window reaches back at least as far as the longest shutdown_after_seconds, so "no
        # demand in the window" (idle_s None) always means idle for longer than that.
        window = min(MAX_WINDOW_S, max([self.window_s, *(record.shutdown_after_seconds for record in records)]))
        demand = await self.registry.demand_since(now - window)
        chutes = [announced for record in records
                  if (announced := announced_chute(record, demand.get(record.chute_id, Demand()),
                                                   instances.get((record.chute_id, record.revision), 0), now)) is not None]
        if len(chutes) > MAX_ANNOUNCED:
            chutes.sort(key=lambda chute: (-chute.demand.points(), chute.chute_id))
            logger.warning("the registry holds {} chutes; announcing the {} most in demand", len(chutes), MAX_ANNOUNCED)
            chutes = chutes[:MAX_ANNOUNCED]
        return Announce(chutes=chutes, window_s=window)

    async def announce(self, miners: Sequence[Any], instances: Mapping[tuple[str, str], int],
                       preferred: Collection[str] = ()) -> AnnounceReport:
        """Announce to every miner (chain ``Neuron``s; ``preferred``: the hotkeys ranked first),
        then deliver what each wanted."""
        announce = await self.announcement(instances)
        report = AnnounceReport(chutes=len(announce.chutes), miners=len(miners))
        if not miners:
            return report
        per_miner = ranked(announce, miners, preferred)
        answers = await asyncio.gather(*(self.dendrite.call(miner, per_miner[miner.hotkey], timeout=self.timeout_s)
                                         for miner in miners))
        named = {chute.revision for chute in announce.chutes}
        for miner, answer in zip(miners, answers):
            if not (answer.ok and isinstance(answer.response, AnnounceResponse)):
                continue
            report.answered += 1
            for revision in dict.fromkeys(answer.response.wanted):
                slot = (miner.hotkey, revision)
                if revision in named and slot not in self._delivering:  # one delivery at a time per miner and bundle
                    task = asyncio.create_task(self._deliver(miner, revision, report), name=f"deliver:{revision[:12]}")
                    self._delivering[slot] = task
                    task.add_done_callback(partial(self._delivered, slot))
        return report

    def _delivered(self, slot: tuple[str, str], _: asyncio.Task[None]) -> None:
        self._delivering.pop(slot, None)

    async def settle(self) -> None:
        """Wait for the deliveries in flight (tests, shutdown). ``announce`` never does: a miner
        slow to take an 8 MiB bundle must not hold up the next announcement to everyone."""
        while self._delivering:
            await asyncio.gather(*list(self._delivering.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._delivering.values()):
            task.cancel()
        await asyncio.gather(*list(self._delivering.values()), return_exceptions=True)

    async def _deliver(self, miner: Any, revision: str, report: AnnounceReport) -> None:
        async with self._deliveries:
            data = await self._bundle(revision)
            if data is None:
                report.refused.append((miner.hotkey, revision, "the registry holds no bundle of this revision"))
                return
            answer = await self.dendrite.call(miner, DeliverBundle(revision=revision, data=base64.b64encode(data).decode()),
                                              timeout=self.delivery_timeout_s)
        receipt = answer.response if answer.ok else None
        if isinstance(receipt, BundleReceipt) and receipt.stored:
            report.delivered.append((miner.hotkey, revision))
            logger.info("bundle {} delivered to miner {}", revision[:12], miner.hotkey[:8])
        else:
            why = receipt.reason if isinstance(receipt, BundleReceipt) else str(answer.error)
            report.refused.append((miner.hotkey, revision, why))
            logger.warning("bundle {} not taken by miner {}: {}", revision[:12], miner.hotkey[:8], why)

    async def _bundle(self, revision: str) -> bytes | None:
        if revision in self._bundles:
            self._bundles.move_to_end(revision)
            return self._bundles[revision]
        data = await self.registry.bundle(revision)
        if data is not None:
            self._bundles[revision] = data
            while len(self._bundles) > BUNDLE_CACHE:
                self._bundles.popitem(last=False)
        return data
