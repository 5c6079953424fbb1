"""Numeric helpers shared across methods and metrics.

Probabilities from model outputs, sums by owner over sorted rows, row-wise dot
products, areas under curves, random number sources and normal draws, the top
eigenpair of symmetric matrices, and single-threaded BLAS for code that makes
many small BLAS calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "ONE_THREAD_GEMV",
    "ONE_THREAD_PRODUCT",
    "add_by_owner",
    "all_finite",
    "as_random_state",
    "normalise01",
    "one_blas_thread",
    "one_blas_thread_unless",
    "owner_runs",
    "row_dots",
    "row_seeds",
    "softmax_rows",
    "standard_normal_rows",
    "to_probabilities",
    "top_eigenpairs",
    "trapezoid",
]


def all_finite(arr: np.ndarray) -> bool:
    """Whether every value of ``arr`` is finite.

    ``np.isfinite(...).all()``: a sum or a max and min are slower at every
    size measured; a self dot product is faster but wakes OpenBLAS's threads
    above 10k values, which then contend with the model's.  Large arrays are
    checked a slab at a time so the boolean temporary stays under
    ``_FINITE_SLAB`` bytes.
    """
    if arr.dtype.kind in "iub":  # integers and booleans are always finite
        return True
    if arr.size <= _FINITE_SLAB:
        return bool(np.isfinite(arr).all())
    step = max(1, _FINITE_SLAB // arr[0].size)  # rows per slab (size > 0 here)
    return all(np.isfinite(arr[start:start + step]).all() for start in range(0, len(arr), step))


_FINITE_SLAB = 1 << 22  # values (4 MiB of booleans)


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, k)`` model outputs, computed stably in float64.

    Rows that already are probability distributions (non-negative, summing to
    1) are kept as they are, so a model ending in a softmax is not squashed a
    second time.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim != 2:
        raise ValueError(f"expected model outputs shaped (n, n_outputs), got {outputs.shape}")
    if (outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1, atol=1e-4):
        return outputs
    return softmax_rows(outputs)


def softmax_rows(values: np.ndarray) -> np.ndarray:
    """Softmax of each row of a 2-D array, in its dtype; shifted by the row's
    maximum first, so ``exp`` cannot overflow (the same bits as
    ``scipy.special.softmax(values, axis=1)``, at half its cost per call)."""
    exp = np.exp(values - values.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def owner_runs(owners: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of equal values in sorted ``owners``."""
    if owners[0] == owners[-1]:  # one owner in the chunk (always so at batch_size=1)
        return [(0, len(owners))]
    boundaries = np.flatnonzero(np.diff(owners)) + 1
    return list(zip([0, *boundaries.tolist()], [*boundaries.tolist(), len(owners)]))


def add_by_owner(totals: np.ndarray, owners: np.ndarray, values: np.ndarray,
                 weights: np.ndarray | None = None) -> None:
    """``totals[o] += sum of values whose owner is o``, for sorted owners (runs); with
    ``weights``, each value times its row's weight (one matrix-vector product per
    run, instead of a weighing pass and a sum)."""
    for a, b in owner_runs(owners):
        if weights is None:
            totals[owners[a]] += values[a] if b - a == 1 else values[a:b].sum(axis=0)
        else:
            totals[owners[a]] += (weights[a:b] @ values[a:b].reshape(b - a, -1)).reshape(
                values.shape[1:])


