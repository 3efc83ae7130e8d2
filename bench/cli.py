"""Start-up time of the ``canopy`` CLI: ``canopy --help`` and ``canopy run --help`` as a chute
author runs them, against the eager CLI measured in the same run.

The baseline is what the CLI did before its command groups loaded lazily: import every
group's module (the node stack: bittensor, the store, torch...) and then print the help.
Each figure is the median wall time of ``--repeat`` fresh interpreter starts; the ratio is
lazy / eager. Target: ``canopy --help`` under 0.5 s (the issue's bar on the 2-core CI box).

    .venv/bin/python bench/cli.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from report import print_last_line, print_table, progress, verdict

REPO = Path(__file__).resolve().parents[1]
#: The eager CLI of before: every command group imported before the root help prints.
EAGER = ("from canopy.cli.main import COMMANDS, app, load_command\n"
         "for name in COMMANDS: load_command(name)\n"
         "app(['--help'])")
LAZY_HELP = "from canopy.cli.main import app; app(['--help'])"
LAZY_RUN_HELP = "from canopy.cli.main import app; app(['run', '--help'])"
#: Modules that the SDK's commands must never import (the node stack).
NODE_PACKAGES = ("bittensor", "sqlalchemy", "torch", "chain", "protocol", "node", "store", "miner", "validator", "api")


def wall_seconds(code: str, repeat: int) -> float:
    """Median wall time of ``python -c code`` over ``repeat`` fresh interpreters."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def node_modules_loaded(code: str) -> list[str]:
    """The node packages that ``code`` leaves in sys.modules (none for the SDK's commands)."""
    probe = (f"import sys\ntry:\n    {code.replace(chr(10), chr(10) + '    ')}\nexcept SystemExit:\n    pass\n"
             f"print('NODE:', *sorted({{m.split('.')[0] for m in sys.modules}} & set({list(NODE_PACKAGES)!r})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False).stdout
    marked = [line for line in out.splitlines() if line.startswith("NODE:")]
    assert marked, f"the probe printed no NODE: line: {out[-500:]}"
    return marked[-1].split()[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="fresh interpreter starts per figure (median)")
    args = parser.parse_args()
    console = Console(stderr=True)
    results: dict = {}
    with progress(console) as bar:
        task = bar.add_task("timing the CLI", total=4)
        results["python_bare_s"] = wall_seconds("pass", args.repeat)
        bar.advance(task)
        results["eager_help_s"] = wall_seconds(EAGER, args.repeat)
        bar.advance(task)
        results["canopy_help_s"] = wall_seconds(LAZY_HELP, args.repeat)
        bar.advance(task)
        results["canopy_run_help_s"] = wall_seconds(LAZY_RUN_HELP, args.repeat)
        bar.advance(task)
    results["help_vs_eager"] = results["canopy_help_s"] / results["eager_help_s"]
    results["node_packages_imported_by_help"] = node_modules_loaded(LAZY_HELP) + node_modules_loaded(LAZY_RUN_HELP)
    targets = {"canopy_help_s": "< 0.5", "help_vs_eager": "< 0.5", "node_packages_imported_by_help": "none"}
    met = {"canopy_help_s": results["canopy_help_s"] < 0.5, "help_vs_eager": results["help_vs_eager"] < 0.5,
           "node_packages_imported_by_help": not results["node_packages_imported_by_help"]}
    print_table("canopy CLI start-up (median wall seconds)", results,
                {name: (targets[name], met[name]) for name in targets})
    verdict(results, targets, met)
    print_last_line(results)


if __name__ == "__main__":
    main()
