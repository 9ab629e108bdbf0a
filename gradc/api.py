"""The public transformations: compile, grad, value_and_grad — wiring trace -> ad -> optimize -> emit -> backend.

Each returns a :class:`GradcFunction`. It traces and compiles once per
signature (each argument's shape, None for a float, and the arrays' dtype),
then calls the compiled code. With the numba backend, once a function of plain
positional float arguments is compiled, calls go straight to numba's dispatcher
(the object's class is switched to one whose ``__call__`` *is* the dispatcher),
so a call costs a hand-written ``@njit`` call plus ~60 ns for the entry point's
``*extra`` tail. numba runs such a call itself only when its arguments are
exactly the compiled floats; for any other call (ints, arrays, wrong arguments)
it asks its ``_compile_for_args`` hook for code, and gradc's hook runs the call
through the full path instead (bind, convert, compile a new specialisation),
so what a call returns never depends on the calls before it. Calls with arrays
look their specialisation up by shape first (a small Python frame), since
unrolled code is specialised to it.
"""
from __future__ import annotations

import functools
import inspect
import numbers

import numpy as np

from . import ad, errors, jit
from .emit import emit_module
from .ir import ArrayOut
from .lower import LoweringError, lower_module
from .optimize import optimize
from .trace import identifier_or_none, trace

BACKENDS = ("numba", "python")
ARRAY_MODES = ("auto", "unroll", "numpy", "numba", "loops")
#: arrays="auto" unrolls array arguments into scalar code for numba while the
#: arguments hold at most this many elements in all ...
UNROLL_MAX_ELEMENTS = 256
#: ... and the unrolled program stays under this many nodes. Measured (benchmarks, workload
#: A): cold compile is ~1.5 s plus ~5 ms per node, so 500 nodes keeps it near 4 s, while
#: unrolled code ran 11-24x faster per call than NumPy-level code at every size tried.
UNROLL_MAX_NODES = 500
#: NumPy-level code with a gradc.scan loop is compiled by numba (arrays="auto") while
#: the array arguments hold at most this many elements.
NUMBA_LOOP_MAX_ELEMENTS = 4096
_ndarray = np.ndarray
#: Loop sources compiled in this process -> (numba dispatcher, cache file): one per source.
_LOOP_FUNCTIONS: dict = {}


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


class _Spec:
    """One compiled specialisation: its graph, source, file and callable."""

    __slots__ = ("graph", "source", "path", "call", "func_name", "entry", "plain", "runs")

    def __init__(self, graph, source, path, call, func_name, entry=None, plain=None, runs=None):
        self.graph, self.source, self.path, self.call = graph, source, path, call
        self.func_name, self.entry = func_name, entry
        self.plain = plain  # arrays traced whole: a callable that takes the arrays as they are
        self.runs = runs    # what cache_info() reports, where it is not derived


