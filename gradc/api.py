"""The public transformations: compile, grad, value_and_grad — wiring trace -> ad -> optimize -> emit -> backend.

Each returns a :class:`GradcFunction`. It traces and compiles once per
signature (each argument's shape, None for a float, and the arrays' dtype),
then calls the compiled code. With the numba backend, once a function of plain
positional float arguments is compiled, calls go straight to its compiled code (the
object's class is switched to one whose ``__call__`` *is* that code): the C entry in
front of the native body (gradc/native.py, route 3: every scalar program whose ops have
LLVM helpers), or numba's dispatcher (programs numba compiles), which costs a
hand-written ``@njit`` call plus ~60 ns for the entry point's ``*extra`` tail. Either
runs such a call itself only when its arguments are exactly the compiled floats; any
other call (ints, arrays, wrong arguments) goes to gradc's fallback (the C entry's, or
numba's ``_compile_for_args`` hook), which runs it through the full path instead (bind,
convert, compile a new specialisation), so what a call returns never depends on the
calls before it.

Calls with one float64 array take a thin path: the compiled code of that exact
shape, found by ``x.shape`` alone (one dict lookup in a small Python frame), and
``f(x, out=dx)`` calls the fused loops that write into ``dx`` and return only the
value, after checking the buffer (shape, dtype, flags, and that the buffer and the
argument each own their memory, so they cannot overlap; anything else takes the
full path, which checks overlaps exactly, captured arrays included). A shape not
compiled before always takes the full path, which traces it again: the trace may
read the shape (``len(x)``, a branch on ``x.shape``) and nothing records whether it
did, so code compiled for one shape never serves another unless their lowered
source text is equal (then they share one compiled function).

After ``fastcall.PROMOTE_AFTER`` calls, a function of float64 arrays running as fused
loops switches its class once more: ``__call__`` becomes a C entry (gradc/fastcall.py,
gradc/shim.py) that checks the arguments, allocates the results and calls the out=
kernel compiled as a cfunc. It takes only the shapes whose kernel text it was built
from (:meth:`GradcFunction._fast_allow`) and hands every other call to the Python path
above. Large scalar programs (route 3 of gradc/native.py) are called through such an
entry from the start, and a second process finds them in the warm-start index
(gradc/index.py) from what the function reads, without tracing it (gradc/fingerprint.py),
or else from its trace.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import numbers
import re
import threading

import numpy as np

from . import ad, constructors, custom, errors, fastcall, index, jit, native, shim, trees
from .emit import emit_module
from .ir import ArrayOut, leaves as out_leaves, resolve
from .lower import NOT_LOWERED, LoweringError, lower_module
from .optimize import optimize
from .trace import Tracer, identifier_or_none, trace
from .unroll import can_unroll, size_of, unroll

BACKENDS = ("numba", "python")
ARRAY_MODES = ("auto", "unroll", "numpy", "numba", "loops")
#: arrays="auto" unrolls array arguments into scalar code for numba while the
#: arguments hold at most this many elements in all ...
UNROLL_MAX_ELEMENTS = 256
#: ... and the unrolled program stays under this many nodes. Measured (benchmarks, workload
#: A): cold compile is ~1.5 s plus ~5 ms per node, so 500 nodes keeps it near 4 s, while
#: unrolled code ran 11-24x faster per call than NumPy-level code at every size tried.
UNROLL_MAX_NODES = 500
#: Scalar code over array arguments (api._scalar_code) is unrolled while the unrolled
#: program has at most this many elements in all (unroll.size_of: the unroll pass builds
#: each array of the program element by element, a gradient's scatters included).
SCALAR_CODE_MAX_ELEMENTS = 2_000_000
#: NumPy-level code with a gradc.scan loop is compiled by numba (arrays="auto") while
#: the array arguments hold at most this many elements.
NUMBA_LOOP_MAX_ELEMENTS = 4096
_ndarray = np.ndarray
_FLOAT64 = np.dtype(np.float64)  # the dtype object of native float64 arrays (compared by identity)
#: Loop sources compiled in this process -> (numba dispatcher, cache file): one per source.
_LOOP_FUNCTIONS: dict = {}
#: Loop sources numba failed to compile in this process (a gradc bug, warned about once).
_BROKEN_LOOPS: set = set()


def _call_failures():
    """What compiled code may raise that the full path answers (GradcFunction._after_failure):
    numpy.linalg's refusals, and numba's errors once numba is loaded. Evaluated only when an
    exception is raised, so numba is never imported for it."""
    import sys

    numba_errors = sys.modules.get("numba.core.errors")
    if numba_errors is None:
        return (np.linalg.LinAlgError,)
    return (np.linalg.LinAlgError, numba_errors.NumbaError)


def array_elements(shapes):
    """How many elements the array arguments hold in all (shapes: None for a float)."""
    return sum(int(np.prod(s)) for s in shapes if s is not None)


def numba_layout(graph):
    """The array layout numba's signature takes: unrolled code reads elements of any layout;
    NumPy-level code reshapes, which numba allows on C-order arrays only."""
    return "C" if graph.whole_params else "A"


def numba_runs(graph, shapes, arrays):
    """Whether numba compiles this specialisation (given backend="numba").

    Unrolled code always. NumPy-level code when forced (arrays="numba"), or in
    auto mode when it holds a loop over small arrays: numba runs loops far faster
    than Python does, while for large arrays NumPy's BLAS is as fast and numba's
    array code costs seconds to compile.
    """
    if not graph.whole_params or arrays == "numba":
        return True
    elements = array_elements(shapes)
    has_loop = any(n.op == "scan" for n in graph.nodes)
    return arrays == "auto" and has_loop and elements <= NUMBA_LOOP_MAX_ELEMENTS


def function_name(fn):
    """An identifier naming ``fn`` in emitted source (``lambda`` for lambdas): NFKC-normalised
    as Python reads it (``ℌ`` is ``H``) and bounded in length (see ``identifier_or_none``)."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return identifier_or_none(name) or ("lambda" if name == "<lambda>" else "f")


def _origin(fn):
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    return (code.co_filename, code.co_firstlineno) if code else None


def _normalize_argnums(argnums):
    if argnums is None or isinstance(argnums, (int, np.integer)) and not isinstance(argnums, bool):
        return argnums if argnums is None else int(argnums)
    if isinstance(argnums, (tuple, list)) and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in argnums):
        return tuple(int(i) for i in argnums)
    raise errors.ArgumentError(f"argnums must be None, an int or a tuple of ints, not {argnums!r}.")


class _NeedsConversion(errors.ArgumentError):
    """numba has no signature for arguments as they were passed (ints, float32 or read-only
    arrays...): the quick path catches it and the full path converts them."""


def _scalar_code(graph):
    """Whether ``graph`` does no work on arrays: its only arrays are its array arguments and
    arrays assembled from scalars (a gradient ``np.zeros`` then ``dp[k] += ...``, a
    ``np.array`` of scalars), so fused loops would have no loop, only its straight-line code.
    Measured on the W3 chain of depth 50 (value and gradient, 100 parameters; one run):
    fused loops 2.2 s cold and 2.0 us a call, unrolled on the native route 0.13 s and
    2.35 us; depth 200: 8.6 s / 6.5 us against 0.22 s / 7.0 us."""
    assembled = set()
    for node in graph.nodes:
        if not node.shape or node.op == "input":
            continue
        if node.op in ("zeros", "pack") or node.op == "scatter" and not node.args[0].shape \
                or node.op in ("add", "alias") and all(a.id in assembled for a in node.args):
            assembled.add(node.id)
        else:
            return False
    return True


def _loops_win(graph):
    """Whether fused loops beat unrolled scalar code on this small-array program: everywhere
    but on products (benchmarks/loops.py, n = 16: Rosenbrock's loops 0.57 µs against
    unrolled 0.69 µs through the same Python call, 0.42 µs behind the C entry; least squares
    8x4 unrolled 3.35 µs against 5.62 µs, np.dot's call costing more than the product), and
    where the loop lowering has a rule for every op."""
    return not any(node.op == "matmul" or node.op in NOT_LOWERED for node in graph.nodes)


#: The transformations whose calls may go through a C entry (gradc/fastcall.py): those whose
#: results are the floats and arrays of one fused out= kernel.
_FAST_KINDS = ("value_and_grad", "grad", "compile", "hvp", "jvp", "vjp")


class _Fast:
    """A function's C entry (gradc/fastcall.py): the out= kernel source it calls, its plan,
    and its two :mod:`gradc.shim` entries (``fresh``: calls without keywords; ``out``: with
    out=, or None)."""

    def __init__(self, source, plan, fresh, out):
        self.source, self.plan, self.fresh, self.out = source, plan, fresh, out


class _Spec:
    """One compiled specialisation: its graph, source, file and callable."""

    __slots__ = ("_graph", "_source", "_build", "path", "call", "func_name", "entry", "plain",
                 "runs", "numpy_level", "c_entry")

    def __init__(self, graph, source, path, call, func_name, entry=None, plain=None, runs=None):
        # a warm start from the index (gradc/index.py) has neither yet: ``_build`` makes them
        self._graph, self._source, self._build = graph, source, None
        self.path, self.call = path, call
        self.func_name, self.entry = func_name, entry
        self.plain = plain  # arrays traced whole: a callable that takes the arrays as they are
        self.runs = runs    # what cache_info() reports, where it is not derived
        # numba-compiled array code: a function building the same program's NumPy-level spec,
        # which answers the calls numba's code refuses (see GradcFunction._after_failure)
        self.numpy_level = None
        self.c_entry = None  # route 3: the gradc.shim.Entry whose function ``entry`` is

    @property
    def graph(self):
        if self._graph is None:
            self._graph, self._source = self._build()
        return self._graph

    @property
    def source(self):
        if self._source is None:
            self._graph, self._source = self._build()
        return self._source

    @property
    def captured_arrays(self):
        """The graph's captured arrays, without building a graph a warm start has not built
        (the index holds only programs without any)."""
        return self._graph.captured_arrays if self._graph is not None else ()


