"""``gradc.dask``: gradc's compiled kernels over Dask arrays, on one machine or a cluster.

Two data-parallel patterns, both built from Dask's own graph primitives (``blockwise``
and ``dask.array``'s tree reduction), scheduled by whatever Dask scheduler is active
(a ``dask.distributed.Client``, else Dask's threads):

- :func:`vmap`: ``gradc.vmap`` block by block. Arguments are 1-D Dask arrays of points,
  chunked alike, and floats; results are lazy Dask arrays shaped like the result.
- :func:`value_and_grad`: a loss that is a sum (or mean) over the rows of its data
  arguments. Each chunk's partial value and gradient come from the compiled
  ``gradc.value_and_grad`` kernel; the partials are summed with ``dask.array``'s tree
  reduction and returned as NumPy, so it plugs into ``scipy.optimize.minimize(jac=True)``.

What travels to a worker is emitted source text plus its metadata (a
:class:`gradc.batch.BatchedKernel` or a :class:`LossKernel`), never a pickled
dispatcher. Each worker process checks the text's sha256 and the gradc and numba
versions against the client's (:func:`gradc.batch.check_shipped`), compiles it once
through gradc's own loader (its own verified disk cache, code executed from the checked
text) and keeps it for later tasks. A worker needs gradc and numba installed, at the
client's versions.

Threads: Dask parallelises over chunks (a worker's threads, or its processes), so the
kernels here are serial by default (``parallel=False``): measured on 2 cores, a parallel
loop inside each Dask task was no faster (``python -m benchmarks.dask_rows``).

Dask is imported only when one of these is called; without it they raise a
:class:`gradc.GradcError` saying ``pip install "gradc[dask]"``.
"""
from __future__ import annotations

import string
from typing import NamedTuple

import numpy as np

from . import batch, errors, jit
from .version import __version__
from .api import (GradcFunction, _argument_array, _normalize_argnums, _python_caller,
                  numba_layout, numba_runs)
from .lower import LoweringError, lower_module

REDUCTIONS = ("sum", "mean")
#: Rows taken from the data (at most) to check that a loss declared a sum or a mean is one.
PROBE_ROWS = 4


def _dask_array():
    """``dask.array``, or a GradcError saying how to install it."""
    try:
        import dask.array as da
    except ImportError as exc:
        raise errors.GradcError(
            f"{errors.where()}: gradc.dask needs Dask, which is not installed here ({exc}). "
            'Install it with: pip install "gradc[dask]"') from None
    return da


def _is_dask_array(value):
    da = _dask_array()
    return isinstance(value, da.Array)


def _compute(*collections):
    """``dask.compute`` on the active scheduler, with a worker that lacks gradc or numba
    (its task cannot even be unpickled there) reported as what it is."""
    import dask

    try:
        return dask.compute(*collections)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in ("gradc", "numba"):
            raise
        raise errors.GradcError(
            f"{errors.where()}: a Dask worker cannot import {exc.name!r}: every worker needs "
            f"gradc {__version__} and numba {jit._numba_version()} installed (the versions "
            "of this client), for example pip install \"gradc[dask]\" in the workers' "
            "environment.") from exc


# --- batched evaluation --------------------------------------------------------------------

def vmap(fn=None, *, parallel=False):
    """``gradc.vmap(fn)`` over 1-D Dask arrays of points (chunked alike) and floats.

    Returns lazy Dask arrays, nested like ``fn``'s result; each block runs the batched
    loop of :func:`gradc.vmap` (compiled once per worker process). ``parallel=False``
    (the default) runs each block's loop on one core, since Dask already runs blocks
    in parallel; ``parallel=True`` runs numba's parallel loop inside each task.
    """
    if fn is None:
        return lambda f: DaskBatchedFunction(f, parallel)
    return DaskBatchedFunction(fn, parallel)


