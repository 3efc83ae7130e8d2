"""Benchmark of GraVal: the miner's prover against plain GEMMs, and the validator's verifier cost.

Run from the repo root: ``.venv/bin/python bench/graval.py [--backend auto] [--n 4096] [--m 10] [--no-prod]``.
Callers: developers and CI. Everything runs in this one process:

- ``prove_s``: wall time of ``Prover.prove()`` (miner/graval/prover.py) for one challenge of
  size n (b = n/64, m matrices, steps = 16 m access steps), Merkle hashing included, after
  a small warm-up proof (n = 256) so that library start-up (BLAS threads, CUDA context,
  kernels) is not counted. ``fill_s``, ``access_s``, ``hash_s`` are the prover's own phase
  timings; ``other_s`` is the rest (generating G, X_0 and the noise vectors).
- ``plain_matmul_s``: the same products as bare GEMMs on the same backend, m (n x n)@(n x n)
  and ``steps`` (n x n)@(n x b), on operands generated beforehand (not timed): no
  reduction, no S-box, no hashing. ``prover_efficiency = plain_matmul_s / prove_s``.
- ``verify_s``: the validator's CPU time (``time.process_time``) for ``pick_samples`` +
  ``leaves_for`` + ``verify`` with ``--samples`` samples (default ``samples_needed()``, the
  count for 1e-6 soundness); the prover's ``open()`` is reported as ``open_s`` and not
  counted, nor is parsing the openings off the wire (``openings_parse_cpu_s``, shown apart).
  ``verify_ratio = verify_s / prove_s``. The run exits non-zero if a verdict is not ok.
- production size: a real proof at n = ``--prod-n`` (16384) with a short chain (m = 2, 4
  steps, b = n/64), then the verifier on it as above with the full sample count:
  ``prod_verify_cpu_s`` per device challenge and ``devices_per_hour_one_core`` = 3600 / that.
  The verifier's cost does not depend on m or steps: per sample it touches O(n) data (two
  or three opened rows/columns with log2 n Merkle siblings each, one generated hash
  row/column, one length-n dot product mod p), so a short chain costs it what a full-length
  one does. On a CPU this proof takes minutes (float64 GEMMs of 16384^3); a progress bar
  goes to stderr. If memory is short (float64 needs ~8 n^2 (m + 4) bytes), the largest
  power of two that fits is used and recorded as ``prod_n``. ``--no-prod`` skips this part.

Targets: prover_efficiency >= 0.8, verify_ratio <= 0.01, devices_per_hour_one_core >= 2048.
With ``--repeats`` > 1 the default-size numbers are medians. Prints a rich table, then as
its last line one JSON object with every number.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

# Keep the import path like bench/protocol.py does: repo root first, bench/ dropped, so the
# packages (protocol, miner, validator) resolve to the tree and not to files in bench/.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

from rich.console import Console  # noqa: E402

from bench.report import print_last_line, print_table, progress  # noqa: E402
from miner.graval.backends import pick_backend  # noqa: E402
from miner.graval.prover import Prover  # noqa: E402
from protocol.graval.spec import ChallengeSpec, samples_needed  # noqa: E402
from protocol.graval.synapses import Commitment, Openings  # noqa: E402
from validator.graval.verifier import leaves_for, pick_samples, verify  # noqa: E402

TARGETS = {"prover_efficiency": 0.8, "verify_ratio": 0.01, "devices_per_hour_one_core": 2048}
UUID = "GPU-00000000-bench-graval"
SETTLE_S = 0.5  # let BLAS/OpenMP worker threads stop spinning before the verifier's CPU time is read


def make_spec(n: int, m: int, steps: int, b: int | None = None) -> ChallengeSpec:
    return ChallengeSpec.fresh(UUID, n=n, b=b or max(8, n // 64), m=m, steps=steps)


def timed_prove(spec: ChallengeSpec, backend: Any, progress: Any = None) -> tuple[Prover, Commitment, float]:
    prover = Prover(spec, backend, progress=progress)
    started = time.perf_counter()
    commitment = prover.prove()
    backend.synchronize()
    return prover, commitment, time.perf_counter() - started


def prove_with_progress(spec: ChallengeSpec, backend: Any, console: Console) -> tuple[Prover, Commitment, float]:
    with progress(console) as bar:
        task = bar.add_task(f"proving n={spec.n}: fill", total=spec.m + spec.steps)

        def tick(phase: str, done: int, total: int) -> None:
            bar.update(task, completed=done if phase == "fill" else spec.m + done, description=f"proving n={spec.n}: {phase}")

        return timed_prove(spec, backend, tick)


def plain_matmul_s(spec: ChallengeSpec, backend: Any) -> float:
    """The prover's GEMMs alone: m fill products and ``steps`` access products."""
    a = backend.generate((1, 2), spec.n, spec.n)
    g = backend.generate((3, 4), spec.n, spec.n)
    x = backend.generate((5, 6), spec.n, spec.b)
    backend.synchronize()
    started = time.perf_counter()
    for _ in range(spec.m):
        out = backend.plain_matmul(a, g)
        backend.synchronize()  # the prover synchronizes after every fill step too
        del out
    for _ in range(spec.steps):
        out = backend.plain_matmul(a, x)
        del out
    backend.synchronize()
    return time.perf_counter() - started


