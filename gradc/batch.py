"""``gradc.vmap``: evaluate a scalar function (or its gradient) at many points in one call.

``gradc.vmap(gradc.value_and_grad(f))(a, b, c)`` takes 1-D arrays of points
(a float argument is shared by every point) and returns arrays: the values and
one gradient array per argument. The emitted code is one loop over the points
around the same fused function, compiled by numba with ``parallel=True``
(``prange``): the points are spread over the cores. ``out=`` takes buffers of
the result's structure, so a hot loop allocates nothing.

>>> import numpy as np, gradc
>>> f = gradc.vmap(gradc.value_and_grad(lambda x, y: x * y, backend="python"))
>>> f(np.array([1.0, 2.0]), 3.0)
(array([3., 6.]), (array([3., 3.]), array([1., 2.])))
"""
from __future__ import annotations

import numpy as np

from . import errors, jit
from .api import GradcFunction
from .emit import emit_batched
from .ir import leaves


def _unflatten(tree, leaves):
    if isinstance(tree, tuple):
        return tuple(_unflatten(t, leaves) for t in tree)
    return leaves[tree]


def _flatten(value):
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _flatten(v)]
    return [value]


class BatchedFunction:
    """A :class:`~gradc.api.GradcFunction` applied point by point over arrays."""

    def __init__(self, fn, parallel=True):
        if not isinstance(fn, GradcFunction):
            fn = GradcFunction(fn, "compile")  # a plain function: its values at many points
        self._fn, self._parallel = fn, parallel
        self._specs = {}

    def _points(self, args):
        values, n = [], None
        for k, a in enumerate(args):
            if isinstance(a, (np.ndarray, list, tuple)) and np.ndim(a) >= 1:
                a = np.asarray(a)
                if a.ndim != 1 or a.dtype.kind not in "biuf":
                    raise errors.ArgumentError(
                        f"{errors.where()}: argument {k} has shape {a.shape} and dtype {a.dtype}; "
                        "gradc.vmap takes 1-D float arrays (one value per point) or floats.")
                if n is not None and len(a) != n:
                    raise errors.ArgumentError(
                        f"{errors.where()}: argument {k} has {len(a)} points but an earlier "
                        f"argument has {n}; every array argument needs the same length.")
                n = len(a)
                values.append(np.ascontiguousarray(a, dtype=np.float64))
            else:
                values.append(self._fn._check_number(k, a))
        if n is None:
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.vmap needs at least one 1-D array of points.")
        return values, n

    def _spec(self, batched):
        spec = self._specs.get(batched)
        if spec is None:
            nargs = len(batched)
            graph, source, func_name, _ = self._fn.lower((None,) * nargs)
            source, name = emit_batched(source, graph, func_name, self._fn._arg_names(nargs),
                                        batched, self._parallel)
            n_out = len(list(leaves(graph.out_tree)))
            if self._fn._backend == "numba":
                call, path = jit.load_numba_batched(source, func_name, name, batched, n_out,
                                                    self._parallel)
            else:
                func, path = jit.load_python(source, name)

                def call(*a, _func=func):
                    with np.errstate(all="ignore"):
                        _func(*a)

            spec = self._specs[batched] = (call, graph.out_tree, n_out, source, path)
        return spec

    def _buffers(self, n, n_out, out):
        if out is None:
            return [np.empty(n) for _ in range(n_out)]
        buffers = _flatten(out)
        for b in buffers:
            if not (isinstance(b, np.ndarray) and b.dtype == np.float64 and b.shape == (n,)
                    and b.flags.c_contiguous and b.flags.writeable):
                raise errors.ArgumentError(
                    f"{errors.where()}: out= needs {n_out} writable C-contiguous float64 arrays "
                    f"of shape ({n},), nested like the result.")
        if len(buffers) != n_out:
            raise errors.ArgumentError(
                f"{errors.where()}: out= has {len(buffers)} arrays; the result has {n_out}.")
        return buffers

    def __call__(self, *args, out=None):
        values, n = self._points(args)
        call, tree, n_out, _, _ = self._spec(tuple(isinstance(v, np.ndarray) for v in values))
        buffers = self._buffers(n, n_out, out)
        call(n, *values, *buffers)
        return _unflatten(tree, buffers)

    @property
    def source(self):
        """The emitted module, with the batched loop (after the first call)."""
        if not self._specs:
            raise errors.ArgumentError("call the batched function once before asking for .source")
        return next(iter(self._specs.values()))[3]


def vmap(fn=None, *, parallel=True):
    """Evaluate ``fn`` (a gradc transformation, or a plain function for its values) over arrays of points.

    Every array argument is 1-D with one value per point; float arguments are
    shared. Results have the structure of ``fn``'s result with an array per
    leaf. ``parallel=True`` spreads the points over the cores (numba's
    ``workqueue`` threading layer unless ``NUMBA_THREADING_LAYER`` says
    otherwise). ``out=`` takes preallocated result arrays.
    """
    if fn is None:
        return lambda f: BatchedFunction(f, parallel)
    return BatchedFunction(fn, parallel)