class GradcFunction:
    """A compiled transformation of a Python function. Call it like the original.

    Attributes: ``source`` (the emitted module), ``graph`` (the optimized IR),
    ``path`` (the cache file holding the source).
    """

    def __init__(self, fn, kind, argnums=None, backend="numba", arrays="auto"):
        if not callable(fn):
            raise errors.ArgumentError(f"gradc.{kind} needs a callable, not {type(fn).__name__}.")
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
        try:
            self._signature = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None
        functools.update_wrapper(self, fn, updated=())

    # --- arguments --------------------------------------------------------------------
    def _bind(self, args, kwargs):
        """The positional float arguments of a call, or a gradc ArgumentError."""
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
        return tuple(self._check_number(i, v) for i, v in enumerate(values))

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
        hint = (" Pass a NumPy array (numpy.asarray(...)) for a vector argument."
                if isinstance(value, (list, tuple)) else "")
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
        if self._kind == "compile":
            return graph
        argnums, bare = self._argnums_for(nargs)
        return ad.value_and_grad(graph, argnums, bare=bare, with_value=self._kind != "grad")

    def _trace(self, shapes, dtype="float64", multiple=False, arrays=None):
        """Trace ``fn`` for one signature: array arguments unrolled into scalar code, or
        traced whole (NumPy-level and loop code), as ``arrays`` (default: the function's
        mode) and the sizes decide."""
        arrays = arrays or self._arrays
        names = self._arg_names(len(shapes))
        elements = array_elements(shapes)
        whole = any(s is not None for s in shapes) and (
            arrays in ("numpy", "numba", "loops") or dtype == "float32"
            or arrays == "auto" and elements > UNROLL_MAX_ELEMENTS)
        retrace = lambda: trace(self._fn, [(n, s, True) for n, s in zip(names, shapes)],  # noqa: E731
                                self._name, _origin(self._fn), multiple=multiple)
        if whole:
            return retrace()
        try:
            traced = trace(self._fn, [(n, s, False) for n, s in zip(names, shapes)],
                           self._name, _origin(self._fn), multiple=multiple)
        except errors.ControlFlowError:
            # NumPy's object-array loops compare elements for max, min and maximum;
            # the NumPy-level form has ops for them.
            if arrays != "auto" or not elements:
                raise
            return retrace()
        if arrays == "auto" and elements and len(traced.nodes) > UNROLL_MAX_NODES:
            return retrace()  # too big to unroll: NumPy-level code
        return traced

    def lower(self, shapes, dtype="float64", out_params=False):
        """Trace, transform, optimize and emit for one signature, without compiling.

        ``shapes`` has one entry per argument: None for a float, a shape tuple for
        an array. Returns ``(graph, source, func_name, entry_name)``; ahead-of-time
        builds and the backends start from here. ``dtype="float32"`` (all array
        arguments float32) gives NumPy-level code that stays in float32.
        """
        nargs = len(shapes)
        traced = self._trace(shapes, dtype)
        traced.dtype = dtype
        graph = optimize(self._transform(traced, nargs))
        kind = {"compile": "value"}.get(self._kind, self._kind)
        source, func_name, entry_name = emit_module(graph, self._name, kind, traced.origin,
                                                    out_params=out_params)
        return graph, source, func_name, entry_name

    def _spec(self, shapes, dtype="float64"):
        key = shapes if dtype == "float64" else (shapes, dtype)
        spec = self._specs.get(key)
        if spec is not None:
            return spec
        graph, source, func_name, entry_name = self.lower(shapes, dtype)
        spec = None
        if self._backend == "numba" and graph.whole_params and self._arrays in ("auto", "loops"):
            spec = self._loops_spec(graph)
        if spec is None and self._backend == "numba" and numba_runs(graph, shapes, self._arrays):
            try:
                dispatcher, path = jit.load_numba(source, func_name, entry_name, shapes,
                                                  dtype=dtype, layout=numba_layout(graph))
            except errors.GradcError:
                if not graph.whole_params or self._arrays == "numba":
                    raise
                # arrays="auto": numba lacks something this NumPy-level code uses; NumPy runs it
            else:
                dispatcher._explain_matching_error = self._numba_mismatch
                spec = _Spec(graph, source, path, dispatcher, func_name, dispatcher)
        if spec is None:
            func, path = jit.load_python(source, func_name)
            scalar = np.float32 if dtype == "float32" else np.float64
            # NumPy-level code behaves exactly as NumPy (its warnings included); scalar code
            # runs under errstate(ignore) to match numba's silent error_model="numpy".
            call = _python_caller(func, scalar, quiet=not graph.whole_params)
            plain = call if graph.whole_params else None
            spec = _Spec(graph, source, path, call, func_name, plain=plain)
        self._specs[key] = spec
        self._leave_numba()  # the dispatcher serves one float signature; now there are more
        if spec.plain is not None:
            self._plain[tuple(None if shape is None else (shape, np.dtype(dtype))
                              for shape in shapes)] = spec.plain
        return spec

    def _loops_spec(self, graph):
        """Arrays traced whole, lowered to fused loops (gradc/lower.py) and compiled by numba.

        None where the lowering has no rule for an op the graph uses and ``arrays="auto"``
        (NumPy-level code runs it). Shapes that lower to the same source share one compiled
        function, so a new length of the same rank costs a trace, not a compile.
        """
        kind = {"compile": "value"}.get(self._kind, self._kind)
        try:
            source, func_name = lower_module(graph, self._name, kind, graph.origin)
        except LoweringError as exc:
            if self._arrays == "loops":
                raise errors.UnsupportedFunctionError(
                    f"{self._name}(): arrays='loops' cannot compile this function ({exc}); "
                    "use arrays='auto', which runs it as NumPy-level code.") from None
            return None
        found = _LOOP_FUNCTIONS.get(source)
        if found is None:
            found = _LOOP_FUNCTIONS[source] = jit.load_numba(
                source, func_name, None, None, build=lambda module: jit.njit_lazy(module, func_name))
        dispatcher, path = found
        return _Spec(graph, source, path, dispatcher, func_name, plain=dispatcher, runs="loops")

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
        if not _exact_float_overload(dispatcher, nargs):
            return
        dispatcher._compile_for_args = self._numba_any_call
        dispatcher._can_compile = True
        self._own_class = type(self)
        self.__class__ = type(type(self).__name__, (type(self),),
                              {"__call__": staticmethod(dispatcher)})

    def _leave_numba(self):
        """Back to the Python ``__call__`` (and its quick path by shape), once there is more
        than the one float specialisation the dispatcher serves."""
        own = self.__dict__.pop("_own_class", None)
        if own is not None:
            self.__class__ = own

    # --- calling ----------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if "out" in kwargs and self._takes_out:
            return self._call_out(args, kwargs)
        if not kwargs:  # the quick path: an already compiled shape, float64 arguments
            if len(args) == 1:  # the common case of one array argument, kept cheap
                a = args[0]
                spec = self._specs.get((a.shape if type(a) is _ndarray else None,))
            else:
                spec = self._specs.get(_shapes(args))
            if spec is not None and spec.entry is not None:
                try:
                    return spec.entry(*args)
                except _NeedsConversion:
                    pass  # ints, float32, lists of the right shape: convert below
            elif self._plain:  # NumPy-level code: arrays of the compiled dtype, as they are
                plain = self._plain.get(tuple(map(_shape_and_dtype, args)))
                if plain is not None:
                    return plain(*args)
        return self._call_full(args, kwargs)

    def _call_full(self, args, kwargs):
        """Any call: bind and convert the arguments, compile their specialisation if it is
        new, run it. The same for every call, whatever calls came before."""
        values = self._bind(args, kwargs)
        dtype = _dtype(values)
        values = _promote(values, dtype)
        spec = self._spec(_shapes(values), dtype)
        if (spec.entry is not None and "_own_class" not in self.__dict__
                and self._simple_signature() and len(self._specs) == 1
                and all(isinstance(v, float) for v in values)):
            self._go_straight_to_numba(spec, len(values))
        try:
            return spec.call(*values)
        except _NeedsConversion as exc:  # _bind's values are what numba takes: a gradc bug
            raise errors.GradcError(
                f"{errors.where()}: {exc}, though gradc converted them. This is a gradc bug; "
                "please report it. backend='python' runs the same source without numba.") from None

    @property
    def _takes_out(self):
        """``out=`` is gradc's (the gradient buffers) unless the function has a parameter ``out``."""
        return self._kind in ("grad", "value_and_grad") and not (
            self._signature is not None and "out" in self._signature.parameters)

    def _call_out(self, args, kwargs):
        """A call writing array gradients into the caller's buffers (``out=``).

        ``out`` mirrors the gradient structure: an array for each array argument,
        None for each float. Unrolled numba code writes straight into the buffers
        (nothing is allocated); NumPy-level code computes, then copies.
        """
        out = kwargs.pop("out")
        values = self._bind(args, kwargs)
        dtype = _dtype(values)
        values = _promote(values, dtype)
        shapes = _shapes(values)
        spec = self._spec(shapes, dtype)
        tree = spec.graph.out_tree[1] if self._kind == "value_and_grad" else spec.graph.out_tree
        buffers = self._check_out(out, tree, spec.graph, dtype)
        if spec.entry is not None and not spec.graph.whole_params:
            key = (shapes, "out")
            out_spec = self._specs.get(key)
            if out_spec is None:
                graph, source, func_name, entry = self.lower(shapes, dtype, out_params=True)
                extra = tuple(b.shape for b in buffers)
                dispatcher, path = jit.load_numba(source, func_name, entry, shapes + extra)
                out_spec = self._specs[key] = _Spec(graph, source, path, dispatcher, func_name,
                                                    dispatcher)
            return out_spec.entry(*values, *buffers)
        result = spec.call(*values)
        grads = result[1] if self._kind == "value_and_grad" else result
        copied = _copy_into(grads, out)
        return (result[0], copied) if self._kind == "value_and_grad" else copied

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
            shape = t.shape if isinstance(t, ArrayOut) else graph.outputs[t].shape
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
        """
        spec = self._default_spec()
        dispatcher = spec.call if spec.runs == "loops" else spec.entry
        if dispatcher is None:
            runs = "numpy" if spec.graph.whole_params else "python"
            return {"path": spec.path, "backend": self._backend, "runs": runs}
        stats = dispatcher.stats
        info = {"path": spec.path, "backend": self._backend, "runs": "numba",
                "cache_hits": sum(stats.cache_hits.values()),
                "cache_misses": sum(stats.cache_misses.values())}
        if spec.runs == "loops":
            info["path_kind"] = "loops"  # fused loops (gradc/lower.py), not the emitted source
        return info

    def __repr__(self):
        return f"<gradc.{self._kind} of {self._name} ({self._backend})>"


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


def _transformation(kind):
    def transform(fn=None, *, argnums=None, backend="numba", arrays="auto"):
        if fn is None:  # used with arguments: @gradc.grad(argnums=1)
            return lambda f: GradcFunction(f, kind, argnums, backend, arrays)
        return GradcFunction(fn, kind, argnums, backend, arrays)

    transform.__name__ = kind
    return transform


value_and_grad = _transformation("value_and_grad")
value_and_grad.__doc__ = """``f -> f'`` returning ``(f(x), gradient)``.

``argnums=None`` differentiates every positional argument (a tuple of gradients
in argument order; bare for a one-argument function); an int gives one bare
gradient, a tuple a tuple. ``backend`` is ``"numba"`` (default) or ``"python"``.
"""
grad = _transformation("grad")
grad.__doc__ = "Like :func:`value_and_grad`, returning only the gradient(s)."
compile = _transformation("compile")  # noqa: A001  (gradc.compile is the public name)
compile.__doc__ = "``f -> f`` compiled: the value only, through the same pipeline."
