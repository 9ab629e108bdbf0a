"""Composed functions: Rosenbrock against SciPy, shared subexpressions computed once, loops, NaN."""
import math
import re

import numpy as np
import pytest
import scipy.optimize

import gradc


def rosen4(x0, x1, x2, x3):
    xs = [x0, x1, x2, x3]
    return sum(100.0 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2 for i in range(3))


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_rosenbrock_against_scipy(backend):
    f = gradc.value_and_grad(rosen4, backend=backend)
    rng = np.random.default_rng(1)
    for x in rng.uniform(-2, 2, size=(5, 4)):
        value, grad = f(*x)
        assert value == pytest.approx(scipy.optimize.rosen(x), rel=1e-13)
        assert np.allclose(grad, scipy.optimize.rosen_der(x), rtol=1e-12, atol=1e-12)


def shared(x, y):
    s = np.sin(x * y)          # used three times, in the value and in every adjoint
    return s * s + np.exp(s) + s / (1.0 + y)


def test_shared_subexpression_is_computed_once():
    f = gradc.value_and_grad(shared, backend="python")
    src = f.source
    assert len(re.findall(r"np\.sin\(", src)) == 1
    assert len(re.findall(r"np\.exp\(", src)) == 1
    assert len(re.findall(r"= x \* y$", src, re.M)) == 1
    assert len(re.findall(r"np\.cos\(", src)) == 1   # d sin = cos, needed once for both x and y
    x, y = 0.7, -0.4
    s = math.sin(x * y)
    ds = 2 * s + math.exp(s) + 1 / (1 + y)
    expected = (s * s + math.exp(s) + s / (1 + y),
                (ds * math.cos(x * y) * y, ds * math.cos(x * y) * x - s / (1 + y) ** 2))
    value, grad = f(x, y)
    assert value == pytest.approx(expected[0])
    assert grad == pytest.approx(expected[1])


def test_loops_unroll_and_sum_over_generator():
    def poly(x, a):
        total = 0.0
        for k in range(5):
            total = total + a * x ** k
        return total + sum(x * j for j in range(3))

    f = gradc.value_and_grad(poly, backend="python")
    value, (dx, da) = f(2.0, 0.5)
    assert value == pytest.approx(0.5 * 31 + 6)
    assert dx == pytest.approx(0.5 * (1 + 4 + 12 + 32) + 3)
    assert da == pytest.approx(31)


def test_operators_mix_floats_ints_and_numpy_scalars():
    f = gradc.value_and_grad(lambda x: 2 - x + np.float64(3) * x / 4 + 1 / x - (-x) + abs(x) ** 2,
                             backend="python")
    x = 1.5
    value, grad = f(x)
    assert value == pytest.approx(2 - x + 0.75 * x + 1 / x + x + x ** 2)
    assert grad == pytest.approx(-1 + 0.75 - 1 / x ** 2 + 1 + 2 * x)


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_nan_and_inf_propagate_like_numpy(backend):
    f = gradc.value_and_grad(lambda x: np.log(x) + x * 0.0, backend=backend)
    value, grad = f(-1.0)
    assert math.isnan(value) and grad == -1.0  # d log(x) = 1/x, as in JAX and NumPy arithmetic
    value, grad = f(0.0)
    assert value == -math.inf
    g = gradc.value_and_grad(lambda x: x * 0.0, backend=backend)  # x*0 is not simplified away
    assert math.isnan(g(math.inf)[0])
    h = gradc.compile(lambda x: 1.0 / x, backend=backend)
    assert h(0.0) == math.inf


def test_unused_argument_has_zero_gradient():
    f = gradc.value_and_grad(lambda x, y: x * x, backend="python")
    assert f(3.0, 4.0) == (9.0, (6.0, 0.0))


def test_constant_function():
    assert gradc.value_and_grad(lambda x: 2.0, backend="python")(1.0) == (2.0, 0.0)


def test_any_callable_objects_and_partials():
    import functools

    class Model:
        def __init__(self, k):
            self.k = k

        def __call__(self, x, y):
            return self.k * x * y

    m = gradc.value_and_grad(Model(2.0), backend="python")
    assert m(3.0, 4.0) == (24.0, (8.0, 6.0))
    p = gradc.grad(functools.partial(lambda k, x: k * x ** 2, 3.0), backend="python")
    assert p(2.0) == 12.0