class GradcFunction:
    """A compiled transformation of a Python function. Call it like the original.

    Attributes: ``source`` (the emitted module), ``graph`` (the optimized IR),
    ``path`` (the cache file holding the source).
    """

    def __init__(self, fn, kind, argnums=None, backend="numba", arrays="auto", has_aux=False,
                 static_argnums=()):
        if not callable(fn):
            raise errors.ArgumentError(f"gradc.{kind} needs a callable, not {type(fn).__name__}.")
        if has_aux and kind not in ("grad", "value_and_grad"):
            raise errors.ArgumentError(
                f"has_aux=True is for gradc.grad and gradc.value_and_grad, not gradc.{kind}.")
        self._has_aux = bool(has_aux)
        self._static = _normalize_static(static_argnums)
        self._tree_calls: dict = {}  # (argument structures, static values) -> _TreeCall
        self._inlined: dict = {}     # (shapes, whole) -> graph, for calls on traced values
        # What trace() runs: the function, checked for what it returns (_Results)
        self._tracee = _Results(fn, kind, has_aux) if kind in _RESULT_KINDS else fn
        if arrays not in ARRAY_MODES:
            raise errors.ArgumentError(f"arrays must be one of {ARRAY_MODES}, not {arrays!r}.")
        self._arrays = arrays
        if backend not in BACKENDS:
            raise errors.ArgumentError(f"backend must be one of {BACKENDS}, not {backend!r}.")
        self._fn, self._kind, self._backend = fn, kind, backend
        self._argnums = _normalize_argnums(argnums)
        self._name = function_name(fn)
        self._specs: dict[tuple, _Spec] = {}  # key: one shape per argument (None: a scalar)
        self._plain: dict[tuple, object] = {}  # NumPy-level code by (shape, dtype) per argument
        # The thin call paths (see __call__): one float64 array argument -> what takes it as it
        # is, by its shape; f(x, out=dx) with one array argument -> (kernel, how the result
        # is built from the kernel's return and the buffer), by x's shape.
        self._by_shape: dict[tuple, object] = {}
        self._out_by_shape: dict[tuple, tuple] = {}
        self._no_loops_out: set = set()  # signatures whose out= cannot run as fused loops
        self._out_calls: dict[tuple, tuple] = {}  # f(x, y, out=dx): (call, (shape, dtype) of dx)
        # The C entry (gradc/fastcall.py): calls counted until PROMOTE_AFTER, then the entry
        # (a _Fast) or False where the function cannot have one
        self._calls = 0
        self._fast = None
        try:
            self._signature = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None
        # out= is gradc's (the gradient buffers) unless the function has a parameter ``out``
        self._takes_out = kind in ("grad", "value_and_grad") and not (
            self._signature is not None and "out" in self._signature.parameters)
        functools.update_wrapper(self, fn, updated=())

    # --- arguments --------------------------------------------------------------------
    def _bind(self, args, kwargs):
        """The positional float arguments of a call, or a gradc ArgumentError."""
        return tuple(self._check_number(i, v) for i, v in enumerate(self._positional(args, kwargs)))

    def _positional(self, args, kwargs):
        """The arguments of a call bound to the function's parameters, in positional order
        (defaults applied, ``*args`` spread), not yet checked; a gradc ArgumentError where
        they do not bind."""
        if self._signature is not None:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise errors.ArgumentError(
                    f"{errors.where()}: {self._name}() called with the wrong arguments: {exc}. "
                    f"It takes {self._describe_params()}.") from None
            bound.apply_defaults()
            values = []
            for p in self._signature.parameters.values():
                v = bound.arguments.get(p.name)
                if p.kind == p.VAR_POSITIONAL:
                    values.extend(v or ())
                elif p.kind == p.VAR_KEYWORD or p.kind == p.KEYWORD_ONLY:
                    if v:
                        raise errors.ArgumentError(
                            f"{errors.where()}: gradc traces positional float arguments; "
                            f"{self._name}() has keyword-only parameter {p.name!r}.")
                else:
                    values.append(v)
        elif kwargs:
            raise errors.ArgumentError(f"{errors.where()}: pass {self._name}'s arguments by position.")
        else:
            values = list(args)
        return values

    def _check_number(self, i, value):
        if isinstance(value, (numbers.Real, np.floating, np.integer, np.bool_)):
            return float(value)
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            if value.shape == ():
                return float(value)
            if value.size == 0:
                raise errors.ArgumentError(
                    f"{errors.where()}: argument {i} of {self._name}() is an empty array.")
            single = value.dtype.kind == "f" and value.dtype.itemsize == 4  # >f4 too
            return _argument_array(value, np.float32 if single else np.float64)
        kind = type(value).__name__
        hint = (" Pass a NumPy array (numpy.asarray(...)) for a vector argument, or a tuple "
                "for separate floats (tuples, dicts and lists of arrays are argument trees)."
                if isinstance(value, (list, tuple)) else
                f" An argument that is not traced (a setting) can be marked static: "
                f"static_argnums=({i},)." if isinstance(value, (str, bytes, bool, type(None)))
                else "")
        raise errors.ArgumentError(
            f"{errors.where()}: argument {i} of {self._name}() is a {kind}; gradc "
            f"differentiates functions of real numbers: floats (ints are taken as floats) "
            f"and float arrays.{hint}")

    def _describe_params(self):
        params = list(self._signature.parameters) if self._signature else []
        return f"{len(params)} argument(s) ({', '.join(params)})" if params else "no arguments"

    def _arg_names(self, nargs):
        names = []
        if self._signature is not None:
            for p in self._signature.parameters.values():
                if p.kind == p.VAR_POSITIONAL:
                    names.extend(f"{p.name}{k}" for k in range(nargs - len(names)))
                elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    names.append(p.name)
        names = names[:nargs]
        return names + [f"arg{i}" for i in range(len(names), nargs)]

    def _simple_signature(self):
        """True when every parameter is positional without a default: numba can bind calls itself."""
        return self._signature is not None and all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            for p in self._signature.parameters.values())

    # --- building ---------------------------------------------------------------------
    def _argnums_for(self, nargs):
        argnums = self._argnums
        if argnums is None:
            return tuple(range(nargs)), nargs == 1
        nums = (argnums,) if isinstance(argnums, int) else argnums
        for i in nums:
            if not -nargs <= i < nargs:
                raise errors.ArgumentError(
                    f"{errors.where()}: argnums={argnums!r} but {self._name}() was called with "
                    f"{nargs} argument(s).")
        return tuple(i % nargs for i in nums), isinstance(argnums, int)

    def _transform(self, graph, nargs):
        kept = self._tracee.take() if isinstance(self._tracee, _Results) else _SCALAR
        self._pending_regroup = None  # what _spec wraps the call with (results that are trees)
        if self._kind == "compile":
            if kept is _SCALAR:
                return graph
            outputs, tree, regroup = _result_outputs(graph, kept, self._name, self._fn)
            graph.set_outputs(outputs, tree)
            self._pending_regroup = regroup
            return graph
        argnums, bare = self._argnums_for(nargs)
        g = ad.value_and_grad(graph, argnums, bare=bare, with_value=self._kind != "grad")
        if self._has_aux:
            g = self._with_aux(graph, g, kept)
        return g

    def _with_aux(self, traced, g, aux):
        """``g`` (the differentiated graph) also returning the auxiliary values ``aux``, traced
        in ``traced``: JAX's ``((value, aux), grads)`` or ``(grads, aux)``. The aux nodes are
        replayed into ``g``, where hash-consing finds them (``g`` is a copy of ``traced``)."""
        outputs, tree, regroup = _result_outputs(traced, aux, self._name, self._fn)
        mapped = _replay(traced, g, lambda node: g.inputs[node.attrs[0]])
        offset = len(g.outputs)
        aux_tree = _shift(tree, offset)
        new_outputs = g.outputs + [mapped[o.id] for o in outputs]
        if self._kind == "value_and_grad":
            g.set_outputs(new_outputs, ((g.out_tree[0], aux_tree), g.out_tree[1]))
            self._pending_regroup = regroup and _at_aux(regroup, lambda r: r[0][1],
                                                        lambda r, a: ((r[0][0], a), r[1]))
        else:
            g.set_outputs(new_outputs, (g.out_tree, aux_tree))
            self._pending_regroup = regroup and _at_aux(regroup, lambda r: r[1],
                                                        lambda r, a: (r[0], a))
        return g

    def _trace(self, shapes, dtype="float64", multiple=False, capture=False, scalar=False):
        """Trace ``fn`` for one signature, its arrays whole (one node per array, at every
        size); :meth:`lower` unrolls small programs into scalar code after differentiating
        (gradc/unroll.py). ``scalar`` unrolls the trace itself, before differentiating
        (hessian and jacobian build their output entry by entry), where every op has a
        scalar form; otherwise the trace stays whole, and the caller builds the matrix from
        the whole-array rules (gradc/higher_api.py assembles it from compiled columns).
        With ``capture``, the float arrays ``fn`` reads from outside its arguments become
        hidden parameters (``graph.captured_arrays``); otherwise constants in the source.
        """
        names = self._arg_names(len(shapes))
        traced = trace(self._tracee, [(n, s, True) for n, s in zip(names, shapes)],
                       self._name, _origin(self._fn), multiple=multiple,
                       capture="whole" if capture else None)
        # (not only parameters: whole arrays made inside from floats, np.reshape(a, (1,)))
        if scalar and any(node.shape for node in traced.nodes) and can_unroll(traced):
            return unroll(traced)
        return traced

    def _differentiated(self, traced, nargs, shapes, dtype):
        """The transformed, optimized program that code is emitted from: unrolled where small,
        user rules' nodes replaced by their values (nothing differentiates it further)."""
        graph = self._unrolled_if_small(optimize(self._transform(traced, nargs)), shapes, dtype)
        return custom.strip(graph)

    def _unrolled_if_small(self, graph, shapes, dtype):
        """``graph`` unrolled into scalar code (gradc/unroll.py) where that measurably wins:
        arrays of at most UNROLL_MAX_ELEMENTS elements in all whose unrolled program stays
        under UNROLL_MAX_NODES nodes (benchmarks/array_choice.py), or always with
        ``arrays="unroll"``; else as it is. A function of floats that makes arrays inside
        (``np.array([x, y])``, ``np.zeros(3)`` assigned into) is always unrolled: its arrays
        are nodes with shapes too, but the array paths (fused loops, NumPy-level code)
        take array arguments."""
        if dtype != "float64" or not any(node.shape for node in graph.nodes) \
                or not can_unroll(graph):
            return graph
        if self._arrays == "unroll" or not graph.whole_params:
            return optimize(unroll(graph))
        if self._arrays == "auto" and self._backend == "numba" and _scalar_code(graph) \
                and size_of(graph) <= SCALAR_CODE_MAX_ELEMENTS:
            # Scalar code reading elements of its array arguments (a chain over p[2 * i]):
            # as loops it is the same straight-line code, which numba compiles ~20x slower
            # than the native route compiles it unrolled, at any number of elements.
            return optimize(unroll(graph))
        if (self._arrays != "auto" or array_elements(shapes) > UNROLL_MAX_ELEMENTS
                or size_of(graph) > 20 * UNROLL_MAX_NODES):
            return graph
        if self._backend == "numba" and self._kind in _FAST_KINDS and _loops_win(graph):
            return graph
        unrolled = optimize(unroll(graph))
        return unrolled if len(unrolled.nodes) <= UNROLL_MAX_NODES else graph

    def lower(self, shapes, dtype="float64", out_params=False, capture=False, traced=None):
        """Trace, transform, optimize and emit for one signature, without compiling.

        ``shapes`` has one entry per argument: None for a float, a shape tuple for
        an array. Returns ``(graph, source, func_name, entry_name)``; ahead-of-time
        builds and the backends start from here. ``dtype="float32"`` (all array
        arguments float32) gives NumPy-level code that stays in float32. ``capture``:
        arrays read from outside the arguments are hidden parameters (see :meth:`_trace`);
        calls of this object use that, builds and pictures keep them as constants.
        ``traced``: this signature's trace, where the caller has it (made with ``capture``).
        """
        nargs = len(shapes)
        if traced is None:
            traced = self._trace(shapes, dtype, capture=capture)
        traced.dtype = dtype
        graph = self._differentiated(traced, nargs, shapes, dtype)
        kind = {"compile": "value"}.get(self._kind, self._kind)
        source, func_name, entry_name = emit_module(graph, self._name, kind, traced.origin,
                                                    out_params=out_params)
        return graph, source, func_name, entry_name

    def _spec(self, shapes, dtype="float64"):
        key = shapes if dtype == "float64" else (shapes, dtype)
        spec = self._specs.get(key)
        if spec is not None:
            return spec
        traced = index_key = code_key = None
        if self._indexed():
            # the index, first by what the function reads (no trace), then by its trace
            settings = self._index_settings(shapes, dtype)
            code_key = index.code_key(self._fn, settings)
            spec = self._from_index(code_key, None, shapes, dtype) if code_key else None
            if spec is None:
                traced = self._trace(shapes, dtype, capture=True)
                index_key = index.key(traced, settings)
                spec = self._from_index(index_key, traced, shapes, dtype, also=code_key) \
                    if index_key else None
            if spec is not None:
                return self._registered(key, spec, shapes, dtype)
        graph, source, func_name, entry_name = self.lower(
            shapes, dtype, capture=True, **({} if traced is None else {"traced": traced}))
        regroup = self.__dict__.pop("_pending_regroup", None)
        spec = None
        if self._backend == "numba" and graph.whole_params and self._arrays in ("auto", "loops"):
            spec = self._loops_spec(graph)
        if spec is None and self._backend == "numba" and numba_runs(graph, shapes, self._arrays):
            try:
                # Large straight-line scalar programs: the body as LLVM IR in one numba call
                # (gradc/native.py); None for everything else, which numba compiles as before.
                all_shapes = _with_hidden_shapes(shapes, graph)
                compiled = None if graph.whole_params else native.compile_graph(
                    graph, func_name, source, all_shapes, c_entry=True)
                dispatcher, path = compiled or jit.load_numba(
                    source, func_name, entry_name, all_shapes, dtype=dtype,
                    layout=numba_layout(graph))
            except errors.GradcError:
                if not graph.whole_params or self._arrays == "numba":
                    raise
                # arrays="auto": numba lacks something this NumPy-level code uses; NumPy runs it
            else:
                c_entry = None
                if isinstance(dispatcher, shim.Entry):
                    # route 3 (the body behind a C entry, no numba): what it does not take
                    # (ints, float32, other layouts) goes back to the quick path, as numba's
                    # refusal does, and is converted there
                    c_entry, dispatcher = dispatcher, dispatcher.function
                    c_entry.set_fallback(self._numba_mismatch)
                else:
                    dispatcher._explain_matching_error = self._numba_mismatch
                spec = _Spec(graph, source, path, dispatcher, func_name, dispatcher)
                spec.c_entry = c_entry

        def wrapped(spec):
            if graph.captured_arrays:
                spec = _with_captured(spec, graph.captured_arrays)
            return spec if regroup is None else _regrouped(spec, regroup)

        def numpy_level():
            func, path = jit.load_python(source, func_name)
            scalar = np.float32 if dtype == "float32" else np.float64
            # NumPy-level code behaves exactly as NumPy (its warnings included); scalar code
            # runs under errstate(ignore) to match numba's silent error_model="numpy".
            call = _python_caller(func, scalar, quiet=not graph.whole_params)
            plain = call if graph.whole_params else None
            return wrapped(_Spec(graph, source, path, call, func_name, plain=plain))

        if spec is None:
            spec = numpy_level()
        else:
            spec = wrapped(spec)
            if graph.whole_params:
                spec.numpy_level = functools.cache(numpy_level)
        if index_key is not None and spec.c_entry is not None and regroup is None:
            self._to_index((index_key, code_key), spec, func_name, len(graph.nodes))
        return self._registered(key, spec, shapes, dtype)

    def _registered(self, key, spec, shapes, dtype):
        """``spec`` kept for its signature, and the quick paths that reach it."""
        self._specs[key] = spec
        self._leave_numba()  # the dispatcher serves one float signature; now there are more
        if spec.plain is not None:
            self._plain[tuple(None if shape is None else (shape, np.dtype(dtype))
                              for shape in shapes)] = spec.plain
        if self._fast and dtype == "float64":  # a new shape for the C entry, if the same kernel
            self._fast_allow(self._fast, shapes)
        if len(shapes) == 1 and shapes[0] is not None and dtype == "float64":
            # the thin path of __call__: this callable takes a float64 array of this shape
            # as it is (numba checks layout and writability, and raises _NeedsConversion)
            call = spec.entry if spec.entry is not None else spec.plain
            if call is not None:
                self._by_shape[shapes[0]] = call
        return spec

    # --- the warm-start index (gradc/index.py) ------------------------------------------
    def _indexed(self):
        """Whether this function's large scalar programs go through the warm-start index:
        the numba backend's route 3 (gradc/native.py), for the first-order transformations
        of this class (whose lowering :meth:`lower` takes a trace it is handed)."""
        return (self._backend == "numba" and self._arrays in ("auto", "unroll")
                and self._kind in ("value_and_grad", "grad", "compile")
                and type(self).lower is GradcFunction.lower)

    def _index_settings(self, shapes, dtype):
        """Everything but the trace that decides the compiled program (index.key)."""
        return (type(self).__qualname__, self._kind, self._argnums, self._arrays, dtype,
                self._has_aux, self._name, shapes, UNROLL_MAX_ELEMENTS, UNROLL_MAX_NODES,
                native.MIN_NODES)

    def _from_index(self, index_key, traced, shapes, dtype, also=None):
        """The route-3 spec the index holds under ``index_key`` (its object code loaded, its
        C entry built), or None: a miss, an entry whose object code is gone or fails its
        checks. ``traced``: the trace the key was made from (None: the key was told without
        one, which the graph is then built from when asked). ``also``: a second key to file
        a hit under (the code key a trace-keyed hit was not found by)."""
        found = index.read(index_key)
        if found is None:
            return None
        try:
            loaded = native.load_entry(found["symbol"], found["opt"], found["func_name"],
                                       index.tuples(found["spec"]), index.tuples(found["rows"]))
        except (KeyError, TypeError, ValueError):  # an entry this gradc did not write
            return None
        if loaded is None:
            return None
        c_entry, path = loaded
        c_entry.set_fallback(self._numba_mismatch)
        spec = _Spec(None, None, path, c_entry.function, found["func_name"], c_entry.function)
        spec.c_entry = c_entry
        spec._build = lambda: self.lower(shapes, dtype, capture=True, traced=traced)[:2]
        if also is not None:
            index.write(also, found)
        return spec

    def _to_index(self, keys, spec, func_name, nodes):
        """Record a route-3 spec in the warm-start index (what _from_index reads), one entry
        under each of ``keys`` (the trace's key and the code key; None: not told)."""
        entry = spec.c_entry
        sp = entry.spec
        record = {
            "symbol": native.symbol_of(spec.source), "opt": native.codegen_level(nodes),
            "func_name": func_name,
            "spec": {"params": sp.params, "results": sp.results, "n_scalars": sp.n_scalars,
                     "n_arrays": sp.n_arrays},
            "rows": entry.rows}
        for key in keys:
            if key is not None:
                index.write(key, record)

    def _loops_spec(self, graph, out_params=False):
        """Arrays traced whole, lowered to fused loops (gradc/lower.py) and compiled by numba.

        None where the lowering has no rule for an op the graph uses and ``arrays="auto"``
        (NumPy-level code runs it). Shapes that lower to the same source share one compiled
        function, so a new length of the same rank costs a trace, not a compile.
        """
        kind = {"compile": "value"}.get(self._kind, self._kind)
        try:
            source, func_name = lower_module(graph, self._name, kind, graph.origin,
                                             out_params=out_params)
        except LoweringError as exc:
            if self._arrays == "loops":
                raise errors.UnsupportedFunctionError(
                    f"{self._name}(): arrays='loops' cannot compile this function ({exc}); "
                    "use arrays='auto', which runs it as NumPy-level code.") from None
            return None
        if source in _BROKEN_LOOPS:  # numba failed on it before (_after_failure)
            return None
        found = _LOOP_FUNCTIONS.get(source)
        if found is None:
            found = _LOOP_FUNCTIONS[source] = jit.load_numba_lazy(source, func_name)
        dispatcher, path = found
        spec = _Spec(graph, source, path, dispatcher, func_name, plain=dispatcher, runs="loops")
        return _with_captured(spec, graph.captured_arrays) if out_params and \
            graph.captured_arrays else spec

    def _after_failure(self, spec, values, exc, args, kwargs, rerun=None):
        """Answer a call that ``spec``'s compiled code raised ``exc`` on (see _call_failures).

        numba's LAPACK refuses what NumPy computes (NaN and inf entries: NumPy returns NaN),
        so numba's refusal reruns the call as the same program's NumPy-level code; what NumPy
        itself refuses (a singular matrix) is a gradc.LinAlgError naming the call. numba
        failing to compile gradc's loop code is a gradc bug: under arrays="auto" the program
        runs as NumPy-level code from then on, with a warning; arrays="loops" raises.
        ``rerun``: the spec whose NumPy-level code answers (``spec`` itself unless ``spec``
        is an out= kernel).
        """
        rerun = spec if rerun is None else rerun
        if isinstance(exc, np.linalg.LinAlgError):
            if rerun.numpy_level is not None:
                try:
                    return rerun.numpy_level().call(*values)
                except np.linalg.LinAlgError as again:
                    exc = again
            raise errors.LinAlgError(
                f"{errors.where()}: {self._name}(): numpy.linalg refused these arguments "
                f"({exc}), as NumPy does when it runs the function itself. Check the matrix "
                "(singular, not positive definite), or regularise it.") from None
        message = (f"{self._name}(): numba could not compile gradc's loop code "
                   f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). This is "
                   "a gradc bug; please report it.")
        if spec.runs != "loops" or self._arrays == "loops":
            raise errors.GradcError(f"{errors.where()}: {message} backend='python' runs the "
                                    "same program without numba.") from None
        import warnings

        warnings.warn(f"{message} NumPy-level code runs it instead.", errors.CompileWarning,
                      stacklevel=3)
        _BROKEN_LOOPS.add(spec.source)
        self._forget()
        return self._call_full(args, kwargs)

    def _numba_mismatch(self, *args, **kwargs):
        """numba's hook when no compiled signature takes a call's arguments as they are (and
        it may not compile): the quick path catches this and takes the full path, which
        converts them or says what is wrong. Raising is all numba allows this hook; the
        exception is a signal, so it is cheap (no stack walk): read-only arrays pass here."""
        raise _NeedsConversion(f"numba cannot take the arguments of {self._name}() as they are")

    def _numba_any_call(self, *args, **kwargs):
        """numba's hook for a call that matches no compiled signature exactly, once
        ``_go_straight_to_numba`` lets it ask: gradc runs the call through the full path
        and hands numba a callable returning the result, which numba calls and returns."""
        result = self._call_full(_unfold(args), kwargs)
        return lambda *_args, **_kwargs: result

    def _go_straight_to_numba(self, spec, nargs):
        """Make calls of this object *be* calls of ``spec``'s dispatcher (the module docstring).

        With compiling allowed, numba takes a call itself only on an exact type match and
        hands every other call to ``_compile_for_args``, here the full path. So the
        dispatcher gets an exact signature for Python floats, and the hook. Where that
        cannot be arranged the object keeps its Python ``__call__`` (correct, a little slower).
        """
        dispatcher = spec.entry
        if spec.c_entry is not None:
            self._go_straight_to_c(spec.c_entry)
            return
        if not _exact_float_overload(dispatcher, nargs):
            return
        dispatcher._compile_for_args = self._numba_any_call
        dispatcher._can_compile = True
        self._call_through(dispatcher)

    def _leave_numba(self):
        """Back to the Python ``__call__`` (and its quick path by shape), once there is more
        than the one float specialisation the dispatcher serves. (A C entry for arrays,
        :meth:`_promote`'s, stays: it takes only the shapes it was allowed.)"""
        if not self.__dict__.get("_fast"):
            self._restore_class()

    def _go_straight_to_c(self, entry):
        """Route 3's form of :meth:`_go_straight_to_numba`: the C entry is the object's
        ``__call__``, and what it does not take runs through the full path (which converts
        and calls the entry again: a call the entry refuses *then* is a gradc bug, said so,
        not a loop)."""
        busy = threading.local()

        def full_path(*args, **kwargs):
            if getattr(busy, "on", False):
                self._numba_mismatch()
            busy.on = True
            try:
                return self._call_full(args, kwargs)
            finally:
                busy.on = False

        entry.set_fallback(full_path)
        self._straight_entry = entry
        self._call_through(entry.function)

    def _call_through(self, function):
        """Make calls of this object *be* calls of ``function`` (a numba dispatcher or a C
        entry): the object's class becomes a subclass whose ``__call__`` is ``function``;
        :meth:`_restore_class` undoes it."""
        self._own_class = type(self)
        self.__class__ = type(type(self).__name__, (type(self),),
                              {"__call__": staticmethod(function)})

    def _restore_class(self):
        own = self.__dict__.pop("_own_class", None)
        if own is not None:
            self.__class__ = own
        entry = self.__dict__.pop("_straight_entry", None)
        if entry is not None:  # the quick path calls it again: back to signalling refusals
            entry.set_fallback(self._numba_mismatch)

    # --- the C entry of fused loops (gradc/fastcall.py) ---------------------------------
    def _try_promote(self, args, kwargs):
        """After PROMOTE_AFTER calls: the C entry for this call's signature, if it can have
        one (``_fast`` False: it cannot; None again: this signature is not compiled yet)."""
        self._fast = False  # until built (also if building raises)
        if kwargs.keys() <= {"out"} and self._specs.get(_shapes(args)) is None:
            self._fast = None  # a call of a new signature: ask again at the next call
            return
        self._fast = self._promote(args, kwargs) or False

    def _promote(self, args, kwargs):
        """Make this object's ``__call__`` a C entry calling the out= loop kernel of this
        call's signature (gradc/fastcall.py), allowed at this call's shapes; None where it
        does not apply. Only plain calls of float64 arrays and floats qualify."""
        if (self._backend != "numba" or self._arrays not in ("auto", "loops") or self._has_aux
                or self._kind not in _FAST_KINDS or getattr(self, "_sparse", None) is not None
                or self._static or self._tree_calls or "_own_class" in self.__dict__
                or set(kwargs) - ({"out"} if self._takes_out else set())):
            return None
        if not all(type(a) is float or type(a) is _ndarray and a.dtype is _FLOAT64 and a.ndim
                   for a in args) or not fastcall.available():
            return None
        shapes = _shapes(args)
        spec = self._specs.get(shapes)
        # the call binds to its own arguments (no defaults filled in), and the Python path
        # runs the fused loops for it
        if spec is None or spec.runs != "loops" or len(spec.graph.params) != len(args):
            return None
        found = self._fast_kernel(shapes)
        if found is None:
            return None
        out_spec, dispatcher, plan = found
        try:
            compiled, _ = fastcall.compile_wrapper(plan, out_spec.func_name, out_spec.source,
                                                   dispatcher)
            fresh, out = fastcall.entries(plan, compiled, out_spec.func_name)
        except Exception as exc:  # numba or LLVM refused the wrapper: a gradc bug; the
            # Python path keeps serving every call, as it did
            import logging

            logging.getLogger("gradc").warning("gradc: no C entry for %s (%s: %s)", self._name,
                                               type(exc).__name__, exc)
            return None
        python_call = type(self).__call__.__get__(self)
        fresh.set_fallback(out.function if out is not None else python_call)
        if out is not None:
            out.set_fallback(python_call)
        fast = _Fast(out_spec.source, plan, fresh, out)
        self._call_through(fresh.function)
        for key in list(self._specs):  # every shape compiled so far with the same kernel
            if isinstance(key, tuple) and key and all(k is None or isinstance(k, tuple)
                                                      for k in key):
                self._fast_allow(fast, key)
        return fast

    def _fast_kernel(self, shapes):
        """``(out= spec, kernel dispatcher, fastcall plan)`` of the signature ``shapes``
        (float64), or None where it has no fused out= kernel or the C entry cannot take it."""
        spec = self._specs.get(shapes)
        if spec is None:
            return None
        graph = spec.graph
        count = sum(1 for leaf in out_leaves(self._gradient_tree(graph)) if graph.leaf_shape(leaf))
        out_spec = self._loops_out_spec(spec, shapes, "float64", count)
        if out_spec is None:
            return None
        plan = fastcall.plan(out_spec.graph, shapes, self._kind, out_spec.source)
        found = _LOOP_FUNCTIONS.get(out_spec.source)
        if plan is None or found is None:
            return None
        return out_spec, found[0], plan

    def _fast_allow(self, fast, shapes):
        """Allow the C entry at ``shapes`` where their out= kernel is the entry's (the same
        lowered text: the same function), and where the Python path runs those loops too: an
        unrolled signature (small arrays with products) keeps its own code, since it may round
        differently and the out= entry would take its fresh calls (a call's result never
        depends on the calls before it)."""
        if tuple(None if s is None else len(s) for s in shapes) != fast.plan.params:
            return
        if self._specs[shapes].runs != "loops":
            return
        found = self._fast_kernel(shapes)
        if found is None or found[0].source != fast.source:
            return
        results = fastcall.buffer_shapes(fast.plan, shapes)
        params = tuple(s for s in shapes if s is not None)
        fast.fresh.allow(params, results)
        if fast.out is not None and self._takes_out:
            fast.out.allow(params, results)

    # --- calling ----------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self._fast is None:  # not yet promoted to a C entry (nor found unable to be)
            self._calls += 1
            if self._calls >= fastcall.PROMOTE_AFTER:
                self._try_promote(args, kwargs)
        if len(args) == 1:  # the thin paths: one float64 array of a shape compiled before
            a = args[0]
            if type(a) is _ndarray and a.dtype is _FLOAT64:
                if not kwargs:
                    call = self._by_shape.get(a.shape)
                    if call is not None:
                        try:
                            return call(a)
                        except _NeedsConversion:
                            pass  # a read-only or unaligned array: converted below
                        except CapturedArrayChanged:
                            self._forget()  # a captured name now holds another shape
                        except _call_failures():
                            pass  # the full path answers it (_after_failure)
                else:  # f(x, out=dx) compiled before (the table is empty unless out= is ours)
                    out = kwargs.get("out")
                    if type(out) is _ndarray and len(kwargs) == 1:
                        shape = a.shape
                        quick = self._out_by_shape.get(shape)
                        # _may_write's checks, written out: this frame is the whole overhead
                        if (quick is not None and out.shape == shape and out.dtype is _FLOAT64
                                and out is not a
                                and out.flags.num & _BUFFER_FLAGS == _BUFFER_FLAGS
                                and a.flags.num & _OWNDATA):
                            kernel, result = quick
                            try:
                                if result is _VALUE_AND_BUFFER:
                                    return kernel(a, out), out
                                kernel(a, out)
                                return out
                            except _call_failures():
                                pass  # _call_out answers it (_after_failure)
        if kwargs and "out" in kwargs and self._takes_out:
            return self._call_out(args, kwargs)
        if not kwargs:  # the quick path: an already compiled shape, float64 arguments
            spec = self._specs.get(_shapes(args))
            if spec is not None and spec.entry is not None:
                try:
                    return spec.entry(*args)
                except _NeedsConversion:
                    pass  # ints, float32, lists of the right shape: convert below
                except CapturedArrayChanged:
                    self._forget()  # a captured name now holds another shape: trace again
            elif self._plain:  # NumPy-level code: arrays of the compiled dtype, as they are
                plain = self._plain.get(tuple(map(_shape_and_dtype, args)))
                if plain is not None:
                    try:
                        return plain(*args)
                    except CapturedArrayChanged:
                        self._forget()
                    except _call_failures():
                        pass  # the full path answers it (_after_failure)
        return self._call_full(args, kwargs)

    def _forget(self):
        """Drop every compiled specialisation's binding (a captured array's name now holds
        an array of another shape or kind): the next call traces again."""
        self._specs.clear()
        self._plain.clear()
        self._by_shape.clear()
        self._out_by_shape.clear()
        self._no_loops_out.clear()
        self._out_calls.clear()
        self._fast, self._calls = None, 0
        self._restore_class()

    def _call_full(self, args, kwargs):
        """Any call: bind and convert the arguments, compile their specialisation if it is
        new, run it. The same for every call, whatever calls came before."""
        # inside a trace, an array NumPy made in the traced function may hold traced values
        # (gradc/constructors.py); it is never a plain ndarray, so no quicker path took it
        args, kwargs = constructors.plain(args), constructors.plain(kwargs)
        if self._needs_trees(args, kwargs):
            return self._call_tree(args, kwargs)
        if _any_traced(args) or _any_traced(kwargs.values()):
            return self._call_traced(args, kwargs)
        values = self._bind(args, kwargs)
        dtype = _dtype(values)
        values = _promote(values, dtype)
        spec = self._spec(_shapes(values), dtype)
        if (spec.entry is not None and "_own_class" not in self.__dict__
                and not spec.captured_arrays
                and self._simple_signature() and len(self._specs) == 1
                and all(isinstance(v, float) for v in values)):
            self._go_straight_to_numba(spec, len(values))
        try:
            return spec.call(*values)
        except CapturedArrayChanged:
            self._forget()
            return self._call_full(args, kwargs)
        except _call_failures() as exc:
            return self._after_failure(spec, values, exc, args, kwargs)
        except _NeedsConversion as exc:  # _bind's values are what numba takes: a gradc bug
            raise errors.GradcError(
                f"{errors.where()}: {exc}, though gradc converted them. This is a gradc bug; "
                "please report it. backend='python' runs the same source without numba.") from None

    # --- argument trees, static arguments, calls on traced values ----------------------
    def _needs_trees(self, args, kwargs):
        """Whether a call goes through :meth:`_call_tree`: static arguments, or an argument
        that is a tree (a tuple, a dict, or a list that is not a plain list of numbers)."""
        if self._kind not in _RESULT_KINDS:
            return False  # the higher orders take flat floats and arrays (gradc/higher_api.py)
        return bool(self._static) or any(map(_is_tree, args)) or any(map(_is_tree, kwargs.values()))

    def _call_tree(self, args, kwargs, out=None):
        """A call with argument trees or static arguments: the leaves of the trees are the
        arguments of a flat function (one :class:`_TreeCall` per structure and static
        values, compiled as any other), and its gradients are put back into the trees.
        ``out`` (gradient buffers) mirrors the gradient's trees, None at each float."""
        if not kwargs and len(args) == self._positional_count():
            values = args  # nothing to bind: the common call, kept cheap (no signature.bind)
        else:
            values = self._positional(args, kwargs)
        static = self._static_positions(len(values)) if self._static else ()
        leaves, structure = [], []
        for i, value in enumerate(values):
            if i in static:
                structure.append(_static_key(self._name, i, value))
                continue
            found, treedef = trees.flatten(value)
            for k, leaf in enumerate(found):
                leaves.append(self._check_leaf(i, treedef, k, leaf))
            structure.append(treedef)
        key = tuple(structure)
        call = self._tree_calls.get(key)
        if call is None:
            call = self._tree_calls[key] = _TreeCall(self, values, structure)
        return call(leaves, out)

    def _static_positions(self, nargs):
        for i in self._static:
            if not -nargs <= i < nargs:
                raise errors.ArgumentError(
                    f"{errors.where()}: static_argnums={self._static!r} but {self._name}() was "
                    f"called with {nargs} argument(s).")
        return {i % nargs for i in self._static}

    def _positional_count(self):
        """How many parameters a call binds by position alone (None: it needs binding)."""
        count = self.__dict__.get("_n_positional", False)
        if count is False:
            count = self._n_positional = (len(self._signature.parameters)
                                          if self._simple_signature() else None)
        return count

    def _check_leaf(self, i, treedef, k, leaf):
        """Leaf ``k`` of argument ``i``'s tree (structure ``treedef``) as compiled code takes
        it (traced values as they are)."""
        if type(leaf) is float:
            return leaf
        if _any_traced((leaf,)):
            return leaf
        if treedef == trees.LEAF:
            return self._check_number(i, leaf)
        try:
            return self._check_number(i, leaf)
        except errors.ArgumentError:
            path = trees.paths(treedef)[k]
            raise errors.ArgumentError(
                f"{errors.where()}: argument {i} of {self._name}() holds {_describe(leaf)} at "
                f"{path}; the leaves of an argument tree are floats and float arrays. Mark an "
                f"argument of settings static (static_argnums=({i},)).") from None

    def _call_traced(self, args, kwargs):
        """A call on values another gradc transformation is tracing (``grad(grad(f))``,
        a compiled helper called by a traced loss): this function's graph, traced at the
        arguments' shapes, is replayed into the caller's graph, so the caller differentiates
        through it and compiles it as part of its own code."""
        values = list(args) if self._kind in ("hvp", "jvp") and not kwargs else \
            self._positional(args, kwargs)
        outer = _tracer_in(values).graph
        shapes = tuple(_traced_shape(v, self._name, i) for i, v in enumerate(values))
        if shapes not in self._inlined:
            self._inlined[shapes] = self._graph_for(shapes)
        graph, regroup = self._inlined[shapes]
        lift = _tracer_in(values)._lift

        def argument(node):
            # an input of an unrolled graph (a hessian's) is one element of the argument
            _, _, p, index = node.attrs
            return lift(values[p] if index is None else values[p][index])

        mapped = _replay(graph, outer, argument)
        result = _tree_of_tracers(outer, graph.out_tree, [mapped[o.id] for o in graph.outputs])
        return regroup(result) if regroup is not None else result

    def _graph_for(self, shapes):
        """``(graph, regroup)``: the optimized graph at ``shapes`` (for :meth:`_call_traced`)."""
        with _apart_from_the_callers_trace():
            graph = self._build_for(shapes)
        return graph, self.__dict__.pop("_pending_regroup", None)

    def _build_for(self, shapes):
        """The optimized graph of this transformation at ``shapes``, its arrays traced whole
        (the higher orders' may come unrolled: their inputs are then elements)."""
        if type(self).lower is GradcFunction.lower:
            names = self._arg_names(len(shapes))
            traced = trace(self._tracee, [(n, s) for n, s in zip(names, shapes)],
                           self._name, _origin(self._fn))
            return optimize(self._transform(traced, len(shapes)))
        return self.lower(shapes)[0]  # the higher orders trace (and choose how) in lower()

    def _call_out(self, args, kwargs):
        """A call writing array gradients into the caller's buffers (``out=``).

        ``out`` mirrors the gradient structure: an array for each array argument,
        None for each float. Each buffer is checked on every call (shape, dtype, writable,
        aligned, C-contiguous, sharing no memory with an argument, a captured array or
        another buffer: the code reads the arguments while it writes the buffers). Fused
        loops, at every size where the loop lowering compiles the function, write into the
        buffers and return only the floats; unrolled numba code writes into them too;
        NumPy-level code computes, then copies.
        """
        out = kwargs.pop("out")
        if not kwargs and type(out) is _ndarray:  # the quick path: f(x, y, out=dx), compiled
            quick = self._out_calls.get(tuple(map(_shape_and_dtype, args)))
            if quick is not None and _fits(out, quick[1]) and _apart(out, args):
                try:
                    return quick[0](*args, out)
                except CapturedArrayChanged:
                    self._forget()
                except _NotApart:
                    pass  # the full path checks exactly (and names what the buffer overlaps)
                except _call_failures():
                    pass  # the full path answers it (_after_failure)
        if self._has_aux:
            raise errors.ArgumentError(
                f"{errors.where()}: out= together with has_aux=True is not supported; call "
                f"{self._name}() without out= (the gradient is returned).")
        if self._needs_trees(args, kwargs):
            return self._call_tree(args, kwargs, out)
        values = self._bind(args, kwargs)
        dtype = _dtype(values)
        values = _promote(values, dtype)
        shapes = _shapes(values)
        spec = self._spec(shapes, dtype)
        buffers = self._check_out(out, self._gradient_tree(spec.graph), spec.graph, dtype)
        _check_apart(buffers, values, spec.graph, self._name)
        loops = self._loops_out_spec(spec, shapes, dtype, len(buffers))
        if loops is not None:
            self._remember_out(args, out, buffers, loops)
            try:
                return loops.call(*values, *buffers)
            except _call_failures() as exc:
                # numba's loops refused this call: the full path answers it, into the buffers
                result = self._after_failure(loops, values, exc, args, {}, rerun=spec)
                return self._copied_into(result, out)
        if spec.entry is not None and not spec.graph.whole_params:
            key = (shapes, "out")
            out_spec = self._specs.get(key)
            if out_spec is None:
                graph, source, func_name, entry = self.lower(shapes, dtype, out_params=True,
                                                             capture=True)
                extra = tuple(b.shape for b in buffers)
                dispatcher, path = jit.load_numba(source, func_name, entry,
                                                  _with_hidden_shapes(shapes, graph) + extra)
                out_spec = _Spec(graph, source, path, dispatcher, func_name, dispatcher)
                if graph.captured_arrays:
                    out_spec = _with_captured(out_spec, graph.captured_arrays)
                self._specs[key] = out_spec
            self._remember_out(args, out, buffers, out_spec)
            return out_spec.entry(*values, *buffers)
        return self._copied_into(spec.call(*values), out)

    def _copied_into(self, result, out):
        """A result computed without ``out=``, its gradient copied into the caller's buffers."""
        grads = result[1] if self._kind == "value_and_grad" else result
        copied = _copy_into(grads, out)
        return (result[0], copied) if self._kind == "value_and_grad" else copied

    def _loops_out_spec(self, spec, shapes, dtype, count):
        """The fused loops writing the gradient into ``count`` buffers, for the signature whose
        spec is ``spec``; None where they do not apply (backend, arrays mode, an op without
        a loop rule, a gradient array that is an argument or a constant).

        Also where ``spec`` is unrolled scalar code (small arrays): its out= form returns
        its arrays through numba's boxing (~0.5 us a call), while the loops return only the
        floats and run as fast as the unrolled code there (benchmarks/loops.py).
        """
        key = (shapes, dtype, "out")
        if key in self._specs:
            return self._specs[key]
        if key in self._no_loops_out or self._backend != "numba" or \
                self._arrays not in ("auto", "loops"):
            return None
        self._no_loops_out.add(key)  # until it is built (also if building raises)
        if spec.runs == "loops":
            graph = spec.graph
        elif spec.entry is not None and not spec.graph.whole_params and self._arrays == "auto":
            graph = self._whole_graph(shapes, dtype)  # spec is unrolled: lower the whole one
        else:
            return None
        if not _writes_each_buffer(graph, count):
            return None
        kernel_graph, rebuild = _floats_only(graph, self._kind)
        loops = self._loops_spec(kernel_graph, out_params=True)
        if loops is None:
            return None
        kernel = loops.call

        def call(*values_and_buffers):
            return rebuild(kernel(*values_and_buffers), values_and_buffers[-count:])

        call._gradc_inner = getattr(kernel, "_gradc_inner", kernel)  # for cache_info
        out_spec = self._specs[key] = _Spec(graph, loops.source, loops.path, call,
                                            loops.func_name, runs="loops")
        self._no_loops_out.discard(key)
        if (len(shapes) == 1 and shapes[0] is not None and dtype == "float64" and count == 1
                and not graph.captured_arrays and rebuild.form is not None):
            # the thin path of __call__: f(x, out=dx) calls the kernel itself
            self._out_by_shape[shapes[0]] = (kernel, rebuild.form)
        return out_spec

    def _whole_graph(self, shapes, dtype):
        """The transformed, optimized program at ``shapes``, its arrays whole (not unrolled)."""
        traced = self._trace(shapes, dtype, capture=True)
        traced.dtype = dtype
        graph = custom.strip(optimize(self._transform(traced, len(shapes))))
        self.__dict__.pop("_pending_regroup", None)  # out= has no result trees to regroup
        return graph

    def _remember_out(self, args, out, buffers, out_spec):
        """Let the next call of these argument types with one buffer skip the full path."""
        call = out_spec.entry if out_spec.entry is not None else out_spec.call
        if out_spec.graph.captured_arrays:
            call = _apart_from_captured(call, out_spec.graph.captured_arrays)
        if type(out) is _ndarray and len(buffers) == 1 and all(
                type(a) is _ndarray and a.dtype == np.float64 or type(a) is float for a in args):
            self._out_calls[tuple(map(_shape_and_dtype, args))] = (call, (out.shape, out.dtype))

    def _gradient_tree(self, graph):
        """The part of ``graph``'s result tree that out= mirrors: the gradient."""
        return graph.out_tree[1] if self._kind == "value_and_grad" else graph.out_tree

    def _check_out(self, out, tree, graph, dtype):
        """The buffers in ``out`` (in ArrayOut order), checked against the gradient's structure."""
        buffers = []

        def walk(t, o):
            if isinstance(t, tuple):
                if not isinstance(o, (tuple, list)) or len(o) != len(t):
                    raise errors.ArgumentError(
                        f"{errors.where()}: out= must mirror the gradient: a tuple of {len(t)}.")
                for sub_t, sub_o in zip(t, o):
                    walk(sub_t, sub_o)
                return
            shape = graph.leaf_shape(t)
            if not shape:
                if o is not None:
                    raise errors.ArgumentError(
                        f"{errors.where()}: out= has an array where the gradient is a float; "
                        "put None there.")
                return
            if not (isinstance(o, np.ndarray) and o.shape == tuple(shape) and o.dtype == dtype
                    and o.flags.writeable and o.flags.c_contiguous and o.flags.aligned):
                raise errors.ArgumentError(
                    f"{errors.where()}: out= needs a writable, aligned, C-contiguous {dtype} "
                    f"array of shape {tuple(shape)} here, not {_describe(o)}.")
            buffers.append(o)

        walk(tree, out)
        return buffers

    def _default_spec(self):
        if self._specs:
            return next(iter(self._specs.values()))
        if self._tree_calls:  # called with trees or static arguments: the first such call's
            return next(iter(self._tree_calls.values())).inner._default_spec()
        if self._static:
            raise errors.ArgumentError(
                f"{self._name}() has static arguments: call it once before asking for "
                ".source or .graph.")
        if not self._simple_signature():
            raise errors.ArgumentError(
                f"{self._name}() takes a variable number of arguments: call it once before "
                "asking for .source or .graph.")
        return self._spec((None,) * len(self._signature.parameters))

    @property
    def source(self):
        """The emitted Python module (for the first signature compiled)."""
        return self._default_spec().source

    @property
    def graph(self):
        """The optimized IR; ``print`` it to read it as a program."""
        return self._default_spec().graph

    @property
    def path(self):
        """The file in gradc's cache that holds :attr:`source`."""
        return self._default_spec().path

    def cache_info(self):
        """Where the source lives, what runs it, and numba's cache statistics when numba does.

        ``runs`` is ``"numba"``, ``"numpy"`` (NumPy-level code for arrays traced
        whole: numba is not used even with backend="numba") or ``"python"``;
        ``path_kind="loops"`` says numba runs the fused loops of arrays traced whole.
        The top-level keys describe the first specialisation compiled; ``specialisations``
        lists every one: its ``signature`` (``"(f8, f8[20])"``, ``out=`` and float32 noted),
        ``runs``, ``path``, numba's cache hits and misses, and ``compile_seconds`` (numba's
        time compiling that file in this process; 0.0 when it came from the disk cache).
        """
        info = _spec_info(self._default_spec(), self._backend)
        info["specialisations"] = [
            dict(signature=_signature_text(key), **_spec_info(spec, self._backend))
            for key, spec in self._specs.items()]
        return info

    def __repr__(self):
        return f"<gradc.{self._kind} of {self._name} ({self._backend})>"


