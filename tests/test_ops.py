"""Every op in the table, checked against SymPy's derivative and central differences.

The tests are parametrised over ``gradc.ops.OPS``: an op added to the table is
tested here without anyone writing a new test (and ``test_every_op_is_covered``
fails if it falls into no category).
"""
import numpy as np
import pytest
import sympy

import gradc
from gradc.ops import MATH_FUNCTIONS, OPS, op_for
from gradc.trace import apply, trace

LOOP_OPS = ["scan", "scan_bwd", "part"]  # gradc.scan and its reverse: tests/test_scan.py
ARRAY_OPS = [n for n, op in OPS.items()
             if op.shape is not None and n not in LOOP_OPS]  # tests/test_array_ops.py
FLOAT_OPS = [n for n, op in OPS.items()
             if op.result == "float" and n not in ("where", "alias", *ARRAY_OPS, *LOOP_OPS)]
BOOL_OPS = [n for n, op in OPS.items() if op.result == "bool"]
INTERNAL = ["alias"]          # an identity that carries names; covered by every adjoint test
SELECTION = ["where"]


def test_every_op_is_covered():
    assert sorted(FLOAT_OPS + BOOL_OPS + INTERNAL + SELECTION + ARRAY_OPS + LOOP_OPS) == sorted(OPS)


def _points(op, count=4, seed=0):
    rng = np.random.default_rng(seed + sum(map(ord, op.name)))
    lo, hi = op.domain
    return rng.uniform(lo, hi, size=(count, op.arity))


def _central(f, x, h=1e-6):
    x = np.asarray(x, float)
    out = []
    for i in range(len(x)):
        step = h * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        out.append((f(*up) - f(*down)) / (2 * step))
    return np.array(out)


def _as_tuple(grad, n):
    return tuple(grad) if n > 1 else (grad,)


@pytest.mark.parametrize("name", FLOAT_OPS)
def test_gradient_matches_sympy_and_central_differences(name):
    op = OPS[name]
    f = lambda *xs: apply(name, *xs)  # noqa: E731
    vg = gradc.value_and_grad(f, backend="python")
    symbols = sympy.symbols(f"x0:{op.arity}", real=True)
    expr = op.sympy(*symbols)
    derivs = [sympy.diff(expr, s) for s in symbols]
    for point in _points(op):
        value, grad = vg(*point)
        subs = dict(zip(symbols, point))
        assert value == pytest.approx(float(expr.evalf(subs=subs)), rel=1e-12, abs=1e-12)
        exact = [float(d.evalf(subs=subs)) for d in derivs]
        assert _as_tuple(grad, op.arity) == pytest.approx(exact, rel=1e-10, abs=1e-12)
        numeric = _central(lambda *xs: op.impl(*xs), point)
        assert _as_tuple(grad, op.arity) == pytest.approx(list(numeric), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", BOOL_OPS)
def test_conditions_select_and_block_gradients(name):
    op = OPS[name]
    if op.arity == 1:
        f = lambda x, y: gradc.where(apply(name, x > y), x * y, x + 2 * y)  # noqa: E731
        truth = lambda x, y: not (x > y)  # noqa: E731
    elif name in ("and", "or"):
        f = lambda x, y: gradc.where(apply(name, x > 0.5, y > 0.5), x * y, x + 2 * y)  # noqa: E731
        truth = lambda x, y: op.impl(x > 0.5, y > 0.5)  # noqa: E731
    else:
        f = lambda x, y: gradc.where(apply(name, x, y), x * y, x + 2 * y)  # noqa: E731
        truth = op.impl
    vg = gradc.value_and_grad(f, backend="python")
    for x, y in [(0.3, 0.7), (0.9, 0.2), (0.6, 0.6)]:
        expected = (x * y, y, x) if truth(x, y) else (x + 2 * y, 1.0, 2.0)
        value, grad = vg(x, y)
        assert (value, *grad) == pytest.approx(expected)


def test_where_against_sympy_piecewise():
    x, y = sympy.symbols("x y", real=True)
    expr = OPS["where"].sympy(x > y, sympy.sin(x) * y, sympy.cos(y))
    vg = gradc.value_and_grad(lambda x, y: gradc.where(x > y, np.sin(x) * y, np.cos(y)),
                              backend="python")
    for px, py in [(0.9, 0.1), (0.1, 0.9)]:
        subs = {x: px, y: py}
        value, grad = vg(px, py)
        assert value == pytest.approx(float(expr.evalf(subs=subs)))
        assert grad == pytest.approx([float(sympy.diff(expr, s).evalf(subs=subs)) for s in (x, y)])


@pytest.mark.parametrize("name", FLOAT_OPS)
def test_numpy_ufuncs_dispatch_to_the_op(name):
    op = OPS[name]
    for ufunc in op.ufuncs:
        g = trace(lambda *xs: getattr(np, ufunc)(*xs), [f"x{i}" for i in range(op.arity)], "f")
        assert name in [n.op for n in g.nodes], ufunc


@pytest.mark.parametrize("public", MATH_FUNCTIONS)
def test_gradc_math_on_numbers_and_traced_values(public):
    op = op_for(public)
    fn = getattr(gradc.math, public)
    point = _points(op, count=1)[0]
    with np.errstate(all="ignore"):
        expected = op.impl(*point)
    assert fn(*point) == pytest.approx(expected)
    vg = gradc.value_and_grad(lambda *xs: fn(*xs), backend="python")
    assert vg(*point)[0] == pytest.approx(expected)


def _all_ops(x, y):
    """Every float op once, inside its domain for x, y in (0.3, 0.6)."""
    total = 0.0
    for name in FLOAT_OPS:
        args = (x, y)[:OPS[name].arity]
        total = total + apply(name, *args)
    return total + gradc.where(x > y, x, y)


def test_numba_backend_agrees_with_python_on_every_op():
    py = gradc.value_and_grad(_all_ops, backend="python")
    nb = gradc.value_and_grad(_all_ops, backend="numba")
    assert py.source == nb.source
    for point in [(0.3, 0.55), (0.5, 0.35)]:
        v1, g1 = py(*point)
        v2, g2 = nb(*point)
        assert v2 == pytest.approx(v1, rel=1e-13)
        assert g2 == pytest.approx(g1, rel=1e-12)
