"""Array backends of the GraVal prover: numpy (CPU), torch (CPU or CUDA) and cupy (CUDA).

The seam between the prover (``miner.graval.prover``) and an array library. Every step
of a proof runs here, on the device: the keyed hash matrices, the GEMMs, the noise, the
reduction mod p, the S-box and the lattice hashing of the commitment trees
(``protocol.graval.lattice``); the host sees roots and openings only. The generic steps
(``generate``, ``finish``, the trees) are written once on a handful of primitives that
each library supplies, so every backend runs the same code path and gives bit-identical
residues:

- numpy / torch on CPU: entries stored as float64 centred values; float64 GEMM of
  entries in [-128, 127] is exact for every n we use (|sum| < 2^53);
- torch on CUDA: int8 storage (one byte per entry, the memory the challenge claims) and
  ``torch._int_mm`` (int8 tensor cores, int32 accumulation, exact for n <= 131,072);
- cupy: int8 storage and cuBLAS ``gemmEx`` with int8 inputs and int32 accumulation.

``pick_backend()`` chooses torch CUDA, then cupy, then numpy.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from protocol.graval.field import HALF, P, SBOX_CENTRED, DeviceArray, Key, hash_residues
from protocol.graval.lattice import HostOps

#: Row blocks of the element-wise passes hold at most this many int64 temporaries
#: (an n x n int64 copy would be 8 matrices' worth of memory at n = 16384).
BLOCK_ELEMENTS = 1 << 25


class ArrayBackend(ABC):
    """One array library on one device: what the prover (``miner.graval.prover``) runs a proof on.

    Subclasses supply the primitives (abstract below; they include everything the tree code
    needs, ``protocol.graval.lattice.ArrayOps``); the generic steps (``generate``, ``vector``,
    ``finish``, ``fill_step``, ``access_step``) are written once on them. Optional
    capabilities have a default that is right on the CPU: ``synchronize`` (wait for queued
    device work, before a timer stops) and ``release_cached_memory`` (hand an allocator's
    cached device memory back to the driver).
    """

    #: Reported with each proof and picked by ``pick_backend``: one of BACKEND_NAMES.
    name: str = "abstract"
    #: Threads the element-wise passes run on.
    threads: int = 1
    _sbox_cache: DeviceArray | None = None

    # --- primitives (per library) ------------------------------------------------------

    @abstractmethod
    def empty(self, rows: int, cols: int) -> DeviceArray:
        ...

    @abstractmethod
    def arange(self, start: int, stop: int) -> DeviceArray:
        ...

    @abstractmethod
    def from_host(self, array: np.ndarray) -> DeviceArray:
        ...

    @abstractmethod
    def to_int64(self, x: DeviceArray) -> DeviceArray:
        ...

    @abstractmethod
    def to_storage(self, x: DeviceArray) -> DeviceArray:
        ...

    @abstractmethod
    def to_node_storage(self, x: DeviceArray) -> DeviceArray:
        """Inputs of a tree node's hash: int8 on a GPU; float32 on a CPU, exact because a
        node product stays below 2^24 (768 x 128 x 128)."""
        ...

    @abstractmethod
    def cat(self, arrays: list[DeviceArray], axis: int) -> DeviceArray:
        ...

    @abstractmethod
    def host(self, x: DeviceArray) -> np.ndarray:
        ...

    @abstractmethod
    def matmul_exact(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        """The exact integer product of two storage arrays (float64 or int32)."""
        ...

    @abstractmethod
    def transpose(self, x: DeviceArray) -> DeviceArray:
        """A contiguous transpose."""
        ...

    def synchronize(self) -> None:
        """Wait until the work queued on the device is done (a no-op where work runs synchronously)."""

    def release_cached_memory(self) -> None:
        """Hand the device memory this library's allocator keeps cached back to the driver, so that
        another backend or process can fill the device (a no-op where nothing is cached)."""

    # --- generic steps -------------------------------------------------------------------

    def _blocks(self, rows: int, cols: int, work: Callable[[int, int], None]) -> None:
        """Run ``work(start, stop)`` over row blocks of at most BLOCK_ELEMENTS, on ``threads`` threads."""
        step = max(1, BLOCK_ELEMENTS // max(1, cols))
        if self.threads > 1 and rows >= 64:
            step = min(step, -(-rows // (2 * self.threads)))
        bounds = [(start, min(rows, start + step)) for start in range(0, rows, step)]
        if self.threads == 1 or len(bounds) == 1:
            for start, stop in bounds:
                work(start, stop)
        else:
            list(_pool(self.threads).map(lambda pair: work(*pair), bounds))

    def generate(self, key: Key, rows: int, cols: int) -> DeviceArray:
        """The keyed hash matrix H (rows x cols) as centred entries in storage dtype."""
        out = self.empty(rows, cols)

        def work(start: int, stop: int) -> None:
            residues = hash_residues(self.arange(start * cols, stop * cols), key)
            out[start:stop] = self.to_storage((residues - P * (residues > HALF)).reshape(stop - start, cols))

        self._blocks(rows, cols, work)
        return out

    def vector(self, key: Key, length: int) -> DeviceArray:
        return hash_residues(self.arange(0, length), key)

    def finish(self, product: DeviceArray, u: DeviceArray, v: DeviceArray) -> DeviceArray:
        """S((product + u 1^T + 1 v^T) mod p), centred, as a new storage array."""
        out = self.empty(*product.shape)
        sbox = self._sbox

        def work(start: int, stop: int) -> None:
            residues = self.to_int64(product[start:stop])
            residues += u[start:stop, None]
            residues += v[None, :]
            residues %= P
            out[start:stop] = sbox[residues]

        self._blocks(product.shape[0], product.shape[1], work)
        return out

    @property
    def _sbox(self) -> DeviceArray:
        if self._sbox_cache is None:
            self._sbox_cache = self.to_storage(self.from_host(SBOX_CENTRED))
        return self._sbox_cache

    def fill_step(self, previous: DeviceArray, g: DeviceArray, u: DeviceArray, v: DeviceArray) -> DeviceArray:
        return self.finish(self.matmul_exact(previous, g), u, v)

    def access_step(self, matrix: DeviceArray, state: DeviceArray, u: DeviceArray, v: DeviceArray) -> DeviceArray:
        return self.finish(self.matmul_exact(matrix, state), u, v)

    def plain_matmul(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        """The benchmark's baseline: the same GEMM without reduction, S-box or hashing."""
        return self.matmul_exact(a, b)

    def host_int8(self, x: DeviceArray) -> np.ndarray:
        return np.ascontiguousarray(self.host(x), dtype=np.int8)


