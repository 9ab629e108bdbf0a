"""NumPy's surface as fused loops (gradc/lower.py): every op of the table has a loop rule or a
stated reason not to, and each newly lowered op compiles with ``arrays="loops"`` (numba) to
the values and gradients of the NumPy-level code (``backend="python"``).

One test per op: its loss at every size (1, 7, 300, 10**4; 1, 7, 60 for the O(n**3) linalg
ops) through one compiled function per rank (the point of the loops: lengths > 1 share one
source; a length-1 axis is a constant, so n = 1 has its own), and one dot test along a random
direction against central differences.
"""
import os
import re
import warnings

import numba
import numpy as np
import pytest

import gradc
from gradc import ad
from gradc.lower import NOT_LOWERED, RULES, lower_function
from gradc.ops import OPS
from gradc.optimize import optimize
from gradc.trace import trace

SIZES = [1, 7, 300, 10**4]
CUBIC_SIZES = [1, 7, 60]
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _leaves(tree):
    if isinstance(tree, tuple):
        return [leaf for t in tree for leaf in _leaves(t)]
    return [np.asarray(tree, dtype=float)]


def _close(got, want, rtol=1e-12):
    """Equal to ``rtol`` relative to the largest magnitude of each result."""
    got, want = _leaves(got), _leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        scale = float(np.max(np.abs(b))) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def _dot_test(f, args, rng, h=1e-6, rtol=1e-6):
    """<gradient, u> against the central difference of the loss along a random u."""
    value, grads = f(*args)
    grads = grads if isinstance(grads, tuple) else (grads,)
    us = [rng.standard_normal(np.shape(a)) for a in args[:len(grads)]]
    shifted = [[a + s * h * u for a, u in zip(args, us)] + list(args[len(grads):])
               for s in (1.0, -1.0)]
    central = (f(*shifted[0])[0] - f(*shifted[1])[0]) / (2 * h)
    exact = sum(float(np.sum(g * u)) for g, u in zip(grads, us))
    assert exact == pytest.approx(central, rel=rtol, abs=rtol * abs(value))


def check_loss(fn, make_args, sizes, dot_size=7, argnums=None, rtol=1e-12):
    """``fn``'s value and gradient as loops (numba) equal the NumPy-level code's (Python) at
    every size; the sizes > 1 share one compiled loop source; one dot test."""
    loops = gradc.value_and_grad(fn, argnums=argnums, arrays="loops")
    oracle = gradc.value_and_grad(fn, argnums=argnums, backend="python")
    for n in sizes:
        args = make_args(np.random.default_rng(n), n)
        _close(loops(*args), oracle(*args), rtol)
    specs = list(loops._specs.values())
    assert {spec.runs for spec in specs} == {"loops"}
    assert len({spec.source for spec, n in zip(specs, sizes) if n > 1}) == 1
    _dot_test(loops, make_args(np.random.default_rng(99), dot_size), np.random.default_rng(7))
    return loops


def near_one(rng, shape):
    return rng.uniform(0.999, 1.001, shape)


