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

A batched loop is made in two steps that can run on different machines:
:meth:`BatchedFunction.kernel` traces and emits it (a :class:`BatchedKernel`: the
source text and what is needed to call it, small and picklable), and
:func:`compiled` checks and compiles that description, once per process.
:mod:`gradc.dask` ships kernels to Dask workers this way; in memory the same two
steps run back to back.

>>> import numpy as np, gradc
>>> f = gradc.vmap(gradc.value_and_grad(lambda x, y: x * y, backend="python"))
>>> f(np.array([1.0, 2.0]), 3.0)
(array([3., 6.]), (array([3., 3.]), array([1., 2.])))
"""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Callable, NamedTuple

import numpy as np

from . import errors, jit
from .version import __version__
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


class KernelMismatchError(errors.GradcError):
    """Emitted source that arrived from elsewhere (a Dask client) does not match this process:
    its text was altered on the way, or this process runs another gradc or numba."""


def versions():
    """``(gradc, numba)`` versions of this process: emitted code is only valid for these."""
    return (__version__, jit._numba_version())


def digest(source):
    """The sha256 of emitted source text, as shipped alongside it."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def check_shipped(source, sent_digest, sent_versions, what="kernel"):
    """Refuse emitted source whose hash or gradc/numba versions differ from the sender's.

    A worker gets source text from the client that emitted it; this makes a corrupted text,
    or a worker with another gradc or numba (whose compiled code could differ), a clear
    error instead of a computation with different code.
    """
    if digest(source) != sent_digest:
        raise KernelMismatchError(
            f"the emitted source of a gradc {what} arrived altered (its sha256 is not the one "
            "sent with it); it was not compiled.")
    here = versions()
    if tuple(sent_versions) != here:
        raise KernelMismatchError(
            f"a gradc {what} was emitted by gradc {sent_versions[0]} with numba "
            f"{sent_versions[1]}, but this process (pid {os.getpid()}) has gradc {here[0]} "
            f"with numba {here[1]}. Install the same gradc and numba versions on the client "
            "and on every worker.")


class BatchedKernel(NamedTuple):
    """A batched loop as emitted: what a process needs to compile and call it (picklable).

    ``batched[k]`` says whether argument k is an array of points; ``out_tree`` nests the
    ``n_out`` output leaves like the result; ``digest`` and ``versions`` are checked by
    :func:`compiled` before the source is compiled.
    """
    source: str
    func_name: str
    batched_name: str
    batched: tuple
    n_out: int
    parallel: bool
    backend: str
    out_tree: object
    digest: str
    versions: tuple


class _Spec(NamedTuple):
    """One compiled batched loop: ``call(n, *points, *outs)`` and how to read its outputs."""
    call: Callable
    kernel: Callable  # the loop itself, without the gate (benchmarks time it directly)
    out_tree: object
    n_out: int
    source: str
    path: str
    backend: str
    parallel: bool


# Compiled loops of this process by (digest, versions sent, backend): a Dask worker compiles
# each kernel it is sent once, however many tasks carry it (and checks each new sender's).
_COMPILED: dict = {}
_COMPILING = threading.Lock()


def compiled(kernel: BatchedKernel) -> _Spec:
    """The compiled loop of ``kernel``, checked (:func:`check_shipped`) and built once per process.

    numba compiles through :func:`gradc.jit.load_numba_batched`, so the source is written
    to this process's own verified cache and executed from the checked text in memory.
    """
    key = (kernel.digest, tuple(kernel.versions), kernel.backend)
    spec = _COMPILED.get(key)
    if spec is None:
        with _COMPILING:
            spec = _COMPILED.get(key)
            if spec is None:
                check_shipped(kernel.source, kernel.digest, kernel.versions, "vmap kernel")
                spec = _COMPILED[key] = _compile(kernel)
    return spec


def _compile(k: BatchedKernel) -> _Spec:
    if k.backend == "numba":
        loop, path = jit.load_numba_batched(k.source, k.func_name, k.batched_name, k.batched,
                                            k.n_out, k.parallel)
        call = (lambda *a: _gate.run(loop, a)) if k.parallel else loop
    else:
        loop, path = jit.load_python(k.source, k.batched_name)

        def call(*a):  # plain Python: prange is range, nothing runs in parallel
            with np.errstate(all="ignore"):  # errstate is per thread
                loop(*a)

    return _Spec(call, loop, k.out_tree, k.n_out, k.source, path, k.backend, k.parallel)


class BatchedFunction:
    """A :class:`~gradc.api.GradcFunction` applied point by point over arrays."""

    def __init__(self, fn, parallel=True):
        if not isinstance(fn, GradcFunction):
            fn = GradcFunction(fn, "compile")  # a plain function: its values at many points
        self._fn, self._parallel = fn, parallel
        self._specs = {}
        self._kernels = {}  # batched -> (BatchedKernel, graph)
        self._building = threading.RLock()  # concurrent first calls compile once

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

    def kernel(self, batched):
        """The emitted loop for a call whose argument k is an array of points iff
        ``batched[k]``: traced and emitted once, not compiled (see :class:`BatchedKernel`)."""
        batched = tuple(bool(b) for b in batched)
        found = self._kernels.get(batched)
        if found is None:
            with self._building:
                found = self._kernels.get(batched)
                if found is None:
                    found = self._kernels[batched] = self._emit(batched)
        return found[0]

    def _emit(self, batched):
        nargs = len(batched)
        graph, source, func_name, _ = self._fn.lower((None,) * nargs)
        source, name = emit_batched(source, graph, func_name, self._fn._arg_names(nargs),
                                    batched, self._parallel)
        kernel = BatchedKernel(source, func_name, name, batched, len(list(leaves(graph.out_tree))),
                               self._parallel, self._fn._backend, graph.out_tree, digest(source),
                               versions())
        return kernel, graph

    def _build(self, batched):
        return compiled(self.kernel(batched))

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

    def _first(self):
        if not self._specs:
            raise errors.ArgumentError(
                f"{errors.where()}: call the batched function once before asking for .source, "
                ".graph, .path or .cache_info(): which arguments are arrays decides the loop.")
        return next(iter(self._specs.items()))

    @property
    def source(self):
        """The emitted module, with the batched loop (after the first call)."""
        return self._first()[1].source

    @property
    def graph(self):
        """The optimized IR of the function applied at each point (after the first call)."""
        return self._kernels[self._first()[0]][1]

    @property
    def path(self):
        """The file in gradc's cache that holds :attr:`source` (after the first call)."""
        return self._first()[1].path

    def cache_info(self):
        """Where the source lives, what runs the loop, and numba's cache statistics when numba does."""
        spec = self._first()[1]
        info = {"path": spec.path, "backend": spec.backend, "parallel": spec.parallel,
                "runs": "numba" if spec.backend == "numba" else "python"}
        if spec.backend == "numba":
            stats = spec.kernel.stats
            info.update(cache_hits=sum(stats.cache_hits.values()),
                        cache_misses=sum(stats.cache_misses.values()))
        return info


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
