"""From the store's rows to the scoring core's inputs: one ``MinerWindow`` per serving miner.

Called by the validator loop once per step, between reading the store and
``validator.scoring``. Pure: no I/O, no clock.

- Devices: a miner's devices are the uuids its latest Inventory claims; each counts with
  its latest GraVal verification *by this miner* (a uuid last verified for another hotkey,
  or never verified, does not count yet). A miner that did not answer Inventory this step
  gets no window at all, so its raw score this step is 0 and its smoothed score decays.
- Latency quality per chute is ``median / (median + own)`` over the miners that served the
  chute's synthetic calls (0.5 at the median, towards 1 when faster, towards 0 when
  slower); a miner's ``latency_quality`` is the mean over its chutes (0.5 when unmeasured).
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Mapping

from validator.scoring import DeviceEntry, MinerWindow
from validator.store import MinerActivity


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


def device_entries(hotkey: str, claimed: Iterable[str], latest: Mapping[str, Any],
                   multipliers: Mapping[str, float]) -> list[DeviceEntry]:
    """The claimed uuids whose latest verification belongs to ``hotkey``, with their multipliers."""
    entries = []
    for uuid in sorted(set(claimed)):
        row = latest.get(uuid)
        if row is None or row.miner_hotkey != hotkey:
            continue
        entries.append(DeviceEntry(uuid, row.model_id, multipliers.get(row.model_id, 0.0) if row.ok else 0.0, bool(row.ok)))
    return entries


def build_windows(miners: Iterable[Any], claims: Mapping[str, Iterable[str]], latest: Mapping[str, Any],
                  activity: Mapping[str, MinerActivity], multipliers: Mapping[str, float]) -> list[MinerWindow]:
    """One window per miner (chain ``Neuron``) that answered Inventory this step (keys of ``claims``)."""
    quality = latency_quality(activity)
    windows = []
    for neuron in miners:
        if neuron.hotkey not in claims:
            continue
        record = activity.get(neuron.hotkey, MinerActivity())
        windows.append(MinerWindow(
            hotkey=neuron.hotkey, coldkey=neuron.coldkey, uid=neuron.uid,
            devices=device_entries(neuron.hotkey, claims[neuron.hotkey], latest, multipliers),
            compute_seconds=record.compute_seconds, invocations_ok=record.invocations_ok,
            chutes_served=record.chutes_served, synthetic_ok=record.synthetic_ok,
            synthetic_total=record.synthetic_total, latency_quality=quality.get(neuron.hotkey, 0.5),
            flagged=min(record.flagged, record.synthetic_total) if record.synthetic_total else 0,
        ))
    return windows
