"""Announcements: what the validators want hosted, merged into one view for the autoscaler.

The seam between the ``Announce`` synapses validators send (``protocol.registry``, received
by ``miner.registry_service``) and ``miner.autoscaler``. Each validator's latest announcement
counts for ``ttl_s`` seconds after it arrived; ``merged(now)`` is, per chute:

- the spec (revision, cords, node selector, limits, names) of the highest-stake validator
  whose announcement is fresh and names the chute (ties: the lower hotkey);
- the demand summed over every fresh validator that names it: ``calls`` and ``refused``
  added, ``instances`` the largest any of them reports (each sees the network's instances,
  not only its own), ``warmup`` when any of them says so, and ``idle_s`` the time since the
  latest demand any of them saw, counted to ``now`` (an announcement's ``idle_s`` was
  measured when it arrived).

A chute no fresh announcement names is absent: it was deleted, or every validator that
announced it went quiet. Times are the caller's clock (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.registry import Announce, AnnouncedChute, ChuteDemand


@dataclass(frozen=True)
class Received:
    """One validator's latest announcement."""

    hotkey: str
    stake: float
    announce: Announce
    at: float


class Announcements:
    """The latest announcement of each validator, and their merge."""

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"the announcement ttl must be positive, not {ttl_s}")
        self.ttl_s = ttl_s
        self._latest: dict[str, Received] = {}

    def update(self, validator_hotkey: str, stake: float, announce: Announce, now: float) -> None:
        """Keep ``announce`` as ``validator_hotkey``'s latest (it replaces the one before)."""
        self._latest[validator_hotkey] = Received(validator_hotkey, float(stake), announce, now)
        for hotkey in [h for h, received in self._latest.items() if not self._fresh(received, now)]:
            del self._latest[hotkey]

    def fresh(self, now: float) -> list[Received]:
        """The fresh announcements, highest stake first (ties: lower hotkey first)."""
        return sorted((r for r in self._latest.values() if self._fresh(r, now)), key=lambda r: (-r.stake, r.hotkey))

    def merged(self, now: float) -> dict[str, AnnouncedChute]:
        """chute_id -> the chute as the fresh announcements together describe it."""
        specs: dict[str, AnnouncedChute] = {}
        demand: dict[str, ChuteDemand] = {}
        latest: dict[str, float] = {}  # chute_id -> when (our clock) its latest demand was
        for received in self.fresh(now):
            for chute in received.announce.chutes:
                specs.setdefault(chute.chute_id, chute)  # the first seen is the highest stake's
                seen, add = demand.get(chute.chute_id), chute.demand
                demand[chute.chute_id] = add if seen is None else ChuteDemand(
                    calls=seen.calls + add.calls, refused=seen.refused + add.refused,
                    instances=max(seen.instances, add.instances), warmup=seen.warmup or add.warmup)
                if add.idle_s is not None:
                    latest[chute.chute_id] = max(latest.get(chute.chute_id, -float("inf")), received.at - add.idle_s)
        return {chute_id: spec.model_copy(update={"demand": demand[chute_id].model_copy(update={
                    "idle_s": max(0.0, now - latest[chute_id]) if chute_id in latest else None})})
                for chute_id, spec in specs.items()}

    def revisions(self, now: float) -> set[str]:
        """The current revision of every announced chute."""
        return {chute.revision for chute in self.merged(now).values()}

    def _fresh(self, received: Received, now: float) -> bool:
        return now - received.at < self.ttl_s
