"""The GraVal verifier (``protocol.graval.verifier``) against the miner's honest and cheating provers,
in-process: completeness and the attacks, fill -> access (validator's seed) -> picks -> openings -> verdict."""

from __future__ import annotations

import random
import secrets

import pytest

from miner.graval.backends import NumpyBackend, TorchBackend
from miner.graval.prover import Prover
from protocol.graval.spec import ChallengeSpec, access_order, fewest_rebuilds, memory_slowdown, samples_needed
from miner.graval import adversaries as cheats
from protocol.graval.verifier import SampleChecker, Verdict, leaves_for, opened_leaves, pick_samples, verify

SAMPLES = samples_needed()


def small_spec(uuid: str = "GPU-test", **shape) -> ChallengeSpec:
    return ChallengeSpec.fresh(uuid, **{"n": 64, "b": 8, "m": 9, "steps": 16, **shape})


def commit(prover: Prover, seed: bytes | None = None):
    fill = prover.fill()
    seed = seed or secrets.token_bytes(32)
    access = prover.access(seed)
    return fill, access, access_order(prover.spec, seed)


def run(prover: Prover, spec: ChallengeSpec, rng: random.Random | None = None, samples: int = SAMPLES) -> Verdict:
    fill, access, order = commit(prover)
    picked = pick_samples(spec, samples, rng)
    openings = prover.open(leaves_for(spec, order, picked))
    return verify(spec, fill, access, order, picked, openings)


def test_an_honest_prover_passes_100_runs_out_of_100():
    for run_number in range(100):
        spec = small_spec(n=64, b=8, m=2, steps=4)
        verdict = run(Prover(spec, NumpyBackend()), spec, random.Random(run_number))
        assert verdict.ok, (run_number, verdict)
        assert verdict.checked == 2 * SAMPLES


def test_numpy_and_torch_cpu_produce_identical_roots_and_openings():
    spec = small_spec(n=128, b=8, m=3, steps=12)
    seed = secrets.token_bytes(32)
    numpy_prover, torch_prover = Prover(spec, NumpyBackend()), Prover(spec, TorchBackend("cpu"))
    from_numpy, from_torch = commit(numpy_prover, seed), commit(torch_prover, seed)
    assert from_numpy[0].fill_root == from_torch[0].fill_root
    assert from_numpy[1].access_root == from_torch[1].access_root
    assert from_torch[0].backend == "torch-cpu"
    refs = leaves_for(spec, from_numpy[2], pick_samples(spec, 20, random.Random(1)))
    assert numpy_prover.open(refs) == torch_prover.open(refs)


def test_the_proof_is_bound_to_seed_hash_key_and_uuid():
    spec = small_spec()
    variants = (spec, spec.model_copy(update={"seed": "11" * 32}), spec.model_copy(update={"hash_seed": "22" * 32}),
                ChallengeSpec(**{**spec.model_dump(), "uuid": "GPU-other"}))
    assert len({Prover(s, NumpyBackend()).fill().fill_root for s in variants}) == 4


def test_the_access_order_is_the_validators_alone():
    """Nothing the prover commits enters j_t: one seed, one order; another seed, another."""
    spec = small_spec(m=16, steps=64)
    seed = secrets.token_bytes(32)
    assert access_order(spec, seed) == access_order(spec, seed)
    assert access_order(spec, seed) != access_order(spec, secrets.token_bytes(32))
    counts = [0] * spec.m
    for j in access_order(spec.model_copy(update={"steps": 16_000}), seed):
        counts[j] += 1
    assert min(counts) > 800 and max(counts) < 1200  # uniform over the matrices


@pytest.mark.parametrize(("cheat", "reason"), [
    (cheats.RandomRoots, "bad_opening"),
    (cheats.PartialRows, "wrong_product"),
    (cheats.SkippedStep, "wrong_product"),
    (cheats.Guessing, "wrong_product|bad_opening"),  # a step on the wrong matrix, or a dropped row opened
    (cheats.Adaptive, "bad_opening"),
    (cheats.AdaptiveForgedDigests, "bad_opening"),
    (cheats.ForgedOpening, "bad_opening"),
    (cheats.Replayed, "wrong_product"),
    (cheats.OtherUuid, "wrong_product"),
])
def test_every_cheat_is_caught(cheat, reason):
    for attempt in range(5):
        spec = small_spec()
        verdict = run(cheat(spec, NumpyBackend()), spec, random.Random(attempt))
        assert not verdict.ok and verdict.reason in reason.split("|"), verdict


def test_the_adaptive_prover_that_forges_digests_is_caught_by_the_digest_check():
    spec = small_spec()
    verdict = run(cheats.AdaptiveForgedDigests(spec, NumpyBackend()), spec)
    assert verdict.reason == "bad_opening" and "digest is not the data's" in verdict.detail


def test_a_grinding_prover_cannot_reroll_the_order_and_is_refused_every_time():
    """The attack that passed 11 of 12 times before: keep 1 matrix in 8 and grind the
    order by tampering with states. Now 0 re-rolls, and every run fails."""
    for trial in range(12):
        spec = small_spec(n=64, b=8, m=16, steps=32)
        grinder = cheats.Grinding(spec, NumpyBackend())
        verdict = run(grinder, spec, random.Random(trial))
        assert grinder.ground > 0 and grinder.rerolled == 0
        assert not verdict.ok and verdict.reason in ("wrong_product", "bad_opening"), verdict


