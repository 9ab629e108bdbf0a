"""Higher-order transforms, each a pure ``Graph -> Graph`` function: Hessians, HVPs, JVPs, Jacobians.

A gradient is a graph like any other, so second derivatives are the forward
sweep of :mod:`gradc.forward` run over the reverse-mode graph of :mod:`gradc.ad`
(forward-over-reverse), built into that same hash-consed graph: every
subexpression of the value, the gradient and the Hessian exists once.

- :func:`hessian`: one sweep per differentiated scalar ``s`` seeded with 1 at
  ``s`` (sparse: only what depends on ``s`` gets a tangent, and only that is visited:
  the sweeps share one :class:`~gradc.forward.ForwardSweeps` plan, so their cost is
  the size of what they build, not ``n`` times the graph's). Column ``j`` gives
  the entries ``H[i, j]`` for ``i <= j``; the lower triangle reuses them, so each
  symmetric pair is computed once. The Hessian is one :class:`~gradc.ir.ArrayOut`
  ``H``: shape ``s + s`` for a single differentiated array parameter of shape
  ``s``, else ``(n, n)`` over the differentiated scalars in argument order.
- :func:`hvp`: one sweep seeded with tangent parameters ``v`` (``v_<name>`` for
  several), of the differentiated parameters' shapes; the result has the
  gradient's structure.
- :func:`jvp`: the same sweep over the function itself: ``(value, value_dot)``.
- :func:`jacobian`: forward (one sweep per input scalar) when there are fewer
  input scalars than outputs, else reverse (one reverse sweep per output);
  shape ``out_shape + in_shape``.
- :func:`sparse`: a Hessian's or Jacobian's graph returning only the entries that
  are not structural zeros, as the ``data`` of a CSR matrix, and the pattern
  (:class:`Sparsity`) that places them, found once from the optimized graph.

Names: the tangent of a named node ``u`` along input ``b`` is ``du_db``, so the
second-order adjoint of ``da`` along ``b`` — a Hessian entry — is ``dda_db``;
along a tangent vector ``v`` it is ``u_dot`` (``du_dot``); a reverse Jacobian names
the adjoint of ``u`` for output ``y`` as ``dy_du``.

>>> from gradc.trace import trace
>>> from gradc.optimize import optimize
>>> def f(a, b):
...     u = a * b
...     return u * u
>>> print(optimize(hessian(trace(f, ["a", "b"], "f"), (0, 1))))
def f(a, b):
    u = a * b
    du = u + u
    du_da = b
    ddu_da = du_da + du_da
    dda_da = ddu_da * b
    du_db = a
    ddu_db = du_db + du_db
    t0 = ddu_db * b
    dda_db = t0 + du
    ddb_db = ddu_db * a
    H = np.empty((2, 2))
    H[0, 0] = dda_da
    H[0, 1] = H[1, 0] = dda_db
    H[1, 1] = ddb_db
    return H
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ad
from .forward import ForwardSweeps, node_name, tangents
from .ir import ArrayOut, Graph, structural_zero
from .optimize import optimize


def wrt_inputs(graph, argnums):
    """The input nodes of the differentiated parameters, in argument order."""
    return [n for p in argnums for n in graph.param_inputs(p)]


def _in_shape(graph, argnums, n):
    """A single array parameter's shape, else the count of differentiated scalars."""
    shape = graph.params[argnums[0]][1] if len(argnums) == 1 else None
    return tuple(shape) if shape is not None else (n,)


def _along(graph, x):
    """Tangent names along the scalar input ``x``: ``u`` -> ``du_dx``."""
    s = graph.names.get(x.id, f"x{x.attrs[0]}")
    return lambda name: f"d{name}_d{s}"


def _dot(name):
    return f"{name}_dot"


def _tangent_params(g, argnums):
    """Add tangent parameters ``v`` (or ``v_<name>``) shaped like the differentiated ones.

    Returns the seeds: input node id -> its tangent parameter's node.
    """
    seeds = {}
    for p in argnums:
        name, shape = g.params[p]
        whole = p in g.whole_params  # an array traced whole gets a tangent traced whole
        nodes = g.param("v" if len(argnums) == 1 else f"v_{name}", shape, whole=whole)
        for x, t in zip(g.param_inputs(p), [nodes] if shape is None or whole else nodes):
            seeds[x.id] = t
    return seeds


