"""Higher-order derivatives: Hessians, Hessian-vector products, forward mode and Jacobians.

Hessians are checked against SymPy's symbolic Hessian on every float op of the
table (parametrised over ``gradc.ops.OPS``) and on composed functions, and
against SciPy's Rosenbrock Hessian; Jacobians against central differences.
"""
import re

import numpy as np
import pytest
import scipy.optimize
import sympy

import gradc
from gradc.ops import OPS
from gradc.trace import apply

# The scalar float ops (ops on arrays traced whole have a shape rule and no SymPy meaning).
FLOAT_OPS = [n for n, op in OPS.items() if op.result == "float" and n not in ("where", "alias")
             and op.sympy is not None and getattr(op, "shape", None) is None]


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _points(op, count=3, seed=1):
    rng = np.random.default_rng(seed + sum(map(ord, op.name)))
    lo, hi = op.domain
    return rng.uniform(lo, hi, size=(count, op.arity))


def _sympy_hessian_at(expr, symbols, point):
    subs = dict(zip(symbols, point))
    H = sympy.hessian(expr, symbols)
    return np.array([[float(H[i, j].evalf(subs=subs)) for j in range(len(symbols))]
                     for i in range(len(symbols))])


@pytest.mark.parametrize("name", FLOAT_OPS)
def test_hessian_matches_sympy_on_every_op(name):
    op = OPS[name]
    f = lambda *xs: apply(name, *xs)  # noqa: E731
    vgh = gradc.value_grad_hessian(f, backend="python")
    symbols = sympy.symbols(f"x0:{op.arity}", real=True)
    expr = op.sympy(*symbols)
    for point in _points(op):
        value, grad, H = vgh(*point)
        assert H.shape == (op.arity, op.arity)
        assert value == pytest.approx(float(expr.evalf(subs=dict(zip(symbols, point)))))
        exact = _sympy_hessian_at(expr, symbols, point)
        np.testing.assert_allclose(H, exact, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(H, H.T)


def _composed(a, b, c, m):
    """The same function on NumPy floats (traced) or SymPy symbols (``m`` is the module)."""
    s = m.sin(a * b)
    e = m.exp(s + c)
    r = m.sqrt(a * a + c * c + 1)
    return s * e + m.log(e + r) + m.tanh(b - c) * r ** 3 / (1 + b * b)


def test_hessian_of_composed_function_matches_sympy():
    symbols = sympy.symbols("a b c", real=True)
    expr = _composed(*symbols, sympy)
    H = gradc.hessian(lambda a, b, c: _composed(a, b, c, np), backend="python")
    for point in [(0.3, -0.7, 0.5), (1.2, 0.4, -0.9)]:
        np.testing.assert_allclose(H(*point), _sympy_hessian_at(expr, symbols, point),
                                   rtol=1e-10, atol=1e-12)


def test_hessian_with_where_and_argnums():
    def f(x, y, z):
        return gradc.where(x > y, x * x * y, np.sin(y) * x) * z + z * z * x

    H = gradc.hessian(f, argnums=(0, 2), backend="python")
    x, y, z = sympy.symbols("x y z", real=True)
    for point, branch in [((0.9, 0.2, 0.5), x * x * y), ((0.1, 0.8, -1.5), sympy.sin(y) * x)]:
        expr = branch * z + z * z * x
        full = _sympy_hessian_at(expr, (x, y, z), point)
        np.testing.assert_allclose(H(*point), full[np.ix_([0, 2], [0, 2])], rtol=1e-12)


def test_rosenbrock_hessian_and_hvp_against_scipy():
    H = gradc.hessian(rosen, backend="python")
    hvp = gradc.hvp(rosen, backend="python")
    vgh = gradc.value_grad_hessian(rosen, backend="python")
    rng = np.random.default_rng(7)
    for x, v in zip(rng.uniform(-2, 2, size=(3, 6)), rng.normal(size=(3, 6))):
        np.testing.assert_allclose(H(x), scipy.optimize.rosen_hess(x), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(hvp(x, v), scipy.optimize.rosen_hess_prod(x, v),
                                   rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(hvp(x, v), H(x) @ v, rtol=1e-12, atol=1e-9)
        value, grad, hess = vgh(x)
        assert value == pytest.approx(scipy.optimize.rosen(x), rel=1e-13)
        np.testing.assert_allclose(grad, scipy.optimize.rosen_der(x), rtol=1e-12, atol=1e-10)
        np.testing.assert_array_equal(hess, H(x))


def test_numba_hessian_and_hvp_agree_with_python():
    x, v = np.linspace(-1.0, 1.5, 5), np.linspace(0.5, -0.5, 5)
    for kind, args in [("hessian", (x,)), ("hvp", (x, v))]:
        py = getattr(gradc, kind)(rosen, backend="python")
        nb = getattr(gradc, kind)(rosen, backend="numba")
        np.testing.assert_allclose(nb(*args), py(*args), rtol=1e-13)
        if kind == "hessian":  # unrolled by both (hvp: numba runs fused loops, python unrolls)
            assert nb.source == py.source


def test_numba_value_grad_hessian_of_scalars():
    def f(a, b):
        return np.exp(a * b) + a ** 3 / b

    nb = gradc.value_grad_hessian(f)
    value, (da, db), H = nb(0.5, 2.0)
    assert value == pytest.approx(np.exp(1.0) + 0.0625)
    assert (da, db) == pytest.approx((2 * np.e + 0.375, 0.5 * np.e - 0.03125))
    expected = [[4 * np.e + 1.5, 2 * np.e - 0.1875], [2 * np.e - 0.1875, 0.25 * np.e + 0.03125]]
    np.testing.assert_allclose(H, expected, rtol=1e-13)


def test_hessian_shapes():
    def g(A, s):
        return np.sum(np.tanh(A @ np.array([1.0, -2.0, 0.5]))) * s * s

    A = np.arange(6.0).reshape(2, 3) / 10
    assert gradc.hessian(g, argnums=0, backend="python")(A, 2.0).shape == (2, 3, 2, 3)
    both = gradc.hessian(g, backend="python")(A, 2.0)
    assert both.shape == (7, 7)                       # array arguments flattened, then scalars
    np.testing.assert_allclose(both[:6, :6].reshape(2, 3, 2, 3),
                               gradc.hessian(g, argnums=0, backend="python")(A, 2.0))
    assert gradc.hessian(lambda x: x ** 3, backend="python")(2.0).shape == (1, 1)
    assert gradc.hessian(lambda x, y: x + y, backend="python")(1.0, 2.0).tolist() == [[0, 0], [0, 0]]


def test_hessian_source_computes_shared_subexpressions_and_symmetric_pairs_once():
    def f(x, y, z):
        s = np.sin(x * y)
        e = np.exp(s * z)
        return s * e + np.log(e + z * z) * np.sin(x * y) + x * y * z

    vgh = gradc.value_grad_hessian(f, backend="python")
    src = vgh.source
    assert src.count("np.sin(") == 1 and src.count("np.exp(") == 1
    assert src.count("np.cos(") == 1 and src.count("np.log(") == 1
    body = [line.strip() for line in src.splitlines() if line.startswith("    ")]
    statements = [line.split(" = ", 1) for line in body if " = " in line and "[" not in line]
    rhs = [r for _, r in statements]
    assert len(rhs) == len(set(rhs)), "a right-hand side is computed twice"
    entries = {}  # position -> value; a symmetric pair is one chained store
    for line in body:
        if line.startswith("H["):
            *targets, value = line.split(" = ")
            entries.update((t[2:-1], value) for t in targets)
    assert len(entries) == 9
    for i in range(3):
        for j in range(3):
            assert entries[f"{i}, {j}"] == entries[f"{j}, {i}"]
    # each off-diagonal pair is one statement, shared by H[i, j] and H[j, i]
    defined = [lhs for lhs, _ in statements]
    for name in set(entries.values()):
        assert defined.count(name) <= 1
    H = gradc.hessian(f, backend="python")(0.3, 0.8, -0.4)
    np.testing.assert_allclose(vgh(0.3, 0.8, -0.4)[2], H)


def test_second_order_adjoints_have_readable_names():
    def f(a, b):
        u = a * b
        return u * u

    src = gradc.hessian(f, backend="python").source
    assert "dda_db" in src and "ddu_db" in src
    assert "du_dot" in gradc.hvp(f, backend="python").source


def test_hvp_of_scalar_arguments_and_argnums():
    def f(a, b, c):
        return a * a * b + np.sin(b * c)

    H = gradc.hessian(f, backend="python")(0.4, 0.7, 1.1)
    hvp = gradc.hvp(f, backend="python")
    v = np.array([0.3, -1.0, 2.0])
    assert hvp(0.4, 0.7, 1.1, *v) == pytest.approx(tuple(H @ v), rel=1e-13)
    hvp1 = gradc.hvp(f, argnums=1, backend="python")
    assert hvp1(0.4, 0.7, 1.1, 2.0) == pytest.approx(H[1, 1] * 2.0, rel=1e-13)
    with pytest.raises(gradc.ArgumentError):
        hvp(0.4, 0.7, 1.1, 1.0)
    with pytest.raises(gradc.ArgumentError, match="shape"):
        gradc.hvp(rosen, backend="python")(np.ones(4), np.ones(3))


def test_jvp_is_gradient_dot_tangent():
    def f(x, s):
        return np.sum(np.cos(x) * x) * s

    x, v = np.array([0.2, -0.4, 1.3]), np.array([1.0, 0.5, -2.0])
    value, grad = gradc.value_and_grad(f, backend="python")(x, 3.0)
    jvp = gradc.jvp(f, backend="python")
    out, tangent = jvp(x, 3.0, v, 0.25)
    assert out == pytest.approx(value)
    assert tangent == pytest.approx(grad[0] @ v + grad[1] * 0.25, rel=1e-13)
    _, tangent_x = gradc.jvp(f, argnums=0, backend="python")(x, 3.0, v)
    assert tangent_x == pytest.approx(grad[0] @ v, rel=1e-13)
    assert "def f__jvp(x, s, v_x, v_s):" in jvp.source and "f_dot = " in jvp.source


def _central_jacobian(f, x, h=1e-6):
    x = np.asarray(x, float)
    cols = []
    for i in range(x.size):
        up, down = x.copy(), x.copy()
        up.flat[i] += h
        down.flat[i] -= h
        cols.append((np.asarray(f(up)) - np.asarray(f(down))) / (2 * h))
    return np.stack(cols, axis=-1).reshape(np.shape(f(x)) + x.shape)


def polar(r, phi, z):
    return r * np.cos(phi), r * np.sin(phi), z * np.exp(-r), r * phi * z


def softmax(x):
    e = np.exp(x - 1.0)
    total = np.sum(e)
    return np.array([ei / total for ei in e])


def test_jacobian_of_tuple_results_against_central_differences():
    J = gradc.jacobian(polar, backend="python")
    point = np.array([1.3, 0.7, -0.4])
    got = J(*point)
    assert got.shape == (4, 3)
    expected = _central_jacobian(lambda p: np.array(polar(*p)), point)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-8)
    assert "# jacobian by forward mode" in J.source        # 3 inputs < 4 outputs
    reverse = gradc.jacobian(polar, mode="reverse", backend="python")
    assert "# jacobian by reverse mode" in reverse.source
    np.testing.assert_allclose(reverse(*point), got, rtol=1e-14)


def test_jacobian_of_array_results_forward_and_reverse_agree():
    x = np.array([0.1, -0.5, 0.8, 1.2])
    J = gradc.jacobian(softmax, backend="python")
    got = J(x)
    assert got.shape == (4, 4)
    np.testing.assert_allclose(got, _central_jacobian(softmax, x), rtol=1e-7, atol=1e-9)
    s = softmax(x)
    np.testing.assert_allclose(got, np.diag(s) - np.outer(s, s), rtol=1e-12, atol=1e-15)
    assert "# jacobian by reverse mode" in J.source       # 4 inputs, 4 outputs
    forward = gradc.jacobian(softmax, mode="forward", backend="python")
    np.testing.assert_allclose(forward(x), got, rtol=1e-13, atol=1e-16)

    def lift(x):                                         # 2 inputs -> a (3, 2) array
        return np.array([[x[0], x[1]], [x[0] * x[1], np.sin(x[1])], [1.0, x[0] ** 2]])

    Jl = gradc.jacobian(lift, backend="numba")
    y = np.array([0.3, -1.1])
    assert Jl(y).shape == (3, 2, 2) and "forward mode" in Jl.source
    np.testing.assert_allclose(Jl(y), _central_jacobian(lift, y), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gradc.jacobian(lift, mode="reverse", backend="python")(y), Jl(y),
                               rtol=1e-14)


def test_jvp_of_vector_function_is_jacobian_times_tangent():
    x, v = np.array([0.1, -0.5, 0.8]), np.array([1.0, 2.0, -1.0])
    value, tangent = gradc.jvp(softmax, backend="python")(x, v)
    np.testing.assert_allclose(value, softmax(x), rtol=1e-14)
    np.testing.assert_allclose(tangent, gradc.jacobian(softmax, backend="python")(x) @ v,
                               rtol=1e-12)


def test_scipy_minimize_with_hess_and_hessp():
    f = gradc.value_and_grad(rosen, backend="python")
    x0 = np.full(6, -0.5)
    exact = scipy.optimize.minimize(f, x0, jac=True, hess=gradc.hessian(rosen, backend="python"),
                                    method="trust-exact")
    assert exact.success and np.allclose(exact.x, 1.0, atol=1e-4)
    krylov = scipy.optimize.minimize(f, x0, jac=True, hessp=gradc.hvp(rosen, backend="python"),
                                     method="trust-krylov")
    assert krylov.success and np.allclose(krylov.x, 1.0, atol=1e-4)


def test_newton_cg_on_rosenbrock_20_with_gradc_hessp():
    x0 = np.full(20, -0.5)
    ours = scipy.optimize.minimize(gradc.value_and_grad(rosen, backend="python"), x0, jac=True,
                                   hessp=gradc.hvp(rosen, backend="python"), method="Newton-CG")
    theirs = scipy.optimize.minimize(scipy.optimize.rosen, x0, jac=scipy.optimize.rosen_der,
                                     hessp=scipy.optimize.rosen_hess_prod, method="Newton-CG")
    assert ours.success and theirs.success
    assert np.allclose(ours.x, 1.0, atol=1e-5)
    assert ours.nit <= theirs.nit


def test_bad_jacobian_mode():
    with pytest.raises(gradc.ArgumentError, match="mode"):
        gradc.jacobian(polar, mode="sideways")
