"""The fast call path: a fused-loops kernel behind a C entry, called without a Python frame.

A gradc function's Python ``__call__`` costs about 1 µs: binding, the shape lookup, the
buffer checks of ``out=``, numba's boxing of a returned array. At n = 16 that is three
times the loop itself. A hand-written numba kernel pays none of it. This module lets a
function that is called often skip all of it: its out= loop kernel (gradc/lower.py, the
one that writes the gradient into buffers and returns only the floats) is compiled a
second time as a numba ``cfunc`` over raw pointers, and a :mod:`gradc.shim` entry (a
CPython builtin written in LLVM IR) becomes the function's ``__call__``. The entry
checks what the Python path would (exact float64 arrays of an allowed shape, C order,
aligned; out= buffers writable and apart from the arguments), allocates the fresh
results, calls the kernel, and builds the result tuple. Every other call goes to the
Python path, unchanged.

What it compiles, for Rosenbrock's kernel::

    def rosen__value_and_grad__loops__out__c(data, strides, sout, aout, shapes):
        p0 = _carray(data[0], (shapes[0],), _np.float64)
        b0 = _carray(aout[0], (shapes[0],))
        sout[0] = _kernel(p0, b0)

Soundness: the entry takes a call only at shapes it was *allowed* (a row of its shape
table), and a row is allowed only for shapes whose traced program lowered to this very
kernel text (the lowering's rule: the same text is the same function at both shapes).
Each buffer has the shape of one parameter, checked on every row added. A shape the
entry has not seen goes to the Python path, which traces it and, if the kernel text is
the same, allows it: a second length of the same rank costs a trace, not a compile.

Only kernels whose ops cannot raise take this path: a numba ``cfunc`` cannot pass an
exception back (numba's LAPACK calls, the ops of ``gradc.lower._CALLS``, stay on the
Python path, which answers their refusals as NumPy does).
"""
from __future__ import annotations

import hashlib

from . import jit
from .lower import _CALLS

#: Calls through the Python path before a function gets its C entry. The entry's numba
#: compile costs ~0.5-1 s once per kernel (then it is cached on disk), which a function
#: called a few times should not pay.
PROMOTE_AFTER = 64


def available():
    """Whether this process can build C entries (gradc/shim.py and llvmlite load)."""
    try:
        from . import shim
    except ImportError:
        return False
    return shim is not None


class Plan:
    """What a kernel's C entry needs: ``params`` (per parameter None for a float, else its
    rank), ``floats`` (how many floats the kernel returns), ``buffers`` (per array result
    the parameter whose shape it has), ``tree`` (the result as :mod:`gradc.shim` builds it:
    ``("s", k)`` float k, ``("a", k)`` array k) and ``out`` (per place of out=, the array
    result its buffer replaces or None at a float's place; None: no out= entry)."""

    def __init__(self, params, floats, buffers, tree, out):
        self.params, self.floats, self.buffers, self.tree, self.out = \
            params, floats, buffers, tree, out


def plan(graph, shapes, kind, source):
    """The :class:`Plan` of ``graph``'s out= kernel (its loop ``source``) at argument
    ``shapes`` (None: a float), for the transformation ``kind``; None where the C entry does
    not apply: captured arrays, an op that may raise, a kernel entering numba's object mode,
    an array result shaped like no parameter."""
    if graph.captured_arrays or any(node.op in _CALLS for node in graph.nodes):
        return None
    if "objmode(" in source:
        # NumPy's SIMD loops (gradc/lower.py's vector helpers) run in object mode, which
        # boxes the arrays through the environment of a numba function called from Python;
        # a cfunc has none: numba boxed them with a NULL dtype and the loop computed garbage
        # (W5 through the C entry: a loss off by 2.4). Such kernels keep the Python path.
        return None
    if any(s is not None and len(s) == 0 for s in shapes):
        return None
    floats, arrays = [], []

    def walk(t):
        if isinstance(t, tuple):
            return tuple(walk(item) for item in t)
        shape = graph.leaf_shape(t)
        if shape:
            arrays.append(shape)
            return ("a", len(arrays) - 1)
        floats.append(t)
        return ("s", len(floats) - 1)

    tree = walk(graph.out_tree)
    buffers = []
    for shape in arrays:
        same = [p for p, s in enumerate(shapes) if s is not None and tuple(s) == shape]
        if not same:
            return None
        buffers.append(same[0])
    params = tuple(None if s is None else len(s) for s in shapes)
    gradient = tree[1] if kind == "value_and_grad" and len(tree) == 2 else tree
    return Plan(params, len(floats), tuple(buffers), tree,
                out=_out_places(gradient) if kind in ("value_and_grad", "grad") else None)


