"""Yuma-style consensus for the devnet: weights and stake in, incentive/dividends/emission out.

The devnet ledger's epoch step (``chain.devnet.ledger`` runs it at each epoch). Pure
numpy, no I/O. The steps follow subtensor's Yuma consensus, simplified where the devnet
does not need the full machinery (bonds are instantaneous, not an EMA):

1. Only validators with a permit count; their stake is normalised to S (sum 1).
2. Each validator's weight row is normalised to sum 1. A weight set before its target
   uid was (re-)registered is dropped: it was meant for the previous owner of that uid.
3. Consensus per miner j: the stake-weighted median at quantile ``kappa``,
   C_j = max{ w in {0} U {W_ij} : sum of S_i over validators with W_ij >= w  >=  kappa }.
4. Clipping: W'_ij = min(W_ij, C_j); weights above consensus earn nothing extra.
5. Rank R_j = sum_i S_i W'_ij; incentive I = R / sum(R); trust T_j = R_j / sum_i S_i W_ij.
6. Bonds B_ij = S_i W'_ij / sum_k S_k W'_kj (each miner's column sums to 1); dividends
   D_i = sum_j B_ij I_j, normalised to sum 1.
7. Emission of the epoch E: ``miner_share`` of E split by I, ``validator_share`` by D,
   the rest to the subnet owner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_KAPPA = 0.5
MINER_SHARE = 0.41
VALIDATOR_SHARE = 0.41


@dataclass(frozen=True)
class EpochResult:
    """Per-uid outputs of one epoch; arrays are indexed by uid."""

    consensus: np.ndarray
    incentive: np.ndarray
    trust: np.ndarray
    dividends: np.ndarray
    emission: np.ndarray
    owner_emission: float


def _normalise(vector: np.ndarray) -> np.ndarray:
    total = vector.sum()
    return vector / total if total > 0 else np.zeros_like(vector)


def stake_weighted_median(column: np.ndarray, stake: np.ndarray, kappa: float = DEFAULT_KAPPA) -> float:
    """Largest weight w such that validators voting at least w hold at least ``kappa`` of the stake."""
    best = 0.0
    for candidate in np.unique(column):
        if candidate > best and stake[column >= candidate].sum() >= kappa - 1e-12:
            best = float(candidate)
    return best


def run_epoch(
    weights: np.ndarray,
    stake: np.ndarray,
    validator_permit: np.ndarray,
    *,
    weights_set_at: np.ndarray | None = None,
    registered_at: np.ndarray | None = None,
    emission_per_epoch: float = 1.0,
    kappa: float = DEFAULT_KAPPA,
) -> EpochResult:
    """One Yuma-style epoch.

    ``weights[i, j]`` is validator uid i's raw weight on uid j (any scale), ``stake`` is per
    uid in TAO, ``validator_permit`` a bool per uid. ``weights_set_at[i]`` is the block at
    which uid i last set weights and ``registered_at[j]`` the block uid j was registered;
    with both given, outdated weights are masked (step 2).
    """
    n = len(stake)
    if weights.shape != (n, n):
        raise ValueError(f"weights must be {n}x{n}, got {weights.shape}")
    if n == 0:
        empty = np.zeros(0)
        return EpochResult(empty, empty, empty, empty, empty, emission_per_epoch)

    permitted_stake = np.where(validator_permit, np.asarray(stake, dtype=np.float64), 0.0)
    normalised_stake = _normalise(permitted_stake)

    matrix = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64)), 0.0, None)
    matrix[~np.asarray(validator_permit, dtype=bool), :] = 0.0
    if weights_set_at is not None and registered_at is not None:
        outdated = np.asarray(weights_set_at)[:, None] < np.asarray(registered_at)[None, :]
        matrix[outdated] = 0.0
    row_sums = matrix.sum(axis=1, keepdims=True)
    matrix = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)

    voting = normalised_stake > 0
    consensus = np.array(
        [stake_weighted_median(matrix[voting, j], normalised_stake[voting], kappa) for j in range(n)]
    )
    clipped = np.minimum(matrix, consensus[None, :])

    rank = normalised_stake @ clipped
    unclipped_rank = normalised_stake @ matrix
    incentive = _normalise(rank)
    trust = np.divide(rank, unclipped_rank, out=np.zeros(n), where=unclipped_rank > 0)

    stake_votes = normalised_stake[:, None] * clipped
    column_sums = stake_votes.sum(axis=0, keepdims=True)
    bonds = np.divide(stake_votes, column_sums, out=np.zeros_like(stake_votes), where=column_sums > 0)
    dividends = _normalise(bonds @ incentive)

    miner_pool = MINER_SHARE * emission_per_epoch if incentive.sum() > 0 else 0.0
    validator_pool = VALIDATOR_SHARE * emission_per_epoch if dividends.sum() > 0 else 0.0
    emission = miner_pool * incentive + validator_pool * dividends
    return EpochResult(
        consensus=consensus,
        incentive=incentive,
        trust=trust,
        dividends=dividends,
        emission=emission,
        owner_emission=emission_per_epoch - miner_pool - validator_pool,
    )


def top_k_permits(stake: np.ndarray, k: int, threshold: float = 0.0) -> np.ndarray:
    """Validator permits: the ``k`` uids with the most stake (ties by lower uid) among those
    holding at least ``threshold`` (and more than zero)."""
    stake = np.asarray(stake, dtype=np.float64)
    eligible = [uid for uid in range(len(stake)) if stake[uid] > 0 and stake[uid] >= threshold]
    permits = np.zeros(len(stake), dtype=bool)
    for uid in sorted(eligible, key=lambda uid: (-stake[uid], uid))[:k]:
        permits[uid] = True
    return permits
