"""Structural zeros are never stored, and Hessians and Jacobians come as sparse matrices.

- Emitted array results start zeroed in one statement and write only the entries that
  are not structural zeros; the two halves of a symmetric pair are one statement.
- ``hessian(f, sparse=True)`` / ``jacobian(f, sparse=True)`` return CSR matrices equal to
  the dense results, with a pattern fixed per signature.
- A program past ~2,000 operations gets a one-time hint to use ``gradc.scan``.

Math tests use ``backend="python"``; the numba tests are the ones about compiling.
"""
import os
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import scipy.sparse

import gradc
from gradc import emit, native
from gradc.ir import Graph, structural_zero

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cubes(x):
    return np.sum(x ** 3)


def rosen(x):  # banded: a tridiagonal Hessian
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def dense_row(x):  # x[0] couples with every element: a dense first row and column
    return x[0] * np.sum(x ** 2) + np.sum(np.sin(x))


def matrix_arg(A):  # a 2-D argument: the sparse Hessian is (6, 6), the dense (2, 3, 2, 3)
    return np.sum(A[0] * A[1]) + A[0, 0] ** 3


HESSIAN_CASES = [(cubes, 7), (rosen, 9), (dense_row, 6), (matrix_arg, (2, 3))]


def _point(size):
    shape = (size,) if isinstance(size, int) else size
    return np.linspace(-0.8, 1.3, int(np.prod(shape))).reshape(shape)


