"""The rest of NumPy's real ufuncs (HIPS autograd's list), the operators % and //, and the
zero-derivative step functions: values, gradients and edges.

Every op is checked at array sizes 1, 7, 300 and 10**4 and as scalars, on both backends,
against Richardson-extrapolated central differences of NumPy's own function (and against
JAX where it is installed). To keep numba's compiles few, each check traces *one* function of
all the ops: row k of the argument ``X`` (and ``Y``) feeds op k, so the gradient's row k is op
k's derivative, and one compiled loop serves every length (size 1 lowers to other text, so
it is a second compile). tests/test_ops.py also runs every op of the table at its domain's
edges and compares the backends bitwise there.
"""
import math

import numpy as np
import pytest

import gradc
from gradc.ops import OPS


def _uniform(lo, hi):
    return lambda rng, n: rng.uniform(lo, hi, n)


def _signed(lo, hi):
    """Both signs, magnitudes in [lo, hi) (away from a kink or a pole at 0)."""
    return lambda rng, n: rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)


def _off_steps(lo, hi):
    """Points at least 0.1 away from every integer and half-integer (where step functions,
    rint included, jump), so central differences never straddle a jump."""
    def sample(rng, n):
        whole = rng.integers(lo, hi, n)
        part = rng.uniform(0.1, 0.4, n) + rng.choice([0.0, 0.5], n)
        return whole + part
    return sample


def _quotient_pair(rng, n):
    """``(x, y)`` with ``x / y`` away from integers (where %, fmod and // jump), both signs."""
    y = _signed(0.5, 2.0)(rng, n)
    return _off_steps(-6, 6)(rng, n) * y, y


def _apart_pair(rng, n):
    """``(x, y)`` at least 0.1 apart (fmax and fmin have a kink at x = y)."""
    x = rng.uniform(-3.0, 3.0, n)
    return x, x + _signed(0.1, 2.0)(rng, n)


# op -> (the NumPy function the user calls, arity, sampler of its arguments)
CASES = {
    "log2": (np.log2, 1, _uniform(0.2, 5.0)),
    "log10": (np.log10, 1, _uniform(0.2, 5.0)),
    "exp2": (np.exp2, 1, _uniform(-3.0, 3.0)),
    "cbrt": (np.cbrt, 1, _signed(0.2, 3.0)),
    "deg2rad": (np.deg2rad, 1, _uniform(-400.0, 400.0)),
    "rad2deg": (np.rad2deg, 1, _uniform(-7.0, 7.0)),
    "arcsinh": (np.arcsinh, 1, _uniform(-5.0, 5.0)),
    "arccosh": (np.arccosh, 1, _uniform(1.1, 5.0)),
    "arctanh": (np.arctanh, 1, _uniform(-0.95, 0.95)),
    "sinc": (gradc.math.sinc, 1, _uniform(-3.0, 3.0)),
    "logaddexp": (np.logaddexp, 2, _uniform(-5.0, 5.0)),
    "logaddexp2": (np.logaddexp2, 2, _uniform(-5.0, 5.0)),
    "fmax": (np.fmax, 2, _apart_pair),
    "fmin": (np.fmin, 2, _apart_pair),
    "copysign": (np.copysign, 2, _signed(0.2, 3.0)),
    "mod": (np.mod, 2, _quotient_pair),
    "fmod": (np.fmod, 2, _quotient_pair),
    "floordiv": (np.floor_divide, 2, _quotient_pair),
    "floor": (np.floor, 1, _off_steps(-5, 5)),
    "ceil": (np.ceil, 1, _off_steps(-5, 5)),
    "rint": (np.rint, 1, _off_steps(-5, 5)),
    "trunc": (np.trunc, 1, _off_steps(-5, 5)),
}
NAMES = list(CASES)
ORACLE = {"sinc": np.sinc}  # NumPy's own function where the traced call is gradc's
WEIGHTS = np.linspace(0.5, 1.5, len(NAMES))  # distinct, so a row mix-up shows


def test_every_new_op_is_in_the_table_and_dispatches():
    assert set(NAMES) <= set(OPS)
    for name, (fn, arity, _) in CASES.items():
        assert OPS[name].arity == arity
        if isinstance(fn, np.ufunc):
            assert fn.__name__ in OPS[name].ufuncs
    assert OPS["deg2rad"].ufuncs == ("deg2rad", "radians")
    assert OPS["rad2deg"].ufuncs == ("rad2deg", "degrees")
    assert "fmax" not in OPS["maximum"].ufuncs and "fmin" not in OPS["minimum"].ufuncs


