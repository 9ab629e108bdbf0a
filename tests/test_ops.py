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
# The ops behind NumPy functions composed in gradc/numpy_api.py: tests/test_numpy_surface.py
SURFACE_OPS = ["cumsum", "cumprod", "prod", "sort_order", "partition", "take_along", "put_along",
               "setitem", "inv", "solve", "det", "logabsdet", "signdet", "cholesky",
               "eigh_values", "eigh_vectors",
               "svd_values", "svd_u", "svd_vh", "qr_q", "qr_r", "lstsq"]  # tests/test_numpy_surface.py
CUSTOM_OPS = ["custom"]  # gradc.custom_vjp / custom_jvp: tests/test_custom_rules.py
ARRAY_OPS = [n for n, op in OPS.items()
             if op.shape is not None and n not in LOOP_OPS + SURFACE_OPS + CUSTOM_OPS]  # tests/test_array_ops.py
FLOAT_OPS = [n for n, op in OPS.items()
             if op.result == "float"
             and n not in ("where", "alias", *ARRAY_OPS, *LOOP_OPS, *SURFACE_OPS, *CUSTOM_OPS)]
BOOL_OPS = [n for n, op in OPS.items() if op.result == "bool"]
INTERNAL = ["alias"]          # an identity that carries names; covered by every adjoint test
SELECTION = ["where"]


def test_every_op_is_covered():
    assert sorted(FLOAT_OPS + BOOL_OPS + INTERNAL + SELECTION + ARRAY_OPS + LOOP_OPS
                  + SURFACE_OPS + CUSTOM_OPS) == sorted(OPS)


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


def _into_domain(op, a):
    """``a`` in (0.3, 0.6) mapped affinely onto the op's domain (arccosh is NaN at 0.3)."""
    lo, hi = op.domain
    return lo + (hi - lo) * (a - 0.3) / 0.3


def _all_ops(x, y):
    """Every float op once, its arguments (x, y in (0.3, 0.6)) mapped into its domain."""
    total = 0.0
    for name in FLOAT_OPS:
        args = tuple(_into_domain(OPS[name], a) for a in (x, y)[:OPS[name].arity])
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


# --- domain edges: both backends agree bitwise, and derivatives are right where they exist ----

EDGES = [0.0, -0.0, np.inf, -np.inf, np.nan]
REGULAR = [1.0, -1.0, 0.5]  # arcsin's and log1p's edges, sqrt as a power: the last bit may differ


def _edge_table(x, y, z):
    """Every scalar op and condition as ``z * op(x, y)``: at z = 1 the Jacobian's rows are
    (d op/dx, d op/dy, op), values and gradients of the whole table from one compile."""
    rows = []
    for name in FLOAT_OPS:
        rows.append(z * apply(name, *(x, y)[:OPS[name].arity]))
    for name in BOOL_OPS:
        if name == "not":
            cond = apply("not", x > y)
        elif name in ("and", "or"):
            cond = apply(name, x > 0.0, y > 0.0)
        else:
            cond = apply(name, x, y)
        rows.append(z * gradc.where(cond, x, y))
    return tuple(rows)


