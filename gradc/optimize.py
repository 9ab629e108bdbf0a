"""Optimization passes, each a pure ``Graph -> Graph`` function.

Every pass replays the graph through the hash-consing builder, so each one also
merges common subexpressions. No pass changes a result, for any float: NaN, inf
and the sign of zero included. So ``x * 1`` and ``x - 0.0`` go, but ``x + 0.0``
stays (it turns -0.0 into +0.0), and so does ``x * 0`` (it is NaN when x is inf
or NaN). tests/test_exactness.py checks every rule at -0.0, 0.0, ±inf and NaN.

>>> from gradc.trace import trace
>>> g = trace(lambda x, y: (x * 1.0 - 0.0) * (2.0 * 3.0) + y * 0.0, ["x", "y"], "f")
>>> print(optimize(g))
def f(x, y):
    t0 = x * 6.0
    t1 = y * 0.0
    f = t0 + t1
    return f
"""
from __future__ import annotations

import math

import numpy as np

from .ir import Graph, gc_paused
from .ops import OPS


def fold(graph):
    """Compute every op whose inputs are all constants (seeing through named aliases).

    ``where`` with a constant condition picks its branch, and an elementwise op of
    constants spread over an array (``fill``) is the spread constant.
    """
    return graph.rebuild(_fold_rule)


def _fold_rule(new, node, args):
    """fold's replacement for one node (None: keep it)."""
    if node.op == "alias" or not args or OPS[node.op].result == "tuple":
        return None
    values, spec = [a.value for a in args], OPS[node.op]
    if node.op == "where" and values[0] is not None and np.ndim(values[0]) == 0:
        chosen = args[1] if values[0] else args[2]
        return chosen if chosen.shape == node.shape else None
    if node.shape and spec.shape is None and spec.result == "float" and node.op != "where":
        spread = [_spread_constant(a) for a in args]  # fill(c) * k is fill(c * k)
        if all(v is not None for v in spread):
            with np.errstate(all="ignore"):
                result = spec.compute(spread, node.attrs)
            return new.add("fill", (new.const(result),), (node.shape,))
    if any(v is None for v in values) or node.shape:
        return None  # array results stay computed: literals of them would swamp the source
    with np.errstate(all="ignore"):
        result = OPS[node.op].compute(values, node.attrs)
    if node.op != "where" and OPS[node.op].result == "bool" and np.ndim(result) == 0:
        result = bool(result)
    return new.const(result)


def _spread_constant(node):
    """The scalar constant ``node`` is or spreads over an array (``fill(c)``), or None."""
    if node.op == "fill":
        node = node.args[0]
    v = node.value
    return v if node.shape == () and isinstance(v, float) else None


def _is(node, number):
    """True when ``node`` is the float constant ``number``; 0.0 and -0.0 are different numbers."""
    v = node.value
    return (isinstance(v, float) and v == number
            and math.copysign(1.0, v) == math.copysign(1.0, number))


def simplify(graph):
    """Algebraic identities that hold for every float: NaN, inf and the sign of zero included.

    ``x + (-0.0), (-0.0) + x, x - 0.0, x*1, 1*x, x/1, x**1 -> x``;
    ``(-0.0) - x, x*-1, -1*x -> -x``; ``x**0 -> 1`` (NumPy's power gives 1 even for NaN);
    ``--x -> x``; ``x + (-y) -> x - y``; ``x + (-c) -> x - c`` (IEEE defines ``x - y``
    as ``x + (-y)``). Explicit broadcasts feeding elementwise ops that broadcast anyway
    go; a reshape that drops the kept axes of a reduction becomes the reduction without
    ``keepdims``.

    Not here, because they are not exact: ``x + 0.0 -> x`` (-0.0 + 0.0 is +0.0),
    ``0.0 - x -> -x`` (0.0 - 0.0 is +0.0, -0.0 is not) and ``x - (-0.0) -> x``
    (that is ``x + 0.0``); ``x * 0 -> 0`` (inf * 0 is NaN).
    """
    return graph.rebuild(_simplify_rule)


def _simplify_rule(new, node, args):
    """simplify's replacement for one node (None: keep it)."""
    op = node.op
    spec = OPS[op]
    if node.shape and spec.shape is None and spec.arity and op != "alias":
        narrowed = _unbroadcast_args(args, node.shape)
        if narrowed is not None:
            return new.add(op, narrowed, node.attrs)
    if op in ("reshape", "broadcast_to") and args[0].op == "fill":
        return new.add("fill", args[0].args, node.attrs)  # a spread scalar, spread again
    if op == "broadcast_to" and args[0].op == "broadcast_to":
        return new.add("broadcast_to", args[0].args, node.attrs)
    if op == "reshape":
        return _reshape_rule(new, node, args)
    if op in _ARITHMETIC:
        return _ARITHMETIC[op](new, *args)
    return None


