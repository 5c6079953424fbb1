import sys
import warnings

import numpy as np
import pytest

from salience.numeric import (
    add_by_owner,
    as_random_state,
    normalise01,
    owner_runs,
    row_dots,
    row_seeds,
    softmax_rows,
    standard_normal_rows,
    to_probabilities,
    top_eigenpairs,
    trapezoid,
)


@pytest.mark.parametrize("source", [np.random.default_rng, np.random.RandomState])
def test_row_seeds_are_int64_seeds_that_a_seed_repeats(source):
    seeds = row_seeds(source(5), 1000)
    assert seeds.dtype == np.int64 and seeds.shape == (1000,)
    assert seeds.min() >= 0 and len(np.unique(seeds)) == 1000
    assert seeds.max() > 2**62  # the whole non-negative int64 range, not 32 bits
    np.testing.assert_array_equal(row_seeds(source(5), 1000), seeds)
    assert not np.array_equal(row_seeds(source(6), 1000), seeds)


def test_to_probabilities_is_stable_and_keeps_probabilities():
    p = to_probabilities(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])
    probs = np.array([[0.2, 0.8]])
    np.testing.assert_array_equal(to_probabilities(probs), probs)


def test_to_probabilities_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(n, n_outputs\)"):
        to_probabilities(np.zeros(3))


def test_softmax_rows_is_scipys_softmax_and_softmaxes_distributions_too():
    from scipy.special import softmax

    values = np.random.default_rng(0).normal(size=(4, 1280)) * 30
    np.testing.assert_array_equal(softmax_rows(values), softmax(values, axis=1))
    assert np.isfinite(softmax_rows(np.array([[1000.0, 999.0]]))).all()
    # Unlike to_probabilities, a row that already sums to 1 is not kept as it is.
    np.testing.assert_allclose(softmax_rows(np.array([[0.2, 0.8]])),
                               [[1 / (1 + np.exp(0.6)), 1 / (1 + np.exp(-0.6))]], rtol=1e-15)
    assert softmax_rows(np.ones((2, 3), np.float32)).dtype == np.float32


def test_owner_runs_and_add_by_owner():
    owners = np.array([0, 0, 2, 2, 2, 5])
    assert owner_runs(owners) == [(0, 2), (2, 5), (5, 6)]
    totals = np.zeros(6)
    add_by_owner(totals, owners, np.arange(6.0))
    np.testing.assert_array_equal(totals, [1, 0, 9, 0, 0, 5])
    # weighted: each row's values times its weight, summed per owner
    values = np.arange(12.0).reshape(6, 2)
    weights = np.array([1.0, -1, 2, 0, 0.5, 3])
    weighted = np.zeros((6, 2))
    add_by_owner(weighted, owners, values, weights)
    want = np.zeros((6, 2))
    for owner, w, v in zip(owners, weights, values):
        want[owner] += w * v
    np.testing.assert_allclose(weighted, want)


def test_row_dots_do_not_depend_on_the_blas_threads():
    # Guided IG's sums come out the same on any machine, and call no BLAS thread.
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(3, 200_001)), rng.normal(size=(3, 200_001))
    with threadpool_limits(1, user_api="blas"):
        one = row_dots(a, b)
    with threadpool_limits(2, user_api="blas"):
        two = row_dots(a, b)
    np.testing.assert_array_equal(one, two)


