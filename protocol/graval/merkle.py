"""Merkle commitments over the rows / columns of GraVal matrices (prover builds, verifier checks).

A tree over a power-of-two number of leaves; a leaf is one row (or column) of int8
entries. Hashes are BLAKE2b-256 with domain separation between leaves and inner nodes
(``0x00 || data`` and ``0x01 || left || right``), so an inner node can never be passed
off as a leaf. Leaf hashing of large leaves runs in a thread pool: hashlib releases the
GIL on buffers over 2 KiB, so the work spreads over the cores.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

DIGEST = 32
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="merkle")
    return _POOL


def leaf_hash(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(b"\x00" + bytes(data), digest_size=DIGEST).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(b"\x01" + left + right, digest_size=DIGEST).digest()


def _leaf_hashes(rows: np.ndarray) -> list[bytes]:
    """Hash each row of a C-contiguous 2-D int8/uint8 array."""
    rows = np.ascontiguousarray(rows)
    if rows.shape[1] < 2048 or rows.shape[0] < 8:
        return [leaf_hash(row.data) for row in rows]
    chunks = np.array_split(np.arange(rows.shape[0]), min(rows.shape[0], 4 * (os.cpu_count() or 1)))

    def work(indices: np.ndarray) -> list[bytes]:
        return [leaf_hash(rows[i].data) for i in indices]

    return [digest for part in _pool().map(work, chunks) for digest in part]


class MerkleTree:
    """All levels of one tree, kept by the prover to answer openings."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        count = len(leaves)
        if count == 0 or count & (count - 1):
            raise ValueError(f"a Merkle tree needs a power-of-two number of leaves, got {count}")
        self.levels: list[list[bytes]] = [list(leaves)]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)])

    @classmethod
    def over_rows(cls, rows: np.ndarray) -> "MerkleTree":
        """A tree whose leaf i is row i of ``rows`` (2-D int8 array)."""
        return cls(_leaf_hashes(rows))

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    @property
    def leaves(self) -> int:
        return len(self.levels[0])

    def path(self, index: int) -> list[bytes]:
        """Sibling hashes from the leaf up to (not including) the root."""
        if not 0 <= index < self.leaves:
            raise IndexError(f"leaf {index} out of range 0..{self.leaves - 1}")
        siblings = []
        for level in self.levels[:-1]:
            siblings.append(level[index ^ 1])
            index >>= 1
        return siblings


def verify_path(root: bytes, index: int, leaves: int, data: bytes, path: Sequence[bytes]) -> bool:
    """True when ``data`` is leaf ``index`` of the tree with ``root`` over ``leaves`` leaves."""
    if leaves <= 0 or leaves & (leaves - 1) or not 0 <= index < leaves:
        return False
    if len(path) != leaves.bit_length() - 1 or any(len(sibling) != DIGEST for sibling in path):
        return False
    digest = leaf_hash(data)
    for sibling in path:
        digest = node_hash(sibling, digest) if index & 1 else node_hash(digest, sibling)
        index >>= 1
    return digest == root


class PathChecker:
    """Verifies many openings of one tree, hashing each authenticated node only once.

    Once a path has led to the root, every node on it and every sibling it carried is
    authenticated (a different value under the same root would be a hash collision), so
    a later path stops at the first node already known: it passes when its digest equals
    the known one. With k openings of an n-leaf tree this hashes about k (log n - log k)
    nodes instead of k log n; the answers are exactly those of ``verify_path``.
    """

    def __init__(self, root: bytes, leaves: int) -> None:
        self.root, self.leaves = root, leaves
        self.depth = leaves.bit_length() - 1
        self.known: dict[tuple[int, int], bytes] = {(self.depth, 0): root}

    def check(self, index: int, data: bytes | memoryview, path: Sequence[bytes]) -> bool:
        leaves = self.leaves
        if leaves <= 0 or leaves & (leaves - 1) or not 0 <= index < leaves:
            return False
        if len(path) != self.depth or any(len(sibling) != DIGEST for sibling in path):
            return False
        digest = leaf_hash(data)
        seen: list[tuple[tuple[int, int], bytes]] = []
        position = index
        for level, sibling in enumerate(path):
            known = self.known.get((level, position))
            if known is not None:
                break
            seen.append(((level, position), digest))
            seen.append(((level, position ^ 1), sibling))
            digest = node_hash(sibling, digest) if position & 1 else node_hash(digest, sibling)
            position >>= 1
        else:
            level, known = self.depth, self.root
        if digest != known:
            return False
        self.known.update(seen)
        return True

