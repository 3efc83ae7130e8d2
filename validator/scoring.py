"""The validator's scoring core: pure functions from per-miner window aggregates to weights.

Run once per validator step. The loop aggregates, per miner, what the store holds for the
rolling window (``ScoringSettings.window_s``, default 7 days) into a ``MinerWindow`` and
then runs::

    raw      = raw_scores(windows, settings)                  # this step, in [0, 1]
    raw      = dedupe_coldkeys(raw, coldkeys)                 # hotkey splitting earns nothing
    scores   = smooth(previous, raw, settings.ema_alpha)      # persist these (score history)
    uids, ws = to_weights(dedupe_coldkeys(scores, coldkeys), uid_of_hotkey)

Nothing here does I/O, reads the clock or draws random numbers.

The formula, for miner i of the step (E = miners with at least one verified device)::

    c_i  = Σ m_d over i's devices d whose latest GraVal verification (by i) passed and that i
           owns (each uuid once; m_d = ``device_multiplier``: the row's compute_multiplier when
           the row is calibrated, else the lowest multiplier among the rows that could hold
           the memory the proof established; a failed proof makes the device count 0)
    u_i  = compute_seconds_i × c_i / #verified devices_i   (raw seconds × mean multiplier)
    n_i  = successful invocations,  k_i = unique chutes with a successful invocation
    a_i  = synthetic_ok_i / synthetic_total_i   (untested_availability when no synthetic call)
    q_i  = latency quality in [0, 1]   (0.5 = the median of miners serving the same chutes)
    P_i  = max(0, 1 - flag_penalty × flagged_i / max(1, synthetic_total_i))
    s(x)_i = x_i / Σ_{j∈E} x_j    (0 when the sum is 0)

    base_i = (w_cap s(c)_i + w_comp s(u)_i + w_inv s(n)_i + w_chutes s(k)_i
              + w_avail a_i + w_lat q_i) / (w_cap + w_comp + w_inv + w_chutes + w_avail + w_lat)
    raw_i  = a_i × P_i × base_i   for i ∈ E,    raw_i = 0 otherwise

    score_i(t) = α raw_i(t) + (1 - α) score_i(t-1)      (EMA; absent miners get raw 0;
                                                          the first score is raw_i itself)
    weight_i   = score_i / Σ_j score_j   over the registered uids with score > 0

Failures and timeouts score 0 because they are not counted in ``compute_seconds``,
``invocations_ok`` or ``chutes_served`` and they lower ``a_i``. ``compute_seconds`` is
compute served (successful calls only), measured, never as the miner reported it: an
organic call counts its duration as the gateway saw it; a synthetic call counts the median
over the miners that answered the same probe of the duration the validator saw (so every
miner earns the same for the same work, and a slow one earns no more); a flagged answer
counts 0. An organic call whose miner the caller chose (``steered``) counts in none of the
three. The multiplier is applied
here, as the mean over the miner's verified devices, because an invocation record names the
miner and the chute, not the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from node.config import COMPONENTS, ScoringSettings
from protocol.graval.devices import GpuModel, device_multiplier

__all__ = ["COMPONENTS", "ScoringSettings", "DeviceEntry", "MinerWindow", "Totals", "device_multiplier",
           "devices_from_results", "totals", "raw_score", "raw_scores", "dedupe_coldkeys", "smooth", "to_weights"]



class DeviceEntry(NamedTuple):
    """One device as scoring sees it: its latest verification and its table multiplier."""

    uuid: str
    model_id: str
    multiplier: float
    ok: bool


class MinerWindow(BaseModel):
    """One miner's aggregates over the window (successful work only, see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hotkey: str = Field(..., min_length=1)
    coldkey: str = Field(..., min_length=1)
    uid: int = Field(..., ge=0)
    devices: list[DeviceEntry] = Field(default_factory=list, description="latest verification per device")
    compute_seconds: float = Field(0.0, ge=0, description="raw seconds served, organic + synthetic")
    invocations_ok: int = Field(0, ge=0)
    chutes_served: int = Field(0, ge=0, description="unique chutes with at least one successful invocation")
    synthetic_ok: int = Field(0, ge=0)
    synthetic_total: int = Field(0, ge=0)
    latency_quality: float = Field(0.5, ge=0, le=1, description="0.5 = median / not measured")
    flagged: int = Field(0, ge=0, description="greedy outputs that disagreed with the majority")

    @field_validator("devices")
    @classmethod
    def _multipliers(cls, devices: list[DeviceEntry]) -> list[DeviceEntry]:
        for device in devices:
            if not (math.isfinite(device.multiplier) and device.multiplier >= 0):
                raise ValueError(f"device {device.uuid}: multiplier must be finite and >= 0")
        return devices

    @model_validator(mode="after")
    def _ok_within_total(self) -> "MinerWindow":
        if self.synthetic_ok > self.synthetic_total:
            raise ValueError("synthetic_ok exceeds synthetic_total")
        return self

    def verified(self) -> list[DeviceEntry]:
        """Devices whose latest verification passed, each uuid once (a failed entry wins)."""
        seen: dict[str, DeviceEntry] = {}
        for device in self.devices:
            if device.uuid not in seen or not device.ok:
                seen[device.uuid] = device
        return [d for d in seen.values() if d.ok and d.multiplier > 0]

    def capacity(self) -> float:
        return sum(d.multiplier for d in self.verified())

    def compute_units(self) -> float:
        verified = self.verified()
        return self.compute_seconds * self.capacity() / len(verified) if verified else 0.0

    def availability(self, settings: ScoringSettings) -> float:
        if self.synthetic_total == 0:
            return settings.untested_availability
        return self.synthetic_ok / self.synthetic_total


