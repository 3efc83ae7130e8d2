"""The neurons in tests: ``python -m neurons.<role>`` as real processes, as pm2 runs them.

Each runs from the repository root with ``CANOPY_HOME`` set to the test's folder (its
wallets, devnet file and logs), stdout and stderr merged into one text pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def start_neuron(role: str, home: Path, *flags: str, **kwargs) -> subprocess.Popen:
    """Start ``python -m neurons.<role> FLAGS`` (``miner``, ``validator``, ``api``, ``demo_cheater``)."""
    env = {**os.environ, "CANOPY_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", f"neurons.{role}", *flags],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    """Wait for ``process`` to exit: its exit code and everything it printed."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output
