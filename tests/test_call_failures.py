"""What a call answers when compiled code refuses it: numpy.linalg's refusals and numba's.

numba's LAPACK bindings refuse matrices holding NaN or inf, where NumPy computes (NaN);
such a call reruns as the program's NumPy-level code, so the answer is NumPy's. What NumPy
refuses too (a singular matrix) is a gradc.LinAlgError naming the call's line, and still a
numpy.linalg.LinAlgError for code that catches that. numba failing to compile gradc's own
loop code is a gradc bug: arrays="auto" warns and answers with NumPy-level code,
arrays="loops" raises a GradcError; never a raw numba error.
"""
import warnings

import numpy as np
import pytest

import gradc
from gradc import api


def inv_sum(A):
    return np.sum(np.linalg.inv(A))


def solve_sum(A):
    return np.sum(np.linalg.solve(A, np.ones(A.shape[0])))


def cholesky_sum(A):
    return np.sum(np.linalg.cholesky(A))


LOSSES = [inv_sum, solve_sum, cholesky_sum]
N = 6


def _spd():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((N, N))
    return B @ B.T + N * np.eye(N)


@pytest.fixture(scope="module")
def compiled():
    """Each loss as numba loops and on the Python backend, each called once (compiled)."""
    out = {}
    for f in LOSSES:
        loops = gradc.value_and_grad(f, arrays="loops")
        python = gradc.value_and_grad(f, backend="python")
        loops(_spd()), python(_spd())
        out[f.__name__] = loops, python
    return out


@pytest.mark.parametrize("name", [f.__name__ for f in LOSSES])
def test_a_matrix_holding_nan_gives_numpys_nan_under_numba(compiled, name):
    loops, python = compiled[name]
    A = _spd()
    A[1, 2] = A[2, 1] = np.nan
    value, grad = loops(A)  # the thin path: a shape compiled before
    expected_value, expected_grad = python(A)
    assert np.isnan(value) and np.isnan(expected_value)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected_grad))
    value, grad = loops(A.astype(np.float32).astype(np.float64))  # a fresh array, once more
    assert np.isnan(value)


@pytest.mark.parametrize("backend", ["loops", "python"])
def test_a_singular_matrix_is_a_gradc_error_naming_the_call(compiled, backend):
    loops, python = compiled["inv_sum"]
    f = loops if backend == "loops" else python
    with pytest.raises(gradc.LinAlgError, match=r"test_call_failures\.py:\d+.*inv_sum.*[Ss]ingular"):
        f(np.ones((N, N)))
    with pytest.raises(np.linalg.LinAlgError):  # what code written for NumPy catches
        f(np.ones((N, N)))


def test_a_matrix_that_is_not_positive_definite_is_refused_as_numpy_refuses_it(compiled):
    loops, python = compiled["cholesky_sum"]
    for f in (loops, python):
        with pytest.raises(gradc.LinAlgError, match="positive definite"):
            f(-np.eye(N))


def test_out_buffers_get_numpys_answer_when_numbas_lapack_refuses(compiled):
    loops, python = compiled["solve_sum"]
    A = _spd()
    A[0, 0] = np.inf
    dA = np.zeros((N, N))
    for _ in range(2):  # the full out= path, then the thin one
        value, grad = loops(A, out=dA)
        assert grad is dA
        np.testing.assert_array_equal(np.isnan(dA), np.isnan(python(A)[1]))


def _broken_lowering(real):
    """lower_module whose source calls a function numba cannot type: a stand-in for a
    lowering bug that only numba's type inference finds."""
    def lower_module(graph, *args, **kwargs):
        source, func_name = real(graph, *args, **kwargs)
        marker = "    return "
        head, _, tail = source.rpartition(marker)
        return head + "    _ = len(1.5)\n" + marker + tail, func_name
    return lower_module


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_loop_code_numba_cannot_compile_warns_and_answers_with_numpy_level_code(monkeypatch):
    monkeypatch.setattr(api, "lower_module", _broken_lowering(api.lower_module))
    f = gradc.value_and_grad(lambda x: _rosen(x) + 0.25)  # a source no other test compiled
    x = np.linspace(-1.0, 1.5, 400)
    with pytest.warns(gradc.CompileWarning, match="gradc bug"):
        value, grad = f(x)
    expected = gradc.value_and_grad(lambda x: _rosen(x) + 0.25, backend="python")(x)
    assert value == pytest.approx(expected[0], rel=1e-13)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the broken source is not tried again
        f(x * 0.5)


def test_loop_code_numba_cannot_compile_is_a_gradc_error_under_arrays_loops(monkeypatch):
    monkeypatch.setattr(api, "lower_module", _broken_lowering(api.lower_module))
    f = gradc.value_and_grad(lambda x: _rosen(x) + 0.5, arrays="loops")
    with pytest.raises(gradc.GradcError, match=r"test_call_failures\.py:\d+.*gradc bug"):
        f(np.linspace(-1.0, 1.5, 400))
