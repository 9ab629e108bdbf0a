"""NumPy functions on arrays traced whole, composed from the op table.

Each rule takes NumPy's parameter names and builds graph from table ops
(``gradc/ops.py``): ``var`` is a mean of squared deviations, ``flip`` a getitem
with step -1, ``tril`` a ``where`` with a constant mask, ``einsum`` transposes,
reshapes and a product, and so on. Composed rules need no derivative of their
own: reverse and forward mode, Hessians and the loop lowering see only the ops
they are made of. The few that composition cannot express (running sums and
products, ``prod``, sorting, item assignment, linear algebra) are table ops.

:data:`RULES` maps each NumPy function to its rule; ``gradc.trace`` consults it
for every NumPy call that has a traced value among its arguments (arrays and scalars
alike: every traced array is one node with a shape).

>>> import numpy as np, gradc
>>> f = gradc.grad(lambda x: np.sum(np.cumsum(x) * np.var(x)), arrays="numpy", backend="python")
>>> np.round(f(np.array([1.0, 2.0, 4.0])), 6).tolist()
[-5.111111, 0.666667, 13.777778]
"""
from __future__ import annotations

import collections
import numbers
import sys

import numpy as np

from . import errors
from . import ops as _ops
from .trace import Tracer, _IndexView, where as _where


# --- helpers ---------------------------------------------------------------------------------
def _tracer(value, like):
    """``value`` as a Tracer of ``like``'s graph (constants lifted)."""
    if isinstance(value, Tracer):
        return value
    return Tracer(like.graph, like._lift(value))


def _first_tracer(*values):
    for v in values:
        if isinstance(v, Tracer):
            return v
        if isinstance(v, (list, tuple)):
            found = _first_tracer(*v)
            if found is not None:
                return found
    return None


def _array(value, like=None):
    """``value`` as a traced array (a constant lifted into ``like``'s graph)."""
    if like is None:
        like = _first_tracer(value)
    return _tracer(value, like)


def _shape_error(message):
    return errors.ShapeError(f"{errors.where()}: {message}.")


def _unsupported(message):
    return errors.UnsupportedFunctionError(f"{errors.where()}: {message}.")


