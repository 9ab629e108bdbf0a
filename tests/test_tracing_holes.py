"""Tracing never silently ignores a NumPy function, and never leaks a raw NumPy error.

An array argument is one traced array (a node with a shape); every NumPy function, ufunc
and ndarray method on it goes through gradc. The sweeps below call every public callable
of ``numpy``, every ufunc and every ndarray method on one (and every ufunc on a traced
scalar), and check that each either traces to what NumPy computes on the same numbers or
raises a ``gradc.GradcError``: never a silently wrong value, never a raw exception (except
the one NumPy itself raises on numbers for the same call, such as a missing argument).
"""
import inspect
import warnings

import numpy as np
import pytest

import gradc
from gradc.ir import Graph, evaluate
from gradc.trace import Tracer, _traced_param

HERE = __file__.rsplit("/", 1)[-1]
X = np.array([[0.5, -1.25, 2.0], [1.5, 0.25, -0.75]])

# Callables that do I/O, change global state, or read raw memory: not array maths.
_NOT_MATHS = {
    "test", "show_config", "show_runtime", "info", "set_printoptions", "printoptions",
    "setbufsize", "seterr", "seterrcall", "save", "savez", "savez_compressed", "savetxt",
    "load", "loadtxt", "genfromtxt", "fromfile", "memmap", "fromregex", "frombuffer",
    "from_dlpack", "getbufsize", "get_printoptions", "geterr", "geterrcall", "get_include",
    "errstate", "recarray", "chararray", "matrix",
}
# Known remaining holes, reported rather than hidden: NumPy's scalar types (np.float32(x))
# and np.nditer convert elements in C, which takes a Tracer for a sequence (it has
# __getitem__) and raises NumPy's ValueError/TypeError before gradc is asked.
_KNOWN_RAW = {"nditer"}
# Printing a traced value shows the trace, not numbers: a different string is expected.
_TEXT = (str, bytes, np.str_, np.bytes_)


def _line_of(text):
    with open(__file__) as fh:
        return next(i for i, line in enumerate(fh, 1) if text in line and "_line_of" not in line)


def _traced(shape=X.shape):
    graph = Graph("f")
    return graph, _traced_param(graph, "x", shape)


def _value(result, values):
    """A traced result with every Tracer replaced by its number at X (None: not numbers)."""
    if isinstance(result, Tracer):
        return values[result.node.id]
    if isinstance(result, np.ndarray) and result.dtype == object:
        flat = [_value(v, values) for v in result.flat]
        return np.array(flat, dtype=float).reshape(result.shape)
    if isinstance(result, (list, tuple)):
        return type(result)(_value(v, values) for v in result)
    return result


def _same(traced, concrete):
    """True when a traced result (as numbers) is what NumPy computed."""
    if isinstance(concrete, _TEXT):
        return isinstance(traced, _TEXT)
    if isinstance(concrete, (list, tuple)):
        return (isinstance(traced, (list, tuple)) and len(traced) == len(concrete)
                and all(_same(t, c) for t, c in zip(traced, concrete)))
    if isinstance(concrete, (np.ndarray, float, int, np.number, bool, np.bool_)):
        try:
            t, c = np.asarray(traced), np.asarray(concrete)
            return t.shape == c.shape and np.allclose(t.astype(float), c.astype(float),
                                                      equal_nan=True)
        except (TypeError, ValueError):
            return False
    if concrete is None or isinstance(concrete, (np.dtype, type)):
        return traced == concrete
    return type(traced) is type(concrete)  # an iterator or helper object: not a value


