"""gradc.vmap with JAX's in_axes: rows of 2-D arrays as points, shared arrays, moved axes.

Every batched result is checked against a Python loop over the rows calling the same
transformation with backend="python", and against central differences of the plain
NumPy function.
"""
import numpy as np
import pytest

import gradc

SIZES = [1, 7, 300]


def smooth(x):
    """A function of one row: every entry matters, and not only through a sum."""
    return np.sum(np.sin(x) * x) + x[0] * x[-1] + 0.5 * np.sum(x * x) ** 2


def loss(x, w, b):
    """A row x, weights w of the row's length and a float b."""
    return np.sum(w * x * x) + np.sin(np.dot(w, x) + b)


def central(fn, args, k, h=1e-6):
    """The gradient of ``fn`` in argument k (a float or an array) by central differences."""
    base = np.asarray(args[k], dtype=float)
    grad = np.empty(base.shape)
    for j in np.ndindex(*base.shape):
        plus, minus = base.copy(), base.copy()
        plus[j] += h
        minus[j] -= h
        up = list(args)
        down = list(args)
        up[k], down[k] = (plus, minus) if base.shape else (float(plus), float(minus))
        grad[j] = (fn(*up) - fn(*down)) / (2 * h)
    return grad


# One batched function per (backend, parallel), built once: the sizes N share its loop, so
# each backend compiles once per row length d.
_BATCHED = {}


