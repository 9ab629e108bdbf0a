"""``gradc.vmap``: evaluate a scalar function (or its gradient) at many points in one call.

``gradc.vmap(gradc.value_and_grad(f))(a, b, c)`` maps each array argument along
its first axis, as JAX's ``vmap`` does: a 1-D array gives each point a float, an
``(N, d)`` array gives each point a row of shape ``(d,)`` (and ``f`` takes arrays).
Floats are shared by every point. ``in_axes`` says it per argument, as in JAX: an
axis to map along, or None for an argument shared whole (an array ``w`` in
``in_axes=(0, None)``). Results stack the per-point results along a new first axis:
values of shape ``(N,)``, a gradient of an ``(N, d)`` argument of shape ``(N, d)``.
The emitted code is one loop over the points
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
>>> g = gradc.vmap(gradc.grad(lambda x, w: np.sum(w * x * x), argnums=0, backend="python"),
...                in_axes=(0, None))
>>> g(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 10.0]))
array([[ 2., 40.],
       [ 6., 80.]])
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from typing import Callable, NamedTuple

import numpy as np

from . import errors, jit
from .version import __version__
from .api import GradcFunction
from .emit import emit_batched
from .ir import ArrayOut, leaves


def _unflatten(tree, leaves):
    """``leaves`` (one per leaf of the ``out_tree`` ``tree``, in order) nested like ``tree``.

    Leaves are taken by position: a leaf of ``tree`` is an output index or an
    :class:`~gradc.ir.ArrayOut` (an array result at each point), not a position."""
    taken = iter(leaves)

    def build(t):
        return tuple(build(sub) for sub in t) if isinstance(t, tuple) else next(taken)

    return build(tree)


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

    ``batched[k]`` says whether argument k is mapped (an array of points along its first
    axis) or shared; ``point_shapes[k]`` is the shape one point's call sees (None: a float),
    so a mapped ``(N, d)`` argument has ``(d,)`` and a shared array its own shape.
    ``out_tree`` nests the ``n_out`` output leaves like the result; ``out_shapes`` are their
    shapes at one point (``()``: a float), each output array has ``(N,) + shape``.
    ``fallback``: the per-point function is NumPy-level code, which plain Python runs where
    numba cannot compile it. ``digest`` and ``versions`` are checked by :func:`compiled`
    before the source is compiled.
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
    point_shapes: tuple = None  # None: every argument is a float at each point
    out_shapes: tuple = None    # None: every output is a float at each point
    fallback: bool = False

    def argument_ranks(self):
        """Per argument, the rank of the array the loop takes (None: a shared float)."""
        shapes = self.point_shapes or (None,) * len(self.batched)
        return tuple((1 + len(shape or ()) if mapped else None if shape is None else len(shape))
                     for mapped, shape in zip(self.batched, shapes))

    def output_shapes(self):
        """Per output leaf, its shape at one point (``()``: a float)."""
        return self.out_shapes or ((),) * self.n_out


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
    out_shapes: tuple = ()
    runs: str = "python"  # what runs the loop: "numba" or "python"


# Compiled loops of this process by (digest, versions sent, backend): a Dask worker compiles
# each kernel it is sent once, however many tasks carry it (and checks each new sender's).
_COMPILED: dict = {}
_COMPILING = threading.Lock()


def compiled(kernel: BatchedKernel) -> _Spec:
    """The compiled loop of ``kernel``, checked (:func:`check_shipped`) and built once per process.

    numba compiles through :func:`gradc.jit.load_numba`, so the source is written to this
    process's own verified cache and executed from the checked text in memory.
    """
    key = (kernel.digest, tuple(kernel.versions), kernel.backend, kernel.argument_ranks())
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
        try:
            loop, path = jit.load_numba(k.source, k.batched_name, None, None,
                                        build=lambda module: _njit_loop(module, k))
        except errors.GradcError:
            if not k.fallback:
                raise
            # NumPy-level code at each point (large rows) that numba lacks something for:
            # NumPy runs it, point by point, as gradc.api does for one call
        else:
            call = (lambda *a: _gate.run(loop, a)) if k.parallel else loop
            return _Spec(call, loop, k.out_tree, k.n_out, k.source, path, k.backend,
                         k.parallel, k.output_shapes(), "numba")
    loop, path = jit.load_python(k.source, k.batched_name)

    def call(*a):  # plain Python: prange is range, nothing runs in parallel
        with np.errstate(all="ignore"):  # errstate is per thread
            loop(*a)

    return _Spec(call, loop, k.out_tree, k.n_out, k.source, path, k.backend, k.parallel,
                 k.output_shapes(), "python")


def _njit_loop(module, k: BatchedKernel):
    """Compile the batched loop of ``k`` (in ``module``) for its argument and output ranks.

    Contiguous loads vectorise (~1.5x over "A"). The loop only reads its points, so they
    are typed read-only: numba then accepts read-only arrays (np.frombuffer, setflags) as
    well as writable ones, one compiled loop for both; a row ``x[i]`` of a C-order array
    is a C-order array, which the per-point function (compiled lazily, per the types it
    is called with) reshapes freely. Outputs stay writable.
    """
    from numba import float64, int64, njit, types

    jit.jit_inner(module, k.func_name)
    inputs = tuple(float64 if rank is None else types.Array(float64, rank, "C", readonly=True)
                   for rank in k.argument_ranks())
    outputs = tuple(types.Array(float64, 1 + len(shape), "C") for shape in k.output_shapes())
    if k.parallel:
        jit.use_threading_layer()
    # nogil: the loop touches only its arrays, so serial loops called from several threads run
    # at once (parallel launches release the GIL anyway; the gate orders them).
    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():  # '@ is faster on contiguous arrays': transposes are views
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return njit((int64,) + inputs + outputs, cache=True, parallel=k.parallel, nogil=True,
                    error_model="numpy")(getattr(module, k.batched_name))


def _in_axes(in_axes):
    """``in_axes`` checked: an int or None for every argument, or a tuple (list) of them."""
    def one(axis):
        return axis is None or isinstance(axis, (int, np.integer)) and not isinstance(
            axis, (bool, np.bool_))

    if isinstance(in_axes, (tuple, list)):
        if all(one(a) for a in in_axes):
            return tuple(None if a is None else int(a) for a in in_axes)
    elif one(in_axes):
        return None if in_axes is None else int(in_axes)
    raise errors.ArgumentError(
        f"{errors.where()}: in_axes={in_axes!r}; gradc.vmap takes an int (the axis each "
        "array argument is mapped along), None (shared), or a tuple of those with one "
        "entry per argument. Nested in_axes for argument trees are not supported.")


def _split(key):
    """A loop's key (see :meth:`BatchedFunction._points`) as ``(batched, point_shapes)``."""
    pairs = [(k, None) if isinstance(k, bool) else k for k in key]
    return tuple(m for m, _ in pairs), tuple(s for _, s in pairs)


