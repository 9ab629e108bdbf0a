"""gradc.from_sympy: SymPy expressions -> compiled value and gradient.

SymPy's own ``diff`` + ``lambdify`` is the oracle on small expressions; deep
expressions are checked against plain-float loops and central differences.
"""
import ast
import inspect
import keyword
import math

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

from gradc import errors  # noqa: E402
from gradc.symbolic import from_sympy, parameter_names, to_sympy  # noqa: E402

x, y, z = sp.symbols("x y z", real=True)
XYZ = (x, y, z)


def _oracle(expr, symbols):
    """SymPy's own value and gradient functions (DiracDelta, the derivative of sign, is 0 off 0)."""
    grads = [sp.diff(expr, s).replace(sp.DiracDelta, lambda *a: sp.S.Zero) for s in symbols]
    value = sp.lambdify(symbols, expr, "numpy")
    grad = [sp.lambdify(symbols, g, "numpy") for g in grads]
    return value, grad


def _check(expr, symbols, lo, hi, n=25, backend="python", seed=0):
    f = from_sympy(expr, symbols, backend=backend)
    value, grads = _oracle(expr, symbols)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        point = [float(v) for v in rng.uniform(lo, hi, size=len(symbols))]
        got_value, got_grad = f(*point)
        if len(symbols) == 1:
            got_grad = (got_grad,)
        want = float(value(*point))
        assert got_value == pytest.approx(want, rel=1e-10, abs=1e-12), (expr, point)
        for s, g, want_g in zip(symbols, got_grad, grads):
            assert g == pytest.approx(float(want_g(*point)), rel=1e-9, abs=1e-11), (expr, s, point)
    return f


# (expression, low, high): every mapped SymPy type appears at least once.
CASES = [
    (x * sp.sin(y) - x / 2 + 3, -2, 2),                                   # Add, Mul, Rational
    (sp.exp(-x ** 2 / 2) / sp.sqrt(2 * sp.pi) + sp.log(y) * z, 0.2, 2),    # exp, log, pi, sqrt
    (sp.tan(x) + sp.asin(x / 2) + sp.acos(y / 3) + sp.atan(x * y), -1.2, 1.2),
    (sp.atan2(y, x) + sp.sinh(x) - sp.cosh(y) + sp.tanh(x * y * z), 0.2, 2),
    (x ** 3 - 2 / y ** 2 + x ** sp.Rational(3, 2) - z ** sp.Rational(-2, 3), 0.3, 2),
    (x ** y + y ** (-sp.Rational(1, 2)) + sp.sqrt(x * y) + 1 / (x * z), 0.3, 2),
    (x ** sp.Float(2.5) + sp.Float("0.125") * y - 7 * z / (3 * x), 0.3, 2),
    (sp.Abs(x - y) + sp.sign(x) * y + sp.Abs(z), -2, 2),
    (sp.Max(x, y, sp.Rational(1, 2)) - sp.Min(x, y ** 2, z), -2, 2),
    (sp.Piecewise((x ** 2, x < 0), (sp.sin(y), (y > 0) & (x < 1)), (x * y * z, True)), -2, 2),
    (sp.Piecewise((x, sp.Or(sp.Le(x, y), sp.Eq(y, 1))), (-y, sp.Not(sp.Ge(x, 1))),
                  (x * y, sp.Ne(x, 5)), (z, True)), -2, 2),
    (sp.Piecewise((sp.exp(x), sp.Gt(x * y, z)), (sp.cos(z), True)) * y, -2, 2),
    (sp.sec(x) + sp.csc(y) + sp.cot(z), 0.3, 1.2),
    (sp.E * x + sp.EulerGamma * y - sp.GoldenRatio * z + sp.Integer(-4), -2, 2),
    ((x - y) ** 2 / (1 + z ** 2) - (x + y + z) ** 3 / 7, -2, 2),
]


@pytest.mark.parametrize("expr,lo,hi", CASES, ids=[str(i) for i in range(len(CASES))])
def test_matches_sympy(expr, lo, hi):
    _check(expr, list(XYZ), lo, hi)


def test_one_symbol_gives_a_bare_gradient():
    f = _check(sp.sin(x) * x ** 2, [x], -2, 2)
    value, grad = f(1.5)
    assert isinstance(grad, float)
    g = from_sympy(sp.sin(x) * x ** 2, x, backend="python")  # a bare Symbol works too
    assert g(1.5) == (value, grad)