def test_row_dots_equals_einsum():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    np.testing.assert_allclose(row_dots(a, b), np.einsum("ij,ij->i", a, b))


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("d", [1, 2, 16, 49])
def test_top_eigenpairs_equal_numpys_last_eigenpair(d, dtype, rtol):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(5, d + 3, d))
    grams = (a.transpose(0, 2, 1) @ a).astype(dtype)
    values, vectors = top_eigenpairs(grams)
    expected_values, expected_vectors = np.linalg.eigh(grams.astype(np.float64))
    assert values.dtype == dtype and vectors.shape == (5, d)
    np.testing.assert_allclose(values, expected_values[:, -1], rtol=rtol)
    signs = np.sign(np.einsum("nd,nd->n", vectors, expected_vectors[:, :, -1]))
    np.testing.assert_allclose(vectors * signs[:, None], expected_vectors[:, :, -1],
                               rtol=0, atol=50 * rtol)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_top_eigenpairs_refuse_non_finite_matrices(bad):
    matrices = np.stack([np.eye(3), np.eye(3)])
    matrices[1, 2, 2] = bad  # LAPACK itself would return a zero vector
    with pytest.raises(np.linalg.LinAlgError, match="NaN or inf"):
        top_eigenpairs(matrices)


def test_trapezoid_and_normalise01():
    assert trapezoid([0, 1], [0, 1]) == pytest.approx(0.5)
    out = normalise01(np.array([[1.0, 3.0], [2.0, 2.0]]))
    np.testing.assert_array_equal(out, [[0, 1], [0, 0]])


def test_as_random_state():
    g = np.random.default_rng(1)
    assert as_random_state(g) is g
    np.testing.assert_array_equal(as_random_state(3).normal(size=3),
                                  np.random.default_rng(3).normal(size=3))
    for bad in ("x", 1.5, True):
        with pytest.raises(TypeError, match="seed must be None, an int"):
            as_random_state(bad)


