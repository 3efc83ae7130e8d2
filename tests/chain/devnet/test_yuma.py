"""Yuma-style epoch math on examples small enough to compute by hand (see chain/devnet/yuma.py)."""

import numpy as np
import pytest

from chain.devnet.yuma import run_epoch, stake_weighted_median, top_k_permits


def test_stake_weighted_median_clips_the_outlier_with_little_stake():
    column = np.array([0.6, 0.2, 0.9])
    stake = np.array([0.5, 0.3, 0.2])
    # 0.9 is held by 20% of stake (< kappa); 0.6 or more by 70%: consensus is 0.6.
    assert stake_weighted_median(column, stake) == pytest.approx(0.6)
    # With a higher kappa only a value voted by 80%+ of stake survives.
    assert stake_weighted_median(column, stake, kappa=0.8) == pytest.approx(0.2)


def two_validators_two_miners():
    weights = np.zeros((4, 4))
    weights[0, 2], weights[0, 3] = 3.0, 1.0  # raw scale: rows are normalised
    weights[1, 2], weights[1, 3] = 0.25, 0.75
    stake = np.array([60.0, 40.0, 0.0, 0.0])
    permit = np.array([True, True, False, False])
    return weights, stake, permit


def test_epoch_matches_hand_computation():
    weights, stake, permit = two_validators_two_miners()
    result = run_epoch(weights, stake, permit, emission_per_epoch=10.0)
    # S = [.6, .4]; consensus: miner2 0.75 (60% vote >= .75), miner3 0.25.
    assert result.consensus[2:] == pytest.approx([0.75, 0.25])
    # Clipped ranks: R2 = .6*.75 + .4*.25 = .55, R3 = .6*.25 + .4*.25 = .25.
    assert result.incentive == pytest.approx([0, 0, 0.6875, 0.3125])
    # Trust: R3 unclipped = .6*.25 + .4*.75 = .45, so T3 = .25/.45.
    assert result.trust[2:] == pytest.approx([1.0, 0.25 / 0.45])
    # Bonds col2 = [.45/.55, .1/.55], col3 = [.6, .4]; D0 = .8182*.6875 + .6*.3125 = .75.
    assert result.dividends == pytest.approx([0.75, 0.25, 0, 0])
    assert result.emission == pytest.approx([3.075, 1.025, 2.81875, 1.28125])
    assert result.owner_emission == pytest.approx(1.8)
    assert result.emission.sum() + result.owner_emission == pytest.approx(10.0)


def test_weights_without_permit_do_not_count():
    weights, stake, permit = two_validators_two_miners()
    weights[2, 3] = 1.0  # a miner votes for miner 3: no permit, ignored
    baseline = run_epoch(*two_validators_two_miners())
    assert run_epoch(weights, stake, permit).incentive == pytest.approx(baseline.incentive)


def test_outdated_weights_on_a_reregistered_uid_are_dropped():
    weights, stake, permit = two_validators_two_miners()
    # Validator 0 set its weights at block 5; uid 3 was re-registered at block 10.
    result = run_epoch(
        weights, stake, permit,
        weights_set_at=np.array([5, 20, 0, 0]), registered_at=np.array([0, 0, 0, 10]),
    )
    # Validator 0's row is now {2: 1.0}; column 3 has only 40% of stake voting .75 -> consensus 0.
    assert result.consensus[3] == 0.0
    assert result.incentive == pytest.approx([0, 0, 1.0, 0.0])


def test_no_weights_means_no_incentive_and_everything_to_the_owner():
    result = run_epoch(np.zeros((3, 3)), np.array([10.0, 0, 0]), np.array([True, False, False]), emission_per_epoch=5)
    assert result.incentive.sum() == 0 and result.dividends.sum() == 0
    assert result.owner_emission == pytest.approx(5.0)


def test_permits_are_top_k_by_stake_above_the_threshold():
    stake = np.array([5.0, 500.0, 300.0, 300.0, 0.0, 150.0])
    assert list(top_k_permits(stake, 2)) == [False, True, True, False, False, False]  # tie -> lower uid
    assert list(top_k_permits(stake, 10, threshold=200)) == [False, True, True, True, False, False]


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        run_epoch(np.zeros((2, 3)), np.zeros(2), np.zeros(2, dtype=bool))
