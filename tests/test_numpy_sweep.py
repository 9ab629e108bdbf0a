"""Nothing NumPy offers is silently ignored on values gradc traces whole.

gradc traces array arguments whole, at every size (small programs are unrolled after),
so a user's NumPy call meets a :class:`gradc.trace.Tracer`: an array traced whole, or a
traced scalar. The sweep below calls every public callable of ``numpy`` and
``numpy.linalg`` (ufuncs and their methods included) with a few argument patterns, and
each call must either

- trace to what NumPy computes on the same numbers (the graph is evaluated at them), or
- raise a ``gradc.GradcError`` whose message names this file and the line of the call,

and never a raw exception, a wrong value or a hang. The one raw exception allowed is the
one NumPy itself raises for the same call on numbers (a missing argument, a wrong type):
the call is wrong in plain NumPy too, and Python's traceback names the line.

Tests of the single holes the sweep found, one each, follow the sweeps.
"""
import inspect
import os
import signal
import warnings

import numpy as np
import pytest

import gradc
from gradc.ir import Graph, evaluate
from gradc.trace import Tracer, _traced_param

HERE = os.path.basename(__file__)

# The concrete arguments. X is not symmetric (a transposition shows) and its lower triangle
# is positive definite, so numpy.linalg.cholesky and eigh (which read that triangle) work.
X = np.array([[4.0, 1.5, -0.5], [1.0, 3.0, 0.75], [0.5, -0.25, 2.0]])
Y = np.array([[0.5, -1.25, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.125]])
V = np.array([0.5, -1.5, 2.0, 3.25])
T = 0.625

#: The argument patterns: each builds (args, kwargs) from x, y (3x3), v (4) and t (a scalar).
PATTERNS = {
    "f(X)": lambda x, y, v, t: ((x,), {}),
    "f(v)": lambda x, y, v, t: ((v,), {}),
    "f(X, 2)": lambda x, y, v, t: ((x, 2), {}),
    "f(X, t)": lambda x, y, v, t: ((x, t), {}),
    "f(X, Y)": lambda x, y, v, t: ((x, y), {}),
    "f(X, axis=0)": lambda x, y, v, t: ((x,), {"axis": 0}),
    "f(t)": lambda x, y, v, t: ((t,), {}),
}

#: Callables not called, and why: they need arguments the patterns cannot make, or they
#: write files, print or change NumPy's global state (not array maths).
SKIPPED = {
    "test": "runs NumPy's test suite",
    "show_config": "prints NumPy's build configuration",
    "show_runtime": "prints NumPy's runtime configuration",
    "info": "prints documentation",
    "save": "writes a file (the first argument is a path)",
    "savez": "writes a file",
    "savez_compressed": "writes a file",
    "savetxt": "writes a file",
    "load": "reads a file (the first argument is a path)",
    "loadtxt": "reads a file",
    "genfromtxt": "reads a file",
    "fromfile": "reads a file",
    "fromregex": "reads a file",
    "memmap": "maps a file",
    "setbufsize": "changes NumPy's global buffer size",
    "seterr": "changes NumPy's global error handling",
    "seterrcall": "changes NumPy's global error handling",
    "set_printoptions": "changes NumPy's global print options",
    "printoptions": "a context manager over the global print options",
    "typename": "takes a one-letter dtype code, not an array (NumPy raises TypeError on an "
                "ndarray only because an ndarray cannot be hashed)",
}

#: Known holes, reported rather than hidden: NumPy gives a raw error or an answer gradc
#: cannot reach. The sweep checks that each one is still a hole (so the list shrinks when
#: one is fixed). name -> why.
KNOWN_HOLES = {
    "fromiter": "NumPy converts each element in C; a Tracer can be indexed, so NumPy takes "
                "it for a sequence and raises ValueError('setting an array element with a "
                "sequence') with gradc's MathModuleError as its __cause__ (shown first)",
    "frombuffer": "reads raw memory through the buffer protocol, which a Python class cannot "
                  "refuse with its own error before Python 3.12 (__buffer__)",
    "fromstring": "as frombuffer",
    "bmat": "numpy.matrix code that NumPy does not dispatch; it returns None for anything "
            "that is not an ndarray, list or string (NumPy's own behaviour), so the user's "
            "next line fails on the None",
}

#: Functions that read a Tracer's ``.dtype`` (float64), as NumPy does for any object with
#: one, where NumPy refuses an ndarray itself: compared with NumPy on the dtypes.
READS_DTYPE = {"dtype", "finfo", "issubdtype", "promote_types"}

#: NumPy leaves the contents undefined: only the shape is compared.
UNDEFINED_CONTENTS = {"empty_like"}

#: Seconds one call may take before it counts as a hang.
HANG_SECONDS = 5.0


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang()


