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

import functools
import inspect
import keyword
import numbers
import re
import sys
import threading

import numpy as np

from . import errors
from .ir import ArrayOut, Body, Graph
from . import ops as _ops
from .ops import OPS, UFUNCS

class Tracer:
    """A traced scalar: a node of ``graph``. Supports Python operators and NumPy ufuncs."""

    # ``_view``: for a view of another traced array (``y[1:]``, ``y.T``), ``(base, the base's
    # version it was read at, rebuild)``; ``_version`` counts writes (item assignment, ``+=``).
    __slots__ = ("graph", "_node", "_view", "_version")
    __array_priority__ = 1000  # NumPy scalars and arrays defer to us

    def __new__(cls, graph, node, view=None):
        # an array node is an ArrayTracer (indexable), a scalar one a ScalarTracer, whichever
        # class is asked for (so it is set up here: Python skips __init__ for the other one)
        self = object.__new__(ArrayTracer if node.shape else ScalarTracer)
        self.graph, self._node, self._view, self._version = graph, node, view, 0
        return self

    # --- item assignment: functional updates with NumPy's aliasing ----------------------------
    # ``y[i] = v`` and ``y += v`` replace the node this object stands for, so every name bound
    # to it sees the change, as with a NumPy array. A view (``v = y[1:]``) rereads its base
    # when the base has changed since, and a write into a view is written into its base.
    @property
    def node(self):
        view = self._view
        if view is not None:
            base, seen, rebuild = view
            current = base.node  # a view of a view: its base rereads first
            if base._version != seen:
                self._node = rebuild(Tracer(base.graph, current))._node
                self._view = (base, base._version, rebuild)
                self._version += 1
        return self._node

    @node.setter
    def node(self, node):
        self._node = node

    def _write(self, node):
        """This array (and so every name bound to it) now holds ``node``; a view writes
        through into its base."""
        self.node  # noqa: B018  (bring a view up to date before it is overwritten)
        self._node, self._version = node, self._version + 1
        view = self._view
        if view is None:
            return
        base, _, rebuild = view
        index = getattr(rebuild, "index", None)
        if index is None:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: writing into a reshaped or transposed view of a traced "
                "array is not supported (NumPy would change the array it views); write into "
                "that array itself, for example y[...] = ....")
        base._write(base.graph.add("setitem", (base.node, node), (index,)))
        self._view = (base, base._version, rebuild)

    def _as_view_of(self, base, rebuild):
        """This value as a view of ``base`` (it rereads ``base`` when ``base`` is written)."""
        self._view = (base, base._version, rebuild)
        return self

    def _in_place(self, op, other):
        """``self op= other`` on a traced array: the result replaces this array's contents
        (NumPy's in-place arithmetic, seen by every name bound to it). Scalars rebind, as
        Python floats do."""
        if not self.shape:
            return NotImplemented
        result = self._apply(op, (self, other))
        if not isinstance(result, Tracer) or result.shape != self.shape:
            raise errors.ShapeError(
                f"{errors.where()}: in-place {op} would change the shape of a traced array of "
                f"shape {self.shape} (to {getattr(result, 'shape', None)}); write y = y op x.")
        self._write(result.node)
        return self

    def __iadd__(self, o): return self._in_place("add", o)
    def __isub__(self, o): return self._in_place("sub", o)
    def __imul__(self, o): return self._in_place("mul", o)
    def __itruediv__(self, o): return self._in_place("div", o)
    def __ipow__(self, o): return self._in_place("pow", o)
    def __ifloordiv__(self, o): return self._in_place("floordiv", o)
    def __imod__(self, o): return self._in_place("mod", o)

    # --- building -------------------------------------------------------------------
    def _lift(self, value):
        if isinstance(value, _AssignableArray):  # made by NumPy in the traced function
            value = value._read()
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
            return self.graph.const(_float_constant(value))
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            return self.graph.const(value if value.shape else value.item())
        if isinstance(value, (list, tuple)) or (
                isinstance(value, np.ndarray) and value.dtype == object):
            return pack(value, self).node  # NumPy's array_like: one array traced whole
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: cannot combine a traced value with a {type(value).__name__}; "
            "gradc traces functions of floats and float arrays.")

    def _apply(self, op, args, attrs=()):
        for a in args:  # (inline: this runs for every op a trace records)
            if isinstance(a, _HOLDERS):
                args = _operands(args)
                break
        args = _captured(args)
        for a in args:  # inside a loop body, the body's graph builds (outer values are captured)
            if isinstance(a, Tracer) and a.graph is not self.graph and _encloses(self.graph, a.graph):
                return a._apply(op, args, attrs)
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

    def __array__(self, dtype=None, copy=None):
        # NumPy asks this when code gradc does not trace converts a traced value into a NumPy
        # array: a library calling numpy.asarray, or a NumPy function given a list of traced
        # values that it converts itself (numpy.exp([x, y])). A NumPy array holds numbers,
        # and an object array of traced values would be run by NumPy's own object loops,
        # which gradc does not see (numpy.nan_to_num returns one unchanged): refused here,
        # so no such array is ever made. In the traced function itself, numpy.array and
        # numpy.asarray are gradc's (gradc/constructors.py): they trace arrays whole (pack).
        if dtype is not None and np.dtype(dtype) != np.dtype(object):
            # numpy.float64(x), numpy.asarray(x, dtype=float): NumPy asks for numbers here
            # and, refused, would bury gradc's error under "setting an array element with
            # a sequence" (a Tracer can be indexed, so NumPy takes it for one).
            raise errors.MathModuleError(
                f"{errors.where()}: converting a traced value to NumPy numbers (dtype "
                f"{np.dtype(dtype).name}: numpy.float64(x), numpy.asarray(x, dtype=float), "
                "...) needs concrete numbers, but this value depends on a traced argument; "
                "drop the conversion (traced values are floats already).")
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: a traced value was converted into a NumPy array by code gradc "
            "does not trace (numpy.asarray in a library function, or a NumPy function given "
            "a list of traced values, such as numpy.exp([x, y])); a NumPy array holds numbers "
            "only. gradc traces arrays whole: build the array in the traced function with "
            "numpy.array([...]), numpy.stack or numpy.concatenate and pass that on (x.copy() "
            "for a copy), and call only NumPy and gradc functions on traced values.")

    def __dlpack__(self, *args, **kwargs):
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: a traced array has no memory to share (numpy.from_dlpack, "
            "DLPack): it stands for values not computed yet; use the value itself.")

    __dlpack_device__ = __dlpack__

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        if len(axes) == 1 and axes[0] is None:
            axes = ()
        if axes and (len(axes) != self.ndim or any(
                isinstance(a, bool) or not isinstance(a, (int, np.integer))
                or not -self.ndim <= a < self.ndim for a in axes)
                or len({a % self.ndim for a in axes}) != self.ndim):
            # NumPy refuses these; taken modulo ndim they would silently pick other axes
            raise errors.ShapeError(
                f"{errors.where()}: axes {tuple(axes)} are not a permutation of the "
                f"{self.ndim} axes of a traced array of shape {self.shape}.")
        axes = tuple(a % self.ndim for a in axes) if axes else None
        return self._view_result(_ops.transpose(self, axes), functools.partial(_ops.transpose, axes=axes))

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            shape = np.broadcast_to(np.empty(()), self.shape).reshape(shape).shape
        except ValueError as exc:
            raise errors.ShapeError(f"{errors.where()}: cannot reshape {self.shape}: {exc}.") from None
        return self._view_result(_ops.reshape(self, shape), functools.partial(_ops.reshape, shape=shape))

    def _view_result(self, result, rebuild):
        """``result`` (computed from this array) as a view of it, a new object as in NumPy."""
        if result is self:
            result = Tracer(self.graph, self.node)
        return result._as_view_of(self, rebuild)

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

    def sum(self, *args, **kwargs):
        axis, keepdims = _reduction_arguments(np.sum, self, args, kwargs)
        return self._reduce("sum", axis, keepdims)

    def max(self, *args, **kwargs):
        axis, keepdims = _reduction_arguments(np.max, self, args, kwargs)
        return self._reduce("max", axis, keepdims)

    def min(self, *args, **kwargs):
        axis, keepdims = _reduction_arguments(np.min, self, args, kwargs)
        return self._reduce("min", axis, keepdims)

    def mean(self, *args, **kwargs):
        axis, keepdims = _reduction_arguments(np.mean, self, args, kwargs)
        total = self._reduce("sum", axis, keepdims)
        if not self.shape:
            return self
        axes = total.node.attrs[0]  # sum's axes, normalised
        count = self.size // max(total.size, 1)
        # sum / count, as NumPy divides; count reads x's shape, so loops stay shape-generic
        return total / self._apply("count", (self,), (axes, float(count)))

    def dot(self, other):
        return np.dot(self, other)

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
        found = re.search(r"(?<![\w.])(max|min)\s*\(", errors.source_line())
        builtin = "" if found is None else (
            f"Python's builtin {found.group(1)}() compares its arguments with bool(): write "
            f"numpy.{found.group(1)}imum(x, y) for two values (numpy.{found.group(1)} for the "
            "elements of an array). ")
        raise errors.ControlFlowError(
            f"{errors.where()}: Python `if`, `while`, `and`/`or` and bool() need a concrete "
            f"truth value, but this one depends on a traced argument. {builtin}Write the "
            "choice as gradc.where(condition, value_if_true, value_if_false) (or numpy.where); "
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
        elif re.search(r"\]\s*[-+*/]?=(?!=)", line):
            # gradc.constructors makes the arrays NumPy creates in traced code assignable;
            # this one it could not reach
            hint = ("this NumPy array can hold numbers only, and the value depends on a traced "
                    "argument. gradc traces assignment into the float64 arrays that numpy.zeros, "
                    "ones, empty, full, array, linspace, ... make inside the traced function "
                    "(or a function of its module it calls) and the arrays computed from them; "
                    "this one was made where gradc does not look: outside the function (a "
                    "global, a default argument), in another module, by a numpy imported "
                    "inside the function, with an int, bool or float32 dtype, or in a function "
                    "that assigns globals. Make the array traced instead, for example "
                    "y = numpy.zeros_like(x) or y = x.copy(), then assign into it")
        else:
            hint = ("float(), int() and math.* functions need a concrete number, but this value "
                    "depends on a traced argument; use numpy or gradc.math functions instead")
        raise errors.MathModuleError(f"{errors.where()}: {hint}.")

    __float__ = __int__ = __index__ = __complex__ = _no_number

    # % and // as Python and NumPy define them for floats; x // y has derivative zero.
    def __mod__(self, o): return self._apply("mod", (self, o))
    def __rmod__(self, o): return self._apply("mod", (o, self))
    def __floordiv__(self, o): return self._apply("floordiv", (self, o))
    def __rfloordiv__(self, o): return self._apply("floordiv", (o, self))
    def __divmod__(self, o): return self.__floordiv__(o), self.__mod__(o)
    def __rdivmod__(self, o): return self.__rfloordiv__(o), self.__rmod__(o)

    def _unsupported_operator(self, *_):
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: bit operations (<<, >>, ^) are not defined for floats and "
            "not supported on traced values; supported: + - * / // % ** divmod, unary -, "
            "abs, comparisons, and & | ~ on conditions.")

    _unsupported_operator._gradc_refuses = True
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
        return _ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _function(func, args, kwargs)

    # --- ndarray methods gradc has no rule for ----------------------------------------
    def copy(self, order="C"):
        if order not in ("C", "F", "A", "K"):  # NumPy refuses other orders; a copy has no layout
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: x.copy(order=) takes 'C', 'F', 'A' or 'K', not {order!r}.")
        return Tracer(self.graph, self.node)  # a new array: writes into it leave this one alone

    def astype(self, dtype, *args, **kwargs):
        _check_astype(dtype, args, kwargs)
        return self

    def ravel(self, order="C"):
        _check_order(order)
        return self.reshape(-1) if self.shape else self

    def flatten(self, order="C"):
        _check_order(order)
        return Tracer(self.graph, _ops.reshape(self, (self.size,)).node)  # a copy, not a view

    @property
    def dtype(self):
        return np.dtype(bool) if self.is_condition else np.dtype(self.graph.dtype)

    def squeeze(self, axis=None): return np.squeeze(self, axis)
    def swapaxes(self, axis1, axis2): return np.swapaxes(self, axis1, axis2)
    def repeat(self, repeats, axis=None): return np.repeat(self, repeats, axis)
    def diagonal(self, offset=0, axis1=0, axis2=1): return np.diagonal(self, offset, axis1, axis2)
    def trace(self, offset=0, axis1=0, axis2=1): return np.trace(self, offset, axis1, axis2)
    def clip(self, min=None, max=None): return np.clip(self, min, max)  # noqa: A002
    def prod(self, *args, **kwargs): return _function(np.prod, (self, *args), kwargs)
    def cumsum(self, *args, **kwargs): return _function(np.cumsum, (self, *args), kwargs)
    def cumprod(self, *args, **kwargs): return _function(np.cumprod, (self, *args), kwargs)
    def var(self, *args, **kwargs): return _function(np.var, (self, *args), kwargs)
    def std(self, *args, **kwargs): return _function(np.std, (self, *args), kwargs)

    def sort(self, axis=-1, kind=None, order=None):
        """In place, as ndarray.sort: this array now holds its sorted values."""
        self._write(_function(np.sort, (self, axis, kind, order), {}).node)

    def __getattr__(self, name):
        # Only called when normal lookup fails: an ndarray method or attribute gradc
        # does not implement on traced values (x.clip, x.dtype, x.argmax...).
        if not name.startswith("_") and hasattr(np.ndarray, name):
            raise UnsupportedAttributeError(_unsupported_method_message(name))
        raise AttributeError(f"'Tracer' object has no attribute {name!r}")


