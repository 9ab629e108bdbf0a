"""One trace mode: every array a traced function holds is one node with a shape.

Arrays built from traced scalars (``np.array([x, y * 2])``, list comprehensions of
elements, ``np.stack`` / ``np.hstack`` of scalars, ``np.zeros(3)`` assigned into in a
function of floats) are arrays traced whole, like array arguments; small programs become
scalar code afterwards (gradc/unroll.py). A NumPy array of traced values made by code gradc
does not trace is refused with gradc's error, never run by NumPy's own object loops.
"""
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc.trace import Tracer, trace

PY = dict(backend="python")


def _line_of(text):
    with open(__file__) as fh:
        return next(i for i, line in enumerate(fh, 1) if text in line and "_line_of" not in line)


def _directional(f, x, v, h=1e-6):
    """The derivative of ``f`` at ``x`` along ``v`` by central differences, on numbers."""
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def _check_gradient(f, x, grad, rtol=1e-6):
    """``grad`` (gradc's) against central differences along two random directions."""
    r = np.random.default_rng(x.size)
    for _ in range(2):
        v = r.normal(size=x.shape)
        expected = _directional(f, x, v)
        assert np.dot(grad, v) == pytest.approx(expected, rel=rtol, abs=1e-6)


# --- what the tracer holds ---------------------------------------------------------------------
def test_every_array_a_trace_holds_is_a_tracer_with_a_shape():
    seen = {}

    def f(x, s):
        seen["packed"] = np.array([x[0], x[1] ** 2, s])
        seen["comprehension"] = np.array([x[i] * s for i in range(3)])
        seen["nested"] = np.array([[x[0], s], [s, x[2]]])
        seen["stacked"] = np.stack([x[0], s])
        seen["hstacked"] = np.hstack([x[1], s, 2.0])
        seen["asarray"] = np.asarray([s, s])
        z = np.zeros(2)
        z[0] = s
        seen["assigned"] = z
        seen["of_assigned"] = np.array([z, z * s])  # arrays NumPy made, holding traced values
        return np.sum(seen["packed"]) + np.sum(seen["nested"]) + np.sum(z)

    graph = trace(f, [("x", (3,)), "s"], "f")
    shapes = {"packed": (3,), "comprehension": (3,), "nested": (2, 2), "stacked": (2,),
              "hstacked": (3,), "asarray": (2,), "assigned": (2,), "of_assigned": (2, 2)}
    for key, shape in shapes.items():
        value = seen[key]
        value = getattr(value, "_read", lambda: value)()  # an array NumPy made: what it holds
        assert isinstance(value, Tracer) and value.shape == shape, key
        assert not isinstance(value, np.ndarray), key
    ops = {node.op for node in graph.nodes}
    assert {"pack", "stack"} <= ops  # a vector of scalars; nested: a stack of those
    assert not any(isinstance(a, np.ndarray) and a.dtype == object
                   for node in graph.nodes for a in node.attrs)


def test_a_floats_only_function_with_arrays_inside_traces_them_whole():
    graph = trace(lambda x, y: np.sum(np.array([x, y * 2]) ** 2), ["x", "y"], "f")
    assert not graph.whole_params
    assert [n.shape for n in graph.nodes if n.op == "pack"] == [(2,)]


# --- numbers: np.array of traced scalars at every size -----------------------------------------
def summaries(x):
    """An array of traced scalars taken from an array argument of any length."""
    v = np.array([np.sum(x ** 2), x[0] * x[-1], np.mean(np.sin(x)), 2.0])
    return np.sum(v * v) + np.sum(x * v[1]) + np.max(v[:3])


def neighbours(x):
    """An array of one traced scalar per element (a list comprehension of element reads)."""
    n = x.shape[0]
    pairs = np.array([x[i] * x[(i + 1) % n] for i in range(n)])
    return np.sum(np.sin(pairs) * x)