#: ndarray.flags.num bits: C-contiguous, owns its data, aligned, writable (NumPy's NPY_ARRAY_*).
_C_CONTIGUOUS, _OWNDATA, _ALIGNED, _WRITEABLE = 0x1, 0x4, 0x100, 0x400
_BUFFER_FLAGS = _C_CONTIGUOUS | _OWNDATA | _ALIGNED | _WRITEABLE
#: How the thin out= path of __call__ builds the result from the kernel's return ``r`` and
#: the buffer: ``(r, out)`` (value_and_grad) or ``out`` (grad; the kernel returns ``()``).
_VALUE_AND_BUFFER, _BUFFER = "value and buffer", "buffer"
_TooHardError = getattr(getattr(np, "exceptions", np), "TooHardError")  # NumPy 1.24 has np.TooHardError


def _may_write(out, x):
    """Whether the thin out= path may hand ``out`` to the kernel compiled for ``x``'s shape:
    float64 of that shape, writable, aligned, C-contiguous, and certainly apart from ``x``:
    two distinct arrays that each own their data do not overlap. Anything else (a view, an
    array over foreign memory) takes the full path, which checks exactly. (``__call__``
    spells these checks out inline; this is their definition, which the tests hold it to.)"""
    return (out.shape == x.shape and out.dtype is _FLOAT64 and out is not x
            and out.flags.num & _BUFFER_FLAGS == _BUFFER_FLAGS and x.flags.num & _OWNDATA)


