"""The NumPy surface of tests/test_numpy_surface.py under the numba backend.

That file checks every case of its tables (VECTOR_CASES at sizes 1, 7 and 300, MATRIX_CASES on a
4 x 4 matrix) with backend="python". Here the same cases run with backend="numba", on the paths
arrays="auto" takes for them, and their values and gradients are compared with backend="python"
(the NumPy-level code of the same program, itself checked against NumPy and central
differences there):

- fused loops (gradc/lower.py): every case the loop lowering has a rule for, at every size;
- unrolled scalar code (gradc/unroll.py): every case auto unrolls when it runs alone (the small
  sizes), run together with arrays="unroll" (two compiles: the cases gradc/native.py compiles,
  and the few it does not);
- NumPy-level code: the cases whose ops have no loop rule (NOT_LOWERED), which auto runs as
  NumPy code; they must give the python backend's answer (and compile nothing).

numba compiles cost 0.3-3 s each, so cases are grouped: one function per (path, rank, size) takes
one argument per case (and its loss weights as arguments, see _weights_for) and returns the
weighted sum of every case's loss (distinct weights), with each case's own loss as aux. Each
case's value (its aux entry) and gradient (the gradient with respect to its own argument) is
therefore checked on its own, and a failure names the case. The loop groups do not share one
compiled function across lengths: the cases hold constants of each length (``np.arange(x.size)``),
which the loop source writes as literals, so each size is its own compile.

Tolerance: numba's elementwise math is LLVM's and the C libm's, NumPy's partly its own SIMD
kernels (exp, log, sin... within a few ulp of each other); sums differ in order (NumPy's pairwise
sums against a loop's running accumulator, BLAS's blocked products against loops) and LAPACK
calls in blocking. Measured: at most 1.3e-15 relative (the "methods" loss at n = 300; gradients
7e-16), so rtol = 1e-10, relative to each result's largest magnitude, is far from noise and far
below any wrong derivative (a broken sort path is off by 0.94).
"""
import numpy as np
import pytest

import gradc
from gradc import api, native
from gradc.lower import LoweringError, lower_module

import test_numpy_surface as surface

pytestmark = pytest.mark.filterwarnings("error::gradc.CompileWarning")  # a fallback fails

SIZES = surface.SIZES
RTOL = 1e-10


def _inputs(shape, count, seed):
    """One argument per case, as test_numpy_surface draws them (uniform in [0.2, 1), plus the
    identity for the matrices)."""
    rng = np.random.default_rng(seed)
    extra = np.eye(shape[0]) if len(shape) == 2 else 0.0
    return [rng.uniform(0.2, 1.0, shape) + extra for _ in range(count)]