def _add_rule(new, x, y):
    if _is(y, -0.0):  # x + -0.0 is x for every x (and x + 0.0 is not: -0.0 + 0.0 = +0.0)
        return x
    if _is(x, -0.0):
        return y
    if y.op == "neg":
        return new.add("sub", (x, y.args[0]))
    if y.op == "const" and isinstance(y.value, float) and y.value < 0:
        return new.add("sub", (x, new.const(-y.value)))  # x + (-0.5) reads x - 0.5
    return None


def _sub_rule(new, x, y):
    if _is(y, 0.0):  # x - 0.0 is x + (-0.0): x for every x
        return x
    if _is(x, -0.0):  # -0.0 - x is -x for every x (0.0 - x is not: 0.0 - 0.0 = +0.0)
        return new.add("neg", (y,))
    return None


def _mul_rule(new, x, y):
    for one, other in ((y, x), (x, y)):
        if _is(one, 1.0):
            return other
        if _is(one, -1.0):
            return new.add("neg", (other,))
    return None


def _div_rule(new, x, y):
    return x if _is(y, 1.0) else None


def _pow_rule(new, x, y):
    if _is(y, 1.0):
        return x
    if (_is(y, 0.0) or _is(y, -0.0)) and x.shape == ():
        return new.const(1.0)  # pow(x, ±0) is 1 for every x, NaN included
    return None


def _neg_rule(new, x):
    return x.args[0] if x.op == "neg" else None


# op -> rule(new graph, *args): a replacement node or None (keep the op).
_ARITHMETIC = {"add": _add_rule, "sub": _sub_rule, "mul": _mul_rule, "div": _div_rule,
               "pow": _pow_rule, "neg": _neg_rule}


def _unbroadcast_args(args, shape):
    """Elementwise ops broadcast by themselves: ``broadcast_to(y) * x`` is ``y * x`` when the
    result keeps its shape (and a ``fill`` of a scalar is the scalar). None if nothing changes."""
    out, changed = list(args), False
    for i, a in enumerate(args):
        if a.op in ("broadcast_to", "fill"):
            inner = a.args[0]
            others = [b.shape for j, b in enumerate(out) if j != i]
            if np.broadcast_shapes(inner.shape, *others) == shape:
                out[i], changed = inner, True
    return tuple(out) if changed else None


def _reshape_rule(new, node, args):
    """``reshape(sum(x, axis, keepdims=True))`` to the reduced shape is ``sum(x, axis)``;
    reshapes of reshapes collapse."""
    x, (shape,) = args[0], node.attrs
    if x.op in ("sum", "max", "min") and x.attrs[1]:
        axis, source = x.attrs[0], x.args[0]
        if shape == tuple(n for i, n in enumerate(source.shape)
                          if axis is not None and i not in axis):
            return new.add(x.op, (source,), (axis, False))
    if x.op == "reshape":
        inner = x.args[0]
        return inner if inner.shape == shape else new.add("reshape", (inner,), (shape,))
    return None


def dce(graph):
    """Drop every node the outputs do not need (inputs always stay: they are parameters)."""
    return graph.rebuild(keep=live_ids(graph))


def live_ids(graph):
    """Ids of the nodes the outputs need (gradc/derivation.py shows only these steps: the
    rules build contributions nobody uses)."""
    live = {o.id for o in graph.outputs}
    for node in reversed(graph.nodes):
        if node.id in live:
            live.update(a.id for a in node.args)
    return live


@gc_paused
def optimize(graph, max_rounds=4):
    """fold, simplify and dce until nothing changes (a few rounds at most).

    The rounds are ``dce(simplify(fold(graph)))``, computed with fewer replays (large
    programs spend most of their optimization time replaying): each node is folded, then
    simplified, in one replay (simplify's rules read a node's op, attributes and replayed
    arguments, which fold leaves as they are unless it replaces the node); dce replays only
    where a node is dead; and a round whose rules would fire on no node is not run. The
    rules decide from a node and its arguments, and a node the last round kept as it was
    has the same arguments again (nothing before it changed), so its rules say the same:
    only the nodes the rules made last round can fire. Those are tried on a scratch graph.
    """
    for _ in range(max_rounds):
        before = len(graph.nodes)
        graph, made = _fold_and_simplify(graph)
        again = any(_fires(node) for node in made)
        live = live_ids(graph)
        if any(n.id not in live and n.op != "input" for n in graph.nodes):
            graph = graph.rebuild(keep=live)
        if not again or len(graph.nodes) == before:
            break
    return graph


def _rule(new, node, args):
    """fold's replacement for a node, else simplify's, else None."""
    out = _fold_rule(new, node, args)
    return out if out is not None else _simplify_rule(new, node, args)


def _fold_and_simplify(graph):
    """``simplify(fold(graph))`` in one replay, and the nodes its rules made (not yet
    offered to the rules themselves)."""
    made = []

    def rule(new, node, args):
        start = len(new.nodes)
        out = _rule(new, node, args)
        made.extend(n for n in new.nodes[start:] if n.op not in ("input", "const"))
        return out

    return graph.rebuild(rule), made


def _fires(node):
    """Whether fold or simplify would replace ``node`` (tried against a scratch graph, which
    any replacement is built in and thrown away with)."""
    return _rule(Graph("scratch"), node, node.args) is not None
