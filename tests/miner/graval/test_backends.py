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
