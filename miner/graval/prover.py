"""The miner's GraVal prover: fill, access and open one challenge on one device.

The seam between the miner's GraVal handlers (``miner.graval.service``), the calibration
command, the GPU check kit and the benchmark, and an array backend. ``fill()`` builds the
m matrices and commits to them, ``access(seed)`` runs the access chain in the order the
validator's seed draws and commits to every state, ``open(refs)`` answers the picks with
the opened rows / columns and the tree nodes that lead them to the two roots. Every step
runs on the device; the host receives the roots and the opened data only. The matrices
stay resident until the session is released; the access states are not kept (a
replay of the chain recomputes the opened ones).

Hooks (``_fill_output``, ``_keep_matrix``, ``_access_output``, ``_matrix_for_step``,
``_matrix_for_open``) are the seams the attack tests override to build dishonest provers.
A set ``cancel`` event stops a proof between two steps (``ProofCancelled``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np

from miner.graval.backends import ArrayBackend, NumpyBackend
from protocol.graval import lattice
from protocol.graval.field import DeviceArray
from protocol.graval.spec import ChallengeSpec, access_depth, access_order, fill_depth, leaf_position
from protocol.graval.synapses import (
    AccessCommitment, FillCommitment, LeafOpening, LeafRef, Openings, TreeNodes, encode_digest,
)

Progress = Callable[[str, int, int], None]  # (phase, done, total)
#: Access steps whose state trees are built together: per step the device then runs its
#: GEMM, the element-wise passes and one leaf-hash GEMM, and the tree levels' small products
#: are launched once per batch (on a GPU, kernel launches would otherwise rival the step).
STATE_TREE_BATCH = 64


class ProofCancelled(Exception):
    """The proof was stopped between two steps (its validator gave up, or the miner shuts down)."""


@dataclass
class ProveTimings:
    fill_s: float = 0.0
    access_s: float = 0.0
    open_s: float = 0.0


@dataclass
class Prover:
    spec: ChallengeSpec
    backend: ArrayBackend = field(default_factory=NumpyBackend)
    progress: Progress | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    matrices: list[DeviceArray] = field(default_factory=list, init=False)
    timings: ProveTimings = field(default_factory=ProveTimings, init=False)
    order: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._keys: lattice.DeviceKeys | None = None
        self._fill_top: list[np.ndarray] = []  # host levels of the tree over the matrix roots
        self._access_top: list[np.ndarray] = []

    @property
    def keys(self) -> lattice.DeviceKeys:
        if self._keys is None:
            self._keys = lattice.device_keys(self.backend, self.spec.hash_seed_bytes, self.spec.n)
        return self._keys

    # --- fill ----------------------------------------------------------------------------

    def fill(self) -> FillCommitment:
        spec, backend = self.spec, self.backend
        started = time.perf_counter()
        g = backend.generate(spec.key("G"), spec.n, spec.n)
        previous = g  # M_{-1} = G
        roots = []
        for i in range(spec.m):
            self._check_cancel()
            u = backend.vector(spec.key(f"u{i}"), spec.n)
            v = backend.vector(spec.key(f"v{i}"), spec.n)
            matrix = self._fill_output(i, backend.fill_step(previous, g, u, v))
            roots.append(self.matrix_root(matrix))
            self._keep_matrix(i, matrix)
            previous = matrix
            self._report("fill", i + 1, spec.m)
        del g, previous
        self._fill_top = self._top_levels(roots, spec.m)
        backend.synchronize()
        self.timings.fill_s = time.perf_counter() - started
        return FillCommitment(challenge_id=spec.challenge_id, fill_root=encode_digest(self._fill_top[-1][0]),
                              prover_seconds=self.timings.fill_s, backend=backend.name)

    def matrix_root(self, matrix: DeviceArray) -> DeviceArray:
        """The root (1 x K) of the lattice tree over the rows of one matrix."""
        return lattice.tree_levels(self.backend, self.keys, lattice.leaf_digests(self.backend, self.keys, matrix),
                                   keep=False)[-1]

    def _top_levels(self, roots: list[DeviceArray], count: int) -> list[np.ndarray]:
        """Host copies of every level of the tree over ``roots`` (padded with zero digests)."""
        backend = self.backend
        stacked = lattice.pad_rows(backend, backend.cat(roots, 0), lattice.next_power_of_two(count))
        return [backend.host(level) for level in lattice.tree_levels(backend, self.keys, stacked, keep=True)]

    # --- access --------------------------------------------------------------------------

    def access(self, access_seed: bytes) -> AccessCommitment:
        spec = self.spec
        if len(self.matrices) != spec.m:
            raise RuntimeError("access() needs a completed fill()")
        started = time.perf_counter()
        self.order = access_order(spec, access_seed)
        roots: list[DeviceArray] = []
        pending: list[DeviceArray] = []  # leaf digests of the steps whose trees are not built yet
        for t, state in self._states():
            pending.append(lattice.leaf_digests(self.backend, self.keys, self.backend.transpose(state)))
            if len(pending) == STATE_TREE_BATCH or t == spec.steps:
                roots.append(self._subtree_roots(pending))
                pending = []
            self._report("access", t, spec.steps)
        self._access_top = self._top_levels(roots, spec.steps)
        self.backend.synchronize()
        self.timings.access_s = time.perf_counter() - started
        return AccessCommitment(challenge_id=spec.challenge_id, access_root=encode_digest(self._access_top[-1][0]),
                                prover_seconds=self.timings.access_s)

    def _states(self) -> Iterator[tuple[int, DeviceArray]]:
        """(t, X_t) for t = 1..steps, computed on the device in the drawn order."""
        spec, backend = self.spec, self.backend
        state = backend.generate(spec.key("x0"), spec.n, spec.b)
        for t in range(1, spec.steps + 1):
            self._check_cancel()
            u = backend.vector(spec.key(f"au{t}"), spec.n)
            v = backend.vector(spec.key(f"av{t}"), spec.b)
            state = self._access_output(t, backend.access_step(self._matrix_for_step(self.order[t - 1]), state, u, v))
            yield t, state

    def state_root(self, state: DeviceArray) -> DeviceArray:
        """The root (1 x K) of the lattice tree over the columns of one state."""
        columns = self.backend.transpose(state)
        return self._subtree_roots([lattice.leaf_digests(self.backend, self.keys, columns)])

    def _subtree_roots(self, leaf_digests: list[DeviceArray]) -> DeviceArray:
        """The roots of several states' trees at once: the first log2(b) levels of a tree over
        their stacked leaves are exactly those trees (aligned blocks of b), so one pass of
        node hashes per level serves a whole batch of steps instead of one per step."""
        level = leaf_digests[0] if len(leaf_digests) == 1 else self.backend.cat(leaf_digests, 0)
        for _ in range(self.spec.b.bit_length() - 1):
            level = lattice.parents(self.backend, self.keys, level)
        return level

    # --- seams for dishonest provers (tests) -----------------------------------------------

    def _fill_output(self, i: int, matrix: DeviceArray) -> DeviceArray:
        return matrix

    def _keep_matrix(self, i: int, matrix: DeviceArray) -> None:
        self.matrices.append(matrix)

    def _access_output(self, t: int, state: DeviceArray) -> DeviceArray:
        return state

    def _matrix_for_step(self, j: int) -> DeviceArray:
        return self.matrices[j]

    def _matrix_for_open(self, i: int) -> DeviceArray:
        return self.matrices[i]

    # --- opening -------------------------------------------------------------------------

    def open(self, refs: list[LeafRef]) -> Openings:
        """The opened leaves and the multiproof nodes of both trees."""
        started = time.perf_counter()
        spec = self.spec
        leaves: list[LeafOpening] = []
        nodes: list[TreeNodes] = []
        phases: tuple[tuple[Literal["M", "X"], int, int, list[np.ndarray]], ...] = (
            ("M", fill_depth(spec), spec.n, self._fill_top), ("X", access_depth(spec), spec.b, self._access_top))
        for kind, depth, low, top in phases:
            wanted = [ref for ref in refs if ref.kind == kind]
            if not wanted:
                continue
            levels_out: list[int] = []
            positions_out: list[int] = []
            digests_out: list[np.ndarray] = []  # host copies
            low_levels = low.bit_length() - 1
            per_tree: dict[int, dict[int, set[int]]] = {}  # tree -> level -> local positions
            for level, position in lattice.multiproof_nodes({leaf_position(spec, ref) for ref in wanted}, depth):
                if level >= low_levels:
                    levels_out.append(level)
                    positions_out.append(position)
                    digests_out.append(top[level - low_levels][position])
                else:
                    tree = position >> (low_levels - level)
                    per_tree.setdefault(tree, {}).setdefault(level, set()).add(position - (tree << (low_levels - level)))
            rows_of: dict[int, list[LeafRef]] = {}
            for ref in wanted:
                rows_of.setdefault(ref.index if kind == "M" else ref.index - 1, []).append(ref)
            for tree, rows in self._subtree_rows(kind, sorted(rows_of)):
                levels = lattice.tree_levels(self.backend, self.keys,
                                             lattice.leaf_digests(self.backend, self.keys, rows), keep=True)
                for level, locals_ in sorted(per_tree.get(tree, {}).items()):
                    for local, digest in zip(sorted(locals_), self._gather(levels[level], sorted(locals_))):
                        levels_out.append(level)
                        positions_out.append((tree << (low_levels - level)) + local)
                        digests_out.append(digest)
                opened = sorted({ref.leaf for ref in rows_of[tree]})
                data = self._gather(rows, opened, as_int8=True)
                digests = self._gather(levels[0], opened)
                by_leaf = {leaf: (data[k], digests[k]) for k, leaf in enumerate(opened)}
                for ref in rows_of[tree]:
                    row, digest = by_leaf[ref.leaf]
                    leaves.append(LeafOpening.build(ref, row.tobytes(), digest))
            nodes.append(TreeNodes.pack(kind, levels_out, positions_out, digests_out))
        self.timings.open_s = time.perf_counter() - started
        return Openings(challenge_id=spec.challenge_id, leaves=leaves, nodes=nodes)

    def _gather(self, array: DeviceArray, indices: list[int], as_int8: bool = False) -> np.ndarray:
        """Host copies of some rows of a device array (one transfer)."""
        picked = array[self.backend.from_host(np.asarray(indices, dtype=np.int64))]
        return self.backend.host_int8(picked) if as_int8 else self.backend.host(picked)

    def _subtree_rows(self, kind: Literal["M", "X"], trees: list[int]) -> Iterator[tuple[int, DeviceArray]]:
        """(tree, its leaves' rows on the device) for each wanted subtree: matrices are
        resident; states are recomputed by replaying the chain (nothing kept between phases)."""
        if kind == "M":
            for i in trees:
                yield i, self._matrix_for_open(i)
            return
        wanted, last = set(trees), max(trees)
        for t, state in self._states():
            if t - 1 in wanted:
                yield t - 1, self.backend.transpose(state)
            if t - 1 >= last:
                return

    # --- housekeeping ----------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise ProofCancelled(f"challenge {self.spec.challenge_id[:8]} cancelled")

    def _report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def release(self) -> None:
        self.matrices.clear()
        self._keys = None