def _numpy_callables():
    """(label, NumPy name, callable) for every public callable of numpy and numpy.linalg, and
    the methods of the ufuncs of two inputs; each object once."""
    seen = set()
    for module, prefix in ((np, "numpy"), (np.linalg, "numpy.linalg")):
        for name in sorted(dir(module)):
            obj = getattr(module, name)
            if name.startswith("_") or not callable(obj) or id(obj) in seen or name in SKIPPED:
                continue
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue  # an exception class: constructing one with a traced value is no maths
            seen.add(id(obj))
            yield f"{prefix}.{name}", name, obj
            if isinstance(obj, np.ufunc) and obj.nin == 2:
                for method in ("reduce", "accumulate", "outer"):
                    yield f"{prefix}.{name}.{method}", name, getattr(obj, method)


def _traced_arguments():
    graph = Graph("f")
    x = _traced_param(graph, "x", X.shape, whole=True)
    y = _traced_param(graph, "y", Y.shape, whole=True)
    v = _traced_param(graph, "v", V.shape, whole=True)
    t = _traced_param(graph, "t", None)
    return graph, (x, y, v, t)


def _numbers(result, values):
    """A traced result with every Tracer replaced by its value at (X, Y, V, T)."""
    if isinstance(result, Tracer):
        return values[result.node.id]
    if isinstance(result, np.ndarray) and result.dtype == object:
        return np.array([_numbers(r, values) for r in result.flat], dtype=object).reshape(
            result.shape)
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return type(result)(*(_numbers(r, values) for r in result))
    if isinstance(result, (list, tuple)):
        return type(result)(_numbers(r, values) for r in result)
    return result


def _same(traced, concrete):
    if isinstance(concrete, (str, bytes)):
        return isinstance(traced, (str, bytes))  # printing a trace shows the trace
    if isinstance(concrete, (list, tuple)):
        return (isinstance(traced, (list, tuple)) and len(traced) == len(concrete)
                and all(_same(t, c) for t, c in zip(traced, concrete)))
    if isinstance(concrete, (np.ndarray, np.number, np.bool_, float, int, bool)):
        try:
            t, c = np.asarray(traced, dtype=float), np.asarray(concrete, dtype=float)
        except (TypeError, ValueError):
            return False
        return t.shape == c.shape and np.allclose(t, c, equal_nan=True)
    if concrete is None or isinstance(concrete, (np.dtype, type, np.finfo)):
        return traced == concrete
    return type(traced) is type(concrete)  # an iterator or helper object, not a value


def _dtype_of(value):
    if isinstance(value, np.ndarray):
        return value.dtype
    return np.dtype(float) if isinstance(value, float) else value


def _with_dtypes(args, kwargs):
    return tuple(map(_dtype_of, args)), {k: _dtype_of(a) for k, a in kwargs.items()}


def _on_numbers(name, func, args, kwargs):
    """NumPy's answer on the numbers: (value, None) or (None, the exception)."""
    if name in READS_DTYPE:
        args, kwargs = _with_dtypes(args, kwargs)
    try:
        return func(*args, **kwargs), None
    except _Hang:
        raise
    except Exception as exc:  # noqa: BLE001  (NumPy's own answer on numbers)
        return None, exc


def _check(label, name, func, pattern, lines=None):
    """None when ``func`` on traced arguments is right or refused properly, else the problem.
    A refusal must name one of ``lines`` of this file (default: the line of the call)."""
    build = PATTERNS[pattern]
    places = [f"{HERE}:{line}" for line in (lines or (CALL_LINE,))]
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            concrete, numpy_error = _on_numbers(name, func, *build(X.copy(), Y.copy(), V.copy(), T))
            graph, traced_args = _traced_arguments()
            args, kwargs = build(*traced_args)
            try:
                traced = func(*args, **kwargs)  # MARK-call
            except gradc.GradcError as exc:
                if not any(place in str(exc) for place in places):
                    return f"{label} {pattern}: {type(exc).__name__} names no line: {exc}"
                return None
            except _Hang:
                raise
            except Exception as exc:  # noqa: BLE001
                if numpy_error is not None and type(exc) is type(numpy_error):
                    return None  # NumPy's own complaint about this call on numbers
                return f"{label} {pattern}: raw {type(exc).__name__}: {exc}"
            if numpy_error is not None:
                return f"{label} {pattern}: traced, but NumPy raises {numpy_error!r}"
            result = _numbers(traced, evaluate(graph, [X, Y, V, T]))
            if name in UNDEFINED_CONTENTS:
                result, concrete = np.shape(result), np.shape(concrete)
            if not _same(result, concrete):
                return f"{label} {pattern}: traced to {result!r}, NumPy computes {concrete!r}"
            return None
    except _Hang:
        return f"{label} {pattern}: no answer within {HANG_SECONDS} s (a hang?)"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _line_of(mark):
    with open(__file__) as fh:
        return next(k for k, line in enumerate(fh, 1) if mark in line and "_line_of" not in line)


