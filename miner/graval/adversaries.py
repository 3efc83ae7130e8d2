"""Dishonest GraVal provers, one per attack the verifier must refuse.

The seam between the honest prover and everything that must show an attack refused (the
attack tests, the separation table of ``miner.graval.separation``). Each subclasses the honest ``Prover`` through its
seams, so what differs from the honest run is exactly the attack, and each does the
attack for real (it computes what an attacker would compute). No miner runs them but
the demo's cheater (``neurons.demo_cheater`` runs ``RandomRoots``).
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
import bisect
import os
from typing import Callable, Iterator

import numpy as np

from miner.graval.prover import Prover
from protocol.graval.field import DeviceArray
from protocol.graval.spec import ChallengeSpec, access_order
from protocol.graval.lattice import K, Q
from protocol.graval.synapses import AccessCommitment, FillCommitment, LeafRef, Openings, encode_digest


def _random_digest() -> str:
    return encode_digest(np.frombuffer(os.urandom(8 * K), dtype=np.uint64) % Q)


class RandomRoots(Prover):
    """Commits to random roots (after computing, so its timing looks honest), then opens
    honestly computed data that cannot lead to them."""

    def fill(self) -> FillCommitment:
        return super().fill().model_copy(update={"fill_root": _random_digest()})

    def access(self, access_seed: bytes) -> AccessCommitment:
        return super().access(access_seed).model_copy(update={"access_root": _random_digest()})


class PartialRows(Prover):
    """Computes only 90% of the rows of every matrix and state; the rest are zeros (cheap)."""

    fraction = 0.1

    def _fill_output(self, i: int, matrix: DeviceArray) -> DeviceArray:
        return _zero_rows(matrix, np.random.default_rng(i).random(matrix.shape[0]) < self.fraction)

    def _access_output(self, t: int, state: DeviceArray) -> DeviceArray:
        return _zero_rows(state, np.random.default_rng(10_000 + t).random(state.shape[0]) < self.fraction)


class ZeroRows(Prover):
    """Zeroes ~9% of the rows of every fill matrix and then computes the access chain
    faithfully on those matrices: the zero rows skip ~9% of the access multiplications
    while every access entry is the product of its committed inputs."""

    fraction = 0.09

    def _fill_output(self, i: int, matrix: DeviceArray) -> DeviceArray:
        return _zero_rows(matrix, np.random.default_rng(i).random(matrix.shape[0]) < self.fraction)


def _zero_rows(array: DeviceArray, rows: np.ndarray) -> DeviceArray:
    array = array.copy()
    array[rows] = 0
    return array


class SkippedStep(Prover):
    """Skips the multiplication of one access step: X_t = X_{t-1}."""

    skipped_step = 2

    def access(self, access_seed: bytes) -> AccessCommitment:
        self._previous_state: DeviceArray | None = None
        return super().access(access_seed)

    def _access_output(self, t: int, state: DeviceArray) -> DeviceArray:
        if t == self.skipped_step and self._previous_state is not None:
            state = self._previous_state
        self._previous_state = state
        return state


class _KeepsSome(Prover, ABC):
    """Keeps only the matrices ``keeps(i)`` says (fewer bytes resident than claimed)."""

    @abstractmethod
    def keeps(self, i: int) -> bool:
        """Whether matrix ``i`` stays resident."""

    def _keep_matrix(self, i: int, matrix: DeviceArray) -> None:
        self.matrices.append(matrix if self.keeps(i) else None)


class Guessing(_KeepsSome):
    """Keeps every other matrix; an access to a dropped one multiplies by the nearest kept
    matrix instead (no extra time, wrong states); a dropped row asked for is opened from it too."""

    def keeps(self, i: int) -> bool:
        return i % 2 == 0

    def _substitute(self, j: int) -> DeviceArray:
        return self.matrices[j - 1 if j % 2 else j]

    def _matrix_for_step(self, j: int) -> DeviceArray:
        return self._substitute(j)

    def _matrix_for_open(self, i: int) -> DeviceArray:
        return self._substitute(i)


class Grinding(Guessing):
    """The access-order grinder that beat the old protocol, run against the new one: it
    keeps 1 of ``keep_every`` matrices and, whenever the next step needs a dropped one,
    tampers with one entry of the state it just computed (a new root) and re-derives the
    order, up to ``tries`` times, hoping to land on a kept matrix; failing that it guesses.
    The order now comes from the validator's seed alone, so ``rerolled`` stays 0."""

    keep_every = 8
    tries = 4

    def keeps(self, i: int) -> bool:
        return i % self.keep_every == 0

    def access(self, access_seed: bytes) -> AccessCommitment:
        self._seed, self.rerolled, self.ground = access_seed, 0, 0
        return super().access(access_seed)

    def _access_output(self, t: int, state: DeviceArray) -> DeviceArray:
        if t < self.spec.steps and not self.keeps(self.order[t]):
            self.ground += 1
            for attempt in range(self.tries):
                tampered = state.copy()
                tampered[attempt % tampered.shape[0], 0] += 1
                self.state_root(tampered)  # what the old order was drawn from
                if access_order(self.spec, self._seed)[t] != self.order[t]:
                    self.rerolled += 1
                    return tampered
        return state

    def _substitute(self, j: int) -> DeviceArray:
        return self.matrices[j - j % self.keep_every]