@pytest.mark.parametrize("size", [1, 7, 3072])
def test_standard_normal_rows_follow_the_normal_law(size):
    from scipy import stats

    z = standard_normal_rows(np.random.default_rng(5), 120_000 // size + 1, size)
    assert z.dtype == np.float32 and z.shape == (120_000 // size + 1, size)
    values = z.ravel().astype(np.float64)
    assert np.isfinite(values).all()
    assert stats.kstest(values, "norm").pvalue > 1e-3
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    # pairs drawn from one (u, v) are uncorrelated, and so are neighbouring rows
    if size > 1:
        assert abs(np.corrcoef(z[:, 0], z[:, (size + 1) // 2 if size > 2 else 1])[0, 1]) < 0.05
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 0.02


def test_standard_normal_rows_are_the_same_drawn_in_any_chunks():
    whole = standard_normal_rows(np.random.default_rng(9), 7, 147)
    rng = np.random.default_rng(9)
    chunks = [standard_normal_rows(rng, k, 147) for k in (1, 3, 2, 1)]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    assert not np.array_equal(whole, standard_normal_rows(np.random.default_rng(10), 7, 147))


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def _counts_here() -> list[int]:
    """This thread's count of every BLAS library with a count per thread (read by
    setting it and putting it back)."""
    from salience.numeric import _blas_thread_setters

    counts = []
    for set_here in _blas_thread_setters()[0]:
        counts.append(set_here(1))
        set_here(counts[-1])
    return counts


@pytest.mark.threading
def test_one_blas_thread_limits_the_calling_thread_alone():
    # numpy's and scipy's OpenBLAS keep a count per thread; a process-wide count
    # did not reach a helper thread that had called BLAS before.
    import threading

    from threadpoolctl import threadpool_limits

    from salience.numeric import _blas_thread_setters, one_blas_thread

    if not _blas_thread_setters()[0]:
        pytest.skip("no BLAS library here keeps a count per thread")
    with threadpool_limits(2, user_api="blas"):
        seen: dict[str, list[int]] = {}

        def helper():
            seen["helper before"] = _counts_here()  # its first call: a count of its own
            with one_blas_thread():
                seen["helper inside"] = _counts_here()
            seen["helper after"] = _counts_here()

        main_counts = _counts_here()
        assert set(main_counts) == {2}
        thread = threading.Thread(target=helper)
        thread.start()
        thread.join(5)
        assert set(seen["helper before"]) == {2} and set(seen["helper inside"]) == {1}
        assert seen["helper after"] == seen["helper before"]
        with one_blas_thread():
            assert set(_counts_here()) == {1}
            with one_blas_thread():  # nested in the same thread
                assert set(_counts_here()) == {1}
            assert set(_counts_here()) == {1}
        assert _counts_here() == main_counts  # restored


def test_one_blas_thread_unless_small_leaves_the_count_for_a_small_product():
    from threadpoolctl import threadpool_limits

    from salience.numeric import _blas_thread_setters, one_blas_thread_unless

    if not _blas_thread_setters()[0]:
        pytest.skip("no BLAS library here keeps a count per thread")
    with threadpool_limits(2, user_api="blas"):
        with one_blas_thread_unless(True):  # OpenBLAS runs it on one thread anyway
            assert set(_counts_here()) == {2}
        with one_blas_thread_unless(False):
            assert set(_counts_here()) == {1}
        assert set(_counts_here()) == {2}


@pytest.mark.threading
def test_one_blas_thread_limits_a_shared_count_while_any_block_runs(monkeypatch):
    # A BLAS with one count for the process (MKL, BLIS, older OpenBLAS): the first
    # block in sets it, the last one out restores it.
    import threading

    from threadpoolctl import threadpool_limits

    from salience import numeric
    from salience.numeric import _blas_libraries, one_blas_thread

    libraries = _blas_libraries()  # loads scipy's BLAS too, before the limits below
    monkeypatch.setattr(numeric, "_blas_thread_setters", lambda: ([], libraries))
    with threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        assert set(before) == {2}  # something to limit
        with one_blas_thread():
            assert set(_blas_threads()) == {1}
            with one_blas_thread():  # nested in the same thread
                assert set(_blas_threads()) == {1}
            assert set(_blas_threads()) == {1}
            # a block of another thread that ends first must not restore early
            other = threading.Thread(target=_enter_and_leave, args=(one_blas_thread,))
            other.start()
            other.join(5)
            assert set(_blas_threads()) == {1}
        assert _blas_threads() == before  # the last block out restores


def _enter_and_leave(block) -> None:
    with block():
        pass


def test_all_finite(monkeypatch):
    from salience import numeric
    from salience.numeric import all_finite

    assert all_finite(np.arange(5)) and all_finite(np.zeros(3, bool))
    assert all_finite(np.float32(2)) and not all_finite(np.float64(np.nan))
    for dtype in (np.float16, np.float32, np.float64):
        huge = np.full((4, 5), np.finfo(dtype).max, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # checking never warns
            assert all_finite(huge) and all_finite(huge[:, ::2])
        for bad in (np.nan, np.inf, -np.inf):
            for a in (np.ones((3, 4), dtype), np.ones((5, 3), dtype).T, huge.copy()):
                a[2, 1] = bad
                assert not all_finite(a)
    assert not all_finite(np.array([1 + 0j, complex(0, np.nan)]))
    with pytest.raises(TypeError):
        all_finite(np.array([object()]))
    # Large arrays are checked a slab of rows at a time: every slab counts.
    monkeypatch.setattr(numeric, "_FINITE_SLAB", 12)
    big = np.ones((10, 2, 3))
    assert all_finite(big) and all_finite(big[:, :, ::2])
    for row in (0, 1, 2, 9):
        bad = big.copy()
        bad[row, 1, 2] = np.nan
        assert not all_finite(bad)


def test_blas_libraries_are_found_again_after_new_imports(monkeypatch):
    # A framework imported after the first scan may load a BLAS of its own, which
    # one_blas_thread must limit too; without new imports the scan is not repeated.
    import types

    from salience.numeric import _blas_libraries, _blas_libraries_with

    _blas_libraries()
    misses = _blas_libraries_with.cache_info().misses
    _blas_libraries()
    assert _blas_libraries_with.cache_info().misses == misses
    monkeypatch.setitem(sys.modules, "salience_test_new_module", types.ModuleType("m"))
    assert _blas_libraries()  # scipy's BLAS at least
    assert _blas_libraries_with.cache_info().misses == misses + 1