class ArrayTracer(Tracer):
    """A traced array (a node with a shape): a Tracer that can be indexed, assigned into and
    measured with ``len``. A traced *scalar* has none of these, so NumPy does not take it for
    a sequence: ``y[0] = t`` on a NumPy float array then asks ``float(t)``, which gradc
    refuses with its own error (NumPy reports any error of a sequence-like value as "setting
    an array element with a sequence")."""

    __slots__ = ()

    def __setitem__(self, index, value):
        canon = _ops.canonical_index(index)
        if canon is None:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: gradc assigns into traced arrays at constant ints, slices, "
                "None and ... only (no boolean masks, arrays of indices or traced indices); "
                "use numpy.where(mask, new, y) to replace elements where a condition holds.")
        if not self.shape:
            raise errors.TracingError(f"{errors.where()}: a traced scalar cannot be indexed.")
        if isinstance(value, Tracer) and value._view is not None and value._view[0] is self \
                and getattr(value._view[2], "index", None) == canon \
                and value._view[1] == self._version:
            return  # y[1:] += v: the view's += has already written through into y
        try:
            self._write(self._apply("setitem", (self, value), (canon,)).node)
        except IndexError as exc:  # the index's shape rule: NumPy's IndexError, with the line
            raise _out_of_bounds(exc, self.shape) from None

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a traced scalar")
        return self.shape[0]

    def __getitem__(self, index):
        canon = _ops.canonical_index(index)
        if canon is None:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: gradc indexes traced arrays with constant ints, slices, "
                "None and ... only (no arrays of indices or traced indices).")
        if not self.shape:
            raise errors.TracingError(f"{errors.where()}: a traced scalar cannot be indexed.")
        try:
            item = self._apply("getitem", (self,), (canon,))
        except IndexError as exc:  # the index's shape rule: NumPy's IndexError, with the line
            raise _out_of_bounds(exc, self.shape) from None
        return self._view_result(item, _IndexView(canon))


