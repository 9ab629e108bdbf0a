"""User-defined derivative rules (gradc/custom.py): gradc.custom_vjp and gradc.custom_jvp.

The functions here are chosen so that differentiating their own code gives a *different*
answer than their rule (NaN, or zero): a test that passes only passes because the rule is used.
"""
import functools

import mpmath
import numpy as np
import pytest

import gradc
from gradc.custom import strip
from gradc.trace import trace


# --- a numerically unstable function: log(1 + exp(x)), whose own derivative is NaN for x > 709
def _softplus_vjp():
    @gradc.custom_vjp
    def softplus(x):
        return np.log(1.0 + np.exp(x))

    def fwd(x):
        return softplus(x), x

    def bwd(x, g):
        return (g / (1.0 + np.exp(-x)),)

    softplus.defvjp(fwd, bwd)
    return softplus


def _softplus_jvp():
    @gradc.custom_jvp
    def softplus(x):
        return np.log(1.0 + np.exp(x))

    @softplus.defjvp
    def softplus_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), t / (1.0 + np.exp(-x))

    return softplus


SOFTPLUS = {"custom_vjp": _softplus_vjp(), "custom_jvp": _softplus_jvp()}


def _naive(x):
    return np.log(1.0 + np.exp(x))


def _sigmoid(x):  # d softplus / dx, exactly (mpmath, 50 digits)
    with mpmath.workdps(50):
        return float(1 / (1 + mpmath.exp(-mpmath.mpf(x))))


def _dsigmoid(x):
    with mpmath.workdps(50):
        e = mpmath.exp(-mpmath.mpf(x))
        return float(e / (1 + e) ** 2)


POINTS = [-40.0, -3.0, 0.0, 0.5, 30.0, 710.0, 800.0]


@pytest.mark.parametrize("kind", sorted(SOFTPLUS))
def test_stable_rule_gives_the_exact_derivative_where_the_code_overflows(kind):
    f = SOFTPLUS[kind]
    grad = gradc.grad(f, backend="python")
    assert np.isnan(gradc.grad(_naive, backend="python")(800.0))  # the code's own derivative
    for x in POINTS:
        assert grad(x) == pytest.approx(_sigmoid(x), rel=1e-15, abs=0)
    hess = gradc.hessian(f, backend="python")
    for x in (-3.0, 0.5, 30.0, 800.0):
        assert hess(x)[0, 0] == pytest.approx(_dsigmoid(x), rel=1e-13, abs=1e-300)


# --- an implicit function: the root x(a) of x**3 + x - a, found by bisection (flat in a) -------
def _root_by_bisection():
    @gradc.custom_vjp
    def root(a):
        lo, hi = 0.0 * a - 10.0, 0.0 * a + 10.0
        for _ in range(64):  # its own derivative is zero: every step only chooses a branch
            mid = 0.5 * (lo + hi)
            above = mid ** 3 + mid - a > 0.0
            lo, hi = gradc.where(above, lo, mid), gradc.where(above, mid, hi)
        return 0.5 * (lo + hi)

    def fwd(a):
        x = root(a)
        return x, x

    def bwd(x, g):  # d/da of x**3 + x = a: (3 x**2 + 1) dx = da
        return (g / (3.0 * x ** 2 + 1.0),)

    root.defvjp(fwd, bwd)
    return root


ROOT = _root_by_bisection()


def _newton(a):
    """The root in plain Python floats."""
    x = 0.0
    for _ in range(100):
        x = x - (x ** 3 + x - a) / (3.0 * x ** 2 + 1.0)
    return x


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_implicit_function_derivative_from_the_rule(backend):
    grad = gradc.grad(ROOT, backend=backend)
    for a in (0.5, 2.0, 9.0):
        x = _newton(a)
        assert grad(a) == pytest.approx(1.0 / (3.0 * x * x + 1.0), rel=1e-14)
    assert gradc.grad(ROOT.fun, backend="python")(2.0) == 0.0  # without the rule
    if backend == "python":  # second order: d2x/da2 = -6 x (dx/da)**3, through the rule again
        x = _newton(2.0)
        dx = 1.0 / (3.0 * x * x + 1.0)
        assert gradc.hessian(ROOT, backend=backend)(2.0)[0, 0] == pytest.approx(
            -6.0 * x * dx ** 3, rel=1e-13)


