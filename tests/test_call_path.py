"""The thin call paths of GradcFunction.__call__ for arrays (gradc/api.py).

A call with one float64 array of a shape compiled before goes straight to that shape's
compiled code, and ``f(x, out=dx)`` straight to the fused loops writing into ``dx``. These
tests hold them to the full path's answers: a new shape is a retrace (never code compiled
for another shape), an array numba cannot take as it is is converted, and a buffer that is
wrong (shape, dtype, layout, writability, or memory it shares with an input) is a gradc
error on every call, the quick ones included.
"""
import numpy as np
import pytest

import gradc

RNG = np.random.default_rng(11)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosen_grad(x):
    dx = np.zeros_like(x)
    a = x[1:] - x[:-1] ** 2
    dx[:-1] = -400.0 * x[:-1] * a - 2.0 * (1.0 - x[:-1])
    dx[1:] += 200.0 * a
    return dx


def rosen_value(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


@pytest.fixture(scope="module")
def vg():
    """One numba value_and_grad of Rosenbrock shared by the tests (each compile costs ~1 s):
    fused loops at every length (small arrays unroll only with products: api._loops_win)."""
    return gradc.value_and_grad(rosen)


def check(result, x):
    value, grad = result
    assert value == pytest.approx(rosen_value(x), rel=1e-12)
    np.testing.assert_allclose(grad, rosen_grad(x), rtol=1e-12, atol=1e-12)


# --- f(x) ------------------------------------------------------------------------------------
def test_a_shape_read_by_the_trace_is_retraced_not_served_by_another_shapes_code():
    # len(x) is a constant of each trace: code compiled at n = 300 would be wrong at 301
    # (the thin path keys NumPy-level code by shape as it keys numba's: no compile needed)
    vg = gradc.value_and_grad(lambda x: np.sum(x ** 2) * len(x), backend="python")
    for n in (300, 301, 300, 302):
        x = RNG.uniform(-1, 1, n)
        value, grad = vg(x)
        assert value == pytest.approx(np.sum(x ** 2) * n, rel=1e-12)
        np.testing.assert_allclose(grad, 2 * x * n, rtol=1e-12)


def test_a_branch_on_the_shape_takes_the_branch_of_each_shape():
    def f(x):
        return np.sum(x ** 2) if x.shape[0] > 300 else np.sum(x ** 3)

    g = gradc.grad(f, backend="python")
    small, large = RNG.uniform(-1, 1, 300), RNG.uniform(-1, 1, 301)
    np.testing.assert_allclose(g(small), 3 * small ** 2, rtol=1e-12)
    np.testing.assert_allclose(g(large), 2 * large, rtol=1e-12)
    np.testing.assert_allclose(g(small), 3 * small ** 2, rtol=1e-12)


@pytest.mark.parametrize("n", [16, 300])
def test_arrays_numba_cannot_take_as_they_are_are_converted_on_the_thin_path(vg, n):
    x = RNG.uniform(-1, 1, n)
    check(vg(x), x)  # compiled: the thin path serves this shape from now on
    readonly = x.copy()
    readonly.flags.writeable = False
    strided = np.repeat(x, 2)[::2]
    swapped = x.astype(">f8")
    ints = np.round(4 * x).astype(np.int64)
    for arg in (readonly, strided, swapped, ints):
        check(vg(arg), np.asarray(arg, dtype=np.float64))


def test_the_answer_does_not_depend_on_the_calls_before(vg):
    # the same read-only array, first before anything of its shape is compiled, then after
    # (n = 301 lowers to the loop source n = 300 compiled: no new compile)
    x = RNG.uniform(-1, 1, 301)
    readonly = x.copy()
    readonly.flags.writeable = False
    fresh = gradc.value_and_grad(rosen)
    check(fresh(readonly), x)
    check(fresh(x), x)
    check(fresh(readonly), x)


def test_a_captured_array_of_a_new_shape_is_a_retrace_on_the_thin_path():
    w = RNG.random(300)

    def f(x):
        return np.sum(w * x ** 2)

    g = gradc.grad(f)
    x = RNG.uniform(-1, 1, 300)
    np.testing.assert_allclose(g(x), 2 * w * x, rtol=1e-12)
    np.testing.assert_allclose(g(x), 2 * w * x, rtol=1e-12)  # the thin path
    w[:] = 2.0  # in place: the same compiled code reads it
    np.testing.assert_allclose(g(x), 4 * x, rtol=1e-12)
    w = RNG.random(301)  # rebound to another shape: code compiled for 300 must not run
    with pytest.raises(gradc.GradcError):  # f now multiplies shapes 301 and 300, as NumPy says
        g(x)
    x = RNG.uniform(-1, 1, 301)
    np.testing.assert_allclose(g(x), 2 * w * x, rtol=1e-12)


# --- f(x, out=dx) ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [16, 300])
def test_out_returns_the_value_and_the_buffer_it_wrote(vg, n):
    x = RNG.uniform(-1, 1, n)
    for _ in range(3):  # the full path, then the thin one
        dx = np.full(n, np.nan)
        value, grad = vg(x, out=dx)
        assert grad is dx
        check((value, dx), x)


def test_out_at_small_sizes_runs_the_fused_loops_of_large_ones(vg):
    # its out= form is the loop kernel every length shares
    for n in (16, 300):
        vg(RNG.uniform(-1, 1, n), out=np.empty(n))
    sources = {s.source for k, s in vg._specs.items() if k[-1] == "out"}
    assert len(sources) == 1
    assert "def rosen__value_and_grad__loops__out(x, dx):" in sources.pop()


def test_grad_out_returns_the_buffer():
    g = gradc.grad(rosen)
    x = RNG.uniform(-1, 1, 300)
    for _ in range(3):
        dx = np.full(300, np.nan)
        assert g(x, out=dx) is dx
        np.testing.assert_allclose(dx, rosen_grad(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [16, 300])
def test_a_wrong_buffer_is_a_gradc_error_on_every_call(vg, n):
    x = RNG.uniform(-1, 1, n)
    vg(x, out=np.empty(n))  # compiled: the thin path is armed
    readonly = np.empty(n)
    readonly.flags.writeable = False
    wrong = [np.empty(n - 1), np.empty(n + 1), np.empty(2 * n)[::2], np.empty(n, np.float32),
             np.empty((n, 1)), readonly, list(np.empty(n)), np.empty(n, ">f8")]
    for bad in wrong:
        for _ in range(2):
            with pytest.raises(gradc.ArgumentError, match="out="):
                vg(x, out=bad)


@pytest.mark.parametrize("n", [16, 300])
def test_a_buffer_sharing_memory_with_the_argument_is_refused(vg, n):
    x = RNG.uniform(-1, 1, n)
    keep = x.copy()
    vg(x, out=np.empty(n))  # the thin path is armed
    big = np.concatenate([x, x])
    aliases = [(x, x), (x[:], x), (x, x[:]), (big[:n], big[n // 2:n // 2 + n])]
    for arg, buffer in aliases:
        before = arg.copy()
        with pytest.raises(gradc.ArgumentError, match="shares memory with argument 0"):
            vg(arg, out=buffer)
        np.testing.assert_array_equal(arg, before)  # nothing was written
    np.testing.assert_array_equal(x, keep)


def test_a_view_apart_from_the_argument_is_a_good_buffer(vg):
    # not its own memory, so the thin path leaves it to the full path's exact check
    x = RNG.uniform(-1, 1, 300)
    big = np.full(900, np.nan)
    value, grad = vg(x, out=big[300:600])
    assert grad.base is big
    check((value, big[300:600]), x)
    assert np.isnan(big[:300]).all() and np.isnan(big[600:]).all()


def test_a_buffer_sharing_memory_with_a_captured_array_is_refused():
    w = RNG.random(300)

    def f(x):
        return np.sum(w * x ** 2)

    g = gradc.grad(f)
    x = RNG.uniform(-1, 1, 300)
    g(x, out=np.empty(300))
    for _ in range(2):
        with pytest.raises(gradc.ArgumentError, match="captured array 'w'"):
            g(x, out=w)


def test_buffers_of_several_arguments_must_be_apart_and_come_back_in_place():
    def f(x, s, y):
        return s * np.sum(x * y ** 2)

    vg = gradc.value_and_grad(f)
    x, y, s = RNG.uniform(-1, 1, 300), RNG.uniform(-1, 1, 300), 1.5
    want_value, (want_dx, want_ds, want_dy) = gradc.value_and_grad(f, backend="python")(x, s, y)
    for _ in range(2):
        dx, dy = np.empty(300), np.empty(300)
        value, (gx, gs, gy) = vg(x, s, y, out=(dx, None, dy))
        assert gx is dx and gy is dy
        assert value == pytest.approx(want_value, rel=1e-12)
        assert gs == pytest.approx(want_ds, rel=1e-12)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-12)
        np.testing.assert_allclose(dy, want_dy, rtol=1e-12)
    shared = np.empty(300)
    with pytest.raises(gradc.ArgumentError, match="shares memory with out= buffer 0"):
        vg(x, s, y, out=(shared, None, shared))
    with pytest.raises(gradc.ArgumentError, match="shares memory with argument 2"):
        vg(x, s, y, out=(np.empty(300), None, y))


def test_the_thin_out_path_takes_exactly_the_buffers_may_write_accepts():
    from gradc.api import _may_write

    vg = gradc.value_and_grad(rosen)  # its own: the shared one may have its C entry by now
    x = RNG.uniform(-1, 1, 300)
    vg(x, out=np.empty(300))
    kernel, form = vg._out_by_shape[x.shape]
    handed = []

    def recording(a, out):
        handed.append(out)
        return kernel(a, out)

    vg._out_by_shape[x.shape] = (recording, form)
    readonly = np.empty(300)
    readonly.flags.writeable = False
    x_view = x[:]
    candidates = [(x, np.empty(300)), (x, np.empty(600)[:300]), (x, readonly), (x, x),
                  (x, np.empty(300, ">f8")), (x, np.empty(301)), (x_view, np.empty(300)),
                  (x_view, x)]
    try:
        for arg, buffer in candidates:
            handed.clear()
            try:
                vg(arg, out=buffer)
            except gradc.ArgumentError:
                pass
            assert bool(handed) == bool(_may_write(buffer, arg))
        assert _may_write(np.empty(300), x)  # the common call does take the thin path
    finally:
        vg._out_by_shape[x.shape] = (kernel, form)
