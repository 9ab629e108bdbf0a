"""NumPy arrays a function reads from outside its arguments are passed, not baked in.

gradc follows Python semantics (JAX bakes captured arrays in as constants): a float array
the traced function reads from its closure or its module's globals becomes a hidden
parameter of the compiled code, passed by reference at every call. The source and the
cache key hold no data; changing the array in place changes the result; rebinding the
name is seen (another shape traces again).
"""
import numpy as np
import pytest

import gradc

RNG = np.random.default_rng(0)
X_BIG = RNG.random((2_000, 10))
Y_BIG = RNG.random(2_000)
A_SMALL = RNG.random((3, 3))


def big_loss(w):
    return np.mean((X_BIG @ w - Y_BIG) ** 2)


def small_loss(x):
    return np.sum(np.sin(A_SMALL @ x))


def _reference(f, *args):
    return gradc.value_and_grad(f, argnums=0, backend="python")(*args)


@pytest.mark.parametrize("backend", ["numba", "python"])
def test_mutating_a_captured_array_in_place_changes_the_gradient(backend):
    global X_BIG
    w = RNG.random(10)
    vg = gradc.value_and_grad(big_loss, backend=backend)
    before = vg(w)
    saved = X_BIG.copy()
    try:
        X_BIG[:10] *= 3.0  # in place: the same object
        after = vg(w)
        expected = _reference(lambda w, X, y: np.mean((X @ w - y) ** 2), w, X_BIG, Y_BIG)
    finally:
        X_BIG[...] = saved
    assert after[0] != before[0]
    assert after[0] == pytest.approx(expected[0], rel=1e-13)
    np.testing.assert_allclose(after[1], expected[1], rtol=1e-12)


def test_unrolled_code_reads_a_small_captured_array_at_call_time():
    x = RNG.random(3)
    vg = gradc.value_and_grad(small_loss)
    first = vg(x)
    assert "A_SMALL" in vg.source and "A_SMALL[0, 0]" in vg.source
    saved = A_SMALL.copy()
    try:
        A_SMALL[...] = 2.0 * saved
        value, grad = vg(x)
        expected = _reference(lambda x, A: np.sum(np.sin(A @ x)), x, A_SMALL)
    finally:
        A_SMALL[...] = saved
    assert value != first[0]
    assert value == pytest.approx(expected[0], rel=1e-14)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-13)


def test_the_source_holds_no_data_and_names_the_array():
    vg = gradc.value_and_grad(big_loss)
    vg(RNG.random(10))
    assert len(vg.source) < 20_000
    assert "X_BIG" in vg.source and "Y_BIG" in vg.source
    assert repr(float(X_BIG[0, 0]))[:8] not in vg.source


def test_rebinding_a_closure_variable_is_seen_with_the_same_or_another_shape():
    X = RNG.random((500, 4))

    def loss(w):
        return np.sum((X @ w) ** 2)

    vg = gradc.value_and_grad(loss)
    w = RNG.random(4)
    vg(w)
    ref = lambda w, X: np.sum((X @ w) ** 2)  # noqa: E731
    X = RNG.random((500, 4))  # the same shape: the compiled code takes the new array
    np.testing.assert_allclose(vg(w)[1], _reference(ref, w, X)[1], rtol=1e-12)
    X = RNG.random((40, 4))   # another shape: traced again
    np.testing.assert_allclose(vg(w)[1], _reference(ref, w, X)[1], rtol=1e-12)


def test_hvp_and_out_take_captured_arrays_in_the_right_places():
    x, v = RNG.random(3), RNG.random(3)
    hv = gradc.hvp(small_loss)(x, v)
    expected = gradc.hvp(lambda x, A: np.sum(np.sin(A @ x)), argnums=0, backend="python")(
        x, A_SMALL, v)
    np.testing.assert_allclose(hv, expected, rtol=1e-13)
    buf = np.empty(3)
    value, grad = gradc.value_and_grad(small_loss)(x, out=buf)
    assert grad is buf
    np.testing.assert_allclose(buf, _reference(lambda x, A: np.sum(np.sin(A @ x)),
                                               x, A_SMALL)[1], rtol=1e-13)


def test_a_closure_over_a_big_array_costs_what_passing_it_costs():
    """One compiled function; per call no copy of X (its memory is passed as it is)."""
    vg = gradc.value_and_grad(big_loss)
    w = RNG.random(10)
    vg(w)
    spec = next(iter(vg._specs.values()))
    seen = []
    inner = spec.plain._gradc_inner
    spec_plain_args = lambda *args: seen.append(args) or inner(*args)  # noqa: E731
    spec.plain._gradc_inner = inner  # unchanged: the wrapper calls what it wraps
    from gradc.api import _with_captured
    probe = _with_captured(type(spec)(spec.graph, spec.source, spec.path, spec_plain_args,
                                      spec.func_name, plain=spec_plain_args),
                           spec.graph.captured_arrays)
    probe.plain(w)
    assert seen[0][1] is X_BIG and seen[0][2] is Y_BIG