@pytest.mark.filterwarnings("ignore::gradc.emit.CompileTimeWarning")  # neighbours at 300
@pytest.mark.parametrize("n", [1, 7, 300, 10_000])
def test_np_array_of_traced_scalars_matches_central_differences(n):
    x = np.linspace(-1.0, 1.5, n)
    for fn in (summaries, neighbours) if n <= 300 else (summaries,):
        value, grad = gradc.value_and_grad(fn, **PY)(x)
        assert value == pytest.approx(fn(x), rel=1e-12)
        _check_gradient(fn, x, grad)


@pytest.mark.parametrize("n", [1, 7, 300, 10_000])
def test_np_array_of_traced_scalars_compiles_with_numba(n):
    x = np.linspace(-1.0, 1.5, n)
    value, grad = gradc.value_and_grad(summaries)(x)
    expected_value, expected_grad = gradc.value_and_grad(summaries, **PY)(x)
    assert value == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arrays", ["numba", "loops", "unroll"])
def test_np_array_of_traced_scalars_compiles_in_every_numba_mode(arrays):
    # arrays="numba" compiles NumPy-level code: np.stack of scalars has no numba form, the
    # pack op prints as np.array([...]), which numba compiles
    f = gradc.value_and_grad(lambda x: np.sum(np.array([x[0], x[1] ** 2]) * 3.0), arrays=arrays)
    value, grad = f(np.array([1.0, 2.0]))
    assert value == 15.0 and grad.tolist() == [3.0, 12.0]
    assert f.cache_info()["runs"] in ("numba", "native")  # compiled, not NumPy from Python


def stacks_scalars(x, y):
    a = np.stack([x * y, y])
    b = np.hstack([x, a, 3.0])
    c = np.concatenate([a, np.array([x ** 2])])
    return np.sum(b * b) + np.dot(a, c[:2]) + np.sum(np.vstack([a, c[1:]]))


def test_stack_hstack_and_concatenate_of_traced_scalars():
    f = gradc.value_and_grad(stacks_scalars, **PY)
    value, (dx, dy) = f(0.5, -1.25)
    assert value == pytest.approx(stacks_scalars(0.5, -1.25), rel=1e-12)
    scalar = lambda p: stacks_scalars(p[0], p[1])  # noqa: E731
    _check_gradient(scalar, np.array([0.5, -1.25]), np.array([dx, dy]))


def packs(x, y):
    v = np.array([x, y * 2.0, x * y])
    return np.sum(v ** 2) + v[0] * v[2]


def fills(x, y):
    z = np.zeros(3)
    z[0] = x
    z[1] = y * 2.0
    z[2] = x * y
    return np.sum(z ** 2) + z[0] * z[2]


@pytest.mark.parametrize("fn", [packs, fills])
@pytest.mark.parametrize("backend", ["python", "numba"])
def test_a_floats_only_function_making_arrays_becomes_scalar_code(fn, backend):
    f = gradc.value_and_grad(fn, backend=backend)
    value, (dx, dy) = f(0.3, 0.7)
    assert value == pytest.approx(fn(0.3, 0.7), rel=1e-12)
    _check_gradient(lambda p: fn(p[0], p[1]), np.array([0.3, 0.7]), np.array([dx, dy]))
    body = f.source.split("def ", 2)[1]  # the function itself, not its entry point
    assert "np." not in body and "[" not in body, body  # scalar code: no arrays at all
    assert not any(node.shape for node in f.graph.nodes)


def test_arrays_of_traced_values_that_are_not_rectangular_or_hold_conditions_are_refused():
    with pytest.raises(gradc.ShapeError, match="one shape"):
        gradc.grad(lambda x: np.sum(np.array([x, [x, x]])), **PY)(1.0)
    with pytest.raises(gradc.UnsupportedFunctionError, match="conditions"):
        gradc.grad(lambda x: np.sum(np.where(np.array([x > 0, x < 1]), x, 0.0)), **PY)(0.5)


def test_a_gradc_function_inside_a_trace_takes_whole_arrays_from_its_caller():
    # a Hessian's program is unrolled into elements; the caller's array is traced whole,
    # and the replay reads its elements (the two modes once refused each other)
    hessian = gradc.hessian(lambda x: np.sum(x ** 3), **PY)
    third = gradc.grad(lambda x: np.sum(hessian(x) * x), **PY)
    x = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(third(x), 12.0 * x)  # sum(6 x_i x_i): d/dx = 12 x


