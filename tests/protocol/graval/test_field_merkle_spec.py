"""GraVal building blocks: field arithmetic, the keyed hash, Merkle paths, challenge specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from protocol.graval import field
from protocol.graval.merkle import MerkleTree, PathChecker, leaf_hash, node_hash, verify_path
from protocol.graval.spec import ChallengeSpec, access_index, misses_bound, plan, samples_needed


def test_sbox_is_a_permutation_of_the_field():
    assert sorted(field.SBOX.tolist()) == list(range(field.P))
    assert field.SBOX_CENTRED.min() == -field.HALF and field.SBOX_CENTRED.max() == field.HALF
    assert (field.SBOX_CENTRED % field.P == field.SBOX).all()


def test_hash_is_identical_on_numpy_and_torch_and_rows_match_columns():
    key = field.derive_key(b"s" * 32, "GPU-1", (64, 8, 2, 2), "G")
    counters = np.arange(64 * 64, dtype=np.int64)
    from_numpy = field.hash_residues(counters, key)
    from_torch = field.hash_residues(torch.arange(64 * 64, dtype=torch.int64), key).numpy()
    assert np.array_equal(from_numpy, from_torch)
    matrix = from_numpy.reshape(64, 64)
    assert np.array_equal(field.hash_residues(np.arange(64, dtype=np.int64) + 5 * 64, key), matrix[5])  # one row, O(n)
    assert np.array_equal(field.hash_residues(np.arange(64, dtype=np.int64) * 64 + 9, key), matrix[:, 9])  # one column
    assert 0 <= matrix.min() and matrix.max() < field.P
    counts = np.bincount(from_numpy, minlength=field.P)
    assert counts.min() > 0  # every residue appears in 4096 draws


def test_keys_bind_seed_uuid_shape_and_label():
    base = field.derive_key(b"a" * 32, "GPU-1", (64, 8, 2, 2), "G")
    assert field.derive_key(b"b" * 32, "GPU-1", (64, 8, 2, 2), "G") != base
    assert field.derive_key(b"a" * 32, "GPU-2", (64, 8, 2, 2), "G") != base
    assert field.derive_key(b"a" * 32, "GPU-1", (128, 8, 2, 2), "G") != base
    assert field.derive_key(b"a" * 32, "GPU-1", (64, 8, 2, 2), "base") != base


def test_float64_and_float32_products_of_centred_entries_are_exact():
    rng = np.random.default_rng(1)
    a = rng.integers(-field.HALF, field.HALF + 1, (64, 1024))
    b = rng.integers(-field.HALF, field.HALF + 1, (1024, 64))
    exact = a @ b
    assert np.array_equal((a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64), exact)
    assert field.MAX_N > 65536  # int32 accumulation of int8 GEMM is exact at every n we use


def test_merkle_paths_verify_and_refuse_tampering():
    rows = np.arange(8 * 16, dtype=np.int8).reshape(8, 16)
    tree = MerkleTree.over_rows(rows)
    for i in range(8):
        assert verify_path(tree.root, i, 8, rows[i].tobytes(), tree.path(i))
    tampered = rows[3].copy()
    tampered[0] += 1
    assert not verify_path(tree.root, 3, 8, tampered.tobytes(), tree.path(3))
    assert not verify_path(tree.root, 4, 8, rows[3].tobytes(), tree.path(3))  # right data, wrong position
    assert not verify_path(tree.root, 3, 16, rows[3].tobytes(), tree.path(3))  # wrong tree size
    assert not verify_path(tree.root, 3, 8, rows[3].tobytes(), tree.path(3)[:-1])


def test_the_batched_path_checker_answers_exactly_as_verify_path():
    rows = np.random.default_rng(3).integers(-125, 126, size=(64, 32), dtype=np.int8)
    tree = MerkleTree.over_rows(rows)
    checker = PathChecker(tree.root, 64)
    rng = np.random.default_rng(4)
    for index in rng.integers(0, 64, size=200):
        index = int(index)
        data, path = rows[index].tobytes(), tree.path(index)
        assert checker.check(index, data, path) and verify_path(tree.root, index, 64, data, path)
        # after its neighbours are known, a forged leaf or a forged sibling still fails
        forged = bytes([data[0] ^ 1]) + data[1:]
        assert not checker.check(index, forged, path) and not verify_path(tree.root, index, 64, forged, path)
        # a leaf already authenticated needs no more of its path: its digest is known
        assert checker.check(index, data, [path[0]] + [bytes(32)] * (len(path) - 1))
    assert not checker.check(64, rows[0].tobytes(), tree.path(0)) and not checker.check(0, rows[0].tobytes(), tree.path(0)[:-1])
    fresh = PathChecker(tree.root, 64)
    assert not fresh.check(5, rows[5].tobytes(), [bytes(32)] * 6)


def test_an_inner_node_cannot_pass_as_a_leaf():
    rows = np.arange(4 * 8, dtype=np.int8).reshape(4, 8)
    tree = MerkleTree.over_rows(rows)
    inner = tree.levels[1][0]  # node over leaves 0 and 1
    forged = tree.levels[0][0] + tree.levels[0][1]
    assert node_hash(tree.levels[0][0], tree.levels[0][1]) == inner
    assert not verify_path(tree.root, 0, 2, forged, [tree.levels[1][1]])
    assert leaf_hash(forged) != inner


def test_merkle_over_large_rows_uses_the_pool_and_agrees():
    rows = np.random.default_rng(0).integers(-125, 126, (64, 4096)).astype(np.int8)
    tree = MerkleTree.over_rows(rows)
    assert tree.levels[0] == [leaf_hash(row.tobytes()) for row in rows]


def test_spec_validation_names_the_problem():
    good = dict(seed="ab" * 32, uuid="GPU-1", n=256, b=8, m=4, steps=8)
    ChallengeSpec(**good)
    for change in ({"n": 300}, {"b": 12}, {"b": 512}, {"seed": "zz" * 32}, {"seed": "ab"}, {"m": 1}, {"uuid": ""}):
        with pytest.raises(ValidationError):
            ChallengeSpec(**{**good, **change})


def test_plan_fills_95_percent_of_memory_and_fresh_seeds_differ():
    memory = 80 * 2**30
    spec = plan("GPU-1", memory, n=16384, b=256)
    used = spec.resident_bytes + 6 * spec.n * spec.n
    assert 0.93 * memory <= used <= 0.95 * memory
    assert spec.steps == 16 * spec.m
    assert plan("GPU-1", memory, n=16384, b=256).seed != spec.seed
    with pytest.raises(ValueError, match="smaller n"):
        plan("GPU-1", 2**20, n=1024, b=16)


def test_access_order_depends_on_the_previous_root():
    spec = ChallengeSpec(seed="cd" * 32, uuid="GPU-1", n=256, b=8, m=64, steps=8)
    picks = {access_index(spec, 2, bytes([i]) * 32) for i in range(32)}
    assert len(picks) > 16


def test_sample_count_meets_one_in_a_million():
    k = samples_needed()
    catch = (0.1 / 3) * (1 - 1 / field.P)
    assert (1 - catch) ** k <= 1e-6 < (1 - catch) ** (k - 1)
    assert samples_needed(skip_fraction=0.5) < k


def test_misses_bound_is_a_chernoff_lower_tail():
    spec = ChallengeSpec(seed="ef" * 32, uuid="GPU-1", n=16384, b=256, m=275, steps=16 * 275)
    bound = misses_bound(spec)
    assert 0.07 * spec.steps < bound < 0.1 * spec.steps


def test_rebuilding_missing_matrices_costs_more_than_every_gpu_window_allows():
    """A prover missing 10% of the matrices rebuilds one n x n product per miss; with
    probability 1 - 1e-6 the misses push it past the window of every table row."""
    from protocol.graval.devices import load_gpu_table

    for model in load_gpu_table():
        if model.devnet_only:
            continue
        spec = plan("GPU-x", int(model.memory_gb_min * 2**30), n=model.graval_n, b=model.graval_b)
        slowdown = (spec.work_macs + misses_bound(spec) * spec.n**3) / spec.work_macs
        assert slowdown > 1.2 * model.window_high, (model.id, slowdown)