def _axis(axis, ndim, name="axis"):
    if isinstance(axis, bool) or not isinstance(axis, (numbers.Integral,)):
        raise _unsupported(f"{name} must be a constant int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise _shape_error(f"{name} {axis} is out of range for an array of {ndim} dimensions")
    return int(axis) % ndim


def _axes(axis, ndim):
    """``axis`` (None, an int or a tuple) as a sorted tuple of non-negative axes, or None."""
    if axis is None:
        return None
    items = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    axes = tuple(sorted(_axis(a, ndim) for a in items))
    if len(set(axes)) != len(axes):
        raise _shape_error(f"repeated axis in {axis!r}")
    return axes


def _count(shape, axes):
    return int(np.prod([shape[a] for a in (range(len(shape)) if axes is None else axes)]))


def _int_constant(value, name):
    if isinstance(value, Tracer) or isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _unsupported(f"{name} must be a constant int here, got {type(value).__name__}")
    return int(value)


def _slice_along(x, axis, start, stop, step=None):
    return x._apply("getitem", (x,), (_ops._axis_item(axis, x.ndim, ("s", start, stop, step)),))


def _concat(parts, axis):
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    t = _first_tracer(*parts)
    return t._apply("concatenate", [_tracer(p, t) for p in parts], (axis,))


def _fill(like, value, shape):
    """A traced array of ``shape`` holding the constant ``value`` everywhere."""
    scalar = Tracer(like.graph, like.graph.const(float(value)))
    return scalar if not shape else _ops.broadcast_to(scalar, tuple(shape))


def _mask(condition, a, b):
    """``where`` with a constant boolean mask (broadcast against a and b)."""
    return _where(np.asarray(condition, dtype=bool), a, b)


# --- copies and views ------------------------------------------------------------------------
def copy(a, order="K"):
    if order not in ("C", "F", "A", "K"):  # NumPy refuses other orders; a copy has no layout
        raise _unsupported(f"numpy.copy: order must be 'C', 'F', 'A' or 'K', got {order!r}")
    return Tracer(a.graph, a.node) if isinstance(a, Tracer) else np.copy(a)


def ravel(a, order="C"):
    a = _array(a)
    return a.ravel(order) if a.shape else a.reshape(1)  # a scalar: one element, as NumPy's


def squeeze(a, axis=None):
    a = _array(a)
    axes = _axes(axis, a.ndim)
    if axes is None:
        axes = tuple(k for k, n in enumerate(a.shape) if n == 1)
    if any(a.shape[k] != 1 for k in axes):
        raise _shape_error(f"cannot squeeze an axis whose length is not 1 (shape {a.shape})")
    return a.reshape(tuple(n for k, n in enumerate(a.shape) if k not in axes))


def expand_dims(a, axis):
    a = _array(a)
    items = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    ndim = a.ndim + len(items)
    axes = _axes(items, ndim)
    shape, it = [], iter(a.shape)
    for k in range(ndim):
        shape.append(1 if k in axes else next(it))
    return a.reshape(tuple(shape))


def _atleast(arys, ndim, place):
    out = []
    for a in arys:
        t = _array(a, _first_tracer(*arys))
        if t.ndim < ndim:
            t = t.reshape(place(t.shape))
        out.append(t)
    return out[0] if len(out) == 1 else tuple(out)


def atleast_1d(arys):
    return _atleast(arys, 1, lambda s: (1,))


def atleast_2d(arys):
    return _atleast(arys, 2, lambda s: (1,) * (2 - len(s)) + s)


def atleast_3d(arys):
    return _atleast(arys, 3, lambda s: {0: (1, 1, 1), 1: (1,) + s + (1,), 2: s + (1,)}[len(s)])


def swapaxes(a, axis1, axis2):
    a = _array(a)
    order = list(range(a.ndim))
    i, j = _axis(axis1, a.ndim), _axis(axis2, a.ndim)
    order[i], order[j] = order[j], order[i]
    return a.transpose(tuple(order))


def moveaxis(a, source, destination):
    a = _array(a)
    src = (source,) if isinstance(source, numbers.Integral) else tuple(source)
    dst = (destination,) if isinstance(destination, numbers.Integral) else tuple(destination)
    if len(src) != len(dst):
        raise _shape_error("moveaxis needs as many destinations as sources")
    src = [_axis(s, a.ndim, "source") for s in src]
    dst = [_axis(d, a.ndim, "destination") for d in dst]
    order = [k for k in range(a.ndim) if k not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return a.transpose(tuple(order))


def rollaxis(a, axis, start=0):
    a = _array(a)
    axis = _axis(axis, a.ndim)
    start = _int_constant(start, "start")
    start = start + a.ndim if start < 0 else start
    if not 0 <= start <= a.ndim:
        raise _shape_error(f"start {start} is out of range")
    if axis < start:
        start -= 1
    return moveaxis(a, axis, start)


def _flip_axes(a, axes):
    items = []
    for k in range(a.ndim):
        items.append(("s", None, None, -1) if k in axes else ("s", None, None, None))
    return a._view_result(a._apply("getitem", (a,), (tuple(items),)), _IndexView(tuple(items)))


def flip(m, axis=None):
    m = _array(m)
    axes = tuple(range(m.ndim)) if axis is None else _axes(axis, m.ndim)
    return _flip_axes(m, axes)


def fliplr(m):
    m = _array(m)
    if m.ndim < 2:
        raise _shape_error("fliplr needs an array of at least 2 dimensions")
    return _flip_axes(m, (1,))


def flipud(m):
    m = _array(m)
    if m.ndim < 1:
        raise _shape_error("flipud needs an array of at least 1 dimension")
    return _flip_axes(m, (0,))


def roll(a, shift, axis=None):
    a = _array(a)
    if axis is None:
        return roll(a.ravel(), shift, 0).reshape(a.shape)
    shifts = (shift,) if isinstance(shift, numbers.Integral) else tuple(shift)
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    shifts, axes = np.broadcast_arrays(np.array(shifts), np.array(axes))
    total = collections.Counter()
    for s, ax in zip(shifts.ravel(), axes.ravel()):
        total[_axis(int(ax), a.ndim)] += _int_constant(int(s), "shift")
    out = a
    for ax in sorted(total):
        n = a.shape[ax]
        s = total[ax] % n if n else 0
        if s:
            out = _concat([_slice_along(out, ax, n - s, None), _slice_along(out, ax, None, n - s)], ax)
    return out if out is not a else Tracer(a.graph, a.node)


def rot90(m, k=1, axes=(0, 1)):
    m = _array(m)
    if len(axes) != 2:
        raise _shape_error("rot90 needs two axes")
    a0, a1 = _axis(axes[0], m.ndim), _axis(axes[1], m.ndim)
    if a0 == a1:
        raise _shape_error("rot90 needs two different axes")
    k = _int_constant(k, "k") % 4
    if k == 0:
        return m[...]
    if k == 2:
        return flip(flip(m, a0), a1)
    order = list(range(m.ndim))
    order[a0], order[a1] = order[a1], order[a0]
    if k == 1:
        return flip(m, a1).transpose(tuple(order))
    return flip(m.transpose(tuple(order)), a1)


def broadcast_to(array, shape):
    array = _array(array)
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    try:
        np.broadcast_shapes(array.shape, shape)
        if np.broadcast_shapes(array.shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise _shape_error(f"cannot broadcast shape {array.shape} to {shape}") from None
    return _ops.broadcast_to(array, shape)


def broadcast_arrays(args):
    t = _first_tracer(*args)
    arrays = [_tracer(a, t) for a in args]
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise _shape_error(f"shapes {[a.shape for a in arrays]} do not broadcast together") from None
    return tuple(_ops.broadcast_to(a, shape) for a in arrays)


def _like(a, value, shape):
    a = _array(a)
    shape = a.shape if shape is None else ((shape,) if isinstance(shape, numbers.Integral)
                                           else tuple(shape))
    if isinstance(value, Tracer):
        return Tracer(a.graph, _ops.broadcast_to(value, shape).node)
    return Tracer(a.graph, _fill(a, value, shape).node)


def zeros_like(a, dtype=None, shape=None):
    _float_dtype(dtype)
    return _like(a, 0.0, shape)


def ones_like(a, dtype=None, shape=None):
    _float_dtype(dtype)
    return _like(a, 1.0, shape)


def full_like(a, fill_value, dtype=None, shape=None):
    _float_dtype(dtype)
    return _like(a, fill_value, shape)


def empty_like(a, dtype=None, shape=None):
    _float_dtype(dtype)
    return _like(a, 0.0, shape)  # its contents are undefined in NumPy; zeros are one choice


def _float_dtype(dtype):
    if isinstance(dtype, (Tracer, np.ndarray)):  # np.dtype() would read a Tracer's .dtype
        raise _unsupported(f"dtype must be a NumPy dtype, not a {type(dtype).__name__}")
    if dtype is not None and np.dtype(dtype).kind != "f":
        raise _unsupported(f"dtype={np.dtype(dtype).name} is not supported on traced values "
                           "(they are floats)")


# --- joining and splitting -------------------------------------------------------------------
def _join_all(tup, axis):
    t = _first_tracer(*tup)
    arrays = [_tracer(a, t) for a in tup]
    if not arrays:
        raise _shape_error("need at least one array to join")
    axis = _axis(axis, arrays[0].ndim)
    try:
        _ops._concatenate_shape((axis,), *(a.shape for a in arrays))
    except ValueError as exc:
        raise _shape_error(f"cannot join shapes {[a.shape for a in arrays]} ({exc})") from None
    return _concat(arrays, axis)


def hstack(tup):
    arrays = [_array(a, _first_tracer(*tup)) for a in tup]
    arrays = [a.reshape((1,)) if a.ndim == 0 else a for a in arrays]
    return _join_all(arrays, 0 if arrays and arrays[0].ndim == 1 else 1)


def vstack(tup):
    t = _first_tracer(*tup)
    arrays = [atleast_2d((_tracer(a, t),)) for a in tup]
    return _join_all(arrays, 0)


def dstack(tup):
    t = _first_tracer(*tup)
    arrays = [atleast_3d((_tracer(a, t),)) for a in tup]
    return _join_all(arrays, 2)


def column_stack(tup):
    t = _first_tracer(*tup)
    arrays = []
    for a in tup:
        a = _tracer(a, t)
        arrays.append(a.reshape((a.size, 1)) if a.ndim < 2 else a)
    return _join_all(arrays, 1)


def append(arr, values, axis=None):
    t = _first_tracer(arr, values)
    arr, values = _tracer(arr, t), _tracer(values, t)
    if axis is None:
        return _join_all([arr.ravel() if arr.ndim != 1 else arr, values.ravel() if values.ndim != 1
                          else values], 0)
    return _join_all([arr, values], axis)


def _split(ary, indices_or_sections, axis, exact):
    ary = _array(ary)
    axis = _axis(axis, ary.ndim)
    n = ary.shape[axis]
    if isinstance(indices_or_sections, numbers.Integral):
        sections = int(indices_or_sections)
        if sections <= 0:
            raise _shape_error("the number of sections must be larger than 0")
        if exact and n % sections:
            raise _shape_error(f"array split does not result in an equal division ({n} into {sections})")
        sizes = [len(p) for p in np.array_split(np.arange(n), sections)]
        bounds = np.cumsum([0] + sizes).tolist()
    else:
        cuts = [_int_constant(int(c) if isinstance(c, np.integer) else c, "split index")
                for c in indices_or_sections]
        bounds = [0] + cuts + [n]
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        pieces.append(_slice_along(ary, axis, start, stop))
    return pieces


def split(ary, indices_or_sections, axis=0):
    return _split(ary, indices_or_sections, axis, True)


def array_split(ary, indices_or_sections, axis=0):
    return _split(ary, indices_or_sections, axis, False)


def hsplit(ary, indices_or_sections):
    ary = _array(ary)
    if ary.ndim == 0:
        raise _shape_error("hsplit only works on arrays of 1 or more dimensions")
    return _split(ary, indices_or_sections, 1 if ary.ndim > 1 else 0, True)


def vsplit(ary, indices_or_sections):
    ary = _array(ary)
    if ary.ndim < 2:
        raise _shape_error("vsplit only works on arrays of 2 or more dimensions")
    return _split(ary, indices_or_sections, 0, True)


def dsplit(ary, indices_or_sections):
    ary = _array(ary)
    if ary.ndim < 3:
        raise _shape_error("dsplit only works on arrays of 3 or more dimensions")
    return _split(ary, indices_or_sections, 2, True)


def _gather(a, indices, axis):
    """``numpy.take`` with constant integer indices: one slice per index, joined (each
    slice's adjoint is a scatter, so repeated indices add up, as they must)."""
    idx = np.asarray(indices)
    if isinstance(indices, Tracer) or idx.dtype.kind not in "iu":
        raise _unsupported("numpy.take needs constant integer indices here (not traced ones)")
    n = a.shape[axis]
    if idx.size and (idx.max() >= n or idx.min() < -n):
        raise _shape_error(f"index out of range for an axis of length {n}")
    flat = [int(i) % n for i in idx.ravel()]
    if not flat:
        raise _unsupported("numpy.take with no indices is not supported on traced arrays")
    joined = _concat([_slice_along(a, axis, i, i + 1) for i in flat], axis)
    return joined.reshape(a.shape[:axis] + idx.shape + a.shape[axis + 1:])


def take(a, indices, axis=None, mode="raise"):
    a = _array(a)
    if mode != "raise":
        raise _unsupported(f"numpy.take(..., mode={mode!r}) is not supported on traced arrays")
    if axis is None:
        return _gather(a.ravel(), indices, 0)
    return _gather(a, indices, _axis(axis, a.ndim))


def repeat(a, repeats, axis=None):
    a = _array(a)
    if isinstance(repeats, Tracer) or _first_tracer(repeats) is not None:
        raise _unsupported("numpy.repeat needs constant int repeats (they set the shape), "
                           "not traced values")
    if axis is None:
        a, axis = a.ravel(), 0
    axis = _axis(axis, a.ndim)
    if isinstance(repeats, numbers.Integral) or np.ndim(repeats) == 0 and not isinstance(repeats, Tracer):
        r = _int_constant(int(repeats), "repeats")
        if r < 0:
            raise _shape_error("repeats may not be negative")
        expanded = a.reshape(a.shape[:axis + 1] + (1,) + a.shape[axis + 1:])
        spread = _ops.broadcast_to(expanded, a.shape[:axis + 1] + (r,) + a.shape[axis + 1:])
        return _ops.reshape(spread, a.shape[:axis] + (a.shape[axis] * r,) + a.shape[axis + 1:])
    counts = np.asarray(repeats)
    return _gather(a, np.repeat(np.arange(a.shape[axis]), counts), axis)


def tile(A, reps):
    A = _array(A)
    reps = (reps,) if isinstance(reps, numbers.Integral) else tuple(int(r) for r in reps)
    d = max(len(reps), A.ndim)
    shape = (1,) * (d - A.ndim) + A.shape
    reps = (1,) * (d - len(reps)) + reps
    interleaved = tuple(v for n in shape for v in (1, n))
    spread = tuple(v for r, n in zip(reps, shape) for v in (r, n))
    x = _ops.reshape(A, interleaved)
    return _ops.reshape(_ops.broadcast_to(x, spread), tuple(r * n for r, n in zip(reps, shape)))


def pad(array, pad_width, mode="constant", kwargs=None):
    array = _array(array)
    kwargs = dict(kwargs or {})
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (array.ndim, 2))
    if (widths < 0).any():
        raise _shape_error("pad widths may not be negative")
    if mode == "constant":
        values = np.broadcast_to(np.asarray(kwargs.pop("constant_values", 0.0), float),
                                 (array.ndim, 2))
    elif mode not in ("edge", "wrap"):
        raise _unsupported(f"numpy.pad(..., mode={mode!r}) is not supported on traced arrays "
                           "(supported: 'constant', 'edge', 'wrap')")
    if kwargs:
        raise _unsupported(f"numpy.pad(..., {', '.join(sorted(kwargs))}=) is not supported here")
    out = array
    for ax in range(array.ndim):
        before, after = (int(w) for w in widths[ax])
        n = out.shape[ax]
        parts = []
        for width, side in ((before, 0), (after, 1)):
            if not width:
                parts.append(None)
                continue
            if mode == "constant":
                block_shape = out.shape[:ax] + (width,) + out.shape[ax + 1:]
                parts.append(_fill(out, values[ax][side], block_shape))
            elif mode == "edge":
                edge = _slice_along(out, ax, 0, 1) if side == 0 else _slice_along(out, ax, n - 1, n)
                parts.append(repeat(edge, width, ax))
            else:  # wrap
                if width > n:
                    raise _unsupported("numpy.pad(mode='wrap') wider than the axis is not supported")
                parts.append(_slice_along(out, ax, n - width, n) if side == 0
                             else _slice_along(out, ax, 0, width))
        pieces = [p for p in (parts[0], out, parts[1]) if p is not None]
        out = _concat(pieces, ax)
    return out


# --- diagonals and triangles -----------------------------------------------------------------
def diagonal(a, offset=0, axis1=0, axis2=1):
    a = _array(a)
    if a.ndim < 2:
        raise _shape_error("diagonal needs an array of at least 2 dimensions")
    i, j = _axis(axis1, a.ndim, "axis1"), _axis(axis2, a.ndim, "axis2")
    if i == j:
        raise _shape_error("axis1 and axis2 cannot be the same")
    k = _int_constant(offset, "offset")
    x = moveaxis(a, (i, j), (a.ndim - 2, a.ndim - 1))
    rows, cols = x.shape[-2:]
    lead = x.ndim - 2
    if k >= 0:
        x = _slice_along(x, lead + 1, min(k, cols), None)
    else:
        x = _slice_along(x, lead, min(-k, rows), None)
    d = min(x.shape[-2:])
    if d == 0:
        raise _unsupported("an empty diagonal is not supported on traced arrays")
    x = _slice_along(_slice_along(x, lead, 0, d), lead + 1, 0, d)
    return _mask(np.eye(d, dtype=bool), x, 0.0).sum(axis=-1)


def diag(v, k=0):
    v = _array(v)
    k = _int_constant(k, "k")
    if v.ndim == 2:
        return diagonal(v, k)
    if v.ndim != 1:
        raise _shape_error("diag needs a 1-D or 2-D array")
    n = v.shape[0]
    square = _mask(np.eye(n, dtype=bool), _ops.broadcast_to(v.reshape((1, n)), (n, n)), 0.0)
    if k == 0:
        return square
    m, s = n + abs(k), abs(k)
    if k > 0:  # columns shifted right, a zero block below
        wide = _concat([_fill(v, 0.0, (n, s)), square], 1)
        return _concat([wide, _fill(v, 0.0, (s, m))], 0)
    tall = _concat([_fill(v, 0.0, (s, n)), square], 0)
    return _concat([tall, _fill(v, 0.0, (m, s))], 1)


def _triangle(m, k, lower):
    m = _array(m)
    if m.ndim < 2:
        raise _shape_error(f"{'tril' if lower else 'triu'} needs an array of at least 2 dimensions")
    k = _int_constant(k, "k")
    rows, cols = m.shape[-2:]
    mask = np.tri(rows, cols, k, dtype=bool) if lower else ~np.tri(rows, cols, k - 1, dtype=bool)
    return _mask(mask, m, 0.0)


def tril(m, k=0):
    return _triangle(m, k, True)


def triu(m, k=0):
    return _triangle(m, k, False)


def trace(a, offset=0, axis1=0, axis2=1):
    return diagonal(a, offset, axis1, axis2).sum(axis=-1)


# --- reductions and statistics -----------------------------------------------------------------
def _reduction(a, op, axis, keepdims):
    a = _array(a)
    if not a.shape:
        return a
    return a._reduce(op, axis, keepdims)


def prod(a, axis=None, keepdims=False):
    return _reduction(a, "prod", axis, keepdims)


def _running(a, op, axis):
    a = _array(a)
    if axis is None or a.ndim == 0:
        a, axis = (a.ravel() if a.ndim != 1 else a), 0
    return a._apply(op, (a,), (_axis(axis, a.ndim),))


def cumsum(a, axis=None):
    return _running(a, "cumsum", axis)


def cumprod(a, axis=None):
    return _running(a, "cumprod", axis)


def var(a, axis=None, ddof=0, keepdims=False):
    a = _array(a)
    keepdims = False if keepdims is np._NoValue else bool(keepdims)
    axes = _axes(axis, a.ndim)
    if not a.shape:
        return a * 0.0
    mean = a._reduce("sum", axes, True) * (1.0 / _count(a.shape, axes))
    deviation = a - mean
    count = _count(a.shape, axes) - ddof
    total = (deviation * deviation)._reduce("sum", axes, keepdims)
    return total / float(count) if count > 0 else total * np.inf  # NumPy: inf or nan, warned


def std(a, axis=None, ddof=0, keepdims=False):
    a = _array(a)
    if not a.shape or _count(a.shape, _axes(axis, a.ndim)) == 1 and ddof == 0:
        return var(a, axis, ddof, keepdims)  # identically 0: so is its derivative (sqrt's is not)
    return np.sqrt(var(a, axis, ddof, keepdims))


def diff(a, n=1, axis=-1):
    a = _array(a)
    axis = _axis(axis, a.ndim)
    for _ in range(_int_constant(n, "n")):
        length = a.shape[axis]
        a = _slice_along(a, axis, 1, None) - _slice_along(a, axis, None, length - 1)
    return a


def gradient(f, varargs=(), axis=None, edge_order=1):
    """numpy.gradient: central differences inside, one-sided ones (first or second order) at
    the edges, NumPy's formulas term for term. Spacings are scalars or coordinate arrays,
    constant or traced (traced coordinates take NumPy's formula for uneven spacing)."""
    t = _first_tracer(f, *varargs)
    f = _tracer(f, t)
    if edge_order not in (1, 2) or isinstance(edge_order, bool):
        raise _unsupported(f"numpy.gradient: edge_order must be 1 or 2, got {edge_order!r}")
    axes = tuple(range(f.ndim)) if axis is None else \
        tuple(_axis(a, f.ndim) for a in ((axis,) if isinstance(axis, numbers.Integral) else axis))
    if len(set(axes)) != len(axes):
        raise _shape_error(f"numpy.gradient: repeated axis in {axis!r}")
    spacings = _gradient_spacings(f, varargs, axes)
    outs = [_gradient_along(f, k, dx, edge_order) for k, dx in zip(axes, spacings)]
    return outs[0] if len(axes) == 1 else tuple(outs)


def _gradient_spacings(f, varargs, axes):
    """One spacing per axis: a scalar (even spacing) or the 1-D differences of coordinates."""
    if not varargs:
        return [1.0] * len(axes)
    if len(varargs) == 1 and np.ndim(varargs[0]) == 0:
        return [varargs[0]] * len(axes)
    if len(varargs) != len(axes):
        raise _unsupported(f"numpy.gradient: {len(varargs)} spacings for {len(axes)} axes "
                           "(give none, one scalar, or one per axis)")
    spacings = []
    for k, distances in zip(axes, varargs):
        if np.ndim(distances) == 0:
            spacings.append(distances)
            continue
        if np.ndim(distances) != 1 or np.shape(distances)[0] != f.shape[k]:
            raise _shape_error(f"numpy.gradient: coordinates of axis {k} must be 1-D of length "
                               f"{f.shape[k]}, got shape {np.shape(distances)}")
        if isinstance(distances, Tracer):
            spacings.append(diff(distances))
            continue
        step = np.diff(np.asarray(distances, dtype=np.float64))
        spacings.append(step[0] if (step == step[0]).all() else step)  # even: NumPy's scalar
    return spacings


def _gradient_along(f, axis, dx, edge_order):
    n = f.shape[axis]
    if n < edge_order + 1:
        raise _shape_error(f"numpy.gradient: an axis of length {n} is too short for "
                           f"edge_order={edge_order} (at least {edge_order + 1} elements)")
    part = lambda start, stop=None: _slice_along(f, axis, start, stop)  # noqa: E731
    even = np.ndim(dx) == 0
    if even:
        inner = (part(2, None) - part(None, -2)) / (2.0 * dx) if n > 2 else None
    else:
        along = [-1 if k == axis else 1 for k in range(f.ndim)]
        shaped = lambda v: _array(v, f).reshape(tuple(along))  # noqa: E731
        dx1, dx2 = dx[0:-1], dx[1:]
        a = shaped(-(dx2) / (dx1 * (dx1 + dx2)))
        b = shaped((dx2 - dx1) / (dx1 * dx2))
        c = shaped(dx1 / (dx2 * (dx1 + dx2)))
        inner = a * part(None, -2) + b * part(1, -1) + c * part(2, None) if n > 2 else None
    if edge_order == 1:
        first = (part(1, 2) - part(0, 1)) / (dx if even else dx[0])
        last = (part(n - 1, n) - part(n - 2, n - 1)) / (dx if even else dx[-1])
    else:
        if even:
            a, b, c = -1.5 / dx, 2.0 / dx, -0.5 / dx
        else:
            dx1, dx2 = dx[0], dx[1]
            a = -(2.0 * dx1 + dx2) / (dx1 * (dx1 + dx2))
            b = (dx1 + dx2) / (dx1 * dx2)
            c = -dx1 / (dx2 * (dx1 + dx2))
        first = a * part(0, 1) + b * part(1, 2) + c * part(2, 3)
        if even:
            a, b, c = 0.5 / dx, -2.0 / dx, 1.5 / dx
        else:
            dx1, dx2 = dx[-2], dx[-1]
            a = dx2 / (dx1 * (dx1 + dx2))
            b = -(dx2 + dx1) / (dx1 * dx2)
            c = (2.0 * dx2 + dx1) / (dx2 * (dx1 + dx2))
        last = a * part(n - 3, n - 2) + b * part(n - 2, n - 1) + c * part(n - 1, n)
    return _concat([first] + ([inner] if inner is not None else []) + [last], axis)


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    """numpy.linspace with traced (or constant) start and stop and a constant num, computed as
    NumPy computes it (``start + k * step``, the last sample ``stop`` itself)."""
    t = _first_tracer(start, stop)
    _float_dtype(dtype)
    num = _int_constant(int(num) if isinstance(num, np.integer) else num, "numpy.linspace: num")
    if num < 0:
        raise _shape_error(f"numpy.linspace: the number of samples, {num}, must be non-negative")
    if num == 0:
        raise _unsupported("numpy.linspace with num=0 (an empty array) is not supported on "
                           "traced values")
    start, stop = _tracer(start, t), _tracer(stop, t)
    div = num - 1 if endpoint else num
    delta = stop - start
    shape = (num,) + delta.shape
    y = _tracer(np.arange(0, num, dtype=np.float64).reshape((-1,) + (1,) * delta.ndim), t)
    if div > 0:
        step = delta / float(div)
        # NumPy's denormal guard: where any step is 0, every sample is (k / div) * delta
        zero = _where(step == 0.0, 1.0, 0.0)
        any_zero = zero._reduce("max", None, False) > 0.0 if delta.ndim else step == 0.0
        y = _where(any_zero, (y / float(div)) * delta, y * step)
    else:
        step = np.nan
        y = y * delta
    y = _ops.broadcast_to(_tracer(y + start, t), shape)
    if endpoint and num > 1:
        y = _concat([_slice_along(y, 0, None, num - 1),
                     _ops.reshape(_ops.broadcast_to(stop, delta.shape), (1,) + delta.shape)], 0)
    if axis != 0:
        y = moveaxis(y, 0, _axis(axis, y.ndim))
    return (y, step) if retstep else y


def logspace(start, stop, num=50, endpoint=True, base=10.0, dtype=None, axis=0):
    """numpy.logspace: ``base ** linspace(start, stop)``, as NumPy computes it."""
    t = _first_tracer(start, stop, base)
    _float_dtype(dtype)
    y = linspace(_tracer(start, t), _tracer(stop, t), num=num, endpoint=endpoint, axis=axis)
    if np.ndim(base) != 0:
        if isinstance(base, Tracer) or axis != 0:
            raise _unsupported("numpy.logspace with an array base is supported for a constant "
                               "base and axis=0 only")
        base = np.expand_dims(np.asarray(base, dtype=np.float64), 0)
    return np.power(base, y)


# --- products ----------------------------------------------------------------------------------
def _matmul2(a, b):
    return a._apply("matmul", (a, b)) if isinstance(a, Tracer) else b._apply("matmul", (a, b))


def tensordot(a, b, axes=2):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    if isinstance(axes, numbers.Integral):
        k = int(axes)
        ax_a, ax_b = list(range(a.ndim - k, a.ndim)), list(range(k))
    else:
        ax_a, ax_b = axes
        ax_a = [ax_a] if isinstance(ax_a, numbers.Integral) else list(ax_a)
        ax_b = [ax_b] if isinstance(ax_b, numbers.Integral) else list(ax_b)
    ax_a = [_axis(x, a.ndim) for x in ax_a]
    ax_b = [_axis(x, b.ndim) for x in ax_b]
    if len(ax_a) != len(ax_b) or any(a.shape[i] != b.shape[j] for i, j in zip(ax_a, ax_b)):
        raise _shape_error(f"shape-mismatch for sum: {a.shape} and {b.shape} over {ax_a}, {ax_b}")
    free_a = [k for k in range(a.ndim) if k not in ax_a]
    free_b = [k for k in range(b.ndim) if k not in ax_b]
    m = _count(a.shape, free_a)
    inner = _count(a.shape, ax_a)
    n = _count(b.shape, free_b)
    a2 = _ops.reshape(_ops.transpose(a, tuple(free_a + ax_a)), (m, inner))
    b2 = _ops.reshape(_ops.transpose(b, tuple(ax_b + free_b)), (inner, n))
    out_shape = tuple(a.shape[k] for k in free_a) + tuple(b.shape[k] for k in free_b)
    return _ops.reshape(_matmul2(a2, b2), out_shape)


def outer(a, b):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    return _ops.reshape(a, (a.size, 1)) * _ops.reshape(b, (1, b.size))


def inner(a, b):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    if not a.shape or not b.shape:
        return a * b
    return tensordot(a, b, ([-1], [-1]))


def vdot(a, b):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    if a.size != b.size:
        raise _shape_error(f"vdot needs arrays of one size, got {a.shape} and {b.shape}")
    return (_ops.reshape(a, (a.size,)) * _ops.reshape(b, (b.size,)))._reduce("sum", None, False)


def kron(a, b):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    d = max(a.ndim, b.ndim)
    sa, sb = (1,) * (d - a.ndim) + a.shape, (1,) * (d - b.ndim) + b.shape
    x = _ops.reshape(a, tuple(v for n in sa for v in (n, 1)))
    y = _ops.reshape(b, tuple(v for n in sb for v in (1, n)))
    return _ops.reshape(x * y, tuple(p * q for p, q in zip(sa, sb)))


def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    if axis is not None:
        axisa = axisb = axisc = axis
    a = moveaxis(a, _axis(axisa, a.ndim), a.ndim - 1)
    b = moveaxis(b, _axis(axisb, b.ndim), b.ndim - 1)
    if a.shape[-1] not in (2, 3) or b.shape[-1] not in (2, 3):
        raise _shape_error("cross needs vectors of 2 or 3 components")
    comp = lambda v, k: v[..., k] if k < v.shape[-1] else 0.0  # noqa: E731
    a0, a1, a2 = (comp(a, k) for k in range(3))
    b0, b1, b2 = (comp(b, k) for k in range(3))
    if a.shape[-1] == 2 and b.shape[-1] == 2:
        return a0 * b1 - a1 * b0
    parts = [a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0]
    shape = np.broadcast_shapes(*(p.shape if isinstance(p, Tracer) else () for p in parts))
    parts = [_ops.broadcast_to(_tracer(p, t), shape) for p in parts]
    out = t._apply("stack", parts, (len(shape),))
    return moveaxis(out, out.ndim - 1, _axis(axisc, out.ndim))


def matmul(a, b):
    """``a @ b`` with NumPy's rules: 1-D operands promoted, leading axes broadcast (batched)."""
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    if not a.shape or not b.shape:
        raise _shape_error("matmul does not take scalars (use *)")
    if a.ndim <= 2 and b.ndim <= 2:
        return _matmul2(a, b)
    a2 = _ops.reshape(a, (1,) + a.shape) if a.ndim == 1 else a
    b2 = _ops.reshape(b, b.shape + (1,)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise _shape_error(f"matmul: inner dimensions of {a.shape} and {b.shape} differ")
    # (..., m, k, 1) * (..., 1, k, n) summed over k: exact, and broadcasts the batch axes
    x = _ops.reshape(a2, a2.shape + (1,))
    y = _ops.reshape(b2, b2.shape[:-2] + (1,) + b2.shape[-2:])
    out = (x * y)._reduce("sum", (max(x.ndim, y.ndim) - 2,), False)
    if a.ndim == 1:
        out = _ops.reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = _ops.reshape(out, out.shape[:-1])
    return out


def dot(a, b):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    if not a.shape or not b.shape:
        return a * b
    if a.ndim <= 2 and b.ndim <= 2:
        return _matmul2(a, b)
    return tensordot(a, b, ([-1], [-2 if b.ndim > 1 else 0]))


def einsum(operands, optimize=False):
    if not operands or not isinstance(operands[0], str):
        raise _unsupported("numpy.einsum needs its subscripts as a string here "
                           "(the sublist form is not supported on traced arrays)")
    spec, arrays = operands[0].replace(" ", ""), list(operands[1:])
    t = _first_tracer(*arrays)
    arrays = [_tracer(a, t) for a in arrays]
    inputs, _, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(arrays):
        raise _shape_error(f"einsum: {len(terms)} subscripts for {len(arrays)} operands")
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + \
        [chr(c) for c in range(ord("a"), ord("z") + 1)]
    used = set(spec)
    spare = [c for c in letters if c not in used]
    ell = max((a.ndim - (len(term) - 3) for term, a in zip(terms, arrays) if "..." in term),
              default=0)
    ell_letters = "".join(spare[:ell])
    expanded = []
    for term, a in zip(terms, arrays):
        if "..." in term:
            k = a.ndim - (len(term) - 3)
            term = term.replace("...", ell_letters[ell - k:] if k else "")
        if len(term) != a.ndim or not all(c.isalpha() for c in term):
            raise _shape_error(f"einsum: subscripts {term!r} do not fit an operand of shape {a.shape}")
        expanded.append(term)
    if "->" in spec:
        output = output.replace("...", ell_letters)
    else:
        counts = collections.Counter("".join(expanded))
        output = ell_letters + "".join(sorted(c for c in counts if counts[c] == 1
                                              and c not in ell_letters))
    # repeated subscripts within one operand ("ii->i"): its diagonal first
    for k, (term, a) in enumerate(zip(expanded, arrays)):
        while len(set(term)) != len(term):
            c = next(c for c in term if term.count(c) > 1)
            i = term.index(c)
            j = term.index(c, i + 1)
            a = diagonal(a, 0, i, j)
            term = term.replace(c, "") + c
        expanded[k], arrays[k] = term, a
    everything = list(dict.fromkeys(output + "".join(expanded)))
    sizes = {}
    for term, a in zip(expanded, arrays):
        for c, n in zip(term, a.shape):
            if sizes.get(c, 1) != 1 and n != 1 and sizes[c] != n:
                raise _shape_error(f"einsum: subscript {c!r} has lengths {sizes[c]} and {n}")
            sizes[c] = max(sizes.get(c, 1), n)
    # each operand laid out over every subscript (1 where it has none), multiplied, summed
    product = None
    for term, a in zip(expanded, arrays):
        mine = [c for c in everything if c in term]
        x = _ops.transpose(a, tuple(term.index(c) for c in mine))
        x = _ops.reshape(x, tuple(a.shape[term.index(c)] if c in term else 1 for c in everything))
        product = x if product is None else product * x
    full = tuple(sizes[c] for c in everything)
    product = _ops.broadcast_to(product, full) if product.shape != full else product
    summed = tuple(k for k, c in enumerate(everything) if c not in output)
    result = product._reduce("sum", summed, False) if summed else product
    return result  # the output's subscripts lead ``everything`` in order


# --- selection, sorting, clipping --------------------------------------------------------------
def select(condlist, choicelist, default=0):
    if len(condlist) != len(choicelist):
        raise _shape_error("select needs as many conditions as choices")
    for k, cond in enumerate(condlist):  # as NumPy: a condition is boolean, not a number
        if isinstance(cond, Tracer) and not cond.is_condition or not isinstance(cond, Tracer) \
                and np.asarray(cond).dtype != bool:
            raise _unsupported(f"numpy.select: condition {k} is not boolean; write a "
                               "comparison (x > 0) or x != 0")
    result = default
    for cond, choice in reversed(list(zip(condlist, choicelist))):
        result = _where(cond, choice, result)
    return result


def sort(a, axis=-1, kind=None, order=None, stable=None):
    a = _array(a)
    if order is not None:
        raise _unsupported("numpy.sort(..., order=) sorts structured arrays; traced arrays have no fields")
    if axis is None:
        a, axis = a.ravel(), 0
    axis = _axis(axis, a.ndim)
    return a._apply("take_along", (a, a._apply("sort_order", (a,), (axis,))), (axis,))


def partition(a, kth, axis=-1, kind="introselect", order=None):
    a = _array(a)
    if order is not None:
        raise _unsupported("numpy.partition(..., order=) is not supported on traced arrays")
    if axis is None:
        a, axis = a.ravel(), 0
    axis = _axis(axis, a.ndim)
    kth = tuple(_int_constant(int(k) if isinstance(k, np.integer) else k, "kth")
                for k in np.atleast_1d(np.asarray(kth, dtype=object)))
    values = a._apply("partition", (a,), (kth, axis))
    # the order in which a holds np.partition's values: a's sorted order, placed where
    # the values' sorted order puts them
    by_value = a._apply("sort_order", (a,), (axis,))
    places = a._apply("sort_order", (values,), (axis,))
    order_ = a._apply("put_along", (by_value, places), (axis, a.shape))
    return a._apply("take_along", (a, order_), (axis,))


def clip(a, a_min=np._NoValue, a_max=np._NoValue, min=np._NoValue, max=np._NoValue):  # noqa: A002
    if (a_min is np._NoValue) != (a_max is np._NoValue):  # NumPy's rule: both or neither
        raise _unsupported("numpy.clip(a, a_min, a_max) takes both bounds (None for no bound), "
                           "or min= and max= as keywords")
    if a_min is not np._NoValue and (min is not np._NoValue or max is not np._NoValue):
        raise _unsupported("numpy.clip takes its bounds as a_min and a_max or as min= and "
                           "max=, not both")
    lo = a_min if min is np._NoValue else min
    hi = a_max if max is np._NoValue else max
    lo = None if lo is np._NoValue else lo
    hi = None if hi is np._NoValue else hi
    if lo is None and hi is None:
        raise _unsupported("numpy.clip needs a_min or a_max")
    out = a
    if lo is not None:
        out = np.maximum(out, lo)
    if hi is not None:
        out = np.minimum(out, hi)
    return out


def nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    x = _array(x)
    if not isinstance(copy, (bool, np.bool_, int)):
        raise _unsupported(f"numpy.nan_to_num: copy must be True or False, got a "
                           f"{type(copy).__name__}")
    info = np.finfo(np.dtype(x.graph.dtype))
    big = float(info.max) if posinf is None else posinf
    small = -float(info.max) if neginf is None else neginf
    out = _where(x == np.inf, big, _where(x == -np.inf, small, x))
    return _where(x != x, nan, out)


# --- complex parts of real values ------------------------------------------------------------
# Traced values are real: the real part is the value, the imaginary part 0, the angle 0 or pi
# by the sign bit (as NumPy's arctan2(0, x): pi at -0.0 and -inf, NaN at NaN), without
# derivative.
def real(val):
    return copy(val)


def real_if_close(a, tol=100):
    return copy(a)


def imag(val):
    return _like(val, 0.0, None)


def angle(z, deg=False):
    z = _array(z)
    half_turn = np.pi * (180.0 / np.pi) if deg else np.pi  # NumPy's arctan2(...) * (180 / pi)
    return _where(z != z, np.nan, _where(np.copysign(1.0, z) < 0.0, half_turn, 0.0))


# --- rounding and sinc -------------------------------------------------------------------------
def round_(a, decimals=0):
    from . import gmath

    return gmath.round(a, decimals)


def fix(x):
    return x._apply("trunc", (x,)) if isinstance(x, Tracer) else np.fix(x)


def sinc(x):
    return x._apply("sinc", (x,)) if isinstance(x, Tracer) else np.sinc(x)


# --- linear algebra ----------------------------------------------------------------------------
SlogdetResult = collections.namedtuple("SlogdetResult", "sign logabsdet")
EighResult = collections.namedtuple("EighResult", "eigenvalues eigenvectors")


def _matrix(a, name):
    a = _array(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise _shape_error(f"numpy.linalg.{name} takes one square 2-D matrix here, got shape "
                           f"{a.shape} (stacks of matrices are not supported on traced arrays)")
    return a


def inv(a):
    a = _matrix(a, "inv")
    return a._apply("inv", (a,))


def solve(a, b):
    t = _first_tracer(a, b)
    a, b = _matrix(_tracer(a, t), "solve"), _tracer(b, t)
    if b.ndim not in (1, 2) or b.shape[0] != a.shape[0]:
        raise _shape_error(f"numpy.linalg.solve: b of shape {b.shape} does not fit a of shape {a.shape}")
    return t._apply("solve", (a, b))


def det(a):
    a = _matrix(a, "det")
    return a._apply("det", (a,))


def slogdet(a):
    a = _matrix(a, "slogdet")
    return SlogdetResult(a._apply("signdet", (a,)), a._apply("logabsdet", (a,)))


def cholesky(a, upper=False):
    a = _matrix(a, "cholesky")
    lower = a._apply("cholesky", (a,))
    return lower.transpose() if upper else lower


def _lapack_view(a, UPLO):
    if UPLO not in ("L", "U"):
        raise _unsupported(f"UPLO must be 'L' or 'U', got {UPLO!r}")
    return a if UPLO == "L" else _ops.transpose(a, (1, 0))  # the upper triangle, as a lower one


def eigh(a, UPLO="L"):
    a = _lapack_view(_matrix(a, "eigh"), UPLO)
    return EighResult(a._apply("eigh_values", (a,)), a._apply("eigh_vectors", (a,)))


def eigvalsh(a, UPLO="L"):
    a = _lapack_view(_matrix(a, "eigvalsh"), UPLO)
    return a._apply("eigh_values", (a,))


def norm(x, ord=None, axis=None, keepdims=False):  # noqa: A002
    x = _array(x)
    if axis is None:
        if ord is None or x.ndim == 1 or (x.ndim == 2 and ord in ("fro", "f")):
            axes = None if ord is None or x.ndim == 1 else (0, 1)
            result = _vector_norm(x, ord if ord not in ("fro", "f") else None, axes)
            if keepdims:
                result = _ops.reshape(result, (1,) * x.ndim)
            return result
        if x.ndim == 2:
            axes = (0, 1)
        else:
            raise _shape_error("norm with ord needs a 1-D or 2-D array, or axis")
    else:
        axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
        axes = tuple(_axis(a, x.ndim) for a in axes)
    if len(axes) == 1:
        if isinstance(ord, str):
            raise _unsupported(f"norm(ord={ord!r}) is a matrix norm; it needs two axes")
        result = _vector_norm(x, ord, axes)
    elif len(axes) == 2:
        result = _matrix_norm(x, ord, axes)
    else:
        raise _shape_error("norm takes one or two axes")
    if keepdims:
        result = _ops.reshape(result, tuple(1 if k in axes else n for k, n in enumerate(x.shape)))
    return result


def _vector_norm(x, ord, axes):  # noqa: A002
    if ord is None or ord == 2:
        return np.sqrt((x * x)._reduce("sum", axes, False))
    if ord == np.inf:
        return np.abs(x)._reduce("max", axes, False)
    if ord == -np.inf:
        return np.abs(x)._reduce("min", axes, False)
    if ord == 0:
        return _where(x != 0.0, 1.0, 0.0)._reduce("sum", axes, False)
    if ord == 1:
        return np.abs(x)._reduce("sum", axes, False)
    if isinstance(ord, str) or not isinstance(ord, numbers.Real):
        raise _unsupported(f"norm(ord={ord!r}) is not a vector norm")
    p = float(ord)
    return ((np.abs(x) ** p)._reduce("sum", axes, False)) ** (1.0 / p)


def _matrix_norm(x, ord, axes):  # noqa: A002
    row, col = axes
    if ord in (None, "fro", "f"):
        return np.sqrt((x * x)._reduce("sum", tuple(sorted(axes)), False))
    if ord in (1, -1, np.inf, -np.inf):
        summed_axis, other = (row, col) if ord in (1, -1) else (col, row)
        sums = np.abs(x)._reduce("sum", (summed_axis,), False)
        other = other - 1 if other > summed_axis else other
        return sums._reduce("max" if ord > 0 else "min", (other,), False)
    if ord in (2, -2, "nuc"):
        # the largest or smallest singular value, or their sum, of each matrix
        values = _singular_values(moveaxis(x, (row, col), (x.ndim - 2, x.ndim - 1)))
        last = values.ndim - 1
        if ord == "nuc":
            return values._reduce("sum", (last,), False)
        return values._reduce("max" if ord == 2 else "min", (last,), False)
    raise _unsupported(f"norm(ord={ord!r}) is not a matrix norm; matrix norms: None, 'fro', "
                       "'nuc', 1, -1, 2, -2, inf, -inf")


def _singular_values(x):
    """The singular values of each matrix in the last two axes of ``x`` (a stack of them is
    taken apart into 2-D matrices, whose values are stacked again)."""
    if x.ndim == 2:
        return x._apply("svd_values", (x,))
    lead = x.shape[:-2]
    flat = _ops.reshape(x, (_count(lead, None),) + x.shape[-2:])
    rows = [flat[k] for k in range(flat.shape[0])]
    values = x._apply("stack", [r._apply("svd_values", (r,)) for r in rows], (0,))
    return _ops.reshape(values, lead + values.shape[1:])


def _any_matrix(a, name):
    a = _array(a)
    if a.ndim != 2:
        raise _shape_error(f"numpy.linalg.{name} takes one 2-D matrix here, got shape {a.shape} "
                           "(stacks of matrices are not supported on traced arrays)")
    return a


SVDResult = collections.namedtuple("SVDResult", "U S Vh")
QRResult = collections.namedtuple("QRResult", "Q R")
LstsqResult = collections.namedtuple("LstsqResult", "x residuals rank s")


def svd(a, full_matrices=True, compute_uv=True, hermitian=False):
    """numpy.linalg.svd: the values alone, or the reduced factors (``full_matrices=False``,
    or a square matrix, where the full ones are the same)."""
    a = _any_matrix(a, "svd")
    if hermitian:
        raise _unsupported("numpy.linalg.svd(..., hermitian=True) is not supported on traced "
                           "arrays; use numpy.linalg.eigh for a symmetric matrix")
    values = a._apply("svd_values", (a,))
    if not compute_uv:
        return values
    if full_matrices and a.shape[0] != a.shape[1]:
        raise _unsupported(
            "numpy.linalg.svd(a) of a non-square matrix with full_matrices=True: the extra "
            "singular vectors are any basis of a null space, so they have no derivative; pass "
            "full_matrices=False (or compute_uv=False for the values)")
    return SVDResult(a._apply("svd_u", (a,)), values, a._apply("svd_vh", (a,)))


def svdvals(x):
    return svd(x, compute_uv=False)


def qr(a, mode="reduced"):
    """numpy.linalg.qr: Q and R, or R alone, differentiable where A has full rank.

    A wide A (m < n) is ``[X | Y]`` with X square: ``X = Q U`` and ``R = [U | Q^T Y]``, the
    factors NumPy's Householder QR computes (the same reflectors, from X's columns alone).
    """
    a = _any_matrix(a, "qr")
    m, n = a.shape
    if mode not in ("reduced", "complete", "r"):
        raise _unsupported(f"numpy.linalg.qr(..., mode={mode!r}) is not supported on traced "
                           "arrays (supported: 'reduced', 'complete' for a square or wide "
                           "matrix, 'r')")
    if mode == "complete" and m > n:
        raise _unsupported(
            f"numpy.linalg.qr(..., mode='complete') of a tall {m} x {n} matrix: the columns of "
            "Q past the n-th are any basis of a null space, so they have no derivative; use "
            "mode='reduced'")
    if m < n:
        square = _slice_along(a, 1, 0, m)
        q, upper = square._apply("qr_q", (square,)), square._apply("qr_r", (square,))
        r = _concat([upper, _matmul2(q.transpose(), _slice_along(a, 1, m, None))], 1)
    else:
        q, r = a._apply("qr_q", (a,)), a._apply("qr_r", (a,))
    return r if mode == "r" else QRResult(q, r)


def _rcond_constant(rcond, name, a):
    """``rcond`` as the float the lstsq op prints (None: NumPy's default, eps * max(m, n))."""
    if isinstance(rcond, Tracer) or np.ndim(rcond) != 0:
        raise _unsupported(f"numpy.linalg.{name}: rcond must be a constant number here")
    return float(np.finfo(np.float64).eps) * max(a.shape) if rcond is None else float(rcond)


def _lstsq_solution(a, b, rcond):
    if b.ndim not in (1, 2) or b.shape[0] != a.shape[0]:
        raise _shape_error(f"numpy.linalg.lstsq: b of shape {b.shape} does not fit a of shape "
                           f"{a.shape}")
    return a._apply("lstsq", (a, b), (rcond,))


def lstsq(a, b, rcond=None):
    """numpy.linalg.lstsq (its 4-tuple).

    The solution is NumPy's for every A; its derivatives exist where A has full rank (NaN
    where it has not). ``rank`` is computed from the singular values as LAPACK counts them (a
    traced float without derivative); ``residuals`` are the squared residual norms where
    m > n, NaN where A is rank-deficient (NumPy returns an empty array there: a shape tracing
    cannot follow), and an empty NumPy array where m <= n, as NumPy's.
    """
    t = _first_tracer(a, b)
    a, b = _any_matrix(_tracer(a, t), "lstsq"), _tracer(b, t)
    rcond = _rcond_constant(rcond, "lstsq", a)
    x = _lstsq_solution(a, b, rcond)
    m, n = a.shape
    s = a._apply("svd_values", (a,))
    cutoff = _ops.lapack_rcond(rcond) * s._reduce("max", None, False)
    rank = _where(s > cutoff, 1.0, 0.0)._reduce("sum", None, False)
    if m <= n:
        residuals = np.zeros((0,))
    else:
        r = b - matmul(a, x)
        squares = (r * r)._reduce("sum", (0,), False)
        squares = _ops.reshape(squares, (1,)) if b.ndim == 1 else squares
        residuals = _where(rank == float(n), squares, np.nan)
    return LstsqResult(x, residuals, rank, s)


def pinv(a, rcond=None, hermitian=False, rtol=np._NoValue):
    """numpy.linalg.pinv as the least-squares solution for the identity (``pinv(A) =
    lstsq(A, I)``): NumPy's values; derivatives where A has full rank."""
    a = _any_matrix(a, "pinv")
    if hermitian:
        raise _unsupported("numpy.linalg.pinv(..., hermitian=True) is not supported on traced "
                           "arrays; leave hermitian=False (the result is the same)")
    if rcond is not None and rtol is not np._NoValue:
        raise _unsupported("numpy.linalg.pinv: rtol and rcond cannot both be set")
    if rcond is None:
        rcond = 1e-15 if rtol is np._NoValue else rtol  # rtol=None: eps * max(m, n)
    rcond = _rcond_constant(rcond, "pinv", a)
    m, n = a.shape
    # pinv drops the singular values s <= rcond * max(s); gelsd reads an rcond outside (0, 1)
    # as the machine precision (see gradc.ops.lapack_rcond)
    if rcond >= 1.0:
        return _fill(a, 0.0, (n, m))  # every singular value dropped
    if rcond <= 0.0:
        rcond = float(np.finfo(np.float64).tiny)  # only exact zeros dropped
    return _lstsq_solution(a, _tracer(np.eye(m), a), rcond)


def cond(x, p=None):
    """numpy.linalg.cond: the ratio of extreme singular values (p None, 2, -2), or
    ``norm(x, p) * norm(inv(x), p)`` for a square matrix."""
    x = _any_matrix(x, "cond")
    if isinstance(p, Tracer) or p not in (None, 2, -2, "fro", "nuc", 1, -1, np.inf, -np.inf):
        raise _unsupported(f"numpy.linalg.cond(x, p={p!r}): p must be one of None, 'fro', "
                           "'nuc', 1, -1, 2, -2, inf, -inf")
    if p in (None, 2, -2):
        s = x._apply("svd_values", (x,))
        big, small = s._reduce("max", None, False), s._reduce("min", None, False)
        return big / small if p != -2 else small / big
    return norm(x, p) * norm(inv(x), p)


def matrix_power(a, n):
    """numpy.linalg.matrix_power for a constant int n, multiplying in NumPy's order."""
    a = _matrix(a, "matrix_power")
    n = _int_constant(int(n) if isinstance(n, np.integer) else n, "numpy.linalg.matrix_power: n")
    if n == 0:
        return _tracer(np.eye(a.shape[0]), a)
    if n < 0:
        a, n = inv(a), -n
    if n <= 3:
        out = Tracer(a.graph, a.node)  # a new array, as NumPy's
        for _ in range(n - 1):
            out = _matmul2(out, a)
        return out
    z = result = None
    while n > 0:  # binary decomposition, as NumPy's
        z = a if z is None else _matmul2(z, z)
        n, bit = divmod(n, 2)
        if bit:
            result = z if result is None else _matmul2(result, z)
    return result


def tensorsolve(a, b, axes=None):
    t = _first_tracer(a, b)
    a, b = _tracer(a, t), _tracer(b, t)
    if axes is not None:
        order = [k for k in range(a.ndim) if k not in [_axis(x, a.ndim) for x in axes]]
        a = a.transpose(tuple(order + [_axis(x, a.ndim) for x in axes]))
    shape = a.shape[-(a.ndim - b.ndim):]  # NumPy's expression (all of a.shape where equal)
    size = _count(shape, None)
    if _count(a.shape, None) != size * size:
        raise _shape_error(f"numpy.linalg.tensorsolve: a of shape {a.shape} is not 'square' "
                           f"for b of shape {b.shape}")
    return _ops.reshape(solve(_ops.reshape(a, (size, size)), _ops.reshape(b, (size,))), shape)


def tensorinv(a, ind=2):
    a = _array(a)
    ind = _int_constant(ind, "ind")
    if a.ndim == 0:
        raise _shape_error("numpy.linalg.tensorinv needs an array, not a scalar")
    if ind <= 0:
        raise _shape_error("numpy.linalg.tensorinv: ind must be positive")
    size = _count(a.shape[:ind], None)
    if _count(a.shape, None) != size * size:
        raise _shape_error(f"numpy.linalg.tensorinv: a of shape {a.shape} is not 'square' "
                           f"for ind={ind}")
    inverse = inv(_ops.reshape(a, (size, size)))
    return _ops.reshape(inverse, a.shape[ind:] + a.shape[:ind])


#: NumPy function -> rule on arrays traced whole (see the module docstring).
RULES = {
    np.copy: copy, np.ravel: ravel, np.squeeze: squeeze, np.expand_dims: expand_dims,
    np.atleast_1d: atleast_1d, np.atleast_2d: atleast_2d, np.atleast_3d: atleast_3d,
    np.swapaxes: swapaxes, np.moveaxis: moveaxis, np.rollaxis: rollaxis,
    np.flip: flip, np.fliplr: fliplr, np.flipud: flipud, np.roll: roll, np.rot90: rot90,
    np.broadcast_to: broadcast_to, np.broadcast_arrays: broadcast_arrays,
    np.zeros_like: zeros_like, np.ones_like: ones_like, np.full_like: full_like,
    np.empty_like: empty_like,
    np.hstack: hstack, np.vstack: vstack, np.dstack: dstack, np.column_stack: column_stack,
    np.append: append, np.split: split, np.array_split: array_split, np.hsplit: hsplit,
    np.vsplit: vsplit, np.dsplit: dsplit, np.take: take, np.repeat: repeat, np.tile: tile,
    np.pad: pad,
    np.diagonal: diagonal, np.diag: diag, np.tril: tril, np.triu: triu, np.trace: trace,
    np.prod: prod, np.cumsum: cumsum, np.cumprod: cumprod, np.var: var, np.std: std,
    np.diff: diff,
    np.tensordot: tensordot, np.outer: outer, np.inner: inner, np.vdot: vdot, np.kron: kron,
    np.cross: cross, np.matmul: matmul, np.einsum: einsum,
    np.select: select, np.sort: sort, np.partition: partition, np.clip: clip,
    np.nan_to_num: nan_to_num,
    np.round: round_, np.around: round_, np.fix: fix, np.sinc: sinc,
    np.real: real, np.imag: imag, np.real_if_close: real_if_close, np.angle: angle,
    np.linalg.inv: inv, np.linalg.solve: solve, np.linalg.det: det, np.linalg.slogdet: slogdet,
    np.linalg.cholesky: cholesky, np.linalg.eigh: eigh, np.linalg.eigvalsh: eigvalsh,
    np.linalg.norm: norm, np.linalg.svd: svd, np.linalg.svdvals: svdvals, np.linalg.qr: qr,
    np.linalg.lstsq: lstsq, np.linalg.pinv: pinv, np.linalg.cond: cond,
    np.linalg.matrix_power: matrix_power, np.linalg.tensorsolve: tensorsolve,
    np.linalg.tensorinv: tensorinv,
    np.gradient: gradient, np.linspace: linspace, np.logspace: logspace,
}


from . import trace as _trace  # noqa: E402  (the tracer takes these rules from here)

_trace.install_numpy_rules(sys.modules[__name__])
