"""The devnet tests' dishonest miner: ``canopy/demo_cheater.py`` (random GraVal roots), run as a script."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from canopy.demo_cheater import main  # noqa: E402

if __name__ == "__main__":
    main()
