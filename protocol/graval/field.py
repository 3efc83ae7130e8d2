"""GraVal arithmetic shared by the prover (miner) and the verifier (validator).

Everything lives in the field Z_p with p = 251. A matrix entry is stored as its
*centred* representative in [-125, 125], which fits an int8; a dot product of length
n <= 137,438 stays below 2^31 in absolute value, so int8 GEMM with int32 accumulation
(GPU tensor cores) and float64 GEMM (CPU) are both exact, and every backend produces
bit-identical residues. Why 251 and not a small prime such as 13 or 17: stored entries
must be incompressible, or a prover could pack them and hold the "required" memory in
less; log2(251) = 7.97 bits fill 99.6% of each byte, log2(13) = 3.7 bits fill 46%.

The matrices a validator must be able to regenerate entry by entry come from a keyed,
counter-based 32-bit hash, written with int64 operations that numpy, torch and cupy
implement identically (shifts of non-negative values, xor, multiplies that cannot
overflow 63 bits), so any single row or column is O(n) work on any backend. Keys come
from BLAKE2b over (domain, validator seed, device uuid, challenge shape, label).

``SBOX`` is a fixed permutation of Z_p with no algebraic structure (derived from
BLAKE2b): applying it entrywise makes each stored matrix a non-linear function of the
previous one, so ``M_j @ X`` cannot be computed as ``M_{j-1} @ (G @ X)`` by
associativity; a matrix that is not resident must be rebuilt at O(n^3).
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

P = 251
HALF = (P - 1) // 2  # 125: centred representatives are in [-HALF, HALF]
MAX_N = (2**31 - 1) // (HALF * HALF)  # longest exact int32 dot product of centred entries
DOMAIN = b"canopy-graval-v1"

#: An array on a backend's device: a numpy ``ndarray``, a torch ``Tensor`` or a cupy ``ndarray``.
#: The three libraries share every operation this code uses (indexing, int64 arithmetic, shifts,
#: ``shape``, ``reshape``) but no static type (cupy ships none), so the checker sees ``Any``.
DeviceArray: TypeAlias = Any
#: A hash key: two 32-bit words, or one pair of key words per counter (int64 arrays, the
#: verifier's samples of different matrices hashed in one pass).
Key: TypeAlias = tuple[int, int] | tuple[NDArray[np.int64], NDArray[np.int64]]

_MASK32 = 0xFFFFFFFF
_MIX = 0x045D9F3B  # < 2^31: a 32-bit value times this stays below 2^63


def _make_sbox() -> np.ndarray:
    order = sorted(range(P), key=lambda x: hashlib.blake2b(DOMAIN + b"sbox" + x.to_bytes(2, "little")).digest())
    return np.array(order, dtype=np.int64)


SBOX = _make_sbox()  # residue -> residue, a permutation of range(P)
SBOX_CENTRED = np.where(SBOX > HALF, SBOX - P, SBOX)  # residue -> centred representative of S(x)


def centred(residues: DeviceArray) -> DeviceArray:
    """Map residues in [0, P) to representatives in [-HALF, HALF] (numpy/torch/cupy arrays)."""
    return residues - P * (residues > HALF)


def derive_key(seed: bytes, uuid: str, shape: tuple[int, ...], label: str) -> tuple[int, int]:
    """Two 32-bit keys for one generated object of one challenge (one label per object)."""
    material = b"|".join([DOMAIN, seed, uuid.encode(), ",".join(map(str, shape)).encode(), label.encode()])
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def hash_words(counters: DeviceArray, key: Key) -> DeviceArray:
    """32-bit words from int64 counters < 2^32 (works on numpy, torch and cupy arrays).

    Two rounds of a 32-bit integer mixer keyed by ``key``.
    """
    k0, k1 = key
    x = counters ^ k0
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = ((x >> 16) ^ x) ^ k1
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    return (x >> 16) ^ x


def hash_residues(counters: DeviceArray, key: Key) -> DeviceArray:
    """Residues in [0, P) from int64 counters < 2^32; the bias of ``x mod 251`` for a 32-bit x
    is below 2^-24."""
    return hash_words(counters, key) % P
