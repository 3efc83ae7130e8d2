"""Prover backends: chosen automatically, and bit-identical whatever the block sizes."""

from __future__ import annotations

import numpy as np
import pytest

from miner.graval.backends import NumpyBackend, TorchBackend, pick_backend
from protocol.graval.field import HALF


def test_auto_falls_back_to_numpy_without_a_gpu_and_names_are_checked():
    assert pick_backend("auto").name == "numpy"  # CI has neither CUDA nor cupy
    assert pick_backend("torch-cpu").name == "torch-cpu"
    with pytest.raises(ValueError, match="unknown GraVal backend 'tpu'"):
        pick_backend("tpu")


def test_generation_and_reduction_agree_across_backends_and_blocks():
    key = (123, 456)
    numpy, torch_cpu = NumpyBackend(), TorchBackend("cpu")
    for rows, cols in ((100, 64), (64, 200), (7, 8)):  # blocks that do not divide the rows
        a, b = numpy.generate(key, rows, cols), torch_cpu.generate(key, rows, cols).numpy()
        assert np.array_equal(a, b) and a.min() >= -HALF and a.max() <= HALF
    m = numpy.generate(key, 128, 128)
    x = numpy.generate((7, 8), 128, 16)
    u, v = numpy.vector((1, 1), 128), numpy.vector((2, 2), 16)
    from_numpy = numpy.access_step(m, x, u, v)
    from_torch = torch_cpu.access_step(torch_cpu.generate(key, 128, 128), torch_cpu.generate((7, 8), 128, 16),
                                       torch_cpu.vector((1, 1), 128), torch_cpu.vector((2, 2), 16)).numpy()
    assert np.array_equal(from_numpy, from_torch)


def _available(name: str) -> bool:
    try:
        pick_backend(name)
    except Exception:  # noqa: BLE001 - no torch CUDA / no cupy on this machine
        return False
    if name == "torch-cuda":
        import torch  # noqa: PLC0415

        return torch.cuda.is_available()
    return True


@pytest.mark.parametrize("name", ["numpy", "torch-cpu", "torch-cuda", "cupy"])
def test_every_backend_proves_bit_identically_and_the_cpu_verifier_accepts_it(name):
    """The GEMM, hashing and tree path of each backend against numpy's roots and the CPU
    verifier (CUDA backends run where a GPU is; ./run.sh gpu-check runs them at full size)."""
    import random  # noqa: PLC0415
    import secrets  # noqa: PLC0415

    from miner.graval.prover import Prover  # noqa: PLC0415
    from protocol.graval.spec import ChallengeSpec, access_order  # noqa: PLC0415
    from protocol.graval.verifier import leaves_for, pick_samples, verify  # noqa: PLC0415

    if not _available(name):
        pytest.skip(f"no {name} backend on this machine")
    spec = ChallengeSpec.fresh("GPU-exact", n=256, b=8, m=3, steps=12)
    seed = secrets.token_bytes(32)
    reference = Prover(spec, NumpyBackend())
    expected = (reference.fill(), reference.access(seed))
    prover = Prover(spec, pick_backend(name))
    fill, access = prover.fill(), prover.access(seed)
    assert (fill.fill_root, access.access_root) == (expected[0].fill_root, expected[1].access_root)
    order = access_order(spec, seed)
    picked = pick_samples(spec, 40, random.Random(2))
    assert verify(spec, fill, access, order, picked, prover.open(leaves_for(spec, order, picked))).ok