def _apart(out, args):
    """The quick out= path's test that ``out`` shares no memory with the arguments ``args``
    (floats and arrays): each array owns its data and is not ``out``; else the full path."""
    if not out.flags.num & _OWNDATA:
        return False
    return all(type(a) is not _ndarray or (a is not out and a.flags.num & _OWNDATA)
               for a in args)


class _NotApart(Exception):
    """The quick out= path cannot tell that the buffer is apart from a captured array (a
    signal: the full path checks exactly)."""


def _apart_from_captured(call, captured):
    """``call(*values, buffer)`` that first checks, as :func:`_apart` does, that the buffer
    is apart from the captured arrays' current values (else :class:`_NotApart`)."""
    def checked(*values_and_buffer):
        if not _apart(values_and_buffer[-1], [c.current() for c in captured]):
            raise _NotApart
        return call(*values_and_buffer)

    return checked


def _check_apart(buffers, values, graph, name):
    """A gradc error where an out= buffer shares memory with an argument, a captured array or
    another buffer: the compiled code zeroes and accumulates into the buffers while it reads
    its inputs, so an overlap would give a wrong gradient."""
    inputs = [(f"argument {i}", v) for i, v in enumerate(values) if isinstance(v, np.ndarray)]
    inputs += [(f"the captured array {c.name!r}", c.current()) for c in graph.captured_arrays]
    for k, buffer in enumerate(buffers):
        others = inputs + [(f"out= buffer {j}", b) for j, b in enumerate(buffers[:k])]
        for what, other in others:
            if isinstance(other, np.ndarray) and _overlap(buffer, other):
                raise errors.ArgumentError(
                    f"{errors.where()}: out= buffer {k} of {name}() shares memory with {what}; "
                    "gradc writes the gradient while it reads its inputs, so pass a separate "
                    "array (numpy.empty_like(x)) as the buffer.")


