"""Item assignment into arrays NumPy makes inside a traced function (gradc/constructors.py).

``y = np.zeros(n); y[0] = x[1]; y[1:] += x[:-1]`` is recorded as functional updates, as
code written for numba does it; arrays gradc cannot make traced keep its error, naming
the line. Math tests run on the Python backend (one test compiles with numba).
"""
import numbers
import os
import threading

import numpy as np
import pytest

import gradc
from numpy import zeros

HERE = os.path.basename(__file__)


def _line_of(mark):
    with open(__file__) as fh:
        return next(k for k, line in enumerate(fh, 1) if mark in line and "_line_of" not in line)


def central_differences(f, x, coordinates, h=1e-5):
    grad = np.zeros(len(coordinates))
    for k, i in enumerate(coordinates):
        step = np.zeros_like(x)
        step[i] = h
        grad[k] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def issue_example(x):
    y = np.zeros(x.shape[0])
    y[0] = x[1]  # MARK-issue-example
    y[1:] += x[:-1]
    return np.sum(y * y) + np.sum(np.sin(y) * x)


@pytest.mark.parametrize("n", [7, 300, 10_000])
def test_the_issues_example_fills_a_numpy_array_at_every_size(n):
    x = np.random.default_rng(n).normal(size=n)
    value, grad = gradc.value_and_grad(issue_example, backend="python")(x)
    assert value == pytest.approx(issue_example(x), rel=1e-12)  # the same code on numbers
    # every coordinate where that is cheap; at 10^4 the first, the last and 40 between
    coordinates = np.arange(n) if n <= 300 else np.unique(np.r_[0, 1, n - 1, np.linspace(
        0, n - 1, 40).astype(int)])
    expected = central_differences(issue_example, x, coordinates)
    np.testing.assert_allclose(grad[coordinates], expected, rtol=1e-6, atol=1e-6)


def test_the_issues_example_at_size_one_is_numpys_index_error_naming_the_line():
    # x[1] does not exist: NumPy raises IndexError on numbers; gradc names the line
    with pytest.raises(IndexError):
        issue_example(np.ones(1))
    with pytest.raises(gradc.ShapeError, match="out of bounds") as info:
        gradc.grad(issue_example, backend="python")(np.ones(1))
    assert f"{HERE}:{_line_of('MARK-issue-example')}" in str(info.value)


def test_the_issues_example_compiles_with_numba():
    x = np.random.default_rng(5).normal(size=300)
    f = gradc.value_and_grad(issue_example)  # numba, arrays="auto" (at 300: fused loops)
    value, grad = f(x)
    reference = gradc.value_and_grad(issue_example, backend="python")(x)
    assert value == pytest.approx(reference[0], rel=1e-12)
    np.testing.assert_allclose(grad, reference[1], rtol=1e-12, atol=1e-12)


def running_sum(x):
    y = np.zeros(x.shape[0])
    y[0] = x[0]
    for i in range(1, x.shape[0]):
        y[i] = y[i - 1] + x[i]
    return np.sum(y ** 2)


def test_the_numba_style_loop_fills_the_array_element_by_element():
    x = np.array([0.5, -1.0, 2.0, 0.25, 1.5])
    grad = gradc.grad(running_sum, backend="python")(x)
    np.testing.assert_allclose(grad, central_differences(running_sum, x, range(5)), rtol=1e-7)
    s = np.cumsum(x)
    np.testing.assert_allclose(grad, 2 * np.cumsum(s[::-1])[::-1])  # d/dx_i = 2 sum_{j>=i} s_j


def fill_shifted(x, n):
    """A helper of this module that fills an array with np.zeros: it is traced too."""
    y = zeros(n)  # imported by name: from numpy import zeros
    y[1:] = x[:-1] * 2.0
    return y


def uses_a_helper(x):
    return np.sum(fill_shifted(x, x.shape[0]) * x)


def test_a_helper_of_the_same_module_and_zeros_imported_by_name_fill_the_array():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    grad = gradc.grad(uses_a_helper, backend="python")(x)
    np.testing.assert_allclose(grad, central_differences(uses_a_helper, x, range(4)), rtol=1e-7)