def test_symbol_order_is_the_given_order():
    f = from_sympy(x - 2 * y, [y, x], backend="python")
    assert f(1.0, 10.0) == (8.0, (-2.0, 1.0))
    assert list(inspect.signature(f).parameters) == ["y", "x"]


def test_unused_symbols_and_constant_expressions():
    f = from_sympy(sp.Integer(3) / 4 + sp.pi, [x, y], backend="python")
    assert f(1.0, 2.0) == (0.75 + math.pi, (0.0, 0.0))
    g = from_sympy(x, [x, y], backend="python")
    assert g(5.0, 1.0) == (5.0, (1.0, 0.0))
    h = from_sympy(2.5, [x], backend="python")  # plain numbers are sympified (strictly)
    assert h(1.0) == (2.5, 0.0)


def test_readable_source():
    src = from_sympy(y - x + 1 / z - 1, [x, y, z], backend="python").source
    assert " - x\n" in src and "1.0 / z" in src and " - 1.0\n" in src and "+ (-" not in src
    assert "sympy_expr = y - x" in from_sympy(-x + y, [x, y], backend="python").source
    assert "** (-1)" not in src and "(-1.0) *" not in src
    src = from_sympy(3 * x / (2 * y) + 1 / sp.sqrt(z), [x, y, z], backend="python").source
    assert "np.sqrt(z)" in src and "/ t" in src and "** 0.5" not in src
    assert "x ** 2" in from_sympy(x ** 2, [x], backend="python").source


def test_piecewise_without_default_is_nan_outside():
    f = from_sympy(sp.Piecewise((x, x > 0)), [x], backend="python")
    assert f(2.0) == (2.0, 1.0)
    assert math.isnan(f(-2.0)[0])


def test_kinds():
    e = x * y
    assert from_sympy(e, [x, y], backend="python", kind="grad")(2.0, 3.0) == (3.0, 2.0)
    assert from_sympy(e, [x, y], backend="python", kind="compile")(2.0, 3.0) == 6.0


# --- deep expressions: no recursion, no sympy.diff -----------------------------------------
DEPTH = 5000


def _central(fn, at, h=1e-6):
    return (fn(at + h) - fn(at - h)) / (2 * h)


def test_deep_chain_converts_and_differentiates():
    e = x
    for _ in range(DEPTH):  # unevaluated: SymPy's auto-evaluation is slow, not deep-unsafe
        e = sp.Add(sp.sin(e, evaluate=False), x, evaluate=False)

    def ref(v):
        out = v
        for _ in range(DEPTH):
            out = math.sin(out) + v
        return out

    f = from_sympy(e, [x], backend="python")
    value, grad = f(0.3)
    assert value == pytest.approx(ref(0.3), rel=1e-12)
    assert grad == pytest.approx(_central(ref, 0.3), rel=1e-6)


def test_deep_evaluated_chain_with_two_symbols():
    depth = 2000  # evaluated SymPy arithmetic (nested Adds and Muls): building it is the slow part
    e = x
    for i in range(depth):
        e = (e * y + x) / 2 if i % 2 else sp.cos(e) - y

    def ref(a, b):
        out = a
        for i in range(depth):
            out = (out * b + a) / 2 if i % 2 else math.cos(out) - b
        return out

    f = from_sympy(e, [x, y], backend="python")
    value, (gx, gy) = f(0.4, 0.7)
    assert value == pytest.approx(ref(0.4, 0.7), rel=1e-12)
    assert gx == pytest.approx(_central(lambda a: ref(a, 0.7), 0.4), rel=1e-6)
    assert gy == pytest.approx(_central(lambda b: ref(0.4, b), 0.7), rel=1e-6)


def test_shared_subexpressions_are_converted_once():
    e = x
    for _ in range(200):  # a tree of 2**200 paths, a DAG of a few hundred nodes
        e = sp.Add(sp.sin(e, evaluate=False), sp.cos(e, evaluate=False), evaluate=False)

    def ref(v):
        for _ in range(200):
            v = math.sin(v) + math.cos(v)
        return v

    f = from_sympy(e, [x], backend="python")
    value, grad = f(0.1)
    assert value == pytest.approx(ref(0.1), rel=1e-12)
    assert grad == pytest.approx(_central(ref, 0.1), rel=1e-6)
    assert len(f.graph.nodes) < 3000


