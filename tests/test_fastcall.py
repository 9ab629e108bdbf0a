"""The C entry of often-called functions (gradc/fastcall.py, gradc/shim.py, gradc/api.py).

After ``PROMOTE_AFTER`` calls a function of float64 arrays gets a C entry as its
``__call__``: the out= loop kernel compiled as a cfunc behind a builtin that checks the
arguments. These tests hold it to the Python path's answers, bit for bit: shapes it was
not allowed (a new length, a length whose kernel differs) go to the Python path; arguments
it does not take (read-only, strided, byte-swapped, ints) are converted there; buffers the
Python path refuses are refused with the same errors; a captured array keeps the Python
path. Each test lowers PROMOTE_AFTER so that a few calls promote.
"""
import numpy as np
import pytest

import gradc
from gradc import fastcall

pytestmark = pytest.mark.skipif(not fastcall.available(), reason="gradc.shim needs llvmlite")

RNG = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def promote_soon(monkeypatch):
    monkeypatch.setattr(fastcall, "PROMOTE_AFTER", 3)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def promoted(f, *args, **kwargs):
    """Call ``f`` until it has its C entry; the Python path's last answer."""
    for _ in range(fastcall.PROMOTE_AFTER + 1):
        result = f(*args, **kwargs)
    assert f._fast, "the function did not get its C entry"
    assert type(f).__call__ is not gradc.GradcFunction.__call__
    return result


