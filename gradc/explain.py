"""``gradc.explain``: the seed's derivation as a table — forward values left to right, adjoints right to left.

The table is read off the un-optimized reverse-mode graph, evaluated node by
node in Python, so every adjoint the seed names (``dJ = 1`` included) appears
with the expression that produced it. :func:`derive` computes that derivation
(graph, values, names, adjoints, rows) once; :func:`explain` prints it as a
table and ``gradc.draw`` (gradc/draw.py) draws it as a picture.

Arrays are traced whole, as every gradc transformation traces them (one node per
array op). The derivation is then shown in one of two views of that one graph:

- element by element (``x_0``, ``dx_2``): the whole-array graph unrolled by the
  pure pass ``gradc.unroll``, then differentiated as the seed's scalars are. This
  is the right-to-left derivation of a small model, and what explain shows while
  that table has at most ``ELEMENT_ROWS`` rows;
- arrays whole (``t3 = t0 - t2 = [0.29, 0.41, ...]``, ``dx = t45 + t46``): one row
  per array op. Past ``ELEMENT_ROWS`` rows this reads better: Rosenbrock at
  n = 5 is 96 rows element by element and 26 rows whole, each row one step a
  reader recognises from the code (``x[1:]``, ``x[:-1] ** 2``, a scatter back
  into ``dx``), at any n.

``elements=True`` / ``False`` asks for either view. Second order (Hessians) is
element by element: its entries are built one scalar input at a time.
"""
from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import ad
from .api import GradcFunction, _origin, array_elements, function_name
from .emit import assign_names, literal
from .errors import ArgumentError, UnsupportedFunctionError, where
from .ir import Graph, evaluate
from .ops import OPS
from .trace import trace
from .unroll import UnrollError, unroll

#: explain shows arrays element by element while that table has at most this many rows (a
#: screen); a longer one is shown with arrays whole, one row per array op (see the module).
ELEMENT_ROWS = 40


def expression(node, names):
    """``node``'s op written over its arguments' names, constants inline (``3.0 * v``)."""
    op = OPS[node.op]
    if op.statement:  # a loop: its statements do not fit one expression
        return f"{node.op}({', '.join(names.get(a.id, '?') for a in node.args)})"
    args = [literal(a.attrs[0]) if a.op == "const" else names[a.id] for a in node.args]
    return op.render(args, node.attrs, "np", is_array=bool(node.shape))


def _number(v):
    if np.ndim(v):  # on one line, whatever the rank: the table keeps one row per step
        text = np.array2string(np.asarray(v), precision=6, threshold=8, separator=", ")
        return re.sub(r"\n\s*", " ", text)
    v = float(v)
    return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


@dataclass
class Step:
    """One named step of a graph as the table (and the picture) shows it.

    ``node`` is the node whose value the step is (an alias carries a ``dvar``
    name); ``computed`` is the node whose op computes it (an alias folded into
    its target shows the target's expression); ``name`` and ``expr`` are text.
    """

    node: object
    computed: object
    name: str
    expr: str


def live_ids(graph):
    """Ids of the nodes the outputs need (the rules build contributions nobody uses)."""
    live = {o.id for o in graph.outputs}
    for node in reversed(graph.nodes):
        if node.id in live:
            live.update(a.id for a in node.args)
    return live


def steps(graph, names, absorbed, live):
    """The steps of ``graph`` in order: every live node but inputs and constants, each alias
    folded into its target shown once, by its alias (``dv = dJ * 3.0``)."""
    targets = {n.args[0].id for n in graph.nodes if n.id in absorbed}  # shown by their alias
    out = []
    for node in graph.nodes:
        if node.op in ("input", "const") or node.id not in live:
            continue
        if node.op == "alias":
            target = node.args[0]
            if target.id in absorbed or names.get(target.id) == names[node.id]:
                computed = target if node.id in absorbed else node  # da = dv reads dv itself
                out.append(Step(node, computed, names[node.id], expression(target, names)))
            else:
                expr = literal(target.attrs[0]) if target.op == "const" else names[target.id]
                out.append(Step(node, node, names[node.id], expr))
        elif node.id not in targets:  # unnamed steps too, so every name used has a row
            out.append(Step(node, node, names[node.id], expression(node, names)))
    return out


