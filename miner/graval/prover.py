"""The miner's GraVal prover: run a challenge on one device, commit, then answer openings.

Called by the miner's GraVal synapse handlers (``miner.graval.service``), the calibration
command and ``bench/graval.py``. ``Prover.prove()`` runs the fill and access phases of
``protocol.graval.spec`` on a backend, builds a Merkle tree per matrix and per state,
and returns the roots; the matrices stay resident and the access states stay on the host
until ``open()`` has answered the validator's picks (or the session is dropped).

Hooks (``_fill_output``, ``_access_output``, ``_matrix_for_step``) are the seams the
cheat-matrix tests override to model dishonest provers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from miner.graval.backends import Backend, NumpyBackend
from protocol.graval.merkle import MerkleTree
from protocol.graval.spec import ChallengeSpec, access_index
from protocol.graval.synapses import Commitment, LeafOpening, LeafRef, Openings

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class ProveTimings:
    fill_s: float = 0.0
    access_s: float = 0.0
    hash_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Prover:
    spec: ChallengeSpec
    backend: Backend = field(default_factory=NumpyBackend)
    progress: Progress | None = None
    matrices: list[Any] = field(default_factory=list, init=False)
    states: list[np.ndarray] = field(default_factory=list, init=False)  # host int8, X_t^T (b x n)
    matrix_trees: list[MerkleTree] = field(default_factory=list, init=False)
    state_trees: list[MerkleTree] = field(default_factory=list, init=False)
    timings: ProveTimings = field(default_factory=ProveTimings, init=False)

    # --- proving -----------------------------------------------------------------------

    def prove(self) -> Commitment:
        spec, backend = self.spec, self.backend
        started = time.perf_counter()
        g = backend.generate(spec.key("G"), spec.n, spec.n)
        previous = g  # M_{-1} = G
        for i in range(spec.m):
            u = backend.vector(spec.key(f"u{i}"), spec.n)
            v = backend.vector(spec.key(f"v{i}"), spec.n)
            tick = time.perf_counter()
            matrix = self._fill_output(i, backend.fill_step(previous, g, u, v))
            backend.synchronize()
            hashed = time.perf_counter()
            self.timings.fill_s += hashed - tick
            self._keep_matrix(i, matrix)
            self.timings.hash_s += time.perf_counter() - hashed
            previous = matrix
            self._report("fill", i + 1, spec.m)
        del g, previous

        state = backend.generate(spec.key("x0"), spec.n, spec.b)
        root = b""
        for t in range(1, spec.steps + 1):
            j = access_index(spec, t, root)
            u = backend.vector(spec.key(f"au{t}"), spec.n)
            v = backend.vector(spec.key(f"av{t}"), spec.b)
            tick = time.perf_counter()
            state = self._access_output(t, backend.access_step(self._matrix_for_step(j), state, u, v))
            host = backend.host_int8(backend.transpose(state))
            hashed = time.perf_counter()
            self.timings.access_s += hashed - tick
            tree = MerkleTree.over_rows(host)
            self.timings.hash_s += time.perf_counter() - hashed
            self.states.append(host)
            self.state_trees.append(tree)
            root = tree.root
            self._report("access", t, spec.steps)
        self.timings.total_s = time.perf_counter() - started
        return Commitment(
            challenge_id=spec.challenge_id,
            matrix_roots=[tree.root.hex() for tree in self.matrix_trees],
            state_roots=[tree.root.hex() for tree in self.state_trees],
            prover_seconds=self.timings.total_s,
            backend=backend.name,
        )

    def _keep_matrix(self, i: int, matrix: Any) -> None:
        self.matrix_trees.append(MerkleTree.over_rows(self.backend.host_int8(matrix)))
        self.matrices.append(matrix)

    def _report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    # --- seams for dishonest provers (tests) -----------------------------------------

    def _fill_output(self, i: int, matrix: Any) -> Any:
        return matrix

    def _access_output(self, t: int, state: Any) -> Any:
        return state

    def _matrix_for_step(self, j: int) -> Any:
        return self.matrices[j]

    # --- opening -----------------------------------------------------------------------

    def matrix_row(self, i: int, row: int) -> bytes:
        return self.backend.host_int8(self.matrices[i][row:row + 1]).tobytes()

    def open(self, refs: list[LeafRef]) -> Openings:
        """Rows of matrices and columns of states, each with its Merkle path."""
        leaves = []
        for ref in refs:
            if ref.kind == "M":
                tree, data = self.matrix_trees[ref.index], self.matrix_row(ref.index, ref.leaf)
            else:
                tree, data = self.state_trees[ref.index - 1], self.states[ref.index - 1][ref.leaf].tobytes()
            leaves.append(LeafOpening.build(ref, data, tree.path(ref.leaf)))
        return Openings(challenge_id=self.spec.challenge_id, leaves=leaves)

    def release(self) -> None:
        self.matrices.clear()
        self.states.clear()