def _parts(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def _weights_for(cases, xs):
    """The weights test_numpy_surface._loss gives each output of each case, computed here and
    passed as arguments: as constants they would be array literals of each length in the loop
    source, which then serves that length only and costs numba seconds to compile."""
    return [tuple(surface._weights(np.shape(p), k) if np.size(p) else 1.0  # nothing to weigh
                  for k, p in enumerate(_parts(fn(x))))
            for (_, fn), x in zip(cases, xs)]


def _grouped(cases):
    """f(*xs, *ws) = (sum_c (1 + c / 8) loss_c, (loss_c)_c) with loss_c test_numpy_surface's
    _loss of case c at its own argument xs[c] (weights ws[c]): one program for every case."""
    fns = [fn for _, fn in cases]

    def group(*args):
        xs, ws = args[:len(fns)], args[len(fns):]
        losses = []
        for fn, x, weights in zip(fns, xs, ws):
            loss = 0.0
            for p, w in zip(_parts(fn(x)), weights):
                loss = loss + np.sum(p * w)
            losses.append(loss)
        total = 0.0
        for k, loss in enumerate(losses):
            total = total + (1.0 + 0.125 * k) * loss
        return total, tuple(losses)

    return group


def _alone_runs(fn, shape, arrays="auto"):
    """The path ``arrays`` takes for ``fn``'s loss alone at ``shape``: "unroll", "loops" or
    "numpy" (no loop rule), read from the lowering without compiling anything."""
    f = gradc.value_and_grad(lambda v: surface._loss(fn, v), arrays=arrays)
    graph = f.lower((shape,))[0]
    if not graph.whole_params:
        return "unroll"
    try:
        lower_module(graph, "f", "value_and_grad", graph.origin)
    except LoweringError:
        return "numpy"
    return "loops"


def _cases(table, shape, runs, arrays="auto"):
    return [(name, table[name]) for name in sorted(table)
            if _alone_runs(table[name], shape, arrays) == runs]


def _compare(cases, shape, arrays, seed=0):
    """Run the group of ``cases`` with numba (``arrays``) and with python; each case's loss and
    gradient must agree to RTOL. Returns the numba function."""
    group = _grouped(cases)
    xs = _inputs(shape, len(cases), seed)
    args = xs + _weights_for(cases, xs)
    argnums = tuple(range(len(cases)))
    numba = gradc.value_and_grad(group, argnums=argnums, has_aux=True, arrays=arrays)
    oracle = gradc.value_and_grad(group, argnums=argnums, has_aux=True, backend="python")
    (total, losses), grads = numba(*args)
    (want_total, want_losses), want_grads = oracle(*args)
    grads = grads if len(cases) > 1 else (grads,)
    want_grads = want_grads if len(cases) > 1 else (want_grads,)
    failed = []
    for (name, _), loss, want_loss, grad, want_grad in zip(cases, losses, want_losses, grads,
                                                           want_grads):
        scale = float(np.max(np.abs(want_grad)))
        if not (np.isclose(loss, want_loss, rtol=RTOL, atol=0.0)
                and np.allclose(grad, want_grad, rtol=RTOL, atol=RTOL * scale)):
            error = float(np.max(np.abs(grad - want_grad))) / (scale or 1.0)
            failed.append(f"{name}: loss {loss!r} vs {want_loss!r}, gradient off by {error:.3g}")
    assert not failed, f"numba ({arrays}) differs from python at {shape}: " + "; ".join(failed)
    assert total == pytest.approx(want_total, rel=RTOL)
    return numba


def _runs(f):
    return [spec.get("path_kind", spec["runs"]) for spec in f.cache_info()["specialisations"]]


def _ran(f, runs):
    """Every specialisation of ``f`` ran as ``runs`` ("loops", "numba" or "numpy")."""
    info = f.cache_info()["specialisations"]
    assert [spec.get("path_kind", spec["runs"]) for spec in info] == [runs] * len(info)


# --- the vector cases at 1, 7 and 300 elements ----------------------------------------------
@pytest.mark.parametrize("n", SIZES)
def test_vector_cases_as_fused_loops_match_python(n):
    cases = _cases(surface.VECTOR_CASES, (n,), "loops")
    assert len(cases) >= (30 if n == 300 else 8)  # which cases loop at this size, alone
    _ran(_compare(cases, (n,), "auto"), "loops")


def _native_apart(cases, shape):
    """``cases`` in two groups: those gradc/native.py compiles unrolled (one fast LLVM compile
    for the group) and the rest, which numba's front end compiles a statement at a time (seconds
    per thousand): together, the group would take the slow route as a whole."""
    def native_ok(fn):
        f = gradc.value_and_grad(lambda v: surface._loss(fn, v), arrays="unroll")
        return native.supports(f.lower((shape,))[0])

    fast = [case for case in cases if native_ok(case[1])]
    return [group for group in (fast, [case for case in cases if case not in fast]) if group]


@pytest.mark.parametrize("n", [n for n in SIZES if n <= api.UNROLL_MAX_ELEMENTS])
def test_vector_cases_unrolled_match_python(n):
    # the cases the unroll pass takes (arrays="auto" unrolls those with products), together
    cases = _cases(surface.VECTOR_CASES, (n,), "unroll", arrays="unroll")
    assert len(cases) >= 20
    for group in _native_apart(cases, (n,)):
        _ran(_compare(group, (n,), "unroll"), "numba")


@pytest.mark.parametrize("n", SIZES)
def test_vector_cases_without_a_loop_rule_run_as_numpy_level_code(n):
    cases = _cases(surface.VECTOR_CASES, (n,), "numpy")
    assert [name for name, _ in cases] == ["partition"]
    _ran(_compare(cases, (n,), "auto"), "numpy")


# --- the matrix cases on a 4 x 4 matrix ------------------------------------------------------
MATRIX = (4, 4)


@pytest.mark.parametrize("runs, arrays", [("loops", "auto"), ("unroll", "unroll"),
                                          ("numpy", "auto")])
def test_matrix_cases_match_python(runs, arrays):
    cases = _cases(surface.MATRIX_CASES, MATRIX, runs, arrays)
    assert len(cases) >= 8
    for group in _native_apart(cases, MATRIX) if runs == "unroll" else [cases]:
        _ran(_compare(group, MATRIX, arrays), {"unroll": "numba"}.get(runs, runs))


# --- hvp through the numba paths ---------------------------------------------------------------
HVP_CASES = {"cumsum": ((300,), "auto"), "sort": ((300,), "auto"), "norm": ((7,), "auto"),
             "solve": (MATRIX, "auto")}


def test_hvp_of_a_few_cases_matches_python():
    # one program for all four (their own arguments), forward over reverse on whole arrays
    cases = [(name, {**surface.VECTOR_CASES, **surface.MATRIX_CASES}[name]) for name in HVP_CASES]
    xs = [_inputs(shape, 1, k)[0] for k, (shape, _) in enumerate(HVP_CASES.values())]
    ws = _weights_for(cases, xs)
    vs = [np.random.default_rng(10 + k).normal(size=x.shape) for k, x in enumerate(xs)]
    group = _grouped(cases)

    def total(*args):
        return group(*args)[0]

    argnums = tuple(range(len(cases)))
    numba = gradc.hvp(total, argnums=argnums)
    oracle = gradc.hvp(total, argnums=argnums, backend="python")
    got, want = numba(*xs, *ws, *vs), oracle(*xs, *ws, *vs)
    for name, g, w in zip(HVP_CASES, got, want):
        scale = float(np.max(np.abs(w)))
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * scale, err_msg=name)
    _ran(numba, "loops")