def _check_call(label, call, concrete_args, nargs):
    """``call`` on traced arguments either matches it on numbers or raises a GradcError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            concrete = call(*concrete_args)
            concrete_error = None
        except Exception as exc:  # noqa: BLE001  (NumPy's own answer on numbers)
            concrete, concrete_error = None, exc
        graph, x = _traced(np.shape(concrete_args[0]))
        try:
            traced = call(*([x] * nargs))
        except gradc.GradcError:
            return None
        except Exception as exc:  # noqa: BLE001
            if concrete_error is not None and type(exc) is type(concrete_error):
                return None  # the same complaint NumPy makes about these arguments on numbers
            return f"{label}: raw {type(exc).__name__}: {exc}"
        if concrete_error is not None:
            return f"{label}: traced to {type(traced).__name__}, but NumPy raises {concrete_error!r}"
        values = evaluate(graph, [concrete_args[0]])
        if not _same(_value(traced, values), concrete):
            return f"{label}: traced to {_value(traced, values)!r}, NumPy computes {concrete!r}"
        return None


def _numpy_callables():
    seen = set()
    for name in sorted(dir(np)):
        obj = getattr(np, name)
        if name.startswith("_") or name in _NOT_MATHS or not callable(obj) or id(obj) in seen:
            continue
        if inspect.isclass(obj) and issubclass(obj, (BaseException, np.generic)) or name in _KNOWN_RAW:
            continue
        seen.add(id(obj))
        yield name, obj


# Every NumPy function on arrays traced whole and traced scalars: tests/test_numpy_sweep.py
# (with its list of known holes); the ufuncs and ndarray methods are swept here too.


def test_every_ufunc_traces_right_or_raises_a_gradc_error():
    ufuncs = {obj for _, obj in _numpy_callables() if isinstance(obj, np.ufunc)}
    problems = []
    for ufunc in sorted(ufuncs, key=lambda u: u.__name__):
        for shape in (X.shape, ()):  # an unrolled array, and a traced scalar
            point = X if shape else X[0, 0]
            if shape == ():
                problems.append(_check_scalar_ufunc(ufunc, point))
                continue
            problems.append(_check_call(f"numpy.{ufunc.__name__}", ufunc, [point] * ufunc.nin,
                                        ufunc.nin))
            if ufunc.nin == 2:
                problems.append(_check_call(f"numpy.{ufunc.__name__}.reduce", ufunc.reduce, [point], 1))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


def _check_scalar_ufunc(ufunc, point):
    graph = Graph("f")
    t = _traced_param(graph, "t", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = ufunc(*([t] * ufunc.nin))
    except gradc.GradcError:
        return None
    except Exception as exc:  # noqa: BLE001
        return f"numpy.{ufunc.__name__} on a traced scalar: raw {type(exc).__name__}: {exc}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concrete = ufunc(*([point] * ufunc.nin))
    if not _same(_value(traced, evaluate(graph, [point])), concrete):
        return f"numpy.{ufunc.__name__} on a traced scalar: not {concrete!r}"
    return None


@pytest.mark.parametrize("args", [(), (1,)])
def test_every_array_method_traces_right_or_raises_a_gradc_error(args):
    problems = []
    for name in sorted(dir(np.ndarray)):
        if name.startswith("_") or not callable(getattr(np.ndarray, name)) or name in (
                "dump", "tofile", "dumps", "tobytes", "setflags", "getfield", "setfield", "view"):
            continue
        call = lambda x, name=name: getattr(x, name)(*args)  # noqa: E731
        problems.append(_check_call(f"ndarray.{name}{args}", call, [X.copy()], 1))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


def test_array_views_that_reinterpret_memory_are_refused():
    _, x = _traced()
    with pytest.raises(gradc.UnsupportedFunctionError, match="view"):
        x.view(np.float64)
    for method in ("tobytes", "dumps", "getfield"):
        with pytest.raises(gradc.UnsupportedFunctionError, match=method):
            getattr(x, method)(np.float64) if method == "getfield" else getattr(x, method)()


# --- the specific holes, one test each ---------------------------------------------------------
def test_nan_to_num_on_a_small_array_is_computed_not_ignored():
    # NumPy's object code returned it unchanged ("not an inexact dtype"); arrays are now
    # traced whole at every size (numpy_api.nan_to_num), and unrolled after differentiating.
    fn = lambda x: np.sum(np.nan_to_num(x + np.array([0.0, np.nan])) * x)  # noqa: E731
    for arrays in ("auto", "unroll", "numpy"):
        value, grad = gradc.value_and_grad(fn, backend="python", arrays=arrays)(
            np.array([2.0, 3.0]))
        assert value == 4.0 and grad.tolist() == [4.0, 0.0]


def uses_spacing(x):
    return np.sum(np.spacing(x))  # MARK-spacing


@pytest.mark.parametrize("arrays", ["unroll", "numpy"])
def test_unsupported_ufunc_gives_the_same_gradc_error_unrolled_and_whole(arrays):
    f = gradc.value_and_grad(uses_spacing, backend="python", arrays=arrays)
    with pytest.raises(gradc.UnsupportedFunctionError) as info:
        f(np.ones(3))
    message = str(info.value)
    assert f"{HERE}:{_line_of('MARK-spacing')}" in message
    assert "numpy.spacing is not supported by gradc" in message


def test_converting_a_traced_array_to_a_numpy_array_is_the_traced_array_not_silently_wrong():
    # np.asarray of a traced array was a plain object array, on which NumPy ran its own
    # object code unseen: np.nan_to_num returned it unchanged (a NaN value, silently). In
    # the traced function it is now the traced array itself (np.array: a copy of it).
    for arrays in ("auto", "unroll"):
        f = gradc.value_and_grad(
            lambda x: np.sum(np.nan_to_num(np.asarray(x) + np.array([0.0, np.nan])) * x),
            backend="python", arrays=arrays)
        assert f(np.array([2.0, 3.0])) == (4.0, pytest.approx(np.array([4.0, 0.0])))
        g = gradc.value_and_grad(lambda x: np.sum(np.array(x) ** 2), backend="python",
                                 arrays=arrays)
        assert g(np.array([1.0, 2.0])) == (5.0, pytest.approx(np.array([2.0, 4.0])))
        with pytest.raises(gradc.UnsupportedFunctionError, match="numpy.bitwise_count"):
            gradc.value_and_grad(lambda x: np.sum(np.bitwise_count(np.asarray(x))),
                                 backend="python", arrays=arrays)(np.ones(2))
    # building an array from traced *scalars* is fine
    f = gradc.value_and_grad(lambda x: np.sum(np.array([x[0], x[1] ** 2]) * 3.0),
                             backend="python")
    assert f(np.array([1.0, 2.0])) == (15.0, pytest.approx(np.array([3.0, 12.0])))


def sums_where(x):
    return np.sum(x, where=x > 0)  # MARK-sum-where


@pytest.mark.parametrize("arrays", ["unroll", "numpy"])
def test_reduction_keywords_gradc_does_not_implement_are_named(arrays):
    f = gradc.value_and_grad(sums_where, backend="python", arrays=arrays)
    with pytest.raises(gradc.UnsupportedFunctionError, match=r"numpy.sum\(\.\.\., where=\)") as info:
        f(np.ones(3))
    assert f"{HERE}:{_line_of('MARK-sum-where')}" in str(info.value)
    for fn in (lambda x: np.sum(x, dtype=np.float32), lambda x: x.sum(initial=1.0),
               lambda x: np.mean(x, out=np.empty(())), lambda x: np.sum(np.stack([x, x], dtype=float))):
        with pytest.raises(gradc.UnsupportedFunctionError, match="not implement"):
            gradc.value_and_grad(fn, backend="python", arrays=arrays)(np.ones(3))


def scales_hugely(x):
    return np.sum(x * 10 ** 400)  # MARK-huge


@pytest.mark.parametrize("arg", [1.5, np.ones(2)])
def test_an_integer_constant_too_large_for_a_float_is_a_gradc_error(arg):
    with pytest.raises(gradc.TracingError, match="too large for a float") as info:
        gradc.value_and_grad(scales_hugely, backend="python")(arg)
    assert f"{HERE}:{_line_of('MARK-huge')}" in str(info.value)


def returns_list(x):  # MARK-def-list
    return [x, x]


def returns_none(x):  # MARK-def-none
    x * 2.0


def returns_text(x):  # MARK-def-str
    return "loss"


@pytest.mark.parametrize("fn, mark, kind", [
    (returns_list, "MARK-def-list", "a list"),
    (returns_none, "MARK-def-none", "a NoneType"),
    (returns_text, "MARK-def-str", "a str"),
])
def test_returning_a_non_float_names_the_functions_definition(fn, mark, kind):
    with pytest.raises(gradc.TracingError) as info:
        gradc.value_and_grad(fn, backend="python")(1.5)
    message = str(info.value)
    assert f"{HERE}:{_line_of(mark)}" in message
    assert f"returned {kind}" in message and "return a float" in message


def test_numpy_calls_that_stay_exact_on_unrolled_arrays():
    # float(x[0]) is refused; where and cumsum trace whole and unroll.
    with pytest.raises(gradc.MathModuleError):
        gradc.value_and_grad(lambda x: float(x[0]), backend="python")(np.ones(2))
    g = gradc.value_and_grad(lambda x: np.sum(np.where(x > 1.0, x ** 2, -x) + np.cumsum(x)),
                             backend="python", arrays="unroll")
    value, grad = g(np.array([0.5, 2.0]))
    assert value == pytest.approx(-0.5 + 4.0 + 0.5 + 2.5) and grad.tolist() == [1.0, 5.0]


def test_in_place_arithmetic_into_an_array_numpy_made_in_the_function_is_traced():
    def f(x):
        y = np.zeros(2)
        y += x
        return np.sum(y * x)

    value, grad = gradc.value_and_grad(f, backend="python")(np.array([1.0, 2.0]))
    assert value == 5.0 and grad.tolist() == [2.0, 4.0]


def test_max_works_unrolled_too():
    """Traced whole, then unrolled: np.max no longer needs arrays traced whole to be asked for."""
    for arrays in ("unroll", "auto"):
        f = gradc.value_and_grad(lambda x: np.max(x), backend="python", arrays=arrays)
        value, grad = f(np.arange(3.0))
        assert value == 2.0 and grad.tolist() == [0.0, 0.0, 1.0]
        assert "x_2 = x[2]" in f.source  # scalar code


#: An array the traced function did not make: writing a traced value into it would change
#: the caller's data, so gradc refuses (arrays made inside the function are traced).
GLOBAL_BUFFER = np.zeros(3)


def assigns_into_a_float_array(x):
    GLOBAL_BUFFER[0] = x[1]  # MARK-float-array-assign
    return np.sum(GLOBAL_BUFFER ** 2)


def test_assigning_a_traced_value_into_an_array_from_outside_says_what_to_write():
    # A traced scalar is no sequence, so NumPy asks float() of it and gradc answers (NumPy
    # reported "setting an array element with a sequence" for anything sequence-like).
    for arrays in ("auto", "numpy"):
        with pytest.raises(gradc.MathModuleError, match="zeros_like") as info:
            gradc.grad(assigns_into_a_float_array, backend="python", arrays=arrays)(np.ones(3))
        assert f"{HERE}:{_line_of('MARK-float-array-assign')}" in str(info.value)
    assert not GLOBAL_BUFFER.any()  # the caller's array is untouched

    def traced_copy(x):
        y = np.zeros_like(x)
        y[0] = x[1]
        y[1:] += x[:-1]
        return np.sum(y ** 2)

    grad = gradc.grad(traced_copy, backend="python")(np.arange(3.0))
    assert grad.tolist() == [0.0, 4.0, 0.0]  # y = (x1, x0, x1): d/dx = (2 x0, 4 x1, 0)


def test_tracing_under_cprofile_works_and_leaves_the_profiler_running():
    import cProfile
    import pstats

    def f(x):
        u = x * x
        return np.sum(np.sin(u))

    def called_after_the_trace():
        return 1.0

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        value, grad = gradc.value_and_grad(f, backend="python")(np.arange(3.0))
        called_after_the_trace()
    finally:
        profiler.disable()
    np.testing.assert_allclose(grad, 2 * np.arange(3.0) * np.cos(np.arange(3.0) ** 2))
    names = {func[2] for func in pstats.Stats(profiler).stats}
    assert {"f", "called_after_the_trace"} <= names  # profiled during and after the trace


def test_builtin_max_and_min_of_traced_values_name_numpys_maximum_and_minimum():
    with pytest.raises(gradc.ControlFlowError, match=r"builtin max\(\).*numpy\.maximum"):
        gradc.grad(lambda x: max(x, 1.0), backend="python")(2.0)
    with pytest.raises(gradc.ControlFlowError, match=r"builtin min\(\).*numpy\.minimum"):
        gradc.grad(lambda x: min(x * x, x), backend="python")(2.0)
    with pytest.raises(gradc.ControlFlowError) as info:  # an `if` is not a builtin max
        gradc.grad(lambda x: x if x > 0 else -x, backend="python")(2.0)
    assert "builtin" not in str(info.value)