class DaskBatchedFunction:
    """A gradc function applied point by point over Dask arrays (see :func:`vmap`)."""

    def __init__(self, fn, parallel=False):
        self._batched = batch.BatchedFunction(fn, parallel)

    def __call__(self, *args):
        da = _dask_array()
        points = [k for k, a in enumerate(args) if isinstance(a, da.Array)]
        values = list(args)
        for k, a in enumerate(args):
            if k not in points:
                values[k] = self._shared(k, a)
        if not points:
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.dask.vmap needs at least one Dask array of points; "
                "for NumPy arrays use gradc.vmap.")
        chunks = _aligned_rows(args, points, "gradc.dask.vmap", one_dimensional=True)
        kernel = self._batched.kernel(tuple(k in points for k in range(len(args))))
        pairs = []
        for k, v in enumerate(values):
            pairs += [v, "i"] if k in points else [v, None]
        stacked = da.blockwise(_run_batched, "ki", kernel, None, *pairs,
                               new_axes={"k": kernel.n_out}, dtype=np.float64,
                               meta=np.empty((0, 0)))
        assert stacked.chunks[1] == chunks
        leaves = [stacked[j] for j in range(kernel.n_out)]
        return batch._unflatten(kernel.out_tree, leaves)

    def _shared(self, k, a):
        if isinstance(a, np.ndarray) and a.ndim >= 1 or isinstance(a, (list, tuple)):
            raise errors.ArgumentError(
                f"{errors.where()}: argument {k} of gradc.dask.vmap is an in-memory array; "
                "pass the points as a Dask array (dask.array.from_array(x, chunks=...)) "
                "chunked like the others, or a float shared by every point.")
        return self._batched._fn._check_number(k, a)

    @property
    def source(self):
        """The emitted module of the first kernel built (after the first call)."""
        if not self._batched._kernels:
            raise errors.ArgumentError(
                f"{errors.where()}: call the function once before asking for .source.")
        return next(iter(self._batched._kernels.values()))[0].source


def _run_batched(kernel, *args):
    """One block (on a worker): the checked, once-compiled loop, outputs stacked as rows."""
    spec = batch.compiled(kernel)
    values = [_argument_array(a, np.float64) if isinstance(a, np.ndarray) else a for a in args]
    n = next(len(v) for v, b in zip(values, kernel.batched) if b)
    out = np.empty((kernel.n_out, n))
    if n:
        spec.call(n, *values, *out)  # rows of a C-order array: contiguous out buffers
    return out


def _aligned_rows(args, positions, what, one_dimensional=False):
    """The row chunks shared by the Dask arrays ``args[k]``, k in ``positions``; an
    ArgumentError naming the arguments whose rows (or chunks of rows) differ."""
    first = positions[0]
    for k in positions:
        a = args[k]
        if one_dimensional and a.ndim != 1:
            raise errors.ArgumentError(
                f"{errors.where()}: argument {k} of {what} has shape {a.shape}; it takes 1-D "
                "Dask arrays of points (one value per point) and floats.")
        if a.ndim == 0:
            raise errors.ArgumentError(
                f"{errors.where()}: argument {k} of {what} is a 0-d Dask array; data "
                "arguments have rows.")
        if a.dtype.kind not in "biuf":
            raise errors.ArgumentError(
                f"{errors.where()}: argument {k} of {what} has dtype {a.dtype}; gradc takes "
                "float (or int) arrays.")
        if any(np.isnan(c) for c in a.chunks[0]):
            raise errors.ArgumentError(
                f"{errors.where()}: argument {k} of {what} has chunks of unknown size; call "
                ".compute_chunk_sizes() on it first.")
        if a.shape[0] != args[first].shape[0]:
            raise errors.ArgumentError(
                f"{errors.where()}: argument {k} of {what} has {a.shape[0]} rows but argument "
                f"{first} has {args[first].shape[0]}; every data argument needs the same rows.")
        if a.chunks[0] != args[first].chunks[0]:
            raise errors.ArgumentError(
                f"{errors.where()}: the chunks of argument {k} of {what} along its rows "
                f"{_short(a.chunks[0])} do not line up with those of argument {first} "
                f"{_short(args[first].chunks[0])}. Rechunk it to match: "
                f"arg{k}.rechunk({{0: arg{first}.chunks[0]}}).")
    return args[first].chunks[0]


def _short(chunks):
    return str(chunks) if len(chunks) <= 6 else f"({', '.join(map(str, chunks[:5]))}, ...)"


# --- losses that are sums over data ---------------------------------------------------------

class LossKernel(NamedTuple):
    """One chunk shape's compiled ``value_and_grad`` of a loss, as emitted (picklable).

    ``runs`` says how a worker compiles it, as :class:`gradc.api.GradcFunction` would:
    ``"loops"`` (fused loops, numba compiles per argument types), ``"numba"`` (the entry
    point, for exactly ``shapes``; NumPy runs the same source if numba refuses it and
    ``fallback``) or ``"python"`` (``quiet``: under ``errstate(ignore)``).
    """
    source: str
    func_name: str
    entry_name: str
    shapes: tuple
    layout: str
    runs: str
    fallback: bool
    quiet: bool
    digest: str
    versions: tuple


