"""Forward mode: push tangents through a graph, building the tangent nodes in the same graph.

An op's forward rule is its ``jvp`` entry in the op table where it has one (the
array ops: a linear op such as ``sum``, ``getitem`` or ``broadcast_to`` applies
itself to the tangent; ``matmul`` is bilinear). Elementwise ops *derive* theirs
from their ``vjp`` rule: for ``y = f(x1, .., xk)`` the rule is linear in its
adjoint ``g`` and returns ``g * df/dxi`` for input ``i``, so the tangent is
``ydot = sum_i vjp(g=xidot)[i]`` over the inputs that have a tangent (arguments
broadcast to the output's shape first). Elementwise ops added to the table get
forward mode for free, and since the sweep runs on any graph it also runs on a
gradient graph (forward-over-reverse).
``alias`` is an identity (its tangent is its argument's, renamed) and ``where``
selects between the tangents of its branches.

A tangent is ``None`` where it is zero, so a sweep seeded at one input only
builds nodes for what depends on that input.

>>> from gradc.trace import trace
>>> from gradc.optimize import optimize
>>> g = trace(lambda x, y: x * y + x, ["x", "y"], "f")
>>> x, y = g.inputs
>>> t = tangents(g, {x.id: g.const(1.0)}, lambda name: "d" + name + "_dx")
>>> g.set_outputs([t[g.outputs[0].id]], 0)
>>> print(optimize(g))
def f(x, y):
    df_dx = y + 1.0
    return df_dx
"""
from __future__ import annotations

from .ops import OPS, broadcast_to
from .trace import Tracer


def node_name(graph, node):
    """The name a node carries: the user's variable name, or an alias's name (adjoints ``dv``)."""
    if node.op == "alias":
        return node.attrs[0]
    return graph.names.get(node.id)


def _from_vjp(graph, node, ts, wrap):
    """An elementwise op's tangent, from its vjp rule: ``sum_i vjp(g=ts[i])[i]``.

    The rule is linear in ``g``; it is called with the tangents, and the arguments
    that have one, broadcast to the output's shape, so its ``fit`` (which sums a cotangent down to
    a broadcast argument's shape) has nothing to sum: each part is the output-shaped
    ``ts[i] * df/dx_i``. For scalar programs every shape is ``()`` and nothing is broadcast.
    """
    rule, shape, parts = OPS[node.op].vjp, node.shape, []
    if rule is None:
        return None
    up = lambda n: wrap(n) if n.shape == shape else broadcast_to(wrap(n), shape)  # noqa: E731
    args = [wrap(a) if t is None else up(a) for a, t in zip(node.args, ts)]
    for i, t in enumerate(ts):
        if t is None:
            continue
        ct = rule(up(t), wrap(node), *args)[i]
        if ct is not None:
            parts.append(ct.node if isinstance(ct, Tracer) else graph.const(float(ct)))
    if not parts:
        return None
    total = parts[0]
    for p in parts[1:]:
        total = graph.add("add", (total, p))
    return total


def _needed(graph):
    """Ids of the nodes whose tangent an output can use: all that lead to an output, except
    through a user rule's value (``custom``'s first argument: its forward rule is the user's,
    so the tangent of the function's own code, a gradc.scan in it say, is never built)."""
    needed, stack = set(), [o for o in graph.outputs]
    while stack:
        node = stack.pop()
        if node.id in needed:
            continue
        needed.add(node.id)
        stack.extend(node.args[1:] if node.op == "custom" else node.args)
    return needed


def tangents(graph, seeds, rename=None):
    """Forward sweep over ``graph`` (built into it, in place).

    ``seeds`` maps input node ids to their tangent nodes. Returns node id -> tangent
    node for every node with a non-zero tangent. ``rename(name)`` names the tangent
    of a named node (``u`` -> ``du_dx``); None leaves tangents unnamed.
    """
    tangent = dict(seeds)
    wrap = lambda n: Tracer(graph, n)  # noqa: E731  (rules build graph through operators)
    needed = _needed(graph)
    for node in list(graph.nodes):     # a snapshot: the sweep appends to graph.nodes
        if node.op in ("input", "const") or node.result == "bool" or node.id not in needed:
            continue  # (a loop's tuple value is not skipped: its rule must see the tangent)
        ts = [tangent.get(a.id) for a in node.args]
        if all(t is None for t in ts):
            continue
        if node.op == "alias":
            total = ts[0]
        elif node.op == "where":
            zero = graph.const(0.0)
            total = graph.add("where", (node.args[0], ts[1] or zero, ts[2] or zero))
        elif OPS[node.op].jvp is not None:
            t = OPS[node.op].jvp([None if t is None else wrap(t) for t in ts], wrap(node),
                                 *map(wrap, node.args))
            if t is None:  # the rule says the tangent is zero
                continue
            total = t.node if isinstance(t, Tracer) else graph.const(float(t))
        else:
            total = _from_vjp(graph, node, ts, wrap)
            if total is None:
                continue
        name = node_name(graph, node)
        if rename is not None and name is not None:
            total = graph.add("alias", (total,), (rename(name),))
        tangent[node.id] = total
    return tangent
