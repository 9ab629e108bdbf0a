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
from .ir import Graph
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
            if value.graph is not self.graph:
                raise errors.TracingError(
                    f"{errors.where()}: a value traced by another gradc function leaked into "
                    "this one; pass it as an argument instead of capturing it.")
            return value.node
        if isinstance(value, (bool, np.bool_)):
            return self.graph.const(bool(value))
        if isinstance(value, (numbers.Real, np.floating, np.integer)):
            return self.graph.const(float(value))
        if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "biuf":
            return self.graph.const(value.item())
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: cannot combine a traced scalar with a {type(value).__name__}; "
            "gradc traces functions of floats (use numbers, not containers, in arithmetic).")

    def _apply(self, op, args):
        return Tracer(self.graph, self.graph.add(op, tuple(self._lift(a) for a in args)))

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
    __matmul__ = __rmatmul__ = __lshift__ = __rshift__ = __xor__ = _unsupported_operator

    def __iter__(self):
        raise errors.TracingError(f"{errors.where()}: a traced scalar cannot be iterated.")

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


def _any_tracer(args):
    return next((a for a in args if isinstance(a, Tracer)), None)


def apply(op_name, *args):
    """``op(*args)``: traced when any argument is traced, else computed with NumPy."""
    t = _any_tracer(args)
    if t is not None:
        return t._apply(op_name, args)
    with np.errstate(all="ignore"):
        return OPS[op_name].impl(*args)


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


def _traced_param(graph, name, shape):
    if shape is None:
        return Tracer(graph, graph.param(name))
    elements = np.empty(shape, dtype=object)
    for flat, node in enumerate(graph.param(name, shape)):
        elements.flat[flat] = Tracer(graph, node)
    return elements


def trace(fn, params, name, origin=None):
    """Run ``fn`` on traced arguments; return the Graph of its result.

    ``params`` is a list of names (scalars) or ``(name, shape)`` pairs; an array
    parameter is traced as a NumPy object array of traced elements, so NumPy code
    (slicing, ``np.sum``, ``@``, ufuncs) runs on it unchanged and unrolls.

    The local variable names of ``fn``'s frame, read when it returns, become the
    names of the nodes they hold.
    """
    graph = Graph(name, origin)
    params = [(p, None) if isinstance(p, str) else p for p in params]
    tracers = [_traced_param(graph, n, shape) for n, shape in params]
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