@dataclass(frozen=True)
class Totals:
    """Sums over the eligible miners of one step: the denominators of the shares."""

    capacity: float = 0.0
    compute: float = 0.0
    invocations: float = 0.0
    chutes: float = 0.0


def devices_from_results(results: Iterable[Any], table: Iterable[GpuModel]) -> list[DeviceEntry]:
    """Latest verification per uuid (``DeviceResult`` or store rows of one miner) → entries
    with their multipliers (``device_multiplier``)."""
    multiplier = device_multiplier(table)
    latest: dict[str, Any] = {}
    for result in results:
        if result.uuid not in latest or result.verified_at >= latest[result.uuid].verified_at:
            latest[result.uuid] = result
    return [DeviceEntry(r.uuid, r.model_id, multiplier(r), bool(r.ok)) for _, r in sorted(latest.items())]


def totals(windows: Iterable[MinerWindow]) -> Totals:
    """Denominators over the miners with at least one verified device."""
    cap = comp = inv = chutes = 0.0
    for window in windows:
        if window.capacity() > 0:
            cap += window.capacity()
            comp += window.compute_units()
            inv += window.invocations_ok
            chutes += window.chutes_served
    return Totals(cap, comp, inv, chutes)


def _share(value: float, total: float) -> float:
    return value / total if total > 0 else 0.0


def raw_score(window: MinerWindow, settings: ScoringSettings, step_totals: Totals | None = None) -> float:
    """This step's score of one miner, in [0, 1]; ``step_totals`` default: the miner alone."""
    capacity = window.capacity()
    if capacity <= 0:
        return 0.0
    step_totals = step_totals if step_totals is not None else totals([window])
    availability = window.availability(settings)
    parts = {
        "capacity": _share(capacity, step_totals.capacity),
        "compute": _share(window.compute_units(), step_totals.compute),
        "invocations": _share(window.invocations_ok, step_totals.invocations),
        "chutes": _share(window.chutes_served, step_totals.chutes),
        "availability": availability,
        "latency": window.latency_quality,
    }
    weights = settings.weights()
    base = sum(weights[name] * min(1.0, parts[name]) for name in COMPONENTS) / sum(weights.values())
    penalty = max(0.0, 1.0 - settings.flag_penalty * window.flagged / max(1, window.synthetic_total))
    return availability * penalty * base


def raw_scores(windows: Iterable[MinerWindow], settings: ScoringSettings) -> dict[str, float]:
    """``raw_score`` of every miner of the step, normalised against each other."""
    windows = list(windows)
    hotkeys = [w.hotkey for w in windows]
    if len(set(hotkeys)) != len(hotkeys):
        raise ValueError("one window per hotkey")
    step_totals = totals(windows)
    return {w.hotkey: raw_score(w, settings, step_totals) for w in sorted(windows, key=lambda w: w.hotkey)}


def dedupe_coldkeys(scores: Mapping[str, float], coldkeys: Mapping[str, str]) -> dict[str, float]:
    """Per coldkey, only the best hotkey keeps its score (ties: the smallest hotkey); others get 0.

    A hotkey missing from ``coldkeys`` is treated as its own coldkey.
    """
    best: dict[str, str] = {}
    for hotkey in sorted(scores):
        owner = coldkeys.get(hotkey, hotkey)
        if owner not in best or scores[hotkey] > scores[best[owner]]:
            best[owner] = hotkey
    keep = set(best.values())
    return {hotkey: (scores[hotkey] if hotkey in keep else 0.0) for hotkey in sorted(scores)}


def smooth(previous: Mapping[str, float], current: Mapping[str, float], alpha: float,
           *, drop_below: float = 1e-9) -> dict[str, float]:
    """EMA ``alpha·current + (1-alpha)·previous``; a hotkey absent from ``current`` counts as 0.

    A hotkey with no previous score starts at its current one (the EMA's first value, not
    ramped up from 0), so miners verified a step apart are compared on what they do, not on
    when they were first seen. Scores that decayed below ``drop_below`` are dropped so the
    table does not grow forever.
    """
    if not (0 < alpha <= 1):
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    out: dict[str, float] = {}
    for hotkey in sorted(set(previous) | set(current)):
        if hotkey in previous:
            value = alpha * current.get(hotkey, 0.0) + (1 - alpha) * previous[hotkey]
        else:
            value = current[hotkey]
        if value >= drop_below:
            out[hotkey] = value
    return out


def to_weights(scores: Mapping[str, float], uids: Mapping[str, int]) -> tuple[list[int], list[float]]:
    """(uids ascending, weights summing to 1) for hotkeys registered in ``uids`` with score > 0.

    Zero scores and unregistered hotkeys are dropped. When nothing is left the result is
    ``([], [])``: the chain rejects an all-zero vector, so the caller skips ``set_weights``
    this tempo (keeping the weights already on chain) and logs why.
    """
    chosen: dict[int, float] = {}
    for hotkey, score in scores.items():
        if not math.isfinite(score) or score < 0:
            raise ValueError(f"score of {hotkey} must be finite and >= 0, got {score}")
        if hotkey not in uids or score == 0:
            continue
        uid = uids[hotkey]
        if uid in chosen:
            raise ValueError(f"uid {uid} belongs to two hotkeys")
        chosen[uid] = score
    total = sum(chosen.values())
    if total <= 0:
        return [], []
    order = sorted(chosen)
    return order, [chosen[uid] / total for uid in order]
