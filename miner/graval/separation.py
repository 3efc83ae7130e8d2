"""The GraVal separation table: what a timing window refuses, measured on a backend.

The seam between the dishonest provers (``miner.graval.adversaries``) and whatever judges a
``gpus.toml`` window. Each row times a cheat's phases against the honest median of the same
shape on the same device: half the matrices (Belady rebuilds), 90% of them, and two claims
answered by one device (two threads, and two processes that share no interpreter lock).
"""

from __future__ import annotations

import math
import secrets
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from miner.graval.backends import ArrayBackend
from miner.graval.calibration import MIN_RUNS, Progress, Run, SpecFactory, Window, _labelled, honest_run, warm_up
from miner.graval.prover import ProofCancelled, Prover
from protocol.graval.spec import ChallengeSpec

def table_shape(production: SpecFactory, same_shape: bool, uuid: str, n: int, b: int, matrices: int,
                steps_per_matrix: int, honest: list[Run]) -> tuple[SpecFactory, list[Run] | None]:
    """The challenge the separation table runs and the honest runs it compares against: the
    production challenge and its calibration runs when the table is that size (``same_shape``),
    else ``matrices`` matrices of the same n, b and steps per matrix, measured afresh (None)."""
    if same_shape:
        return production, honest

    def smaller() -> ChallengeSpec:
        return ChallengeSpec.fresh(uuid, n=n, b=b, m=matrices, steps=steps_per_matrix * matrices)

    return smaller, None


#: A cheat's phase is stopped once it has taken this many times the honest median: it is
#: then outside every window a GPU row may have (< 2), and waiting longer only costs time.
CHEAT_CAP = 3.0


@dataclass
class SeparationRow:
    case: str
    fill_ratio: float  # phase time / the honest median at the same shape
    access_ratio: float
    refused: bool
    phase: str = ""  # the first phase outside the window
    stopped: bool = False  # a phase was stopped at CHEAT_CAP: its ratio is a lower bound
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "fill_ratio": self.fill_ratio, "access_ratio": self.access_ratio,
                "refused": self.refused, "phase": self.phase, "stopped": self.stopped, "detail": self.detail}


def _judge(case: str, fill_ratio: float, access_ratio: float, window: Window, *, stopped: bool = False,
           detail: str = "") -> SeparationRow:
    phase = next((name for name, ratio in (("fill", fill_ratio), ("access", access_ratio))
                  if not math.isnan(ratio) and window.refuses(ratio)), "")
    return SeparationRow(case, fill_ratio, access_ratio, bool(phase), phase, stopped, detail)


def _timed(work: Callable[[], Any], prover: Prover, limit_s: float | None) -> tuple[float, bool]:
    """Seconds ``work`` took and whether it was stopped at ``limit_s`` (the prover's cancel event)."""
    timer = threading.Timer(limit_s, prover.cancel.set) if limit_s else None
    started = time.perf_counter()
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        work()
        return time.perf_counter() - started, False
    except ProofCancelled:
        return time.perf_counter() - started, True
    finally:
        if timer is not None:
            timer.cancel()


def cheat_run(prover: Prover, fill_median: float, access_median: float, cap: float = CHEAT_CAP) -> tuple[float, float, bool]:
    """(fill ratio, access ratio, stopped) of a dishonest prover against the honest medians;
    a phase is stopped at ``cap`` x its median (its ratio is then a lower bound)."""
    try:
        fill_s, stopped = _timed(prover.fill, prover, cap * fill_median)
        if stopped:
            return fill_s / fill_median, math.nan, True
        access_s, stopped = _timed(lambda: prover.access(secrets.token_bytes(32)), prover, cap * access_median)
        return fill_s / fill_median, access_s / access_median, stopped
    finally:
        prover.release()


