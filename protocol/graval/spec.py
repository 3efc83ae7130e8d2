"""The GraVal challenge: its shape, what is derived from it, and how big it must be.

Shared by the prover (miner/graval) and the verifier (validator/graval). A challenge is
(validator seed, hash seed, device uuid, n, b, m, steps), and runs in three rounds. With S
the S-box of ``field``, H(label) keyed hash matrices and every sum taken mod p:

1. ``Prove`` (fill, timed):  M_{-1} = G = H("G");  M_i = S(M_{i-1} G + u_i 1^T + 1 v_i^T),
   i < m. The prover commits one lattice Merkle root over every row of every M_i (the
   fill root). The m matrices are products, not hash outputs: they must stay resident.
2. ``Access`` (work, timed on its own): the validator sends a fresh ``access_seed`` only
   once the fill root is in; X_0 = H("x0") (n x b),
   X_t = S(M_{j_t} X_{t-1} + u'_t 1^T + 1 v'_t^T), t = 1..steps, j_t = Hash(access_seed, t)
   mod m. The order is the validator's randomness, drawn after the prover committed its
   matrices: nothing the prover chooses re-rolls it (the attack on deriving j_t from the
   prover's own roots was to grind them). The prover commits the access root over every
   column of every X_t.
3. ``Open``: the validator picks entries of both phases and checks each as one dot product.

The rank-one noise terms stop a wrong (e.g. zeroed) row or state from making later
products free. See README "GraVal" for the per-phase bounds.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import secrets

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.graval.field import DOMAIN, MAX_N, P, derive_key, hash_words
from protocol.graval.lattice import K as DIGEST_K
from protocol.graval.lattice import next_power_of_two

if TYPE_CHECKING:
    from protocol.graval.synapses import LeafRef

DEFAULT_FILL_FRACTION = 0.95
DEFAULT_STEPS_PER_MATRIX = 16
WORKSPACE_MATRICES = 6  # G, the int32 product and temporaries, counted against the memory


class ChallengeSpec(BaseModel):
    """What the validator sends in ``Prove``; everything else is derived from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: str = Field(..., description="32 random bytes from the validator, hex", min_length=64, max_length=64)
    hash_seed: str = Field(..., description="the commitment hash's key: 32 random bytes of the validator's sweep, hex",
                           min_length=64, max_length=64)
    uuid: str = Field(..., min_length=1, max_length=128, description="the device this proof is bound to")
    n: int = Field(..., ge=64, le=MAX_N, description="matrix size (power of two)")
    b: int = Field(..., ge=8, description="width of the access-phase state X (power of two, multiple of 8)")
    m: int = Field(..., ge=2, le=4096, description="matrices filled and kept resident")
    steps: int = Field(..., ge=1, le=1_000_000, description="access steps")

    @field_validator("seed", "hash_seed")
    @classmethod
    def _hex(cls, value: str) -> str:
        bytes.fromhex(value)
        return value.lower()

    @field_validator("n", "b")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value

    @model_validator(mode="after")
    def _b_below_n(self) -> "ChallengeSpec":
        if self.b > self.n:
            raise ValueError("b must not exceed n")
        return self

    @classmethod
    def fresh(cls, uuid: str, *, n: int, b: int, m: int, steps: int, hash_seed: str | None = None) -> "ChallengeSpec":
        return cls(seed=secrets.token_hex(32), hash_seed=hash_seed or secrets.token_hex(32), uuid=uuid,
                   n=n, b=b, m=m, steps=steps)

    @property
    def seed_bytes(self) -> bytes:
        return bytes.fromhex(self.seed)

    @property
    def hash_seed_bytes(self) -> bytes:
        return bytes.fromhex(self.hash_seed)

    @property
    def challenge_id(self) -> str:
        material = b"|".join([DOMAIN, self.seed_bytes, self.hash_seed_bytes, self.uuid.encode(),
                              f"{self.n},{self.b},{self.m},{self.steps}".encode()])
        return hashlib.blake2b(material, digest_size=16).hexdigest()

    def key(self, label: str) -> tuple[int, int]:
        return derive_key(self.seed_bytes, self.uuid, (self.n, self.b, self.m, self.steps), label)

    # --- derived quantities ------------------------------------------------------------

    @property
    def resident_bytes(self) -> int:
        """Bytes of the m matrices the prover must hold (one int8 per entry)."""
        return self.m * self.n * self.n

    @property
    def workspace_bytes(self) -> int:
        """G, the int32 product and temporaries, plus the step roots of the access phase."""
        return WORKSPACE_MATRICES * self.n * self.n + self.steps * DIGEST_K * 8

    @property
    def fill_macs(self) -> int:
        return self.m * self.n**3

    @property
    def access_macs(self) -> int:
        return self.steps * self.n * self.n * self.b

    @property
    def work_macs(self) -> int:
        return self.fill_macs + self.access_macs


def fill_depth(spec: ChallengeSpec) -> int:
    """Levels of the fill tree: rows of one matrix, then the matrices (padded to a power of two)."""
    return (spec.n.bit_length() - 1) + (next_power_of_two(spec.m).bit_length() - 1)


def access_depth(spec: ChallengeSpec) -> int:
    return (spec.b.bit_length() - 1) + (next_power_of_two(spec.steps).bit_length() - 1)


def leaf_position(spec: ChallengeSpec, ref: "LeafRef") -> int:
    """Where a leaf sits in its tree: M_i row r at i n + r, X_t column c at (t - 1) b + c."""
    return ref.index * spec.n + ref.leaf if ref.kind == "M" else (ref.index - 1) * spec.b + ref.leaf


