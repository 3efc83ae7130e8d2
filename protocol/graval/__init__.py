"""GraVal, the open GPU verification both sides share (DESIGN.md decision 4).

``field`` (Z_251 arithmetic, keyed counter hash, S-box), ``spec`` (the challenge and its
derived quantities), ``lattice`` (the lattice-hash Merkle commitments and the array seam
``ArrayOps`` they run on), ``devices`` (device specs and the supported-GPU table,
``gpus.toml``), ``synapses`` (Inventory, DeviceInfo, Prove, Access, Open), ``verifier``
(the checks of an opened proof). The prover is ``miner.graval``; the round that runs the
checks over the wire is ``validator.graval``.
"""