# --- symbol names -----------------------------------------------------------------------
UNSAFE = ["x[0]", "lambda", "a b", "q'", "a\nb = 1\nimport os", "x_0", "def", "1st",
          "__debug__", "\u03b8", "\u210c", "H", "np", "sympy_expr", "", "'\"", "x_0_",
          "print(1)#"]


def _names_in(source):
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
    return tree, names


def test_unsafe_symbol_names():
    syms = [sp.Symbol(n) for n in UNSAFE]
    expr = sum((i + 1) * s ** 2 + sp.sin(s) * syms[i - 1] for i, s in enumerate(syms))
    f = from_sympy(expr, syms, backend="python")
    params = list(inspect.signature(f).parameters)
    assert len(set(params)) == len(syms)
    assert all(p.isidentifier() and not keyword.iskeyword(p) and p != "__debug__" for p in params)
    src = f.source
    compile(src, "<gradc>", "exec")
    tree, names = _names_in(src)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert len(imports) == 1 and imports[0].names[0].name == "numpy"
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Lambda, ast.Call))
                and not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute))
                and not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                         and n.func.id.startswith("sympy_expr"))]
    for raw in UNSAFE:
        if not (raw.isidentifier() and not keyword.iskeyword(raw) and raw != "__debug__"):
            assert raw not in names
    assert "\nimport os" not in src and "print(1)" not in src and "'\"" not in src
    # The values are right, in the given order.
    plain = sp.symbols(f"s0:{len(syms)}")  # lambdify cannot take these names
    value, grads = _oracle(expr.xreplace(dict(zip(syms, plain))), plain)
    point = [0.1 * (i + 1) for i in range(len(syms))]
    got_value, got_grad = f(*point)
    assert got_value == pytest.approx(float(value(*point)), rel=1e-12)
    assert got_grad == pytest.approx([float(g(*point)) for g in grads], rel=1e-12)


def test_colliding_names_stay_distinct():
    a, b, c = sp.Symbol("x[0]"), sp.Symbol("x_0"), sp.Symbol("x 0")
    x_pos = sp.Symbol("x", positive=True)  # same name as ``x``, a different symbol
    f = from_sympy(a + 2 * b + 3 * c + 4 * x + 5 * x_pos, [a, b, c, x, x_pos], backend="python")
    assert f(1.0, 1.0, 1.0, 1.0, 1.0) == (15.0, (1.0, 2.0, 3.0, 4.0, 5.0))
    assert parameter_names([a, b, c, x, x_pos]) == ["x_0_1", "x_0", "x_0_2", "x", "x_1"]


# --- mechanics ---------------------------------------------------------------------------
def test_pendulum_lagrangian_with_dynamicsymbols():
    me = pytest.importorskip("sympy.physics.mechanics")
    q = me.dynamicsymbols("q")
    qd = q.diff(me.dynamicsymbols._t)
    m, l, g = sp.symbols("m l g", positive=True)
    N = me.ReferenceFrame("N")
    A = N.orientnew("A", "Axis", [q, N.z])
    O = me.Point("O")
    O.set_vel(N, 0)
    P = O.locatenew("P", -l * A.y)
    P.v2pt_theory(O, N, A)
    bob = me.Particle("bob", P, m)
    bob.potential_energy = m * g * P.pos_from(O).dot(N.y)
    L = me.Lagrangian(N, bob)
    # dynamicsymbols q(t), q'(t) may be listed directly ...
    f = from_sympy(L, [q, qd, m, l, g], backend="python")
    assert list(inspect.signature(f).parameters) == ["q", "qd", "m", "l", "g"]
    # ... or replaced with plain symbols first.
    th, om = sp.symbols("theta omega")
    plain = from_sympy(L.subs({qd: om}).subs({q: th}), [th, om, m, l, g], backend="python")
    point = (0.4, 1.3, 2.0, 0.5, 9.81)
    qv, wv, mv, lv, gv = point
    want_value = 0.5 * mv * lv ** 2 * wv ** 2 + mv * gv * lv * math.cos(qv)
    want_grad = (-mv * gv * lv * math.sin(qv), mv * lv ** 2 * wv,
                 0.5 * lv ** 2 * wv ** 2 + gv * lv * math.cos(qv),
                 mv * lv * wv ** 2 + mv * gv * math.cos(qv), mv * lv * math.cos(qv))
    for fn in (f, plain):
        value, grad = fn(*point)
        assert value == pytest.approx(want_value, rel=1e-12)
        assert grad == pytest.approx(want_grad, rel=1e-12)