class NumpyBackend(HostOps, ArrayBackend):  # HostOps supplies the primitives
    """float64 storage and BLAS GEMM (``HostOps``); the element-wise passes run on row blocks
    in a thread pool (numpy releases the GIL in its loops, so they use every core as the GEMM does)."""

    name = "numpy"

    def __init__(self) -> None:
        self.threads = os.cpu_count() or 1

    def empty(self, rows: int, cols: int) -> DeviceArray:
        return np.empty((rows, cols), dtype=np.float64)

    def arange(self, start: int, stop: int) -> DeviceArray:
        return np.arange(start, stop, dtype=np.int64)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="graval")
    return _POOLS[threads]


class TorchBackend(ArrayBackend):
    """torch on CPU (float64, exact) or CUDA (int8 storage, ``_int_mm`` with int32 accumulation)."""

    def __init__(self, device: str = "cpu") -> None:
        import torch  # noqa: PLC0415 - optional dependency

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.name = f"torch-{self.device.type}"
        self.dtype = torch.int8 if self.cuda else torch.float64

    def empty(self, rows: int, cols: int) -> DeviceArray:
        return self.torch.empty((rows, cols), dtype=self.dtype, device=self.device)

    def arange(self, start: int, stop: int) -> DeviceArray:
        return self.torch.arange(start, stop, dtype=self.torch.int64, device=self.device)

    def from_host(self, array: np.ndarray) -> DeviceArray:
        return self.torch.as_tensor(np.ascontiguousarray(array), device=self.device)

    def to_int64(self, x: DeviceArray) -> DeviceArray:
        return x.to(self.torch.int64)

    def to_storage(self, x: DeviceArray) -> DeviceArray:
        return x.to(self.dtype)

    def to_node_storage(self, x: DeviceArray) -> DeviceArray:
        return x.to(self.torch.int8 if self.cuda else self.torch.float32)

    def cat(self, arrays: list[DeviceArray], axis: int) -> DeviceArray:
        return self.torch.cat(arrays, dim=axis)

    def host(self, x: DeviceArray) -> np.ndarray:
        return x.cpu().numpy()

    def matmul_exact(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        if not self.cuda:
            return a @ b  # float64 (or float32 for node hashes): exact
        a, b = a.contiguous(), b.contiguous()
        if a.shape[0] <= 16 or a.shape[1] % 8 or b.shape[1] % 8:  # outside _int_mm's shapes: exact in float64
            return (a.to(self.torch.float64) @ b.to(self.torch.float64)).to(self.torch.int32)
        return self.torch._int_mm(a, b)

    def transpose(self, x: DeviceArray) -> DeviceArray:
        return x.T.contiguous()

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def release_cached_memory(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()


class CupyBackend(ArrayBackend):
    """cupy on CUDA: int8 storage, cuBLAS gemmEx (int8 in, int32 accumulate)."""

    name = "cupy"

    def __init__(self) -> None:
        import cupy  # noqa: PLC0415 - optional GPU dependency

        self.cp = cupy

    def empty(self, rows: int, cols: int) -> DeviceArray:
        return self.cp.empty((rows, cols), dtype=self.cp.int8)

    def arange(self, start: int, stop: int) -> DeviceArray:
        return self.cp.arange(start, stop, dtype=self.cp.int64)

    def from_host(self, array: np.ndarray) -> DeviceArray:
        return self.cp.asarray(array)

    def to_int64(self, x: DeviceArray) -> DeviceArray:
        return x.astype(self.cp.int64)

    def to_storage(self, x: DeviceArray) -> DeviceArray:
        return x.astype(self.cp.int8)

    def to_node_storage(self, x: DeviceArray) -> DeviceArray:
        return x.astype(self.cp.int8)

    def cat(self, arrays: list[DeviceArray], axis: int) -> DeviceArray:
        return self.cp.concatenate(arrays, axis=axis)

    def host(self, x: DeviceArray) -> np.ndarray:
        return self.cp.asnumpy(x)

    def matmul_exact(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        cp = self.cp
        rows, inner = a.shape
        cols = b.shape[1]
        if inner % 4 or cols % 4:  # outside cuBLAS's int8 shapes: exact in float64
            return (a.astype(cp.float64) @ b.astype(cp.float64)).astype(cp.int32)
        from cupy.cuda import device, runtime  # noqa: PLC0415
        from cupy_backends.cuda.libs import cublas  # noqa: PLC0415

        a = cp.ascontiguousarray(a)
        b_t = cp.ascontiguousarray(b.T)  # column-major b, as the "TN" int8 GEMM wants it
        out = cp.empty((rows, cols), dtype=cp.int32)
        one, zero = np.array(1, dtype=np.int32), np.array(0, dtype=np.int32)
        # Row-major out = a b is column-major out^T = b^T a^T: A' = b_t (op T), B' = a (op N).
        cublas.gemmEx(device.get_cublas_handle(), cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, cols, rows, inner,
                      one.ctypes.data, b_t.data.ptr, runtime.CUDA_R_8I, inner, a.data.ptr, runtime.CUDA_R_8I, inner,
                      zero.ctypes.data, out.data.ptr, runtime.CUDA_R_32I, cols,
                      cublas.CUBLAS_COMPUTE_32I, cublas.CUBLAS_GEMM_DEFAULT)
        return out

    def transpose(self, x: DeviceArray) -> DeviceArray:
        return self.cp.ascontiguousarray(x.T)

    def synchronize(self) -> None:
        self.cp.cuda.Stream.null.synchronize()

    def release_cached_memory(self) -> None:
        self.cp.get_default_memory_pool().free_all_blocks()
        self.cp.get_default_pinned_memory_pool().free_all_blocks()


BACKEND_NAMES = ("numpy", "torch-cpu", "torch-cuda", "cupy")


def pick_backend(name: str = "auto", device_index: int = 0) -> ArrayBackend:
    """``auto``: torch CUDA, then cupy, then numpy. Or one of BACKEND_NAMES."""
    if name == "numpy":
        return NumpyBackend()
    if name == "torch-cpu":
        return TorchBackend("cpu")
    if name == "torch-cuda":
        return TorchBackend(f"cuda:{device_index}")
    if name == "cupy":
        import cupy  # noqa: PLC0415

        cupy.cuda.Device(device_index).use()
        return CupyBackend()
    if name != "auto":
        raise ValueError(f"unknown GraVal backend {name!r}: use auto, {', '.join(BACKEND_NAMES)}")
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