def test_a_helper_from_the_closure_fills_the_array():
    def make():
        scale = 3.0

        def helper(v):
            out = np.ones(v.shape[0] + 1)
            out[:-1] = v * scale
            return out

        def f(x):
            return np.sum(helper(x) ** 2)

        return f

    f = make()
    x = np.array([0.5, -2.0])
    np.testing.assert_allclose(gradc.grad(f, backend="python")(x), 18.0 * x)


def test_untouched_constant_arrays_stay_numpy():
    seen = {}

    def f(x):
        c = np.linspace(0.0, 1.0, x.shape[0])
        if c[0] > 0:  # a plain NumPy comparison: c holds numbers only
            return np.sum(x)
        seen["isinstance"] = isinstance(c, np.ndarray)
        seen["searchsorted"] = int(np.searchsorted(c, 0.6))  # untraceable, fine on numbers
        seen["sum"] = float(c.sum())
        return np.sum(c * x) + c.max()

    x = np.arange(6.0)
    value, grad = gradc.value_and_grad(f, backend="python")(x)
    np.testing.assert_allclose(grad, np.linspace(0.0, 1.0, 6))
    assert value == pytest.approx(np.linspace(0, 1, 6) @ x + 1.0)
    assert seen == {"isinstance": True, "searchsorted": 3, "sum": 3.0}


def test_views_taken_before_the_assignment_see_it():
    def f(x):
        y = np.zeros(4)
        head, square = y[:2], y.reshape(2, 2)  # views, taken while y holds numbers
        y[0] = x[0]
        tail = y[1:]
        tail[2] += x[1]  # through a view taken after: into y
        return np.sum(head * x[:2]) + square[1, 1] * x[2] + y[3]

    x = np.array([1.0, 2.0, 3.0, 4.0])
    grad = gradc.grad(f, backend="python")(x)
    np.testing.assert_allclose(grad, [2.0 * 1.0, 3.0 + 1.0, 2.0, 0.0])


def test_arrays_computed_from_constructors_can_receive_traced_values():
    def f(x):
        y = 2.0 * np.ones(3)
        w = np.sin(np.linspace(0.0, 1.0, 3))
        y[0], w[2] = x[0], x[1]
        y += x
        return np.sum(y * w)

    x = np.array([0.5, 1.5, -1.0])
    np.testing.assert_allclose(gradc.grad(f, backend="python")(x),
                               central_differences(f, x, range(3)), rtol=1e-7)


def test_empty_starts_as_zeros():
    def f(x):
        y = np.empty(3)
        y[0] = x[0]
        return y[0] + y[1] + y[2]

    assert gradc.value_and_grad(f, backend="python")(np.array([2.0, 5.0, 7.0]))[0] == 2.0


def test_results_that_hold_assigned_arrays():
    def shifted(x):
        y = np.zeros(3)
        y[1:] = x[:2]
        return y

    jac = gradc.jacobian(shifted, backend="python")(np.ones(3))
    np.testing.assert_array_equal(jac, np.eye(3, k=-1))

    def with_aux(x):
        y = np.zeros(2)
        y[1] = x[0]
        return np.sum(y ** 2), {"y": y, "constant": np.ones(2)}

    grad, aux = gradc.grad(with_aux, backend="python", has_aux=True)(np.array([3.0, 1.0]))
    np.testing.assert_array_equal(grad, [6.0, 0.0])
    np.testing.assert_array_equal(aux["y"], [0.0, 3.0])
    np.testing.assert_array_equal(aux["constant"], [1.0, 1.0])


def test_a_function_of_floats_fills_an_unrolled_array():
    def f(a, b):
        y = np.zeros(2)
        y[0], y[1] = a, a * b
        y[1:] += y[:1]
        return np.sum(y * y)

    value, grad = gradc.value_and_grad(f, backend="python")(2.0, 3.0)
    assert value == 4.0 + 64.0 and grad == (4.0 + 2 * 8 * 4.0, 2 * 8 * 2.0)


def test_numpy_isscalar_of_traced_values_is_numpys_answer():
    seen = []

    def f(x):
        seen.append((np.isscalar(x[0]), np.isscalar(x), isinstance(x[0], numbers.Real)))
        return x[0]

    gradc.grad(f, backend="python")(np.ones(2))
    assert seen == [(True, False, False)]  # a float is a scalar, an array is not


