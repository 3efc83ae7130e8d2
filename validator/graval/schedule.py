"""When devices are (re-)verified: a miner's first verification at once, then sweeps.

The validator loop asks it what is due and restores it from the store after a restart.

- **Sweeps.** Re-verification is a sweep: every device of every reachable miner challenged
  at the same moment, so one GPU cannot answer for two hotkeys (each claim would need the
  whole device inside the same timing window). Sweeps come at random gaps drawn from an
  exponential distribution of mean ``interval_s`` (memoryless: the time since the last sweep
  says nothing about the next one), kept within [``MIN_GAP``, ``MAX_GAP``] x the mean (no
  sweep on the heels of the last one, none overdue for long), with the loop's
  ``SystemRandom``. After a restart the next sweep is drawn from the last one the store holds.
- **First verifications** run on their own, at once: a miner seen for the first time, or one
  claiming a device never challenged for it (the loop decides: not while the miner is on
  probation, see ``validator.loop``). A first round that reached nobody (no Inventory, no
  result) is retried with exponential backoff from ``retry_s``, capped at ``interval_s``;
  once a round has results the miner's re-verification belongs to the sweeps, failures
  included: a solo retry would find the GPU free of the other hotkey's proof.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

#: The shortest and longest gaps between two sweeps, as multiples of the mean (each bound
#: takes ~5% of the draws: P(exponential < 0.05) = 4.9%, P(exponential > 3) = 5.0%).
MIN_GAP, MAX_GAP = 0.05, 3.0


@dataclass
class ReverifySchedule:
    interval_s: float = 3600.0
    retry_s: float = 60.0
    rng: random.Random = field(default_factory=random.SystemRandom)
    next_sweep_at: float | None = None
    last_sweep_at: float | None = None
    _next: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    # --- sweeps ----------------------------------------------------------------------------

    def gap(self) -> float:
        """Seconds to the next sweep: exponential of mean ``interval_s``, within [MIN_GAP, MAX_GAP] x that."""
        return min(MAX_GAP, max(MIN_GAP, self.rng.expovariate(1.0))) * self.interval_s

    def sweep_due(self, now: float) -> bool:
        if self.next_sweep_at is None:
            self.next_sweep_at = now + self.gap()
        return self.next_sweep_at <= now

    def sweep_started(self, now: float) -> float:
        """A sweep starts now; returns when the next one is due."""
        self.last_sweep_at = now
        self.next_sweep_at = now + self.gap()
        return self.next_sweep_at

    def restore_sweep(self, last_sweep_at: float | None, now: float) -> float:
        """After a restart: the next sweep as drawn from the last one (due at once when that is past)."""
        self.last_sweep_at = last_sweep_at
        self.next_sweep_at = (now if last_sweep_at is None else last_sweep_at) + self.gap()
        return self.next_sweep_at

    # --- first verifications ---------------------------------------------------------------

    def due(self, hotkeys: list[str], now: float) -> list[str]:
        """The miners whose own (first) round is due: new, expedited, or retrying one that reached nobody."""
        return [hotkey for hotkey in hotkeys if self._next.get(hotkey, 0.0) <= now]

    def record(self, hotkey: str, reached: bool, now: float) -> float:
        """After a miner's own round: with results (``reached``) its next rounds are sweeps
        (returns inf); without, it is retried with backoff (returns when)."""
        if reached:
            self._failures.pop(hotkey, None)
            self._next[hotkey] = math.inf
        else:
            failures = self._failures[hotkey] = self._failures.get(hotkey, 0) + 1
            self._next[hotkey] = now + min(self.interval_s, self.retry_s * 2 ** (failures - 1))
        return self._next[hotkey]

    def restore(self, hotkey: str) -> None:
        """After a restart: a miner the store has results of is re-verified by sweeps only."""
        self.record(hotkey, True, 0.0)

    def expedite(self, hotkey: str) -> None:
        """Make a miner's own round due at once (it claims a device never challenged for it)."""
        self._next[hotkey] = 0.0

    def is_known(self, hotkey: str) -> bool:
        return hotkey in self._next

    def forget(self, hotkeys_left: set[str]) -> None:
        """Drop miners that left the metagraph."""
        for hotkey in [key for key in self._next if key not in hotkeys_left]:
            self._next.pop(hotkey)
            self._failures.pop(hotkey, None)
