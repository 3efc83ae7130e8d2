"""Dishonest GraVal provers, one per attack of the cheat matrix (issue: GraVal, part 5).

Each subclasses the honest ``Prover`` through its seams, so what differs from the honest
run is exactly the cheat. Used by ``test_cheats.py`` (in-process) and ``test_session.py``
(over the wire).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from canopy.demo_cheater import RandomRoots  # noqa: F401 - the demo's cheat, tested with the others
from miner.graval.prover import Prover
from protocol.graval.merkle import MerkleTree
from protocol.graval.spec import ChallengeSpec
from protocol.graval.synapses import Commitment, LeafRef, Openings


class PartialRows(Prover):
    """Computes only 90% of the rows of every matrix and state; the rest are zeros (cheap)."""

    fraction = 0.1

    def _fill_output(self, i: int, matrix: Any) -> Any:
        skipped = np.random.default_rng(i).random(matrix.shape[0]) < self.fraction
        matrix = matrix.copy()
        matrix[skipped] = 0
        return matrix

    def _access_output(self, t: int, state: Any) -> Any:
        skipped = np.random.default_rng(10_000 + t).random(state.shape[0]) < self.fraction
        state = state.copy()
        state[skipped] = 0
        return state


class SkippedStep(Prover):
    """Skips the multiplication of one access step: X_t = X_{t-1}."""

    skipped_step = 2

    def prove(self) -> Commitment:
        self._previous_state: Any = None
        return super().prove()

    def _access_output(self, t: int, state: Any) -> Any:
        if t == self.skipped_step and self._previous_state is not None:
            state = self._previous_state
        self._previous_state = state
        return state


class Forgetful(Prover):
    """Keeps fewer than 90% of the matrices (drops every 9th) and, on an access that needs
    a dropped one, multiplies by a hash matrix instead of rebuilding it (no extra time)."""

    def _keep_matrix(self, i: int, matrix: Any) -> None:
        super()._keep_matrix(i, matrix)
        if i % 9 == 8:
            self.matrices[i] = None

    def _matrix_for_step(self, j: int) -> Any:
        matrix = self.matrices[j]
        return matrix if matrix is not None else self.backend.generate(self.spec.key("G"), self.spec.n, self.spec.n)

    def matrix_row(self, i: int, row: int) -> bytes:
        if self.matrices[i] is None:
            return bytes(self.spec.n)
        return super().matrix_row(i, row)


class Regenerating(Prover):
    """Keeps fewer than 90% of the matrices (drops every 9th) and rebuilds a dropped one from
    its predecessor when an access needs it: every answer is right, only slower."""

    rebuilt = 0

    def _keep_matrix(self, i: int, matrix: Any) -> None:
        super()._keep_matrix(i, matrix)
        if i % 9 == 8:
            self.matrices[i] = None

    def _matrix_for_step(self, j: int) -> Any:
        if self.matrices[j] is not None:
            return self.matrices[j]
        return self._rebuild(j)

    def _rebuild(self, j: int) -> Any:
        spec, backend = self.spec, self.backend
        self.rebuilt += 1
        g = backend.generate(spec.key("G"), spec.n, spec.n)
        previous = self.matrices[j - 1] if j > 0 else g
        return backend.fill_step(previous, g, backend.vector(spec.key(f"u{j}"), spec.n), backend.vector(spec.key(f"v{j}"), spec.n))

    def matrix_row(self, i: int, row: int) -> bytes:
        if self.matrices[i] is None:
            return self.backend.host_int8(self._rebuild(i)[row:row + 1]).tobytes()
        return super().matrix_row(i, row)


class Adaptive(Prover):
    """Commits before computing (roots of zero states), and computes the access chain only
    once it has seen the picks, answering them with correct values and real paths."""

    def prove(self) -> Commitment:
        commitment = super().prove()
        zero = MerkleTree.over_rows(np.zeros((self.spec.b, self.spec.n), dtype=np.int8)).root.hex()
        return commitment.model_copy(update={"state_roots": [zero] * self.spec.steps})


class ForgedOpening(Prover):
    """Honest commitment; one opened leaf is altered to make the product check pass."""

    def open(self, refs: list[LeafRef]) -> Openings:
        openings = super().open(refs)
        first = openings.leaves[0]
        data = bytearray(first.raw())
        data[0] = (data[0] + 1) % 256
        forged = first.model_copy(update={"data": base64.b64encode(bytes(data)).decode()})
        return openings.model_copy(update={"leaves": [forged, *openings.leaves[1:]]})


class Replayed(Prover):
    """Answers a new challenge with a proof computed for an older seed (relabelled)."""

    old_seed = "00" * 32

    def prove(self) -> Commitment:
        requested = self.spec
        self.spec = requested.model_copy(update={"seed": self.old_seed})
        commitment = super().prove()
        self.spec = requested
        return commitment.model_copy(update={"challenge_id": requested.challenge_id})

    def open(self, refs: list[LeafRef]) -> Openings:
        return super().open(refs).model_copy(update={"challenge_id": self.spec.challenge_id})


class OtherUuid(Prover):
    """Offers the proof of another device (same seed, another uuid), relabelled."""

    other_uuid = "GPU-someone-elses"

    def prove(self) -> Commitment:
        requested = self.spec
        self.spec = ChallengeSpec(**{**requested.model_dump(), "uuid": self.other_uuid})
        commitment = super().prove()
        self.spec = requested
        return commitment.model_copy(update={"challenge_id": requested.challenge_id})

    def open(self, refs: list[LeafRef]) -> Openings:
        return super().open(refs).model_copy(update={"challenge_id": self.spec.challenge_id})