class BatchedFunction:
    """A :class:`~gradc.api.GradcFunction` applied point by point over arrays."""

    def __init__(self, fn, parallel=True, in_axes=0):
        if not isinstance(fn, GradcFunction):
            fn = GradcFunction(fn, "compile")  # a plain function: its values at many points
        self._fn, self._parallel = fn, parallel
        self._in_axes = _in_axes(in_axes)
        self._specs = {}
        self._kernels = {}  # (batched, point shapes) -> (BatchedKernel, graph)
        self._building = threading.RLock()  # concurrent first calls compile once

    def _axis_of(self, k, nargs):
        """The axis argument k is mapped along (None: shared), as ``in_axes`` says."""
        if not isinstance(self._in_axes, tuple):
            return self._in_axes
        if len(self._in_axes) != nargs:
            raise errors.ArgumentError(
                f"{errors.where()}: in_axes={self._in_axes!r} has {len(self._in_axes)} "
                f"entries but the function was called with {nargs} argument(s); give one "
                "entry per argument (None for a shared one).")
        return self._in_axes[k]

    def _points(self, args):
        """The arguments as the loop takes them (a mapped array moved to have its points
        first), the number of points, and the loop's key: per argument whether it is mapped,
        a bool where each point sees a float, else ``(mapped, shape at one point)``."""
        values, key, n, first = [], [], None, None
        for k, a in enumerate(args):
            axis = self._axis_of(k, len(args))
            if not (isinstance(a, (np.ndarray, list, tuple)) and np.ndim(a) >= 1):
                if axis is not None and isinstance(self._in_axes, tuple):
                    raise errors.ArgumentError(
                        f"{errors.where()}: in_axes[{k}] is {axis} but argument {k} is a "
                        f"{type(a).__name__}, which has no axis to map; give None for it "
                        "(shared by every point), or pass an array.")
                values.append(self._fn._check_number(k, a))
                key.append(False)
                continue
            a = self._float_array(k, a)
            if axis is None:  # shared whole: every point's call sees this array
                if a.size == 0:
                    raise errors.ArgumentError(
                        f"{errors.where()}: argument {k} (shared, in_axes None) is empty.")
                values.append(a)
                key.append((False, a.shape))
                continue
            if not -a.ndim <= axis < a.ndim:
                raise errors.ArgumentError(
                    f"{errors.where()}: in_axes for argument {k} is {axis} but the argument "
                    f"has shape {a.shape} ({a.ndim} axis/axes); give an axis in "
                    f"[{-a.ndim}, {a.ndim - 1}], or None to share it.")
            if axis % a.ndim:  # points along another axis: brought to the front (a copy)
                a = np.ascontiguousarray(np.moveaxis(a, axis, 0))
            if n is not None and len(a) != n:
                raise errors.ArgumentError(
                    f"{errors.where()}: argument {k} has {len(a)} points along its mapped "
                    f"axis but argument {first} has {n}; every mapped argument needs the same "
                    "number of points (in_axes=None shares an argument instead).")
            if a.ndim > 1 and a[0].size == 0:
                raise errors.ArgumentError(
                    f"{errors.where()}: argument {k} has shape {a.shape}: each point's "
                    f"slice of shape {a.shape[1:]} is empty.")
            n, first = len(a), k if first is None else first
            values.append(a)
            key.append((True, a.shape[1:]) if a.ndim > 1 else True)
        if n is None:
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.vmap needs at least one array argument mapped "
                "along an axis (in_axes not None); it has none.")
        return values, n, tuple(key)

    @staticmethod
    def _float_array(k, a):
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise errors.ArgumentError(
                f"{errors.where()}: argument {k} has dtype {a.dtype}; gradc.vmap takes float "
                "(or int) arrays and floats.")
        return np.ascontiguousarray(a, dtype=np.float64)

    def _spec(self, key):
        spec = self._specs.get(key)
        if spec is None:
            with self._building:
                spec = self._specs.get(key)  # another thread may have built it meanwhile
                if spec is None:
                    spec = self._specs[key] = self._build(key)
        return spec

    def kernel(self, batched, point_shapes=None):
        """The emitted loop for a call whose argument k is mapped iff ``batched[k]``, with
        ``point_shapes[k]`` the shape one point's call sees (None, the default for every
        argument: a float): traced and emitted once, not compiled (see :class:`BatchedKernel`)."""
        batched = tuple(bool(b) for b in batched)
        point_shapes = tuple(None if s is None else tuple(int(d) for d in s)
                             for s in (point_shapes or (None,) * len(batched)))
        key = (batched, point_shapes)
        found = self._kernels.get(key)
        if found is None:
            with self._building:
                found = self._kernels.get(key)
                if found is None:
                    found = self._kernels[key] = self._emit(batched, point_shapes)
        return found[0]

    def _emit(self, batched, point_shapes):
        nargs = len(batched)
        graph, source, func_name, _ = self._fn.lower(point_shapes)
        source, name = emit_batched(source, graph, func_name, self._fn._arg_names(nargs),
                                    batched, self._parallel)
        out_shapes = tuple(tuple(leaf.shape) if isinstance(leaf, ArrayOut)
                           else tuple(graph.outputs[leaf].shape) for leaf in leaves(graph.out_tree))
        kernel = BatchedKernel(source, func_name, name, batched, len(out_shapes),
                               self._parallel, self._fn._backend, graph.out_tree, digest(source),
                               versions(), point_shapes, out_shapes, bool(graph.whole_params))
        return kernel, graph

    def _build(self, key):
        batched, point_shapes = _split(key)
        kernel = self.kernel(batched, point_shapes)
        # Loops compiled from one source serve every shape of the same ranks (NumPy-level
        # code reads no lengths), so the output shapes are this kernel's, not the first one's.
        return compiled(kernel)._replace(out_shapes=kernel.output_shapes())

    def _buffers(self, n, spec, out):
        shapes = [(n,) + shape for shape in spec.out_shapes]
        if out is None:
            return [np.empty(shape) for shape in shapes]
        buffers = _flatten(out)
        if len(buffers) != spec.n_out:
            raise errors.ArgumentError(
                f"{errors.where()}: out= has {len(buffers)} arrays; the result has {spec.n_out}.")
        for b, shape in zip(buffers, shapes):
            if not (isinstance(b, np.ndarray) and b.dtype == np.float64 and b.shape == shape
                    and b.flags.c_contiguous and b.flags.writeable):
                raise errors.ArgumentError(
                    f"{errors.where()}: out= needs {spec.n_out} writable C-contiguous float64 "
                    f"arrays of shapes {', '.join(map(str, shapes))}, nested like the result.")
        return buffers

    def __call__(self, *args, out=None):
        values, n, key = self._points(args)
        spec = self._spec(key)
        buffers = self._buffers(n, spec, out)
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
        batched, point_shapes = _split(self._first()[0])
        return self._kernels[(batched, point_shapes)][1]

    @property
    def path(self):
        """The file in gradc's cache that holds :attr:`source` (after the first call)."""
        return self._first()[1].path

    def cache_info(self):
        """Where the source lives, what runs the loop, and numba's cache statistics when numba does."""
        spec = self._first()[1]
        info = {"path": spec.path, "backend": spec.backend, "parallel": spec.parallel,
                "runs": spec.runs}
        if spec.runs == "numba":
            stats = spec.kernel.stats
            info.update(cache_hits=sum(stats.cache_hits.values()),
                        cache_misses=sum(stats.cache_misses.values()))
        return info