# --- object arrays from code gradc does not trace ------------------------------------------------
_LIBRARY = '''
import numpy as np

calls = []


def squared_norm(values):
    a = np.asarray(values)  # converts its argument itself, as SciPy's functions do
    calls.append(a.dtype)
    return np.sum(a * a)


def pair(first, second):
    a = np.empty(2, dtype=object)  # an object array, filled element by element
    a[0], a[1] = first, second
    return a
'''


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A module outside the traced function's own, which gradc runs as it is."""
    (tmp_path / "unseen_library.py").write_text(textwrap.dedent(_LIBRARY))
    monkeypatch.syspath_prepend(str(tmp_path))
    import unseen_library

    yield unseen_library
    sys.modules.pop("unseen_library", None)


def test_an_object_array_of_traced_values_from_unseen_code_is_refused(library):
    def loss(x, y):
        return library.squared_norm([x, y * 2.0])

    assert library.squared_norm([3.0, 4.0]) == 25.0  # on numbers the library works
    library.calls.clear()
    with pytest.raises(gradc.UnsupportedFunctionError, match="does not trace") as info:
        gradc.grad(loss, **PY)(1.0, 2.0)
    assert "unseen_library.py" in str(info.value)  # names the line that converted
    assert library.calls == []  # NumPy never made the object array the library would loop over


def makes_an_object_array(x):
    a = np.empty(2, dtype=object)  # MARK-object-array
    a[0], a[1] = x, 3.0
    return np.sum(np.exp(a))


def test_object_arrays_are_refused_in_the_traced_function_and_converted_from_outside(library):
    # a ufunc given a list converts it itself: refused (Tracer.__array__)
    with pytest.raises(gradc.UnsupportedFunctionError, match="does not trace"):
        gradc.grad(lambda x: np.sum(np.exp([x, 2.0 * x])), **PY)(1.0)
    # an object array made in the traced function: refused where it is made (NumPy's loop
    # would have called x.exp(), which no traced value has: a raw TypeError)
    with pytest.raises(gradc.UnsupportedFunctionError, match="dtype=object") as info:
        gradc.grad(makes_an_object_array, **PY)(1.0)
    assert f"test_trace_one_mode.py:{_line_of('MARK-object-array')}" in str(info.value)
    # an object array made by code gradc does not see, filled element by element, is
    # converted into one array traced whole where it meets a traced value
    value, grad = gradc.value_and_grad(lambda x: np.sum(x * library.pair(x, 3.0)), **PY)(2.0)
    assert (value, grad) == (10.0, 7.0)


def mixes_lists(x, y):
    return (np.sum([x, y * 2.0]) + np.max((x, y)) + np.mean([x, 3.0])
            + np.linalg.norm([x, y]) + np.dot([x, y], [1.0, 2.0]))


def test_numpy_functions_given_lists_of_traced_values_in_the_traced_function_are_traced():
    # NumPy converts these lists itself, without dispatching to gradc: in the traced
    # function its functions that gradc has rules for take them as arrays traced whole
    value, (dx, dy) = gradc.value_and_grad(mixes_lists, **PY)(1.0, 2.0)
    assert value == pytest.approx(mixes_lists(1.0, 2.0), rel=1e-12)
    _check_gradient(lambda p: mixes_lists(p[0], p[1]), np.array([1.0, 2.0]), np.array([dx, dy]))


@pytest.mark.parametrize("n", [7, 300])
def test_forward_mode_through_an_array_of_traced_scalars(n):
    # hvp is forward over reverse: the stack of scalars has a tangent rule, and the
    # Hessian-vector product matches central differences of the gradient
    x, v = np.linspace(-1.0, 1.5, n), np.random.default_rng(n).normal(size=n)
    grad = gradc.grad(summaries, **PY)
    hv = gradc.hvp(summaries, **PY)(x, v)
    h = 1e-6
    np.testing.assert_allclose(hv, (grad(x + h * v) - grad(x - h * v)) / (2 * h),
                               rtol=1e-5, atol=1e-6)