def test_two_threads_trace_at_once_while_a_third_uses_numpy_plainly():
    arrived, leave = threading.Barrier(3), threading.Barrier(3)
    results, plain = {}, {}

    def traced(scale):
        def f(x):
            y = np.zeros(2)
            y[0] = x[0] * scale
            if scale not in results:  # (the first trace: should gradc trace again, go on)
                results[scale] = None
                arrived.wait(timeout=30)  # both traces are inside their functions now
                leave.wait(timeout=30)
            return np.sum(y * y)
        return f

    def run(scale):
        results[scale] = gradc.grad(traced(scale), backend="python")(np.array([1.0, 1.0]))

    def use_numpy():
        arrived.wait(timeout=30)
        z = np.zeros(3)
        z[0] = 2.5
        plain["zeros"] = (type(z) is np.ndarray, type(np.ones(2)) is np.ndarray, z.tolist())
        leave.wait(timeout=30)

    threads = [threading.Thread(target=run, args=(s,)) for s in (2.0, 3.0)]
    threads.append(threading.Thread(target=use_numpy))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert plain["zeros"] == (True, True, [2.5, 0.0, 0.0])
    np.testing.assert_array_equal(results[2.0], [8.0, 0.0])
    np.testing.assert_array_equal(results[3.0], [18.0, 0.0])
    assert type(np.zeros(1)) is np.ndarray and np.zeros is zeros  # NumPy itself unchanged


GLOBAL_BUFFER = np.zeros(3)


def into_a_global_array(x):
    GLOBAL_BUFFER[0] = x[0]  # MARK-refused-global-array
    return np.sum(GLOBAL_BUFFER)


def into_a_float32_array(x):
    y = np.zeros(3, dtype=np.float32)
    y[0] = x[0]  # MARK-refused-float32
    return np.sum(y)


def into_an_int_array(x):
    y = np.zeros(3, dtype=int)
    y[0] = x[0]  # MARK-refused-int
    return np.sum(y)


def imports_numpy_inside(x):
    import numpy

    y = numpy.zeros(3)
    y[0] = x[0]  # MARK-refused-import
    return numpy.sum(y)


def into_an_array_of_another_module(x):
    y = np.random.default_rng(0).random(3)  # numpy.random's, not a constructor gradc knows
    y[0] = x[0]  # MARK-refused-random
    return np.sum(y)


@pytest.mark.parametrize("fn, mark", [
    (into_a_global_array, "global-array"), (into_a_float32_array, "float32"),
    (into_an_int_array, "int"),
    (imports_numpy_inside, "import"), (into_an_array_of_another_module, "random")])
def test_arrays_gradc_cannot_make_traced_are_refused_naming_the_line(fn, mark):
    with pytest.raises(gradc.MathModuleError, match="zeros_like") as info:
        gradc.grad(fn, backend="python")(np.ones(3))
    message = str(info.value)
    assert f"{HERE}:{_line_of(f'MARK-refused-{mark}')}" in message
    assert "made where gradc does not look" in message
    assert GLOBAL_BUFFER.tolist() == [0.0, 0.0, 0.0]


def test_writing_into_a_transposed_view_is_refused_naming_the_line():
    def f(x):
        y = np.zeros((2, 2))
        y.T[0, 1] = x[0]  # MARK-transposed
        return np.sum(y)

    with pytest.raises(gradc.UnsupportedFunctionError, match="transposed view") as info:
        gradc.grad(f, backend="python")(np.ones(2))
    assert f"{HERE}:{_line_of('MARK-transposed')}" in str(info.value)


def test_a_view_numpy_made_unseen_is_refused_once_its_array_holds_traced_values():
    def f(x):
        y = np.zeros(3)
        unseen = np.ndarray.view(y, type(y))  # NumPy's own method on the class: no replay
        y[0] = x[0]
        return np.sum(unseen)  # MARK-unseen

    with pytest.raises(gradc.UnsupportedFunctionError, match="stale") as info:
        gradc.grad(f, backend="python")(np.ones(3))
    assert f"{HERE}:{_line_of('MARK-unseen')}" in str(info.value)


def test_numpy_asarray_of_a_global_array_is_that_array_untouched():
    def f(x):
        a, b = np.asarray(GLOBAL_BUFFER), np.array(GLOBAL_BUFFER)
        b[0] = x[0]  # a copy: it can receive a traced value
        with pytest.raises(gradc.MathModuleError):
            a[0] = x[0]  # the user's own array: refused, and never overwritten
        return np.sum(a + b)

    np.testing.assert_array_equal(gradc.grad(f, backend="python")(np.ones(3)), [1.0, 0, 0])
    assert GLOBAL_BUFFER.tolist() == [0.0, 0.0, 0.0]


