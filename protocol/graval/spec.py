"""The GraVal challenge: its shape, what is derived from it, and how big it must be.

Shared by the prover (miner/graval) and the verifier (validator/graval). A challenge is
(validator seed, device uuid, n, b, m, steps). With S the S-box of ``field`` and every
sum taken mod p:

- fill (memory):  M_{-1} = G;  M_i = S(M_{i-1} @ G + u_i 1^T + 1 v_i^T), i = 0..m-1,
  with G = Hash("G") (n x n) and u_i, v_i hash vectors. The m matrices are
  products, not hash outputs, and are what must stay resident (m n^2 bytes).
- access (work):  X_0 = Hash("x0") (n x b);  X_t = S(M_{j_t} @ X_{t-1} + u'_t 1^T + 1 v'_t^T),
  t = 1..steps, where j_t is drawn from the Merkle root of X_{t-1}: the order is unknown
  until the previous state is whole, so a prover cannot schedule around missing matrices.
- commitments: one Merkle root over the rows of each M_i and over the columns of each X_t,
  sent before the validator picks what to open.

The rank-one noise terms stop a wrong (e.g. zeroed) row or state from making later
products free: its effect dies after one step. See README "GraVal" for the bounds.
"""

from __future__ import annotations

import hashlib
import math
import secrets

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.graval.field import DOMAIN, MAX_N, P, derive_key

DEFAULT_FILL_FRACTION = 0.95
DEFAULT_STEPS_PER_MATRIX = 16
WORKSPACE_MATRICES = 6  # G, the int32 product and temporaries, counted against the memory


class ChallengeSpec(BaseModel):
    """What the validator sends in ``Prove``; everything else is derived from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: str = Field(..., description="32 random bytes from the validator, hex", min_length=64, max_length=64)
    uuid: str = Field(..., min_length=1, max_length=128, description="the device this proof is bound to")
    n: int = Field(..., ge=64, le=MAX_N, description="matrix size (power of two)")
    b: int = Field(..., ge=8, description="width of the access-phase state X (power of two, multiple of 8)")
    m: int = Field(..., ge=2, le=4096, description="matrices filled and kept resident")
    steps: int = Field(..., ge=1, le=1_000_000, description="access steps")

    @field_validator("seed")
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
    def fresh(cls, uuid: str, *, n: int, b: int, m: int, steps: int) -> "ChallengeSpec":
        return cls(seed=secrets.token_hex(32), uuid=uuid, n=n, b=b, m=m, steps=steps)

    @property
    def seed_bytes(self) -> bytes:
        return bytes.fromhex(self.seed)

    @property
    def challenge_id(self) -> str:
        material = b"|".join([DOMAIN, self.seed_bytes, self.uuid.encode(), f"{self.n},{self.b},{self.m},{self.steps}".encode()])
        return hashlib.blake2b(material, digest_size=16).hexdigest()

    def key(self, label: str) -> tuple[int, int]:
        return derive_key(self.seed_bytes, self.uuid, (self.n, self.b, self.m, self.steps), label)

    # --- derived quantities ------------------------------------------------------------

    @property
    def resident_bytes(self) -> int:
        """Bytes of the m matrices the prover must hold (one int8 per entry)."""
        return self.m * self.n * self.n

    @property
    def fill_macs(self) -> int:
        return self.m * self.n**3

    @property
    def access_macs(self) -> int:
        return self.steps * self.n * self.n * self.b

    @property
    def work_macs(self) -> int:
        return self.fill_macs + self.access_macs


def access_index(spec: ChallengeSpec, step: int, previous_root: bytes) -> int:
    """j_t: which matrix step ``step`` (1-based) multiplies, drawn from the root of X_{t-1}."""
    material = b"|".join([DOMAIN, b"access", spec.seed_bytes, spec.uuid.encode(), step.to_bytes(4, "little"), previous_root])
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little") % spec.m


def plan(uuid: str, memory_bytes: int, *, n: int, b: int,
         fill_fraction: float = DEFAULT_FILL_FRACTION, steps_per_matrix: int = DEFAULT_STEPS_PER_MATRIX) -> ChallengeSpec:
    """A fresh challenge that fills ``fill_fraction`` of ``memory_bytes`` (workspace included)."""
    matrices = int(fill_fraction * memory_bytes) // (n * n) - WORKSPACE_MATRICES
    if matrices < 2:
        raise ValueError(f"{memory_bytes} bytes hold fewer than 2 matrices of {n}x{n} besides the workspace; use a smaller n")
    return ChallengeSpec.fresh(uuid, n=n, b=b, m=matrices, steps=steps_per_matrix * matrices)


def samples_needed(skip_fraction: float = 0.1, failure: float = 1e-6, leverage: float = 3.0) -> int:
    """Entries to open so that a prover skipping ``skip_fraction`` of the MACs passes with prob <= ``failure``.

    Each committed entry that is not the product of its committed inputs is an error. A
    prover that skips a fraction f of the multiply-accumulates leaves at least f/leverage
    of the (work-weighted) entries in error: an error saves its own dot product plus at
    most the MACs it zeroes in the products that read it (the next fill step, the access
    steps that use the row); the noise terms keep anything cheaper from propagating. A
    sample drawn with probability proportional to work lands on an error with probability
    >= f/leverage and catches it unless the wrong value equals the right one (1/p).
    """
    if not 0 < skip_fraction < 1 or not 0 < failure < 1:
        raise ValueError("skip_fraction and failure must be in (0, 1)")
    catch = (skip_fraction / leverage) * (1 - 1 / P)
    return math.ceil(math.log(failure) / math.log(1 - catch))


#: Share of the matrices' information missing from a prover that holds 90% of their bytes:
#: an entry carries log2(251) = 7.97 bits, and 0.9 x 8 bits is all it keeps per entry.
MISSING_AT_90_PERCENT = 1 - 0.9 * 8 / math.log2(P)


def misses_bound(spec: ChallengeSpec, missing_fraction: float = MISSING_AT_90_PERCENT, failure: float = 1e-6) -> int:
    """Access steps that miss a non-resident matrix, guaranteed except with prob ``failure``.

    With a fraction q of the matrices not resident, each data-dependent access misses with
    probability >= q independently; the Chernoff bound gives the count below which the
    misses fall with probability at most ``failure``.
    """
    steps, q = spec.steps, missing_fraction
    low, high = 0.0, q
    for _ in range(60):  # bisect on x: exp(-steps * KL(x || q)) = failure
        x = (low + high) / 2
        kl = x * math.log(x / q) + (1 - x) * math.log((1 - x) / (1 - q)) if x > 0 else -math.log(1 - q)
        if math.exp(-steps * kl) > failure:
            high = x
        else:
            low = x
    return int(low * steps)
