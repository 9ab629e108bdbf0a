"""Tracing: run the user's Python function on :class:`Tracer` values to record a Graph.

A Tracer stands for one node of the graph being built. Python operators and
NumPy ufuncs (through ``__array_ufunc__``/``__array_function__``) applied to it
add nodes; everything that would need a concrete number (``if``, ``float()``,
``math.exp``) raises a :class:`~gradc.errors.TracingError` that names the
user's line. Python loops simply unroll.

The user's local variable names are read from the traced frame when it returns,
so the graph (and the emitted source) can say ``u = b * c``.
"""
from __future__ import annotations

import keyword
import numbers
import re
import sys

import numpy as np

from . import errors
from .ir import ArrayOut, Body, Graph
from . import ops as _ops
from .ops import MATH_FUNCTIONS, OPS, UFUNCS

_EXTRA_UFUNCS = {"square", "reciprocal", "positive", "conjugate"}


def _supported():
    return ", ".join(sorted(set(UFUNCS) | _EXTRA_UFUNCS | {"where"}))


class Tracer:
    """A traced scalar: a node of ``graph``. Supports Python operators and NumPy ufuncs."""

    __slots__ = ("graph", "node")
    __array_priority__ = 1000  # NumPy scalars and arrays defer to us

    def __init__(self, graph, node):
        self.graph, self.node = graph, node

    # --- building -------------------------------------------------------------------
    def _lift(self, value):
        if isinstance(value, Tracer):
            if value.graph is not self.graph and _encloses(value.graph, self.graph):
                return _capture(self.graph, value)  # a loop body using an outer value
            if value.graph is not self.graph:
                raise errors.TracingError(
                    f"{errors.where()}: a value traced by another gradc function leaked into "
                    "this one; pass it as an argument instead of capturing it.")
            return value.node
        if isinstance(value, (bool, np.bool_)):
            return self.graph.const(bool(value))
        if isinstance(value, (numbers.Real, np.floating, np.integer)):
            return self.graph.const(float(value))
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            return self.graph.const(value if value.shape else value.item())
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: cannot combine a traced value with a {type(value).__name__}; "
            "gradc traces functions of floats and float arrays.")

    def _apply(self, op, args, attrs=()):
        for a in args:  # inside a loop body, the body's graph builds (outer values are captured)
            if isinstance(a, Tracer) and a.graph is not self.graph and _encloses(self.graph, a.graph):
                return a._apply(op, args, attrs)
        if not self.graph.whole_params and any(
                isinstance(a, np.ndarray) and a.ndim > 0 for a in args) and all(
                a.shape == () for a in args if isinstance(a, Tracer)):
            return _elementwise(op, args, attrs)  # unrolled arrays: one node per element
        return Tracer(self.graph, self.graph.add(op, tuple(self._lift(a) for a in args), attrs))

    # --- arrays traced whole ------------------------------------------------------------
    @property
    def shape(self):
        return self.node.shape

    @property
    def ndim(self):
        return len(self.node.shape)

    @property
    def size(self):
        return int(np.prod(self.node.shape))

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a traced scalar")
        return self.shape[0]

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(a % self.ndim for a in axes) if axes else None
        return _ops.transpose(self, axes)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            shape = np.broadcast_to(np.empty(()), self.shape).reshape(shape).shape
        except ValueError as exc:
            raise errors.ShapeError(f"{errors.where()}: cannot reshape {self.shape}: {exc}.") from None
        return _ops.reshape(self, shape)

    def _reduce(self, op, axis, keepdims):
        if not self.shape:
            return self
        if axis is not None:
            axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
            if any(not -self.ndim <= a < self.ndim for a in axes):
                raise errors.ShapeError(
                    f"{errors.where()}: axis {axis} is out of range for shape {self.shape}.")
            axis = tuple(sorted(a % self.ndim for a in axes))
        return self._apply(op, (self,), (axis, bool(keepdims)))

    def sum(self, axis=None, keepdims=False):
        return self._reduce("sum", axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return self._reduce("max", axis, keepdims)

    def min(self, axis=None, keepdims=False):
        return self._reduce("min", axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        total = self.sum(axis, keepdims)
        return total * (total.size / self.size) if self.shape else self

    def dot(self, other):
        return np.dot(self, other)

    def __getitem__(self, index):
        canon = _ops.canonical_index(index)
        if canon is None:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: gradc indexes traced arrays with constant ints, slices, "
                "None and ... only (no arrays of indices or traced indices).")
        if not self.shape:
            raise errors.TracingError(f"{errors.where()}: a traced scalar cannot be indexed.")
        return self._apply("getitem", (self,), (canon,))

    @property
    def is_condition(self):
        return self.node.result == "bool"

    # --- Python operators -----------------------------------------------------------
    def __add__(self, o): return self._apply("add", (self, o))
    def __radd__(self, o): return self._apply("add", (o, self))
    def __sub__(self, o): return self._apply("sub", (self, o))
    def __rsub__(self, o): return self._apply("sub", (o, self))
    def __mul__(self, o): return self._apply("mul", (self, o))
    def __rmul__(self, o): return self._apply("mul", (o, self))
    def __truediv__(self, o): return self._apply("div", (self, o))
    def __rtruediv__(self, o): return self._apply("div", (o, self))
    def __pow__(self, o): return self._apply("pow", (self, o))
    def __rpow__(self, o): return self._apply("pow", (o, self))
    def __neg__(self): return self._apply("neg", (self,))
    def __pos__(self): return self
    def __abs__(self): return self._apply("abs", (self,))
    def __lt__(self, o): return self._apply("lt", (self, o))
    def __le__(self, o): return self._apply("le", (self, o))
    def __gt__(self, o): return self._apply("gt", (self, o))
    def __ge__(self, o): return self._apply("ge", (self, o))
    def __eq__(self, o): return self._apply("eq", (self, o))
    def __ne__(self, o): return self._apply("ne", (self, o))
    def __and__(self, o): return self._apply("and", (self, o))
    def __rand__(self, o): return self._apply("and", (o, self))
    def __or__(self, o): return self._apply("or", (self, o))
    def __ror__(self, o): return self._apply("or", (o, self))
    def __invert__(self): return self._apply("not", (self,))
    __hash__ = object.__hash__

    def __bool__(self):
        raise errors.ControlFlowError(
            f"{errors.where()}: Python `if`, `while`, `and`/`or` and bool() need a concrete "
            "truth value, but this one depends on a traced argument. Write the choice as "
            "gradc.where(condition, value_if_true, value_if_false) (or numpy.where); "
            "loops whose trip count does not depend on traced values are fine.")

    def _no_number(self, *_):
        line = errors.source_line()
        found = re.search(r"\bmath\.(\w+)", line)
        if found:
            name = found.group(1)
            np_name = {"atan": "arctan", "asin": "arcsin", "acos": "arccos", "atan2": "arctan2",
                       "fabs": "abs", "pow": "power"}.get(name, name)
            hint = (f"math.{name} only works on plain floats; use numpy.{np_name} or "
                    f"gradc.math.{np_name}, which gradc can trace")
        else:
            hint = ("float(), int() and math.* functions need a concrete number, but this value "
                    "depends on a traced argument; use numpy or gradc.math functions instead")
        raise errors.MathModuleError(f"{errors.where()}: {hint}.")

    __float__ = __int__ = __index__ = __complex__ = _no_number

    def _unsupported_operator(self, *_):
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: this operator (//, %, divmod, bit operations or matrix "
            "product) is not differentiable or not supported on traced scalars; "
            "supported: + - * / ** unary -, abs, comparisons.")

    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __divmod__ = _unsupported_operator
    __lshift__ = __rshift__ = __xor__ = _unsupported_operator

    def __matmul__(self, o): return self._apply("matmul", (self, o))
    def __rmatmul__(self, o): return self._apply("matmul", (o, self))

    def __iter__(self):
        if not self.shape:
            raise errors.TracingError(f"{errors.where()}: a traced scalar cannot be iterated.")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self):
        name = self.graph.names.get(self.node.id, f"t{self.node.id}")
        return f"<gradc traced {self.node.result} {name}>"

    # --- NumPy dispatch ----------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = ufunc.__name__
        if method != "__call__" or kwargs:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: numpy.{name}.{method} with {sorted(kwargs) or 'no'} keyword "
                "arguments is not supported on traced values; call numpy."
                f"{name}(x, y) plainly.")
        if name == "square":
            return self._apply("mul", (inputs[0], inputs[0]))
        if name == "reciprocal":
            return self._apply("div", (1.0, inputs[0]))
        if name in ("positive", "conjugate"):
            return inputs[0]
        if name not in UFUNCS:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: numpy.{name} is not supported by gradc. "
                f"Supported NumPy functions: {_supported()}.")
        return self._apply(UFUNCS[name], inputs)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.where and not kwargs and len(args) == 3:
            return where(*args)
        handler = _FUNCTIONS.get(func)
        if handler is not None:
            return handler(*args, **kwargs)
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: numpy.{func.__name__} is not supported on traced scalars. "
            f"Supported NumPy functions: {_supported()}.")


