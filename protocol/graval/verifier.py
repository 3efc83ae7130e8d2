"""The validator's GraVal checks: pick samples after both commitments, then check openings.

The seam between the GraVal round (``validator.graval.session``, over the wire; tests and
the benchmark in-process) and the challenge's arithmetic. No GPU and no n x n product: an
opened leaf costs one O(n) Freivalds check of its digest (``protocol.graval.lattice``),
the multiproof costs one small node hash per tree node it covers, and a sample is one
length-n dot product mod p. The timing windows are the session's job, not this module's.
"""

from __future__ import annotations

import base64
import functools
import random
import secrets
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocol.graval import lattice
from protocol.graval.field import P, SBOX, hash_residues
from protocol.graval.spec import ChallengeSpec, access_depth, fill_depth, leaf_position
from protocol.graval.synapses import AccessCommitment, FillCommitment, LeafRef, Openings


@dataclass(frozen=True)
class Sample:
    """Entry (row, col) of M_index (kind "fill") or of X_index (kind "access")."""

    kind: Literal["fill", "access"]
    index: int
    row: int
    col: int


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # ok | bad_commitment | bad_opening | wrong_product
    detail: str = ""
    checked: int = 0


def pick_samples(spec: ChallengeSpec, per_phase: int, rng: random.Random | None = None) -> list[Sample]:
    """``per_phase`` entries of the fill phase and as many of the access phase, uniform in each.

    Stratified so that each phase alone meets the soundness bound: a prover that skips a
    tenth of either phase (e.g. the access steps whose matrix it did not keep) is caught
    by that phase's samples whatever the phases' shares of the total work.
    """
    rng = rng or secrets.SystemRandom()
    fill = [Sample("fill", rng.randrange(spec.m), rng.randrange(spec.n), rng.randrange(spec.n)) for _ in range(per_phase)]
    access = [Sample("access", rng.randrange(1, spec.steps + 1), rng.randrange(spec.n), rng.randrange(spec.b))
              for _ in range(per_phase)]
    return fill + access


@functools.lru_cache(maxsize=8)  # one per hash key (sweep) and matrix size: a few MB each
def leaf_checker(hash_seed: str, n: int) -> lattice.LeafChecker:
    """The verifier's secret Freivalds vectors and key products for one sweep's hash key."""
    return lattice.LeafChecker(bytes.fromhex(hash_seed), n)


def leaves_for(spec: ChallengeSpec, order: list[int], samples: list[Sample]) -> list[LeafRef]:
    """The rows and columns the prover must open so that every sample can be checked
    (``order``: j_1..j_steps, from ``protocol.graval.spec.access_order``)."""
    indices = order
    wanted: set[LeafRef] = set()
    for sample in samples:
        if sample.kind == "fill":
            wanted.add(LeafRef(kind="M", index=sample.index, leaf=sample.row))
            if sample.index > 0:
                wanted.add(LeafRef(kind="M", index=sample.index - 1, leaf=sample.row))
        else:
            wanted.add(LeafRef(kind="M", index=indices[sample.index - 1], leaf=sample.row))
            wanted.add(LeafRef(kind="X", index=sample.index, leaf=sample.col))
            if sample.index > 1:
                wanted.add(LeafRef(kind="X", index=sample.index - 1, leaf=sample.col))
    return sorted(wanted, key=lambda ref: (ref.kind, ref.index, ref.leaf))


def _entries(data: bytes) -> np.ndarray:
    """The centred int8 entries of an opened leaf (no copy)."""
    return np.frombuffer(data, dtype=np.int8)


def check_commitments(spec: ChallengeSpec, fill: FillCommitment, access: AccessCommitment | None = None) -> Verdict | None:
    if fill.challenge_id != spec.challenge_id or (access is not None and access.challenge_id != spec.challenge_id):
        return Verdict(False, "bad_commitment", "the commitment is for another challenge")
    return None