def _check_matches(sparse, dense):
    assert isinstance(sparse, scipy.sparse.csr_matrix)
    n = int(np.prod(dense.shape[:dense.ndim // 2])) if sparse.shape[0] == sparse.shape[1] else None
    expected = dense.reshape(sparse.shape)
    if n is not None:
        assert sparse.shape == (n, n)
    np.testing.assert_array_equal(sparse.toarray(), expected)
    assert sparse.has_sorted_indices


@pytest.mark.parametrize("fn, size", HESSIAN_CASES, ids=[f.__name__ for f, _ in HESSIAN_CASES])
def test_sparse_hessian_equals_the_dense_one(fn, size):
    x = _point(size)
    dense = gradc.hessian(fn, backend="python")(x)
    sparse = gradc.hessian(fn, backend="python", sparse=True)(x)
    _check_matches(sparse, dense)
    assert sparse.nnz == np.count_nonzero(dense)  # nothing but the nonzeros is stored here


def test_sparse_hessian_of_scalar_arguments_with_argnums():
    f = lambda a, b, c: a * a * b + np.exp(c) + b * c  # noqa: E731
    dense = gradc.hessian(f, argnums=(0, 2), backend="python")(0.5, -1.5, 0.25)
    sparse = gradc.hessian(f, argnums=(0, 2), backend="python", sparse=True)(0.5, -1.5, 0.25)
    assert sparse.shape == (2, 2) and sparse.nnz == 2  # a and c never meet
    np.testing.assert_array_equal(sparse.toarray(), dense)


def test_sparse_hessian_of_a_linear_function_is_empty():
    H = gradc.hessian(lambda x: np.sum(3.0 * x) + 1.0, backend="python", sparse=True)(np.ones(4))
    assert H.shape == (4, 4) and H.nnz == 0


def banded_outputs(x):
    return x[1:] * x[:-1] - np.sin(x[1:])


def dense_row_outputs(x):
    return np.sum(x ** 2), x[0] * x[1], np.cos(x[2])


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("fn", [banded_outputs, dense_row_outputs])
def test_sparse_jacobian_equals_the_dense_one(fn, mode):
    x = _point(5)
    dense = gradc.jacobian(fn, mode=mode, backend="python")(x)
    sparse = gradc.jacobian(fn, mode=mode, backend="python", sparse=True)(x)
    assert isinstance(sparse, scipy.sparse.csr_matrix) and sparse.shape == dense.shape
    np.testing.assert_array_equal(sparse.toarray(), dense)


def test_sparse_jacobian_of_a_scalar_function_is_one_row():
    x = _point(4)
    dense = gradc.jacobian(lambda x: x[0] * x[3], backend="python")(x)
    sparse = gradc.jacobian(lambda x: x[0] * x[3], backend="python", sparse=True)(x)
    assert sparse.shape == (1, 4) and sparse.nnz == 2
    np.testing.assert_array_equal(sparse.toarray()[0], dense)


def test_sparse_pattern_is_the_same_at_every_point():
    """Entries that happen to be 0 at a point stay stored; a matrix edited in place leaves
    later calls alone."""
    H = gradc.hessian(cubes, backend="python", sparse=True)
    first = H(np.zeros(5))  # every value 0.0, every diagonal entry still stored
    assert first.nnz == 5 and not first.toarray().any()
    first.eliminate_zeros()
    second = H(np.arange(5.0))
    assert second.nnz == 5
    np.testing.assert_array_equal(second.indices, np.arange(5))
    np.testing.assert_array_equal(second.toarray(), np.diag(6.0 * np.arange(5.0)))


def test_sparse_is_refused_where_there_is_no_matrix():
    with pytest.raises(gradc.ArgumentError, match="hessian and gradc.jacobian"):
        gradc.hvp(cubes, sparse=True)
    with pytest.raises(gradc.ArgumentError, match="True or False"):
        gradc.hessian(cubes, sparse="yes")


def _stores(source, name):
    """The store statements of array ``name`` in ``source``, and how many entries they write."""
    lines = [ln.strip() for ln in source.splitlines() if re.match(rf"\s+{name}\[", ln)]
    return lines, sum(ln.count(f"{name}[") for ln in lines)


def test_hessian_source_stores_only_the_nonzero_entries():
    n = 50
    source = gradc.hessian(cubes, backend="python").lower([(n,)])[1]
    lines, written = _stores(source, "H")
    assert written == n and len(lines) == n  # 2,450 structural zeros never written
    assert f"H = np.zeros(({n}, {n}))" in source and "np.empty" not in source
    assert all(re.fullmatch(rf"H\[(\d+), \1\] = \w+", ln) for ln in lines)


def test_symmetric_pairs_are_one_statement():
    f = lambda x, y, z: x * y * z + x * x  # noqa: E731
    source = gradc.hessian(f, backend="python").source
    lines, written = _stores(source, "H")
    assert "H[0, 1] = H[1, 0] = " in source and "H[1, 2] = H[2, 1] = " in source
    assert written == 7 and len(lines) == 4  # xx, (xy, yx), (xz, zx), (yz, zy)
    np.testing.assert_array_equal(
        gradc.hessian(f, backend="python")(1.0, 2.0, 3.0),
        [[2.0, 3.0, 2.0], [3.0, 0.0, 1.0], [2.0, 1.0, 0.0]])


def test_arrays_without_structural_zeros_are_not_zeroed_first():
    source = gradc.grad(lambda x: np.sum(x * x), backend="python").lower([(4,)])[1]
    assert "dx = np.empty(4)" in source and "zeros" not in source


def test_negative_zero_is_stored_positive_zero_is_not():
    g = Graph("f")
    assert structural_zero(g.const(0.0))
    assert not structural_zero(g.const(-0.0))  # its sign must survive
    assert not structural_zero(g.const(1.0)) and not structural_zero(g.input("x"))


def test_out_buffers_are_zeroed_where_nothing_is_written():
    """out= writes into the caller's arrays: the entries that are structural zeros must be
    cleared, not left as they were."""
    f = gradc.value_and_grad(lambda x: x[0] * x[2])
    out = np.full(4, np.nan)
    value, grad = f(np.array([2.0, 5.0, 3.0, 7.0]), out=out)
    assert value == 6.0 and grad is out
    np.testing.assert_array_equal(out, [3.0, 0.0, 2.0, 0.0])


@pytest.mark.parametrize("route", ["native", "numba"])
def test_a_compiled_hessian_at_50_compiles_and_matches_python(route, monkeypatch):
    """Issue 15's pathology: this took 134-202 s to compile with 2,500 stores in numba. The
    native route takes it by default; numba's route is what programs using an op outside
    native's table take. Not a strict timing assertion (shared machines); the time is printed
    (pytest -s)."""
    if route == "numba":
        monkeypatch.setattr(native, "MIN_NODES", 10**9)
    x = np.linspace(-1.0, 2.0, 50)
    start = time.perf_counter()
    H = gradc.hessian(cubes)(x)
    took = time.perf_counter() - start
    print(f"\n{route} hessian of sum(x**3), n=50: {took:.2f} s from decoration to result")
    np.testing.assert_array_equal(H, gradc.hessian(cubes, backend="python")(x))
    np.testing.assert_array_equal(H, np.diag(6.0 * x))
    sparse = gradc.hessian(cubes, sparse=True)
    assert sparse.cache_info()["runs"] == route
    np.testing.assert_array_equal(sparse(x).toarray(), H)
    assert took < 60  # only a guard against the old minutes-long compile


def test_gradc_needs_scipy_only_for_sparse_results():
    script = (
        "import sys; sys.modules['scipy'] = None\n"  # any import of scipy fails
        "import numpy as np, gradc\n"
        "H = gradc.hessian(lambda x: np.sum(x ** 3), backend='python')(np.ones(3))\n"
        "assert (H == np.diag([6.0] * 3)).all()\n"
        "try:\n"
        "    gradc.hessian(lambda x: np.sum(x ** 3), sparse=True)\n"
        "except gradc.GradcError as exc:\n"
        "    assert 'pip install scipy' in str(exc), exc\n"
        "    print('refused')\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"


def _long_loop(x):
    for _ in range(800):  # ~4 operations a step, unrolled
        x = np.sin(x) * 1.01 + 0.1
    return x


def test_scan_hint_is_shown_once_past_the_threshold(monkeypatch):
    monkeypatch.setattr(emit, "_scan_hint_shown", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradc.grad(lambda x: x * x, backend="python").lower([None])  # small: no hint
        assert not caught
        gradc.grad(_long_loop, backend="python").lower([None])
        gradc.grad(lambda x: _long_loop(x) + 1.0, backend="python").lower([None])
    hints = [w for w in caught if issubclass(w.category, emit.CompileTimeWarning)]
    assert len(hints) == 1, [str(w.message) for w in caught]
    message = str(hints[0].message)
    assert "_long_loop()" in message and "gradc.scan" in message
    assert hints[0].filename == __file__  # attributed to the user's line


def test_scan_hint_is_for_python_code_only(monkeypatch):
    """A SymPy expression has no Python loop that gradc.scan could keep."""
    import sympy

    monkeypatch.setattr(emit, "_scan_hint_shown", False)
    monkeypatch.setattr(emit, "SCAN_HINT_NODES", 3)
    a, b = sympy.symbols("a b")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradc.from_sympy(sympy.sin(a * b) * sympy.exp(a) + b ** 3, [a, b], backend="python").source
        assert not caught
        gradc.grad(lambda x: np.sin(x * x) * np.exp(x) + x ** 3, backend="python").lower([None])
    assert [w.category for w in caught] == [emit.CompileTimeWarning]