def _overlap(a, b):
    """Whether two arrays share memory (exactly; an overlap too hard to decide counts as one)."""
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))
    except _TooHardError:
        return True


def _floats_only(graph, kind):
    """``(kernel_graph, rebuild)`` for out= fused loops: ``graph`` returning only its float
    results (its arrays go into the buffers: numba's boxing of a returned array costs more
    than the loop at small sizes), and ``rebuild(returned, buffers)``, the result as the
    caller gets it. ``rebuild.form`` names the common shapes the thin path builds inline
    (:data:`_VALUE_AND_BUFFER`, :data:`_BUFFER`), else None."""
    def is_array(leaf):
        return bool(graph.leaf_shape(leaf))

    floats = [leaf for leaf in out_leaves(graph.out_tree) if not is_array(leaf)]
    kernel_graph = copy.copy(graph)  # shares the nodes; only what it returns differs
    kernel_graph.out_tree = floats[0] if len(floats) == 1 else tuple(floats)

    def fill(tree, found, buffers):
        if isinstance(tree, tuple):
            return tuple(fill(t, found, buffers) for t in tree)
        return next(buffers) if is_array(tree) else next(found)

    def rebuild(returned, buffers):
        found = (returned,) if len(floats) == 1 else returned
        return fill(graph.out_tree, iter(found), iter(buffers))

    tree = graph.out_tree
    rebuild.form = None
    if kind == "value_and_grad" and isinstance(tree, tuple) and len(tree) == 2 and \
            not isinstance(tree[0], tuple) and not is_array(tree[0]) and \
            not isinstance(tree[1], tuple) and is_array(tree[1]):
        rebuild.form = _VALUE_AND_BUFFER
    elif kind == "grad" and not isinstance(tree, tuple) and is_array(tree):
        rebuild.form = _BUFFER
    return kernel_graph, rebuild


