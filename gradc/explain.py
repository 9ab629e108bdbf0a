"""``gradc.explain``: the seed's derivation as a table — forward values left to right, adjoints right to left.

The table is read off the un-optimized reverse-mode graph, evaluated node by
node in Python, so every adjoint the seed names (``dJ = 1`` included) appears
with the expression that produced it.
"""
from __future__ import annotations

import sys

import numpy as np

from . import ad
from .api import GradcFunction, _origin, function_name
from .emit import assign_names, literal
from .errors import ArgumentError
from .ir import evaluate
from .ops import OPS
from .trace import trace


def _expression(node, names):
    op = OPS[node.op]
    args = [literal(a.attrs[0]) if a.op == "const" else names[a.id] for a in node.args]
    return op.template.format(*args, np="np")


def _number(v):
    if np.ndim(v):
        return np.array2string(np.asarray(v), precision=6, threshold=8, separator=", ")
    v = float(v)
    return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def explain(f, *args, file=None):
    """Print how ``f``'s value and gradient at ``args`` are computed, one named step a line.

    >>> def J(a, b, c):
    ...     u = b * c
    ...     v = a + u
    ...     return 3 * v
    >>> explain(J, 5, 3, 2)  # doctest: +NORMALIZE_WHITESPACE
    J(a=5, b=3, c=2) = 33
    forward, left to right:
      u  = b * c      = 6
      v  = a + u      = 11
      J  = 3.0 * v    = 33
    reverse, right to left (dvar = dJ/dvar):
      dJ = 1.0        = 1
      dv = dJ * 3.0   = 3
      da = dv         = 3
      du = dv         = 3
      db = du * c     = 6
      dc = du * b     = 9
    """
    fn = f._fn if isinstance(f, GradcFunction) else f
    kind = getattr(f, "_kind", "value_and_grad")
    second = kind in ("hessian", "value_grad_hessian")
    if kind not in ("value_and_grad", "grad", "compile") and not second:
        raise ArgumentError(f"gradc.explain covers gradients and Hessians, not gradc.{kind}.")
    name = function_name(fn)
    probe = GradcFunction(fn, "value_and_grad", backend="python")
    values_in = probe._bind(args, {})
    shapes = [None if isinstance(v, float) else v.shape for v in values_in]
    graph = trace(fn, list(zip(probe._arg_names(len(values_in)), shapes)), name, _origin(fn))
    argnums = tuple(range(len(values_in)))
    boundary = None
    if second:  # forward over reverse, on the optimized gradient graph (as gradc.hessian does)
        from .higher import hessian
        from .optimize import optimize

        boundary = len(optimize(ad.value_and_grad(graph, argnums, with_value=True)).nodes)
        graph = hessian(graph, argnums, with_value_grad=True)
    else:
        graph = ad.value_and_grad(graph, argnums)
    live = {o.id for o in graph.outputs}  # skip contributions nobody uses (the rules build both sides)
    for node in reversed(graph.nodes):
        if node.id in live:
            live.update(a.id for a in node.args)
    values = evaluate(graph, values_in)
    names, absorbed, _ = assign_names(graph, name)
    forward, reverse, order2 = [], [], []
    targets = {n.args[0].id for n in graph.nodes if n.id in absorbed}  # printed by their alias
    n_forward = max((i for i, n in enumerate(graph.nodes) if n.op != "alias"
                     and i <= graph.outputs[0].id), default=0)
    for node in graph.nodes:
        if node.op in ("input", "const") or node.id not in live:
            continue
        if node.op == "alias":
            target = node.args[0]
            expr = (_expression(target, names) if target.id in absorbed
                    or names.get(target.id) == names[node.id]
                    else literal(target.attrs[0]) if target.op == "const" else names[target.id])
            rows = order2 if boundary is not None and node.id >= boundary else reverse
            rows.append((names[node.id], expr, values[node.id]))
        elif node.id not in targets:  # unnamed steps too, so every name used has a row
            rows = (forward if node.id <= n_forward else
                    order2 if boundary is not None and node.id >= boundary else reverse)
            rows.append((names[node.id], _expression(node, names), values[node.id]))
    rows = forward + reverse + order2
    w_name = max((len(r[0]) for r in rows), default=1)
    w_expr = max((len(r[1]) for r in rows), default=1)
    fmt = lambda r: f"  {r[0]:<{w_name}} = {r[1]:<{w_expr}} = {_number(r[2])}"  # noqa: E731
    params = ", ".join(f"{p}={_number(v)}" for p, v in zip(names["params"], values_in))
    lines = [f"{name}({params}) = {_number(values[graph.outputs[0].id])}",
             "forward, left to right:", *map(fmt, forward),
             "reverse, right to left (dvar = d{0}/dvar):".format(name), *map(fmt, reverse)]
    if second:
        lines += ["second order, forward over reverse (ddv_dx = d(dv)/dx; "
                  "dda_db is the Hessian entry for a, b):", *map(fmt, order2)]
    print("\n".join(lines), file=file or sys.stdout)
