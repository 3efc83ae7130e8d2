"""Tests for the wire (protocol/): axon, dendrite, nonce stores, admission, devnet integration."""