def same(a, b):
    """Bit for bit: floats and arrays of the same structure."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
        assert a.tobytes() == b.tobytes()
    else:
        assert type(a) is type(b) and np.float64(a).tobytes() == np.float64(b).tobytes()


@pytest.fixture(scope="module")
def vg_module():
    return gradc.value_and_grad(rosen)


def test_the_c_entry_answers_bit_for_bit_as_the_python_path(vg_module):
    x = RNG.uniform(-1, 1, 300)
    before = gradc.value_and_grad(rosen)(x)
    f = gradc.value_and_grad(rosen)
    promoted(f, x)
    for _ in range(3):
        same(f(x), before)
    assert f(x)[1] is not f(x)[1]  # a new gradient array every call


# n = 2 lowers to a kernel of its own (x[1:] has one element there: a unit axis, a number)
@pytest.mark.parametrize("n, same_kernel", [(2, False), (7, True), (301, True), (10_000, True)])
def test_a_new_length_is_traced_once_then_served_by_the_entry(n, same_kernel):
    f = gradc.value_and_grad(rosen)
    promoted(f, RNG.uniform(-1, 1, 300))
    fresh, out = len(f._fast.fresh.rows), len(f._fast.out.rows)
    x = RNG.uniform(-1, 1, n)
    expected = gradc.value_and_grad(rosen, backend="python")(x)
    for _ in range(3):
        for value, grad in (f(x), f(x, out=np.empty(n))):
            assert value == pytest.approx(expected[0], rel=1e-13)
            np.testing.assert_allclose(grad, expected[1], rtol=1e-13, atol=1e-13)
    # the same kernel text: allowed
    assert len(f._fast.out.rows) == out + same_kernel
    assert len(f._fast.fresh.rows) == fresh + same_kernel


def test_a_length_the_trace_reads_is_never_served_by_another_lengths_entry():
    # len(x) is a constant of each trace, so n = 301 lowers to another kernel text
    f = gradc.value_and_grad(lambda x: np.sum(x ** 2) * len(x))
    promoted(f, RNG.uniform(-1, 1, 300))
    for n in (301, 300, 302):
        x = RNG.uniform(-1, 1, n)
        value, grad = f(x)
        assert value == pytest.approx(np.sum(x ** 2) * n, rel=1e-12)
        np.testing.assert_allclose(grad, 2 * x * n, rtol=1e-12)
    assert len(f._fast.fresh.rows) == 1


def test_arguments_the_entry_does_not_take_are_converted_by_the_python_path():
    f = gradc.value_and_grad(rosen)
    x = RNG.uniform(-1, 1, 300)
    expected = promoted(f, x)
    readonly = x.copy()
    readonly.flags.writeable = False
    strided = np.repeat(x, 2)[::2]
    for arg in (readonly, strided, x.astype(">f8")):
        same(f(arg), expected)
    ints = np.arange(300) % 3 - 1
    same(f(ints), gradc.value_and_grad(rosen)(ints.astype(float)))
    with pytest.raises(gradc.GradcError):
        f(x, x)
    with pytest.raises(gradc.GradcError):
        f(x, bogus=1)


def test_out_through_the_entry_writes_the_buffer_and_returns_it():
    f = gradc.value_and_grad(rosen)
    x = RNG.uniform(-1, 1, 300)
    expected = gradc.value_and_grad(rosen)(x)
    dx = np.empty(300)
    promoted(f, x, out=dx)
    assert f._fast.out is not None and len(f._fast.out.rows) == 1
    for _ in range(3):
        dx = np.full(300, np.nan)
        value, grad = f(x, out=dx)
        assert grad is dx
        same((value, dx), expected)


def test_buffers_the_python_path_refuses_are_refused_through_the_entry():
    f = gradc.value_and_grad(rosen)
    x = RNG.uniform(-1, 1, 300)
    promoted(f, x, out=np.empty(300))
    readonly = np.empty(300)
    readonly.flags.writeable = False
    y = np.empty(600)
    for bad in (x, x[:], readonly, np.empty(301), np.empty(300, np.float32), y[::2],
                np.empty((300, 1))):
        with pytest.raises(gradc.ArgumentError):
            f(x, out=bad)
    # a buffer overlapping the argument, and an argument inside the buffer
    with pytest.raises(gradc.ArgumentError):
        f(y[:300], out=y[150:450])


def with_product(x, A):
    return 0.5 * np.sum((A @ x) ** 2) + np.sum(x ** 3)


def test_small_unrolled_shapes_keep_their_own_code():
    # with a product, 8x4 runs unrolled scalar code on the Python path; the entry (loops)
    # must not answer its calls, whose rounding may differ (out= runs the Python path's loops)
    f = gradc.value_and_grad(with_product)
    x, A = RNG.uniform(-1, 1, 4), RNG.uniform(-1, 1, (8, 4))
    expected = gradc.value_and_grad(with_product)(x, A)
    expected_out = gradc.value_and_grad(with_product)(x, A, out=(np.empty(4), np.empty((8, 4))))
    promoted(f, RNG.uniform(-1, 1, 300), RNG.uniform(-1, 1, (40, 300)))
    for _ in range(3):
        same(f(x, A), expected)
        same(f(x, A, out=(np.empty(4), np.empty((8, 4)))), expected_out)
    assert [row[0] for row in f._fast.fresh.rows] == [((300,), (40, 300))]
    assert [row[0] for row in f._fast.out.rows] == [((300,), (40, 300))]


def test_a_function_over_a_captured_array_keeps_the_python_path():
    w = RNG.random(300)
    g = gradc.grad(lambda x: np.sum(w * x ** 2))
    x = RNG.uniform(-1, 1, 300)
    for _ in range(fastcall.PROMOTE_AFTER + 2):
        np.testing.assert_allclose(g(x), 2 * w * x, rtol=1e-12)
    assert g._fast is False
    w[:] = 3.0
    np.testing.assert_allclose(g(x), 6 * x, rtol=1e-12)


def test_two_array_arguments_and_a_float():
    def f(x, y, s):
        return s * np.sum((x - y) ** 2) + np.sum(np.sin(x) * y)

    vg = gradc.value_and_grad(f, argnums=(0, 1))
    x, y = RNG.uniform(-1, 1, 300), RNG.uniform(-1, 1, 300)
    expected = gradc.value_and_grad(f, argnums=(0, 1))(x, y, 0.5)
    promoted(vg, x, y, 0.5)
    same(vg(x, y, 0.5), expected)
    with pytest.raises(gradc.GradcError):  # lengths that do not broadcast: NumPy's error
        vg(x, RNG.uniform(-1, 1, 301), 0.5)


def test_a_kernel_entering_object_mode_keeps_the_python_path():
    # NumPy's SIMD loop for tanh (lower.py, >= 1,024 elements) runs in numba's object mode,
    # which a cfunc cannot enter: through a C entry it computed garbage
    f = gradc.value_and_grad(lambda x: np.sum(np.tanh(x) * x))
    x = RNG.uniform(-1, 1, 2048)
    expected = gradc.value_and_grad(lambda x: np.sum(np.tanh(x) * x), backend="python")(x)
    for _ in range(fastcall.PROMOTE_AFTER + 2):
        value, grad = f(x)
        assert value == pytest.approx(expected[0], rel=1e-13)
        np.testing.assert_allclose(grad, expected[1], rtol=1e-13, atol=1e-15)
    assert "objmode(" in next(iter(f._specs.values())).source
    assert f._fast is False


def test_a_compiled_value_gets_its_c_entry_too():
    f = gradc.compile(rosen)
    x = RNG.uniform(-1, 1, 300)
    expected = gradc.compile(rosen)(x)
    promoted(f, x)
    for _ in range(3):
        same(f(x), expected)
    y = RNG.uniform(-1, 1, 301)
    assert f(y) == pytest.approx(float(np.sum(100.0 * (y[1:] - y[:-1] ** 2) ** 2
                                             + (1.0 - y[:-1]) ** 2)), rel=1e-13)