def _out_of_bounds(exc, shape):
    """NumPy's IndexError for a traced array's index, as a ShapeError naming the line."""
    return errors.ShapeError(f"{errors.where()}: {exc} (a traced array of shape {shape}).")


class ScalarTracer(Tracer):
    """A traced scalar (a node of shape ()). It is a :class:`numbers.Number`, as the float it
    stands for is, so NumPy's type tests that do not dispatch (``numpy.isscalar``) answer
    as for a float. It is no ``numbers.Real``: gradc's own tests of Real mean a concrete
    number, and a traced array is no Number at all."""

    __slots__ = ()


numbers.Number.register(ScalarTracer)


class _IndexView:
    """How a view made by basic indexing rereads its base; writes into it go to ``index``."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __call__(self, base):
        return base._apply("getitem", (base,), (self.index,))


def _check_order(order):
    if order not in ("C", "A", "K"):
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: order={order!r} is not supported on traced arrays; gradc "
            "flattens in C order (order='C').")


class UnsupportedAttributeError(errors.UnsupportedFunctionError, AttributeError):
    """An ndarray attribute gradc has no rule for (an AttributeError too, so hasattr() is False)."""


# ndarray.conj and .conjugate: traced values are real, so they are their own conjugate.
Tracer.conjugate = Tracer.conj = lambda self: self


def _integer_rounding(name, instead):
    def method(self, *args):
        raise errors.MathModuleError(
            f"{errors.where()}: {name} of a traced value would return a Python int, which needs "
            f"a concrete number; use {instead}, which gives a float gradc can trace.")

    method.__name__ = name
    method._gradc_refuses = True
    return method


for _dunder, _name, _instead in (
        ("__floor__", "math.floor()", "numpy.floor(x)"),
        ("__ceil__", "math.ceil()", "numpy.ceil(x)"),
        ("__trunc__", "math.trunc()", "numpy.trunc(x)"),
        ("__round__", "round()", "numpy.rint(x) (or numpy.round(x, decimals))")):
    setattr(Tracer, _dunder, _integer_rounding(_name, _instead))


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
    init, xs = _operands((init, xs))
    xs_t = tuple(xs) if multiple else (xs,)
    t = _first_tracer((init, *xs_t))
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


# --- captured arrays: NumPy arrays the function reads are hidden parameters ------------------
#: The capture of the trace running in this thread (None: captured arrays stay constants).
_CAPTURING = threading.local()


class CapturedArray:
    """A float NumPy array that a traced function reads from outside its arguments (its
    closure, its module's globals, an attribute): a hidden parameter of the graph.

    ``position`` is its parameter number; ``array`` the object seen while tracing;
    ``lookup`` re-reads the name it was found under (a global or a closure cell) at call
    time, so rebinding the name is seen as Python would see it, or is None (found some
    other way: the same object is passed on every call). Changing the array in place
    changes the result; gradc never copies it into the source or the cache key.
    """

    __slots__ = ("position", "array", "lookup", "name")

    def __init__(self, position, array, lookup, name):
        self.position, self.array, self.lookup, self.name = position, array, lookup, name

    def current(self):
        """The array to pass now: the name's current value where it has one."""
        return self.array if self.lookup is None else self.lookup()


class _Captures:
    """While a function is traced: each float array that meets a traced value becomes one
    hidden parameter, traced whole like an array argument."""

    def __init__(self, graph, fn):
        self.graph, self.made = graph, {}
        self.sources = _outer_arrays(fn)

    def lift(self, array):
        found = self.made.get(id(array))
        if found is not None:
            return found[1]
        name, lookup = self.sources.get(id(array), (None, None))
        name = _hidden_name(name, self.graph)
        p = len(self.graph.params)
        value = _traced_param(self.graph, name, array.shape)
        self.graph.captured_arrays.append(CapturedArray(p, array, lookup, name))
        self.made[id(array)] = (array, value)  # the array is held, so its id stays its own
        return value


def _hidden_name(name, graph):
    taken = {n for n, _ in graph.params}
    base = name if name and identifier_or_none(name) == name else "captured"
    name, k = base, 0
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _outer_arrays(fn):
    """id(array) -> (name, lookup) for the float arrays ``fn`` names in its closure and in the
    globals its code reads (``lookup()`` re-reads that name)."""
    target = fn
    for _ in range(6):  # wrappers (functools.wraps), partials, bound methods, callable objects
        if getattr(target, "__wrapped__", None) is not None:
            target = target.__wrapped__
        elif getattr(target, "__code__", None) is not None:
            break
        else:
            target = (getattr(target, "func", None) or getattr(target, "__func__", None)
                      or getattr(type(target), "__call__", None))
    code = getattr(target, "__code__", None)
    if code is None:
        return {}
    found = {}
    for name, cell in zip(code.co_freevars, getattr(target, "__closure__", None) or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _capturable(value):
            found.setdefault(id(value), (name, functools.partial(_cell_value, cell)))
    module = getattr(target, "__globals__", {})
    for name in _global_names(code):
        value = module.get(name)
        if _capturable(value):
            found.setdefault(id(value), (name, functools.partial(_global_value, module, name)))
    return found


def _global_names(code):
    """The global names a code object (and the functions and lambdas nested in it) reads."""
    names, stack = [], [code]
    while stack:
        c = stack.pop()
        names.extend(c.co_names)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    return names


def _cell_value(cell):
    return cell.cell_contents


def _global_value(module, name):
    return module[name]


def _capturable(value):
    return (type(value) is np.ndarray and value.ndim > 0 and value.dtype.kind == "f"
            and value.size > 0)


def _captured(args):
    """``args`` with every float NumPy array in them (also inside lists and tuples) as the
    hidden parameter it is, while a trace captures arrays; else ``args`` unchanged."""
    captures = getattr(_CAPTURING, "current", None)
    if captures is None or _graph_of(args) is not captures.graph:
        return args  # not the traced function's own graph (a rule differentiating another)
    return tuple(_capture_one(captures, a) for a in args)


def _graph_of(args):
    """The graph the traced values among ``args`` belong to (None if there are none)."""
    found = _first_tracer(args)
    return None if found is None else found.graph


def _capture_one(captures, value):
    if _capturable(value):
        return captures.lift(value)
    if isinstance(value, (list, tuple)) and any(_capturable(v) or isinstance(v, (list, tuple))
                                                for v in value):
        return type(value)(_capture_one(captures, v) for v in value)
    return value


# --- arrays built from traced values ---------------------------------------------------------
def pack(value, like):
    """``value`` as one array traced whole in ``like``'s graph, as numpy.array builds it.

    ``value`` is NumPy's array_like holding traced values: a list or tuple (nested) of traced
    scalars, traced arrays and numbers (``[x, y * 2]``, ``[[a, b], [c, d]]``, a list
    comprehension ``[x[i] ** 2 for i in range(n)]``), or an object ndarray of them. A level of
    nesting whose items are scalars is one ``pack`` node (the vector of them); one whose items
    are arrays a ``stack`` of them along a new first axis; a part holding no traced value is
    one constant. So an array is always one node with a shape, whatever it was built from; where
    that is small, gradc/unroll.py turns it back into scalar code after differentiating.
    """
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = value.tolist()  # nested lists of its elements (a 0-d array: its element)
    if isinstance(value, (list, tuple)):
        value = _operands(value)  # arrays NumPy made in the traced function: what they hold
    return _stacked(value, like)


def _stacked(value, like):
    if not isinstance(value, (list, tuple)):
        if isinstance(value, (bool, np.bool_)):
            value = float(value)  # numpy.array([x, True]) is [x, 1.0]
        item = Tracer(like.graph, like._lift(value))
        if item.is_condition:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: numpy.array of traced conditions (comparisons) is not "
                "supported: gradc's arrays hold floats. Compare whole arrays for a mask "
                "(x > 0 on an array), or turn each condition into a number with "
                "gradc.where(condition, 1.0, 0.0).")
        return item
    if _graph_of(value) is None:  # numbers only: NumPy's array of them, one constant
        try:
            numbers = np.array(value, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise errors.ShapeError(f"{errors.where()}: numpy.array: {exc}.") from None
        return Tracer(like.graph, like._lift(numbers))
    items = [_stacked(v, like) for v in value]
    shapes = sorted({item.shape for item in items})
    if len(shapes) > 1:
        raise errors.ShapeError(
            f"{errors.where()}: numpy.array of traced values needs the items at each level of "
            f"nesting to have one shape (a rectangular array); got shapes "
            f"{', '.join(map(str, shapes))}.")
    nodes = tuple(item.node for item in items)
    if shapes == [()]:
        return Tracer(like.graph, like.graph.add("pack", nodes))
    return Tracer(like.graph, like.graph.add("stack", nodes, (0,)))


def _name_of(func):
    return getattr(func, "__name__", type(func).__name__)


_FLOAT64 = (np.dtype(np.float64),)


def _check_astype(dtype, args, kwargs):
    """``astype`` keeps traced values as they are: allowed only to float64, which they are."""
    try:
        same = np.dtype(dtype) in _FLOAT64
    except TypeError:
        same = False
    if not same or args or kwargs:
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: .astype({dtype!r}) is not supported on traced values: they are "
            "float64, and gradc cannot round them to another type; remove the call.")


# --- ufuncs ---------------------------------------------------------------------------------
_EXTRA_UFUNCS = {"square", "reciprocal", "positive", "conjugate"}

#: The ufuncs :func:`_ufunc` traces (by NumPy name): the op table's, and those it composes.
TRACED_UFUNCS = frozenset(UFUNCS) | _EXTRA_UFUNCS | {"matmul", "divmod"}


# --- refusal messages: why, what to use instead, and what is supported (gradc/surface.py) ----
def _unsupported_message(qualname):
    """``file:line: numpy.<name> is not supported by gradc[: why | ; use ...]. Supported NumPy
    functions, by kind: ...`` for a NumPy function or ufunc gradc refuses."""
    hint = _surface.refusal_hint(qualname.partition(".")[2])
    return (f"{errors.where()}: {qualname} is not supported by gradc{hint}. "
            f"Supported NumPy functions, by kind: {_surface.listing()}.")


def _unsupported_method_message(name):
    return (f"{errors.where()}: .{name} of a NumPy array is not supported on traced values"
            f"{_surface.refusal_hint(name, methods=True)}. Traced values have: "
            f"{_surface.method_listing()}; and NumPy functions, by kind: {_surface.listing()}.")


def _unsupported_ufunc_message(name):
    return _unsupported_message(f"numpy.{name}")


def _qualname(func):
    """``'numpy.linalg.svd'`` or ``'numpy.argmax'``: how the user reaches ``func``."""
    name = _name_of(func)
    if getattr(np.linalg, name, None) is func and getattr(np, name, None) is not func:
        return f"numpy.linalg.{name}"
    return f"numpy.{name}"


def _ufunc(ufunc, method, inputs, kwargs):
    """A NumPy ufunc on traced values (scalars and arrays traced whole)."""
    name = ufunc.__name__
    inputs = _captured(_operands(inputs))
    out = kwargs.pop("out", None)
    if method != "__call__":
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: numpy.{name}.{method} is not supported on traced values; "
            f"call numpy.{name}(x, y) itself (or numpy.sum, numpy.cumsum for sums).")
    if kwargs:
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: numpy.{name}(..., {', '.join(f'{k}=' for k in sorted(kwargs))}) "
            f"is not supported on traced values: gradc does not implement the keyword(s) "
            f"{', '.join(sorted(kwargs))}; call numpy.{name}(x, y) plainly.")
    if name == "square":
        result = apply("mul", inputs[0], inputs[0])
    elif name == "reciprocal":
        result = apply("div", 1.0, inputs[0])
    elif name in ("positive", "conjugate"):
        result = inputs[0]
    elif name == "matmul":
        result = _matmul(*inputs)
    elif name == "divmod":
        return apply("floordiv", *inputs), apply("mod", *inputs)
    elif name in UFUNCS:
        result = apply(UFUNCS[name], *inputs)
    else:  # not in TRACED_UFUNCS
        raise errors.UnsupportedFunctionError(_unsupported_ufunc_message(name))
    return result if out is None else _store(out, result, name)