def test_numba_backend():
    pytest.importorskip("numba")
    th1, th2, w1, w2 = sp.symbols("theta1 theta2 omega1 omega2")
    m1, m2, l1, l2, g = 1.0, 2.0, 1.5, 0.7, 9.81
    # Double pendulum energy: T + V.
    T = (sp.Rational(1, 2) * (m1 + m2) * l1 ** 2 * w1 ** 2 + sp.Rational(1, 2) * m2 * l2 ** 2 * w2 ** 2
         + m2 * l1 * l2 * w1 * w2 * sp.cos(th1 - th2))
    V = -(m1 + m2) * g * l1 * sp.cos(th1) - m2 * g * l2 * sp.cos(th2)
    E = T + V
    symbols = [th1, th2, w1, w2]
    f = from_sympy(E, symbols)
    point = (0.3, -0.8, 1.1, 0.4)
    value, grad = f(*point)
    f_value, f_grads = _oracle(E, symbols)
    assert value == pytest.approx(float(f_value(*point)), rel=1e-12)
    assert grad == pytest.approx([float(gf(*point)) for gf in f_grads], rel=1e-12)
    assert f(*point) == (value, grad)  # the second call takes numba's direct path
    assert "def sympy_expr__value_and_grad(theta1, theta2, omega1, omega2)" in f.source
    assert len(f.graph.inputs) == 4


# --- to_sympy ------------------------------------------------------------------------------
def test_to_sympy_round_trip():
    expr = sp.atan2(y, x) * sp.exp(x * y) + sp.Piecewise((x ** 2, x < y), (sp.sqrt(y), True))
    f = from_sympy(expr, [x, y], backend="python")
    value, (gx, gy) = to_sympy(f, [x, y])
    rng = np.random.default_rng(1)
    for _ in range(10):
        point = {x: float(rng.uniform(0.2, 2)), y: float(rng.uniform(0.2, 2))}
        assert float(value.subs(point)) == pytest.approx(float(expr.subs(point)), rel=1e-12)
        assert float(gx.subs(point)) == pytest.approx(float(sp.diff(expr, x).subs(point)), rel=1e-10)
        assert float(gy.subs(point)) == pytest.approx(float(sp.diff(expr, y).subs(point)), rel=1e-10)
    assert to_sympy(f.graph)[0].free_symbols == {sp.Symbol("x"), sp.Symbol("y")}


# --- errors ---------------------------------------------------------------------------------
def test_unknown_symbol_is_named():
    w = sp.Symbol("w\nv")
    with pytest.raises(errors.GradcError, match=r"symbol 'w\\nv'.*not one of the symbols"):
        from_sympy(x * w + y, [x, y])
    t = sp.Symbol("t")
    with pytest.raises(errors.ArgumentError, match="'f\\(t\\)'"):
        from_sympy(sp.Function("f")(t) + x, [x, t])


@pytest.mark.parametrize("expr,name", [
    (sp.floor(x), "floor"),
    (sp.gamma(x) + 1, "gamma"),
    (sp.asinh(x), "asinh"),
    (sp.I * x, "ImaginaryUnit"),
    (sp.zoo * x, "ComplexInfinity"),
    (sp.Derivative(x ** 2 * sp.sin(x), x), "Derivative"),
    (sp.Integral(x, (y, 0, 1)), "Integral"),
])
def test_unsupported_is_a_clear_error(expr, name):
    with pytest.raises(errors.UnsupportedFunctionError, match=name) as info:
        from_sympy(expr, [x, y])
    assert "Supported:" in str(info.value) and "Piecewise" in str(info.value)


def test_bad_arguments():
    with pytest.raises(errors.ArgumentError, match="condition"):
        from_sympy(x < y, [x, y])
    with pytest.raises(errors.ArgumentError, match="twice"):
        from_sympy(x, [x, x])
    with pytest.raises(errors.ArgumentError, match=r"symbols\[1\]"):
        from_sympy(x, [x, x + 1])
    with pytest.raises(errors.ArgumentError, match="string"):
        from_sympy("x + 1", [x])
    with pytest.raises(errors.ArgumentError, match="scalar"):
        from_sympy(sp.Matrix([x, y]), [x, y])
    with pytest.raises(errors.ArgumentError, match="backend"):
        from_sympy(x, [x], backend="cuda")
    for exc in (errors.ArgumentError, errors.UnsupportedFunctionError):
        assert issubclass(exc, errors.GradcError)