class Rebuilding(_KeepsSome):
    """Keeps ``capacity`` of the m matrices and, knowing the whole order once the access
    seed arrives, runs Belady's optimal policy: a missing matrix is rebuilt (chained from
    the nearest resident predecessor, one fill product per link) into the slot of the
    matrix needed furthest in the future. Every answer is right; only the clock can tell."""

    capacity_fraction = 0.5
    rebuilt = 0  # matrices rebuilt so far (from the access phase on)

    def keeps(self, i: int) -> bool:
        return i < self.capacity

    @property
    def capacity(self) -> int:
        return max(1, int(self.spec.m * self.capacity_fraction))

    def access(self, access_seed: bytes) -> AccessCommitment:
        self.rebuilt = 0
        self._position = 0
        order = access_order(self.spec, access_seed)
        self._next_use = _next_uses(order)
        return super().access(access_seed)

    def _states(self) -> Iterator[tuple[int, DeviceArray]]:
        self._position = 0  # the access phase, and again the replay that opens states
        yield from super()._states()

    def _matrix_for_step(self, j: int) -> DeviceArray:
        position = self._position
        self._position += 1
        if self.matrices[j] is None:
            self.matrices[j] = self._rebuild(j)
            resident = [i for i, matrix in enumerate(self.matrices) if matrix is not None]
            if len(resident) > self.capacity:  # evict the one needed furthest ahead (never j itself)
                victim = max((i for i in resident if i != j), key=lambda i: self._next_use(i, position))
                self.matrices[victim] = None
        return self.matrices[j]

    def _rebuild(self, j: int) -> DeviceArray:
        spec, backend = self.spec, self.backend
        g = backend.generate(spec.key("G"), spec.n, spec.n)
        start = max((i for i in range(j) if self.matrices[i] is not None), default=-1)
        matrix = g if start < 0 else self.matrices[start]
        for i in range(start + 1, j + 1):
            self.rebuilt += 1
            matrix = backend.fill_step(matrix, g, backend.vector(spec.key(f"u{i}"), spec.n),
                                       backend.vector(spec.key(f"v{i}"), spec.n))
        return matrix

    def _matrix_for_open(self, i: int) -> DeviceArray:
        return self.matrices[i] if self.matrices[i] is not None else self._rebuild(i)


def _next_uses(order: list[int]) -> Callable[[int, int], int]:
    positions: dict[int, list[int]] = {}
    for position, j in enumerate(order):
        positions.setdefault(j, []).append(position)

    def next_use(j: int, after: int) -> int:
        uses = positions.get(j, [])
        k = bisect.bisect_right(uses, after)
        return uses[k] if k < len(uses) else len(order) + 1

    return next_use


class _Zeros(Prover):
    """The run an adaptive prover commits to: every matrix and state all zeros."""

    def _fill_output(self, i: int, matrix: DeviceArray) -> DeviceArray:
        return matrix * 0

    def _access_output(self, t: int, state: DeviceArray) -> DeviceArray:
        return state * 0


class Adaptive(Prover):
    """Commits before computing: its roots are those of an all-zero run. Only once it has
    seen the picks does it compute the challenge, and it opens the correct rows and
    columns with their real tree nodes, which lead to the real roots, not to its own."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.committed = _Zeros(self.spec, self.backend)

    def fill(self) -> FillCommitment:
        return self.committed.fill()

    def access(self, access_seed: bytes) -> AccessCommitment:
        self._seed = access_seed
        return self.committed.access(access_seed)

    def open(self, refs: list[LeafRef]) -> Openings:
        late = Prover(self.spec, self.backend)  # the work, done after the picks
        late.fill()
        late.access(self._seed)
        return late.open(refs)


class AdaptiveForgedDigests(Adaptive):
    """The adaptive prover, now opening the correct data with the digests and nodes of
    the zero run it committed to, so every path does lead to its committed roots."""

    def open(self, refs: list[LeafRef]) -> Openings:
        correct = super().open(refs)
        committed = self.committed.open(refs)
        data = {leaf.ref: leaf.data for leaf in correct.leaves}
        leaves = [leaf.model_copy(update={"data": data[leaf.ref]}) for leaf in committed.leaves]
        return committed.model_copy(update={"leaves": leaves})


class ForgedOpening(Prover):
    """Honest commitments; one opened leaf is altered to make the product check pass."""

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

    def fill(self) -> FillCommitment:
        requested = self.spec
        self.spec = requested.model_copy(update={"seed": self.old_seed})
        try:
            return super().fill().model_copy(update={"challenge_id": requested.challenge_id})
        finally:
            self._requested = requested

    def access(self, access_seed: bytes) -> AccessCommitment:
        return super().access(access_seed).model_copy(update={"challenge_id": self._requested.challenge_id})

    def open(self, refs: list[LeafRef]) -> Openings:
        return super().open(refs).model_copy(update={"challenge_id": self._requested.challenge_id})


class OtherUuid(Replayed):
    """Offers the proof of another device (same seed, another uuid), relabelled."""

    other_uuid = "GPU-someone-elses"

    def fill(self) -> FillCommitment:
        requested = self.spec
        self.spec = ChallengeSpec(**{**requested.model_dump(), "uuid": self.other_uuid})
        self._requested = requested
        return Prover.fill(self).model_copy(update={"challenge_id": requested.challenge_id})