def _store(out, result, name):
    """``out=`` of a ufunc (``x += 1`` passes it): write into a traced array, or into an array
    NumPy made in the traced function; any other NumPy array can hold numbers only."""
    target = out[0] if isinstance(out, tuple) and len(out) == 1 else out
    if isinstance(target, _AssignableArray):
        target[...] = result  # it holds traced values from now on
        return target
    if isinstance(target, Tracer) and target.shape:
        if not isinstance(result, Tracer):
            result = target._lift(result)
            result = Tracer(target.graph, result)
        if result.shape != target.shape:
            raise errors.ShapeError(f"{errors.where()}: numpy.{name}(..., out=) would write shape "
                                    f"{result.shape} into a traced array of shape {target.shape}.")
        target._write(result.node)
        return target
    raise errors.TracingError(
        f"{errors.where()}: numpy.{name} would write traced values into a NumPy "
        f"{getattr(target, 'dtype', type(target).__name__)} array (out=, or in-place "
        "arithmetic like y += x on a NumPy array), which can hold numbers only; write "
        "y = y + x instead.")


def _matmul(a, b):
    """``a @ b``: one op (batched N-D operands: see numpy_api.matmul)."""
    return _numpy_rules.matmul(a, b)


# --- NumPy functions --------------------------------------------------------------------------
def _function(func, args, kwargs):
    """A NumPy function called on traced values: run by its rule, or refused by name."""
    args = _captured(_operands(args))
    kwargs = dict(zip(kwargs, _operands(tuple(kwargs.values()))))
    rule = _FUNCTIONS.get(func) or _WHOLE_FUNCTIONS.get(func)
    if rule is None:
        raise errors.UnsupportedFunctionError(_unsupported_message(_qualname(func)))
    return rule(**_arguments(func, args, kwargs, rule))