def _fits(out, shape_dtype):
    """``out`` is a buffer the compiled code may write: the shape and dtype it was compiled
    for, writable, aligned and C-contiguous (what ``_check_out`` demands)."""
    flags = out.flags
    return ((out.shape, out.dtype) == shape_dtype and flags.writeable and flags.c_contiguous
            and flags.aligned)


def _spec_info(spec, backend):
    """cache_info's description of one specialisation."""
    if spec.c_entry is not None:  # route 3: object code behind a C entry, no numba
        return {"path": spec.path, "backend": backend, "runs": "native",
                "path_kind": "c-entry", "from_index": spec._graph is None}
    dispatcher = spec.call if spec.runs == "loops" else spec.entry
    dispatcher = getattr(dispatcher, "_gradc_inner", dispatcher)  # captured arrays' wrapper
    if dispatcher is None or not hasattr(dispatcher, "stats"):
        runs = "numpy" if spec.graph.whole_params else "python"
        return {"path": spec.path, "backend": backend, "runs": runs}
    stats = dispatcher.stats
    info = {"path": spec.path, "backend": backend, "runs": "numba",
            "cache_hits": sum(stats.cache_hits.values()),
            "cache_misses": sum(stats.cache_misses.values()),
            "compile_seconds": round(jit.compile_seconds(spec.path), 3)}
    if spec.runs == "loops":
        info["path_kind"] = "loops"  # fused loops (gradc/lower.py), not the emitted source
    return info


def _signature_text(key):
    """A specialisation's key as a signature: ``(f8, f8[20])``, then ``float32`` / ``out=``.

    Keys are the argument shapes, or ``(shapes, dtype)``, ``(shapes, "out")`` and
    ``(shapes, dtype, "out")`` (see ``_spec`` and ``_call_out``)."""
    notes = []
    while key and isinstance(key[-1], str):
        notes.insert(0, "out=" if key[-1] == "out" else key[-1])
        key = key[:-1]
    if notes:
        key = key[0]
    code = "f4" if "float32" in notes else "f8"
    shapes = ", ".join(code if s is None else f"{code}[{','.join(map(str, s))}]" for s in key)
    return f"({shapes})" + "".join(f" {n}" for n in notes if n not in ("float64", "float32"))


def _writes_each_buffer(graph, count):
    """Whether the fused loops with out parameters take one buffer per gradient array, in
    order: each array output a distinct computed node (not an argument or a constant)."""
    seen = []
    for o in graph.outputs:
        o = resolve(o)
        if o.shape and o.id not in seen and o.op not in ("input", "const"):
            seen.append(o.id)
    array_outputs = [o for o in graph.outputs if o.shape]
    return len(seen) == count == len(array_outputs)


class CapturedArrayChanged(Exception):
    """A captured array's name now holds an array of another shape (or no float array): the
    compiled code no longer fits, and the call traces again (never seen by users)."""