def batched(kind, backend, parallel=True):
    key = (kind, backend, parallel)
    if key not in _BATCHED:
        if kind == "grad":
            _BATCHED[key] = gradc.vmap(gradc.grad(smooth, backend=backend), parallel=parallel)
        else:
            _BATCHED[key] = gradc.vmap(gradc.value_and_grad(loss, backend=backend),
                                       in_axes=(0, None, None), parallel=parallel)
    return _BATCHED[key]


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("n", SIZES)
def test_grad_over_rows_matches_a_loop_over_rows(backend, d, n):
    X = np.random.default_rng(10 * n + d).uniform(-1.5, 1.5, (n, d))
    G = batched("grad", backend)(X)
    assert G.shape == (n, d) and G.dtype == np.float64
    single = gradc.grad(smooth, backend="python")
    expected = np.array([single(row) for row in X])
    np.testing.assert_allclose(G, expected, rtol=1e-12, atol=1e-12)
    for k in range(0, n, max(1, n // 5)):  # a few rows against central differences
        np.testing.assert_allclose(G[k], central(smooth, [X[k]], 0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("n", SIZES)
def test_mapped_rows_with_a_shared_array_and_a_shared_float(backend, d, n):
    rng = np.random.default_rng(100 * n + d)
    X, w, b = rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, d), 0.3
    values, (dx, dw, db) = batched("value_and_grad", backend)(X, w, b)
    assert values.shape == (n,) and dx.shape == (n, d) and dw.shape == (n, d) and db.shape == (n,)
    single = gradc.value_and_grad(loss, backend="python")
    for k in range(n):
        v, (gx, gw, gb) = single(X[k], w, b)
        assert values[k] == pytest.approx(v, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(dx[k], gx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw[k], gw, rtol=1e-12, atol=1e-12)
        assert db[k] == pytest.approx(gb, rel=1e-12, abs=1e-12)
    k = n // 2
    np.testing.assert_allclose(dx[k], central(loss, [X[k], w, b], 0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw[k], central(loss, [X[k], w, b], 1), rtol=1e-6, atol=1e-7)
    assert db[k] == pytest.approx(float(central(loss, [X[k], w, b], 2)), rel=1e-6, abs=1e-7)


def test_numba_serial_parallel_and_read_only_rows_agree_bit_for_bit():
    X = np.random.default_rng(3).uniform(-1, 1, (300, 3))
    parallel = batched("grad", "numba")(X)
    serial = batched("grad", "numba", parallel=False)(X)
    frozen = X.copy()
    frozen.setflags(write=False)
    np.testing.assert_array_equal(parallel, serial)
    np.testing.assert_array_equal(batched("grad", "numba")(frozen), parallel)
    assert batched("grad", "numba").cache_info()["runs"] == "numba"


def test_a_mapped_array_between_shared_arguments_and_mapped_floats():
    """in_axes=(None, 0, None): the weights are mapped, the row is shared; and 1-D arrays
    mapped beside rows give each point a float."""
    rng = np.random.default_rng(4)
    x, W, bs = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, (7, 3)), rng.uniform(-1, 1, 7)
    f = gradc.vmap(gradc.value_and_grad(loss, backend="python"), in_axes=(None, 0, 0))
    values, (dx, dw, db) = f(x, W, bs)
    single = gradc.value_and_grad(loss, backend="python")
    for k in range(7):
        v, (gx, gw, gb) = single(x, W[k], bs[k])
        assert values[k] == pytest.approx(v, rel=1e-12)
        np.testing.assert_allclose(dx[k], gx, rtol=1e-12)
        np.testing.assert_allclose(dw[k], gw, rtol=1e-12)
        assert db[k] == pytest.approx(gb, rel=1e-12)


@pytest.mark.parametrize("axis", [1, -1])
def test_points_along_another_axis_equal_rows_of_the_transpose(axis):
    X = np.random.default_rng(5).uniform(-1, 1, (7, 3))
    f = gradc.vmap(gradc.grad(smooth, backend="python"), in_axes=axis)
    expected = gradc.vmap(gradc.grad(smooth, backend="python"))(X)
    np.testing.assert_array_equal(f(X.T), expected)  # X.T: points along axis 1
    np.testing.assert_array_equal(f(np.asfortranarray(X.T)), expected)


def test_default_in_axes_maps_arrays_and_shares_floats():
    f = gradc.vmap(gradc.value_and_grad(loss, backend="python"))  # in_axes=0
    X, W = np.ones((4, 3)), np.full((4, 3), 0.5)
    values, (dx, dw, db) = f(X, W, 0.1)
    assert values.shape == (4,) and dw.shape == (4, 3) and db.shape == (4,)
    np.testing.assert_allclose(values, [loss(X[0], W[0], 0.1)] * 4, rtol=1e-14)


def test_rows_into_out_buffers_and_a_wrong_out_shape_is_refused():
    f = gradc.vmap(gradc.value_and_grad(loss, backend="python"), in_axes=(0, None, None))
    X, w = np.random.default_rng(6).uniform(-1, 1, (7, 3)), np.ones(3)
    out = (np.empty(7), (np.empty((7, 3)), np.empty((7, 3)), np.empty(7)))
    result = f(X, w, 0.2, out=out)
    assert result[1][0] is out[1][0]
    np.testing.assert_array_equal(out[1][0], f(X, w, 0.2)[1][0])
    with pytest.raises(gradc.ArgumentError, match=r"\(7, 3\)"):
        f(X, w, 0.2, out=(np.empty(7), (np.empty(7), np.empty((7, 3)), np.empty(7))))


@pytest.mark.parametrize("in_axes", ["rows", True, (0, [1]), (0, 1.0), {"x": 0}])
def test_in_axes_that_is_not_an_int_none_or_tuple_of_them_is_refused_at_vmap(in_axes):
    with pytest.raises(gradc.ArgumentError, match="in_axes") as info:
        gradc.vmap(gradc.grad(smooth, backend="python"), in_axes=in_axes)
    assert "test_vmap_axes.py" in str(info.value)  # names the user's line


def test_wrong_in_axes_and_mismatched_points_are_clear_gradc_errors():
    f = gradc.vmap(gradc.value_and_grad(loss, backend="python"), in_axes=(0, None, None))
    X, w = np.ones((7, 3)), np.ones(3)
    cases = [
        (lambda: f(X, w), "3 entries but the function was called with 2"),
        (lambda: gradc.vmap(gradc.grad(smooth, backend="python"), in_axes=2)(X),
         "shape \\(7, 3\\)"),
        (lambda: gradc.vmap(gradc.value_and_grad(loss, backend="python"),
                            in_axes=(0, 0, 0))(X, np.ones((7, 3)), 0.5), "in_axes\\[2\\] is 0"),
        (lambda: gradc.vmap(gradc.value_and_grad(loss, backend="python"))(
            X, np.ones((6, 3)), 0.5), "6 points along its mapped axis but argument 0 has 7"),
        (lambda: f(None, w, 0.5), "argument 0"),
        (lambda: gradc.vmap(gradc.grad(smooth, backend="python"), in_axes=None)(X),
         "at least one array argument mapped"),
        (lambda: gradc.vmap(gradc.grad(smooth, backend="python"))(np.ones((7, 0))), "empty"),
        (lambda: gradc.vmap(gradc.grad(smooth), out_axes=1), "out_axes=0"),
        (lambda: gradc.vmap(gradc.grad(smooth, backend="python"))(X.astype(complex)), "dtype"),
    ]
    for call, message in cases:
        with pytest.raises(gradc.ArgumentError, match=message) as info:
            call()
        assert "test_vmap_axes.py" in str(info.value), message


def test_row_lengths_that_share_one_source_get_their_own_output_shapes():
    """NumPy-level code (long rows) reads no lengths: rows of 300 and of 400 emit the same
    loop, compiled once, and each call's results still have its own row length."""
    f = gradc.vmap(gradc.grad(lambda x: np.sum(x * x * x), backend="python"))
    short, long = np.ones((2, 300)), np.full((5, 400), 2.0)
    np.testing.assert_array_equal(f(short), np.full((2, 300), 3.0))
    np.testing.assert_array_equal(f(long), np.full((5, 400), 12.0))
    sources = {kernel.source for kernel, _ in f._kernels.values()}
    assert len(f._kernels) == 2 and len(sources) == 1  # one source: the case this protects