def _method(op_name):
    def method(self, *others):
        return self._apply(op_name, (self, *others))

    method.__name__ = op_name
    return method


# NumPy applies a ufunc to an object array by calling the element's method of
# that name (np.exp(arr) calls elem.exp()): give Tracer one per supported ufunc.
for _ufunc, _op in UFUNCS.items():
    if OPS[_op].result == "float" and not hasattr(Tracer, _ufunc):
        setattr(Tracer, _ufunc, _method(_op))


def _encloses(outer, inner):
    """True when ``inner`` is a loop body (at any depth) inside ``outer``."""
    graph = inner.parent
    while graph is not None:
        if graph is outer:
            return True
        graph = graph.parent
    return False


def _capture(body, value):
    """The input node of ``body`` standing for the outer traced ``value`` (added once)."""
    if value.graph is not body.parent:  # nested loops: the enclosing body captures it first
        value = Tracer(body.parent, _capture(body.parent, value))
    for k, outer in enumerate(body.captures):
        if outer is value.node:
            return body.param_inputs(len(body.params) - len(body.captures) + k)[0]
    body.captures.append(value.node)
    return body.param(f"c{len(body.captures) - 1}", value.shape or None, whole=bool(value.shape))


class NeedsWholeArrays(errors.ControlFlowError):
    """A construct that needs arrays traced whole met an unrolled one (auto mode retraces)."""


