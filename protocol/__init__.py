"""The wire between validator and miner (DESIGN.md decision 3).

Modules: ``synapse`` (request/response models, protocol version), ``errors`` (typed JSON
errors), ``nonces`` (replay protection stores), ``admission`` (stake-priority load
shedding), ``axon`` (miner-side server), ``dendrite`` (validator-side client). Callers
import the module they need, e.g. ``from protocol.axon import Axon``; this package
imports nothing so that models can be used without loading the HTTP stack.
"""