def row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of each row of ``a`` with the same row of ``b``, without BLAS.

    Guided IG takes these sums on its helper thread, where a BLAS dot product
    runs on every BLAS thread whatever :func:`one_blas_thread` set (numpy's
    OpenBLAS 0.3.31 keeps a thread count per calling thread, taken at that
    thread's first call), and the woken BLAS threads then spin on the other
    core: in the own-work benchmark Guided IG took 2.2-3.5 ms per 224 px row
    with twice that in CPU time, against 2.05-2.08 ms and 1.1x with einsum,
    which is slower per sum (4 x 150528: 252 against 109 us) but single-threaded.
    """
    return np.einsum("ij,ij->i", a, b)


# numpy < 2 has only trapz, which numpy 2's type stubs no longer know
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # type: ignore[attr-defined]


def top_eigenpairs(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest eigenvalue ``(n,)`` and a unit eigenvector ``(n, d)`` of each
    symmetric matrix of a stack ``(n, d, d)`` (each vector's sign is arbitrary).

    LAPACK's ``syevr`` asked for the top eigenpair alone: for a 49 x 49 Gram
    matrix 3x faster than ``numpy.linalg.eigh``, which finds every pair.

    Raises
    ------
    numpy.linalg.LinAlgError
        A matrix holds NaN or inf (LAPACK would return zeros for it), or LAPACK
        did not converge.
    """
    from scipy.linalg import lapack  # on use: scipy's import is slow

    if not all_finite(matrices):
        raise np.linalg.LinAlgError("eigenvectors of a matrix with NaN or inf values")
    n, d = matrices.shape[0], matrices.shape[-1]
    (syevr,) = lapack.get_lapack_funcs(("syevr",), (matrices,))
    values = np.empty(n, dtype=matrices.dtype)
    vectors = np.empty((n, d), dtype=matrices.dtype)
    for i in range(n):
        value, vector, _, _, info = syevr(matrices[i], compute_v=1, range="I", il=d, iu=d)
        if info != 0:
            raise np.linalg.LinAlgError(f"the eigenvalue solver did not converge (info {info})")
        values[i], vectors[i] = value[0], vector[:, 0]
    return values, vectors


def trapezoid(y: Any, x: Any) -> float:
    """Area under the curve ``y(x)`` by the trapezoidal rule, on any numpy version."""
    return float(_trapezoid(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)))