def scan(f, init, xs):
    """``carry = f(carry, x)`` for each ``x`` of ``xs`` (stacked along axis 0); the final carry.

    ``xs`` is an array or a tuple of arrays with one common length; ``f`` gets one
    slice (or a tuple of slices) per step. Traced, the loop stays a loop in the
    emitted source (its reverse pass walks the stored carries backwards), so
    repeated structure — a chain of identical layers, a time-stepping model —
    compiles in time independent of its length. ``f`` may use other traced
    values of the enclosing function. On plain numbers it simply runs the loop.
    """
    multiple = isinstance(xs, (tuple, list))
    xs_t = tuple(xs) if multiple else (xs,)
    for x in (init, *xs_t):
        if isinstance(x, np.ndarray) and x.dtype == object:
            raise NeedsWholeArrays(f"{errors.where()}: gradc.scan needs arrays traced whole; "
                                   "use arrays='numpy' (arrays='auto' does this by itself).")
    t = _any_tracer((init, *xs_t))
    if t is None:
        carry = init
        for k in range(len(xs_t[0])):
            carry = f(carry, tuple(x[k] for x in xs_t) if multiple else xs_t[0][k])
        return carry
    outer = t.graph
    init_node = t._lift(init)
    xs_nodes = [t._lift(x) for x in xs_t]
    if any(not n.shape for n in xs_nodes) or len({n.shape[0] for n in xs_nodes}) != 1:
        raise errors.ShapeError(
            f"{errors.where()}: gradc.scan needs xs stacked along a first axis of one length; "
            f"got shapes {[n.shape for n in xs_nodes]}.")
    length = xs_nodes[0].shape[0]
    names = _parameter_names(f, 2)
    body = Graph(f"{outer.name}_step", outer.origin)
    body.parent, body.dtype = outer, outer.dtype
    carry = _traced_param(body, names[0], init_node.shape or None, True)
    slices = [_traced_param(body, f"{names[1]}{k if multiple else ''}", n.shape[1:] or None, True)
              for k, n in enumerate(xs_nodes)]
    try:
        out = carry._lift(f(carry, tuple(slices) if multiple else slices[0]))
    finally:
        body.parent = None
    if out.shape != init_node.shape:
        raise errors.ShapeError(
            f"{errors.where()}: the scan step returned shape {out.shape} for a carry of shape "
            f"{init_node.shape}; it must return the new carry, of the same shape.")
    body.set_outputs([out], 0)
    from .optimize import optimize

    body = optimize(body)
    node = outer.add("scan", (init_node, *xs_nodes, *body.captures),
                     (Body(body, len(xs_nodes)), length))
    return Tracer(outer, outer.add("part", (node,), (0, init_node.shape)))