def _arguments(func, args, kwargs, rule):
    """The arguments of a NumPy call by name, for ``rule``; a gradc error for any argument
    that ``rule`` does not take given a value other than its default."""
    name = _name_of(func)
    try:
        signature = _signature(func)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise errors.UnsupportedFunctionError(f"{errors.where()}: numpy.{name}: {exc}.") from None
    taken = set(_signature(rule).parameters)
    chosen = {}
    for pname, value in bound.arguments.items():
        param = signature.parameters[pname]
        if param.kind is param.VAR_KEYWORD and pname in taken:
            chosen[pname] = value  # the rule checks these keywords itself (numpy.pad)
            continue
        if param.kind is param.VAR_KEYWORD:
            extra = sorted(value)
        elif pname in taken:
            chosen[pname] = value
            continue
        else:
            extra = [] if _is_default(pname, value, param.default) else [pname]
        if extra:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: numpy.{name}(..., {', '.join(f'{k}=' for k in extra)}) is not "
                f"supported on traced values: gradc does not implement the argument(s) "
                f"{', '.join(extra)}; remove them"
                + f" (numpy.{name} takes {', '.join(sorted(taken))} here).")
    return chosen


@functools.lru_cache(maxsize=None)
def _signature(func):
    return inspect.signature(func)


