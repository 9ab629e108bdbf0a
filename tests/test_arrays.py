"""Small array arguments: traced whole, unrolled into scalar code after differentiating where that
wins (gradc/unroll.py); gradients come back as arrays."""
import numpy as np
import pytest
import scipy.optimize

import gradc


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_vector_rosenbrock_against_scipy(backend):
    f = gradc.value_and_grad(rosen, backend=backend)
    rng = np.random.default_rng(3)
    for x in rng.uniform(-2, 2, size=(3, 20)):
        value, grad = f(x)
        assert value == pytest.approx(scipy.optimize.rosen(x), rel=1e-13)
        assert isinstance(grad, np.ndarray) and grad.shape == (20,)
        np.testing.assert_allclose(grad, scipy.optimize.rosen_der(x), rtol=1e-12, atol=1e-10)


def test_scipy_minimize_with_jac_true():
    f = gradc.value_and_grad(rosen, backend="python")
    x0 = np.full(6, -0.5)
    ours = scipy.optimize.minimize(f, x0, jac=True, method="BFGS")
    theirs = scipy.optimize.minimize(scipy.optimize.rosen, x0, jac=scipy.optimize.rosen_der,
                                     method="BFGS")
    assert ours.success and np.allclose(ours.x, 1.0, atol=1e-4)
    assert ours.nit == theirs.nit


def test_matrix_argument_mixed_with_scalar_and_argnums():
    def f(A, s):
        return np.sum(np.tanh(A @ np.array([1.0, -2.0, 0.5]))) * s

    A = np.arange(6.0).reshape(2, 3) / 10
    vg = gradc.value_and_grad(f, backend="python")
    value, (dA, ds) = vg(A, 2.0)
    z = A @ np.array([1.0, -2.0, 0.5])
    assert value == pytest.approx(np.sum(np.tanh(z)) * 2.0)
    expected = 2.0 * np.outer(1 - np.tanh(z) ** 2, [1.0, -2.0, 0.5])
    np.testing.assert_allclose(dA, expected, rtol=1e-13)
    assert ds == pytest.approx(np.sum(np.tanh(z)))
    np.testing.assert_allclose(gradc.grad(f, argnums=0, backend="python")(A, 2.0), expected)


def test_new_shape_compiles_new_specialisation():
    f = gradc.value_and_grad(rosen, backend="python")
    assert f(np.ones(3))[1].shape == (3,)
    assert f(np.ones(5))[1].shape == (5,)
    assert f(np.arange(4))[0] == pytest.approx(scipy.optimize.rosen(np.arange(4.0)))  # ints -> float


def test_lists_are_rejected_with_advice():
    with pytest.raises(gradc.ArgumentError, match="numpy.asarray"):
        gradc.grad(rosen, backend="python")([1.0, 2.0])


def test_quick_path_converts_int_and_float32_arrays_after_compiling():
    f = gradc.value_and_grad(rosen)  # numba: calls with a compiled shape skip the wrapper
    x = np.arange(5.0) / 4
    expected = f(x)
    for other in (np.arange(5) , (np.arange(5.0) / 4).astype(np.float32), x[::-1][::-1]):
        value, grad = f(other)
        reference = scipy.optimize.rosen_der(np.asarray(other, dtype=float))
        np.testing.assert_allclose(grad, reference, rtol=1e-6)
    assert f(x)[0] == expected[0]
    with pytest.raises(gradc.ArgumentError, match="is a str"):
        f("abc")


@pytest.mark.parametrize("backend, arrays", [("numba", "unroll"), ("python", "unroll"),
                                             ("python", "numpy")])
def test_out_buffers_for_gradients(backend, arrays):
    def f(x, s, A):
        return np.sum(x ** 2) * s + np.sum(np.tanh(A))

    vg = gradc.value_and_grad(f, backend=backend, arrays=arrays)
    x, A = np.linspace(-1, 1, 4), np.arange(6.0).reshape(2, 3) / 10
    expected_value, (ex, es, eA) = vg(x, 2.0, A)
    dx, dA = np.empty(4), np.empty((2, 3))
    value, (gx, gs, gA) = vg(x, 2.0, A, out=(dx, None, dA))
    assert gx is dx and gA is dA  # the caller's buffers, filled
    assert value == pytest.approx(expected_value) and gs == pytest.approx(es)
    np.testing.assert_allclose(dx, ex)
    np.testing.assert_allclose(dA, eA)
    g = gradc.grad(f, argnums=0, backend=backend, arrays=arrays)
    assert g(x, 2.0, A, out=dx) is dx
    with pytest.raises(gradc.ArgumentError, match="shape"):
        vg(x, 2.0, A, out=(np.empty(3), None, dA))
    with pytest.raises(gradc.ArgumentError, match="None"):
        vg(x, 2.0, A, out=(dx, np.empty(1), dA))


def test_gradc_math_on_unrolled_arrays_applies_the_op_per_element():
    f = gradc.value_and_grad(lambda x: np.sum(gradc.math.relu(x) + gradc.math.sigmoid(x)),
                             arrays="unroll", backend="python")
    x = np.array([-1.0, 0.5])
    value, grad = f(x)
    s = 1 / (1 + np.exp(-x))
    assert value == pytest.approx(0.5 + s.sum())
    np.testing.assert_allclose(grad, (x > 0) + s * (1 - s))
    assert f.source.count("np.exp(") == 2  # sigmoid as one op per element, not rebuilt from exp
