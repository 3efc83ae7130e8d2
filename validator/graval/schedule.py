"""When each miner's devices are (re-)verified: at once when new, then at random intervals.

Called by the validator loop (which restores it from the store after a restart). A
miner seen for the first time, or claiming a device never verified, is due at once; after a
round where every device passed, the next one comes after a random delay around
``interval_s`` (uniform in [0.5, 1.5] x interval, so miners cannot predict it); after a
failed or unreachable round it is retried with exponential backoff from ``retry_s``,
capped at ``interval_s``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class ReverifySchedule:
    interval_s: float = 3600.0
    retry_s: float = 60.0
    rng: random.Random = field(default_factory=random.SystemRandom)
    _next: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    def due(self, hotkeys: list[str], now: float) -> list[str]:
        return [hotkey for hotkey in hotkeys if self._next.get(hotkey, 0.0) <= now]

    def record(self, hotkey: str, passed: bool, now: float) -> float:
        """Schedule the next round after one that ``passed`` (every device ok) or not; returns its time."""
        if passed:
            self._failures.pop(hotkey, None)
            delay = self.interval_s * self.rng.uniform(0.5, 1.5)
        else:
            failures = self._failures[hotkey] = self._failures.get(hotkey, 0) + 1
            delay = min(self.interval_s, self.retry_s * 2 ** (failures - 1))
        self._next[hotkey] = now + delay
        return self._next[hotkey]

    def restore(self, hotkey: str, last_round_at: float, passed: bool) -> float:
        """After a restart: schedule from the last round the store holds, as if just recorded then."""
        return self.record(hotkey, passed, last_round_at)

    def expedite(self, hotkey: str) -> None:
        """Make a miner due at once (it claims a device never verified for it)."""
        self._next[hotkey] = 0.0

    def is_known(self, hotkey: str) -> bool:
        return hotkey in self._next

    def forget(self, hotkeys_left: set[str]) -> None:
        """Drop miners that left the metagraph."""
        for hotkey in [key for key in self._next if key not in hotkeys_left]:
            self._next.pop(hotkey)
            self._failures.pop(hotkey, None)