def _arguments(n, seed):
    """X, Y of shape (len(NAMES), n): row k holds op k's arguments (Y's row unused if unary)."""
    rng = np.random.default_rng(seed)
    X, Y = np.ones((len(NAMES), n)), np.ones((len(NAMES), n))
    for k, (fn, arity, sample) in enumerate(CASES.values()):
        if arity == 1:
            X[k] = sample(rng, n)
        elif sample in (_quotient_pair, _apart_pair):
            X[k], Y[k] = sample(rng, n)
        else:
            X[k], Y[k] = sample(rng, n), sample(rng, n)
    return X, Y


def all_ops(X, Y):
    total = 0.0
    for k, (fn, arity, _) in enumerate(CASES.values()):
        value = fn(X[k]) if arity == 1 else fn(X[k], Y[k])
        total = total + WEIGHTS[k] * np.sum(value)
    return total


def _richardson(f, args, i):
    """d f / d args[i], elementwise (f is elementwise): central differences at h and h/2,
    extrapolated (error O(h**4))."""
    x = args[i]
    h = 1e-3 * np.maximum(1.0, np.abs(x))

    def central(step):
        up, down = list(args), list(args)
        up[i], down[i] = x + step, x - step
        return (f(*up) - f(*down)) / (2 * step)

    return (4.0 * central(h / 2) - central(h)) / 3.0


def _expected(X, Y):
    """The gradient of all_ops, row by row, from NumPy's functions alone."""
    dX, dY = np.zeros_like(X), np.zeros_like(Y)
    for k, (name, (fn, arity, _)) in enumerate(CASES.items()):
        f = ORACLE.get(name, fn)
        args = (X[k],) if arity == 1 else (X[k], Y[k])
        dX[k] = WEIGHTS[k] * _richardson(f, args, 0)
        if arity == 2:
            dY[k] = WEIGHTS[k] * _richardson(f, args, 1)
    return dX, dY


def _compare_rows(got, want, what):
    bad = []
    for k, name in enumerate(NAMES):
        if not np.allclose(got[k], want[k], rtol=1e-7, atol=1e-9):
            worst = int(np.argmax(np.abs(got[k] - want[k])))
            bad.append(f"{name} d/d{what}[{worst}]: {got[k][worst]!r} vs {want[k][worst]!r}")
    assert not bad, bad


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_gradients_at_every_size_match_central_differences(backend):
    # arrays="loops": one source (one numba compile) for every length >= 2 of this rank
    f = gradc.value_and_grad(all_ops, backend=backend, arrays="loops")
    for n in (1, 7, 300, 10**4):
        X, Y = _arguments(n, seed=n)
        value, (dX, dY) = f(X, Y)
        with np.errstate(all="ignore"):
            assert value == pytest.approx(all_ops(X, Y), rel=1e-12)
        want_x, want_y = _expected(X, Y)
        _compare_rows(dX, want_x, "x")
        _compare_rows(dY, want_y, "y")
    if backend == "numba":
        assert f.cache_info()["path_kind"] == "loops"


def _scalar_ops(*args):
    total, k = 0.0, 0
    for (fn, arity, _), w in zip(CASES.values(), WEIGHTS):
        total = total + w * fn(*args[k:k + arity])
        k += arity
    return total


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_scalar_gradients_match_central_differences(backend):
    f = gradc.value_and_grad(_scalar_ops, backend=backend)
    for seed in range(3):
        X, Y = _arguments(1, seed=100 + seed)
        args = []
        for k, (_, arity, _) in enumerate(CASES.values()):
            args += [float(X[k, 0]), float(Y[k, 0])][:arity]
        value, grad = f(*args)
        want_x, want_y = _expected(X, Y)
        got_x, got_y, k = np.zeros_like(X), np.zeros_like(Y), 0
        for row, (_, arity, _) in enumerate(CASES.values()):
            got_x[row, 0] = grad[k]
            if arity == 2:
                got_y[row, 0] = grad[k + 1]
            k += arity
        _compare_rows(got_x, want_x, "x")
        _compare_rows(got_y, want_y, "y")