def _with_hidden_shapes(shapes, graph):
    """A call's shapes with the captured arrays' shapes inserted where their parameters are."""
    shapes = list(shapes)
    for c in graph.captured_arrays:
        shapes.insert(c.position, c.array.shape)
    return tuple(shapes)


def _with_captured(spec, captured):
    """``spec`` whose callables take the call's own arguments and insert the captured arrays'
    current values (by reference; converted only if not C-contiguous float64) at their
    parameters, which follow the function's own (and precede tangents and out buffers).
    A float32 program gets them as float32 (a copy per call), as it takes its arguments."""
    at = captured[0].position
    shapes = [c.array.shape for c in captured]
    dtype = np.dtype(spec.graph.dtype)

    def current():
        arrays = []
        for c, shape in zip(captured, shapes):
            a = c.current()
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind != "f":
                raise CapturedArrayChanged(c.name)
            if a.dtype != dtype or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=dtype)
            arrays.append(a)
        return arrays

    def wrap(f):
        if f is None:
            return None

        def with_captured(*args):
            return f(*args[:at], *current(), *args[at:])

        with_captured._gradc_inner = f  # (numba dispatchers have a __wrapped__ of their own)
        return with_captured

    return _Spec(spec.graph, spec.source, spec.path, wrap(spec.call), spec.func_name,
                 wrap(spec.entry), wrap(spec.plain), spec.runs)


def _shape_or_none(a):
    return a.shape if type(a) is _ndarray else None


def _shapes(values):
    """The specialisation key of a call: each argument's shape, None for a scalar."""
    return tuple(map(_shape_or_none, values))


def _as_float(value):
    if isinstance(value, tuple):
        return tuple(_as_float(v) for v in value)
    return value if isinstance(value, np.ndarray) else float(value)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _copy_into(result, out):
    """Copy array leaves of ``result`` into the matching arrays of ``out``; return ``out``'s view."""
    if isinstance(result, tuple):
        return tuple(_copy_into(r, o) for r, o in zip(result, out))
    if isinstance(result, np.ndarray):
        np.copyto(out, result)
        return out
    return result


def _shape_and_dtype(a):
    """A quick-path key entry: (shape, dtype) of a float array, None for a Python float;
    anything else gets a key no specialisation has. The dtype itself, not its character:
    a byte-swapped ``>f8`` array is not float64 to compiled code (and hashes faster)."""
    t = type(a)
    if t is _ndarray:
        return (a.shape, a.dtype)
    return None if t is float else t


def _dtype(values):
    """``"float32"`` when every array argument is float32 (and there is one), else ``"float64"``."""
    arrays = [v for v in values if isinstance(v, np.ndarray)]
    if arrays and all(a.dtype == np.float32 for a in arrays):
        return "float32"
    return "float64"


def _promote(values, dtype):
    """The values with float32 arrays made float64 where ``dtype`` is float64 (a mixed call),
    as NumPy promotes float32 with float64; code compiled for float64 takes no float32."""
    if dtype == "float32":
        return values
    return tuple(v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32
                 else v for v in values)


def _argument_array(value, dtype):
    """``value`` as compiled code takes it: a base ndarray of native-order ``dtype``,
    C-contiguous, aligned and writable (a copy where it is not). numba's signatures are for
    writable arrays and gradc never writes its inputs, so copying read-only ones is safe."""
    flags = value.flags
    if (type(value) is _ndarray and value.dtype == dtype and flags.c_contiguous
            and flags.aligned and flags.writeable):
        return value
    return np.array(value, dtype=dtype, order="C")


def _unfold(args):
    """The positional arguments of a call from numba's folded form: omitted parameters
    (numba's OmittedArg, for the entry point's defaults) dropped and the trailing
    ``*extra`` tuple spread back."""
    *given, extra = args
    return tuple(a for a in given if type(a).__name__ != "OmittedArg") + tuple(extra)


def _exact_float_overload(dispatcher, nargs):
    """Whether ``dispatcher`` has (now) a signature that a call of ``nargs`` Python floats
    matches exactly: ``(float64, ..., Tuple(()))``, the type of an empty ``*extra``.

    The entry point may be compiled with ``StarArgTuple(())`` there, which numba converts
    to, but only while it may not compile. The same compiled code is then registered under
    the exact types too (what numba runs for such a call either way): nothing is compiled.
    """
    from numba import types
    from numba.core.typing import signature

    exact = (types.float64,) * nargs + (types.Tuple(()),)
    if exact in dispatcher.overloads:
        return True
    for args, cres in list(dispatcher.overloads.items()):
        if len(args) == len(exact) and all(a == types.float64 for a in args[:-1]) and (
                isinstance(args[-1], types.BaseTuple) and not len(args[-1])):
            try:
                dispatcher.add_overload(cres._replace(
                    signature=signature(cres.signature.return_type, *exact)))
            except (AttributeError, TypeError):  # another numba: keep gradc's Python __call__
                return False
            return True
    return False


def _python_caller(func, scalar=np.float64, quiet=True):
    """Run the emitted source in plain Python with NumPy float semantics (inf/nan, no exceptions).

    Scalars become ``scalar`` (np.float64: 1/0 is inf, not ZeroDivisionError).
    """

    def call(*values):
        values = [v if type(v) is _ndarray else scalar(v) for v in values]
        if not quiet:
            return _as_float(func(*values))
        with np.errstate(all="ignore"):
            return _as_float(func(*values))

    return call


# --- results that are trees, argument trees, static arguments, nested transformations -------
#: The kinds whose traced function goes through :class:`_Results` (and may take trees).
_RESULT_KINDS = ("compile", "grad", "value_and_grad")
#: _Results kept nothing aside: the function returned one float, which trace() took as it is.
_SCALAR = object()


@contextlib.contextmanager
def _apart_from_the_callers_trace():
    """While a nested gradc function builds its own graph (traced, differentiated) inside the
    caller's trace: the caller's capture of outside arrays (trace.py's ``_CAPTURING``) is
    set aside, so the arrays its derivative rules make (``np.ones`` in a vjp) are constants
    of its graph, not hidden parameters of the caller's."""
    from . import trace as tracing

    saved = getattr(tracing._CAPTURING, "current", None)
    tracing._CAPTURING.current = None
    try:
        yield
    finally:
        tracing._CAPTURING.current = saved


def _defined_at(fn):
    """``'file.py:12'`` where ``fn`` (or the function a gradc function transforms) is defined."""
    from .trace import _definition

    code = _code_of(fn)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else _definition(fn)


def _code_of(fn):
    """The code object trace() reads for names (a gradc function: the one it transforms)."""
    return getattr(fn, "__code__", None) or getattr(getattr(fn, "__wrapped__", None), "__code__", None)


class _Results:
    """What ``trace()`` runs for compile, grad and value_and_grad: the user's function, with
    its result sorted out first. ``compile`` may return a tree of floats and arrays (kept
    aside for :func:`_result_outputs`); ``has_aux`` splits ``(value, aux)`` and keeps the
    aux; a gradient of a function returning several values is refused with what to use.

    It carries the function's ``__code__``: trace() names nodes after the locals of the frame
    running that code, and its errors name that definition, as for the function itself.
    """

    def __init__(self, fn, kind, has_aux):
        self._fn, self._kind, self._has_aux = fn, kind, has_aux
        self.__wrapped__ = fn  # where trace() finds the arrays fn reads (its closure, globals)
        if _code_of(fn) is not None:
            self.__code__ = _code_of(fn)
        self.__name__ = getattr(fn, "__name__", None) or type(fn).__name__
        self._kept = _SCALAR

    def take(self):
        """What the last call kept aside (:data:`_SCALAR` if nothing), forgotten after."""
        kept, self._kept = self._kept, _SCALAR
        return kept

    def __call__(self, *args):
        from .trace import _kind

        result = self._fn(*args)
        where = f"{_defined_at(self._fn)}: {self.__name__}"
        if self._has_aux:
            if not (isinstance(result, (tuple, list)) and len(result) == 2):
                raise errors.TracingError(
                    f"{where} is differentiated with has_aux=True, so it must return a pair "
                    f"(value, aux); it returned {_kind(result)}.")
            self._kept = result[1]
            return result[0]
        if self._kind == "compile":
            if _is_scalar_result(result):
                return result  # trace() takes it (and names it) as it always has
            self._kept = result
            return 0.0  # a placeholder output: _transform sets the real ones
        if isinstance(result, (tuple, list, dict)):
            raise errors.TracingError(
                f"{where} returned {_kind(result)}; gradc.{self._kind} differentiates a "
                "function that returns one float: return a float (a scalar loss). If the other "
                "values are auxiliary (metrics, a new state), return (value, aux) and pass "
                "has_aux=True: gradc.grad then returns (gradient, aux). For the derivatives of "
                "every element, use gradc.jacobian.")
        return result


def _is_scalar_result(result):
    """One float as ``trace()`` takes it (a scalar Tracer, a number, a 0-d array)."""
    if isinstance(result, Tracer):
        return not result.shape
    if isinstance(result, np.ndarray):
        return result.shape == ()
    return not isinstance(result, (tuple, list, dict, type(None)))


def _result_outputs(graph, kept, name, fn, prefix="out"):
    """``(outputs, out_tree, regroup)`` for a result tree ``kept`` traced in ``graph``.

    Tuples, floats and arrays are the IR's own ``out_tree`` (the emitted code returns
    them); lists, dicts and None are not, so their leaves are returned as a flat tuple and
    ``regroup`` (else None) rebuilds the tree from it after each call.
    """
    leaves, treedef = trees.flatten(kept)
    outputs, leaf_trees = [], []
    for k, (path, leaf) in enumerate(zip(trees.paths(treedef), leaves)):
        leaf_trees.append(_output_leaf(graph, leaf, outputs, name, fn, path, f"{prefix}{k}"))
    if _native(treedef):
        return outputs, _native_tree(treedef, iter(leaf_trees)), None
    return outputs, tuple(leaf_trees), lambda flat: trees.unflatten(treedef, flat)


def _native(treedef):
    return treedef == trees.LEAF or treedef.kind == "tuple" and all(map(_native, treedef.children))


def _native_tree(treedef, leaf_trees):
    if treedef == trees.LEAF:
        return next(leaf_trees)
    return tuple(_native_tree(c, leaf_trees) for c in treedef.children)


def _output_leaf(graph, leaf, outputs, name, fn, path, array_name):
    """The out_tree leaf of one result leaf (its nodes appended to ``outputs``)."""
    from .trace import _float_constant, _kind

    where = f"{_defined_at(fn)}: {name} returned"
    at = f" at {path}" if path else ""

    def scalar(value):
        if isinstance(value, Tracer):
            if value.graph is not graph:
                raise errors.TracingError(
                    f"{where} a value traced by another function{at}; pass that value as an "
                    "argument instead of capturing it.")
            if value.is_condition:
                raise errors.TracingError(
                    f"{where} a condition (a comparison){at}; results are floats and float "
                    "arrays. Use gradc.where(...) to turn it into a number.")
            return value.node
        if isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
                value, (bool, np.bool_)):
            return graph.const(_float_constant(value))
        raise errors.TracingError(
            f"{where} {_kind(value)}{at}; results are floats and float arrays, in tuples, "
            "lists and dicts.")

    if isinstance(leaf, np.ndarray) and (leaf.dtype == object or leaf.dtype.kind in "biuf"):
        if leaf.shape == ():
            leaf = leaf[()]
        elif leaf.dtype != object and graph.whole_params:
            outputs.append(graph.const(leaf))
            return len(outputs) - 1
        else:
            first = len(outputs)
            outputs.extend(scalar(element) for element in leaf.flat)
            return ArrayOut(array_name, leaf.shape, tuple(range(first, len(outputs))))
    outputs.append(scalar(leaf))  # a traced array (whole) is one output too
    return len(outputs) - 1


