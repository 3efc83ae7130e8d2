"""The embedded devnet: a local chain in one SQLite file (see ledger.py) and its Chain adapter."""

from chain.devnet.chain import DevnetChain
from chain.devnet.ledger import DevnetLedger, epoch_blocks

__all__ = ["DevnetChain", "DevnetLedger", "epoch_blocks"]