def _parameter_names(f, count):
    try:
        import inspect

        names = [p for p in inspect.signature(f).parameters][:count]
    except (TypeError, ValueError):
        names = []
    names = [n if identifier_or_none(n) else f"a{k}" for k, n in enumerate(names)]
    return names + [("carry", "x")[k] for k in range(len(names), count)]


def _elementwise(op, args, attrs):
    """``op`` applied element by element: an object array of traced scalars (unrolled arrays)."""
    boxed = []
    for a in args:
        if isinstance(a, Tracer):
            box = np.empty((), dtype=object)
            box[()] = a
            a = box
        boxed.append(a)
    return np.frompyfunc(lambda *xs: apply(op, *xs), len(args), 1)(*boxed)


def _whole(*arrays):
    """Tracers for the arrays of a NumPy call (object arrays of scalar tracers stay NumPy's)."""
    return any(isinstance(a, Tracer) and a.shape for a in arrays)


def _tracer_of(values):
    return next(v for v in values if isinstance(v, Tracer))


def _join(op, arrays, axis):
    arrays = list(arrays)
    if not _whole(*arrays):  # scalars of an unrolled array: let NumPy build an object array
        boxed = [np.asarray(a, dtype=object) if isinstance(a, Tracer) else a for a in arrays]
        return getattr(np, op)(boxed, axis=axis)
    t = _tracer_of(arrays)
    ndim = len(t.shape) + (1 if op == "stack" else 0)
    if not -ndim <= axis < ndim:
        raise errors.ShapeError(f"{errors.where()}: axis {axis} is out of range for {op}.")
    return t._apply(op, arrays, (axis % ndim,))


def _dot(a, b):
    if isinstance(a, Tracer) and not a.shape or isinstance(b, Tracer) and not b.shape:
        return a * b
    return _tracer_of((a, b))._apply("matmul", (a, b))


def _as_tracer_call(method):
    def call(x, *args, **kwargs):
        if isinstance(x, Tracer):
            return getattr(x, method)(*args, **kwargs)
        return getattr(np, method)(np.asarray(x, dtype=object), *args, **kwargs)

    return call


_FUNCTIONS = {
    np.sum: _as_tracer_call("sum"), np.mean: _as_tracer_call("mean"),
    np.max: _as_tracer_call("max"), np.min: _as_tracer_call("min"),
    np.amax: _as_tracer_call("max"), np.amin: _as_tracer_call("min"),
    np.transpose: lambda x, axes=None: x.transpose(*(() if axes is None else (axes,))),
    np.reshape: lambda x, shape=None, **kw: x.reshape(shape if shape is not None else kw["newshape"]),
    np.stack: lambda arrays, axis=0: _join("stack", arrays, axis),
    np.concatenate: lambda arrays, axis=0: _join("concatenate", arrays, axis),
    np.dot: _dot,
    np.shape: lambda x: x.shape, np.ndim: lambda x: x.ndim, np.size: lambda x: x.size,
}


def _any_tracer(args):
    return next((a for a in args if isinstance(a, Tracer)), None)


def apply(op_name, *args):
    """``op(*args)``: traced when any argument is traced, else computed with NumPy.

    An unrolled array (an object array of traced scalars) goes element by element
    through the op itself: NumPy's own object loops would rebuild ``sigmoid`` from
    ``exp`` (a bigger gradient) or compare elements for ``relu`` (untraceable).
    """
    t = _any_tracer(args)
    if t is not None:
        return t._apply(op_name, args)
    if any(isinstance(a, np.ndarray) and a.dtype == object for a in args):
        return _elementwise(op_name, args, ())
    with np.errstate(all="ignore"):
        return OPS[op_name].compute(args, ())