# --- every transformation, arrays traced whole -------------------------------------------
def _loss(f):
    def loss(x):
        return np.sum(f(x) * np.linspace(1.0, 2.0, x.shape[0]))
    return loss


def _point(n):
    return np.linspace(-30.0, 800.0, n)


def _grad_closed_form(x):
    return np.array([_sigmoid(v) for v in x]) * np.linspace(1.0, 2.0, x.shape[0])


def _hess_diagonal(x):
    return np.array([_dsigmoid(v) for v in x]) * np.linspace(1.0, 2.0, x.shape[0])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # exp(800): the value
@pytest.mark.parametrize("n", [7, 300])
@pytest.mark.parametrize("kind", sorted(SOFTPLUS))
def test_rule_inside_grad_hvp_and_jvp_on_arrays_traced_whole(kind, n):
    f, x = SOFTPLUS[kind], _point(n)
    v = np.cos(np.arange(n))
    loss = _loss(f)
    np.testing.assert_allclose(gradc.grad(loss, backend="python")(x), _grad_closed_form(x),
                               rtol=1e-14)
    value, g = gradc.value_and_grad(loss, backend="python")(x)
    np.testing.assert_allclose(g, _grad_closed_form(x), rtol=1e-14)
    assert value == np.inf  # the value is the function's own code (it overflows at 800)
    np.testing.assert_allclose(gradc.hvp(loss, backend="python")(x, v), _hess_diagonal(x) * v,
                               rtol=1e-12, atol=1e-300)
    _, tangent = gradc.jvp(loss, backend="python")(x, v)
    assert tangent == pytest.approx(float(np.dot(_grad_closed_form(x), v)), rel=1e-12)


@pytest.mark.parametrize("kind", sorted(SOFTPLUS))
def test_rule_inside_hessian_jacobian_and_vmap(kind):
    f, x = SOFTPLUS[kind], _point(7)
    loss = _loss(f)
    np.testing.assert_allclose(gradc.hessian(loss, backend="python")(x),
                               np.diag(_hess_diagonal(x)), rtol=1e-12, atol=1e-300)
    expected = np.diag([_sigmoid(v) for v in x])
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(gradc.jacobian(f, backend="python", mode=mode)(x), expected,
                                   rtol=1e-14)
    batched = gradc.vmap(gradc.grad(f, backend="python"))(x)
    np.testing.assert_allclose(batched, np.diag(expected), rtol=1e-14)


def test_rule_compiled_by_numba_unrolled_and_as_loops():
    f = SOFTPLUS["custom_vjp"]
    loss = _loss(f)
    small, large = _point(7), _point(300)
    grad = gradc.grad(loss)
    np.testing.assert_allclose(grad(small), _grad_closed_form(small), rtol=1e-14)
    np.testing.assert_allclose(grad(large), _grad_closed_form(large), rtol=1e-14)
    large_spec = grad.cache_info()["specialisations"][-1]
    assert large_spec["signature"] == "(f8[300])" and large_spec["path_kind"] == "loops"
    hvp = gradc.hvp(loss)
    v = np.sin(np.arange(300.0))
    np.testing.assert_allclose(hvp(large, v), _hess_diagonal(large) * v, rtol=1e-12, atol=1e-300)


# --- the rules are traced once per signature, never run per call -------------------------------
def test_user_rules_run_at_trace_time_only():
    calls = {"fun": 0, "fwd": 0, "bwd": 0}

    @gradc.custom_vjp
    def square(x):
        calls["fun"] += 1
        return x * x

    def fwd(x):
        calls["fwd"] += 1
        return square(x), x

    def bwd(x, g):
        calls["bwd"] += 1
        return (2.0 * g * x,)

    square.defvjp(fwd, bwd)
    grad = gradc.grad(lambda x: square(x) + x, backend="python")
    assert [grad(float(k)) for k in range(5)] == [2.0 * k + 1.0 for k in range(5)]
    assert calls["fwd"] == calls["bwd"] == 1
    seen = dict(calls)
    hvp = gradc.hvp(lambda x: square(x), backend="python")  # a new transformation, same signature
    assert [hvp(float(k), 1.0) for k in range(3)] == [2.0, 2.0, 2.0]
    assert (calls["fwd"], calls["bwd"]) == (seen["fwd"], seen["bwd"])  # the rule graph is kept
    assert square(3.0) == 9.0  # on plain numbers it is the function


