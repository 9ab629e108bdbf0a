"""Bad input gives a gradc error that names the user's file and line and says what to do."""
import math

import numpy as np
import pytest

import gradc

HERE = __file__.rsplit("/", 1)[-1]


def _line_of(text):
    with open(__file__) as fh:
        return next(i for i, line in enumerate(fh, 1) if text in line and "_line_of" not in line)


def branches(x):
    if x > 0:  # MARK-if
        return x
    return -x


def loops(x):
    while x > 1:  # MARK-while
        x = x / 2
    return x


def uses_math(x):
    return math.exp(x)  # MARK-math


def uses_unsupported(x):
    return np.spacing(x)  # MARK-spacing


def uses_bit_shift(x):
    return x << 2  # MARK-shift


@pytest.mark.parametrize("fn, mark, error, advice", [
    (branches, "MARK-if", gradc.ControlFlowError, "gradc.where"),
    (loops, "MARK-while", gradc.ControlFlowError, "gradc.where"),
    (uses_math, "MARK-math", gradc.MathModuleError, "numpy.exp or gradc.math.exp"),
    (uses_unsupported, "MARK-spacing", gradc.UnsupportedFunctionError, "Supported NumPy functions"),
    (uses_bit_shift, "MARK-shift", gradc.UnsupportedFunctionError, "supported"),
])
def test_tracing_errors_name_file_line_and_fix(fn, mark, error, advice):
    with pytest.raises(error) as info:
        gradc.value_and_grad(fn, backend="python")(1.5)
    message = str(info.value)
    assert f"{HERE}:{_line_of(mark)}" in message
    assert advice in message
    assert isinstance(info.value, gradc.GradcError)


def test_bool_of_traced_value():
    with pytest.raises(gradc.ControlFlowError, match="bool"):
        gradc.grad(lambda x: 1.0 if bool(x) else 0.0, backend="python")(1.0)


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("args, match", [
    ((1.0,), "missing a required argument"),
    ((1.0, 2.0, 3.0), "too many positional arguments"),
    (("a", 2.0), "argument 0 of f\\(\\) is a str"),
    ((1.0, [2.0]), "argument 1 of f\\(\\) is a list"),
    ((1.0, None), "argument 1 of f\\(\\) is a NoneType"),
])
def test_wrong_arguments(backend, args, match):
    def f(x, y):
        return x * y

    g = gradc.value_and_grad(f, backend=backend)
    assert g(2.0, 3.0) == (6.0, (3.0, 2.0))  # compiled; numba calls now skip gradc's wrapper
    with pytest.raises(gradc.ArgumentError, match=match) as info:
        g(*args)  # MARK-call
    assert f"{HERE}:{_line_of('MARK-call')}" in str(info.value)
    assert isinstance(info.value, TypeError)  # and still a TypeError, as Python users expect


def test_bad_argnums_and_backend():
    with pytest.raises(gradc.ArgumentError, match="argnums"):
        gradc.grad(lambda x: x, argnums=3, backend="python")(1.0)
    with pytest.raises(gradc.ArgumentError, match="argnums must be"):
        gradc.grad(lambda x: x, argnums="x")
    with pytest.raises(gradc.ArgumentError, match="backend"):
        gradc.grad(lambda x: x, backend="cuda")


def test_returning_a_non_scalar():
    with pytest.raises(gradc.TracingError, match="returned a tuple"):
        gradc.grad(lambda x: (x, x), backend="python")(1.0)
    with pytest.raises(gradc.TracingError, match="condition"):
        gradc.grad(lambda x: x > 1, backend="python")(1.0)


def test_names_that_collide_with_the_emitter():
    def f(math, np, x, dx):
        t0 = math * np
        return t0 * x + dx * x

    for backend in ("python", "numba"):
        g = gradc.value_and_grad(f, backend=backend)
        value, grads = g(2.0, 3.0, 5.0, 7.0)
        assert value == 2 * 3 * 5 + 7 * 5
        assert grads == (15.0, 10.0, 13.0, 5.0)
    src = g.source
    assert "def f__value_and_grad(math, np, x, dx):" in src
    assert "import numpy as np_1" in src


def test_a_function_named_like_a_keyword_or_lambda():
    g = gradc.value_and_grad(lambda lam: lam ** 2, backend="python")
    assert "def lambda__value_and_grad(lam):" in g.source
    assert g(3.0) == (9.0, 6.0)
