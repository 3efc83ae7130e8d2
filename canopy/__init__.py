"""Canopy: the chute SDK and the shared core (config, wallets, logging, CLI)."""

__version__ = "0.1.0"
