"""gradc.vmap: value and gradient at many points in one call, against a loop of single calls."""
import numpy as np
import pytest

import gradc


def rosen2(x, y):
    return (1 - x) ** 2 + 100.0 * (y - x * x) ** 2


@pytest.mark.parametrize("backend, parallel", [("python", True), ("numba", True), ("numba", False)])
def test_batched_matches_loop_of_single_calls(backend, parallel):
    single = gradc.value_and_grad(rosen2, backend=backend)
    batched = gradc.vmap(single, parallel=parallel)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-2, 2, 257), rng.uniform(-1, 3, 257)
    values, (dx, dy) = batched(x, y)
    for k in range(0, 257, 16):
        v, (gx, gy) = single(x[k], y[k])
        assert (values[k], dx[k], dy[k]) == pytest.approx((v, gx, gy), rel=1e-14)


def test_shared_float_argument_and_out_buffers():
    f = gradc.vmap(gradc.value_and_grad(rosen2, backend="python"))
    x = np.linspace(-1, 1, 5)
    out = (np.empty(5), (np.empty(5), np.empty(5)))
    result = f(x, 0.5, out=out)
    assert result[0] is out[0] and result[1][1] is out[1][1]  # written in place, nothing allocated
    np.testing.assert_allclose(out[0], rosen2(x, 0.5))
    np.testing.assert_allclose(out[1][1], 200 * (0.5 - x * x))


def test_grad_and_plain_functions():
    g = gradc.vmap(gradc.grad(lambda x: x ** 3, backend="python"))
    np.testing.assert_allclose(g(np.array([1.0, 2.0])), [3.0, 12.0])
    v = gradc.vmap(lambda x, y: x * y)  # a plain function: its values
    np.testing.assert_allclose(v(np.array([1.0, 2.0]), np.array([3.0, 4.0])), [3.0, 8.0])


def test_bad_batches():
    f = gradc.vmap(gradc.value_and_grad(rosen2, backend="python"))
    with pytest.raises(gradc.ArgumentError, match="same number of points"):
        f(np.ones(3), np.ones(4))
    with pytest.raises(gradc.ArgumentError, match="at least one array argument mapped"):
        f(1.0, 2.0)
    with pytest.raises(gradc.ArgumentError, match="out="):
        f(np.ones(3), 1.0, out=(np.empty(3), (np.empty(2), np.empty(3))))


@pytest.mark.parametrize("backend, parallel", [("python", True), ("numba", True), ("numba", False)])
def test_read_only_points_give_the_same_result_as_writable(backend, parallel):
    batched = gradc.vmap(gradc.value_and_grad(rosen2, backend=backend), parallel=parallel)
    rng = np.random.default_rng(7)
    x, y = rng.uniform(-2, 2, 33), rng.uniform(-1, 3, 33)
    frozen = x.copy()
    frozen.setflags(write=False)
    from_bytes = np.frombuffer(y.tobytes())  # read-only: a view of an immutable bytes object
    assert not frozen.flags.writeable and not from_bytes.flags.writeable
    expected = batched(x, y)
    for a, b in [(frozen, from_bytes), (frozen, y), (x, from_bytes)]:
        values, (dx, dy) = batched(a, b)
        np.testing.assert_array_equal(values, expected[0])
        np.testing.assert_array_equal(dx, expected[1][0])
        np.testing.assert_array_equal(dy, expected[1][1])
    with pytest.raises(gradc.ArgumentError, match="writable"):  # out= buffers must stay writable
        batched(x, y, out=(frozen, (np.empty(33), np.empty(33))))
