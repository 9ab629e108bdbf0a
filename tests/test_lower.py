"""The loop lowering (gradc/lower.py): fused loop nests that compute what the graph computes.

The lowered source runs in plain Python too, so these tests check the lowering itself
against the graph's interpreter (``ir.evaluate``) without numba, at every size
(1, 7, 300, 10**4), for every elementwise op of the table and the array ops.
"""
import os
import re

import numba
import numpy as np
import pytest

from gradc import ad
from gradc.ir import evaluate
from gradc.lower import LoweringError, lower_function
from gradc.ops import OPS
from gradc.optimize import optimize
from gradc.trace import apply, trace

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
SIZES = [1, 7, 300, 10**4]
ELEMENTWISE = [n for n, op in OPS.items() if op.shape is None and op.arity and op.result == "float"
               and n not in ("alias", "where")]


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def gradient_graph(fn, shapes, argnums=None, name=None):
    names = list(fn.__code__.co_varnames[:len(shapes)])
    graph = trace(fn, [(n, s, s is not None) for n, s in zip(names, shapes)], name or fn.__name__)
    argnums = tuple(range(len(shapes))) if argnums is None else argnums
    return optimize(ad.value_and_grad(graph, argnums))


def run_lowered(graph, args):
    namespace = {"np": np, "numba": numba}
    exec(lower_function(graph, "lowered"), namespace)
    with np.errstate(all="ignore"):
        return namespace["lowered"](*args)


def flat(tree):
    if isinstance(tree, tuple):
        return [leaf for t in tree for leaf in flat(t)]
    return [tree]


def assert_matches_graph(graph, args, rtol=1e-12):
    got = flat(run_lowered(graph, args))
    values = evaluate(graph, args)
    want = [values[o.id] for o in graph.outputs]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.shape(a) == np.shape(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)


def test_rosenbrock_lowers_to_one_loop_golden():
    graph = optimize(ad.value_and_grad(trace(rosen, [("x", (5,), True)], "rosen"), (0,), bare=True))
    source = lower_function(graph, "rosen__value_and_grad")
    with open(os.path.join(GOLDEN, "rosen_loops.py")) as fh:
        assert source == fh.read()
    assert source.count("for i in range(n - 1):") == 1  # value and gradient in one sweep


@pytest.mark.parametrize("n", SIZES)
def test_rosenbrock_at_every_size(n):
    graph = gradient_graph(rosen, [(n,)])
    x = np.random.default_rng(n).uniform(-1.5, 1.5, n)
    assert_matches_graph(graph, [x])


def test_one_source_serves_every_length_of_a_rank():
    sources = {lower_function(gradient_graph(rosen, [(n,)]), "f") for n in (7, 300, 10**4)}
    assert len(sources) == 1
    assert "x.shape[0]" in sources.pop()


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("n", SIZES)
def test_every_elementwise_op_at_every_size(name, n):
    op = OPS[name]
    lo, hi = op.domain
    rng = np.random.default_rng(n + len(name))
    if op.arity == 1:
        def f(x):
            return np.sum(apply(name, x) * x)
        graph = gradient_graph(f, [(n,)], name="f")
        assert_matches_graph(graph, [rng.uniform(lo, hi, n)])
    else:
        def f(x, y, s):  # array with array, and array with a broadcast scalar
            return np.sum(apply(name, x, y)) + np.sum(apply(name, s, y) * x)
        graph = gradient_graph(f, [(n,), (n,), None], name="f")
        assert_matches_graph(graph, [rng.uniform(lo, hi, n), rng.uniform(lo, hi, n),
                                     float(rng.uniform(lo, hi))])


def least_squares(A, x, b):
    return 0.5 * np.sum((A @ x - b) ** 2)


def logistic(w, X, y):
    z = X @ w
    return np.sum(np.log1p(np.exp(-y * z))) / X.shape[0] + 0.1 * np.sum(w * w)


def mlp(W1, b1, W2, b2, X, Y):
    h = np.tanh(X @ W1 + b1)
    z = h @ W2 + b2
    s = z - np.max(z, axis=1, keepdims=True)
    return -np.sum((s - np.log(np.sum(np.exp(s), axis=1, keepdims=True))) * Y) / X.shape[0]


def views(x, y):
    a = x[::2] * y[1::2]
    b = np.sum(x.reshape(2, -1) ** 2, axis=0)
    c = np.mean(np.maximum(x, 0.3)) + np.min(y)
    return np.sum(a) + np.sum(b * b) + c + np.sum(x[::-1] * y) + np.sum(x[2:-1] * y[:-3])


def outer(u, v, M):
    P = u[:, None] * v[None, :] + M.T
    return np.sum(np.tanh(P) * M.T) + np.sum(np.max(P, axis=0)) + np.sum(P.sum(axis=1) ** 2)


@pytest.mark.parametrize("fn, shapes", [
    (least_squares, [(20, 5), (5,), (20,)]),
    (logistic, [(5,), (30, 5), (30,)]),
    (mlp, [(4, 6), (6,), (6, 3), (3,), (8, 4), (8, 3)]),
    (views, [(6,), (6,)]),
    (views, [(300,), (300,)]),
    (outer, [(7,), (3,), (3, 7)]),
])
def test_array_programs_match_the_graph(fn, shapes):
    rng = np.random.default_rng(1)
    args = [rng.uniform(0.5, 1.5, s) if s else float(rng.uniform(0.5, 1.5)) for s in shapes]
    assert_matches_graph(gradient_graph(fn, shapes), args)


