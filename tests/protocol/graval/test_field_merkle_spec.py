"""GraVal building blocks: field arithmetic, the keyed hash, Merkle paths, challenge specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from protocol.graval import field
from miner.graval.backends import NumpyBackend, TorchBackend
from protocol.graval import lattice
from protocol.graval.spec import ChallengeSpec, access_order, fewest_rebuilds, plan, samples_needed


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


def _ops():
    return [NumpyBackend(), TorchBackend("cpu")]


def test_lattice_leaf_and_node_hashes_agree_on_every_backend_and_the_host():
    seed, n = b"k" * 32, 256
    rows = np.random.default_rng(5).integers(-125, 126, (16, n)).astype(np.int8)
    digests = []
    for ops in _ops():
        keys = lattice.device_keys(ops, seed, n)
        leaves = lattice.leaf_digests(ops, keys, ops.to_storage(ops.from_host(rows)))
        digests.append([ops.host(level) for level in lattice.tree_levels(ops, keys, leaves, keep=True)])
    for ours, theirs in zip(*digests):
        assert np.array_equal(ours, theirs)
    checker = lattice.LeafChecker(seed, n)
    assert checker.leaves_ok(rows, digests[0][0]).all()
    assert np.array_equal(checker.parents(digests[0][0][0::2], digests[0][0][1::2]), digests[0][1])
    assert lattice.NODE_INPUTS * 128 * 128 < 2**24  # float32 node products are exact


def test_a_wrong_leaf_digest_fails_the_freivalds_check():
    seed, n = b"f" * 32, 128
    rows = np.random.default_rng(6).integers(-125, 126, (64, n)).astype(np.int8)
    ops = NumpyBackend()
    digests = ops.host(lattice.leaf_digests(ops, lattice.device_keys(ops, seed, n), ops.to_storage(rows)))
    checker = lattice.LeafChecker(seed, n)
    rng = np.random.default_rng(7)
    forged = digests.copy()
    for i in range(len(forged)):  # one coordinate off by a random amount in each row
        forged[i, rng.integers(lattice.K)] += rng.integers(1, lattice.Q)
    forged %= lattice.Q
    assert not checker.leaves_ok(rows, forged).any()
    other_rows = rows.copy()
    other_rows[:, 0] += 1
    assert not checker.leaves_ok(other_rows, digests).any()


def test_digests_round_trip_and_bad_encodings_are_refused():
    digest = np.arange(lattice.K, dtype=np.int64) * 300 % lattice.Q
    assert np.array_equal(lattice.digest_from_bytes(lattice.digest_bytes(digest)), digest)
    with pytest.raises(ValueError):
        lattice.digest_from_bytes(b"\x00" * 10)
    with pytest.raises(ValueError):
        lattice.digest_from_bytes(np.full(lattice.K, 65535, dtype="<u2").tobytes())  # not below Q


def test_a_multiproof_leads_to_the_root_and_nothing_else_does():
    seed, n, count = b"m" * 32, 64, 32
    ops = NumpyBackend()
    keys = lattice.device_keys(ops, seed, n)
    rows = np.random.default_rng(8).integers(-125, 126, (count, n)).astype(np.int8)
    levels = lattice.tree_levels(ops, keys, lattice.leaf_digests(ops, keys, ops.to_storage(rows)), keep=True)
    checker = lattice.LeafChecker(seed, n)
    opened = {3, 4, 17}
    depth = count.bit_length() - 1
    places = lattice.multiproof_nodes(opened, depth)
    node_levels = np.array([level for level, _ in places])
    node_positions = np.array([position for _, position in places])
    node_digests = np.stack([levels[level][position] for level, position in places])
    positions = np.array(sorted(opened))
    leaves = np.stack([levels[0][position] for position in positions])

    def root(node_levels=node_levels, node_positions=node_positions, node_digests=node_digests):
        return lattice.multiproof_root(checker, positions, leaves, node_levels, node_positions, node_digests, depth)

    assert np.array_equal(root(), levels[-1][0])
    assert root(node_levels[1:], node_positions[1:], node_digests[1:]) is None
    tampered = node_digests.copy()
    tampered[0] = (tampered[0] + 1) % lattice.Q
    assert not np.array_equal(root(node_digests=tampered), levels[-1][0])
    # a sent node where the verifier computes one is ignored: computed nodes win
    extra = (np.append(node_levels, 0), np.append(node_positions, 3), np.vstack([node_digests, levels[0][0]]))
    assert np.array_equal(root(*extra), levels[-1][0])


def test_spec_validation_names_the_problem():
    good = dict(seed="ab" * 32, hash_seed="cd" * 32, uuid="GPU-1", n=256, b=8, m=4, steps=8)
    ChallengeSpec(**good)
    for change in ({"n": 300}, {"b": 12}, {"b": 512}, {"seed": "zz" * 32}, {"seed": "ab"}, {"m": 1}, {"uuid": ""},
                   {"hash_seed": "xy" * 32}):
        with pytest.raises(ValidationError):
            ChallengeSpec(**{**good, **change})


def test_plan_fills_95_percent_of_memory_and_fresh_seeds_differ():
    memory = 80 * 2**30
    spec = plan("GPU-1", memory, n=16384, b=256, steps_per_matrix=64)
    used = spec.resident_bytes + spec.workspace_bytes
    assert 0.93 * memory <= used <= 0.95 * memory
    assert spec.steps == 64 * spec.m
    again = plan("GPU-1", memory, n=16384, b=256)
    assert again.seed != spec.seed and again.hash_seed != spec.hash_seed
    with pytest.raises(ValueError, match="smaller n"):
        plan("GPU-1", 2**20, n=1024, b=16)


def test_the_access_order_comes_from_the_access_seed_only():
    spec = ChallengeSpec(seed="cd" * 32, hash_seed="ef" * 32, uuid="GPU-1", n=256, b=8, m=64, steps=64)
    orders = {tuple(access_order(spec, bytes([i]) * 32)) for i in range(8)}
    assert len(orders) == 8 and access_order(spec, b"\x01" * 32) == access_order(spec, b"\x01" * 32)


def test_belady_gives_the_fewest_rebuilds_of_any_policy():
    """Checked against every eviction choice on small random orders."""
    import functools  # noqa: PLC0415
    import random  # noqa: PLC0415

    def brute(order, capacity):
        @functools.lru_cache(maxsize=None)
        def best(position, resident):
            if position == len(order):
                return 0
            j = order[position]
            if j in resident:
                return best(position + 1, resident)
            after = resident | {j}
            if len(after) <= capacity:
                return 1 + best(position + 1, after)
            return 1 + min(best(position + 1, after - {victim}) for victim in after)  # j may be used once and dropped
        starts = {frozenset(c) for c in __import__("itertools").combinations(sorted(set(order)) or [0], min(capacity, len(set(order))))}
        return min(best(0, start) for start in starts)

    rng = random.Random(4)
    for _ in range(30):
        order = [rng.randrange(5) for _ in range(10)]
        capacity = rng.randrange(1, 4)
        assert fewest_rebuilds(order, capacity) == brute(order, capacity), (order, capacity)


def test_sample_count_meets_one_in_a_million():
    k = samples_needed()
    catch = (0.1 / 3) * (1 - 1 / field.P)
    assert (1 - catch) ** k <= 1e-6 < (1 - catch) ** (k - 1)
    assert samples_needed(skip_fraction=0.5) < k