def _is_default(name, value, default):
    if value is default or (value is None and default is None):
        return True
    if name == "where" and value is True:  # where=True is "everywhere"
        return True
    return type(value) in (bool, str, int) and type(value) is type(default) and value == default


def _traced(value):
    """``value`` as a traced value: itself, or (a list or tuple holding traced values) the
    array numpy.array makes of it, traced whole (see :func:`pack`); numbers as they are."""
    if isinstance(value, Tracer):
        return value
    like = _first_tracer(value)
    return value if like is None else pack(value, like)


def _reduction_arguments(func, a, args, kwargs):
    """``(axis, keepdims)`` of a reduction method call ``a.sum(*args, **kwargs)``; a gradc
    error for the arguments gradc does not implement (dtype, out, initial, where)."""
    chosen = _arguments(func, (a, *args), kwargs, _sum)
    return chosen.get("axis"), bool(chosen.get("keepdims", False))


def _sum(a, axis=None, keepdims=False):
    return _traced(a)._reduce("sum", axis, keepdims)


def _mean(a, axis=None, keepdims=False):
    return _traced(a).mean(axis=axis, keepdims=keepdims)


def _extreme(op):
    def reduce(a, axis=None, keepdims=False):
        return _traced(a)._reduce(op, axis, keepdims)

    reduce.__name__ = op
    return reduce


def _transpose(a, axes=None):
    return _traced(a).transpose(*(() if axes is None else (axes,)))


def _reshape(a, shape):
    return _traced(a).reshape(shape)


def _join(op, arrays, axis):
    """numpy.stack and numpy.concatenate: one op over the pieces (traced scalars too: a stack
    of them is the array of their values), each piece lifted as numpy.asarray would take it."""
    arrays = [_traced(a) for a in arrays]  # (an array: its rows, as NumPy iterates it)
    t = _first_tracer(arrays)
    ndim = len(t.shape) + (1 if op == "stack" else 0)
    if not -ndim <= axis < ndim:
        raise errors.ShapeError(f"{errors.where()}: axis {axis} is out of range for {op}.")
    return t._apply(op, arrays, (axis % ndim,))


def _stack(arrays, axis=0):
    return _join("stack", arrays, axis)


def _concatenate(arrays, axis=0):
    return _join("concatenate", arrays, axis)


def _dot(a, b):
    a, b = _traced(a), _traced(b)
    if isinstance(a, Tracer) and not a.shape or isinstance(b, Tracer) and not b.shape:
        return a * b
    return _numpy_rules.dot(a, b)


def _where(condition, x=None, y=None):
    if x is None or y is None:
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: numpy.where(condition) with one argument (the indices where it "
            "holds) is not supported on traced values; use numpy.where(condition, a, b).")
    return where(condition, x, y)


def _shape(a):
    a = _traced(a)
    return a.shape if isinstance(a, Tracer) else np.shape(a)


def _ndim(a):
    return len(_shape(a))


def _size(a, axis=None):
    shape = _shape(a)
    if axis is None:
        return int(np.prod(shape))
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
            or not -len(shape) <= axis < len(shape):
        raise errors.ShapeError(f"{errors.where()}: numpy.size: axis {axis!r} is out of range "
                                f"for shape {shape}.")
    return shape[axis]


#: NumPy function -> gradc's rule, for traced scalars and arrays alike (gradc.numpy_api has
#: the rest). A rule's parameter names are NumPy's; any other argument must be left default.
_FUNCTIONS = {
    np.sum: _sum, np.mean: _mean,
    np.max: _extreme("max"), np.min: _extreme("min"),
    np.amax: _extreme("max"), np.amin: _extreme("min"),
    np.transpose: _transpose, np.reshape: _reshape,
    np.stack: _stack, np.concatenate: _concatenate,
    np.dot: _dot, np.where: _where,
    np.shape: _shape, np.ndim: _ndim, np.size: _size,
}