def normalise01(maps: np.ndarray) -> np.ndarray:
    """Scale each map of a batch to [0, 1] (a constant map becomes all zeros)."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    out = np.divide(flat - low, span, out=np.zeros_like(flat, dtype=np.float64), where=span > 0)
    return out.reshape(maps.shape)


def as_random_state(seed: Any) -> Any:
    """An object with ``.normal`` / ``.uniform``: a Generator from an int or None,
    or the given ``numpy.random.Generator`` / ``RandomState`` itself."""
    if isinstance(seed, (np.random.Generator, np.random.RandomState)):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(
        f"seed must be None, an int, a numpy Generator or RandomState, got {type(seed).__name__}"
    )


def row_seeds(rng: Any, count: int) -> np.ndarray:
    """``count`` int64 seeds in ``[0, 2**63 - 1)`` from a numpy Generator or
    RandomState: one per row, for rows drawn by another generator (a framework's,
    on its device) that must not depend on how the rows are chunked."""
    if isinstance(rng, np.random.RandomState):
        return rng.randint(0, 2**63 - 1, size=count, dtype=np.int64)
    return rng.integers(0, 2**63 - 1, size=count, dtype=np.int64)


def standard_normal_rows(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """``(rows, size)`` independent float32 standard normal values from ``rng``.

    The Box-Muller transform of float32 uniforms: for ``u, v`` uniform on
    [0, 1), ``sqrt(-2 ln(1 - u)) cos(2 pi v)`` and ``... sin(2 pi v)`` are two
    independent standard normals.  numpy's own float32 ``standard_normal``
    (a ziggurat, one value at a time) took 8.3-8.6 ns a value on this
    project's machine, the transform in a few vectorised passes 2.4-2.9 ns
    (8 x 3072 to 8 x 150528 values, freed memory kept).  The
    tails end at 5.77 (``u`` has 24 bits): a value beyond it has probability
    8e-9 under the normal law.

    Each row draws its own ``2 * ceil(size / 2)`` uniforms, so drawing rows in
    any chunks (consecutive calls on one generator) gives the same values as
    drawing them all at once.
    """
    half = (size + 1) // 2
    uniforms = rng.random((rows, 2, half), dtype=np.float32)
    radius = np.subtract(np.float32(1), uniforms[:, 0])  # in (0, 1]: a finite log
    np.log(radius, out=radius)
    radius *= np.float32(-2)
    np.sqrt(radius, out=radius)
    angle = uniforms[:, 1]
    angle *= np.float32(2 * np.pi)
    out = np.empty((rows, 2, half), dtype=np.float32)
    np.cos(angle, out=out[:, 0])
    np.sin(angle, out=out[:, 1])
    out *= radius[:, None]
    return out.reshape(rows, 2 * half)[:, :size]


def _blas_libraries() -> list[Any]:
    # Finding the loaded BLAS libraries scans the process's memory map (a few
    # ms), so it is done again only after new modules were imported: a framework
    # imported later (TensorFlow, JAX) may bring a BLAS of its own.
    return _blas_libraries_with(len(sys.modules))


@functools.lru_cache(maxsize=1)
def _blas_libraries_with(modules: int) -> list[Any]:
    # scipy's LAPACK is loaded first, so that it is among the libraries found.
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


def _blas_thread_setters() -> tuple[list[Any], list[Any]]:
    return _blas_thread_setters_with(len(sys.modules))


@functools.lru_cache(maxsize=1)
def _blas_thread_setters_with(modules: int) -> tuple[list[Any], list[Any]]:
    """The BLAS libraries as (setters of the calling thread's count, libraries with
    one count for the process).  OpenBLAS 0.3.26 and later keep a count per thread
    (``openblas_set_num_threads_local``, which returns the previous one)."""
    local, shared = [], []
    for lib in _blas_libraries_with(modules):
        setter = (getattr(getattr(lib, "dynlib", None), "openblas_set_num_threads_local", None)
                  if lib.internal_api == "openblas" else None)
        if setter is None:
            shared.append(lib)
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        local.append(setter)
    return local, shared


_blas_lock = threading.Lock()
_blas_users = 0
_blas_restore: list[tuple[Any, int]] = []


def one_blas_thread_unless(small: bool) -> contextlib.AbstractContextManager[None]:
    """:func:`one_blas_thread` for a product large enough for OpenBLAS to wake its
    threads; a ``small`` one (see :data:`ONE_THREAD_GEMV`, :data:`ONE_THREAD_PRODUCT`)
    runs on one thread by itself and skips the few microseconds the limit costs."""
    return contextlib.nullcontext() if small else one_blas_thread()


ONE_THREAD_GEMV = 2304 * 4
"""OpenBLAS runs a matrix-vector product of fewer values on one thread by itself."""
ONE_THREAD_PRODUCT = 1 << 18
"""OpenBLAS runs a matrix product of fewer multiply-adds on one thread by itself."""


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with single-threaded BLAS in this thread.

    For code that makes many small BLAS calls (blur matrices, per-triangle
    LAPACK factorisations): a multi-threaded OpenBLAS wakes and synchronises
    its threads for each of them, which is slower than one thread and contends
    with the model's own threads.  The numbers are the same.

    An OpenBLAS with a count per thread (numpy's and scipy's wheels) is limited
    in the calling thread alone, which is also the only way that works there:
    its process-wide count does not reach a thread that has called it before
    (a helper thread's products ran on both BLAS threads inside a process-wide
    limit, whose woken threads then spun on the other core).  Other BLAS
    libraries get the process-wide count: the first block to enter sets it,
    the last to leave restores it, so concurrent blocks never undo each other.
    Entering costs a few microseconds.
    """
    global _blas_users
    local, shared = _blas_thread_setters()
    previous = [set_here(1) for set_here in local]
    with _blas_lock:
        if _blas_users == 0:
            for lib in shared:
                threads = lib.get_num_threads()
                if threads != 1:
                    _blas_restore.append((lib, threads))
                    lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        for set_here, threads in zip(local, previous):
            set_here(threads)
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                while _blas_restore:
                    lib, threads = _blas_restore.pop()
                    lib.set_num_threads(threads)