def _out_places(gradient):
    """What out= holds, as :class:`gradc.shim.EntrySpec` says it: per place of the gradient
    (one array, or a flat tuple of arrays and floats) the array result its buffer replaces,
    None at a float's place; None where out= cannot be that (a float alone, nested trees)."""
    if gradient and gradient[0] in ("a", "s") and isinstance(gradient[1], int):
        return (gradient[1],) if gradient[0] == "a" else None
    if not all(isinstance(t, tuple) and t and t[0] in ("a", "s") for t in gradient):
        return None
    places = tuple(k if kind == "a" else None for kind, k in gradient)
    return places if any(k is not None for k in places) else None


def buffer_shapes(p, shapes):
    """The array results' shapes at argument ``shapes``, as ``p`` says they follow them."""
    return tuple(tuple(shapes[k]) for k in p.buffers)


def wrapper_source(p, kernel_name, kernel_source):
    """``(text, name)``: the module of the kernel's cfunc wrapper (see the module docstring).

    The kernel's source hash is code in it (``_KERNEL``), not only a comment: it is what
    keys the wrapper's cache entry, and two kernels whose wrappers read alike must not
    share a compiled wrapper (it has the kernel compiled into it)."""
    digest = hashlib.sha256(jit.key_text(kernel_source).encode("utf-8")).hexdigest()
    name = f"{kernel_name}__c"
    lines = [f"# Generated by gradc: the C entry's wrapper of the loop kernel {kernel_name},",
             "# for gradc/shim.py (gradc/fastcall.py writes it).",
             "import numpy as _np",
             "from numba import carray as _carray",
             "",
             f"_KERNEL = {digest!r}  # the kernel's key: part of this wrapper's cache key",
             "",
             "",
             f"def {name}(data, strides, sout, aout, shapes):"]
    args, at, dims_of = [], 0, {}
    for k, rank in enumerate(p.params):
        if rank is None:
            lines.append(f"    p{k} = _carray(data[{k}], (1,), _np.float64)[0]")
        else:
            dims = tuple(f"shapes[{at + axis}]" for axis in range(rank))
            dims_of[k] = "(" + ", ".join(dims) + ("," if rank == 1 else "") + ")"
            lines.append(f"    p{k} = _carray(data[{k}], {dims_of[k]}, _np.float64)")
            at += rank
        args.append(f"p{k}")
    for j, k in enumerate(p.buffers):
        lines.append(f"    b{j} = _carray(aout[{j}], {dims_of[k]})")
        args.append(f"b{j}")
    call = f"_kernel({', '.join(args)})"
    if p.floats == 0:
        lines.append(f"    {call}")
    elif p.floats == 1:
        lines.append(f"    sout[0] = {call}")
    else:
        lines.append(f"    r = {call}")
        lines += [f"    sout[{k}] = r[{k}]" for k in range(p.floats)]
    return "\n".join(lines) + "\n", name


def _signature():
    from numba import types

    return types.void(types.CPointer(types.voidptr), types.CPointer(types.int64),
                      types.CPointer(types.float64), types.CPointer(types.CPointer(types.float64)),
                      types.CPointer(types.int64))


def compile_wrapper(p, kernel_name, kernel_source, kernel):
    """The kernel's cfunc wrapper (numba's CFunc: its ``address`` is the body; it holds
    the compiled code), compiled once and cached like every gradc module, and its file."""
    text, name = wrapper_source(p, kernel_name, kernel_source)

    def build(module):
        import warnings

        from numba import cfunc
        from numba.core.errors import NumbaPerformanceWarning

        module.__dict__["_kernel"] = kernel
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumbaPerformanceWarning)
            return cfunc(_signature(), cache=True, error_model="numpy")(getattr(module, name))

    compiled, path = jit.load_numba(text, name, None, None, build=build)
    return compiled, path


def entries(p, compiled, name):
    """``(fresh, out)``: the shim entries of one compiled wrapper: ``fresh`` takes calls
    without keywords (the arrays it returns are new), ``out`` calls with ``out=`` (None
    where the plan has no out= for it). Both hold ``compiled``, whose code they call."""
    from . import shim  # llvmlite's: only functions called often get this far

    fresh = shim.make_entry(_spec(p, out=False), compiled.address, name, keep=(compiled,))
    out = None
    if p.out is not None:
        out = shim.make_entry(_spec(p, out=True), compiled.address, name + "__out",
                              keep=(compiled,))
    return fresh, out


def _spec(p, out):
    from . import shim

    return shim.EntrySpec(params=p.params, results=p.tree, n_scalars=p.floats,
                          n_arrays=len(p.buffers),
                          out=p.out if out else None,
                          pass_shapes=True, contiguous=True)