def two_claims(backend: ArrayBackend, make_spec: SpecFactory, progress: Progress | None = None) -> list[tuple[float, float]]:
    """One device answering two claims of a sweep: two honest provers of two different
    challenges on the same backend at once (two threads), both phases started together as
    the validator's sweep starts them. Returns each prover's (fill_s, access_s)."""
    provers = [Prover(make_spec(), backend, progress=_labelled(progress, f"two claims ({name})")) for name in "ab"]
    barrier = threading.Barrier(len(provers))
    times: list[list[float]] = [[math.nan, math.nan] for _ in provers]
    errors: list[BaseException] = []

    def claim(index: int) -> None:
        prover = provers[index]
        try:
            barrier.wait()
            prover.fill()
            times[index][0] = prover.timings.fill_s
            barrier.wait()
            prover.access(secrets.token_bytes(32))
            times[index][1] = prover.timings.access_s
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)
            barrier.abort()
        finally:
            prover.release()

    threads = [threading.Thread(target=claim, args=(index,), name=f"graval-claim-{index}") for index in range(len(provers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [error for error in errors if not isinstance(error, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return [(fill_s, access_s) for fill_s, access_s in times]


def _claim_process(backend_name: str, device_index: int, spec_json: str, barrier: Any, results: Any) -> None:
    """One claim in its own process (``two_claims_processes``): warm up, then fill and access
    in step with the other claim's process; puts (fill_s, access_s) or the error text."""
    from miner.graval.backends import pick_backend  # noqa: PLC0415

    try:
        backend = pick_backend(backend_name, device_index)
        spec = ChallengeSpec.model_validate_json(spec_json)
        warm_up(backend, spec.n, spec.b)
        prover = Prover(spec, backend)
        barrier.wait(timeout=600)
        prover.fill()
        barrier.wait(timeout=600)
        prover.access(secrets.token_bytes(32))
        results.put((prover.timings.fill_s, prover.timings.access_s))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        barrier.abort()
        results.put(f"{type(error).__name__}: {error}")


def release_cached_memory(backend: ArrayBackend) -> None:
    """Hand the device memory a CUDA backend's allocator keeps cached back to the driver, so
    that another backend or process can fill the device."""
    import gc  # noqa: PLC0415

    gc.collect()
    backend.release_cached_memory()


def two_claims_processes(backend: ArrayBackend, make_spec: SpecFactory, device_index: int = 0) -> list[tuple[float, float]]:
    """The same two claims as ``two_claims``, each in its own process (its own CUDA context
    and interpreter: no lock shared on the host, as a miner would run them), both phases
    started together. Returns each claim's (fill_s, access_s)."""
    import multiprocessing  # noqa: PLC0415

    release_cached_memory(backend)  # the children allocate their own

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_claim_process, args=(backend.name, device_index, make_spec().model_dump_json(),
                                                            barrier, results), name=f"graval-claim-{index}")
               for index in range(2)]
    for worker in workers:
        worker.start()
    answers = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    failed = [answer for answer in answers if isinstance(answer, str)]
    if failed:
        raise RuntimeError(f"a claim's process failed: {failed[0]}")
    return [(float(fill_s), float(access_s)) for fill_s, access_s in answers]


def separation_table(backend: ArrayBackend, make_spec: SpecFactory, window: Window, *, honest: list[Run] | None = None,
                     honest_runs: int = MIN_RUNS, cap: float = CHEAT_CAP, progress: Progress | None = None,
                     cases: tuple[str, ...] = ("honest", "half memory", "90% memory", "two claims", "two processes"),
                     device_index: int = 0) -> list[SeparationRow]:
    """Per-phase time ratios against the honest median at ``make_spec``'s shape, and whether
    ``window`` refuses each: honest runs, ``Rebuilding`` keeping 50% and 90% of the matrices
    (right answers, slower), and two claims answered at once by this one device, from two
    threads of one process ("two claims") and from two processes ("two processes": no
    interpreter lock shared, so host-bound parts of the phases overlap).
    ``honest``: runs already made at this shape (else ``honest_runs`` are made)."""
    from miner.graval.adversaries import Rebuilding  # noqa: PLC0415 - the attacks, only here

    if not honest:
        probe = make_spec()
        warm_up(backend, probe.n, probe.b)
        honest = [honest_run(make_spec(), backend, progress=progress, label=f"honest {index + 1}/{honest_runs}")
                  for index in range(honest_runs)]
    fill_median = statistics.median(run.fill_s for run in honest)
    access_median = statistics.median(run.access_s for run in honest)
    rows: list[SeparationRow] = []
    if "honest" in cases:
        worst = max(honest, key=lambda run: max(abs(math.log(run.fill_s / fill_median)),
                                                abs(math.log(run.access_s / access_median))))
        rows.append(_judge(f"honest (worst of {len(honest)})", worst.fill_s / fill_median,
                           worst.access_s / access_median, window))
    for case, capacity in (("half memory", 0.5), ("90% memory", 0.9)):
        if case not in cases:
            continue
        spec = make_spec()
        prover = Rebuilding(spec, backend, progress=_labelled(progress, case))
        prover.capacity_fraction = capacity
        fill_ratio, access_ratio, stopped = cheat_run(prover, fill_median, access_median, cap)
        rows.append(_judge(case, fill_ratio, access_ratio, window, stopped=stopped,
                           detail=f"keeps {prover.capacity} of {spec.m} matrices, rebuilt {prover.rebuilt}"
                                  + (f" before the stop at {cap:g}x" if stopped else "")))
    if "two claims" in cases:
        for name, (fill_s, access_s) in zip("ab", two_claims(backend, make_spec, progress)):
            rows.append(_judge(f"two claims ({name})", fill_s / fill_median, access_s / access_median, window,
                               detail="two challenges at once on one device, two threads"))
    if "two processes" in cases:
        for name, (fill_s, access_s) in zip("ab", two_claims_processes(backend, make_spec, device_index)):
            rows.append(_judge(f"two processes ({name})", fill_s / fill_median, access_s / access_median, window,
                               detail="two challenges at once on one device, two processes"))
    return rows


def all_cheats_refused(rows: list[SeparationRow]) -> bool:
    return all(row.refused for row in rows if not row.case.startswith("honest"))


def honest_accepted(rows: list[SeparationRow]) -> bool:
    return all(not row.refused for row in rows if row.case.startswith("honest"))


def format_table(rows: list[SeparationRow], window: Window) -> str:
    """A plain-text separation table (the CLI draws a rich one)."""
    lines = [f"separation (window {window.low:.2f}-{window.high:.2f}, {window.source}):",
             f"  {'case':<22} {'fill x':>8} {'access x':>9}  verdict"]
    for row in rows:
        access = "n/a" if math.isnan(row.access_ratio) else f"{row.access_ratio:.2f}" + ("+" if row.stopped else "")
        verdict = f"refused ({row.phase})" if row.refused else "accepted"
        lines.append(f"  {row.case:<22} {row.fill_ratio:>8.2f} {access:>9}  {verdict}  {row.detail}")
    return "\n".join(lines)