_LOSS_COMPILED: dict = {}


def _lossfn(kernel: LossKernel):
    """The callable of ``kernel`` in this process: checked, compiled once, kept."""
    ranks = tuple(None if shape is None else len(shape) for shape in kernel.shapes)
    key = (kernel.digest, tuple(kernel.versions), kernel.runs, ranks)  # signatures are by rank
    found = _LOSS_COMPILED.get(key)
    if found is None:
        with batch._COMPILING:
            found = _LOSS_COMPILED.get(key)
            if found is None:
                batch.check_shipped(kernel.source, kernel.digest, kernel.versions, "loss kernel")
                found = _LOSS_COMPILED[key] = _compile_loss(kernel)
    return found


def _compile_loss(k: LossKernel):
    if k.runs == "loops":
        return jit.load_numba_lazy(k.source, k.func_name)[0]
    if k.runs == "numba":
        try:
            return jit.load_numba(k.source, k.func_name, k.entry_name, k.shapes,
                                  layout=k.layout)[0]
        except errors.GradcError:
            if not k.fallback:
                raise
    func = jit.load_python(k.source, k.func_name)[0]
    return _python_caller(func, np.float64, quiet=k.quiet)


def _run_loss_chunk(kernels, positions, mean, shipped, *blocks):
    """One chunk (on a worker): ``[value, *gradient leaves]`` as one row; for a mean loss,
    times the chunk's rows, so that the sum of the rows over chunks is the total.

    ``kernels`` maps each chunk length to its kernel; ``shipped`` is ``(parameters,
    differentiated parameters)``; the blocks go to the data ``positions``.
    """
    params, differentiated = shipped
    n = len(blocks[0])
    size = 1 + sum(int(np.size(p)) for p in differentiated)
    if n == 0:  # an empty chunk adds nothing to a sum, and has no weight in a mean
        return np.zeros((1, size))
    args = list(params)
    for k, b in zip(positions, blocks):  # ascending positions: each lands where it belongs
        args.insert(k, _argument_array(np.asarray(b), np.float64))
    value, grads = _lossfn(kernels[n])(*args)
    row = np.concatenate([[value], *(np.ravel(g) for g in _leaves(grads))])
    if row.size != size:
        raise errors.GradcError(
            f"a loss kernel returned {row.size} numbers where {size} were expected. This is a "
            "gradc bug; please report it.")
    return (row * n if mean else row)[None, :]


def _leaves(tree):
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in _leaves(t)]
    return [tree]


def value_and_grad(loss, data=(1, 2), reduce="sum", argnums=None, backend="numba",
                   arrays="auto"):
    """``loss(params..., X, y)``'s value and gradient, data-parallel over Dask arrays.

    ``data`` are the positions of the data arguments: Dask arrays whose rows are the
    samples, chunked alike along the rows (columns may be chunked; each task gets whole
    rows). ``loss`` must be a sum (``reduce="sum"``) or a mean (``"mean"``) over those
    rows: terms that do not depend on the data (a regulariser) belong outside it. The
    gradient is taken with respect to ``argnums`` (default: every argument that is not
    data; one gets its gradient bare, as in :func:`gradc.value_and_grad`). Calls return
    ``(value, gradient)`` as NumPy; each is one map-reduce on the active Dask scheduler.
    """
    return DaskValueAndGrad(loss, data, reduce, argnums, backend, arrays)