def _same(a, b, ulps=0):
    """Equal floats, NaN equal to NaN and signed zeros told apart; finite results may
    differ by ``ulps`` units in the last place."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    a, b = a[~nan_a], b[~nan_b]
    with np.errstate(invalid="ignore"):  # inf - inf: such entries must be equal anyway
        close = np.abs(a - b) <= ulps * np.spacing(np.maximum(np.abs(a), np.abs(b)))
    return bool(np.all((a == b) | (np.isfinite(a) & close))
                and np.array_equal(np.signbit(a), np.signbit(b)))


def test_same_tells_signed_zeros_and_nans_apart():
    assert _same([np.nan, -0.0, np.inf], [-np.nan, -0.0, np.inf])
    assert not _same(0.0, -0.0) and not _same(np.nan, 0.0) and not _same(1.0, np.nextafter(1, 2))
    assert _same(1.0, np.nextafter(1, 2), ulps=1) and not _same(np.inf, -np.inf, ulps=2)


def test_numba_and_python_agree_bitwise_at_domain_edges():
    """Values and reverse-mode gradients of every op, at 0, -0.0, +-inf, NaN (and +-1)."""
    py = gradc.jacobian(_edge_table, mode="reverse", backend="python")
    nb = gradc.jacobian(_edge_table, mode="reverse", backend="numba")
    assert py.source == nb.source
    names = FLOAT_OPS + BOOL_OPS
    for x in EDGES + REGULAR:
        for y in EDGES + REGULAR:
            ulps = 0 if x in EDGES and y in EDGES else 2  # NumPy's SVML against libm
            j1, j2 = py(x, y, 1.0), nb(x, y, 1.0)
            bad = [(n, j1[k], j2[k]) for k, n in enumerate(names) if not _same(j1[k], j2[k], ulps)]
            assert not bad, f"at x={x}, y={y}, (d/dx, d/dy, value) python vs numba: {bad}"


inf = np.inf
# (op, point, the true derivative there): the edges of each op's domain where it exists
EDGE_DERIVATIVES = [
    ("pow", (0.0, 0.5), (inf, 0.0)), ("pow", (0.0, 1.0), (1.0, 0.0)),
    ("pow", (0.0, 2.0), (0.0, 0.0)), ("pow", (0.0, 3.0), (0.0, 0.0)),
    ("pow", (-0.0, 2.0), (0.0, 0.0)), ("pow", (2.0, 0.0), (0.0, np.log(2.0))),
    ("sqrt", (0.0,), (inf,)), ("sqrt", (inf,), (0.0,)), ("log", (0.0,), (inf,)),
    ("log", (inf,), (0.0,)), ("log1p", (-1.0,), (inf,)), ("log1p", (inf,), (0.0,)),
    ("abs", (0.0,), (0.0,)), ("abs", (-0.0,), (0.0,)), ("relu", (0.0,), (0.0,)),
    ("relu", (-0.0,), (0.0,)), ("exp", (-inf,), (0.0,)), ("expm1", (-inf,), (0.0,)),
    ("tanh", (inf,), (0.0,)), ("tanh", (-inf,), (0.0,)), ("sigmoid", (inf,), (0.0,)),
    ("sigmoid", (-inf,), (0.0,)), ("softplus", (-inf,), (0.0,)), ("softplus", (inf,), (1.0,)),
    ("arctan", (inf,), (0.0,)), ("arcsin", (1.0,), (inf,)), ("arccos", (1.0,), (-inf,)),
    ("div", (1.0, inf), (0.0, 0.0)), ("div", (0.0, 2.0), (0.5, 0.0)),
    ("hypot", (0.0, 1.0), (0.0, 1.0)), ("hypot", (1.0, 0.0), (1.0, 0.0)),
    ("arctan2", (0.0, 1.0), (1.0, 0.0)), ("arctan2", (1.0, 0.0), (0.0, -1.0)),
    ("maximum", (0.0, 0.0), (1.0, 0.0)), ("minimum", (0.0, 0.0), (1.0, 0.0)),
    ("maximum", (0.0, -0.0), (1.0, 0.0)), ("mul", (0.0, inf), (inf, 0.0)),
]


@pytest.mark.parametrize("name, point, true", EDGE_DERIVATIVES,
                         ids=[f"{n}{p}" for n, p, _ in EDGE_DERIVATIVES])
def test_derivative_is_right_at_the_edge_of_the_domain(name, point, true):
    grad = gradc.grad(lambda *xs: apply(name, *xs), backend="python")(*point)
    assert _as_tuple(grad, len(point)) == pytest.approx(true, rel=1e-15, abs=0.0)


def test_zero_base_power_derivatives():
    # the findings: NaN where autograd and JAX give 0, and a numba ZeroDivisionError
    assert gradc.grad(lambda y: 0.0 ** y, backend="python")(0.5) == 0.0
    assert gradc.grad(lambda x, y: x ** y, backend="python")(0.0, 2.0) == (0.0, 0.0)
    for backend in ("python", "numba"):
        assert gradc.grad(lambda x: x ** 0.0, backend=backend)(0.0) == 0.0
        assert gradc.compile(lambda x: x ** -2, backend=backend)(0.0) == np.inf
        assert gradc.compile(lambda x: x ** -3, backend=backend)(-0.0) == -np.inf


def test_power_hessian_at_a_zero_base():
    # x**y at (0, 2): H = [[y(y-1) x**(y-2), 0], [0, log(x)**2 x**y]] -> [[2, 0], [0, 0]]
    hess = gradc.hessian(lambda x, y: x ** y, backend="python")(0.0, 2.0)
    assert np.array_equal(hess, [[2.0, 0.0], [0.0, 0.0]])
    assert gradc.hessian(lambda x: x ** 3.0, backend="python")(0.0)[0, 0] == 0.0


def test_positive_integral_exponents_stay_ints_for_numba():
    # numba computes x ** 2 by multiplication; a float exponent would call pow (~10x slower)
    src = gradc.compile(lambda x: x ** 2 + x ** 3.0 + x ** -2, backend="python").source
    assert "x ** 2" in src and "x ** 3" in src and "x ** (-2.0)" in src


def test_a_shape_rule_raising_index_error_is_a_shape_error():
    # getitem's shape rule indexes the shape: an index past the end raises IndexError there,
    # which reached users raw when trace.py did not check the index first
    from gradc.errors import ShapeError

    with pytest.raises(ShapeError, match="getitem cannot combine shapes"):
        OPS["getitem"].shape_of(((("i", 5),),), [(3,)])