def test_gradients_match_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    jfns = {"floordiv": jnp.floor_divide, "mod": jnp.remainder}
    f = gradc.value_and_grad(all_ops, backend="python", arrays="loops")
    X, Y = _arguments(50, seed=7)
    _, (dX, dY) = f(X, Y)
    for k, (name, (fn, arity, _)) in enumerate(CASES.items()):
        jf = jfns.get(name) or getattr(jnp, fn.__name__)
        argnums = (0,) if arity == 1 else (0, 1)
        g = jax.vmap(jax.grad(lambda *a: WEIGHTS[k] * jf(*a), argnums=argnums))
        got = g(*(X[k], Y[k])[:arity])
        np.testing.assert_allclose(dX[k], got[0], rtol=1e-12, atol=1e-14, err_msg=name)
        if arity == 2:
            np.testing.assert_allclose(dY[k], got[1], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_reverse_agree_in_a_random_direction(name):
    # <grad f(x), v> from reverse mode equals the forward-mode derivative along v
    fn, arity, sample = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    X, Y = _arguments(7, seed=3)
    k = NAMES.index(name)
    args = (X[k], Y[k])[:arity]
    vs = tuple(rng.normal(size=7) for _ in args)
    f = lambda *a: np.sum(fn(*a) * np.cos(a[0]))  # noqa: E731  (a product: both rules meet
    grad = gradc.grad(f, backend="python")(*args)
    grad = (grad,) if arity == 1 else grad
    _, forward = gradc.jvp(f, backend="python")(*args, *vs)
    assert forward == pytest.approx(sum(np.dot(g, v) for g, v in zip(grad, vs)), rel=1e-12)


# --- edges: the true derivative wherever it is finite, NaN only where it is undefined -------
inf, nan = np.inf, np.nan
EDGES = [
    # (op, args, value, gradient)
    ("log2", (0.0,), -inf, (inf,)), ("log2", (inf,), inf, (0.0,)),
    ("log10", (0.0,), -inf, (inf,)), ("exp2", (-inf,), 0.0, (0.0,)),
    ("cbrt", (0.0,), 0.0, (inf,)), ("cbrt", (-0.0,), -0.0, (inf,)),
    ("cbrt", (inf,), inf, (0.0,)), ("cbrt", (-8.0,), -2.0, (1.0 / 12.0,)),
    ("arcsinh", (inf,), inf, (0.0,)), ("arcsinh", (1e200,), np.arcsinh(1e200), (1e-200,)),
    ("arccosh", (1.0,), 0.0, (inf,)), ("arccosh", (inf,), inf, (0.0,)),
    ("arctanh", (1.0,), inf, (inf,)), ("arctanh", (-1.0,), -inf, (inf,)),
    ("sinc", (0.0,), 1.0, (0.0,)), ("sinc", (-0.0,), 1.0, (0.0,)),
    ("sinc", (1.0,), np.sinc(1.0), (-1.0,)), ("sinc", (0.5,), np.sinc(0.5), (-4.0 / np.pi,)),
    ("logaddexp", (inf, inf), inf, (0.5, 0.5)), ("logaddexp", (-inf, -inf), -inf, (0.5, 0.5)),
    ("logaddexp", (-inf, 1.0), 1.0, (0.0, 1.0)), ("logaddexp", (inf, -inf), inf, (1.0, 0.0)),
    ("logaddexp", (2.0, 2.0), 2.0 + np.log(2.0), (0.5, 0.5)),
    ("logaddexp", (1000.0, -1000.0), 1000.0, (1.0, 0.0)),
    ("logaddexp2", (inf, inf), inf, (0.5, 0.5)), ("logaddexp2", (3.0, 3.0), 4.0, (0.5, 0.5)),
    # fmax/fmin ignore a NaN; a tie sends the gradient to the first argument (as maximum)
    ("fmax", (1.0, nan), 1.0, (1.0, 0.0)), ("fmax", (nan, 1.0), 1.0, (0.0, 1.0)),
    ("fmin", (1.0, nan), 1.0, (1.0, 0.0)), ("fmin", (nan, 1.0), 1.0, (0.0, 1.0)),
    ("fmax", (2.0, 2.0), 2.0, (1.0, 0.0)), ("fmin", (2.0, 2.0), 2.0, (1.0, 0.0)),
    ("fmax", (-0.0, 0.0), 0.0, (1.0, 0.0)), ("fmax", (-inf, nan), -inf, (1.0, 0.0)),
    ("copysign", (2.0, -1.0), -2.0, (-1.0, 0.0)), ("copysign", (-2.0, -0.0), -2.0, (1.0, 0.0)),
    ("copysign", (0.0, -1.0), -0.0, (0.0, 0.0)), ("copysign", (3.0, nan), 3.0, (1.0, 0.0)),
    # x % y = x - y * (x // y): d/dy is -(x // y), NumPy's quotient (not floor(x / y) = 10)
    ("mod", (1.0, 0.1), np.mod(1.0, 0.1), (1.0, -9.0)), ("mod", (-7.0, 2.0), 1.0, (1.0, 4.0)),
    ("mod", (7.0, -2.0), -1.0, (1.0, 4.0)), ("mod", (3.0, inf), 3.0, (1.0, -0.0)),
    ("mod", (-3.0, inf), inf, (1.0, 1.0)),
    ("fmod", (1.0, 0.1), np.fmod(1.0, 0.1), (1.0, -9.0)), ("fmod", (-7.0, 2.0), -1.0, (1.0, 3.0)),
    ("fmod", (3.0, inf), 3.0, (1.0, -0.0)), ("fmod", (1e300, 1e-300), np.fmod(1e300, 1e-300),
                                             (1.0, -inf)),
    ("floordiv", (7.0, 2.0), 3.0, (0.0, 0.0)), ("floordiv", (1.0, 0.1), 9.0, (0.0, 0.0)),
    # step functions: zero derivative, also at the integers and half-integers they jump at
    ("floor", (2.0,), 2.0, (0.0,)), ("floor", (-0.0,), -0.0, (0.0,)), ("floor", (inf,), inf, (0.0,)),
    ("ceil", (-0.5,), -0.0, (0.0,)), ("ceil", (3.0,), 3.0, (0.0,)),
    ("rint", (2.5,), 2.0, (0.0,)), ("rint", (-0.5,), -0.0, (0.0,)), ("rint", (3.5,), 4.0, (0.0,)),
    ("trunc", (-2.7,), -2.0, (0.0,)), ("trunc", (-0.3,), -0.0, (0.0,)),
]


def _same(a, b):
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


@pytest.mark.parametrize("name, args, value, grad", EDGES,
                         ids=[f"{n}{a}" for n, a, _, _ in EDGES])
def test_value_and_derivative_at_the_edges(name, args, value, grad):
    fn = CASES[name][0]
    got_value, got_grad = gradc.value_and_grad(lambda *xs: fn(*xs), backend="python")(*args)
    got_grad = got_grad if len(args) > 1 else (got_grad,)
    assert _same(got_value, value), (got_value, value)
    assert got_grad == pytest.approx(grad, rel=1e-15, abs=0.0) or all(
        _same(g, w) for g, w in zip(got_grad, grad)), (got_grad, grad)
    assert not any(np.isnan(g) for g in got_grad)  # never NaN where the derivative exists


def test_sinc_derivative_is_exact_next_to_zero():
    # the quotient (cos(pi x) - sinc x) / x loses digits here; the series does not
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    d = gradc.grad(gradc.math.sinc, backend="python")
    for x in [1e-12, -3e-8, 1e-4, 0.03, -0.0999, 0.1, 0.1001, 0.7, 2.5]:
        t = mpmath.pi * mpmath.mpf(x)
        exact = float((mpmath.cos(t) - mpmath.sin(t) / t) / mpmath.mpf(x))
        # the quotient has a relative error of ~1e-16 / (3.3 x**2): 1 at 1e-8, 3e-9 at 1e-4
        assert d(x) == pytest.approx(exact, rel=1e-13, abs=1e-300), x


def test_second_derivatives_where_the_first_ones_needed_care():
    h = gradc.hessian(lambda x, y: np.logaddexp(x, y), backend="python")(2.0, 2.0)  # a tie: p(1-p) = 1/4
    np.testing.assert_allclose(h, [[0.25, -0.25], [-0.25, 0.25]], rtol=1e-15)
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    d2 = gradc.hessian(gradc.math.sinc, backend="python")
    for x in [0.0, 1e-6, 0.05, 0.3]:
        exact = float(mpmath.diff(lambda u: mpmath.sin(mpmath.pi * u) / (mpmath.pi * u)
                                  if u else mpmath.mpf(1), mpmath.mpf(x), 2))
        assert d2(x)[0, 0] == pytest.approx(exact, rel=1e-12), x


# --- operators and aliases ----------------------------------------------------------------------
@pytest.mark.parametrize("arrays", ["unroll", "numpy"])
def test_mod_and_floordiv_operators_on_traced_values(arrays):
    def f(x, y):
        q, r = divmod(x, y)  # traced whole in both modes now (unroll runs after)
        return np.sum(x % y + 3.0 % y + x % 2.0 + (x // y) * y + 7.0 // y + q + r)

    x, y = np.array([5.5, -5.5, 1.0, 0.3]), np.array([2.0, 2.0, 0.1, -0.7])
    value, (dx, dy) = gradc.value_and_grad(f, backend="python", arrays=arrays)(x, y)
    q = np.floor_divide(x, y)
    assert value == pytest.approx(np.sum(2 * np.mod(x, y) + np.mod(3.0, y) + np.mod(x, 2.0)
                                         + q * y + np.floor_divide(7.0, y) + q))
    np.testing.assert_allclose(dx, 3.0)  # x % y twice (once as divmod's), x % 2: one each
    np.testing.assert_allclose(dy, -2 * q - np.floor_divide(3.0, y) + q)


def test_divmod_of_unrolled_arrays():
    f = gradc.value_and_grad(lambda x: np.sum(divmod(x, 2.0)[1]), backend="python", arrays="unroll")
    assert np.array_equal(f(np.array([5.5, -1.0]))[1], [1.0, 1.0])


def test_mod_of_scalars_compiles_with_numba():
    f = gradc.value_and_grad(lambda x, y: x % y + x // y + divmod(y, x)[1], backend="numba")
    value, grad = f(7.5, -2.0)
    assert value == pytest.approx(7.5 % -2.0 + 7.5 // -2.0 + (-2.0) % 7.5)
    # d/dx: 1 from x % y, -(y // x) = 1 from y % x; d/dy: -(x // y) = 4 and 1
    assert grad == pytest.approx((2.0, 5.0))


def test_aliases_dispatch_to_the_same_op():
    for fn, twin in [(np.radians, np.deg2rad), (np.degrees, np.rad2deg),
                     (np.remainder, np.mod), (gradc.math.remainder, np.mod),
                     (gradc.math.fix, np.trunc), (gradc.math.floor_divide, np.floor_divide)]:
        arity = 2 if twin in (np.mod, np.floor_divide) else 1
        args = (2.7, -0.8)[:arity]
        a = gradc.value_and_grad(lambda *xs: fn(*xs), backend="python")
        b = gradc.value_and_grad(lambda *xs: twin(*xs), backend="python")
        assert a(*args) == b(*args)


def test_gradc_math_round_matches_numpy_round_bitwise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300) * 10.0 ** rng.integers(-10, 10, 300)
    for decimals in (-12, -3, -1, 0, 1, 2, 7, 15, 22):
        got = np.array([gradc.math.round(v, decimals) for v in x])
        assert np.array_equal(got, np.round(x, decimals)), decimals
    f = gradc.value_and_grad(lambda x: gradc.math.round(x, 2) * x, backend="python")
    assert f(1.23456) == (pytest.approx(1.23 * 1.23456), pytest.approx(1.23))  # d round = 0
    with pytest.raises(gradc.UnsupportedFunctionError, match="decimals"):
        gradc.value_and_grad(lambda x: gradc.math.round(x, x), backend="python")(1.5)


# np.round, np.around, np.fix and np.sinc are functions, not ufuncs: they reach gradc through
# __array_function__ (gradc.numpy_api.RULES routes them to the ops).
@pytest.mark.parametrize("fn, twin", [(np.round, gradc.math.round), (np.around, gradc.math.round),
                                      (np.fix, np.trunc), (np.sinc, gradc.math.sinc)],
                         ids=["round", "around", "fix", "sinc"])
def test_numpy_functions_route_to_the_ops(fn, twin):
    x = np.array([0.5, 1.5, -2.5, 0.25])
    a = gradc.value_and_grad(lambda x: np.sum(fn(x) * x), backend="python")(x)
    b = gradc.value_and_grad(lambda x: np.sum(twin(x) * x), backend="python")(x)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


def test_fmax_is_no_longer_maximum_on_nan():
    # the finding: np.fmax was traced as maximum, which propagates NaN
    f = gradc.value_and_grad(lambda x, y: np.fmax(x, y) + np.fmin(x, y), backend="python")
    assert f(1.0, nan) == (2.0, (2.0, 0.0))
    value, grad = gradc.value_and_grad(lambda x, y: np.maximum(x, y), backend="python")(1.0, nan)
    assert np.isnan(value)
