"""Forward mode: push tangents through a graph, building the tangent nodes in the same graph.

The forward rule of every op is *derived* from its ``vjp`` rule in the op table:
for a scalar op ``y = f(x1, .., xk)`` the rule is linear in its adjoint ``g``
and returns ``g * df/dxi`` for input ``i``, so the tangent is
``ydot = sum_i vjp(g=xidot)[i]`` over the inputs that have a tangent. No op needs
a second rule, ops added to the table get forward mode for free, and since the
sweep runs on any graph it also runs on a gradient graph (forward-over-reverse).
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

from .ops import OPS
from .trace import Tracer


def node_name(graph, node):
    """The name a node carries: the user's variable name, or an alias's name (adjoints ``dv``)."""
    if node.op == "alias":
        return node.attrs[0]
    return graph.names.get(node.id)


def tangents(graph, seeds, rename=None):
    """Forward sweep over ``graph`` (built into it, in place).

    ``seeds`` maps input node ids to their tangent nodes. Returns node id -> tangent
    node for every node with a non-zero tangent. ``rename(name)`` names the tangent
    of a named node (``u`` -> ``du_dx``); None leaves tangents unnamed.
    """
    tangent = dict(seeds)
    wrap = lambda n: Tracer(graph, n)  # noqa: E731  (rules build graph through operators)
    for node in list(graph.nodes):     # a snapshot: the sweep appends to graph.nodes
        if node.op in ("input", "const") or node.result != "float":
            continue
        ts = [tangent.get(a.id) for a in node.args]
        if all(t is None for t in ts):
            continue
        if node.op == "alias":
            total = ts[0]
        elif node.op == "where":
            zero = graph.const(0.0)
            total = graph.add("where", (node.args[0], ts[1] or zero, ts[2] or zero))
        else:
            rule, parts = OPS[node.op].vjp, []
            for i, t in enumerate(ts):
                if t is None or rule is None:
                    continue
                ct = rule(wrap(t), wrap(node), *map(wrap, node.args))[i]
                if ct is not None:
                    parts.append(ct.node if isinstance(ct, Tracer) else graph.const(float(ct)))
            if not parts:
                continue
            total = parts[0]
            for p in parts[1:]:
                total = graph.add("add", (total, p))
        name = node_name(graph, node)
        if rename is not None and name is not None:
            total = graph.add("alias", (total,), (rename(name),))
        tangent[node.id] = total
    return tangent
