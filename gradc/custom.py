"""User-defined derivative rules: ``gradc.custom_vjp`` and ``gradc.custom_jvp``, as in JAX.

A function whose derivative the user knows better than its code says (a stable formula, an
implicit function solved by iterations) is decorated, and given its rule::

    @gradc.custom_vjp
    def softplus(x):
        return np.log(1.0 + np.exp(x))

    def softplus_fwd(x):
        return softplus(x), x                     # the value and the residuals bwd needs

    def softplus_bwd(x, g):
        return (g / (1.0 + np.exp(-x)),)          # one cotangent per argument

    softplus.defvjp(softplus_fwd, softplus_bwd)

or ``@gradc.custom_jvp`` with ``f.defjvp(jvp)``, ``jvp(primals, tangents) -> (value,
tangent)``; both take ``nondiff_argnums`` (those arguments are passed to the rules first,
as JAX does, and are part of the cache key).

How it is traced. Called on traced values, the decorated function runs its own code inline
(that is the value: every backend and the loop lowering compile it as they compile anything
else) and records one ``custom`` node ``custom(value, *args)`` whose attribute is a
:class:`Rule` (one per function and argument shapes, hashed by identity). The reverse rule of
``custom`` gives the value argument no cotangent, so differentiation never goes through the
function's own code; it replays the *rule graphs*:

- ``vjp_graph(xs, g, ts) -> one cotangent per x``: for custom_vjp, ``bwd(fwd(xs)[1], g)``;
  for custom_jvp, the transpose of the jvp (the gradient of ``<jvp(xs, ts), g>`` in ``ts``);
- ``jvp_graph(xs, g, ts) -> the output's tangent``: for custom_jvp, the user's jvp; for
  custom_vjp, the transpose of bwd (the gradient of ``<bwd(xs, g), ts>`` in ``g``). JAX refuses
  forward mode of custom_vjp functions; gradc's hvp and hessian are forward-over-reverse, so
  it transposes.

The rule graphs are traced from the user's functions once per argument shapes, the first time
a derivative needs them (at trace time: never per call), and the transposes are built by
gradc's own reverse mode. The rules must be linear in ``g`` (and in the tangents); a rule that
is not is refused when it is transposed. Replayed, a rule graph is ordinary graph, so it is
differentiated again for higher orders (and may call custom functions itself, this one too).

In unrolled programs (hessian and jacobian unroll arrays into scalars before differentiating)
an array-valued custom function becomes one scalar ``custom`` node per element, each with an
:class:`ElementRule` that replays the unrolled rule graphs; absent (zero) cotangents and
tangents stay symbolic zeros in the replay, so an elementwise rule costs one chain per element.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from . import errors

__all__ = ["custom_vjp", "custom_jvp", "strip"]


# --- the decorators -----------------------------------------------------------------------
class _CustomFunction:
    """A function with a user-defined derivative rule (see the module docstring)."""

    kind = "custom"

    def __init__(self, fun, nondiff_argnums=()):
        if not callable(fun):
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.{self.kind} decorates a function; got "
                f"{type(fun).__name__}.")
        self.fun = fun
        self.nondiff_argnums = _argnums(nondiff_argnums, self.kind)
        self._rules = {}  # (argument shapes, non-differentiated arguments) -> Rule
        functools.update_wrapper(self, fun)

    @property
    def name(self):
        return getattr(self.fun, "__name__", "function")

    @property
    def __code__(self):
        """The decorated function's code: gradc transformations of this object name their
        source after it (and read its locals' names), as for the function itself."""
        return getattr(self.fun, "__code__", None)

    def _positional(self, args, kwargs):
        if not kwargs:
            return tuple(args)
        try:
            bound = inspect.signature(self.fun).bind(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            raise errors.ArgumentError(f"{errors.where()}: {self.name}(): {exc}.") from None
        bound.apply_defaults()
        if bound.kwargs:
            raise errors.ArgumentError(
                f"{errors.where()}: {self.name}() has keyword-only parameters; a gradc."
                f"{self.kind} function takes its arguments by position.")
        return tuple(bound.args)

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        for i in self.nondiff_argnums:
            if i >= len(args):
                raise errors.ArgumentError(
                    f"{errors.where()}: {self.name}() got {len(args)} argument(s), but "
                    f"nondiff_argnums names argument {i}.")
        diff = [i for i in range(len(args)) if i not in self.nondiff_argnums]
        tracer = _first_tracer([args[i] for i in diff])
        if tracer is None:  # nothing traced (or only the non-differentiated arguments)
            return self.fun(*args)
        return _traced_call(self, args, diff, tracer)

    def _rule(self, key, out_shape, shapes, nondiff):
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = Rule(self, shapes, out_shape, nondiff)
        return rule

    def __repr__(self):
        return f"<gradc.{self.kind} {self.name}>"


class custom_vjp(_CustomFunction):  # noqa: N801  (JAX's spelling)
    """``@gradc.custom_vjp``: ``f.defvjp(fwd, bwd)`` gives ``f`` its reverse-mode rule.

    ``fwd(*args) -> (value, residuals)``; ``bwd(*nondiff_args, residuals, g) -> one
    cotangent per differentiated argument`` (a tuple; None is a zero), with JAX's
    conventions. Forward mode (jvp, hvp, hessian) transposes ``bwd``, which must be linear
    in ``g``.
    """

    kind = "custom_vjp"

    def __init__(self, fun, nondiff_argnums=()):
        super().__init__(fun, nondiff_argnums)
        self.fwd = self.bwd = None

    def defvjp(self, fwd, bwd):
        if not callable(fwd) or not callable(bwd):
            raise errors.ArgumentError(
                f"{errors.where()}: {self.name}.defvjp(fwd, bwd) takes two functions.")
        self.fwd, self.bwd = fwd, bwd
        self._rules.clear()  # rules traced from the old functions are forgotten
        return self

    def _check_defined(self):
        if self.fwd is None:
            raise errors.TracingError(
                f"{errors.where()}: {self.name} is a gradc.custom_vjp function without its "
                f"rule; call {self.name}.defvjp(fwd, bwd) before differentiating it.")


class custom_jvp(_CustomFunction):  # noqa: N801  (JAX's spelling)
    """``@gradc.custom_jvp``: ``f.defjvp(jvp)`` gives ``f`` its forward-mode rule.

    ``jvp(*nondiff_args, primals, tangents) -> (value, tangent)`` with ``primals`` and
    ``tangents`` tuples over the differentiated arguments (JAX's conventions). Reverse mode
    (grad) transposes it, so it must be linear in the tangents.
    """

    kind = "custom_jvp"

    def __init__(self, fun, nondiff_argnums=()):
        super().__init__(fun, nondiff_argnums)
        self.jvp = None

    def defjvp(self, jvp):
        if not callable(jvp):
            raise errors.ArgumentError(f"{errors.where()}: {self.name}.defjvp(jvp) takes a function.")
        self.jvp = jvp
        self._rules.clear()
        return self

    def _check_defined(self):
        if self.jvp is None:
            raise errors.TracingError(
                f"{errors.where()}: {self.name} is a gradc.custom_jvp function without its "
                f"rule; call {self.name}.defjvp(jvp) before differentiating it.")


def _argnums(nums, kind):
    nums = (nums,) if isinstance(nums, int) else tuple(nums)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in nums):
        raise errors.ArgumentError(
            f"{errors.where()}: gradc.{kind}(nondiff_argnums=...) takes non-negative ints; "
            f"got {nums!r}.")
    return tuple(sorted(set(nums)))


# --- the call on traced values --------------------------------------------------------------
def _tracer_module():
    from . import trace

    return trace


def _first_tracer(values):
    """The first traced value among ``values`` (also inside lists and tuples), or None."""
    return _tracer_module()._first_tracer(values)


def _traced_call(cfn, args, diff, tracer):
    """``cfn(*args)`` on traced values: its own code inline (the value), then the ``custom``
    node(s) that carry the rule."""
    trace = _tracer_module()
    graph = tracer.graph
    args = list(args)
    for i in diff:  # arrays from outside the function are hidden parameters, as in any op
        args[i] = trace._captured((args[i],))[0]
    nondiff = tuple(args[i] for i in cfn.nondiff_argnums)
    try:
        hash(nondiff)
    except TypeError:
        raise errors.ArgumentError(
            f"{errors.where()}: the non-differentiated arguments of {cfn.name}() (nondiff_argnums"
            f"={cfn.nondiff_argnums}) must be hashable: they are part of the compiled code.") from None
    value = cfn.fun(*args)
    if isinstance(value, (tuple, list, dict)):
        raise errors.TracingError(
            f"{errors.where()}: {cfn.name}() returned a {type(value).__name__}; a gradc."
            f"{cfn.kind} function returns one float or one array here.")
    xs = [_node(tracer, args[i]) for i in diff]
    out = _node(tracer, value)
    shapes = tuple(x.shape or None for x in xs)
    _check_no_closure(cfn, graph, xs, [out])
    rule = cfn._rule((shapes, nondiff), out.shape or None, shapes, nondiff)
    return trace.Tracer(graph, graph.add("custom", (out, *xs), (rule,)))


def _node(tracer, value):
    Tracer = _tracer_module().Tracer
    if isinstance(value, Tracer) and value.is_condition:
        raise errors.TracingError(
            f"{errors.where()}: a gradc custom rule's function takes and returns floats and "
            "float arrays, not conditions.")
    return tracer._lift(value)


def _check_no_closure(cfn, graph, xs, outs):
    """Refuse a function whose value uses a traced value that is not one of its arguments:
    the rule gives no derivative for it, so its gradient would be silently lost. (The arrays
    a trace reads from outside its arguments are hidden parameters, never differentiated:
    those are fine.)"""
    stop = {x.id for x in xs}
    captured = {c.position for c in getattr(graph, "captured_arrays", ())}
    seen, stack = set(), [o for o in outs]
    while stack:
        node = stack.pop()
        if node.id in seen or node.id in stop:
            continue
        seen.add(node.id)
        if node.op == "input":
            if node.attrs[2] not in captured:
                raise errors.TracingError(
                    f"{errors.where()}: {cfn.name}() uses a traced value that is not one of its "
                    f"arguments ({node.attrs[1]}); its gradc.{cfn.kind} rule cannot give that "
                    "value's derivative. Pass it as an argument (and give its cotangent).")
            continue
        stack.extend(node.args)


# --- the rule of one function at one signature ------------------------------------------------
class Rule:
    """The derivative rule of a custom function at one signature: the ``custom`` op's
    attribute (hashed by identity). Its rule graphs are built the first time they are needed.

    Every rule graph has the parameters ``(*xs, g, *ts)`` (arrays traced whole), and outputs
    one cotangent per x (``vjp_graph``) or the output's tangent (``jvp_graph``).
    """

    def __init__(self, cfn, shapes, out_shape, nondiff):
        self.cfn, self.shapes, self.out_shape, self.nondiff = cfn, shapes, out_shape, nondiff
        self._graphs = {}
        self._elements = {}

    def __repr__(self):
        return f"<{self.cfn.kind} rule of {self.cfn.name}>"

    # the graphs ------------------------------------------------------------------------------
    def graph(self, which):
        """``"vjp"`` or ``"jvp"``: the rule graph (traced or transposed once, then kept)."""
        if which not in self._graphs:
            self.cfn._check_defined()
            own = "vjp" if isinstance(self.cfn, custom_vjp) else "jvp"
            other = "jvp" if own == "vjp" else "vjp"
            traced = self._trace_own()
            # transposed at once, whichever direction is asked for first: that checks the
            # rule is linear (a bwd of g * g would give a plausible gradient at g = 1.0)
            self._graphs.update({own: traced, other: self._transpose(other, traced)})
        return self._graphs[which]

    def unrolled(self, which):
        """The rule graph with its arrays unrolled into element inputs and outputs."""
        key = "unrolled " + which
        found = self._graphs.get(key)
        if found is None:
            from .unroll import UnrollError, unroll

            try:
                found = unroll(self.graph(which))
            except UnrollError as exc:
                raise errors.UnsupportedFunctionError(
                    f"{errors.where()}: the gradc.{self.cfn.kind} rule of {self.cfn.name}() has "
                    f"to be unrolled into scalar code here (hessian and jacobian unroll arrays), "
                    f"but it uses an operation with {exc}; use gradc.hvp or gradc.grad, which "
                    "keep arrays whole.") from None
            self._graphs[key] = found
        return found

    def _params(self, graph):
        """The traced parameters ``(xs, g, ts)`` of a new rule graph."""
        param = _tracer_module()._traced_param
        xs = [param(graph, f"x{i}", s) for i, s in enumerate(self.shapes)]
        g = param(graph, "g", self.out_shape)
        ts = [param(graph, f"t{i}", s) for i, s in enumerate(self.shapes)]
        return xs, g, ts

    def _arguments(self, xs):
        """The function's arguments: the traced xs with the non-differentiated ones in place."""
        args, it, nondiff = [], iter(xs), iter(self.nondiff)
        for i in range(len(self.shapes) + len(self.nondiff)):
            args.append(next(nondiff) if i in self.cfn.nondiff_argnums else next(it))
        return args

    def _trace_own(self):
        """The user's own rule, traced on parameters of this signature."""
        from .ir import Graph

        cfn = self.cfn
        graph = Graph(f"{_safe(cfn.name)}_{'vjp' if isinstance(cfn, custom_vjp) else 'jvp'}")
        xs, g, ts = self._params(graph)
        if isinstance(cfn, custom_vjp):
            pair = cfn.fwd(*self._arguments(xs))
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise errors.TracingError(
                    f"{_defined_at(cfn.fwd)}: the fwd of {cfn.name}() must return a pair "
                    f"(value, residuals); it returned {_kind(pair)}.")
            self._check_value(graph, g, pair[0], "fwd")
            cts = cfn.bwd(*self.nondiff, pair[1], g)
            if len(self.shapes) == 1 and not isinstance(cts, (tuple, list)):
                cts = (cts,)  # one argument: a bare cotangent is its cotangent
            if not (isinstance(cts, (tuple, list)) and len(cts) == len(self.shapes)):
                raise errors.TracingError(
                    f"{_defined_at(cfn.bwd)}: the bwd of {cfn.name}() must return a tuple of "
                    f"{len(self.shapes)} cotangent(s), one per differentiated argument; it "
                    f"returned {_kind(cts)}.")
            outputs = [self._fitted(graph, g, ct, s, f"cotangent {i} of bwd")
                       for i, (ct, s) in enumerate(zip(cts, self.shapes))]
        else:
            pair = cfn.jvp(*self.nondiff, tuple(xs), tuple(ts))
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise errors.TracingError(
                    f"{_defined_at(cfn.jvp)}: the jvp of {cfn.name}() must return a pair "
                    f"(value, tangent); it returned {_kind(pair)}.")
            self._check_value(graph, g, pair[0], "jvp")
            outputs = [self._fitted(graph, g, pair[1], self.out_shape, "the tangent of jvp")]
        graph.set_outputs(outputs, tuple(range(len(outputs))))
        return graph

    def _check_value(self, graph, g, value, what):
        node = _node(g, value)
        if (node.shape or None) != self.out_shape:
            raise errors.ShapeError(
                f"{errors.where()}: the {what} of {self.cfn.name}() gives a value of shape "
                f"{node.shape}, but {self.cfn.name}() itself returns shape {self.out_shape or ()}.")

    def _fitted(self, graph, g, value, shape, what):
        """A rule's result as a node of ``shape`` (None: a zero; a scalar is broadcast)."""
        from . import ops

        if value is None:
            return graph.add("zeros", (), (shape, "float64")) if shape else graph.const(0.0)
        node = _node(g, value)
        shape = shape or ()
        if node.shape != shape:
            try:
                fits = np.broadcast_shapes(node.shape, shape) == shape
            except ValueError:
                fits = False
            if not fits:
                raise errors.ShapeError(
                    f"{errors.where()}: {what} of {self.cfn.name}() has shape {node.shape}; "
                    f"it must have its argument's shape {shape}.")
            node = ops.broadcast_to(g.__class__(graph, node), shape).node
        return node

    def _transpose(self, which, own):
        """The other direction, from the user's rule by gradc's reverse mode: the gradient of
        ``<own rule, the other linear variable>`` in the rule's own linear variable."""
        from . import ad
        from .ir import Graph
        from .optimize import optimize

        graph = Graph(own.name + "_transposed")
        xs, g, ts = self._params(graph)
        outs = replay(own, graph, [x.node for x in xs] + [g.node] + [t.node for t in ts])
        Tracer = g.__class__
        if which == "vjp":  # <jvp(xs, ts), g>, differentiated in ts
            pairs, wrt = [(outs[0], g.node)], [1 + len(xs) + i for i in range(len(ts))]
            linear = [t.node for t in ts]
        else:               # <bwd(xs, g), ts>, differentiated in g
            pairs, wrt, linear = list(zip(outs, [t.node for t in ts])), [len(xs)], [g.node]
        total = None
        for a, b in pairs:
            if isinstance(a, _Zero):
                continue
            term = Tracer(graph, a) * Tracer(graph, b)
            term = term.sum() if term.shape else term
            total = term if total is None else total + term
        if total is None:
            total = Tracer(graph, graph.const(0.0))
        graph.set_outputs([total.node], 0)
        grads = optimize(ad.value_and_grad(graph, wrt, with_value=False))
        if _depends_on(grads, {n.attrs[0] for n in linear}):
            name = ("its jvp is not linear in the tangents" if which == "vjp" else
                    "its bwd is not linear in the cotangent g")
            rule = self.cfn.jvp if which == "vjp" else self.cfn.bwd
            raise errors.TracingError(
                f"{_defined_at(rule)}: {self.cfn.name}(): {name}. A derivative rule is linear "
                f"there (gradc transposes it for {'reverse' if which == 'vjp' else 'forward'} "
                "mode); write the derivative times the cotangent or tangent.")
        outputs = list(grads.outputs)
        if which == "jvp":
            outputs = outputs[:1]
        grads.set_outputs(outputs, tuple(range(len(outputs))))
        return grads

    # what the op's rules call -----------------------------------------------------------------
    def cotangents(self, g, xs):
        """The reverse rule: one cotangent (a Tracer, or None for zero) per x."""
        graph = g.graph
        outs = replay(self.graph("vjp"), graph,
                      [x.node for x in xs] + [g.node] + [None] * len(xs))
        return [None if isinstance(o, _Zero) else g.__class__(graph, o) for o in outs]

    def tangent(self, ts, xs, out):
        """The forward rule: the output's tangent (None: zero) from the xs' tangents."""
        if all(t is None for t in ts):
            return None
        graph = out.graph
        (o,) = replay(self.graph("jvp"), graph,
                      [x.node for x in xs] + [None] + [None if t is None else t.node for t in ts])
        return None if isinstance(o, _Zero) else out.__class__(graph, o)

    def element_nodes(self, graph, out, xs):
        """One scalar ``custom`` node per element of ``out`` (scalar nodes, C order), each
        carrying the rule of its element, with every argument element ``xs`` as arguments
        (what gradc/unroll.py makes of a ``custom`` node: a method of the rule, so that the
        unroll pass, which custom rules use, does not import this module)."""
        if self.out_shape is None and all(s is None for s in self.shapes):
            return [graph.add("custom", (out[0], *xs), (self,))]  # all scalars: as it is
        keys = [None] if self.out_shape is None else range(len(out))
        return [graph.add("custom", (o, *xs), (self.element(k),)) for o, k in zip(out, keys)]

    def element(self, k):
        """The rule of element ``k`` (C order; None for a scalar value) of the unrolled value."""
        found = self._elements.get(k)
        if found is None:
            found = self._elements[k] = ElementRule(self, k)
        return found


class ElementRule:
    """The rule of one element of an unrolled custom function (see :meth:`Rule.element_nodes`):
    its node is ``custom(value[k], *every argument element)``."""

    def __init__(self, rule, k):
        self.rule, self.k = rule, k
        self.n_in = sum(_size(s) for s in rule.shapes)
        self.n_out = _size(rule.out_shape)

    def __repr__(self):
        return f"<{self.rule.cfn.kind} rule of {self.rule.cfn.name}, element {self.k}>"

    def element_nodes(self, graph, out, xs):
        """Already one element's node (a program unrolled twice): itself again."""
        return [graph.add("custom", (out[0], *xs), (self,))]

    def cotangents(self, g, xs):
        graph = g.graph
        seed = [None] * self.n_out
        seed[self.k or 0] = g.node
        outs = replay(self.rule.unrolled("vjp"), graph,
                      [x.node for x in xs] + seed + [None] * self.n_in)
        return [None if isinstance(o, _Zero) else g.__class__(graph, o) for o in outs]

    def tangent(self, ts, xs, out):
        if all(t is None for t in ts):
            return None
        graph = out.graph
        outs = replay(self.rule.unrolled("jvp"), graph,
                      [x.node for x in xs] + [None] * self.n_out
                      + [None if t is None else t.node for t in ts])
        o = outs[self.k or 0]
        return None if isinstance(o, _Zero) else out.__class__(graph, o)


# --- replaying a rule graph, with symbolic zeros ------------------------------------------------
class _Zero:
    """A zero of ``shape`` that no node holds: a linear input with no value (an absent
    cotangent or tangent), carried through the linear ops of a rule graph symbolically."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = shape


# Ops whose result is zero where the named argument positions are zero (linear there).
_ZERO_IF_ANY = {"mul", "matmul"}
_ZERO_IF_FIRST = {"div", "neg", "alias", "sum", "getitem", "scatter", "reshape", "transpose",
                  "broadcast_to", "fill", "cumsum"}


def replay(source, target, inputs):
    """The outputs of ``source`` built into ``target``: ``inputs`` gives a node per input of
    ``source`` (in order), or None for a zero. Zeros stay symbolic through linear ops
    (``0 * y`` is no node, ``0 + y`` is ``y``): an output that is zero is a :class:`_Zero`.

    (gradc's reverse mode skips zero adjoints the same way: the derivative a zero cotangent
    carries is zero, even where the rule's factor is inf.)
    """
    mapped = {}
    for node in source.nodes:
        if node.op == "input":
            given = inputs[node.attrs[0]]
            mapped[node.id] = _Zero(node.shape) if given is None else given
        elif node.op == "const":
            mapped[node.id] = target.const(node.attrs[0])
        else:
            mapped[node.id] = _replay_node(target, node, [mapped[a.id] for a in node.args])
    return [mapped[o.id] for o in source.outputs]


def _replay_node(target, node, args):
    zero = [isinstance(a, _Zero) for a in args]
    if not any(zero):
        return target.add(node.op, tuple(args), node.attrs)
    op = node.op
    if op in _ZERO_IF_ANY or op in _ZERO_IF_FIRST and zero[0]:
        return _Zero(node.shape)
    if op == "add" and all(zero):
        return _Zero(node.shape)
    if op == "add":
        return _spread(target, args[1] if zero[0] else args[0], node.shape)
    if op == "sub" and zero[1]:
        return _Zero(node.shape) if zero[0] else _spread(target, args[0], node.shape)
    if op == "sub":
        return _spread(target, target.add("neg", (args[1],)), node.shape)
    args = [_materialise(target, a) if isinstance(a, _Zero) else a for a in args]
    return target.add(op, tuple(args), node.attrs)


def _spread(target, node, shape):
    if node.shape == shape:
        return node
    if not node.shape:
        return target.add("fill", (node,), (shape,))
    return target.add("broadcast_to", (node,), (shape,))


def _materialise(target, zero):
    if zero.shape:
        return target.add("zeros", (), (zero.shape, "float64"))
    return target.const(0.0)


def _depends_on(graph, input_positions):
    """Whether an output of ``graph`` reads one of the inputs at ``input_positions``."""
    seen, stack = set(), list(graph.outputs)
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen.add(node.id)
        if node.op == "input" and node.attrs[0] in input_positions:
            return True
        stack.extend(node.args)
    return False


# --- after differentiation: the value alone ----------------------------------------------------
def strip(graph):
    """``graph`` with every ``custom`` node replaced by its value (its first argument), and
    what only the rules needed dropped: for code generators, once nothing is differentiated."""
    if not any(n.op == "custom" for n in graph.nodes):
        return graph
    from .optimize import dce

    return dce(graph.rebuild(lambda new, node, args: args[0] if node.op == "custom" else None))


# --- small helpers ----------------------------------------------------------------------------
def _size(shape):
    return 1 if shape is None else int(np.prod(shape))


def _safe(name):
    from .trace import identifier_or_none

    return identifier_or_none(name) or "custom"


def _defined_at(fn):
    from .trace import _definition

    return _definition(fn)


def _kind(value):
    from .trace import _kind as kind

    return kind(value)
