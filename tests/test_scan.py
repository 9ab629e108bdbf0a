"""gradc.scan: a loop in the IR and in the emitted source, with a reverse loop over stored carries."""
import numpy as np
import pytest

import gradc

from test_array_ops import _central


def chain_rolled(W, b, x):
    h = gradc.scan(lambda h, p: np.tanh(p[0] @ h + p[1]), x, (W, b))
    return 0.5 * np.sum(h ** 2)


def chain_unrolled(W, b, x):
    h = x
    for i in range(W.shape[0]):
        h = np.tanh(W[i] @ h + b[i])
    return 0.5 * np.sum(h ** 2)


r = np.random.default_rng(0)
W, b, x = r.normal(size=(6, 3, 3)) * 0.6, r.normal(size=(6, 3)) * 0.1, r.normal(size=3)


def test_rolled_chain_equals_unrolled_twin_and_stays_a_loop():
    rolled = gradc.value_and_grad(chain_rolled, backend="python")
    unrolled = gradc.value_and_grad(chain_unrolled, backend="python", arrays="numpy")
    v1, g1 = rolled(W, b, x)
    v2, g2 = unrolled(W, b, x)
    assert v1 == pytest.approx(v2, rel=1e-14)
    for a, c in zip(g1, g2):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-15)
    src = rolled.source
    assert src.count("np.tanh(") == 2  # once in the forward loop, once in the reverse loop
    assert "for t in range(6):" in src and "range(5, -1, -1)" in src


def test_scan_gradients_against_central_differences():
    f = gradc.value_and_grad(chain_rolled, backend="python")
    _, grads = f(W, b, x)
    for k, g in enumerate(grads):
        np.testing.assert_allclose(g, _central(chain_rolled, (W, b, x), k), rtol=1e-6, atol=1e-8)


def decay(k, dt, y0):
    """Explicit Euler for y' = -k*y*|y| over 50 steps; k and dt are captured by the step."""
    steps = np.zeros(50)
    y = gradc.scan(lambda y, _: y - dt * k * y * np.abs(y), y0, steps)
    return y * y


def test_time_stepping_with_captured_scalars():
    f = gradc.value_and_grad(decay, backend="python")
    k, dt, y0 = 0.7, 0.05, 1.3
    value, grads = f(k, dt, y0)
    y = y0
    for _ in range(50):
        y = y - dt * k * y * abs(y)
    assert value == pytest.approx(y * y, rel=1e-13)
    numeric = [(decay(*(np.add((k, dt, y0), np.eye(3)[i] * 1e-6))) -
                decay(*(np.add((k, dt, y0), -np.eye(3)[i] * 1e-6)))) / 2e-6 for i in range(3)]
    assert grads == pytest.approx(numeric, rel=1e-6)


def test_scan_on_plain_numbers_runs_the_loop():
    assert gradc.scan(lambda c, x: c + x, 0.0, np.arange(4.0)) == 6.0


def test_scan_errors():
    with pytest.raises(gradc.ShapeError, match="same shape"):
        gradc.grad(lambda v: np.sum(gradc.scan(lambda c, x: np.sum(c * x), v, np.ones((3, 2)))),
                   backend="python")(np.ones(2))
    with pytest.raises(gradc.ShapeError, match="one length"):
        gradc.grad(lambda v: np.sum(gradc.scan(lambda c, x: c + x[0] + x[1], v,
                                                (np.ones((3, 2)), np.ones((4, 2))))),
                   backend="python")(np.ones(2))


def test_float32_scan():
    f = gradc.grad(chain_rolled, argnums=0, backend="python")
    g32 = f(W.astype(np.float32), b.astype(np.float32), x.astype(np.float32))
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, f(W, b, x), rtol=1e-4, atol=1e-6)


def deep_scalar_chain(p, x):
    h = gradc.scan(lambda h, q: np.tanh(q[0] * h + q[1]), x, p)
    return 0.5 * (h - 0.3) ** 2


def test_numba_compiles_the_loop():
    p = np.linspace(-1, 1, 100).reshape(50, 2)
    f = gradc.value_and_grad(deep_scalar_chain)  # auto: a loop over small arrays -> numba
    value, (dp, dx) = f(p, 0.5)
    assert f.cache_info()["runs"] == "numba"
    ref_value, (ref_dp, ref_dx) = gradc.value_and_grad(deep_scalar_chain, backend="python")(p, 0.5)
    assert value == pytest.approx(ref_value, rel=1e-14)
    np.testing.assert_allclose(dp, ref_dp, rtol=1e-12, atol=1e-16)
    assert dx == pytest.approx(ref_dx, rel=1e-12)
    assert gradc.value_and_grad(deep_scalar_chain, arrays="numpy")(p, 0.5)[0] == value