def verify(spec: ChallengeSpec, fill: FillCommitment, access: AccessCommitment, order: list[int],
           samples: list[Sample], openings: Openings) -> Verdict:
    """Check the openings against the two roots, then every sample as one dot product mod p."""
    refusal = check_commitments(spec, fill, access)
    if refusal is not None:
        return refusal
    opened = opened_leaves(spec, fill, access, openings)
    if isinstance(opened, Verdict):
        return opened
    missing = [ref for ref in leaves_for(spec, order, samples) if ref not in opened]
    if missing:
        ref = missing[0]
        return Verdict(False, "bad_opening", f"{len(missing)} leaves were not opened, e.g. {ref.kind}{ref.index}[{ref.leaf}]")
    failed_at, problem = SampleChecker(spec, order, opened).first_failure(samples)
    if failed_at >= 0:
        return Verdict(False, "wrong_product", problem, failed_at)
    return Verdict(True, "ok", f"{len(samples)} samples, {len(opened)} leaves", len(samples))


def opened_leaves(spec: ChallengeSpec, fill: FillCommitment, access: AccessCommitment,
                  openings: Openings) -> dict[LeafRef, np.ndarray] | Verdict:
    """Every opened leaf, as centred int8 entries, once its digest and the multiproof lead to its root."""
    if openings.challenge_id != spec.challenge_id:
        return Verdict(False, "bad_opening", "the openings are for another challenge")
    checker = leaf_checker(spec.hash_seed, spec.n)
    opened: dict[LeafRef, np.ndarray] = {}
    digests: dict[LeafRef, np.ndarray] = {}
    for leaf in openings.leaves:
        ref = leaf.ref
        width = spec.n if ref.kind == "M" else spec.b
        in_range = ref.index < spec.m if ref.kind == "M" else 1 <= ref.index <= spec.steps
        try:
            data, digest = leaf.raw(), lattice.digest_from_bytes(leaf.raw_digest())
        except ValueError:
            return Verdict(False, "bad_opening", f"{ref.kind}{ref.index}[{ref.leaf}] is not valid base64 or digest")
        if not in_range or ref.leaf >= width or len(data) != spec.n or ref in opened:
            return Verdict(False, "bad_opening", f"{ref.kind}{ref.index}[{ref.leaf}] is outside the challenge or repeated")
        opened[ref] = np.frombuffer(data, dtype=np.int8)
        digests[ref] = digest
    if not opened:
        return opened
    refs = list(opened)
    good = checker.leaves_ok(np.stack([opened[ref] for ref in refs]), np.stack([digests[ref] for ref in refs]))
    if not good.all():
        ref = refs[int(np.flatnonzero(~good)[0])]
        return Verdict(False, "bad_opening", f"{ref.kind}{ref.index}[{ref.leaf}]: the digest is not the data's")
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, lattice.K), dtype=np.int64))
    packed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    try:
        for tree in openings.nodes:
            if tree.tree in packed:
                return Verdict(False, "bad_opening", f"the {tree.tree} tree's nodes are sent twice")
            packed[tree.tree] = tree.unpack()
    except ValueError as error:
        return Verdict(False, "bad_opening", f"the tree nodes are malformed: {error}")
    for kind, depth, root in (("M", fill_depth(spec), fill.fill_root), ("X", access_depth(spec), access.access_root)):
        mine = [ref for ref in refs if ref.kind == kind]
        if not mine:
            continue
        positions = np.array([leaf_position(spec, ref) for ref in mine], dtype=np.int64)
        reached = lattice.multiproof_root(checker, positions, np.stack([digests[ref] for ref in mine]),
                                          *packed.get(kind, empty), depth)
        expected = lattice.digest_from_bytes(base64.b64decode(root))
        if reached is None or not np.array_equal(reached, expected):
            return Verdict(False, "bad_opening", f"the {kind} openings do not lead to the committed root")
    return opened


