"""GraVal's commitments: a Merkle tree whose hash is a lattice (SIS) hash computed by GEMMs.

The seam between the prover's device work (``miner.graval``) and the verifier's checks
(``validator.graval``). The prover must commit to every row of every matrix and every
column of every state without the host touching them: hashing tens of GB a second on the
host (BLAKE2b) would make the timed proof measure the CPU. An Ajtai hash is a matrix
product, so it runs where the GEMMs run (int8 tensor cores on CUDA, BLAS on the CPU) as a
few per cent of the challenge's own work, with the same code on every backend (the array
primitives it needs are ``ArrayOps``: the prover's ``ArrayBackend`` and the verifier's
``HostOps`` supply them):

- a digest is ``K`` residues mod ``Q`` (a prime just below 2^16);
- leaf hash of a row x of n centred int8 entries: ``x (A_lo + 256 A_hi) mod Q``, with
  ``A_lo, A_hi`` n x K int8 matrices from the challenge's hash key (one GEMM of n x 2K);
- node hash: the two children's digests split into base-256 digits (centred int8, 4K of
  them), times a 4K x 2K key matrix the same way.

Collisions of either map are short (|z| <= 255) vectors z with ``z A = 0 mod Q``: the
Short Integer Solution problem, here of K log2 Q = 3072 bits, with a key drawn from the
validator's per-sweep seed (no precomputation). README "GraVal" gives the estimate.

The validator checks an opened leaf's digest in O(n) by Freivalds: with secret uniform
w it compares ``digest . w`` with ``x . (A w)``; a false digest passes with probability
1/Q per vector (two vectors: 2^-32). Nodes it recomputes exactly (a 4K x 2K product).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from protocol.graval.field import DOMAIN, DeviceArray, hash_words

Q = 65521  # the largest prime below 2^16: a digest coordinate is two base-256 digits
K = 192  # digest coordinates: K log2 Q = 3072 bits of SIS
DIGEST_BYTES = 2 * K
NODE_INPUTS = 4 * K  # two children, two digits per coordinate
FREIVALDS_VECTORS = 2


class ArrayOps(Protocol):
    """The array primitives the tree code runs on: the seam to an array library (numpy, cupy
    or torch, CPU or CUDA). The prover's backends (``miner.graval.backends.ArrayBackend``) and
    the verifier's ``HostOps`` implement it; every function here takes one as ``ops``."""

    def matmul_exact(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        """The exact integer product of two arrays of centred int8 values in storage dtype."""
        ...

    def to_int64(self, x: DeviceArray) -> DeviceArray:
        """``x`` as int64."""
        ...

    def to_storage(self, x: DeviceArray) -> DeviceArray:
        """``x`` in the dtype the leaf products take: int8 on a GPU, float64 where BLAS wants it."""
        ...

    def to_node_storage(self, x: DeviceArray) -> DeviceArray:
        """``x`` in the dtype the node products take: int8 on a GPU, float32 on a CPU (exact: < 2^24)."""
        ...

    def cat(self, arrays: list[DeviceArray], axis: int) -> DeviceArray:
        """The arrays joined along ``axis``."""
        ...

    def from_host(self, x: np.ndarray) -> DeviceArray:
        """A host (numpy) array copied to the device."""
        ...

    def host(self, x: DeviceArray) -> np.ndarray:
        """A device array copied to the host."""
        ...


def key_matrix(hash_seed: bytes, rows: int, label: str) -> np.ndarray:
    """``rows`` x 2K centred int8 limbs [A_lo | A_hi] of one key (host numpy; the prover copies it over once)."""
    key = _label_key(hash_seed, rows, label)
    counters = np.arange(rows * 2 * K, dtype=np.int64)
    limbs: NDArray[np.int64] = (hash_words(counters, key) & 0xFF) - 128
    return limbs.reshape(rows, 2 * K).astype(np.int8)


def _label_key(hash_seed: bytes, rows: int, label: str) -> tuple[int, int]:
    import hashlib  # noqa: PLC0415 - only here

    digest = hashlib.blake2b(b"|".join([DOMAIN, b"lattice", hash_seed, str(rows).encode(), label.encode()]),
                             digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def combine(product: DeviceArray) -> DeviceArray:
    """(rows x 2K) exact limb products -> (rows x K) int64 digests mod Q (any backend)."""
    return (product[:, :K] + 256 * product[:, K:]) % Q


def digits(ops: ArrayOps, digests: DeviceArray) -> DeviceArray:
    """(rows x K) digests -> (rows x 2K) centred base-256 digits, low digits first (int64)."""
    return ops.cat([digests & 0xFF, digests >> 8], 1) - 128


@dataclass
class DeviceKeys:
    """The two key matrices of one challenge, on the prover's device, in its storage dtype."""

    leaf: DeviceArray  # n x 2K
    node: DeviceArray  # 4K x 2K


def device_keys(ops: ArrayOps, hash_seed: bytes, n: int) -> DeviceKeys:
    return DeviceKeys(leaf=ops.to_storage(ops.from_host(key_matrix(hash_seed, n, "leaf"))),
                      node=ops.to_node_storage(ops.from_host(key_matrix(hash_seed, NODE_INPUTS, "node"))))


def leaf_digests(ops: ArrayOps, keys: DeviceKeys, rows: DeviceArray) -> DeviceArray:
    """Digests (int64, rows x K) of each row of ``rows`` (centred entries in storage dtype)."""
    return combine(ops.to_int64(ops.matmul_exact(rows, keys.leaf)))


def parents(ops: ArrayOps, keys: DeviceKeys, level: DeviceArray) -> DeviceArray:
    """The level above ``level`` (2N x K digests, siblings adjacent) as N x K digests."""
    pairs = digits(ops, level).reshape(level.shape[0] // 2, NODE_INPUTS)
    return combine(ops.to_int64(ops.matmul_exact(ops.to_node_storage(pairs), keys.node)))


def tree_levels(ops: ArrayOps, keys: DeviceKeys, leaves: DeviceArray, *, keep: bool) -> list[DeviceArray]:
    """Every level from the leaves (power-of-two count) to the root; only [root] unless ``keep``."""
    levels = [leaves]
    level = leaves
    while level.shape[0] > 1:
        level = parents(ops, keys, level)
        levels = [*levels, level] if keep else [level]
    return levels


def pad_rows(ops: ArrayOps, digests: DeviceArray, count: int) -> DeviceArray:
    """Pad a (rows x K) digest array with zero digests to ``count`` rows (a power of two)."""
    missing = count - digests.shape[0]
    if missing <= 0:
        return digests
    return ops.cat([digests, ops.from_host(np.zeros((missing, K), dtype=np.int64))], 0)


def next_power_of_two(count: int) -> int:
    return 1 << max(0, (count - 1).bit_length())


# --- encoding on the wire -------------------------------------------------------------

def digest_bytes(digest: np.ndarray) -> bytes:
    """K residues as 2K little-endian bytes."""
    return np.asarray(digest, dtype="<u2").tobytes()


def digest_from_bytes(data: bytes) -> np.ndarray:
    if len(data) != DIGEST_BYTES:
        raise ValueError(f"a digest is {DIGEST_BYTES} bytes, got {len(data)}")
    digest = np.frombuffer(data, dtype="<u2").astype(np.int64)
    if (digest >= Q).any():
        raise ValueError("a digest coordinate is not below Q")
    return digest


# --- the verifier's side ---------------------------------------------------------------

#: Below this many multiply-accumulates (~4 ms on one core) a BLAS product runs on one
#: thread: tree nodes and access steps are many small products, and OpenBLAS waking its
#: threads for each costs 10x the product itself (100x on a loaded machine, measured).
SMALL_PRODUCT_MACS = 1 << 26
_BLAS: Any = None


def blas_matmul(a: np.ndarray, b: np.ndarray, *, single: bool = False) -> np.ndarray:
    """``a @ b`` on the CPU, single-threaded when small (or ``single``: the validator's checks
    stay on one core, and OpenBLAS's spinning threads would bill it for several)."""
    global _BLAS
    product: np.ndarray
    if not single and a.shape[0] * a.shape[1] * b.shape[1] >= SMALL_PRODUCT_MACS:
        product = a @ b
        return product
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - only when BLAS is used

        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        product = a @ b
    return product


class HostOps:
    """The array primitives on numpy: float64 storage (BLAS is exact for the key products,
    |sum| < 2^53), float32 node inputs. The verifier uses them; the prover's numpy backend
    is these plus its element-wise passes."""

    def matmul_exact(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        return blas_matmul(a, b)

    def to_int64(self, x: DeviceArray) -> DeviceArray:
        return np.asarray(x).astype(np.int64)

    def transpose(self, x: DeviceArray) -> DeviceArray:
        return np.ascontiguousarray(x.T)

    def to_storage(self, x: DeviceArray) -> DeviceArray:
        return np.asarray(x, dtype=np.float64)

    def to_node_storage(self, x: DeviceArray) -> DeviceArray:
        return np.asarray(x, dtype=np.float32)

    def cat(self, arrays: list[DeviceArray], axis: int) -> DeviceArray:
        return np.concatenate(arrays, axis=axis)

    def from_host(self, x: np.ndarray) -> DeviceArray:
        return x

    def host(self, x: DeviceArray) -> np.ndarray:
        return np.asarray(x)


HOST = HostOps()


class LeafChecker:
    """The verifier's view of one hash key: Freivalds checks of leaf digests, exact node hashes.

    ``w`` (FREIVALDS_VECTORS x K, uniform mod Q) never leaves the validator; ``a_w`` = A w
    mod Q per row position (n x FREIVALDS_VECTORS) is computed once per key and shape.
    """

    def __init__(self, hash_seed: bytes, n: int, rng: np.random.Generator | None = None) -> None:
        rng = rng or np.random.default_rng(np.random.SeedSequence())
        self.n = n
        self.w = rng.integers(0, Q, size=(K, FREIVALDS_VECTORS), dtype=np.int64)
        limbs = key_matrix(hash_seed, n, "leaf").astype(np.float64)
        lo = (limbs[:, :K] @ self.w.astype(np.float64)).astype(np.int64) % Q  # |sum| < 2^7 * 2^16 * 192
        hi = (limbs[:, K:] @ self.w.astype(np.float64)).astype(np.int64) % Q
        self.a_w = (lo + 256 * hi) % Q
        self.node_key = key_matrix(hash_seed, NODE_INPUTS, "node").astype(np.float32)

    def leaves_ok(self, rows: np.ndarray, digests: np.ndarray) -> np.ndarray:
        """Per row: does ``digests[i]`` (K residues) equal the leaf hash of ``rows[i]`` (w.h.p.)?"""
        claimed: NDArray[np.int64] = (digests.astype(np.int64) @ self.w) % Q  # < 192 * 2^32: exact
        actual: NDArray[np.int64] = (rows.astype(np.int64) @ self.a_w) % Q  # < n * 128 * 2^16: exact
        agree: NDArray[np.bool_] = (claimed == actual).all(axis=1)
        return agree

    def parents(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Exact node hashes of (left, right) digest pairs (N x K each)."""
        pairs = np.concatenate([digits(HOST, left), digits(HOST, right)], axis=1).astype(np.float32)
        digests: NDArray[np.int64] = combine(blas_matmul(pairs, self.node_key, single=True).astype(np.int64))  # exact: < 2^24
        return digests


# --- multiproofs: the nodes that lead a set of leaves to the root -------------------------

def multiproof_nodes(leaf_positions: set[int], depth: int) -> list[tuple[int, int]]:
    """(level, position) of every node a verifier needs besides the leaves themselves, once."""
    needed: list[tuple[int, int]] = []
    known = set(leaf_positions)
    for level in range(depth):
        needed.extend((level, position ^ 1) for position in sorted(known) if position ^ 1 not in known)
        known = {position >> 1 for position in known}
    return needed


def multiproof_root(checker: LeafChecker, positions: np.ndarray, digests: np.ndarray, node_levels: np.ndarray,
                    node_positions: np.ndarray, node_digests: np.ndarray, depth: int) -> np.ndarray | None:
    """The root that the leaves (``positions``, distinct, with ``digests``) and the sent nodes
    lead to, one vectorised pass per level, or None when a needed node is missing. A node
    the verifier computes always wins over a sent one for the same place."""
    order = np.argsort(positions)
    known_at, known = positions[order], digests[order]
    for level in range(depth):
        at_level = node_levels == level
        sent_at, sent = node_positions[at_level], node_digests[at_level]
        sent_order = np.argsort(sent_at)
        sent_at, sent = sent_at[sent_order], sent[sent_order]
        above = np.unique(known_at >> 1)
        children = []
        for child in (2 * above, 2 * above + 1):
            found = np.zeros((len(child), K), dtype=np.int64)
            have = _lookup(known_at, child)
            found[have >= 0] = known[have[have >= 0]]
            missing = have < 0
            if missing.any():
                from_sent = _lookup(sent_at, child[missing])
                if (from_sent < 0).any():
                    return None
                found[missing] = sent[from_sent]
            children.append(found)
        known_at, known = above, checker.parents(children[0], children[1])
    return known[0] if len(known_at) == 1 and known_at[0] == 0 else None


def _lookup(sorted_positions: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each wanted position in ``sorted_positions``, -1 where absent."""
    if not len(sorted_positions):
        return np.full(len(wanted), -1)
    index = np.minimum(np.searchsorted(sorted_positions, wanted), len(sorted_positions) - 1)
    return np.where(sorted_positions[index] == wanted, index, -1)