def _shift(tree, offset):
    """An out_tree whose output numbers are ``offset`` higher."""
    if isinstance(tree, tuple):
        return tuple(_shift(t, offset) for t in tree)
    if isinstance(tree, ArrayOut):
        return ArrayOut(tree.name, tree.shape, tuple(i + offset for i in tree.indices))
    return tree + offset


def _at_aux(regroup, get, put):
    """A regroup of a whole result that regroups only its aux part (``get``/``put`` find it)."""
    return lambda result: put(result, regroup(get(result)))


def _regrouped(spec, regroup):
    """``spec`` with its results rebuilt into their trees. The entry is dropped: the quick
    path and numba's dispatcher would return the flat tuple."""
    call, plain = spec.call, spec.plain
    return _Spec(spec.graph, spec.source, spec.path, lambda *v: regroup(call(*v)),
                 spec.func_name, None,
                 None if plain is None else (lambda *v: regroup(plain(*v))), spec.runs)


def _replay(source, target, argument):
    """Node id of ``source`` -> node of ``target``: every node of ``source`` rebuilt in
    ``target`` through its hash-consing builder (existing nodes are found, not copied),
    with each input node replaced by ``argument(node)``."""
    mapped = {}
    for node in source.nodes:
        if node.op == "input":
            out = argument(node)
        elif node.op == "const":
            out = target.const(node.attrs[0])
        else:
            out = target.add(node.op, tuple(mapped[a.id] for a in node.args), node.attrs)
            name = source.names.get(node.id)
            if name is not None:
                target.names.setdefault(out.id, name)
        mapped[node.id] = out
    return mapped


def _tree_of_tracers(graph, tree, nodes):
    """The result of a replayed function as traced values of ``graph``, nested as ``tree``
    (an array of outputs, one per element, as one array traced whole)."""
    if isinstance(tree, tuple):
        return tuple(_tree_of_tracers(graph, t, nodes) for t in tree)
    if isinstance(tree, ArrayOut):
        from .trace import pack

        elements = [Tracer(graph, nodes[i]) for i in tree.indices]
        if not elements:
            return Tracer(graph, graph.const(np.zeros(tree.shape)))
        return pack(elements, elements[0]).reshape(tree.shape)
    return Tracer(graph, nodes[tree])


def _tracer_in(values):
    """The first traced value among ``values``, or None."""
    return next((v for v in values if isinstance(v, Tracer)), None)


def _any_traced(values):
    return _tracer_in(values) is not None


def _traced_shape(value, name, i):
    """The parameter shape (None: a float) of one argument of a call on traced values."""
    if isinstance(value, Tracer):
        return value.shape or None
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.shape or None
    if isinstance(value, (numbers.Real, np.floating, np.integer)):
        return None
    raise errors.ArgumentError(
        f"{errors.where()}: argument {i} of {name}() is {_describe(value)}; called on traced "
        "values, a gradc function takes floats and float arrays.")


def _is_tree(value):
    """Whether an argument is a tree: a tuple, a dict, or a list other than a plain list of
    numbers (which NumPy code means as a vector: it keeps gradc's "use numpy.asarray")."""
    if isinstance(value, tuple) or type(value) is dict:  # noqa: E721
        return True
    return type(value) is list and not all(
        isinstance(v, (numbers.Real, np.generic)) for v in value)


def _normalize_static(static_argnums):
    if static_argnums is None:
        return ()
    if isinstance(static_argnums, (int, np.integer)) and not isinstance(static_argnums, bool):
        return (int(static_argnums),)
    if isinstance(static_argnums, (tuple, list)) and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in static_argnums):
        return tuple(int(i) for i in static_argnums)
    raise errors.ArgumentError(
        f"static_argnums must be an int or a tuple of ints, not {static_argnums!r}.")


class _Static:
    """A static argument's value as part of a cache key: equal when of one type and equal."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return (isinstance(other, _Static) and type(self.value) is type(other.value)
                and bool(self.value == other.value))

    def __hash__(self):
        return hash((type(self.value).__name__, self.value))


def _static_key(name, i, value):
    try:
        hash(value)
    except TypeError:
        raise errors.ArgumentError(
            f"{errors.where()}: static argument {i} of {name}() is {_describe(value)}, which "
            "cannot be hashed; gradc compiles once per distinct static value and looks it up "
            "by hash. Pass a hashable value (a tuple instead of a list, a frozenset, a "
            "string), or make it a traced argument.") from None
    return _Static(value)


class _FlatArgs:
    """``fn`` as a function of the leaves of its argument trees: it rebuilds the trees, puts
    the static values in their places and calls ``fn``. Its signature names the leaves
    (``params_W``), so the emitted source does too; it carries ``fn``'s ``__code__`` for
    trace() (see :class:`_Results`)."""

    def __init__(self, fn, structure, leaf_names):
        self._fn, self._structure = fn, structure
        if _code_of(fn) is not None:
            self.__code__ = _code_of(fn)
        self.__name__ = getattr(fn, "__name__", None) or type(fn).__name__
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in leaf_names])

    def __call__(self, *leaves):
        args, k = [], 0
        for s in self._structure:
            if isinstance(s, _Static):
                args.append(s.value)
                continue
            n = trees.leaf_count(s)
            args.append(trees.unflatten(s, leaves[k:k + n]))
            k += n
        return self._fn(*args)


def _leaf_names(arg_names, structure):
    """One identifier per leaf: the argument's name, then its path (``params_W``, ``p_0_1``)."""
    names, taken = [], set()
    for arg, s in zip(arg_names, structure):
        if isinstance(s, _Static):
            continue
        for k, path in enumerate(trees.paths(s)):
            parts = [p for p in re.split(r"\W+", path) if p]
            name = identifier_or_none("_".join([arg, *parts])) if parts else arg
            if name is None or name in taken:
                name = f"{arg}_{k}"
            while name in taken:
                name += "_"
            taken.add(name)
            names.append(name)
    return names


class _TreeCall:
    """One argument structure (and static values) of a function called with trees: the
    flat function of the leaves, compiled as a :class:`GradcFunction` of its own, and how
    its flat gradients go back into the argument trees."""

    def __init__(self, owner, values, structure):
        self._kind, self._has_aux = owner._kind, owner._has_aux
        self._structure = structure
        nargs = len(values)
        ranges, k = [], 0
        for s in structure:
            n = 0 if isinstance(s, _Static) else trees.leaf_count(s)
            ranges.append(range(k, k + n))
            k += n
        static = {i for i, s in enumerate(structure) if isinstance(s, _Static)}
        if owner._kind == "compile":
            self._diff, self._bare = (), False
        elif owner._argnums is None:  # every traced argument
            self._diff = tuple(i for i in range(nargs) if i not in static)
            self._bare = len(self._diff) == 1
        else:
            self._diff, self._bare = owner._argnums_for(nargs)
            for i in self._diff:
                if i in static:
                    raise errors.ArgumentError(
                        f"{errors.where()}: argument {i} of {owner._name}() is both "
                        "differentiated (argnums) and static (static_argnums).")
        self._ranges = ranges
        leaf_argnums = tuple(j for i in self._diff for j in ranges[i])
        flat = _FlatArgs(owner._fn, structure, _leaf_names(owner._arg_names(nargs), structure))
        self.inner = GradcFunction(flat, owner._kind, None if owner._kind == "compile"
                                   else leaf_argnums, owner._backend, owner._arrays,
                                   has_aux=owner._has_aux)

    def __call__(self, leaves, out=None):
        result = self.inner(*leaves) if out is None else self.inner(*leaves, out=self._out(out))
        if self._kind == "compile":
            return result
        if self._kind == "grad":
            flat, aux = result if self._has_aux else (result, None)
        else:
            head, flat = result
        grads = tuple(trees.unflatten(self._structure[i], flat[r.start:r.stop])
                      for i in self._diff for r in (self._ranges[i],))
        grads = grads[0] if self._bare else grads
        if self._kind == "grad":
            return (grads, aux) if self._has_aux else grads
        return head, grads

    def _out(self, out):
        """``out=`` for the flat function: one buffer (or None) per differentiated leaf."""
        per_arg = (out,) if self._bare else out
        if not isinstance(per_arg, (tuple, list)) or len(per_arg) != len(self._diff):
            raise errors.ArgumentError(
                f"{errors.where()}: out= must mirror the gradient: a tuple of {len(self._diff)} "
                "trees, one per differentiated argument.")
        buffers = []
        for i, tree in zip(self._diff, per_arg):
            try:
                buffers.extend(trees.leaves_like(self._structure[i], tree))
            except ValueError:
                raise errors.ArgumentError(
                    f"{errors.where()}: out= must mirror the gradient of argument {i}, "
                    f"{trees.describe(self._structure[i])} (an array at each array, None at "
                    f"each float).") from None
        return tuple(buffers)


def _transformation(kind):
    def transform(fn=None, *, argnums=None, backend="numba", arrays="auto", **options):
        # options: has_aux (grad, value_and_grad), static_argnums
        if fn is None:  # used with arguments: @gradc.grad(argnums=1)
            return lambda f: GradcFunction(f, kind, argnums, backend, arrays, **options)
        return GradcFunction(fn, kind, argnums, backend, arrays, **options)

    transform.__name__ = kind
    return transform


value_and_grad = _transformation("value_and_grad")
value_and_grad.__doc__ = """``f -> f'`` returning ``(f(x), gradient)``.

``argnums=None`` differentiates every positional argument (a tuple of gradients
in argument order; bare for a one-argument function); an int gives one bare
gradient, a tuple a tuple. ``backend`` is ``"numba"`` (default) or ``"python"``.

Arguments may be trees (tuples, dicts, lists of floats and arrays, nested): the
gradient of a tree has its structure (dict keys sorted, as in JAX).
``static_argnums`` marks arguments that are not traced (settings: ints, strings,
tuples); each distinct static value compiles its own code. With ``has_aux=True``,
``f`` returns ``(value, aux)`` and the result is ``((value, aux), gradient)``.
"""
grad = _transformation("grad")
grad.__doc__ = """Like :func:`value_and_grad`, returning only the gradient(s)
(``(gradient, aux)`` with ``has_aux=True``)."""
compile = _transformation("compile")  # noqa: A001  (gradc.compile is the public name)
compile.__doc__ = """``f -> f`` compiled: the value only, through the same pipeline.

``f`` may return a float, an array, or a tree (tuple, list, dict) of them, and take
argument trees and ``static_argnums`` as :func:`value_and_grad` does."""