# --- the directions the user did not write: transposed by gradc's reverse mode ---------------------
def test_custom_jvp_in_reverse_mode_and_custom_vjp_in_forward_mode():
    @gradc.custom_jvp
    def weighted(w, x):  # sum(w * x**2)
        return np.sum(w * x ** 2)

    @weighted.defjvp
    def weighted_jvp(primals, tangents):
        (w, x), (tw, tx) = primals, tangents
        return weighted(w, x), np.sum(tw * x ** 2) + np.sum(2.0 * w * x * tx)

    rng = np.random.default_rng(0)
    w, x = rng.normal(size=5), rng.normal(size=5)
    gw, gx = gradc.grad(lambda w, x: weighted(w, x) ** 2, argnums=(0, 1), backend="python")(w, x)
    value = np.sum(w * x ** 2)
    np.testing.assert_allclose(gw, 2 * value * x ** 2, rtol=1e-14)
    np.testing.assert_allclose(gx, 4 * value * w * x, rtol=1e-14)

    @gradc.custom_vjp
    def scale(x, s):
        return x * s

    scale.defvjp(lambda x, s: (scale(x, s), (x, s)),
                 lambda res, g: (g * res[1], np.sum(g * res[0])))
    jac = gradc.jacobian(lambda x, s: scale(x, s), argnums=(0, 1), backend="python",
                         mode="forward")(x, 3.0)
    np.testing.assert_allclose(jac[:, :5], 3.0 * np.eye(5))  # d/dx, then d/ds
    np.testing.assert_allclose(jac[:, 5], x)


def test_nondiff_argnums_are_passed_to_the_rules_first():
    @functools.partial(gradc.custom_vjp, nondiff_argnums=(1,))
    def power(x, k):
        return x ** k

    power.defvjp(lambda x, k: (power(x, k), x), lambda k, x, g: (g * k * x ** (k - 1),))
    assert gradc.grad(lambda x: power(x, 3) + power(x, 2), backend="python")(2.0) == 16.0

    @functools.partial(gradc.custom_jvp, nondiff_argnums=(0,))
    def shifted(c, x):
        return np.exp(x) + c

    shifted.defjvp(lambda c, p, t: (shifted(c, p[0]), np.exp(p[0]) * t[0]))
    assert gradc.grad(lambda x: shifted(5.0, x), backend="python")(0.0) == 1.0


def test_rule_inside_a_scan_body():
    @gradc.custom_vjp
    def sq(x):
        return x * x

    sq.defvjp(lambda x: (sq(x), x), lambda x, g: (2.0 * g * x,))
    grad = gradc.grad(lambda xs: gradc.scan(lambda c, x: c + sq(x), 0.0, xs), backend="python")
    np.testing.assert_allclose(grad(np.arange(4.0)), 2.0 * np.arange(4.0))


def test_rule_on_unrolled_arrays_when_the_program_cannot_be_unrolled_whole():
    # np.cumsum has no scalar form in gradc/unroll.py: hessian traces element by element
    @gradc.custom_vjp
    def double(x):
        return x * 2.0 + 0.0 * np.exp(x)  # its own derivative of exp(800) would be NaN

    double.defvjp(lambda x: (double(x), None), lambda res, g: (2.0 * g,))
    hess = gradc.hessian(lambda x: np.sum(np.cumsum(double(x)) ** 2), backend="python")
    expected = 8.0 * (3 - np.maximum.outer(np.arange(3), np.arange(3)))
    np.testing.assert_allclose(hess(np.array([0.0, 1.0, 800.0])), expected)


def test_unrolled_elementwise_rule_costs_one_chain_per_element():
    """An array rule unrolled (hessian) is replayed once per element with the other elements'
    cotangents symbolic zeros: not n copies of the whole rule."""
    f = SOFTPLUS["custom_vjp"]
    sizes = {}
    for n in (4, 32):
        graph = gradc.hessian(_loss(f), backend="python").lower(((n,),))[0]
        sizes[n] = len(graph.nodes)
    assert sizes[32] < 12 * sizes[4]  # linear in n: 8x (n copies would be 64x)


