"""Array backends of the GraVal prover: numpy (CPU), cupy and torch (CPU or CUDA).

Called by ``miner.graval.prover``. Every backend computes the same residues; they differ
in how they stay exact and fast:

- numpy / torch on CPU / cupy: matrices stored as float64 centred values; float64 GEMM
  of entries in [-125, 125] is exact for any n we use (|sum| < 2^53).
- torch on CUDA: matrices stored as int8 (one byte per entry, the memory the challenge
  claims); ``torch._int_mm`` runs int8 tensor cores with int32 accumulation, exact for
  n <= 137,438.

``pick_backend()`` chooses torch CUDA, then cupy, then numpy. Hashing of committed data
happens on the host (``host_int8`` copies a matrix out for the Merkle tree).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from protocol.graval.field import HALF, P, SBOX_CENTRED, hash_residues


class NumpyBackend:
    """float64 storage, BLAS GEMM; ``xp`` may be numpy or cupy (same API).

    On numpy the element-wise passes (hash generation, noise, reduction, S-box) run on
    row blocks in a thread pool: numpy releases the GIL in its loops, so they use every
    core as the GEMM does, instead of one.
    """

    name = "numpy"

    def __init__(self, xp: Any = np) -> None:
        self.xp = xp
        self._sbox = xp.asarray(SBOX_CENTRED.astype(np.float64))
        self._threads = (os.cpu_count() or 1) if xp is np else 1

    def _blocks(self, rows: int, work: Callable[[int, int], None]) -> None:
        """Run ``work(start, stop)`` over row blocks, in parallel on numpy."""
        if self._threads == 1 or rows < 64:
            work(0, rows)
            return
        bounds = np.linspace(0, rows, min(rows, 2 * self._threads) + 1, dtype=int)
        list(_pool(self._threads).map(lambda pair: work(*pair), zip(bounds[:-1], bounds[1:])))

    def generate(self, key: tuple[int, int], rows: int, cols: int) -> Any:
        xp = self.xp
        out = xp.empty((rows, cols), dtype=xp.float64)

        def work(start: int, stop: int) -> None:
            residues = hash_residues(xp.arange(start * cols, stop * cols, dtype=xp.int64), key)
            out[start:stop] = (residues - P * (residues > HALF)).reshape(stop - start, cols)

        self._blocks(rows, work)
        return out

    def vector(self, key: tuple[int, int], length: int) -> Any:
        return hash_residues(self.xp.arange(length, dtype=self.xp.int64), key).astype(self.xp.int32)

    def _finish(self, product: Any, u: Any, v: Any) -> Any:
        """S((product + u 1^T + 1 v^T) mod p), centred, as a new float64 array."""
        xp, sbox = self.xp, self._sbox
        out = xp.empty_like(product)

        def work(start: int, stop: int) -> None:
            residues = product[start:stop].astype(xp.int32)  # |entry| < 2^31 for every n <= MAX_N
            residues += u[start:stop, None]
            residues += v[None, :]
            residues %= P
            out[start:stop] = sbox[residues]

        self._blocks(product.shape[0], work)
        return out

    def fill_step(self, previous: Any, g: Any, u: Any, v: Any) -> Any:
        return self._finish(previous @ g, u, v)

    def access_step(self, matrix: Any, state: Any, u: Any, v: Any) -> Any:
        return self._finish(matrix @ state, u, v)

    def plain_matmul(self, a: Any, b: Any) -> Any:
        """The baseline: the same GEMM without reduction, S-box or hashing."""
        return a @ b

    def host_int8(self, matrix: Any) -> np.ndarray:
        array = matrix.get() if hasattr(matrix, "get") else matrix
        return np.ascontiguousarray(array, dtype=np.int8)

    def transpose(self, matrix: Any) -> Any:
        return matrix.T

    def synchronize(self) -> None:
        if self.xp is not np:
            self.xp.cuda.Stream.null.synchronize()


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="graval")
    return _POOLS[threads]


class CupyBackend(NumpyBackend):
    name = "cupy"

    def __init__(self) -> None:
        import cupy  # noqa: PLC0415 - optional GPU dependency

        super().__init__(cupy)


class TorchBackend:
    """torch on CPU (float64, exact) or CUDA (int8 storage, int8 GEMM with int32 accumulation)."""

    def __init__(self, device: str = "cpu") -> None:
        import torch  # noqa: PLC0415 - optional dependency

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.name = f"torch-{self.device.type}"
        self.dtype = torch.int8 if self.cuda else torch.float64
        self._sbox = torch.as_tensor(SBOX_CENTRED, device=self.device).to(self.dtype)

    def _chunk_rows(self, cols: int) -> int:
        """Rows per block so that an int64 temporary of a block is about one int8 n x n matrix."""
        return max(1, cols // 8)

    def generate(self, key: tuple[int, int], rows: int, cols: int) -> Any:
        torch = self.torch
        out = torch.empty((rows, cols), dtype=self.dtype, device=self.device)
        step = self._chunk_rows(cols)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            counters = torch.arange(start * cols, stop * cols, dtype=torch.int64, device=self.device)
            residues = hash_residues(counters, key)
            out[start:stop] = (residues - P * (residues > HALF)).reshape(stop - start, cols).to(self.dtype)
        return out

    def vector(self, key: tuple[int, int], length: int) -> Any:
        residues = hash_residues(self.torch.arange(length, dtype=self.torch.int64, device=self.device), key)
        return residues.to(self.torch.int32 if self.cuda else self.torch.float64)

    def _matmul(self, a: Any, b: Any) -> Any:
        return self.torch._int_mm(a, b) if self.cuda else a @ b

    def _finish(self, product: Any, u: Any, v: Any) -> Any:
        """S((product + u 1^T + 1 v^T) mod p), centred, by row blocks with in-place reductions
        so that the transient memory stays within the challenge's workspace."""
        out = self.torch.empty(product.shape, dtype=self.dtype, device=self.device)
        step = self._chunk_rows(product.shape[1])
        for start in range(0, product.shape[0], step):
            block = product[start:start + step]
            block += u[start:start + step, None]
            block += v[None, :]
            block.remainder_(P)
            out[start:start + step] = self._sbox[block.long()]
        return out

    def fill_step(self, previous: Any, g: Any, u: Any, v: Any) -> Any:
        return self._finish(self._matmul(previous, g), u, v)

    def access_step(self, matrix: Any, state: Any, u: Any, v: Any) -> Any:
        return self._finish(self._matmul(matrix, state), u, v)

    def plain_matmul(self, a: Any, b: Any) -> Any:
        return self._matmul(a, b)

    def host_int8(self, matrix: Any) -> np.ndarray:
        return np.ascontiguousarray(matrix.to(self.torch.int8).cpu().numpy())

    def transpose(self, matrix: Any) -> Any:
        return matrix.T.contiguous() if self.cuda else matrix.T

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)


Backend = NumpyBackend | TorchBackend


def pick_backend(name: str = "auto", device_index: int = 0) -> Backend:
    """``auto``: torch CUDA, then cupy, then numpy. Or one of numpy, torch-cpu, torch-cuda, cupy."""
    if name == "numpy":
        return NumpyBackend()
    if name == "torch-cpu":
        return TorchBackend("cpu")
    if name == "torch-cuda":
        return TorchBackend(f"cuda:{device_index}")
    if name == "cupy":
        return CupyBackend()
    if name != "auto":
        raise ValueError(f"unknown GraVal backend {name!r}: use auto, numpy, torch-cpu, torch-cuda or cupy")
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return TorchBackend(f"cuda:{device_index}")
    except ImportError:
        pass
    try:
        import cupy  # noqa: PLC0415

        if cupy.cuda.runtime.getDeviceCount() > 0:
            cupy.cuda.Device(device_index).use()
            return CupyBackend()
    except Exception:  # noqa: BLE001 - no cupy or no device: fall back to the CPU
        pass
    return NumpyBackend()