def time_verify(spec: ChallengeSpec, prover: Prover, commitment: Commitment, count: int) -> dict:
    """The validator's CPU seconds for one device challenge (the prover's opening not counted)."""
    time.sleep(SETTLE_S)
    cpu = time.process_time()
    samples = pick_samples(spec, count)
    refs = leaves_for(spec, commitment, samples)
    picked = time.process_time() - cpu
    started = time.perf_counter()
    openings = prover.open(refs)
    open_s = time.perf_counter() - started
    wire = openings.model_dump_json()
    time.sleep(SETTLE_S)
    cpu = time.process_time()
    parsed = Openings.model_validate_json(wire)
    parse_s = time.process_time() - cpu
    cpu = time.process_time()
    verdict = verify(spec, commitment, samples, parsed)
    verify_s = picked + time.process_time() - cpu
    if not verdict.ok:
        raise SystemExit(f"graval bench: the verifier rejected an honest proof at n={spec.n} "
                         f"(backend {prover.backend.name}): {verdict.reason}: {verdict.detail}")
    return {"verify_s": verify_s, "open_s": open_s, "parse_s": parse_s, "leaves": len(refs)}


def memory_need(backend: Any, n: int, m: int) -> tuple[int, int | None]:
    """(bytes a proof at n needs, bytes available) for the backend's storage."""
    if backend.name == "torch-cuda":  # int8 storage; generation peaks at ~40 bytes per entry
        return n * n * (m + 42), backend.torch.cuda.mem_get_info(backend.device)[0]
    if backend.name == "cupy":
        return 8 * n * n * (m + 4), backend.xp.cuda.runtime.memGetInfo()[0]
    try:
        with open("/proc/meminfo") as meminfo:
            return 8 * n * n * (m + 4), next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 8 * n * n * (m + 4), None


