"""GraVal calibration: a backend's honest per-phase rates and the timing window they justify
(the separation table that shows what that window refuses is ``miner.graval.separation``).

The seam between the prover (``miner.graval.prover``, ``miner.graval.adversaries``) and
whatever writes or checks a ``gpus.toml`` row. It needs numpy and the pydantic models only
(no rich, no typer), so that it runs on a GPU host that has nothing else (the GPU check
kit, ``./run.sh gpu-check``).

Rates. A run is one honest ``fill()`` then ``access(seed)`` on the backend, timed by the
prover (``prover.timings``: everything the phase does on the device, hashing included,
exactly what the validator's clock sees minus the network). ``fill_macs / fill_s`` and
``access_macs / access_s`` are the run's rates; the row gets their medians over the runs.

The window (``derive_window``). A phase is accepted when its time is within
``[window_low, window_high]`` x the time the row's rate predicts. With ``cv`` the larger
of the two phases' coefficients of variation over the runs::

    window_high = (1 + DEVICE_SPREAD) x (1 + K_SIGMA x cv_bound)

- ``cv_bound`` is the 90% upper confidence limit of cv from R runs (the sample standard
  deviation times sqrt((R - 1) / chi2_0.10(R - 1))): three runs are weak evidence of a small
  variance (x3.1), ten runs x1.5. At least MIN_RUNS = 3 runs are required.
- ``K_SIGMA = 5``: an honest phase lands above the window with probability
  Phi(-5) = 2.9e-7, 5.7e-7 per verification (two phases). A device re-verified hourly
  meets one false ``too_slow`` every ~200 years (0.5% of devices a year); since one
  failure zeroes a device at once, k = 4 (0.55 false failures per device-year) is too few.
- ``DEVICE_SPREAD = 0.15``: the runs measure one board; a row admits any board whose max
  SM clock is in the row's range (h100: 1750-1980 MHz, 13%) and boards throttle under
  power and heat. The window allows 15% below the calibrated board before variance counts.

What the cheats need. One GPU answering two claims of a sweep gives each claim half the
device: each phase takes ~2x (the separation table measures it; some overlap of host work
can bring it slightly under 2). Keeping half the matrices costs each rebuild n/b access
steps of work (~30x at the GPU shapes); keeping 90% of them still >= 2x
(``protocol.graval.spec.memory_slowdown``). So every cheat passes only with
``window_high >= 2``; the row is refused (``WindowRefused``: no row is emitted, re-measure
on a quieter machine or with more runs) unless ``window_high < MAX_WINDOW_HIGH = 2.0``,
i.e. unless ``cv_bound < 14.8%``. A GPU's run-to-run cv is ~1%: 3 runs give
window_high ~1.33, refusing the two-claims cheat with a 1.5x margin.

``window_low = min(0.5, 1 / window_high)``: nothing is gained by being fast except passing
as a slower (cheaper) model, which earns less; the lower edge only catches nonsense, and
loose it cannot fail an honest device whose driver got faster.
"""

from __future__ import annotations

import math
import re
import secrets
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from miner.graval.backends import ArrayBackend
from miner.graval.prover import Prover
from protocol.graval.devices import GIB, MAX_WINDOW_HIGH, GpuModel
from protocol.graval.spec import ChallengeSpec, access_order, samples_needed
from protocol.graval.verifier import leaves_for, pick_samples, verify

if TYPE_CHECKING:
    from protocol.graval.devices import DeviceSpec

K_SIGMA = 5.0
DEVICE_SPREAD = 0.15
MIN_RUNS = 3
WINDOW_LOW_MAX = 0.5
CONFIDENCE = 0.90

#: chi2 quantile at 0.10 for 1..30 degrees of freedom (the lower tail, for the upper bound of a variance).
_CHI2_010 = (0.01579, 0.2107, 0.5844, 1.0636, 1.6103, 2.2041, 2.8331, 3.4895, 4.1682, 4.8652, 5.5778, 6.3038,
             7.0415, 7.7895, 8.5468, 9.3122, 10.0852, 10.8649, 11.6509, 12.4426, 13.2396, 14.0415, 14.8480,
             15.6587, 16.4734, 17.2919, 18.1139, 18.9392, 19.7677, 20.5992)

