"""The derivation of a function at a point, step by step: what ``gradc.explain`` prints as a
table and ``gradc.draw`` draws as a picture.

:func:`derive` traces the function with its arrays whole, takes the un-optimized
reverse-mode graph (or forward over reverse, for second order), evaluates it node
by node in Python and splits it into named rows (:class:`Step`): forward values,
then adjoints, then second-order entries. Where it is small enough (``ELEMENT_ROWS``)
the graph is first unrolled into one scalar node per array element (gradc/unroll.py),
which is the seed's right-to-left derivation; see gradc/explain.py for the two views.

:func:`steps` and :func:`expression` (with gradc.optimize.live_ids) name and write the steps of
any graph; gradc.draw also uses them for its collapsed picture of the optimized IR.

This module sits below both of its readers: gradc/explain.py (the table, which hands
pictures to gradc/draw.py) and gradc/draw.py import it, and it imports neither
(``.importlinter``'s ``explain`` contract).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import ad
from .api import GradcFunction, _origin, array_elements, function_name
from .emit import assign_names, literal
from .errors import ArgumentError, UnsupportedFunctionError, where
from .ir import Graph, evaluate
from .ops import OPS
from .optimize import live_ids
from .trace import trace
from .unroll import UnrollError, unroll

#: explain shows arrays element by element while that table has at most this many rows (a
#: screen); a longer one is shown with arrays whole, one row per array op (gradc/explain.py
#: says why).
ELEMENT_ROWS = 40


def expression(node, names):
    """``node``'s op written over its arguments' names, constants inline (``3.0 * v``)."""
    op = OPS[node.op]
    if op.statement:  # a loop: its statements do not fit one expression
        return f"{node.op}({', '.join(names.get(a.id, '?') for a in node.args)})"
    args = [literal(a.attrs[0]) if a.op == "const" else names[a.id] for a in node.args]
    return op.render(args, node.attrs, "np", is_array=bool(node.shape))


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
    element by element while that table has at most ``ELEMENT_ROWS`` rows (gradc/explain.py).
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