def production(args: argparse.Namespace, backend: Any, count: int, console: Console) -> dict:
    n, m, steps = args.prod_n, args.prod_m, args.prod_steps
    need, free = memory_need(backend, n, m)
    while free is not None and need > free and n > 256:
        n //= 2
        need = memory_need(backend, n, m)[0]
    if n != args.prod_n:
        console.print(f"[yellow]not enough memory for --prod-n {args.prod_n} on {backend.name} "
                      f"({memory_need(backend, args.prod_n, m)[0] / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB "
                      f"available): the production part runs at n={n} instead")
    spec = make_spec(n, m, steps, max(8, n // 64))
    console.print(f"production-size proof: n={n}, b={spec.b}, m={m}, steps={steps} on {backend.name} "
                  f"(~{need / 2**30:.1f} GiB; minutes on a CPU)")
    prover, commitment, prove_s = prove_with_progress(spec, backend, console)
    checked, timings = time_verify(spec, prover, commitment, count), prover.timings
    prover.release()
    return {
        "prod_n": n, "prod_n_requested": args.prod_n, "prod_b": spec.b, "prod_matrices": m, "prod_steps": steps,
        "prod_prove_s": prove_s, "prod_fill_s": timings.fill_s, "prod_access_s": timings.access_s,
        "prod_hash_s": timings.hash_s, "prod_open_s": checked["open_s"], "prod_leaves": checked["leaves"],
        "prod_openings_parse_cpu_s": checked["parse_s"], "prod_verify_cpu_s": checked["verify_s"],
        "devices_per_hour_one_core": 3600 / checked["verify_s"],
    }


def report(results: dict) -> None:
    checks = {
        "prover_efficiency": (f">= {TARGETS['prover_efficiency']:g}", results["meets_targets"]["prover_efficiency"]),
        "verify_ratio": (f"<= {TARGETS['verify_ratio']:g}", results["meets_targets"]["verify_ratio"]),
        "devices_per_hour_one_core": (f">= {TARGETS['devices_per_hour_one_core']:g}",
                                      results["meets_targets"]["devices_per_hour_one_core"]),
    }
    print_table(f"GraVal benchmark ({results['backend']})", results, checks, digits=4)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="auto", choices=("auto", "numpy", "torch-cpu", "torch-cuda", "cupy"))
    parser.add_argument("--n", type=int, default=4096, help="matrix size of the timed proof (power of two)")
    parser.add_argument("--b", type=int, default=None, help="state width (default n//64, at least 8)")
    parser.add_argument("--m", type=int, default=10, help="matrices filled (the verifier's cost does not depend on m)")
    parser.add_argument("--steps", type=int, default=None, help="access steps (default 16*m)")
    parser.add_argument("--samples", type=int, default=None, help="verifier samples (default samples_needed())")
    parser.add_argument("--prod-n", type=int, default=16384, help="matrix size of the production-size proof")
    parser.add_argument("--prod-m", type=int, default=2, help="matrices of the production-size proof")
    parser.add_argument("--prod-steps", type=int, default=4, help="access steps of the production-size proof")
    parser.add_argument("--repeats", type=int, default=1, help="default-size runs (medians reported)")
    parser.add_argument("--no-prod", dest="prod", action="store_false", help="skip the production-size part")
    args = parser.parse_args(argv)
    b = args.b or max(8, args.n // 64)
    steps = args.steps or 16 * args.m
    count = args.samples or samples_needed()
    console = Console(stderr=True)

    backend = pick_backend(args.backend)
    console.print(f"backend {backend.name}: warm-up proof at n=256")
    prover, commitment, _ = timed_prove(make_spec(256, 2, 2), backend)
    time_verify(prover.spec, prover, commitment, count)
    prover.release()
    del prover

    names = ("prove_s", "fill_s", "access_s", "hash_s", "other_s", "plain_matmul_s", "verify_s", "open_s", "openings_parse_cpu_s")
    runs: dict[str, list[float]] = {name: [] for name in names}
    leaves = 0
    for repeat in range(args.repeats):
        spec = make_spec(args.n, args.m, steps, b)
        console.print(f"run {repeat + 1}/{args.repeats}: n={spec.n}, b={spec.b}, m={spec.m}, steps={spec.steps}")
        prover, commitment, prove_s = timed_prove(spec, backend)
        t = prover.timings
        checked = time_verify(spec, prover, commitment, count)
        prover.release()
        del prover
        gc.collect()
        plain, leaves = plain_matmul_s(spec, backend), checked["leaves"]
        for name, value in (("prove_s", prove_s), ("fill_s", t.fill_s), ("access_s", t.access_s), ("hash_s", t.hash_s),
                            ("other_s", t.total_s - t.fill_s - t.access_s - t.hash_s), ("plain_matmul_s", plain),
                            ("verify_s", checked["verify_s"]), ("open_s", checked["open_s"]),
                            ("openings_parse_cpu_s", checked["parse_s"])):
            runs[name].append(value)

    results: dict[str, Any] = {"backend": backend.name, "n": args.n, "b": b, "matrices": args.m, "steps": steps,
                               "repeats": args.repeats, "samples": count, "leaves_opened": leaves}
    results.update({name: statistics.median(values) for name, values in runs.items()})
    results["work_gmacs"] = make_spec(args.n, args.m, steps, b).work_macs / 1e9
    results["prover_efficiency"] = results["plain_matmul_s"] / results["prove_s"]
    results["verify_ratio"] = results["verify_s"] / results["prove_s"]
    if args.prod:
        results.update(production(args, backend, count, console))
    else:
        results.update({"prod_n": None, "prod_prove_s": None, "prod_verify_cpu_s": None, "devices_per_hour_one_core": None})
    per_hour = results["devices_per_hour_one_core"]
    results["targets"] = TARGETS
    results["meets_targets"] = {
        "prover_efficiency": results["prover_efficiency"] >= TARGETS["prover_efficiency"],
        "verify_ratio": results["verify_ratio"] <= TARGETS["verify_ratio"],
        "devices_per_hour_one_core": None if per_hour is None else per_hour >= TARGETS["devices_per_hour_one_core"],
    }
    report(results)
    print_last_line(results)


if __name__ == "__main__":
    main()