#: (label, phase, done, total): progress of one prover inside a labelled run.
Progress = Callable[[str, str, int, int], None]
SpecFactory = Callable[[], ChallengeSpec]


# --- honest runs ---------------------------------------------------------------------------


@dataclass
class Run:
    """One honest fill + access, and its self-check by the validator's verifier when asked."""

    n: int
    b: int
    m: int
    steps: int
    fill_s: float
    access_s: float
    fill_macs: int
    access_macs: int
    verified: bool | None = None
    verify_detail: str = ""
    open_s: float = 0.0
    verify_cpu_s: float = 0.0
    samples_per_phase: int = 0

    @property
    def fill_rate(self) -> float:
        return self.fill_macs / self.fill_s

    @property
    def access_rate(self) -> float:
        return self.access_macs / self.access_s

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "b": self.b, "m": self.m, "steps": self.steps, "fill_s": self.fill_s,
                "access_s": self.access_s, "fill_macs_per_s": self.fill_rate, "access_macs_per_s": self.access_rate,
                "verified": self.verified, "verify_detail": self.verify_detail, "open_s": self.open_s,
                "verify_cpu_s": self.verify_cpu_s, "samples_per_phase": self.samples_per_phase}


def _labelled(progress: Progress | None, label: str) -> Callable[[str, int, int], None] | None:
    if progress is None:
        return None
    return lambda phase, done, total: progress(label, phase, done, total)


def check_proof(spec: ChallengeSpec, prover: Prover, fill: Any, access: Any, access_seed: bytes,
                samples_per_phase: int) -> tuple[bool, str, float, float]:
    """The validator's check of a committed prover: picks, ``open``, ``verify`` on this CPU.
    Returns (ok, detail, open wall seconds, verifier CPU seconds of this thread)."""
    order = access_order(spec, access_seed)
    samples = pick_samples(spec, samples_per_phase)
    refs = leaves_for(spec, order, samples)
    started = time.perf_counter()
    openings = prover.open(refs)
    open_s = time.perf_counter() - started
    cpu = time.thread_time()
    verdict = verify(spec, fill, access, order, samples, openings)
    return verdict.ok, f"{verdict.reason}: {verdict.detail}", open_s, time.thread_time() - cpu


def honest_run(spec: ChallengeSpec, backend: ArrayBackend, *, verify_samples: int | None = None,
               progress: Progress | None = None, label: str = "honest") -> Run:
    """Fill and access one challenge honestly; with ``verify_samples``, open and verify it too."""
    prover = Prover(spec, backend, progress=_labelled(progress, label))
    try:
        fill = prover.fill()
        seed = secrets.token_bytes(32)
        access = prover.access(seed)
        run = Run(spec.n, spec.b, spec.m, spec.steps, prover.timings.fill_s, prover.timings.access_s,
                  spec.fill_macs, spec.access_macs)
        if verify_samples:
            run.verified, run.verify_detail, run.open_s, run.verify_cpu_s = check_proof(
                spec, prover, fill, access, seed, verify_samples)
            run.samples_per_phase = verify_samples
        return run
    finally:
        prover.release()