def _tangent_of(g, t, node):
    found = t.get(node.id)
    return g.const(0.0) if found is None else found


def _shift(tree, by, suffix):
    """``tree`` with its output numbers moved by ``by`` (array leaves renamed with ``suffix``)."""
    def leaf(item):
        if isinstance(item, ArrayOut):
            return ArrayOut(item.name + suffix, item.shape, tuple(i + by for i in item.indices))
        return item + by

    return tuple(map(leaf, tree)) if isinstance(tree, tuple) else leaf(tree)


def jvp(graph, argnums):
    """``f(x..., v...) -> (f(x), df(x)[v])``, tangent parameters after the primal ones.

    Every output of ``graph`` gets its tangent: the second half of the result has
    the structure of the first.
    """
    g = graph.copy()
    outs = list(g.outputs)
    t = tangents(g, _tangent_params(g, argnums), _dot)
    g.set_outputs(outs + [_tangent_of(g, t, o) for o in outs],
                  (g.out_tree, _shift(g.out_tree, len(outs), "_dot")))
    return g


def hvp(graph, argnums, bare=False):
    """``f(x..., v...) -> H(x) @ v``, shaped like the gradient (bare if asked); H is never formed."""
    g = optimize(ad.value_and_grad(graph, argnums, bare=bare, with_value=False))
    grads = list(g.outputs)
    t = tangents(g, _tangent_params(g, argnums), _dot)

    def leaf(item):
        if isinstance(item, ArrayOut):
            return ArrayOut("Hv" if len(argnums) == 1 else f"Hv_{item.name[1:]}", item.shape,
                            item.indices)
        return item

    tree = g.out_tree
    g.set_outputs([_tangent_of(g, t, o) for o in grads],
                  tuple(map(leaf, tree)) if isinstance(tree, tuple) else leaf(tree))
    return g


def hessian(graph, argnums, bare=False, with_value_grad=False):
    """The Hessian ``H`` (or ``(value, gradient, H)``), each symmetric entry computed once."""
    g = optimize(ad.value_and_grad(graph, argnums, bare=bare, with_value=True))
    wrt = wrt_inputs(g, argnums)
    n, grads, value_grad_tree = len(wrt), g.outputs[1:], g.out_tree[1]
    outputs = list(g.outputs) if with_value_grad else []
    # one plan for the n sweeps, each visiting only what it reaches of what the gradient uses
    upper, sweeps = {}, ForwardSweeps(g, wanted=grads)
    for j, x in enumerate(wrt):
        t = sweeps.tangents({x.id: g.const(1.0)}, _along(g, x))
        for i in range(j + 1):
            upper[i, j] = len(outputs)
            outputs.append(_tangent_of(g, t, grads[i]))
    indices = tuple(upper[min(i, j), max(i, j)] for i in range(n) for j in range(n))
    shape = _in_shape(g, argnums, n)
    leaf = ArrayOut("H", shape + shape, indices)
    g.set_outputs(outputs, (0, value_grad_tree, leaf) if with_value_grad else leaf)
    return g


def jacobian_mode(graph, argnums, mode="auto"):
    """``"forward"`` when there are fewer differentiated scalars than outputs, else ``"reverse"``."""
    if mode != "auto":
        return mode
    return "forward" if len(wrt_inputs(graph, argnums)) < len(graph.outputs) else "reverse"


def _out_shape(graph):
    tree = graph.out_tree
    if isinstance(tree, ArrayOut):
        return tuple(tree.shape)
    return (len(tree),) if isinstance(tree, tuple) else ()


