"""From the store's rows to the scoring core's inputs: one ``MinerWindow`` per serving miner.

Once per validator step, between reading the store and ``validator.scoring``. Pure: no I/O,
no clock.

- Devices: a miner's devices are the uuids its latest Inventory claims; each counts with
  its latest GraVal verification *by this miner* (rows are keyed (hotkey, uuid), so another
  hotkey's claim of the uuid changes nothing here), and only while this miner owns the uuid
  (``device_owners``: first verified wins, or the operator's choice). A uuid never verified
  for it does not count yet. Its multiplier comes from ``scoring.device_multiplier``. A
  miner that did not answer Inventory this step gets no window at all, so its raw score
  this step is 0 and its smoothed score decays.
- Latency quality per chute is ``median / (median + own)`` over the miners that served the
  chute's synthetic calls (0.5 at the median, towards 1 when faster, towards 0 when
  slower); a miner's ``latency_quality`` is the mean over its chutes (0.5 when unmeasured).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Iterable, Mapping

from validator.scoring import DeviceEntry, MinerWindow
from store.queries import MinerActivity


def latency_quality(activity: Mapping[str, MinerActivity]) -> dict[str, float]:
    """hotkey -> quality in [0, 1] (only miners with at least one measured chute)."""
    by_chute: dict[str, list[float]] = {}
    for record in activity.values():
        for chute, latency in record.latency_by_chute.items():
            by_chute.setdefault(chute, []).append(latency)
    medians = {chute: statistics.median(values) for chute, values in by_chute.items()}
    quality: dict[str, float] = {}
    for hotkey, record in activity.items():
        parts = []
        for chute, latency in record.latency_by_chute.items():
            median = medians[chute]
            parts.append(0.5 if median + latency <= 0 else median / (median + latency))
        if parts:
            quality[hotkey] = sum(parts) / len(parts)
    return quality


def device_entries(hotkey: str, claimed: Iterable[str], latest: Mapping[tuple[str, str], Any],
                   multiplier: Callable[[Any], float], owners: Mapping[str, str] | None = None) -> list[DeviceEntry]:
    """The claimed uuids with a verification by ``hotkey`` (``latest``: keyed (hotkey, uuid)),
    with their multipliers; a device counts only when its latest one passed and ``hotkey``
    owns it (``owners``: uuid -> hotkey; None: no ownership check)."""
    entries = []
    for uuid in sorted(set(claimed)):
        row = latest.get((hotkey, uuid))
        if row is None:
            continue
        counts = bool(row.ok) and (owners is None or owners.get(uuid) == hotkey)
        entries.append(DeviceEntry(uuid, row.model_id, multiplier(row) if counts else 0.0, counts))
    return entries


def build_windows(miners: Iterable[Any], claims: Mapping[str, Iterable[str]], latest: Mapping[tuple[str, str], Any],
                  activity: Mapping[str, MinerActivity], multiplier: Callable[[Any], float],
                  owners: Mapping[str, str] | None = None) -> list[MinerWindow]:
    """One window per miner (chain ``Neuron``) that answered Inventory this step (keys of ``claims``)."""
    quality = latency_quality(activity)
    windows = []
    for neuron in miners:
        if neuron.hotkey not in claims:
            continue
        record = activity.get(neuron.hotkey, MinerActivity())
        windows.append(MinerWindow(
            hotkey=neuron.hotkey, coldkey=neuron.coldkey, uid=neuron.uid,
            devices=device_entries(neuron.hotkey, claims[neuron.hotkey], latest, multiplier, owners),
            compute_seconds=record.compute_seconds, invocations_ok=record.invocations_ok,
            chutes_served=record.chutes_served, synthetic_ok=record.synthetic_ok,
            synthetic_total=record.synthetic_total, latency_quality=quality.get(neuron.hotkey, 0.5),
            flagged=min(record.flagged, record.synthetic_total) if record.synthetic_total else 0,
        ))
    return windows