def test_strip_leaves_the_value_alone():
    f = SOFTPLUS["custom_vjp"]
    graph = trace(lambda x: f(x) * 2.0, ["x"], "g")
    assert any(n.op == "custom" for n in graph.nodes)
    stripped = strip(graph)
    assert not any(n.op == "custom" for n in stripped.nodes)
    assert {n.op for n in stripped.nodes} == {"input", "const", "exp", "add", "log", "mul"}


# --- mistakes are gradc errors naming the user's line ------------------------------------------
def _error(fn, *args):
    with pytest.raises(gradc.GradcError) as info:
        fn(*args)
    return str(info.value)


def test_missing_and_malformed_rules_are_refused():
    @gradc.custom_vjp
    def nodef(x):
        return 2.0 * x

    assert "nodef.defvjp(fwd, bwd)" in _error(gradc.grad(nodef, backend="python"), 1.0)

    @gradc.custom_vjp
    def notpair(x):
        return x

    notpair.defvjp(lambda x: x, lambda res, g: (g,))
    assert "pair (value, residuals)" in _error(gradc.grad(notpair, backend="python"), 1.0)

    @gradc.custom_vjp
    def badshape(x):
        return np.sum(x)

    badshape.defvjp(lambda x: (badshape(x), x), lambda x, g: (np.ones(3) * g,))
    message = _error(gradc.grad(badshape, backend="python"), np.ones(4))
    assert "shape (3,)" in message and "(4,)" in message

    @gradc.custom_vjp
    def pair(x):
        return x, x

    pair.defvjp(lambda x: ((x, x), None), lambda res, g: (g,))
    assert "one float or one array" in _error(gradc.grad(lambda x: pair(x)[0],
                                                         backend="python"), 1.0)


def test_rules_that_are_not_linear_are_refused():
    @gradc.custom_vjp
    def twice(x):
        return 2.0 * x

    twice.defvjp(lambda x: (twice(x), x), lambda x, g: (g * g,))  # right at g = 1.0 only
    message = _error(gradc.grad(twice, backend="python"), 1.0)
    assert "not linear in the cotangent" in message and __file__ in message

    @gradc.custom_jvp
    def same(x):
        return x

    same.defjvp(lambda p, t: (p[0], t[0] ** 2))
    assert "not linear in the tangents" in _error(gradc.jvp(same, backend="python"), 1.0, 2.0)


def test_closure_over_a_traced_value_is_refused():
    def outer(x, y):
        @gradc.custom_vjp
        def times_y(a):
            return a * y  # y is traced, and the rule gives no derivative for it

        times_y.defvjp(lambda a: (times_y(a), a), lambda a, g: (g,))
        return times_y(x)

    message = _error(gradc.grad(outer, argnums=(0, 1), backend="python"), 1.0, 2.0)
    assert "not one of its arguments (y)" in message and __file__ in message


def test_unhashable_nondiff_argument_is_refused():
    @functools.partial(gradc.custom_vjp, nondiff_argnums=(1,))
    def pick(x, table):
        return x * table[0]

    pick.defvjp(lambda x, t: (pick(x, t), x), lambda t, x, g: (g * t[0],))
    assert "hashable" in _error(gradc.grad(lambda x: pick(x, [2.0]), backend="python"), 1.0)


def test_forward_mode_never_differentiates_the_functions_own_code():
    """A rule's function may use what forward mode refuses (gradc.scan): its jvp is the rule."""
    @gradc.custom_jvp
    def cube_sum(x):
        return gradc.scan(lambda c, xi: c + xi * xi * xi, 0.0, x)

    @cube_sum.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return cube_sum(x), np.sum(3.0 * x * x * t)

    x, v = np.linspace(0.1, 0.9, 7), np.linspace(1.0, -1.0, 7)
    hv = gradc.hvp(lambda x: cube_sum(x), backend="python")(x, v)
    np.testing.assert_allclose(hv, 6.0 * x * v, rtol=1e-13)