def jacobian(graph, argnums, mode="auto"):
    """The Jacobian of every output (``trace(..., multiple=True)``): ``out_shape + in_shape``.

    ``mode`` is ``"forward"``, ``"reverse"`` or ``"auto"`` (see :func:`jacobian_mode`).
    """
    mode = jacobian_mode(graph, argnums, mode)
    g = graph.copy()
    outs, wrt = list(g.outputs), wrt_inputs(g, argnums)
    rows = [[None] * len(wrt) for _ in outs]
    if mode == "forward":
        sweeps = ForwardSweeps(g)  # one plan for the sweeps: each visits what it reaches
        for j, x in enumerate(wrt):
            t = sweeps.tangents({x.id: g.const(1.0)}, _along(g, x))
            for k, o in enumerate(outs):
                rows[k][j] = _tangent_of(g, t, o)
    elif mode == "reverse":
        for k, o in enumerate(outs):
            single = graph.copy()
            single.set_outputs([single.outputs[k]], 0)
            grad = ad.value_and_grad(single, argnums, bare=True, with_value=False)
            y = node_name(graph, graph.outputs[k]) or f"out{k}"
            mapped = _replay(g, grad, lambda name, y=y: f"d{y}_{name}")
            rows[k] = [mapped[r.id] for r in grad.outputs]
    else:
        raise ValueError(f"jacobian mode must be 'auto', 'forward' or 'reverse', not {mode!r}")
    flat = [entry for row in rows for entry in row]
    shape = _out_shape(graph) + _in_shape(graph, argnums, len(wrt))
    g.set_outputs(flat, ArrayOut("jac", shape, tuple(range(len(flat)))))
    return g


def _replay(dst: Graph, src: Graph, rename):
    """Copy ``src``'s nodes into ``dst`` (inputs matched by position, aliases renamed): id -> node."""
    mapped = {}
    for node in src.nodes:
        if node.op == "input":
            out = dst.inputs[node.attrs[0]]
        elif node.op == "const":
            out = dst.const(node.attrs[0])
        else:
            attrs = (rename(node.attrs[0]),) if node.op == "alias" else node.attrs
            out = dst.add(node.op, tuple(mapped[a.id] for a in node.args), attrs)
            hint = src.names.get(node.id)
            if hint is not None:
                dst.names.setdefault(out.id, hint)
        mapped[node.id] = out
    return mapped


@dataclass(frozen=True)
class Sparsity:
    """Where the stored entries of a sparse Hessian or Jacobian lie: CSR's ``indptr`` and
    ``indices`` for a matrix of ``shape`` (rows, columns), its data in row-major order."""

    shape: tuple
    indptr: np.ndarray
    indices: np.ndarray

    @property
    def nnz(self):
        return len(self.indices)


def _index_dtype(*bounds):
    """int32 where every index fits (as SciPy itself would choose), else int64."""
    return np.int32 if max(bounds, default=0) < 2**31 else np.int64


def sparse(graph, shape):
    """``graph`` (out_tree one ArrayOut, dense) returning only its entries that are not
    structural zeros, and the :class:`Sparsity` placing them in a ``shape`` matrix.

    ``shape`` is (rows, columns) for the array read in C order: ``(n, n)`` for a
    Hessian over ``n`` scalars, ``(m, n)`` for a Jacobian of ``m`` outputs. Row-major
    order of the stored entries is CSR's, so the compiled function's result is the
    matrix's ``data`` as it stands: no sort, no conversion per call. Which entries are
    stored is decided by :func:`gradc.ir.structural_zero`, the test the dense array's
    emission uses, so the two forms always store the same entries. Both entries of a
    symmetric pair keep one output index: written from one value.
    """
    leaf = graph.out_tree
    rows, cols = shape
    if not isinstance(leaf, ArrayOut) or rows * cols != len(leaf.indices):
        raise ValueError(f"sparse: expected one ArrayOut of {rows * cols} entries")
    kept = [(flat, i) for flat, i in enumerate(leaf.indices)
            if not structural_zero(graph.outputs[i])]
    dtype = _index_dtype(len(kept), cols)
    per_row = np.bincount(np.array([flat // cols for flat, _ in kept], dtype=np.intp),
                          minlength=rows)
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(dtype)
    indices = np.array([flat % cols for flat, _ in kept], dtype=dtype)
    # one output per distinct node index, positions sharing an index share it still
    order = {}
    for _, i in kept:
        order.setdefault(i, len(order))
    g = graph.copy()
    g.set_outputs([g.outputs[i] for i in order],
                  ArrayOut(f"{leaf.name}_data", (len(kept),), tuple(order[i] for _, i in kept)))
    for arr in (indptr, indices):
        arr.setflags(write=False)
    return g, Sparsity((rows, cols), indptr, indices)