class SampleChecker:
    """Checks samples against opened leaves (every one already verified against its root).

    Work is batched: the generated vectors (columns of G and X_0, rows of the base
    matrix), the noise terms and the dot products of all samples are computed as a few
    vectorised numpy passes, so the cost per sample is O(n) with no Python-level loop
    over entries.
    """

    def __init__(self, spec: ChallengeSpec, order: list[int], opened: dict[LeafRef, np.ndarray]) -> None:
        self.spec = spec
        self.opened = opened
        self.indices = order
        self._keys: dict[str, tuple[int, int]] = {}

    def key(self, label: str) -> tuple[int, int]:
        if label not in self._keys:
            self._keys[label] = self.spec.key(label)
        return self._keys[label]

    def _noise(self, labels: list[tuple[str, str]], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """u[r] + v[c] for each sample, with per-sample keys (one vectorised hash pass each)."""
        total = np.zeros(len(rows), dtype=np.int64)
        for which, positions in ((0, rows), (1, cols)):
            keys = np.array([self.key(pair[which]) for pair in labels], dtype=np.int64).reshape(-1, 2)
            total += hash_residues(positions.astype(np.int64), (keys[:, 0], keys[:, 1]))
        return total

    def _generated(self, label: str, along: str, positions: list[int], rows: int, cols: int) -> np.ndarray:
        """Columns (``along="col"``) or rows of a generated matrix, one per position, stacked."""
        if not positions:
            return np.zeros((0, self.spec.n), dtype=np.int64)
        at = np.array(positions, dtype=np.int64)[:, None]
        counters = np.arange(rows, dtype=np.int64)[None, :] * cols + at if along == "col" \
            else at * cols + np.arange(cols, dtype=np.int64)[None, :]
        residues: np.ndarray = hash_residues(counters, self.key(label))
        return residues

    def check(self, sample: Sample) -> str:
        """"" when the sampled entry is the product of its inputs, else what is wrong."""
        return self.first_failure([sample])[1]

    def first_failure(self, samples: list[Sample]) -> tuple[int, str]:
        """(index, description) of the first sample that fails, or (-1, "")."""
        if not samples:
            return -1, ""
        spec, opened = self.spec, self.opened
        n = spec.n
        lefts = np.empty((len(samples), n), dtype=np.int64)
        rights = np.empty((len(samples), n), dtype=np.int64)
        actual = np.empty(len(samples), dtype=np.int64)
        labels: list[tuple[str, str]] = []
        g_cols: list[int] = []
        base_rows: list[int] = []
        x0_cols: list[int] = []
        g_at, base_at, x0_at = [], [], []
        for k, sample in enumerate(samples):
            r, c, index = sample.row, sample.col, sample.index
            if sample.kind == "fill":
                if index > 0:
                    lefts[k] = opened[LeafRef(kind="M", index=index - 1, leaf=r)]
                else:
                    base_rows.append(r)
                    base_at.append(k)
                g_cols.append(c)
                g_at.append(k)
                actual[k] = opened[LeafRef(kind="M", index=index, leaf=r)][c]
                labels.append((f"u{index}", f"v{index}"))
            else:
                lefts[k] = opened[LeafRef(kind="M", index=self.indices[index - 1], leaf=r)]
                if index > 1:
                    rights[k] = opened[LeafRef(kind="X", index=index - 1, leaf=c)]
                else:
                    x0_cols.append(c)
                    x0_at.append(k)
                actual[k] = opened[LeafRef(kind="X", index=index, leaf=c)][r]
                labels.append((f"au{index}", f"av{index}"))
        rights[g_at] = self._generated("G", "col", g_cols, n, n)
        lefts[base_at] = self._generated("G", "row", base_rows, n, n)  # M_{-1} = G
        rights[x0_at] = self._generated("x0", "col", x0_cols, n, spec.b)
        rows = np.array([sample.row for sample in samples])
        cols = np.array([sample.col for sample in samples])
        sums = np.einsum("ij,ij->i", lefts, rights) % P
        expected = SBOX[(sums + self._noise(labels, rows, cols)) % P]
        actual %= P
        wrong = np.flatnonzero(expected != actual)
        if not len(wrong):
            return -1, ""
        k = int(wrong[0])
        sample = samples[k]
        where = f"M{sample.index}" if sample.kind == "fill" else f"X{sample.index}"
        return k, f"{where}[{sample.row},{sample.col}] is {actual[k]}, the product gives {expected[k]}"