@dataclass
class Derivation:
    """A function's value and gradient at one point, step by step (what explain prints).

    ``graph`` is the un-optimized reverse-mode graph, ``values`` its node values,
    ``names`` its identifiers; ``n_traced`` nodes at the start of ``graph`` are the
    traced forward program, ``adjoint`` maps each of their ids to its adjoint's node
    (first order only); ``forward``/``reverse``/``order2`` are the rows, as Steps;
    ``elements`` says whether arrays are shown element by element or whole.
    """

    name: str
    args: tuple
    graph: Graph
    values: dict
    names: dict
    n_traced: int
    adjoint: dict
    forward: list = field(default_factory=list)
    reverse: list = field(default_factory=list)
    order2: list = field(default_factory=list)
    second: bool = False
    elements: bool = True  # arrays element by element (False: arrays whole, one row per op)

    @property
    def params(self):
        return self.names["params"]

    @property
    def rows(self):
        """Every row of the table, in order."""
        return self.forward + self.reverse + self.order2

    def value(self, node):
        return self.values[node.id]


def _kind(f):
    kind = getattr(f, "_kind", "value_and_grad")
    if kind not in ("value_and_grad", "grad", "compile", "hessian", "value_grad_hessian"):
        raise ArgumentError(f"gradc.explain covers gradients and Hessians, not gradc.{kind}.")
    return kind


def traced(f, args):
    """``(fn, name, arguments, graph)``: ``f`` (a gradc function or a plain one) traced at
    ``args`` with its arrays whole (one node per array op, as every gradc transformation
    traces), the arguments checked and converted as a call checks them."""
    fn = f._fn if isinstance(f, GradcFunction) else f
    name = function_name(fn)
    probe = GradcFunction(fn, "value_and_grad", backend="python")
    values_in = probe._bind(args, {})
    shapes = [None if isinstance(v, float) else v.shape for v in values_in]
    params = [(p, s, True) for p, s in zip(probe._arg_names(len(values_in)), shapes)]
    graph = trace(fn, params, name, _origin(fn))
    return fn, name, values_in, graph


def element_view(graph, required_for=None):
    """``graph`` with its arrays unrolled into one scalar node per element (gradc/unroll.py):
    the seed's scalar program. None where the unroll pass has no scalar form for an op of
    ``graph``; with ``required_for`` (what needs the elements), an error saying so instead."""
    if not graph.whole_params:
        return graph  # floats only: already scalar
    try:
        return unroll(graph)
    except UnrollError as exc:
        if required_for is None:
            return None
        raise UnsupportedFunctionError(
            f"{where()}: gradc.explain shows {required_for} element by element, and this "
            f"function uses an array op that has no element-by-element form ({exc}); call "
            f"gradc.explain(f, ...) for the first-order derivation with arrays whole, or "
            f"compute it with gradc.hessian directly.") from None


def _first_order(graph, argnums):
    """The reverse sweep over a copy of ``graph``, the adjoint of each traced node, and how
    many nodes at the start of the result are the traced program.

    This is ``ad.value_and_grad`` keeping its adjoint map (the picture pairs each
    value with its adjoint); the outputs are the value and the gradients, as there.
    """
    g = graph.copy()
    n_traced = len(g.nodes)  # the copy's own count: replaying may merge nodes
    wrt = [n for p in argnums for n in g.param_inputs(p)]
    adjoint = ad._reverse(g, g.outputs[0], wrt, g.const(1.0))
    g.set_outputs([g.outputs[0]] + [ad._gradient(g, adjoint, n) for n in wrt], 0)
    return g, adjoint, n_traced


def derive(f, *args, order=None, elements=None):
    """The derivation of ``f`` at ``args``: order 1 (value and gradient) or 2 (forward over
    reverse, as gradc.hessian computes); by default the order ``f``'s kind asks for.

    ``elements``: True shows arrays element by element, False whole, None (the default)
    element by element while that table has at most ``ELEMENT_ROWS`` rows (see the module).
    Where the elements have no scalar form (an op the unroll pass lacks), arrays stay whole.
    """
    if elements not in (None, True, False):
        raise ArgumentError(f"{where()}: elements must be None, True or False, not {elements!r}.")
    kind = _kind(f)
    second = order == 2 if order else kind in ("hessian", "value_grad_hessian")
    fn, name, values_in, graph = traced(f, args)
    if second:
        if elements is False:
            raise ArgumentError(f"{where()}: gradc.explain shows second order element by "
                                "element (a Hessian is built one scalar input at a time); "
                                "leave elements= out.")
        return _derivation(name, values_in, element_view(graph, "second order"), True)
    small = array_elements([None if isinstance(v, float) else v.shape for v in values_in]) \
        <= ELEMENT_ROWS  # each element costs at least one row: no need to unroll to know
    if elements or elements is None and small:
        scalar = element_view(graph)
        if scalar is not None:
            d = _derivation(name, values_in, scalar, False)
            if elements or len(d.rows) <= ELEMENT_ROWS:
                return d
    return _derivation(name, values_in, graph, False)