def access_order(spec: ChallengeSpec, access_seed: bytes) -> list[int]:
    """j_1..j_steps: the matrix each access step multiplies, drawn from the validator's
    ``access_seed`` (sent after the fill root) and nothing the prover controls: the keyed
    counter hash of ``field`` under a key that BLAKE2b derives from the seeds (uniform over
    the matrices to within 2^-24; one vectorised pass for every step)."""
    material = b"|".join([DOMAIN, b"access", spec.seed_bytes, access_seed, spec.uuid.encode()])
    digest = hashlib.blake2b(material, digest_size=8).digest()
    key = int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")
    order: list[int] = (hash_words(np.arange(1, spec.steps + 1, dtype=np.int64), key) % spec.m).tolist()
    return order


def fewest_rebuilds(order: list[int], capacity: int) -> int:
    """The fewest matrices a prover holding only ``capacity`` of them must rebuild to run ``order``.

    Belady's rule (evict the matrix needed furthest in the future) is optimal for a prover
    that knows the whole order in advance, as one does once ``access_seed`` arrives, and
    it starts with the best possible set resident (the first needed). Rebuilding part of
    a matrix row by row costs the same per row, so keeping fractions of matrices does no
    better (offline paging is integral).
    """
    if capacity <= 0:
        return len(order)
    next_use = [0] * len(order)
    upcoming: dict[int, int] = {}
    for position in range(len(order) - 1, -1, -1):
        next_use[position] = upcoming.get(order[position], len(order))
        upcoming[order[position]] = position
    first_use = sorted(upcoming, key=upcoming.__getitem__)
    resident = {matrix: upcoming[matrix] for matrix in first_use[:capacity]}
    heap = [(-when, matrix) for matrix, when in resident.items()]
    heapq.heapify(heap)
    rebuilds = 0
    for position, matrix in enumerate(order):
        if matrix not in resident:
            rebuilds += 1
        resident[matrix] = next_use[position]
        heapq.heappush(heap, (-next_use[position], matrix))
        while len(resident) > capacity:
            when, victim = heapq.heappop(heap)
            if resident.get(victim) == -when:
                del resident[victim]
    return rebuilds


def plan(uuid: str, memory_bytes: int, *, n: int, b: int, hash_seed: str | None = None,
         fill_fraction: float = DEFAULT_FILL_FRACTION, steps_per_matrix: int = DEFAULT_STEPS_PER_MATRIX) -> ChallengeSpec:
    """A fresh challenge that fills ``fill_fraction`` of ``memory_bytes`` (workspace included)."""
    budget = int(fill_fraction * memory_bytes) - WORKSPACE_MATRICES * n * n
    matrices = budget // (n * n + steps_per_matrix * DIGEST_K * 8)  # each matrix brings its steps' roots
    if matrices < 2:
        raise ValueError(f"{memory_bytes} bytes hold fewer than 2 matrices of {n}x{n} besides the workspace; use a smaller n")
    return ChallengeSpec.fresh(uuid, n=n, b=b, m=matrices, steps=steps_per_matrix * matrices, hash_seed=hash_seed)


def samples_needed(skip_fraction: float = 0.1, failure: float = 1e-6, leverage: float = 3.0) -> int:
    """Entries to open per phase so that a prover skipping ``skip_fraction`` of that phase's
    multiply-accumulates passes with probability <= ``failure``.

    An *error* is a committed entry that is not the product of its committed inputs. Fill:
    an error saves its own dot product (n MACs) and at most n MACs of the next fill step,
    so skipping f of the fill leaves >= f/2 of the fill entries in error. Access: an
    error saves its own n MACs and at most n MACs of the next step; a wrong (say zeroed)
    fill entry saves the access MACs that read it, 16 b = n/4 on average over an order
    the prover did not know when it committed: skipping f of the access leaves
    e_A + e_F >= f/3 (README "GraVal"). A phase's samples are uniform over its entries,
    so each lands on an error with probability >= f/3 and catches it unless the wrong
    value equals the right one (1/p).
    """
    if not 0 < skip_fraction < 1 or not 0 < failure < 1:
        raise ValueError("skip_fraction and failure must be in (0, 1)")
    catch = (skip_fraction / leverage) * (1 - 1 / P)
    return math.ceil(math.log(failure) / math.log(1 - catch))


#: A prover holding 90% of the matrices' bytes lacks at least this share of their
#: information: an entry carries log2(251) = 7.97 bits, and 0.9 x 8 bits is all it keeps.
MISSING_AT_90_PERCENT = 1 - 0.9 * 8 / math.log2(P)


def memory_slowdown(spec: ChallengeSpec, order: list[int], missing_fraction: float = MISSING_AT_90_PERCENT,
                    rate_ratio: float = 1.0) -> float:
    """The least factor by which a prover short of ``missing_fraction`` of the matrices'
    information is slower than an honest one on this access ``order``: each of the fewest
    rebuilds costs one n x n x n fill product, n / b access steps' worth of work, times
    ``rate_ratio`` = access rate / fill rate (a GPU runs the fill's large GEMMs faster per
    MAC than an access step's thin ones, which makes a rebuild relatively cheaper)."""
    capacity = int(spec.m * (1 - missing_fraction))
    rebuild_steps = spec.n / spec.b * rate_ratio
    return 1 + fewest_rebuilds(order, capacity) * rebuild_steps / spec.steps