def _first_tracer(value):
    """The first Tracer in ``value`` (also inside lists, tuples and object arrays), or None."""
    if isinstance(value, Tracer):
        return value
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = value.tolist() if value.shape else [value[()]]
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _first_tracer(v)
            if found is not None:
                return found
    return None


def apply(op_name, *args):
    """``op(*args)``: traced when any argument is traced, else computed with NumPy."""
    args = _operands(args)
    t = _first_tracer(args)
    if t is not None:
        return t._apply(op_name, args)
    with np.errstate(all="ignore"):
        return OPS[op_name].compute(args, ())


def where(cond, a, b):
    """``a if cond else b``, traceable: the condition may depend on traced values (and a
    constant array of conditions selects element by element)."""
    cond, a, b = (_traced(v) for v in _operands((cond, a, b)))
    t = _first_tracer((cond, a, b))
    if t is None:
        return np.where(cond, a, b)
    if not isinstance(cond, Tracer):
        if np.ndim(cond) == 0:
            return a if cond else b
        cond = np.asarray(cond)  # a constant mask: one where node selecting element by element
        if cond.dtype != bool:
            cond = cond != 0
    if isinstance(cond, Tracer) and not cond.is_condition:  # a number is true when non-zero
        cond = cond != 0.0
    return t._apply("where", (cond, a, b))


def identifier_or_none(name, limit=64):
    """``name`` as it can appear in emitted source as an identifier, else None.

    Python reads identifiers NFKC-normalised (``def ℌ():`` defines ``H``, ``ﬁ`` is ``fi``),
    so the name is normalised first and checked after: the name returned is the name
    Python defines, and a name that normalises to a keyword is None. A name longer than
    ``limit`` is cut and given 8 hex digits of its hash (unique, and short enough for the
    file names numba derives from function names in its cache).
    """
    import hashlib
    import unicodedata

    if not isinstance(name, str):
        return None
    name = unicodedata.normalize("NFKC", name)
    if not name.isidentifier() or keyword.iskeyword(name) or name == "__debug__":
        return None
    if len(name) > limit:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = unicodedata.normalize("NFKC", name[:limit - 9]) + "_" + digest
    return name if name.isidentifier() else None


def _traced_param(graph, name, shape, whole=True):
    """The traced value of a new parameter of ``graph``: a scalar (``shape`` None) or one array
    traced whole. Arrays are always traced whole (``whole=False``, the element tracer that
    made one traced scalar per element, is gone: gradc/unroll.py unrolls small programs
    after differentiating, as a Graph -> Graph pass)."""
    if not whole and shape is not None:
        raise errors.TracingError(
            f"{errors.where()}: arrays are traced whole; parameter {name!r} cannot be traced "
            "element by element (unroll the traced graph with gradc.unroll.unroll instead).")
    if shape is None:
        return Tracer(graph, graph.param(name))
    return Tracer(graph, graph.param(name, shape, whole=True))


def _float_constant(value):
    """A real constant of a traced expression as a float; a gradc error where it has none
    (an int too large for a float: Python's own float arithmetic raises there too)."""
    try:
        return float(value)
    except OverflowError:
        digits = int(int(value).bit_length() * 0.30103)
        raise errors.TracingError(
            f"{errors.where()}: an integer constant of about {digits} digits is too large for "
            "a float (at most about 1.8e308); write it as a float, or scale it down.") from None


def _definition(fn):
    """``'file.py:12'`` where ``fn`` is defined (its frame is gone once it has returned)."""
    target = fn
    for _ in range(4):  # functools.partial, bound methods, callable objects
        code = getattr(target, "__code__", None)
        if code is not None:
            return f"{code.co_filename}:{code.co_firstlineno}"
        target = (getattr(target, "func", None) or getattr(target, "__func__", None)
                  or getattr(type(target), "__call__", None))
    return errors.where()


def _kind(value):
    """What a returned value is, for error messages: 'list', 'array of shape (3,)'."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    if isinstance(value, Tracer) and value.shape:
        return f"a traced array of shape {value.shape}"
    name = type(value).__name__
    return ("an " if name[0] in "aeiouAEIOU" else "a ") + name


def trace(fn, params, name, origin=None, multiple=False, capture=None):
    """Run ``fn`` on traced arguments; return the Graph of its result.

    With ``multiple``, ``fn`` may also return a tuple, list or array of floats
    (for Jacobians): its elements become the outputs in C order, and ``out_tree``
    is a tuple of output numbers (tuple or list) or an :class:`ArrayOut` (array).

    ``params`` is a list of names (scalars) or ``(name, shape)`` pairs (also written
    ``(name, shape, True)``); an array parameter is one traced array, a node with a shape,
    on which NumPy code (slicing, ``np.sum``, ``@``, ufuncs) runs unchanged. Every array
    the function makes is one such node too (``np.array([x, y])``: see :func:`pack`).

    The local variable names of ``fn``'s frame, read when it returns, become the
    names of the nodes they hold.

    ``capture`` ("whole"; None: they stay constants) makes each float NumPy array the
    function reads from outside its arguments a hidden parameter after the arguments,
    traced whole and listed in ``graph.captured_arrays`` (see :class:`CapturedArray`).
    """
    graph = Graph(name, origin)
    params = [(p, None) if isinstance(p, str) else p for p in params]
    tracers = [_traced_param(graph, p[0], p[1], *p[2:3] or (True,)) for p in params]
    code = getattr(fn, "__code__", None)
    captured = {}
    outer_capture = getattr(_CAPTURING, "current", None)
    _CAPTURING.current = None if capture is None else _Captures(graph, fn)
    try:
        return _run_traced(graph, fn, tracers, code, captured, name, multiple)
    finally:
        _CAPTURING.current = outer_capture  # a gradc function traced inside another one


def _run_traced(graph, fn, tracers, code, captured, name, multiple):
    """``trace``'s body: run ``fn``, name the nodes after its locals, set the outputs."""

    def profile(frame, event, arg):
        if event == "return" and frame.f_code is code and not captured:
            captured.update(frame.f_locals)

    previous = sys.getprofile()
    # A profiler already running (cProfile, whose hook sys.setprofile cannot put back: its
    # getprofile() object is not callable) is left alone; the nodes then go unnamed.
    ours = code is not None and previous is None
    if ours:
        sys.setprofile(profile)
    try:
        result = _run_with_constructors(fn, tracers, code)
    finally:
        if ours:
            sys.setprofile(None)

    for local, value in captured.items():
        if isinstance(value, Tracer) and value.graph is graph and identifier_or_none(local):
            if value.node.op not in ("input", "const"):
                graph.names.setdefault(value.node.id, local)

    if multiple and isinstance(result, Tracer) and result.shape and result.graph is graph \
            and not result.is_condition:
        graph.set_outputs([result.node], 0)  # an array traced whole is one output node
        return graph
    if multiple and (isinstance(result, (tuple, list))
                     or isinstance(result, np.ndarray) and result.ndim > 0):
        return _trace_outputs(graph, result, name, fn)
    if isinstance(result, np.ndarray) and result.shape == ():
        result = result[()]
    graph.set_outputs([_output_node(graph, result, name, fn, multiple)], 0)
    return graph


