"""Benchmark of the validator: full steps against 256 simulated miners, and the CPU of re-verification.

Run from the repo root: ``.venv/bin/python bench/validator.py [--miners 256] [--devices 8] [--steps 3]``
(``./run.sh bench validator``). This module is the entry point
and the report (seam: flags, roles, targets, the table and the last JSON line); the
measuring is done by its siblings, each in its own process so that the validator's CPU
and RSS are its own (this script re-run with ``--role NAME`` for the children):

- ``bench/validator_sim.py`` (``--role sim``): ONE aiohttp server answering for every
  simulated miner (Inventory, DeviceInfo, Ping, real numpy proofs for Prove/Access/Open, Invoke);
- ``bench/validator_prefill.py`` (``--role prefill``): the SQLite store as a week at the
  default schedule left it (~1M invocations, an hourly GraVal history of every device),
  and the organic traffic the API adds between two measured steps;
- ``bench/validator_steps.py`` (this process): the ``Validator`` restored from that store,
  a restart step, then ``--steps`` steady-state steps with ``wait=True``: ``restart_step_s``,
  ``step_s``, its parts (``sync_s``, ``inventory_s``, ``rounds_s``, ``verify_round_s``,
  ``synthetic_round_s``, ``score_s`` with ``activity_s`` the incremental
  ``ActivityWindow.current`` and ``activity_full_s`` its start-up full read,
  ``latest_verifications_s``, ``weights_s``), ``step_cpu_s``, the ``inventory_fanout_s``
  baseline and ``step_over_fanout``, ``prune_s``, ``rss_mb``;
- ``bench/validator_verify.py`` (``--role verify-cost``): the validator's exact CPU to
  re-verify one production-size (H100) device, ``verify_cpu_s_per_device``, and
  ``verify_cpu_s_per_hour`` at the default schedule (miners x devices an hour).

Each module's docstring defines its figures. Targets: step_s <= 60,
verify_cpu_s_per_hour <= 900 (25% of one core). A missed target is printed, the exit code
stays 0; a failed verification or synthetic call of an honest simulated miner exits 1.
Prints a rich table, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

# Keep the import path like the other benchmarks: repo root first, bench/ dropped, so the
# packages (validator, miner, protocol) resolve to the tree and not to files in bench/.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

from rich.console import Console  # noqa: E402

TARGETS = {"step_s": 60.0, "verify_cpu_s_per_hour": 900.0}
SCRIPT = Path(__file__).resolve()


def parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--miners", type=int, default=256, help="simulated miners")
    parser.add_argument("--devices", type=int, default=8, help="CPU pseudo-devices per miner (16 MiB each)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (the median is reported)")
    parser.add_argument("--organic-per-miner-hour", type=float, default=12.0,
                        help="organic invocations per miner and hour (prefilled, and fed between the steps)")
    parser.add_argument("--verification-history-hours", type=int, default=168,
                        help="hourly GraVal results prefilled per device (168: the whole scoring window)")
    parser.add_argument("--fanout-repeats", type=int, default=3, help="bare Inventory fan-outs before each measured step")
    parser.add_argument("--sim-workers", type=int, default=os.cpu_count() or 1, help="prover processes of the simulator")
    parser.add_argument("--block-time", type=float, default=12.0, help="devnet seconds per block")
    parser.add_argument("--verify-n", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="more matrix sizes for the verifier's cost-vs-n fit (16384 is always measured)")
    parser.add_argument("--verify-repeats", type=int, default=9, help="timed checks per size (the median is used)")
    parser.add_argument("--check-n", type=int, default=1024, help="cross-check: size of the real proof")
    parser.add_argument("--check-m", type=int, default=16, help="cross-check: matrices of the real proof")
    parser.add_argument("--check-steps", type=int, default=256, help="cross-check: access steps of the real proof")
    parser.add_argument("--prover-backend", default="numpy", choices=("auto", "numpy", "torch-cpu", "torch-cuda", "cupy"),
                        help="the cross-check's prover")
    parser.add_argument("--prod", action="store_true",
                        help="cross-check with a real proof at n=16384 (m=2, 4 steps): minutes and ~13 GB on a CPU")
    parser.add_argument("--prod-memory-gib", type=float, default=81559 / 1024, help="H100 memory for the production m and steps")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (store, chain) and print its path")
    parser.add_argument("--verbose", action="store_true", help="show the validator's INFO logs")
    parser.add_argument("--role", choices=("sim", "prefill", "verify-cost"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    return parser, parser.parse_args(argv)


def run_role(role: str, config: str) -> None:
    """A child process: the simulated miners, the store prefill or the verifier-cost measurement."""
    import uvloop

    if role == "sim":
        from bench.validator_sim import serve_sim

        uvloop.run(serve_sim(config))
    elif role == "prefill":
        from bench.validator_prefill import prefill

        uvloop.run(prefill(config))
    else:
        from bench.validator_verify import verify_cost

        verify_cost(config)


def report(args: argparse.Namespace, results: dict, console: Console) -> None:
    from bench.report import print_last_line, print_table, verdict

    verdict(results, TARGETS, {name: results[name] <= limit for name, limit in TARGETS.items()})
    checks = {name: (f"<= {limit:g}", results["met"][name]) for name, limit in TARGETS.items()}
    print_table(f"canopy validator benchmark ({args.miners} miners x {args.devices} devices)", results, checks)
    for name, met in results["met"].items():
        if not met:
            console.print(f"[red]target missed: {name} = {results[name]:.3f} > {TARGETS[name]:g}")
    print_last_line(results)


def main(argv: Sequence[str] | None = None) -> None:
    parser, args = parse(argv)
    from loguru import logger

    logger.remove()
    if args.role:
        run_role(args.role, args.config)
        return
    logger.add(sys.stderr, level="INFO" if args.verbose else "WARNING")
    if args.miners < 1 or args.devices < 1 or args.steps < 1:
        parser.error("--miners, --devices and --steps must be at least 1")

    import uvloop

    from bench.validator_steps import measure
    from bench.validator_verify import reverify_cost

    console = Console(stderr=True)
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="canopy-bench-validator-"))
    try:
        results = uvloop.run(measure(args, workdir, console, SCRIPT))
        console.print("verifier: CPU per device challenge at production shape (a fresh process)")
        results.update(reverify_cost(args, workdir, SCRIPT, args.miners, args.devices, results["reverify_s"]))
    except RuntimeError as error:
        console.print(f"[red]validator bench failed: {error}")
        raise SystemExit(1) from None
    finally:
        if args.keep:
            console.print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["bench_wall_s"] = time.perf_counter() - began
    report(args, results, console)


if __name__ == "__main__":
    main()