class DaskValueAndGrad:
    """The data-parallel value and gradient of a loss over Dask arrays (see :func:`value_and_grad`)."""

    def __init__(self, loss, data=(1, 2), reduce="sum", argnums=None, backend="numba",
                 arrays="auto"):
        if reduce not in REDUCTIONS:
            raise errors.ArgumentError(
                f"{errors.where()}: reduce must be one of {REDUCTIONS}, not {reduce!r}.")
        data = (data,) if isinstance(data, int) else tuple(_normalize_argnums(tuple(data)))
        if not data:
            raise errors.ArgumentError(f"{errors.where()}: data= names no argument.")
        self._loss, self._data, self._reduce = loss, data, reduce
        self._argnums, self._backend, self._arrays = _normalize_argnums(argnums), backend, arrays
        self._functions = {}  # nargs -> (GradcFunction, argnums)
        self._kernels = {}    # chunk shapes -> LossKernel
        self._checked = False

    # --- what each chunk runs ---------------------------------------------------------
    def _function(self, nargs, backend=None):
        """The core ``gradc.value_and_grad`` of the loss for ``nargs`` arguments."""
        key = (nargs, backend or self._backend)
        if key not in self._functions:
            data = self._data_positions(nargs)
            argnums = self._argnums
            if argnums is None:
                rest = tuple(k for k in range(nargs) if k not in data)
                if not rest:
                    raise errors.ArgumentError(
                        f"{errors.where()}: every argument is data; there is nothing to "
                        "differentiate.")
                argnums = rest[0] if len(rest) == 1 else rest
            nums = (argnums,) if isinstance(argnums, int) else argnums
            if any(k % nargs in data for k in nums):
                raise errors.ArgumentError(
                    f"{errors.where()}: argnums={argnums!r} includes a data argument "
                    f"(data={self._data}); the gradient is with respect to parameters only.")
            self._functions[key] = GradcFunction(self._loss, "value_and_grad", argnums,
                                                 key[1], self._arrays)
        return self._functions[key]

    def _data_positions(self, nargs):
        for k in self._data:
            if not -nargs <= k < nargs:
                raise errors.ArgumentError(
                    f"{errors.where()}: data={self._data} but the loss was called with "
                    f"{nargs} argument(s).")
        return tuple(sorted(k % nargs for k in self._data))

    def _kernel(self, fn, shapes):
        """The LossKernel of ``fn`` at one chunk's argument shapes (emitted, not compiled),
        chosen as :meth:`GradcFunction._spec` chooses what runs."""
        kernel = self._kernels.get(shapes)
        if kernel is not None:
            return kernel
        graph, source, func_name, entry_name = fn.lower(shapes)
        runs, fallback = "python", False
        if self._backend == "numba" and graph.whole_params and self._arrays in ("auto", "loops"):
            try:
                source, func_name = lower_module(graph, fn._name, "value_and_grad", graph.origin)
                runs = "loops"
            except LoweringError as exc:
                if self._arrays == "loops":
                    raise errors.UnsupportedFunctionError(
                        f"{fn._name}(): arrays='loops' cannot compile this function ({exc}); "
                        "use arrays='auto', which runs it as NumPy-level code.") from None
        if runs == "python" and self._backend == "numba" and numba_runs(graph, shapes,
                                                                         self._arrays):
            runs, fallback = "numba", graph.whole_params and self._arrays != "numba"
        kernel = self._kernels[shapes] = LossKernel(
            source, func_name, entry_name, shapes, numba_layout(graph), runs, fallback,
            not graph.whole_params, batch.digest(source), batch.versions())
        return kernel

    # --- calling ----------------------------------------------------------------------
    def __call__(self, *args):
        da = _dask_array()
        nargs = len(args)
        data = self._data_positions(nargs)
        for k in data:
            if not isinstance(args[k], da.Array):
                raise errors.ArgumentError(
                    f"{errors.where()}: argument {k} is data (data={self._data}) but is a "
                    f"{type(args[k]).__name__}, not a Dask array; wrap it with "
                    "dask.array.from_array(x, chunks=(rows, -1)), or use gradc.value_and_grad "
                    "for data in memory.")
        fn = self._function(nargs)
        params = [fn._check_number(k, a) for k, a in enumerate(args) if k not in data]
        params = [p if isinstance(p, float) else _argument_array(p, np.float64) for p in params]
        row_chunks = _aligned_rows(args, data, "gradc.dask.value_and_grad")
        if not self._checked:
            self._check_reduction(args, data, params)
        rows = args[data[0]].shape[0]
        if rows == 0:
            raise errors.ArgumentError(f"{errors.where()}: the data has no rows.")
        total = self._reduction(fn, args, data, params, row_chunks)
        (sums,) = _compute(total)
        if self._reduce == "mean":
            sums = sums / rows
        return self._unflatten(fn, nargs, data, params, sums)

    def _shapes(self, args, data, params, n):
        shapes, it = [], iter(params)
        for k in range(len(args)):
            if k in data:
                shapes.append((n,) + tuple(args[k].shape[1:]))
            else:
                p = next(it)
                shapes.append(None if isinstance(p, float) else p.shape)
        return tuple(shapes)

    def _reduction(self, fn, args, data, params, row_chunks):
        """The lazy sum over chunks of ``[value, *gradient]``: one blockwise task per chunk
        of rows, then ``dask.array``'s tree reduction."""
        da = _dask_array()
        sizes = sorted(set(row_chunks) - {0})
        kernels = {n: self._kernel(fn, self._shapes(args, data, params, n)) for n in sizes}
        differentiated = self._differentiated(fn, len(args), data, params)
        size = 1 + sum(int(np.size(p)) for p in differentiated)
        shipped = (tuple(params), tuple(differentiated))
        pairs, letters = [], iter(string.ascii_lowercase[2:])
        for k in data:
            a = args[k]
            pairs += [a, "i" + "".join(next(letters) for _ in range(a.ndim - 1))]
        # Each task picks the kernel of its chunk's length (usually one length, plus an
        # uneven last chunk); concatenate=True hands it whole rows when columns are chunked.
        rows = da.blockwise(_run_loss_chunk, "ik", kernels, None, data, None,
                            self._reduce == "mean", None, shipped, None, *pairs,
                            new_axes={"k": size}, adjust_chunks={"i": 1}, concatenate=True,
                            dtype=np.float64, meta=np.empty((0, 0)))
        return rows.sum(axis=0)

    def _differentiated(self, fn, nargs, data, params):
        """The parameters the gradient is taken with respect to, in gradient order."""
        argnums, _ = fn._argnums_for(nargs)
        by_position = dict(zip((k for k in range(nargs) if k not in data), params))
        return [by_position[k] for k in argnums]

    def _unflatten(self, fn, nargs, data, params, sums):
        value, at = float(sums[0]), 1
        grads = []
        for p in self._differentiated(fn, nargs, data, params):
            if isinstance(p, float):
                grads.append(float(sums[at]))
                at += 1
            else:
                grads.append(sums[at:at + p.size].reshape(p.shape).copy())
                at += p.size
        _, bare = fn._argnums_for(nargs)
        return value, (grads[0] if bare else tuple(grads))

    # --- is the loss a sum over rows? -------------------------------------------------
    def _check_reduction(self, args, data, params):
        """Compare the loss on the first rows with its two halves, combined as ``reduce``
        says: a loss that is not a sum (or mean) over rows there is refused.

        Runs once per object, in this process, with the python backend (the check is about
        the math, and compiling for the probe's shapes would cost seconds). What it cannot
        see: a loss that is additive on these rows but not on others.
        """
        rows = min(PROBE_ROWS, args[data[0]].shape[0])
        if rows < 2:
            return
        probe = _compute(*(args[k][:rows] for k in data))
        probe = [np.asarray(p, dtype=np.float64) for p in probe]
        fn = self._function(len(args), backend="python")
        half = rows // 2

        def at(lo, hi):
            call, it = [], iter(params)
            for k in range(len(args)):
                call.append(probe[data.index(k)][lo:hi] if k in data else next(it))
            value, grads = fn(*call)
            return np.concatenate([[value], *(np.ravel(g) for g in _leaves(grads))])

        whole, first, second = at(0, rows), at(0, half), at(half, rows)
        if not (np.all(np.isfinite(whole)) and np.all(np.isfinite(first))
                and np.all(np.isfinite(second))):
            self._checked = True
            return  # nan or inf on these rows: nothing can be concluded here
        as_sum = first + second
        as_mean = (half * first + (rows - half) * second) / rows
        combined = as_sum if self._reduce == "sum" else as_mean
        if not _close(combined, whole):
            other = "mean" if self._reduce == "sum" else "sum"
            hint = (f" It behaves as a {other} over the rows: use reduce={other!r}."
                    if _close(as_mean if other == "mean" else as_sum, whole) else
                    " Terms that do not depend on the data (a regulariser, a constant) must "
                    "be added outside the loss, to the value and gradient it returns.")
            raise errors.ArgumentError(
                f"{errors.where()}: the loss is not a {self._reduce} over the rows of its "
                f"data: on rows 0-{rows - 1}, the value is {float(whole[0])!r}, but its halves "
                f"combined as a {self._reduce} give {float(combined[0])!r} (value or gradient "
                f"differ).{hint}")
        self._checked = True


def _close(a, b):
    scale = max(1.0, float(np.max(np.abs(b))))
    return bool(np.max(np.abs(a - b)) <= 1e-9 * scale)