def _output_node(graph, result, name, fn, multiple):
    """The node of a traced function's one float result; a TracingError naming the function's
    definition for anything else (a list, None, a condition, an array)."""
    if isinstance(result, Tracer) and result.graph is graph and not result.is_condition \
            and not result.shape:
        out = result.node
        if out.op not in ("input", "const") and identifier_or_none(name):
            graph.names.setdefault(out.id, name)  # the result is named after the function: J
        return out
    if isinstance(result, (numbers.Real, np.floating, np.integer)) and not isinstance(
            result, (bool, np.bool_)):
        return graph.const(_float_constant(result))
    where = f"{_definition(fn)}: {name}"
    if isinstance(result, Tracer) and result.graph is not graph:
        raise errors.TracingError(f"{where} returned a value traced by another function; "
                                  "pass that value as an argument instead of capturing it.")
    if isinstance(result, Tracer) and result.is_condition:
        raise errors.TracingError(
            f"{where} returned a condition (a comparison); gradc differentiates functions "
            "that return a float. Use gradc.where(...) to turn it into a number.")
    more = ("" if multiple else " (gradc.jacobian differentiates functions that return a tuple, "
            "list or array of floats)")
    raise errors.TracingError(
        f"{where} returned {_kind(result)}; gradc differentiates functions that return one "
        f"float (a scalar loss or model value): return a float, for example the numpy.sum of "
        f"your result{more}.")


def _trace_outputs(graph, result, name, fn):
    """Set a tuple/list/array result of a traced function as the graph's outputs."""
    shape, elements = _nesting(result)
    outputs = []
    for value in elements:
        if isinstance(value, Tracer) and value.graph is graph and not value.is_condition \
                and not value.shape:
            outputs.append(value.node)
        elif isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
                value, (bool, np.bool_)):
            outputs.append(graph.const(_float_constant(value)))
        else:
            raise errors.TracingError(
                f"{_definition(fn)}: {name} returned {_kind(result)} holding "
                f"{_kind(value)}; its elements must be floats.")
    indices = tuple(range(len(outputs)))
    tree = ArrayOut(name, shape, indices) if isinstance(result, np.ndarray) else indices
    graph.set_outputs(outputs, tree)
    return graph


def _nesting(value):
    """``(shape, elements in C order)`` of a nesting of lists and tuples as NumPy reads it
    (an item that is not a list or tuple is one element; where the items' nestings differ,
    each item is one element, as in an object array)."""
    if isinstance(value, np.ndarray):
        return value.shape, list(value.flat)
    if not isinstance(value, (list, tuple)):
        return (), [value]
    parts = [_nesting(v) for v in value]
    if len({shape for shape, _ in parts}) > 1:
        return (len(value),), list(value)
    inner = parts[0][0] if parts else ()
    return (len(value),) + inner, [e for _, part in parts for e in part]


# --- what the modules built on Tracer install ----------------------------------------------
# gradc.numpy_api (NumPy functions composed from table ops on arrays traced whole) and
# gradc.constructors (arrays NumPy makes in traced code, able to receive traced values) build
# on Tracer, so they import this module, never the other way round: when they are imported
# (gradc/__init__.py imports both) they hand their rules over through these two functions.
# Until then no NumPy function has a whole-array rule and no array is assignable.
_WHOLE_FUNCTIONS: dict = {}
_numpy_rules = None       # gradc.numpy_api: matmul and dot of arrays traced whole
_surface = None           # gradc.surface: what refusal messages say is supported, and why not
_AssignableArray = ()     # an isinstance target that matches nothing
_HOLDERS = (tuple, list, dict)


def _operands(args):
    return args


def _run_with_constructors(fn, tracers, code):
    return fn(*tracers)


def install_numpy_rules(module):
    """gradc.numpy_api's rules: ``module.RULES`` (NumPy function -> rule), ``matmul``, ``dot``."""
    global _WHOLE_FUNCTIONS, _numpy_rules
    _WHOLE_FUNCTIONS, _numpy_rules = module.RULES, module


def install_surface(module):
    """gradc.surface, which refusal messages quote (``refusal_hint``, ``listing``,
    ``method_listing``); it reads this module's rules, so it is installed, not imported."""
    global _surface
    _surface = module


def install_constructors(assignable, operands, run):
    """gradc.constructors' arrays: the AssignableArray class, ``operands(args)`` (each one as
    what it holds) and ``run(fn, tracers, code)`` (the traced call, with stand-in constructors)."""
    global _AssignableArray, _HOLDERS, _operands, _run_with_constructors
    _AssignableArray, _HOLDERS = assignable, (assignable, tuple, list, dict)
    _operands, _run_with_constructors = operands, run
