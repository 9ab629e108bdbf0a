"""The optimizer never changes a result, for any float: -0.0, +-inf and NaN included.

Each rewrite of ``gradc.optimize`` is triggered by a tiny function, checked to have
fired (so the test can fail), and its optimized result compared with NumPy
evaluating the unoptimized expression at special values: bitwise, NaN equal to NaN,
and the sign of a zero must match. The rewrites that are *not* exact (``x + 0.0``,
``0.0 - x``, ``x - (-0.0)``, ``x * 0``) are checked to stay in the program.
Constant folding is checked against the running code for every scalar op.
"""
import itertools

import numpy as np
import pytest

import gradc
from gradc.ir import Graph, evaluate
from gradc.ops import OPS
from gradc.optimize import fold, optimize
from gradc.trace import apply, trace

SPECIAL = [-0.0, 0.0, np.inf, -np.inf, np.nan, 1.0, -2.5, 0.5]
SCALAR_OPS = [n for n, op in OPS.items() if op.shape is None and op.result == "float"
              and n not in ("where", "alias")]
CONDITIONS = ["lt", "le", "gt", "ge", "eq", "ne"]


def same(a, b):
    """Bitwise equal floats, except that every NaN equals every NaN."""
    a, b = np.float64(a), np.float64(b)
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    return bool(a == b and np.signbit(a) == np.signbit(b))


def same_arrays(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
            and np.array_equal(np.signbit(a), np.signbit(b)))


def test_same_tells_signed_zeros_and_nans_apart():
    assert same(np.nan, -np.nan) and same(-0.0, -0.0) and same(np.inf, np.inf)
    assert not same(0.0, -0.0) and not same(np.nan, 0.0) and not same(np.inf, -np.inf)


def _ops(fn, arity):
    """The ops left in fn's optimized graph."""
    return [n.op for n in optimize(trace(fn, [f"x{i}" for i in range(arity)], "f")).nodes]


def _check_against_numpy(fn, arity):
    compiled = gradc.compile(fn, backend="python")
    for point in itertools.product(SPECIAL, repeat=arity):
        with np.errstate(all="ignore"):
            expected = fn(*map(np.float64, point))  # the expression as written, in NumPy
        assert same(compiled(*point), expected), (point, compiled(*point), expected)


# (rule, function, arity, ops the optimized graph must not hold, ops it must hold)
REWRITES = [
    ("x + (-0.0) -> x", lambda x: x + (-0.0), 1, {"add"}, set()),
    ("(-0.0) + x -> x", lambda x: (-0.0) + x, 1, {"add"}, set()),
    ("x - 0.0 -> x", lambda x: x - 0.0, 1, {"sub"}, set()),
    ("(-0.0) - x -> -x", lambda x: (-0.0) - x, 1, {"sub"}, {"neg"}),
    ("x * 1 -> x", lambda x: x * 1.0, 1, {"mul"}, set()),
    ("1 * x -> x", lambda x: 1.0 * x, 1, {"mul"}, set()),
    ("x * -1 -> -x", lambda x: x * -1.0, 1, {"mul"}, {"neg"}),
    ("-1 * x -> -x", lambda x: -1.0 * x, 1, {"mul"}, {"neg"}),
    ("x / 1 -> x", lambda x: x / 1.0, 1, {"div"}, set()),
    ("x ** 1 -> x", lambda x: x ** 1.0, 1, {"pow"}, set()),
    ("x ** 0 -> 1", lambda x: x ** 0.0, 1, {"pow"}, set()),
    ("x ** -0.0 -> 1", lambda x: x ** -0.0, 1, {"pow"}, set()),
    ("--x -> x", lambda x: -(-x), 1, {"neg"}, set()),
    ("x + (-y) -> x - y", lambda x, y: x + (-y), 2, {"add", "neg"}, {"sub"}),
    ("x + (-c) -> x - c", lambda x: x + (-2.5), 1, {"add"}, {"sub"}),
    ("x + (-inf) -> x - inf", lambda x: x + (-np.inf), 1, {"add"}, {"sub"}),
    ("constants fold", lambda x: x * (2.0 * 3.0), 1, set(), {"mul"}),
    # Not exact, so kept: -0.0 + 0.0 is +0.0; 0.0 - 0.0 is +0.0; inf * 0 is NaN.
    ("x + 0.0 stays", lambda x: x + 0.0, 1, set(), {"add"}),
    ("0.0 + x stays", lambda x: 0.0 + x, 1, set(), {"add"}),
    ("0.0 - x stays", lambda x: 0.0 - x, 1, set(), {"sub"}),
    ("x - (-0.0) stays", lambda x: x - (-0.0), 1, set(), {"sub"}),
    ("x * 0 stays", lambda x: x * 0.0, 1, set(), {"mul"}),
    ("x * -0.0 stays", lambda x: x * -0.0, 1, set(), {"mul"}),
    ("x / -1 stays", lambda x: x / -1.0, 1, set(), {"div"}),
]


@pytest.mark.parametrize("rule, fn, arity, gone, kept", REWRITES, ids=[r[0] for r in REWRITES])
def test_rewrite_is_exact_at_special_values(rule, fn, arity, gone, kept):
    ops = set(_ops(fn, arity))
    assert not gone & ops, f"{rule} did not fire: {sorted(ops)}"
    assert kept <= ops, f"{rule}: {sorted(kept - ops)} missing from {sorted(ops)}"
    _check_against_numpy(fn, arity)


