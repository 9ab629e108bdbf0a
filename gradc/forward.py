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


def _needed(wanted):
    """Ids of the nodes whose tangent one of the ``wanted`` nodes can use: all that lead to
    one, except through a user rule's value (``custom``'s first argument: its forward rule is
    the user's, so the tangent of the function's own code, a gradc.scan in it say, is never
    built)."""
    needed, stack = set(), list(wanted)
    while stack:
        node = stack.pop()
        if node.id in needed:
            continue
        needed.add(node.id)
        stack.extend(node.args[1:] if node.op == "custom" else node.args)
    return needed


class ForwardSweeps:
    """Forward sweeps over one graph, each visiting only the nodes its seeds reach.

    A Hessian or a forward Jacobian runs one sweep per input scalar over the same graph.
    Scanning the whole graph for each made them quadratic in the inputs (n = 200: 200
    sweeps over ~3,400 nodes, most of them untouched by each seed). This computes once,
    from the graph as it stands, which nodes an output can use (:func:`_needed`) and, for
    each node, the needed nodes that take it as an argument; a sweep then follows those
    edges from its seeds and visits what it reached in graph order (node ids are positions
    in ``graph.nodes`` and every argument precedes its users, so sorted ids are a
    topological order: deterministic, no recursion).

    ``wanted`` are the nodes whose tangents the caller reads (default: the graph's
    outputs). A Hessian wants the gradient's: the value's own tangent is never read, and
    building it cost each sweep the whole tail of a summation chain (``np.sum(x ** 3)``
    unrolled: input ``j`` reaches every partial sum after ``j``), quadratic again.

    A node that a seed does not reach has no tangent, so skipping it is what the full scan
    did too. Nodes that sweeps add later are never needed (the wanted nodes' ancestors all
    existed already), so one plan serves any number of sweeps.

    ``visits`` counts the nodes looked at, the plan's own scan included: a measure of the
    work that does not depend on the machine's speed.
    """

    def __init__(self, graph, wanted=None):
        self.graph = graph
        needed = _needed(graph.outputs if wanted is None else wanted)
        self._users = self._needed_users(graph, needed)
        self.visits = len(graph.nodes)

    @staticmethod
    def _needed_users(graph, needed):
        """Node id -> ids of the needed nodes that can get a tangent from it, in graph order.

        Inputs and constants have no rule, and a ``bool`` result (a comparison) has no
        tangent: no sweep visits them, so no edge leads to them. (A loop's tuple value is
        kept: its rule must see the tangent.)
        """
        users = {}
        for node in graph.nodes:
            if node.id not in needed or node.op in ("input", "const") or node.result == "bool":
                continue
            for a in node.args:
                edges = users.setdefault(a.id, [])
                if not edges or edges[-1] != node.id:  # x * x: one edge
                    edges.append(node.id)
        return users

    def _reached(self, seeds):
        """Ids of the nodes a tangent from ``seeds`` can reach, in graph order."""
        users, seen, stack = self._users, set(), list(seeds)
        while stack:
            for user in users.get(stack.pop(), ()):
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
        return sorted(seen)

    def tangents(self, seeds, rename=None):
        """One forward sweep (built into the graph, in place); see :func:`tangents`."""
        graph = self.graph
        tangent = dict(seeds)
        wrap = lambda n: Tracer(graph, n)  # noqa: E731  (rules build graph through operators)
        reached = self._reached(seeds)
        self.visits += len(reached)
        nodes = graph.nodes
        for i in reached:
            node = nodes[i]
            total = _tangent_rule(graph, node, [tangent.get(a.id) for a in node.args], wrap)
            if total is None:
                continue
            name = node_name(graph, node)
            if rename is not None and name is not None:
                total = graph.add("alias", (total,), (rename(name),))
            tangent[node.id] = total
        return tangent


def _tangent_rule(graph, node, ts, wrap):
    """The tangent node of ``node`` from its arguments' tangents ``ts`` (None: zero), or
    None where it is zero."""
    if all(t is None for t in ts):
        return None
    if node.op == "alias":
        return ts[0]
    if node.op == "where":
        zero = graph.const(0.0)
        return graph.add("where", (node.args[0], ts[1] or zero, ts[2] or zero))
    if OPS[node.op].jvp is not None:
        t = OPS[node.op].jvp([None if t is None else wrap(t) for t in ts], wrap(node),
                             *map(wrap, node.args))
        if t is None:  # the rule says the tangent is zero
            return None
        return t.node if isinstance(t, Tracer) else graph.const(float(t))
    return _from_vjp(graph, node, ts, wrap)


def tangents(graph, seeds, rename=None, wanted=None):
    """Forward sweep over ``graph`` (built into it, in place).

    ``seeds`` maps input node ids to their tangent nodes. Returns node id -> tangent
    node for every node with a non-zero tangent. ``rename(name)`` names the tangent
    of a named node (``u`` -> ``du_dx``); None leaves tangents unnamed. Only the
    tangents ``wanted`` nodes can use are built (default: the graph's outputs). Several
    sweeps over one graph share their plan through :class:`ForwardSweeps`.
    """
    return ForwardSweeps(graph, wanted).tangents(seeds, rename)
