"""The miner side of GraVal: array backends, the prover, and the axon handlers."""
