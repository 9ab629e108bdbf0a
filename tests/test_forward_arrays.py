"""Forward mode on arrays traced whole: jvp and hvp at every size, against central differences.

The op table's ``jvp`` rules (linear ops apply themselves to the tangent, ``matmul`` is
bilinear, ``max``/``min`` share ties as their vjp does) and the rules derived from ``vjp``
for elementwise ops with broadcasting are checked here through ``gradc.jvp`` and
``gradc.hvp``: at sizes 1, 7, 300 and 10^4, traced whole (``arrays="numpy"``, the Python
backend: the oracle path) and unrolled where that is small, and compiled as loops once.
"""
import numpy as np
import pytest

import gradc

SIZES = (1, 7, 300, 10_000)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


# f(x) -> scalar, built from the array ops the jvp rules cover
SCALAR_FUNCTIONS = {
    "rosen": rosen,
    "broadcast_mean": lambda x: np.mean(np.sin(x) * x[0] + np.exp(-x) / (1.0 + x ** 2)),
    "max_min": lambda x: np.max(x ** 2) - 3.0 * np.min(np.cos(x)) + np.sum(np.tanh(x)),
    "matmul_outer": lambda x: np.sum(np.reshape(x, (-1, 1)) @ np.reshape(np.sin(x), (1, -1))),
    "transpose_2d": lambda x: np.sum(np.transpose(np.stack([x, x ** 2])) ** 3),
    "concatenate": lambda x: np.sum(np.concatenate([x[::-1] ** 2, np.log1p(x ** 2)]) * 0.5),
    "where": lambda x: np.sum(np.where(x > 0.5, x ** 3, np.sin(x))),
    "axis_sum": lambda x: np.sum(np.sum(np.stack([x, 2.0 * x, x ** 2]), axis=0) ** 2),
}


def _point(n, seed=0):
    """A point in (0.1, 0.9) with one clear largest element (0.95), so that ``max`` and
    ``min`` do not switch elements within a central difference's step; and a direction."""  # noqa
    rng = np.random.default_rng(seed + n)
    x = rng.uniform(0.1, 0.9, n)
    x[np.abs(x - 0.5) < 1e-3] = 0.3  # where's condition x > 0.5 must not flip either
    x[n // 2] = 0.95
    return x, rng.standard_normal(n)


def _central(f, x, v, h=1e-4):
    """Richardson-extrapolated central difference of ``f`` at ``x`` along ``v``."""
    d = lambda h: (f(x + h * v) - f(x - h * v)) / (2 * h)  # noqa: E731
    return (4 * d(h / 2) - d(h)) / 3


def _close(actual, expected, rtol):
    scale = max(1.0, float(np.max(np.abs(expected))))
    assert np.max(np.abs(np.asarray(actual) - expected)) <= rtol * scale


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(SCALAR_FUNCTIONS))
def test_jvp_of_array_ops_matches_central_differences(name, n):
    f = SCALAR_FUNCTIONS[name]
    x, v = _point(n)
    value, tangent = gradc.jvp(f, backend="python", arrays="numpy")(x, v)
    assert value == pytest.approx(f(x), rel=1e-12)
    _close(tangent, _central(f, x, v), 1e-6)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(SCALAR_FUNCTIONS))
def test_hvp_of_array_ops_matches_central_differences_of_the_gradient(name, n):
    f = SCALAR_FUNCTIONS[name]
    x, v = _point(n, seed=1)
    grad = gradc.grad(f, backend="python", arrays="numpy")
    hv = gradc.hvp(f, backend="python", arrays="numpy")(x, v)
    assert hv.shape == x.shape
    _close(hv, _central(grad, x, v), 1e-5)


@pytest.mark.parametrize("name", sorted(set(SCALAR_FUNCTIONS) - {"max_min"}))  # max: whole only
def test_hvp_traced_whole_equals_the_unrolled_hvp(name):
    f = SCALAR_FUNCTIONS[name]
    x, v = _point(7, seed=2)
    whole = gradc.hvp(f, backend="python", arrays="numpy")(x, v)
    unrolled = gradc.hvp(f, backend="python", arrays="unroll")(x, v)
    np.testing.assert_allclose(whole, unrolled, rtol=1e-13, atol=1e-13)


def test_hvp_is_the_transpose_of_itself_in_a_random_direction():
    """<u, H v> == <v, H u>: a dot test of forward-over-reverse, at a large size."""
    f = SCALAR_FUNCTIONS["broadcast_mean"]
    x, u = _point(10_000, seed=3)
    _, v = _point(10_000, seed=4)
    hvp = gradc.hvp(f, backend="python", arrays="numpy")
    assert np.dot(u, hvp(x, v)) == pytest.approx(np.dot(v, hvp(x, u)), rel=1e-10)


def test_jvp_of_an_array_valued_function_traced_whole():
    f = lambda x: np.sin(x) * x[::-1] + np.sum(x ** 2)  # noqa: E731
    x, v = _point(300, seed=5)
    value, tangent = gradc.jvp(f, backend="python", arrays="numpy")(x, v)
    np.testing.assert_allclose(value, f(x), rtol=1e-14)
    _close(tangent, _central(f, x, v), 1e-7)


def test_compiled_hvp_runs_as_loops_and_serves_every_length_with_one_compile():
    hvp = gradc.hvp(rosen)
    oracle = gradc.hvp(rosen, backend="python", arrays="numpy")
    for n in (300, 1000, 10_000):
        x, v = _point(n, seed=6)
        np.testing.assert_array_equal(hvp(x, v), oracle(x, v))  # the same arithmetic
    assert hvp.cache_info()["path_kind"] == "loops"
    assert "for i in range(n - 1):" in hvp.source and "np.zeros((n,))" in hvp.source
    # one numba function for the three lengths: its dispatcher compiled one signature
    assert len({id(spec.call) for spec in hvp._specs.values()}) == 1
    assert len(next(iter(hvp._specs.values())).call.signatures) == 1


def test_newton_cg_with_hvp_converges_on_a_10000_variable_rosenbrock():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    n = 10_000
    vg, hvp = gradc.value_and_grad(rosen), gradc.hvp(rosen)
    x0 = 1.0 + 0.3 * np.sin(np.arange(n))
    res = scipy_optimize.minimize(vg, x0, jac=True, hessp=hvp, method="Newton-CG",
                                  options={"xtol": 1e-10, "maxiter": 500})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(n), atol=1e-6)


def test_forward_mode_through_scan_is_a_clear_error():
    def f(x):
        return gradc.scan(lambda c, xi: c * xi + 1.0, 0.0, x)

    x, v = _point(7, seed=7)
    with pytest.raises(gradc.UnsupportedFunctionError, match="scan"):
        gradc.hvp(f, backend="python", arrays="numpy")(x, v)