def where(cond, a, b):
    """``a if cond else b``, traceable: the condition may depend on traced values."""
    t = _any_tracer((cond, a, b))
    if t is None:
        return np.where(cond, a, b)
    if not isinstance(cond, Tracer):
        return a if cond else b
    if not cond.is_condition:  # NumPy semantics: a number is true when non-zero
        cond = cond != 0.0
    return t._apply("where", (cond, a, b))


def identifier_or_none(name):
    """``name`` if it can appear in emitted source as an identifier, else None."""
    if isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name):
        return name
    return None


def _traced_param(graph, name, shape, whole=False):
    if shape is None:
        return Tracer(graph, graph.param(name))
    if whole:  # the NumPy-level form: one traced array
        return Tracer(graph, graph.param(name, shape, whole=True))
    elements = np.empty(shape, dtype=object)
    for flat, node in enumerate(graph.param(name, shape)):
        elements.flat[flat] = Tracer(graph, node)
    return elements


def trace(fn, params, name, origin=None, multiple=False):
    """Run ``fn`` on traced arguments; return the Graph of its result.

    With ``multiple``, ``fn`` may also return a tuple, list or array of floats
    (for Jacobians): its elements become the outputs in C order, and ``out_tree``
    is a tuple of output numbers (tuple or list) or an :class:`ArrayOut` (array).

    ``params`` is a list of names (scalars) or ``(name, shape)`` pairs; an array
    parameter is traced as a NumPy object array of traced elements, so NumPy code
    (slicing, ``np.sum``, ``@``, ufuncs) runs on it unchanged and unrolls — or,
    given as ``(name, shape, True)``, as one traced array (NumPy-level code).

    The local variable names of ``fn``'s frame, read when it returns, become the
    names of the nodes they hold.
    """
    graph = Graph(name, origin)
    params = [(p, None) if isinstance(p, str) else p for p in params]
    tracers = [_traced_param(graph, *p) for p in params]
    code = getattr(fn, "__code__", None)
    captured = {}

    def profile(frame, event, arg):
        if event == "return" and frame.f_code is code and not captured:
            captured.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(profile if code is not None else previous)
    try:
        result = fn(*tracers)
    finally:
        sys.setprofile(previous)

    for local, value in captured.items():
        if isinstance(value, Tracer) and value.graph is graph and identifier_or_none(local):
            if value.node.op not in ("input", "const"):
                graph.names.setdefault(value.node.id, local)

    if multiple and isinstance(result, (tuple, list, np.ndarray)) and np.ndim(result) > 0:
        return _trace_outputs(graph, result, name)
    if isinstance(result, np.ndarray) and result.shape == ():
        result = result.item()
    if isinstance(result, Tracer):
        if result.graph is not graph:
            raise errors.TracingError(f"{name} returned a value traced by another function.")
        if result.is_condition:
            raise errors.TracingError(
                f"{name} returned a condition (a comparison); gradc differentiates functions "
                "that return a float. Use gradc.where(...) to turn it into a number.")
        out = result.node
        if out.op not in ("input", "const") and identifier_or_none(name):
            graph.names.setdefault(out.id, name)  # the result is named after the function: J
    elif isinstance(result, (numbers.Real, np.floating, np.integer)) and not isinstance(result, bool):
        out = graph.const(float(result))
    else:
        raise errors.TracingError(
            f"{name} returned a {type(result).__name__}; gradc differentiates functions that "
            "return one float (a scalar loss or model value).")
    graph.set_outputs([out], 0)
    return graph


def _trace_outputs(graph, result, name):
    """Set a tuple/list/array result of a traced function as the graph's outputs."""
    elements = np.empty(np.shape(result), dtype=object)
    elements[...] = result if isinstance(result, np.ndarray) else np.array(result, dtype=object)
    outputs = []
    for value in elements.flat:
        if isinstance(value, Tracer) and value.graph is graph and not value.is_condition:
            outputs.append(value.node)
        elif isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
                value, (bool, np.bool_)):
            outputs.append(graph.const(float(value)))
        else:
            raise errors.TracingError(
                f"{name} returned a {type(result).__name__} holding a "
                f"{type(value).__name__}; its elements must be floats.")
    indices = tuple(range(len(outputs)))
    tree = ArrayOut(name, elements.shape, indices) if isinstance(result, np.ndarray) else indices
    graph.set_outputs(outputs, tree)
    return graph
