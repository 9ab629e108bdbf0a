"""gradc.explain on arrays: traced whole (the one array IR), shown element by element while
the table is short (through the unroll pass) and with arrays whole past that; and no module
of explain, draw or gradc.nn ever traces element by element (the old second tracing mode)."""
import io
import re

import numpy as np
import pytest

import gradc
import gradc.trace as trace_module
from gradc import nn
from gradc.draw import dot_source
from gradc.explain import ELEMENT_ROWS, derive


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def sumsq(x):
    return np.sum(x ** 2)


def logsumexp(z):
    m = np.max(z)  # the element-by-element tracer refused np.max
    return m + np.log(np.sum(np.exp(z - m)))


def _table(f, *args, **options):
    out = io.StringIO()
    result = gradc.explain(f, *args, file=out, **options)
    assert out.getvalue().rstrip("\n") == result.text
    return result


def _rows(text):
    """name -> the value printed on its row."""
    return dict(re.findall(r"^\s+(\w+)\s+=.*=\s+(.+)$", text, re.M))


def _gradient(f, x):
    return gradc.value_and_grad(f, backend="python")(x)


def test_seven_elements_are_explained_element_by_element():
    x = np.linspace(-0.6, 1.2, 7)
    result = _table(sumsq, x)
    assert result.derivation.elements
    rows = _rows(result.text)
    value, grad = _gradient(sumsq, x)
    assert [float(rows[f"dx_{i}"]) for i in range(7)] == pytest.approx(grad, rel=1e-15)
    assert result.text.splitlines()[0].endswith(f"= {value!r}")


def test_three_hundred_elements_are_explained_with_arrays_whole():
    x = np.linspace(0.0, 1.0, 300)
    result = _table(rosen, x)
    d = result.derivation
    assert not d.elements and len(d.rows) < ELEMENT_ROWS  # one row per array op, not per element
    value, grad = _gradient(rosen, x)
    assert d.values[d.graph.outputs[0].id] == pytest.approx(value, rel=1e-14)
    dx = next(s for s in d.reverse if s.name == "dx")
    np.testing.assert_allclose(d.value(dx.node), grad, rtol=1e-13)
    assert re.search(r"^  t\d+ += x\[1:\] += \[", result.text, re.M)  # the code's own steps


def test_a_long_element_table_switches_to_arrays_whole_and_elements_chooses():
    x = np.linspace(0.1, 0.9, 5)
    _, grad = _gradient(rosen, x)
    by_size = _table(rosen, x).derivation
    assert not by_size.elements  # 96 rows element by element: past ELEMENT_ROWS
    forced = _table(rosen, x, elements=True)
    assert forced.derivation.elements and len(forced.derivation.rows) > ELEMENT_ROWS
    rows = _rows(forced.text)
    assert [float(rows[f"dx_{i}"]) for i in range(5)] == pytest.approx(grad, rel=1e-14)
    assert not _table(sumsq, np.arange(3.0), elements=False).derivation.elements
    with pytest.raises(gradc.ArgumentError, match="elements must be None, True or False"):
        gradc.explain(sumsq, np.arange(3.0), elements="yes")


def test_explain_traces_what_the_element_tracer_refused():
    z = np.array([0.5, 1.5, -1.0])
    rows = _rows(_table(logsumexp, z).text)
    _, grad = _gradient(logsumexp, z)
    assert [float(rows[f"dz_{i}"]) for i in range(3)] == pytest.approx(grad, rel=1e-14)


def test_matrix_values_print_on_their_row():
    def quad(x, A):
        y = A @ x
        return 0.5 * np.dot(y, y)

    text = _table(quad, np.array([1.0, 2.0]), np.array([[1.0, 2.0], [3.0, 4.0]]),
                  elements=False).text
    assert text.splitlines()[0] == "quad(x=[1., 2.], A=[[1., 2.], [3., 4.]]) = 73"
    assert re.search(r"^  dA += .* = \[\[ 5\., 10\.\], \[11\., 22\.\]\]$", text, re.M)
    assert all(line.startswith(("  ", "quad(", "forward", "reverse")) for line in text.splitlines())


def test_second_order_is_element_by_element_and_says_when_it_cannot_be():
    x = np.array([0.1, 0.5, 0.9])
    rows = _rows(_table(gradc.hessian(rosen), x).text)
    H = gradc.hessian(rosen, backend="python")(x)
    assert float(rows["ddx_0_dx_1"]) == pytest.approx(H[0, 1]) and float(rows["ddx_2_dx_2"]) == 200
    with pytest.raises(gradc.ArgumentError, match="second order element by element"):
        gradc.explain(gradc.hessian(rosen), x, elements=False)
    with pytest.raises(gradc.UnsupportedFunctionError, match=r"test_explain\.py.*cumsum"):
        gradc.explain(gradc.hessian(lambda v: np.sum(np.cumsum(v) ** 2)), x)
    first = _table(lambda v: np.sum(np.cumsum(v) ** 2), x)  # first order: arrays whole
    assert not first.derivation.elements and "np.cumsum(v, axis=0)" in first.text


# --- no element-by-element tracing ------------------------------------------------------------
@pytest.fixture
def element_traces(monkeypatch):
    """Every array parameter traced element by element while the test runs: trace.trace makes
    each parameter through _traced_param, which the element tracer's arrays come from."""
    seen = []
    original = trace_module._traced_param

    def recording(graph, name, shape, whole=False):
        if shape is not None and not whole:
            seen.append((name, shape))
        return original(graph, name, shape, whole)

    monkeypatch.setattr(trace_module, "_traced_param", recording)
    return seen


def test_the_recorder_sees_element_tracing(element_traces):
    # the old mode, asked for on purpose: the recorder sees the request, the tracer refuses it
    with pytest.raises(gradc.TracingError, match="traced whole"):
        trace_module._traced_param(gradc.ir.Graph("f"), "x", (3,), False)
    assert element_traces == [("x", (3,))]


def _mlp_step(batch):
    model = nn.Chain(nn.Dense(3, 4), nn.Tanh(), nn.Dense(4, 2))
    params = model.init(seed=0)
    r = np.random.default_rng(batch)
    X = r.normal(size=(batch, 3))
    Y = nn.softmax_cross_entropy.targets(r.integers(0, 2, batch), (2,))
    step = nn.compile_step(model, params, X, Y, nn.softmax_cross_entropy, nn.Adam(0.01),
                           backend="python")
    return step(params, nn.Adam(0.01).init(params), X, Y)


@pytest.mark.parametrize("use", [
    lambda: gradc.explain(sumsq, np.linspace(0, 1, 7), file=io.StringIO()),
    lambda: gradc.explain(rosen, np.linspace(0, 1, 300), file=io.StringIO()),
    lambda: gradc.explain(gradc.hessian(rosen), np.linspace(0, 1, 7), file=io.StringIO()),
    lambda: dot_source(logsumexp, np.linspace(0, 1, 7), reverse=True),
    lambda: dot_source(rosen, np.linspace(0, 1, 300)),
    lambda: derive(rosen, np.linspace(0, 1, 7), elements=True),
    lambda: _mlp_step(1),
    lambda: _mlp_step(7),
    lambda: _mlp_step(300),
], ids=["explain-7", "explain-300", "explain-hessian-7", "draw-7", "draw-300", "derive-7",
        "nn-batch-1", "nn-batch-7", "nn-batch-300"])
def test_explain_draw_and_nn_trace_arrays_whole(use, element_traces):
    use()
    assert element_traces == []