def spd(rng, n):
    """A symmetric positive definite matrix of distinct, well separated eigenvalues."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.linspace(1.0, 2.0 + n, n)) @ q.T


# --- the table: every op lowered or listed -----------------------------------------------------
def test_every_op_has_a_loop_rule_or_a_stated_reason_not_to():
    lowered, refused = set(RULES), set(NOT_LOWERED)
    assert not lowered & refused
    missing = sorted(set(OPS) - lowered - refused)
    assert not missing, f"ops without a loop rule or a reason in NOT_LOWERED: {missing}"
    assert all(isinstance(rule, str) and rule for rule in RULES.values())
    assert all(len(why) > 40 for why in NOT_LOWERED.values())  # a reason, not a placeholder


def test_an_op_not_lowered_is_refused_with_its_reason_and_auto_runs_numpy():
    fn = lambda x: np.sum(np.partition(x, 2) * x)  # noqa: E731
    x = np.random.default_rng(0).random(300)
    with pytest.raises(gradc.UnsupportedFunctionError, match="partition.*introselect"):
        gradc.value_and_grad(fn, arrays="loops")(x)
    auto = gradc.value_and_grad(fn)
    _close(auto(x), gradc.value_and_grad(fn, backend="python")(x))
    assert auto.cache_info()["runs"] != "loops"


# --- each newly lowered op, compiled --------------------------------------------------------
def cumsum_loss(x):
    return np.sum(np.cumsum(x) ** 2)


def test_cumsum_is_a_running_accumulator_at_every_size():
    def loss(x, X):  # 1-D, and along the outer and the inner axis of a 2-D array
        return cumsum_loss(x) + np.sum(np.cumsum(X, axis=0) ** 2) + \
            np.sum(np.sin(np.cumsum(X, axis=1)))

    check_loss(loss, lambda rng, n: [rng.uniform(-1, 1, n), rng.uniform(-1, 1, (n, 3))], SIZES)


def test_cumsum_loop_golden():
    graph = optimize(ad.value_and_grad(trace(cumsum_loss, [("x", (5,), True)], "cumsum_loss"),
                                       (0,), bare=True))
    source = lower_function(graph, "cumsum_loss__value_and_grad")
    with open(os.path.join(GOLDEN, "cumsum_loops.py")) as fh:
        assert source == fh.read()


def test_cumprod_at_every_size_its_quadratic_adjoint_allows():
    # ops.py's cumprod adjoint builds n * n partials (exact at zeros): 10**4 would be 800 MB
    check_loss(lambda x: np.sum(np.cumprod(x) ** 2), lambda rng, n: [near_one(rng, n)],
               SIZES[:3])


def test_prod_is_a_product_accumulator_at_every_size():
    # (np.prod of a whole 2-D array flattens it to n * m, a length the loops write as its
    # number: that source is one per shape, so the shared-source check takes a 1-D one)
    def loss(x, X):
        return np.prod(x) + np.sum(np.prod(X, axis=0)) + np.sum(np.prod(X, axis=1) ** 2)

    check_loss(loss, lambda rng, n: [near_one(rng, n), near_one(rng, (n, 2))], SIZES)


def test_sort_reads_in_argsort_order_at_every_size():
    def loss(x, X):  # numba's argsort takes 1-D arrays: a 2-D one is sorted lane by lane
        return np.sum(np.sort(x) * x) + np.sum(np.sort(X, axis=0) * X) + \
            np.sum(np.sort(X, axis=1) ** 2 * X)

    check_loss(loss, lambda rng, n: [rng.permutation(n) / n + 0.5,
                                     rng.permutation(3 * n).reshape(n, 3) / n], SIZES)


def test_item_assignment_is_a_copy_and_writes_at_every_size():
    def loss(x):
        y = np.exp(x)
        y[1:3] = x[:2] ** 2
        y[-1] = 0.5 * y[0]
        z = np.cumsum(x)
        z[2:] = 1.0  # the running sum has no other use: written in place, no copy
        return np.sum(y ** 2) + np.sum(z * x)

    check_loss(loss, lambda rng, n: [rng.uniform(-1, 1, n)], SIZES)


def test_concatenate_and_stack_write_their_pieces_at_every_size():
    def loss(x):
        c = np.concatenate([x, np.tanh(x), x[:1]])
        s = np.stack([x, x ** 2], axis=1)
        return np.sum(c ** 3) + np.sum(s * s[::-1]) + np.sum(np.stack([x[0], x[-1]]) ** 2)

    check_loss(loss, lambda rng, n: [rng.uniform(-1, 1, n)], SIZES)


@pytest.mark.parametrize("loss", [
    lambda A: np.sum(np.linalg.inv(A) ** 2) + np.linalg.det(A / 2.0)
    + np.linalg.slogdet(A)[1] * np.linalg.slogdet(-A)[0],
    lambda A: np.sum(np.linalg.cholesky(A) ** 3) + np.sum(np.linalg.eigvalsh(A) ** 2)
    + np.sum(np.linalg.eigh(A)[1] ** 4),
], ids=["inv-det-slogdet", "cholesky-eigh"])
def test_linalg_is_a_lapack_call_at_every_size(loss):
    check_loss(loss, lambda rng, n: [spd(rng, n)], CUBIC_SIZES, rtol=1e-10)


def test_solve_is_a_lapack_call_at_every_size():
    def loss(A, b, B):
        return np.sum(np.linalg.solve(A, b) ** 2) + np.sum(np.linalg.solve(A, B) * B)

    check_loss(loss, lambda rng, n: [spd(rng, n), rng.standard_normal(n),
                                     rng.standard_normal((n, 2))], CUBIC_SIZES, rtol=1e-10)


# --- second derivatives and buffers --------------------------------------------------------
def surface_loss(x):
    y = np.cumsum(x) * np.sort(x)
    y[0] = x[-1] ** 2
    return np.sum(np.concatenate([y, x]) ** 2) + np.prod(np.tanh(x) + 2.0)


def test_hvp_of_the_surface_ops_lowers_end_to_end():
    loops = gradc.hvp(surface_loss, arrays="loops")
    oracle = gradc.hvp(surface_loss, backend="python")
    for n in (7, 300):
        rng = np.random.default_rng(n)
        x, v = rng.permutation(n) / n, rng.standard_normal(n)
        _close(loops(x, v), oracle(x, v))
    assert {spec.runs for spec in loops._specs.values()} == {"loops"}
    assert len({spec.source for spec in loops._specs.values()}) == 1


def test_out_buffers_receive_arrays_that_statements_compute():
    # a gradient computed by np.dot is written into the caller's buffer, not a new array
    f = gradc.grad(lambda A, x: 0.5 * np.sum((A @ x - 1.0) ** 2), argnums=0, arrays="loops")
    rng = np.random.default_rng(3)
    A, x = rng.random((300, 5)), rng.random(5)
    buffer = np.zeros((300, 5))
    result = f(A, x, out=buffer)
    np.testing.assert_allclose(buffer, np.outer(A @ x - 1.0, x), rtol=1e-13)
    assert result is buffer or np.shares_memory(result, buffer)


def test_constant_arrays_are_bound_before_the_loops_that_read_them():
    def fn(x):
        return np.sum(np.sort(x) * np.arange(7.0))  # no capture: the weights are a constant

    graph = optimize(ad.value_and_grad(trace(fn, [("x", (7,), True)], "fn"), (0,), bare=True))
    namespace = {"np": np, "numba": numba}
    exec(lower_function(graph, "lowered"), namespace)
    x = np.random.default_rng(1).random(7)
    value, grad = namespace["lowered"](x)
    assert value == pytest.approx(np.sum(np.sort(x) * np.arange(7.0)), rel=1e-14)
    np.testing.assert_array_equal(grad[np.argsort(x)], np.arange(7.0))


# --- the same rules on more shapes, run as Python (no numba: the lowering itself) -----------
def _run_lowered(graph, args):
    namespace = {"np": np, "numba": numba}
    exec(lower_function(graph, "lowered"), namespace)
    return namespace["lowered"](*args)


def _middle_axes(X, Y):
    a = np.cumsum(X, axis=1) * np.cumprod(X, axis=2)
    b = np.sort(X, axis=1) * np.transpose(X, (2, 0, 1)).reshape(X.shape)
    c = np.concatenate([Y, Y ** 2], axis=1) @ np.ones(6)
    d = np.stack([Y, np.tanh(Y)], axis=0) * Y
    Z = np.exp(Y)
    Z[1:, ::2] = Y[0, ::2]  # a broadcast row, written at a stepped slice
    return (np.sum(a * b) + np.sum(c) + np.sum(d) + np.sum(Z * Y)
            + np.sum(np.linalg.inv(np.transpose(X, (2, 0, 1))[:, 0, :] + 4.0 * np.eye(4))))


def test_running_values_sorts_and_pieces_along_any_axis_match_the_graph():
    from gradc.ir import evaluate

    shapes = [(3, 4, 4), (5, 3)]
    graph = optimize(ad.value_and_grad(trace(
        _middle_axes, [("X", shapes[0], True), ("Y", shapes[1], True)], "f"), (0, 1)))
    rng = np.random.default_rng(4)
    args = [rng.uniform(0.5, 1.5, s) for s in shapes]
    got = _leaves(_run_lowered(graph, args))
    values = evaluate(graph, args)
    want = [np.asarray(values[o.id], dtype=float) for o in graph.outputs]
    _close(tuple(got), tuple(want))


# --- transcendentals of whole arrays: NumPy's SIMD loop ------------------------------------------
def test_large_arrays_of_transcendentals_call_numpys_loop_and_equal_the_numpy_level_code():
    # tanh, exp and log1p of 1,024 elements and more are NumPy's SIMD loops, entered through
    # numba's object mode; below, a loop of scalar calls. Either way, one compiled source
    # serves every length, and the values are NumPy's.
    def loss(x):
        return np.sum(np.log1p(np.exp(-x * x))) + np.sum(np.tanh(x) * np.sin(x))

    f = check_loss(loss, lambda rng, n: [rng.uniform(-2, 2, n)], [7, 1023, 1024, 10**4])
    source = next(iter(f._specs.values())).source
    # one helper per op of the table's list (exp, log1p, tanh); sin's NumPy loop is no faster
    assert source.count("objmode()") == 3 and "np.sin(x[i])" in source


def test_a_transcendental_result_is_written_into_the_callers_buffer():
    f = gradc.grad(lambda x: np.sum(np.exp(x)), arrays="loops")  # the gradient is exp(x)
    x = np.random.default_rng(2).uniform(-1, 1, 2000)
    buffer = np.zeros(2000)
    result = f(x, out=buffer)
    np.testing.assert_array_equal(buffer, np.exp(x))  # NumPy's own loop: bitwise its values
    assert result is buffer or np.shares_memory(result, buffer)


def test_numpys_loop_inside_the_loops_is_as_silent_as_numbas_loops():
    # log(0) in NumPy's loop warns, or raises FloatingPointError under np.seterr(all="raise");
    # the loops around it are silent (error_model="numpy"), at every length alike
    f = gradc.value_and_grad(lambda x: np.sum(np.log(x)), arrays="loops")
    saved = np.seterr(all="raise")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for n in (7, 2000):
                value, grad = f(np.zeros(n))
                assert value == -np.inf and np.all(grad == np.inf)
    finally:
        np.seterr(**saved)
    assert "objmode()" in next(iter(f._specs.values())).source


def test_a_float32_programs_loops_compute_in_float32():
    # literals, a float argument and a running sum, read in loop bodies: numba types a bare
    # 0.1 or a Python float argument as float64, and c * x[i] would be computed in float64
    def loss(x, s):
        y = np.cumsum(x) * 0.1 + s * x
        return np.sum(np.tanh(y) ** 2 + 2.0 * y * x[::-1])

    f = gradc.value_and_grad(loss, argnums=0, arrays="loops")
    x = np.linspace(0.1, 1.0, 2000, dtype=np.float32)  # tanh: NumPy's float32 loop
    value, grad = f(x, 0.5)
    assert grad.dtype == np.float32
    _close((value, grad), gradc.value_and_grad(loss, argnums=0, backend="python")(x, 0.5),
           rtol=1e-5)
    (spec,) = [s for s in f._specs.values() if s.runs == "loops"]
    in_loops = set(re.findall(r"^ {8,}(\w+) = ", spec.source, re.M))  # assigned in a loop body
    ((_, compiled),) = spec.call.overloads.items()
    doubles = {name for name, t in compiled.type_annotation.typemap.items()
               if name.split(".")[0] in in_loops and str(t) == "float64"}
    assert not doubles, f"float64 in the loops of a float32 program: {sorted(doubles)}"