def _derivation(name, values_in, graph, second):
    """The Derivation of the traced ``graph`` (element by element or arrays whole) at
    ``values_in``: its reverse sweep (and, ``second``, forward over it), evaluated and
    split into rows."""
    n_traced = len(graph.nodes)
    elements = not graph.whole_params
    argnums = tuple(range(len(values_in)))
    boundary, adjoint = None, {}
    if second:  # forward over reverse, on the optimized gradient graph (as gradc.hessian does)
        from .higher import hessian
        from .optimize import optimize

        boundary = len(optimize(ad.value_and_grad(graph, argnums, with_value=True)).nodes)
        graph = hessian(graph, argnums, with_value_grad=True)
    else:
        graph, adjoint, n_traced = _first_order(graph, argnums)
    values = evaluate(graph, values_in)
    names, absorbed, _ = assign_names(graph, name)
    result = Derivation(name, values_in, graph, values, names, n_traced, adjoint, second=second,
                        elements=elements)
    n_forward = max((i for i, n in enumerate(graph.nodes) if n.op != "alias"
                     and i <= graph.outputs[0].id), default=0)
    for step in steps(graph, names, absorbed, live_ids(graph)):
        i = step.node.id
        if step.node.op == "alias":
            rows = result.order2 if boundary is not None and i >= boundary else result.reverse
        else:
            rows = (result.forward if i <= n_forward else
                    result.order2 if boundary is not None and i >= boundary else result.reverse)
        rows.append(step)
    return result


class Explanation:
    """What :func:`explain` returns: the table as ``text``, the derivation behind it as
    ``derivation``, ``draw()`` for its picture; Jupyter displays it as that picture."""

    def __init__(self, f, args, derivation, text):
        self._f, self._args, self.derivation, self.text = f, args, derivation, text

    def draw(self, **options):
        """The picture of the same graph: ``gradc.draw(f, *args, **options)``."""
        from .draw import draw

        return draw(self._f, *self._args, **options)

    def _repr_svg_(self):
        from .draw import DrawingUnavailable

        try:
            return self.draw().svg()
        except DrawingUnavailable as exc:  # the table was printed; say why no picture follows
            warnings.warn(str(exc), stacklevel=2)
            return None

    def __str__(self):
        return self.text

    def __repr__(self):
        return f"<gradc.explain of {self.text.splitlines()[0]}: .text, .draw()>"


def explain(f, *args, file=None, elements=None):
    """Print how ``f``'s value and gradient at ``args`` are computed, one named step a line.

    Returns an :class:`Explanation` (the table as ``.text``, ``.draw()`` for the picture,
    which Jupyter shows by itself). Arrays are shown element by element while that table
    is short, else whole (``elements=True`` / ``False`` chooses; see the module).

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
    <gradc.explain of J(a=5, b=3, c=2) = 33: .text, .draw()>
    """
    d = derive(f, *args, elements=elements)
    rows = [(s.name, s.expr) for s in d.rows]
    w_name = max((len(r[0]) for r in rows), default=1)
    w_expr = max((len(r[1]) for r in rows), default=1)

    def fmt(step):
        return f"  {step.name:<{w_name}} = {step.expr:<{w_expr}} = {_number(d.value(step.node))}"

    params = ", ".join(f"{p}={_number(v)}" for p, v in zip(d.params, d.args))
    lines = [f"{d.name}({params}) = {_number(d.values[d.graph.outputs[0].id])}",
             "forward, left to right:", *map(fmt, d.forward),
             "reverse, right to left (dvar = d{0}/dvar):".format(d.name), *map(fmt, d.reverse)]
    if d.second:
        lines += ["second order, forward over reverse (ddv_dx = d(dv)/dx; "
                  "dda_db is the Hessian entry for a, b):", *map(fmt, d.order2)]
    text = "\n".join(lines)
    print(text, file=file or sys.stdout)
    return Explanation(f, args, d, text)