MODULE_WITH_GLOBAL_WRITES = """
import numpy as np

SCALE, COUNT = 1.0, 0


def set_scale(value):
    global SCALE
    SCALE = value


def counts(x):
    global COUNT
    COUNT += 1
    y = np.zeros(3)
    y[0] = x[0]  # MARK-counts
    return np.sum(y)


def scaled(x):
    set_scale(3.0)  # rebinds a global of this module while the trace runs
    y = np.zeros(2)
    y[0] = x[0] * SCALE
    return np.sum(y)
"""


def _module_from(tmp_path, name, source):
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def test_a_function_that_assigns_globals_runs_as_it_is_and_its_module_is_read_live(tmp_path):
    module, path = _module_from(tmp_path, "writes_globals", MODULE_WITH_GLOBAL_WRITES)
    with pytest.raises(gradc.MathModuleError, match="assigns globals") as info:
        gradc.grad(module.counts, backend="python")(np.ones(3))
    line = next(k for k, text in enumerate(MODULE_WITH_GLOBAL_WRITES.splitlines(), 1)
                if "MARK-counts" in text)
    assert f"{path}:{line}" in str(info.value) and module.COUNT == 1  # it ran, in its module
    # the other functions of that module fill arrays, and see the global set_scale rebinds
    assert gradc.grad(module.scaled, backend="python")(np.ones(2)).tolist() == [3.0, 0.0]
    assert module.SCALE == 3.0


def test_iterating_over_assigned_arrays_and_their_rows():
    def f(x):
        rows = np.zeros((2, 2))
        for row in rows:  # rows are views: writes into them reach the array
            row[0] = x[0]
        y = np.zeros(3)
        y[0], y[1] = x[0], x[1]
        return sum(v * v for v in y) + np.sum(rows)

    np.testing.assert_array_equal(gradc.grad(f, backend="python")(np.array([1.0, 2.0, 3.0])),
                                  [4.0, 4.0, 0.0])


def test_a_read_only_array_refuses_a_traced_value_as_numpy_refuses_numbers():
    def f(x):
        y = np.zeros(3)
        y.setflags(write=False)
        y[0] = x[0]  # MARK-read-only
        return np.sum(y)

    with pytest.raises(gradc.TracingError, match="read-only") as info:
        gradc.grad(f, backend="python")(np.ones(3))
    assert f"{HERE}:{_line_of('MARK-read-only')}" in str(info.value)


def test_numpy_full_of_a_traced_value_is_an_array_that_receives_more():
    def f(x):
        y = np.full(3, x[0])
        y[1] = x[1]
        return np.sum(y * y) + np.sum(np.full((2,), 2.5))

    value, grad = gradc.value_and_grad(f, backend="python")(np.array([1.0, 2.0, 3.0]))
    assert value == 1.0 + 4.0 + 1.0 + 5.0 and grad.tolist() == [4.0, 4.0, 0.0]


def test_an_assigned_array_passed_to_a_gradc_function_inside_the_trace():
    inner = gradc.compile(lambda v: np.sum(v * v), backend="python")

    def f(x):
        y = np.zeros(3)
        y[0] = x[0]
        return inner(y) + x[1]

    value, grad = gradc.value_and_grad(f, backend="python")(np.array([2.0, 1.0, 0.0]))
    assert value == 5.0 and grad.tolist() == [4.0, 1.0, 0.0]


def test_an_operation_reads_an_array_as_it_is_then_not_as_it_is_written_later():
    def f(x):
        y = np.zeros(3)
        before = np.sum(y * x)  # y holds zeros here
        y[1] = 5.0  # numbers, written after
        z = np.ones(3)
        scaled = x * z
        z[0] = 7.0
        y[0] = x[0]  # now y holds traced values
        return before + np.sum(scaled) + y[1] * x[2]

    x = np.ones(3)
    assert f(x) == 0.0 + 3.0 + 5.0  # NumPy's answer
    for backend in ("python", "numba"):
        value, grad = gradc.value_and_grad(f, backend=backend)(x)
        assert value == 8.0 and grad.tolist() == [1.0, 1.0, 6.0]
