"""Small chutes the miner tests host in real instance processes (see tests/miner/test_*.py)."""
