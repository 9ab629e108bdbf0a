"""``gradc.vmap``: evaluate a scalar function (or its gradient) at many points in one call.

``gradc.vmap(gradc.value_and_grad(f))(a, b, c)`` takes 1-D arrays of points
(a float argument is shared by every point) and returns arrays: the values and
one gradient array per argument. The emitted code is one loop over the points
around the same fused function, compiled by numba with ``parallel=True``
(``prange``): the points are spread over the cores. ``out=`` takes buffers of
the result's structure, so a hot loop allocates nothing. Input arrays may be
read-only (``setflags(write=False)``, ``np.frombuffer``): the kernel never
writes them, and its signature says so.

Concurrent calls from threads are safe. numba's ``workqueue`` threading layer
(gradc's choice where ``tbb`` does not load, see :func:`gradc.jit.use_threading_layer`)
aborts the process when two threads launch parallel loops at once, so parallel
kernels run behind one process-wide lock unless the layer numba picked is
thread-safe (``tbb``, ``omp``). Serial kernels release the GIL and need no lock.
The measurements behind these choices: ``python -m benchmarks.vmap_threads``.

>>> import numpy as np, gradc
>>> f = gradc.vmap(gradc.value_and_grad(lambda x, y: x * y, backend="python"))
>>> f(np.array([1.0, 2.0]), 3.0)
(array([3., 6.]), (array([3., 3.]), array([1., 2.])))
"""
from __future__ import annotations

import os
import threading
from typing import Callable, NamedTuple

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


# numba's threading layers that allow parallel launches from several threads at once
# (numba's docs: tbb and omp are thread-safe, workqueue is not).
_THREADSAFE_LAYERS = frozenset({"tbb", "omp"})


class _ParallelGate:
    """Runs parallel kernels so that concurrent calls from threads are safe.

    numba's threading layer is one per process, chosen at the first parallel
    launch. With ``workqueue`` a second launch while one is running aborts the
    process ("Concurrent access has been detected"), so launches take turns
    behind one lock: a parallel loop already uses every core, so four waiting
    callers got about the throughput of one (``benchmarks/vmap_threads.py``;
    running the serial loop instead of waiting was no better for large batches).
    Until numba has picked its layer the gate locks too; once the layer is
    known to be thread-safe, calls go straight through.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.threadsafe = None  # None: numba has not picked its threading layer yet

    def run(self, kernel, args):
        if self.threadsafe:
            kernel(*args)
            return
        with self._lock:
            kernel(*args)
            if self.threadsafe is None:
                layer = _threading_layer()
                if layer is not None:  # picked once per process: decide once
                    self.threadsafe = layer in _THREADSAFE_LAYERS

    def reset_after_fork(self):
        """A child forked while another thread held the lock would wait on it forever."""
        self._lock = threading.Lock()


def _threading_layer():
    """The threading layer numba picked for this process (after its first parallel launch)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel launch has happened: nothing picked yet
        return None


_gate = _ParallelGate()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_gate.reset_after_fork)


class _Spec(NamedTuple):
    """One compiled batched loop: ``call(n, *points, *outs)`` and how to read its outputs."""
    call: Callable
    kernel: Callable  # the loop itself, without the gate (benchmarks time it directly)
    out_tree: object
    n_out: int
    source: str
    path: str


class BatchedFunction:
    """A :class:`~gradc.api.GradcFunction` applied point by point over arrays."""

    def __init__(self, fn, parallel=True):
        if not isinstance(fn, GradcFunction):
            fn = GradcFunction(fn, "compile")  # a plain function: its values at many points
        self._fn, self._parallel = fn, parallel
        self._specs = {}
        self._building = threading.Lock()  # concurrent first calls compile once

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
            with self._building:
                spec = self._specs.get(batched)  # another thread may have built it meanwhile
                if spec is None:
                    spec = self._specs[batched] = self._build(batched)
        return spec

    def _build(self, batched):
        nargs = len(batched)
        graph, source, func_name, _ = self._fn.lower((None,) * nargs)
        source, name = emit_batched(source, graph, func_name, self._fn._arg_names(nargs),
                                    batched, self._parallel)
        n_out = len(list(leaves(graph.out_tree)))
        if self._fn._backend == "numba":
            kernel, path = jit.load_numba_batched(source, func_name, name, batched, n_out,
                                                  self._parallel)
            call = (lambda *a: _gate.run(kernel, a)) if self._parallel else kernel
        else:
            kernel, path = jit.load_python(source, name)

            def call(*a):  # plain Python: prange is range, nothing runs in parallel
                with np.errstate(all="ignore"):  # errstate is per thread
                    kernel(*a)

        return _Spec(call, kernel, graph.out_tree, n_out, source, path)

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
        spec = self._spec(tuple(isinstance(v, np.ndarray) for v in values))
        buffers = self._buffers(n, spec.n_out, out)
        spec.call(n, *values, *buffers)
        return _unflatten(spec.out_tree, buffers)

    @property
    def source(self):
        """The emitted module, with the batched loop (after the first call)."""
        if not self._specs:
            raise errors.ArgumentError("call the batched function once before asking for .source")
        return next(iter(self._specs.values())).source


def vmap(fn=None, *, parallel=True):
    """Evaluate ``fn`` (a gradc transformation, or a plain function for its values) over arrays of points.

    Every array argument is 1-D with one value per point; float arguments are
    shared. Results have the structure of ``fn``'s result with an array per
    leaf. ``parallel=True`` spreads the points over the cores (numba's
    ``workqueue`` threading layer unless ``NUMBA_THREADING_LAYER`` says
    otherwise; calls from several threads take turns unless that layer is
    thread-safe). ``out=`` takes preallocated result arrays.
    """
    if fn is None:
        return lambda f: BatchedFunction(f, parallel)
    return BatchedFunction(fn, parallel)