def test_unsupported_ops_are_refused_for_the_caller_to_fall_back():
    import gradc

    def chain(W, x):
        return np.sum(gradc.scan(lambda h, w: np.tanh(w @ h), x, W))

    graph = gradient_graph(chain, [(3, 2, 2), (2,)])
    with pytest.raises(LoweringError):
        lower_function(graph, "f")


def test_a_mean_is_divided_by_a_count_of_the_argument_shapes_so_lengths_share_a_loop():
    import gradc

    f = gradc.value_and_grad(lambda w, X, y: np.mean((X @ w - y) ** 2), argnums=0,
                             arrays="loops")
    rng = np.random.default_rng(5)
    for m in (300, 401):
        X, y, w = rng.random((m, 3)), rng.random(m), rng.random(3)
        value, grad = f(w, X, y)
        assert value == pytest.approx(np.mean((X @ w - y) ** 2), rel=1e-13)
        np.testing.assert_allclose(grad, 2.0 / m * (X @ w - y) @ X, rtol=1e-12)
    sources = {spec.source for spec in f._specs.values()}
    assert len(sources) == 1 and "float(m)" in sources.pop()


def shared_ratio(x):
    y = x / (x + 1.0)  # a division, read four times: worth keeping, were its readers apart
    return np.sum(y * y) + np.sum(np.sin(y))


def test_readers_of_an_array_join_the_loop_that_writes_it_and_its_buffer_goes():
    # value, both sums and the gradient read y at the loop's own index: one loop, reading the
    # local, and no buffer but the gradient's
    source = lower_function(gradient_graph(shared_ratio, [(300,)]), "f")
    assert source.count("for i in range(n):") == 1
    assert source.count("np.empty") == 1 and "dx = np.empty((n,))" in source
    for n in SIZES:
        x = np.random.default_rng(n).uniform(0.5, 1.5, n)
        assert_matches_graph(gradient_graph(shared_ratio, [(n,)]), [x])


def test_a_residual_a_product_reads_is_summed_in_the_loop_that_writes_it():
    source = lower_function(gradient_graph(least_squares, [(20, 5), (5,), (20,)], (1,)), "f")
    assert source.count("for i in range(") == 1  # r = A @ x - b and sum(r ** 2): one loop
    # r is written into the product's buffer (A @ x has no other reader): no allocation
    assert "np.empty" not in source and "dx = np.dot(" in source
    rng = np.random.default_rng(3)
    args = [rng.standard_normal((20, 5)), rng.standard_normal(5), rng.standard_normal(20)]
    assert_matches_graph(gradient_graph(least_squares, [(20, 5), (5,), (20,)], (1,)), args)


def shifted_reads(x):
    y = x / (x + 1.0)
    return np.sum(y[1:] * y[:-1]) + np.sum(y * y)  # y[i + 1] is not written yet at i


def test_a_reader_at_another_index_does_not_join_the_loop_that_writes():
    source = lower_function(gradient_graph(shifted_reads, [(300,)]), "f")
    assert "y[i + 1]" in source  # read from memory, in a later loop
    for n in SIZES[1:]:
        x = np.random.default_rng(n).uniform(0.5, 1.5, n)
        assert_matches_graph(gradient_graph(shifted_reads, [(n,)]), [x])


def two_readers(A, x, b):
    P = A @ x
    return np.sum((P - b) ** 2) + np.sum(np.tanh(P) * b)


def test_a_buffer_is_overwritten_only_where_one_reader_reads_it_at_its_own_index():
    # P has two readers: P - b gets a buffer of its own; tanh(P) ... reads P intact
    graph = gradient_graph(two_readers, [(2000, 3), (3,), (2000,)], (1,))
    rng = np.random.default_rng(4)
    args = [rng.standard_normal((2000, 3)), rng.standard_normal(3), rng.standard_normal(2000)]
    assert_matches_graph(graph, args)
    source = lower_function(graph, "f")
    product = re.search(r"(\w+) = np.dot\(A, x\)", source).group(1)
    assert not re.search(rf"^ +\w+ = {product}$", source, re.M)  # no alias of P's buffer


def test_a_300_step_array_loop_lowers_within_the_parser_and_matches_the_graph():
    # x = x * a + b * sin(x), 300 times: 2,700 nodes, every one used once, so the whole chain
    # could inline into one expression; it is kept in memory every MAX_INLINE_DEPTH levels
    # (a RecursionError in the lowering before, and Python's parser refuses 200 parentheses)
    def steps(x):
        for _ in range(300):
            x = x * 1.0001 + 0.001 * np.sin(x)
        return np.sum(x * x)

    graph = gradient_graph(steps, [(7,)])
    source = lower_function(graph, "steps")
    depth = deepest = 0
    for ch in source:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        deepest = max(deepest, depth)
    assert deepest < 100
    assert_matches_graph(graph, [np.linspace(0.0, 1.0, 7)])