def test_signed_zero_survives_adding_zero():
    # the findings that started this file: x + 0.0 and 0.0 - x were rewritten
    assert gradc.compile(lambda x: 1.0 / (x + 0.0), backend="python")(-0.0) == np.inf
    assert gradc.compile(lambda x: 1.0 / (0.0 - x), backend="python")(0.0) == np.inf


# --- constant folding computes what the running code computes --------------------------------

def _folded(name, consts):
    g = Graph("f")
    node = g.add(name, tuple(g.const(c) for c in consts))
    if OPS[name].result == "bool":
        node = g.add("where", (node, g.const(1.0), g.const(2.0)))
    g.set_outputs([node], 0)
    out = fold(g).outputs[0]
    assert out.op == "const", f"{name}{consts} did not fold"
    return out.value


@pytest.mark.parametrize("name", SCALAR_OPS + CONDITIONS)
def test_folding_matches_running_code_at_special_values(name):
    arity = OPS[name].arity
    if OPS[name].result == "bool":
        fn = lambda *xs: gradc.where(apply(name, *xs), 1.0, 2.0)  # noqa: E731
    else:
        fn = lambda *xs: apply(name, *xs)  # noqa: E731
    running = gradc.compile(fn, backend="python")
    for point in itertools.product(SPECIAL, repeat=arity):
        assert same(_folded(name, point), running(*point)), (name, point)


def test_folded_power_is_the_scalar_power():
    # NumPy's power ufunc gives -0.0 here on AVX-512 machines; the emitted x ** y gives 0.0
    assert same(_folded("pow", (-0.0, 0.5)), np.float64(-0.0) ** 0.5)
    assert same(_folded("pow", (-np.inf, 0.5)), np.float64(-np.inf) ** 0.5)


# --- array rewrites: checked on IR built directly (NumPy-level graphs) ------------------------

ARRAY = np.array([[-0.0, 0.0, np.inf], [-np.inf, np.nan, -2.5]])


def _array_graph(build):
    g = Graph("f")
    x = g.param("x", ARRAY.shape, whole=True)
    y = g.param("y")
    g.set_outputs([build(g, x, y)], 0)
    return g


def _sum_keep(g, x, axis):
    return g.add("sum", (x,), ((axis,), True))


ARRAY_REWRITES = [
    ("broadcast_to(y) * x -> y * x",
     lambda g, x, y: g.add("mul", (g.add("broadcast_to", (g.add("reshape", (y_row(g, y),),
                                                                 ((1, 3),)),), ((2, 3),)), x)),
     "broadcast_to"),
    ("fill(y) + x -> y + x",
     lambda g, x, y: g.add("add", (g.add("fill", (y,), ((2, 3),)), x)), "fill"),
    ("reshape(fill(y)) -> fill(y)",
     lambda g, x, y: g.add("reshape", (g.add("fill", (y,), ((2, 3),)),), ((3, 2),)), "reshape"),
    ("broadcast_to(broadcast_to(x)) -> broadcast_to(x)",
     lambda g, x, y: g.add("broadcast_to", (g.add("broadcast_to", (x,), ((1, 2, 3),)),),
                           ((4, 2, 3),)), "nested broadcast_to"),
    ("reshape(sum(x, keepdims)) -> sum(x)",
     lambda g, x, y: g.add("reshape", (_sum_keep(g, x, 1),), ((2,),)), "reshape"),
    ("reshape(max(x, keepdims)) -> max(x)",
     lambda g, x, y: g.add("reshape", (g.add("max", (x,), ((0,), True)),), ((3,),)), "reshape"),
    ("reshape(reshape(x)) -> reshape(x)",
     lambda g, x, y: g.add("reshape", (g.add("reshape", (x,), ((6,),)),), ((3, 2),)),
     "nested reshape"),
    ("reshape(reshape(x)) back to x's shape -> x",
     lambda g, x, y: g.add("reshape", (g.add("reshape", (x,), ((6,),)),), ((2, 3),)), "reshape"),
]


def y_row(g, y):
    """A (3,) row of y's: fill, so that broadcast_to has an array to broadcast."""
    return g.add("mul", (g.add("fill", (y,), ((3,),)), g.const(np.array([1.0, -0.0, np.inf]))))


def _fired(graph, gone):
    ops = [n.op for n in graph.nodes]
    if gone == "nested broadcast_to":
        return ops.count("broadcast_to") == 1
    if gone == "nested reshape":
        return ops.count("reshape") == 1
    return gone not in ops


@pytest.mark.parametrize("rule, build, gone", ARRAY_REWRITES, ids=[r[0] for r in ARRAY_REWRITES])
def test_array_rewrite_is_exact_at_special_values(rule, build, gone):
    before = _array_graph(build)
    after = optimize(before)
    assert _fired(after, gone), f"{rule} did not fire:\n{after}"
    for y in SPECIAL:
        expected = evaluate(before, [ARRAY, y])[before.outputs[0].id]
        got = evaluate(after, [ARRAY, y])[after.outputs[0].id]
        assert same_arrays(got, expected), (rule, y, got, expected)