def warm_up(backend: ArrayBackend, n: int, b: int) -> None:
    """One tiny proof so that library start-up (BLAS threads, CUDA context, cuBLAS heuristics,
    cupy's kernel compilation) is not counted in the first measured run."""
    spec = ChallengeSpec.fresh("GPU-warm-up", n=min(n, 1024), b=min(b, max(8, min(n, 1024) // 64)), m=2, steps=4)
    honest_run(spec, backend)


def cv_upper_bound(cv: float, runs: int, confidence: float = CONFIDENCE) -> float:
    """The upper confidence limit (at 90%) of a coefficient of variation estimated from ``runs`` runs."""
    if confidence != CONFIDENCE:
        raise ValueError("only the 90% bound is tabulated")
    dof = runs - 1
    if dof < 1:
        return math.inf
    if dof <= len(_CHI2_010):
        quantile = _CHI2_010[dof - 1]
    else:  # Wilson-Hilferty, accurate beyond 30 degrees of freedom
        quantile = dof * (1 - 2 / (9 * dof) - 1.2816 * math.sqrt(2 / (9 * dof))) ** 3
    return cv * math.sqrt(dof / quantile)


@dataclass
class Calibration:
    """Honest runs of one backend at one shape, and their per-phase rates."""

    backend: str
    runs: list[Run] = field(default_factory=list)

    @property
    def fill_rate(self) -> float:
        return statistics.median(run.fill_rate for run in self.runs)

    @property
    def access_rate(self) -> float:
        return statistics.median(run.access_rate for run in self.runs)

    @staticmethod
    def _cv(values: list[float]) -> float:
        return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0

    @property
    def fill_cv(self) -> float:
        return self._cv([run.fill_rate for run in self.runs])

    @property
    def access_cv(self) -> float:
        return self._cv([run.access_rate for run in self.runs])

    @property
    def verified(self) -> bool | None:
        """True when every self-checked run passed, False when one failed, None when none was checked."""
        checked = [run.verified for run in self.runs if run.verified is not None]
        return all(checked) if checked else None

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "runs": len(self.runs), "fill_macs_per_s": self.fill_rate,
                "access_macs_per_s": self.access_rate, "fill_cv": self.fill_cv, "access_cv": self.access_cv,
                "fill_s": [run.fill_s for run in self.runs], "access_s": [run.access_s for run in self.runs],
                "verified": self.verified, "shape": _shape(self.runs[-1]) if self.runs else None,
                "verify": [run.as_dict() for run in self.runs if run.verified is not None]}


def _shape(run: Run) -> dict[str, int]:
    return {"n": run.n, "b": run.b, "m": run.m, "steps": run.steps}


def calibrate(backend: ArrayBackend, make_spec: SpecFactory, runs: int, *, verify_runs: int = 1,
              verify_samples: int | None = None, progress: Progress | None = None, warm: bool = True,
              on_run: Callable[[int, Run], None] | None = None) -> Calibration:
    """``runs`` honest runs of fresh challenges from ``make_spec`` (the first ``verify_runs``
    of them opened and verified with ``verify_samples`` per phase, default the
    first-verification count), after a warm-up proof."""
    first = make_spec()
    if warm:
        warm_up(backend, first.n, first.b)
    result = Calibration(backend.name)
    for index in range(runs):
        spec = first if index == 0 else make_spec()
        check = (verify_samples or samples_needed()) if index < verify_runs else None
        run = honest_run(spec, backend, verify_samples=check, progress=progress, label=f"run {index + 1}/{runs}")
        result.runs.append(run)
        if on_run is not None:
            on_run(index, run)
    return result


# --- the window ------------------------------------------------------------------------------


class WindowRefused(ValueError):
    """The measured variance does not allow a window that refuses the cheats: no row."""


@dataclass(frozen=True)
class Window:
    low: float
    high: float
    cv: float  # the larger phase cv measured
    cv_bound: float  # its 90% upper confidence limit
    runs: int
    k: float = K_SIGMA
    spread: float = DEVICE_SPREAD
    source: str = "derived"  # "derived", or "limit": the widest window a GPU row may have (nothing derived)

    def refuses(self, ratio: float) -> bool:
        return not self.low <= ratio <= self.high

    def as_dict(self) -> dict[str, Any]:
        return {"window_low": self.low, "window_high": self.high, "cv": self.cv, "cv_bound": self.cv_bound,
                "runs": self.runs, "k_sigma": self.k, "device_spread": self.spread, "source": self.source}


def derive_window(fill_cv: float, access_cv: float, runs: int, *, k: float = K_SIGMA, spread: float = DEVICE_SPREAD,
                  limit: float | None = MAX_WINDOW_HIGH) -> Window:
    """The window the measured variance justifies (module docstring); ``WindowRefused`` when
    there are fewer than MIN_RUNS runs or when ``window_high`` would reach ``limit``
    (None: no limit, the devnet's CPU row)."""
    cv = max(fill_cv, access_cv)
    if runs < MIN_RUNS:
        raise WindowRefused(f"{runs} run(s) cannot estimate the variance: run at least {MIN_RUNS} (--runs)")
    bound = cv_upper_bound(cv, runs)
    high = (1 + spread) * (1 + k * bound)
    if limit is not None and high >= limit:
        raise WindowRefused(
            f"the runs vary too much: cv {cv:.1%} (90% bound {bound:.1%} over {runs} runs) gives window_high "
            f"{high:.2f} >= {limit:g}, which would let one GPU answer two claims; re-measure on an idle device "
            f"or with more runs (cv must stay below {((limit / (1 + spread)) - 1) / k:.1%})")
    return Window(low=min(WINDOW_LOW_MAX, 1 / high), high=high, cv=cv, cv_bound=bound, runs=runs, k=k, spread=spread)


def limit_window(runs: int = 0) -> Window:
    """The widest window any GPU row may have: the separation table's judge when none was derived."""
    return Window(low=WINDOW_LOW_MAX, high=MAX_WINDOW_HIGH, cv=math.nan, cv_bound=math.nan, runs=runs, source="limit")


# --- the gpus.toml row ---------------------------------------------------------------------------


def _toml_float(value: float) -> str:
    text = f"{value:.4g}"
    return text if any(c in text for c in ".en") else text + ".0"


def render_row(calibration: Calibration, window: Window, *, n: int, b: int, steps_per_matrix: int,
               device: "DeviceSpec | None" = None, model: GpuModel | None = None, row_id: str | None = None) -> str:
    """A ``gpus.toml`` ``[[gpu]]`` row with the measured rates and the derived window, ``calibrated = true``.

    The identification fields (name pattern, memory and clock ranges, compute capability,
    multiplier) are the matched ``model``'s when there is one, else derived from ``device``
    (review them). The devnet's CPU row keeps its table window: the devnet shares one CPU
    with every process of the subnet, so its window is wide by design. The text is
    validated as a ``GpuModel`` before it is returned.
    """
    if device is None and model is None:
        raise ValueError("render_row needs the device or its table row")
    devnet = model.devnet_only if model is not None else device is not None and device.kind == "cpu"
    lines = ["[[gpu]]", f'id = "{row_id or (model.id if model else _row_id(device))}"']
    if model is not None:
        lines += [f"name_pattern = '{model.name_pattern}'", f"memory_gb_min = {model.memory_gb_min}",
                  f"memory_gb_max = {model.memory_gb_max}"]
        if model.sm_count is not None:
            lines.append(f"sm_count = {model.sm_count}")
        lines += [f"sm_clock_mhz_min = {model.sm_clock_mhz_min}", f"sm_clock_mhz_max = {model.sm_clock_mhz_max}",
                  f'compute_capability = "{model.compute_capability}"']
        multiplier = model.compute_multiplier
    else:
        assert device is not None
        memory = device.memory_bytes / GIB
        lines += [f"name_pattern = '{re.escape(device.name)}'", f"memory_gb_min = {memory * 0.98:.4g}",
                  f"memory_gb_max = {memory * 1.02:.4g}"]
        if device.kind != "cpu":
            lines.append(f"sm_count = {device.sm_count}")
        lines += [f"sm_clock_mhz_min = {max(1, int(device.max_sm_clock_mhz * 0.9))}",
                  f"sm_clock_mhz_max = {int(device.max_sm_clock_mhz * 1.1) + 1}",
                  f'compute_capability = "{device.compute_capability}"']
        multiplier = 0.001 if devnet else 1.0
    low, high = (model.window_low, model.window_high) if devnet and model is not None else (window.low, window.high)
    lines += [f"graval_n = {n}", f"graval_b = {b}", f"graval_steps_per_matrix = {steps_per_matrix}",
              f"fill_macs_per_s = {_toml_float(calibration.fill_rate)}",
              f"access_macs_per_s = {_toml_float(calibration.access_rate)}",
              "calibrated = true",
              f"window_low = {low:.3f}" if not devnet else f"window_low = {low:g}",
              f"window_high = {high:.3f}" if not devnet else f"window_high = {high:g}",
              f"compute_multiplier = {multiplier:g}" + ("" if model else "  # set by price and throughput, H100 = 1.0"),
              f"devnet_only = {'true' if devnet else 'false'}"]
    text = "\n".join(lines) + "\n"
    _validate(text)
    return text


def _row_id(device: "DeviceSpec | None") -> str:
    name = device.name if device is not None else "new_gpu"
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_")
    return (slug or "new_gpu")[:32]


def _validate(text: str) -> GpuModel:
    try:
        import tomllib  # noqa: PLC0415
    except ModuleNotFoundError:  # Python 3.10 on a GPU host: the kit provides tomli
        import tomli as tomllib  # type: ignore[no-redef]  # noqa: PLC0415 - tomllib's API, under its PyPI name
    return GpuModel.model_validate(tomllib.loads(text)["gpu"][0])