CALL_LINE = _line_of("# MARK-call")


@pytest.fixture(scope="module")
def sweep():
    """label -> problem, for every callable and pattern (run once: it takes about a second)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        found = {}
        for label, name, func in _numpy_callables():
            for pattern in PATTERNS:
                problem = _check(label, name, func, pattern)
                if problem:
                    found.setdefault(name, []).append(problem)
        return found
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_every_numpy_callable_on_traced_values_traces_right_or_is_refused_naming_the_line(sweep):
    problems = [p for name, ps in sorted(sweep.items()) if name not in KNOWN_HOLES for p in ps]
    assert not problems, "\n".join(problems)


def test_the_known_holes_are_still_holes(sweep):
    fixed = sorted(set(KNOWN_HOLES) - set(sweep))
    assert not fixed, f"no longer holes, remove them from KNOWN_HOLES: {fixed}"


def test_the_sweep_reaches_numpy_linalg_and_the_ufunc_methods():
    found = list(_numpy_callables())
    labels = {label for label, _, _ in found}
    assert {"numpy.linalg.svd", "numpy.linalg.solve", "numpy.add.reduce", "numpy.argmax"} <= labels
    assert any(func is np.float64 for _, _, func in found) and len(labels) > 500


def test_the_checker_catches_a_wrong_value_a_raw_error_a_missing_line_and_a_hang():
    # each misbehaves on traced values only, as a gradc bug would
    def wrong(x):
        return x * 2.0 if isinstance(x, Tracer) else x

    def raw(x):
        if isinstance(x, Tracer):
            raise KeyError("boom")
        return x

    def no_line(x):
        if isinstance(x, Tracer):
            raise gradc.UnsupportedFunctionError("no line")
        return x

    def hangs(x):
        while isinstance(x, Tracer):
            pass
        return x

    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for func, expected in ((wrong, "NumPy computes"), (raw, "raw KeyError"),
                               (no_line, "names no line")):
            problem = _check(func.__name__, "copy", func, "f(X)")
            assert problem and expected in problem, problem
        global HANG_SECONDS
        saved, HANG_SECONDS = HANG_SECONDS, 0.2
        try:
            assert "a hang" in _check("hangs", "copy", hangs, "f(t)")
        finally:
            HANG_SECONDS = saved
        assert _check("copy", "copy", np.copy, "f(X)") is None
    finally:
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("args", [(), (0,), (1,)])
def test_every_ndarray_method_on_an_array_traced_whole_traces_right_or_is_refused(args):
    problems = []
    for name in sorted(dir(np.ndarray)):
        if name.startswith("_") or name in ("dump", "tofile"):  # dump/tofile write files
            continue

        def call(x, name=name):
            value = getattr(x, name)  # MARK-method
            return value(*args) if callable(value) else value  # MARK-method-call

        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            problems.append(_check(f"ndarray.{name}{args}", f"ndarray.{name}", call, "f(X)", lines=(
                _line_of("# MARK-method"), _line_of("# MARK-method-call"))))
        finally:
            signal.signal(signal.SIGALRM, previous)
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


# --- the holes the sweep found, one test each ----------------------------------------------------
def _traced(shape=(3, 2)):
    graph = Graph("f")
    return graph, _traced_param(graph, "x", shape, whole=True), _traced_param(graph, "t", None)


def converts_to_a_float(t):
    return np.float64(t) * 2.0  # MARK-float64


@pytest.mark.parametrize("convert", [np.float64, np.float32, np.bool_,
                                     lambda t: np.asarray(t, dtype=float)])
def test_converting_a_traced_scalar_to_numpy_numbers_is_a_gradc_error_not_a_sequence_error(convert):
    # NumPy cleared gradc's error and raised "setting an array element with a sequence"
    _, _, t = _traced()
    with pytest.raises(gradc.MathModuleError, match="needs concrete numbers"):
        convert(t)
    with pytest.raises(gradc.MathModuleError) as info:
        gradc.grad(converts_to_a_float, backend="python")(1.5)
    assert f"{HERE}:{_line_of('MARK-float64')}" in str(info.value)
    # NumPy's own numpy.array of traced scalars (code gradc does not trace) is refused by
    # gradc, never built as an object array that NumPy's object loops would run
    with pytest.raises(gradc.UnsupportedFunctionError, match="does not trace"):
        np.array([t, t])


@pytest.mark.parametrize("axes", [(2,), (2, 1), (0, 0), (0, 1, 2)])
def test_transpose_axes_that_are_not_a_permutation_are_refused_not_taken_modulo(axes):
    # np.transpose(x, 2) of a 2-D array traced to a 1-D array (axes were taken modulo ndim)
    _, x, _ = _traced()
    with pytest.raises(gradc.ShapeError, match="not a permutation"):
        np.transpose(x, axes)
    with pytest.raises(gradc.ShapeError, match="not a permutation"):
        x.transpose(*axes)
    assert np.transpose(x, (-1, 0)).shape == (2, 3) and x.transpose(None).shape == (2, 3)


def test_clip_takes_both_bounds_or_neither_as_numpy_does():
    _, x, _ = _traced()
    for call in (lambda: np.clip(x, 0.0), lambda: np.clip(x, 0.0, 1.0, min=0.5)):
        with pytest.raises(gradc.UnsupportedFunctionError, match="numpy.clip"):
            call()
    f = gradc.grad(lambda x: np.sum(np.clip(x, None, 1.0) + np.clip(x, min=0.0)),
                   backend="python")
    assert f(np.array([-1.0, 0.5, 2.0])).tolist() == [1.0, 2.0, 1.0]


def test_arguments_numpy_refuses_are_refused_not_ignored():
    # each of these traced (its argument ignored) where NumPy raises on numbers
    graph, x, t = _traced()
    calls = {
        "copy order": lambda: np.copy(x, 2),
        "nan_to_num copy": lambda: np.nan_to_num(x, x),
        "select of numbers": lambda: np.select([x], [x]),
        "traced repeats": lambda: np.repeat(x, t),
        "traced dtype": lambda: np.zeros_like(x, t),
        "size axis": lambda: np.size(x, 2),
        "dlpack": lambda: np.from_dlpack(x),
    }
    for what, call in calls.items():
        with pytest.raises(gradc.GradcError) as info:
            call()
        assert f"{HERE}:" in str(info.value), what
    assert np.size(x, 1) == 2 and np.select([x > 0], [x]).shape == (3, 2)


# --- refusal messages ----------------------------------------------------------------------------
def takes_argmax(x):
    return x[np.argmax(x)]  # MARK-argmax


def test_a_non_differentiable_function_is_refused_saying_to_use_it_outside():
    with pytest.raises(gradc.UnsupportedFunctionError) as info:
        gradc.grad(takes_argmax, backend="python")(np.arange(3.0))
    message = str(info.value)
    assert f"{HERE}:{_line_of('MARK-argmax')}" in message
    assert "numpy.argmax is not supported by gradc: not differentiable" in message
    assert "use it outside the traced function" in message
    _, x, _ = _traced()
    with pytest.raises(gradc.UnsupportedFunctionError, match="outside the traced function"):
        x.argmax()


@pytest.mark.parametrize("call, suggestion", [
    (lambda x: np.linalg.outer(x[0], x[1]), "numpy.outer"),
    (lambda x: np.cumulative_sum(x, axis=0), "numpy.cumsum"),
    (lambda x: np.linalg.vector_norm(x), "numpy.linalg.norm"),
    (lambda x: np.linalg.eigvals(x), "numpy.linalg.eigvalsh"),
    (lambda x: x.take([0]), "numpy.take(x, ...) is traced: use it instead"),
    (lambda x: np.nanmax(x), "numpy.where(x != x, 0.0, x)"),
])
def test_a_refusal_suggests_the_nearest_supported_spelling(call, suggestion):
    _, x, _ = _traced((3, 3))
    with pytest.raises(gradc.UnsupportedFunctionError) as info:
        call(x)
    assert suggestion in str(info.value)


def test_a_near_miss_of_a_supported_name_is_suggested_and_short_names_are_not_guessed():
    from gradc import surface

    assert surface.refusal_hint("tensordott") == "; the nearest supported spelling: numpy.tensordot"
    assert surface.refusal_hint("linalg.choleski").endswith("numpy.linalg.cholesky")
    assert surface.refusal_hint("flaten", methods=True).endswith(".flatten")
    assert surface.refusal_hint("long") == ""  # not numpy.log: short names match by chance


def test_a_refusal_lists_the_supported_functions_by_kind():
    _, x, _ = _traced()
    with pytest.raises(gradc.UnsupportedFunctionError) as info:
        np.spacing(x)
    message = str(info.value)
    assert "numpy.spacing is not supported by gradc. Supported NumPy functions, by kind: " \
        "ufuncs: absolute, add," in message
    for kind in ("; reductions: ", "; shape ops: ", "; products: ", "; linalg: linalg.cholesky"):
        assert kind in message
    with pytest.raises(gradc.UnsupportedFunctionError, match=r"\.tobytes .*values have: T, "):
        x.tobytes()
