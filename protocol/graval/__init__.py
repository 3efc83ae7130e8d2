"""GraVal, the open GPU verification both sides share (DESIGN.md decision 4).

``field`` (Z_251 arithmetic, keyed counter hash, S-box), ``spec`` (the challenge and its
derived quantities), ``merkle`` (row/column commitments), ``devices`` (device specs and
the supported-GPU table, ``gpus.toml``), ``synapses`` (Inventory, DeviceInfo, Prove,
Open). The prover is ``miner.graval``; the verifier ``validator.graval``.
"""
