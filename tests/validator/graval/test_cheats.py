"""Completeness and the cheat matrix, in-process: prover -> commitment -> picks -> openings -> verdict."""

from __future__ import annotations

import random

import pytest

from miner.graval.backends import NumpyBackend, TorchBackend
from miner.graval.prover import Prover
from protocol.graval.spec import ChallengeSpec, samples_needed
from tests.validator.graval import cheats
from validator.graval.verifier import SampleChecker, access_indices, Verdict, leaves_for, opened_leaves, pick_samples, verify

SAMPLES = samples_needed()


def small_spec(uuid: str = "GPU-test", **shape) -> ChallengeSpec:
    return ChallengeSpec.fresh(uuid, **{"n": 64, "b": 8, "m": 9, "steps": 16, **shape})


def run(prover: Prover, spec: ChallengeSpec, rng: random.Random | None = None) -> Verdict:
    commitment = prover.prove()
    samples = pick_samples(spec, SAMPLES, rng)
    openings = prover.open(leaves_for(spec, commitment, samples))
    return verify(spec, commitment, samples, openings)


def test_an_honest_prover_passes_100_runs_out_of_100():
    for run_number in range(100):
        spec = small_spec(n=64, b=8, m=3, steps=6)
        verdict = run(Prover(spec, NumpyBackend()), spec, random.Random(run_number))
        assert verdict.ok, (run_number, verdict)
        assert verdict.checked == 2 * SAMPLES


def test_numpy_and_torch_cpu_produce_identical_roots():
    spec = small_spec(n=128, b=8, m=3, steps=12)
    from_numpy = Prover(spec, NumpyBackend()).prove()
    from_torch = Prover(spec, TorchBackend("cpu")).prove()
    assert from_numpy.matrix_roots == from_torch.matrix_roots
    assert from_numpy.state_roots == from_torch.state_roots
    assert from_torch.backend == "torch-cpu"


def test_the_proof_is_bound_to_seed_and_uuid():
    spec = small_spec()
    other_seed = spec.model_copy(update={"seed": "11" * 32})
    other_uuid = ChallengeSpec(**{**spec.model_dump(), "uuid": "GPU-other"})
    roots = {tuple(Prover(s, NumpyBackend()).prove().matrix_roots) for s in (spec, other_seed, other_uuid)}
    assert len(roots) == 3


@pytest.mark.parametrize(("cheat", "reason"), [
    (cheats.RandomRoots, "bad_opening"),
    (cheats.PartialRows, "wrong_product"),
    (cheats.SkippedStep, "wrong_product"),
    (cheats.Forgetful, "wrong_product|bad_opening"),  # a dropped row opened, or a step on the wrong matrix
    (cheats.Adaptive, "bad_opening"),
    (cheats.ForgedOpening, "bad_opening"),
    (cheats.Replayed, "wrong_product"),
    (cheats.OtherUuid, "wrong_product"),
])
def test_every_cheat_of_the_matrix_is_caught(cheat, reason):
    for attempt in range(5):
        spec = small_spec()
        verdict = run(cheat(spec, NumpyBackend()), spec, random.Random(attempt))
        assert not verdict.ok and verdict.reason in reason.split("|"), verdict


def test_a_regenerating_prover_gives_right_answers_but_pays_in_matrix_products():
    spec = small_spec(m=9, steps=144)
    prover = cheats.Regenerating(spec, NumpyBackend())
    commitment = prover.prove()
    rebuilt_while_proving = prover.rebuilt
    samples = pick_samples(spec, SAMPLES)
    assert verify(spec, commitment, samples, prover.open(leaves_for(spec, commitment, samples))).ok  # only the clock can tell
    # one n^3 product on top of the honest work for every access step that needed the dropped M_8
    assert rebuilt_while_proving == access_indices(spec, commitment).count(8) > 0


def test_a_tenth_of_skipped_work_is_caught_per_sample_at_the_predicted_rate():
    """The soundness bound, measured: with 10% of rows skipped the per-sample catch rate
    (each phase) is at least (0.1/3)(1-1/p), so 410 samples per phase miss it with
    probability below 1e-6."""
    spec = small_spec(n=64, b=8, m=6, steps=24)
    prover = cheats.PartialRows(spec, NumpyBackend())
    commitment = prover.prove()
    samples = pick_samples(spec, 2000, random.Random(7))
    openings = prover.open(leaves_for(spec, commitment, samples))
    checker = SampleChecker(spec, commitment, opened_leaves(spec, commitment, openings))
    for phase in ("fill", "access"):
        drawn = [sample for sample in samples if sample.kind == phase]
        rate = sum(bool(checker.check(sample)) for sample in drawn) / len(drawn)
        assert rate >= (0.1 / 3) * (1 - 1 / 251), phase
        assert (1 - rate) ** SAMPLES < 1e-6, phase


def test_a_wrong_commitment_shape_or_id_is_refused_before_any_opening():
    spec = small_spec(m=3, steps=4)
    prover = Prover(spec, NumpyBackend())
    commitment = prover.prove()
    samples = pick_samples(spec, 4)
    openings = prover.open(leaves_for(spec, commitment, samples))
    short = commitment.model_copy(update={"state_roots": commitment.state_roots[:-1]})
    assert verify(spec, short, samples, openings).reason == "bad_commitment"
    other = commitment.model_copy(update={"challenge_id": "0" * 32})
    assert verify(spec, other, samples, openings).reason == "bad_commitment"
    missing = openings.model_copy(update={"leaves": openings.leaves[1:]})
    assert verify(spec, commitment, samples, missing).reason == "bad_opening"
