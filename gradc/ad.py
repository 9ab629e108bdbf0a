"""Reverse mode: Graph -> Graph that computes the value and its adjoints.

This is the seed's right-to-left sweep. Nodes are visited from the output back
to the inputs; each node's adjoint is the sum of the contributions its users
sent it through their ops' ``vjp`` rules, and it is *finalized* (given its
``dvar`` name) the moment its last user has been visited — so the adjoints come
out in the seed's order: dJ, dv, da, du, db, dc. Nothing is computed twice: the
rules build nodes in the same hash-consed graph as the forward values.

>>> from gradc.trace import trace
>>> def J(a, b, c):
...     u = b * c
...     v = a + u
...     return 3 * v
>>> print(value_and_grad(trace(J, ["a", "b", "c"], "J"), [0, 1, 2]))
def J(a, b, c):
    u = b * c
    v = a + u
    J = 3.0 * v
    dJ = 1.0
    t0 = dJ * v
    dv = dJ * 3.0
    da = dv
    du = dv
    db = du * c
    dc = du * b
    return J, (da, db, dc)

(``t0`` is the contribution to the constant 3; the optimizer drops it.)
"""
from __future__ import annotations

from .ir import ArrayOut, Body, gc_paused
from .ops import OPS, fit
from .optimize import optimize
from .trace import Tracer


def _active(graph, out, wrt_ids):
    """Ids of float nodes that depend on a differentiated input and lead to ``out``."""
    depends = set(wrt_ids)
    for n in graph.nodes:
        if n.result != "bool" and any(a.id in depends for a in n.args):
            depends.add(n.id)
    leads = {out.id}
    for n in reversed(graph.nodes):
        if n.id in leads:
            leads.update(a.id for a in n.args)
    return depends & leads


def adjoint_name(graph, node):
    """The seed's convention: the adjoint of ``v`` is ``dv`` (None for unnamed nodes)."""
    name = graph.names.get(node.id)
    return None if name is None else "d" + name


@gc_paused
def _reverse(g, out, wrt, seed):
    """The reverse sweep over ``g`` (in place): node id -> adjoint node, seeded with ``seed``."""
    active = _active(g, out, {n.id for n in wrt})
    pending = {n.id: 0 for n in g.nodes}           # uses still to be visited, per node
    for n in g.nodes:
        if n.id in active:
            for a in n.args:
                if a.id in active:
                    pending[a.id] += 1
    contributions: dict[int, list] = {}
    adjoint: dict[int, object] = {}

    def finalize(node):
        parts = contributions.pop(node.id)
        total = parts[0]
        for p in parts[1:]:
            total = g.add("add", (total, p))
        name = adjoint_name(g, node)
        adjoint[node.id] = g.add("alias", (total,), (name,)) if name else total

    if out.id in active:
        contributions[out.id] = [seed]
        finalize(out)
    for node in reversed(list(g.nodes)):
        if node.id not in active or node.op in ("input", "const"):
            continue
        rule, adj = OPS[node.op].vjp, adjoint.get(node.id)
        if rule is None or adj is None:  # a zero adjoint: nothing flows, but uses are counted
            cotangents = (None,) * len(node.args)
        else:
            _give_bodies_their_reverse(node)
            wrap = lambda n: Tracer(g, n)  # noqa: E731  (rules build graph through operators)
            cotangents = rule(wrap(adj), wrap(node), *map(wrap, node.args))
        for arg, ct in zip(node.args, cotangents):
            if arg.id not in active:
                continue
            if ct is not None:
                ct = ct if isinstance(ct, Tracer) else Tracer(g, g.const(float(ct)))
                ct_node = fit(ct, arg.shape).node  # broadcasting's adjoint: sum back down
                contributions.setdefault(arg.id, []).append(ct_node)
            pending[arg.id] -= 1
            if pending[arg.id] == 0 and arg.id in contributions:
                finalize(arg)
    return adjoint


def _give_bodies_their_reverse(node):
    """A loop's vjp rule runs the reverse of its body: build it here, once per body (the op
    table sits below this module and cannot differentiate a graph itself)."""
    for attr in node.attrs:
        if isinstance(attr, Body) and attr.reverse is None:
            attr.reverse = Body(optimize(vjp(attr.graph)), attr.n_xs)


def _gradient(g, adjoint, node):
    if node.id in adjoint:
        return adjoint[node.id]
    return g.add("zeros", (), (node.shape, g.dtype)) if node.shape else g.const(0.0)


def value_and_grad(graph, argnums, bare=False, with_value=True):
    """A graph returning ``(value, grads)`` (or only ``grads``).

    ``argnums`` are parameter numbers; grads is a tuple over them (bare if
    asked). An array parameter's gradient is an array of its shape.
    """
    g = graph.copy()
    out = g.outputs[0]
    wrt = [n for p in argnums for n in g.param_inputs(p)]
    adjoint = _reverse(g, out, wrt, g.const(1.0))
    outputs, leaves = [out] if with_value else [], []
    for p in argnums:
        nodes = [_gradient(g, adjoint, n) for n in g.param_inputs(p)]
        first = len(outputs)
        outputs.extend(nodes)
        name, shape = g.params[p]
        leaves.append(first if shape is None or p in g.whole_params else
                      ArrayOut("d" + name, shape, tuple(range(first, len(outputs)))))
    grads = leaves[0] if bare else tuple(leaves)
    g.set_outputs(outputs, (0, grads) if with_value else grads)
    return g


def vjp(graph):
    """``f(p0, ..., pn) -> out`` becomes ``f_vjp(p0, ..., pn, g) -> (dp0, ..., dpn)``.

    The cotangent ``g`` of the (scalar or whole-array) output is a new last
    parameter; every parameter gets its cotangent. Loops use this for their bodies.
    """
    g = graph.copy()
    out = g.outputs[0]
    seed = g.param("g" + (graph.names.get(out.id) or "out"), out.shape or None, whole=bool(out.shape))
    wrt = [n for n in g.inputs if n is not seed]
    adjoint = _reverse(g, out, wrt, seed)
    grads = [_gradient(g, adjoint, n) for n in wrt]
    g.set_outputs(grads, tuple(range(len(grads))))
    return g