def vmap(fn=None, in_axes=0, out_axes=0, *, parallel=True):
    """Evaluate ``fn`` (a gradc transformation, or a plain function for its values) over arrays of points.

    ``in_axes`` is JAX's: an int maps every array argument along that axis (floats are
    shared); a tuple gives one entry per argument, an axis or None for an argument shared
    whole (an array then reaches every point's call as it is). A mapped 1-D array gives
    each point a float, an ``(N, d)`` array a row of shape ``(d,)``; another axis than 0
    is moved to the front first (a copy). Every mapped argument needs the same number of
    points N. Results have the structure of ``fn``'s result, each leaf stacked over the
    points along a new first axis (``out_axes=0``, the only one gradc takes).
    ``parallel=True`` spreads the points over the cores (numba's ``workqueue`` threading
    layer unless ``NUMBA_THREADING_LAYER`` says otherwise; calls from several threads take
    turns unless that layer is thread-safe). ``out=`` takes preallocated result arrays.
    """
    if out_axes != 0 or isinstance(out_axes, bool):
        raise errors.ArgumentError(
            f"{errors.where()}: out_axes={out_axes!r}; gradc.vmap stacks results along a new "
            "first axis only (out_axes=0). Move the axis afterwards with np.moveaxis.")
    in_axes = _in_axes(in_axes)  # checked here, so a wrong one is named at the vmap line
    if fn is None:
        return lambda f: BatchedFunction(f, parallel, in_axes)
    return BatchedFunction(fn, parallel, in_axes)