def test_zeroed_fill_rows_are_caught_by_the_fill_samples_at_the_predicted_rate():
    """Zeroing 9% of every matrix's rows skips ~9% of the access work while every access
    entry matches its (committed, zeroed) inputs: the access samples cannot see it, the
    fill samples must, at >= the per-phase rate of the bound (README, GraVal)."""
    spec = small_spec(n=64, b=8, m=6, steps=96)
    prover = cheats.ZeroRows(spec, NumpyBackend())
    fill, access, order = commit(prover)
    picked = pick_samples(spec, 3000, random.Random(3))
    opened = opened_leaves(spec, fill, access, prover.open(leaves_for(spec, order, picked)))
    checker = SampleChecker(spec, order, opened)
    rate = {phase: sum(bool(checker.check(s)) for s in picked if s.kind == phase) / 3000 for phase in ("fill", "access")}
    assert rate["access"] == 0  # faithful to its committed matrices
    assert rate["fill"] >= (0.09 / 3) * (1 - 1 / 251)
    assert (1 - rate["fill"]) ** SAMPLES < 1e-6


def test_a_tenth_of_skipped_work_is_caught_per_sample_at_the_predicted_rate():
    spec = small_spec(n=64, b=8, m=6, steps=24)
    prover = cheats.PartialRows(spec, NumpyBackend())
    fill, access, order = commit(prover)
    picked = pick_samples(spec, 2000, random.Random(7))
    checker = SampleChecker(spec, order, opened_leaves(spec, fill, access, prover.open(leaves_for(spec, order, picked))))
    for phase in ("fill", "access"):
        drawn = [sample for sample in picked if sample.kind == phase]
        rate = sum(bool(checker.check(sample)) for sample in drawn) / len(drawn)
        assert rate >= (0.1 / 3) * (1 - 1 / 251), phase
        assert (1 - rate) ** SAMPLES < 1e-6, phase


def test_a_rebuilding_prover_answers_right_but_pays_at_least_the_belady_bound_in_matrix_products():
    """Half the matrices resident, Belady's optimal policy with the whole order known: every
    answer is right (only the clock can tell), and it rebuilds at least the fewest matrices
    any prover with that memory must."""
    spec = small_spec(n=64, b=8, m=16, steps=256)
    prover = cheats.Rebuilding(spec, NumpyBackend())
    seed = secrets.token_bytes(32)
    fill, access, order = commit(prover, seed)
    rebuilt = prover.rebuilt
    picked = pick_samples(spec, 100)
    assert verify(spec, fill, access, order, picked, prover.open(leaves_for(spec, order, picked))).ok
    assert rebuilt >= fewest_rebuilds(order, prover.capacity) > 0.15 * spec.steps


def test_the_memory_bound_holds_for_every_gpu_row():
    """A prover short of 10% of the matrices' information is slower in the access phase, on
    the challenge shapes of every GPU row and at its own access / fill rate ratio, than the
    row's window allows, and at least by the share the table loader assumes."""
    from protocol.graval.devices import load_gpu_table  # noqa: PLC0415
    from protocol.graval.spec import plan  # noqa: PLC0415

    for model in load_gpu_table():
        if model.devnet_only:
            continue
        spec = plan("GPU-x", int(model.memory_gb_min * (1 << 30)), n=model.graval_n, b=model.graval_b,
                    steps_per_matrix=model.graval_steps_per_matrix)
        ratio = model.access_macs_per_s / model.fill_macs_per_s
        slowdown = memory_slowdown(spec, access_order(spec, secrets.token_bytes(32)), rate_ratio=ratio)
        assert slowdown >= model.memory_separation > model.window_high, (model.id, slowdown)


def test_a_wrong_commitment_or_missing_opening_is_refused():
    spec = small_spec(m=3, steps=4)
    prover = Prover(spec, NumpyBackend())
    fill, access, order = commit(prover)
    picked = pick_samples(spec, 4)
    openings = prover.open(leaves_for(spec, order, picked))
    other = fill.model_copy(update={"challenge_id": "0" * 32})
    assert verify(spec, other, access, order, picked, openings).reason == "bad_commitment"
    missing = openings.model_copy(update={"leaves": openings.leaves[1:]})
    assert verify(spec, fill, access, order, picked, missing).reason == "bad_opening"
    no_nodes = openings.model_copy(update={"nodes": openings.nodes[1:]})
    assert verify(spec, fill, access, order, picked, no_nodes).reason == "bad_opening"
    garbled = openings.nodes[0].model_copy(update={"positions": openings.nodes[0].positions[:-4]})
    assert verify(spec, fill, access, order, picked, openings.model_copy(update={"nodes": [garbled]})).reason == "bad_opening"
    wrong_order = [(j + 1) % spec.m for j in order]
    assert not verify(spec, fill, access, wrong_order, picked, openings).ok