# --- what this file found in gradc/lower.py ----------------------------------------------------
def test_a_sorts_adjoint_is_written_after_the_argsort_it_indexes_with():
    # the adjoint of np.sort writes dx[int(order[i])]: its loop joined the first loop over the
    # same space, above the argsort statement (numba: "Variable 't5' is not defined")
    # (at n = 1, where both loops are over the same constant space)
    fn = lambda x, y: np.sum(np.cumsum(x) ** 2) + np.sum(np.sort(y) * 3.0)  # noqa: E731
    x, y = _inputs((1,), 2, 3)
    loops = gradc.value_and_grad(fn, arrays="loops")
    value, grads = loops(x, y)
    want_value, want_grads = gradc.value_and_grad(fn, backend="python")(x, y)
    assert value == pytest.approx(want_value, rel=RTOL)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=RTOL)


def test_a_constant_array_without_elements_compiles_as_loops():
    # np.diff of one element is empty: its weights were an empty list literal numba cannot type
    fn = lambda x: np.sum(np.diff(x) * np.arange(x.size - 1.0)) + np.sum(np.cumsum(x) ** 2)  # noqa: E731
    x = np.array([0.7])
    value, grad = gradc.value_and_grad(fn, arrays="loops")(x)
    assert value == pytest.approx(0.49, rel=1e-15)
    np.testing.assert_allclose(grad, [1.4], rtol=1e-15)


def test_a_reshape_of_a_lapack_result_reads_numpys_elements():
    # numba's inv returns a Fortran-ordered array; reading a reshape of one inside numba gave
    # the elements in another order (a wrong value; the gradient, which never reshapes, was right)
    w = np.random.default_rng(4).uniform(0.5, 1.5, (4, 2, 2))
    fn = lambda a: np.sum(np.linalg.inv(a).reshape(4, 2, 2) * w)  # noqa: E731
    a = _inputs(MATRIX, 1, 5)[0]
    value, grad = gradc.value_and_grad(fn, arrays="loops")(a)
    assert value == pytest.approx(fn(a), rel=RTOL)
    np.testing.assert_allclose(grad, gradc.grad(fn, backend="python")(a), rtol=RTOL)
