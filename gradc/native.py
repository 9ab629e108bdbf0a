"""The native backend for large straight-line programs: Graph -> LLVM IR inside one numba call.

numba's cost for gradc's emitted source is its per-statement front end (bytecode
analysis, type inference and lowering of every line: ~1 ms per node), not LLVM. For
a scalar program (every node a float or bool operation) this module writes the
body's LLVM IR itself, straight from the graph, inside a numba ``@intrinsic``; numba
types and lowers only a one-line wrapper around it::

    def f__value_and_grad__native(p0=None, p1=None, *extra):
        return _gradc_native_body(p0, p1)

numba stays in charge of everything else: its dispatcher (the same entry signature
and hooks as the ordinary path, so :mod:`gradc.api` treats the result as it treats
:func:`gradc.jit.load_numba`'s), its LLVM pipeline (no fast-math; the same target
machine), and its on-disk cache (the wrapper is a real cache file whose text names
the emitted source's hash, so a second process loads the machine code without
calling this module's lowering at all).

Exactness by construction: every op is lowered by **numba's own implementation** of
the expression the op's template prints (``np.exp(x)``, ``x ** 2``, ``np.sign(x) +
0.0``...), looked up through numba's typing and target contexts exactly as numba's
lowering of the emitted source looks it up, so both compiled paths run the same
IR. Only the conditional templates (``where``, ``maximum``/``minimum``'s ``x if x >
y or isnan(x) else y``, ``and``/``or``/``not``) are written here as ``select``s,
which give the same values as numba's branches. An op outside the scalar table
(arrays traced whole, loops) makes :func:`compile_graph` return None: the caller
uses the ordinary path, never a guess.

>>> import gradc, gradc.native as native
>>> J = gradc.value_and_grad(lambda a, b, c: 3 * (a + b * c), backend="python")
>>> graph, source, func_name, _ = J.lower((None, None, None))
>>> native.supports(graph)
True
>>> dispatcher, path = native.compile_graph(graph, func_name, source, (None, None, None),
...                                          min_nodes=0)
>>> dispatcher(5.0, 3.0, 2.0)
(33.0, (3.0, 6.0, 9.0))
"""
from __future__ import annotations

import hashlib
import operator

import numpy as np

from . import jit
from .emit import literal
from .ir import ArrayOut, leaves

#: Programs with at least this many nodes take the native path (see compile_graph).
#: Measured (2 shared cores, cold cache): the native path compiled faster at every size
#: tried (19 nodes 1.3 s against 2.1 s, 607 nodes 0.5 s against 1.7 s, 6,007 nodes 4.0 s
#: against 18.7 s). Below ~200 nodes the ordinary path costs under a second, and it keeps
#: small functions on the path whose cache file is the readable emitted source.
MIN_NODES = 200

#: Part of every wrapper's text (and so of its cache key): bump it whenever the IR this
#: module writes for a graph changes, so that no cached machine code outlives it.
LOWERING_VERSION = 1

_INTRINSIC_NAME = "_gradc_native_body"

# --- which ops this module lowers, and how -------------------------------------------
# Each scalar op maps to a recipe over numba's own implementations: ("call", fn, pattern)
# applies the Python callable ``fn`` (as numba types and lowers it) to the op's arguments,
# with float constants where the template has them. Written out per op from its template.
_UFUNC_1 = ("exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "arcsin", "arccos",
            "arctan", "sinh", "cosh", "tanh", "abs")
_UFUNC_2 = ("arctan2", "hypot")
_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
           "div": operator.truediv, "pow": operator.pow,
           "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
           "eq": operator.eq, "ne": operator.ne}
_SPECIAL = ("neg", "sign", "maximum", "minimum", "sigmoid", "softplus", "relu", "where",
            "and", "or", "not", "alias")
SUPPORTED_OPS = frozenset(_UFUNC_1 + _UFUNC_2 + tuple(_BINARY) + _SPECIAL)


def supports(graph):
    """Whether this module lowers ``graph``: scalar nodes of supported ops only, scalar or
    unrolled-array parameters, float results (a float, a tuple tree, unrolled arrays)."""
    if graph.whole_params or graph.captures:
        return False
    for node in graph.nodes:
        if node.shape != ():
            return False
        if node.op in ("input", "const"):
            if node.op == "const" and not isinstance(node.attrs[0], (float, bool)):
                return False
            continue
        if node.op not in SUPPORTED_OPS:
            return False
        if node.op in ("and", "or") and any(a.result != "bool" for a in node.args):
            return False  # Python's ``x and y`` of floats is a float: not written here
        if node.op == "where" and node.args[1].result != node.args[2].result:
            return False
    for leaf in leaves(graph.out_tree):
        if isinstance(leaf, ArrayOut):
            if any(graph.outputs[i].result != "float" for i in leaf.indices):
                return False
        elif graph.outputs[leaf].result != "float":
            return False
    return True


# --- the lowering -----------------------------------------------------------------------

class _Lowering:
    """Writes one graph's nodes as LLVM IR with numba's implementations of each operation.

    ``context`` is numba's target context of the function being compiled (its error model
    included), ``builder`` positioned in that function's body.
    """

    def __init__(self, context, builder):
        from numba.core import types

        self.context, self.builder, self.types = context, builder, types
        self.tyctx = context.typing_context
        self._impls = {}  # (callable, argument types) -> (signature, implementation)

    # numba's typing then lowering of ``fn(*args)``, as numba's lowering of a call does it:
    # resolve the signature, cast each argument to it, call the registered implementation.
    def apply(self, fn, typed):
        argtypes = tuple(t for t, _ in typed)
        key = (fn, argtypes)
        found = self._impls.get(key)
        if found is None:
            fnty = self.tyctx.resolve_value_type(fn)
            sig = self.tyctx.resolve_function_type(fnty, argtypes, {})
            if sig is None:
                raise _Unsupported(f"numba has no {fn} for {argtypes}")
            found = self._impls[key] = (sig, self.context.get_function(fnty, sig))
        sig, impl = found
        args = [self.context.cast(self.builder, v, t, st)
                for (t, v), st in zip(typed, sig.args)]
        return sig.return_type, impl(self.builder, args)

    # numba lowers a ufunc on scalars as a loop over a 0-d result around the ufunc's scalar
    # kernel (numba.np.ufunc_db), one loop per call: thousands of one-trip loops that LLVM's
    # loop passes then take seconds over (measured: LICM 7 s of 10 s at 6,000 nodes). The
    # kernel for the loop numba selects is called here directly: the same scalar code.
    def ufunc(self, fn, typed):
        from numba.core import typing
        from numba.np import ufunc_db

        types = self.types
        argtypes = tuple(t for t, _ in typed)
        key = (fn, argtypes)
        found = self._impls.get(key)
        if found is None:
            if any(t != types.float64 for t in argtypes):
                raise _Unsupported(f"{fn.__name__} of {argtypes}")
            loops = ufunc_db.get_ufunc_info(fn)
            loop = "d" * fn.nin + "->" + ("?" if fn.__name__ == "isnan" else "d")
            kernel = loops[loop]
            ret = types.boolean if loop.endswith("?") else types.float64
            sig = typing.signature(ret, *argtypes)
            found = self._impls[key] = (sig, kernel)
        sig, kernel = found
        return sig.return_type, kernel(self.context, self.builder, sig, [v for _, v in typed])

    def int_power(self, typed, exponent):
        """``x ** k`` for a constant int ``k``, as numba's int_power_impl computes it (the
        multiplications of its square-and-multiply loop, unrolled here: ``k`` is known)."""
        t, x = typed
        if t != self.types.float64 or exponent > 0x10000:  # numba's cutoff: math.pow
            return self.apply(operator.pow, [typed, self.int_literal(exponent)])
        b = self.builder
        r, a = self.context.get_constant(t, 1.0), x
        while exponent != 0:
            if exponent & 1:
                r = b.fmul(r, a)
            exponent >>= 1
            if exponent:  # numba squares once more after the last bit; unused, so dropped
                a = b.fmul(a, a)
        return t, r

    def const(self, value):
        types = self.types
        if isinstance(value, bool):
            return types.boolean, self.context.get_constant(types.boolean, value)
        return types.float64, self.context.get_constant(types.float64, value)

    def int_literal(self, value):
        types = self.types
        return types.literal(int(value)), self.context.get_constant(types.int64, int(value))

    def truth(self, typed):
        t, v = typed
        return self.context.is_true(self.builder, t, v)

    def select(self, cond, a, b):
        if a[0] != b[0]:
            raise _Unsupported("a selection between values of two types")
        return a[0], self.builder.select(cond, a[1], b[1])

    def node(self, node, typed):
        """The (numba type, LLVM value) of ``node`` given its arguments' ``typed`` values."""
        op = node.op
        f64 = self.types.float64
        if op in _BINARY:
            if op == "pow":
                exp = node.args[1]
                # The emitted source writes a non-negative integral constant exponent as an
                # int literal (gradc.emit.literal): numba then multiplies (static_power_impl).
                if exp.op == "const" and literal(exp.attrs[0], as_int=True).isdigit():
                    return self.int_power(typed[0], int(exp.attrs[0]))
            return self.apply(_BINARY[op], typed)
        if op in _UFUNC_1 or op in _UFUNC_2:
            return self.ufunc(getattr(np, op), typed)
        if op == "alias":
            return typed[0]
        if op == "neg":
            return self.apply(operator.neg, typed)
        if op == "sign":  # "np.sign(x) + 0.0"
            return self.apply(operator.add, [self.ufunc(np.sign, typed), self.const(0.0)])
        if op in ("maximum", "minimum"):  # "(x if x > y or np.isnan(x) else y)" (< for min)
            x, y = typed
            better = self.apply(operator.gt if op == "maximum" else operator.lt, typed)
            nan = self.ufunc(np.isnan, [x])
            cond = self.builder.or_(self.truth(better), self.truth(nan))
            return self.select(cond, x, y)
        if op == "sigmoid":  # "1.0 / (1.0 + np.exp(-x))"
            e = self.ufunc(np.exp, [self.apply(operator.neg, typed)])
            return self.apply(operator.truediv,
                              [self.const(1.0), self.apply(operator.add, [self.const(1.0), e])])
        if op == "softplus":  # "np.logaddexp(0.0, x)"
            return self.ufunc(np.logaddexp, [self.const(0.0), typed[0]])
        if op == "relu":  # "np.maximum(x, 0.0) + 0.0"
            m = self.ufunc(np.maximum, [typed[0], self.const(0.0)])
            return self.apply(operator.add, [m, self.const(0.0)])
        if op == "where":  # "(a if c else b)"
            return self.select(self.truth(typed[0]), typed[1], typed[2])
        if op in ("and", "or"):  # "(x and y)" on two bools is their logical and (or)
            if any(t != self.types.boolean for t, _ in typed):
                raise _Unsupported(f"{op} of non-bool values")
            combine = self.builder.and_ if op == "and" else self.builder.or_
            return self.types.boolean, combine(typed[0][1], typed[1][1])
        if op == "not":  # "(not x)"
            return self.types.boolean, self.builder.not_(self.truth(typed[0]))
        del f64
        raise _Unsupported(f"op {op}")


class _Unsupported(Exception):
    """Raised while lowering: this graph needs the ordinary path."""


def _lower_body(context, builder, graph, argtys, args):
    """The body's LLVM IR: the graph's nodes in order, results built into the return value."""
    from numba.core import cgutils

    low = _Lowering(context, builder)
    values = {}
    params = list(zip(argtys, args))
    arrays = {}
    for node in graph.nodes:
        if node.op == "input":
            _, _, p, index = node.attrs
            ty, val = params[p]
            if index is None:
                values[node.id] = (ty, val)
            else:
                if p not in arrays:
                    arrays[p] = context.make_array(ty)(context, builder, val)
                ary = arrays[p]
                idx = [context.get_constant(low.types.intp, i) for i in index]
                ptr = cgutils.get_item_pointer2(context, builder, ary.data,
                                                cgutils.unpack_tuple(builder, ary.shape),
                                                cgutils.unpack_tuple(builder, ary.strides),
                                                ty.layout, idx, wraparound=False)
                values[node.id] = (ty.dtype, builder.load(ptr))
        elif node.op == "const":
            values[node.id] = low.const(node.attrs[0])
        else:
            values[node.id] = low.node(node, [values[a.id] for a in node.args])
    # Array outputs: written into the buffers passed after the parameters (C order).
    outs = params[len(graph.params):]
    out_arrays = {}
    for k, leaf in enumerate(a for a in leaves(graph.out_tree) if isinstance(a, ArrayOut)):
        ty, val = outs[k]
        ary = context.make_array(ty)(context, builder, val)
        data = ary.data
        for flat, i in enumerate(leaf.indices):
            t, v = values[graph.outputs[i].id]
            ptr = builder.gep(data, [context.get_constant(low.types.intp, flat)])
            builder.store(context.cast(builder, v, t, low.types.float64), ptr)
        out_arrays[leaf.name] = (ty, val)
    return _build_tree(context, builder, graph, graph.out_tree, values, out_arrays, low)


def _build_tree(context, builder, graph, tree, values, out_arrays, low):
    if isinstance(tree, tuple):
        items = [_build_tree(context, builder, graph, t, values, out_arrays, low) for t in tree]
        ty = low.types.Tuple([t for t, _ in items])
        return ty, context.make_tuple(builder, ty, [v for _, v in items])
    if isinstance(tree, ArrayOut):
        ty, val = out_arrays[tree.name]
        context.nrt.incref(builder, ty, val)  # the returned tuple holds a new reference
        return ty, val
    t, v = values[graph.outputs[tree].id]
    return low.types.float64, context.cast(builder, v, t, low.types.float64)


def _return_type(graph, tree, out_types):
    from numba.core import types

    if isinstance(tree, tuple):
        return types.Tuple([_return_type(graph, t, out_types) for t in tree])
    if isinstance(tree, ArrayOut):
        return out_types[tree.name]
    return types.float64


def _make_intrinsic(graph):
    """A numba intrinsic computing ``graph``: parameters, then one C-order buffer per array
    output; it returns the graph's result tree (floats, and those buffers)."""
    from numba.core import types
    from numba.extending import intrinsic

    holder = {"graph": graph}
    n_params = len(graph.params)
    out_leaves = [a for a in leaves(graph.out_tree) if isinstance(a, ArrayOut)]

    def body(typingctx, packed):
        g = holder["graph"]
        if g is None or not isinstance(packed, types.BaseTuple):
            return None
        argtys = tuple(packed)
        out_types = {leaf.name: argtys[n_params + k] for k, leaf in enumerate(out_leaves)}
        ret = _return_type(g, g.out_tree, out_types)

        def codegen(context, builder, signature, llargs):
            from numba.core import cgutils

            args = cgutils.unpack_tuple(builder, llargs[0], len(argtys))
            return _lower_body(context, builder, holder["graph"], argtys, args)[1]

        return ret(packed), codegen

    body.__name__ = _INTRINSIC_NAME
    return intrinsic(body), holder


# --- the wrapper module -----------------------------------------------------------------

def _wrapper_source(graph, func_name, source):
    """The module numba compiles and caches: a header naming the emitted source by hash,
    and the entry point calling the intrinsic (no user text: names are gradc's own)."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    entry = f"{func_name}__native"
    params = [f"p{k}" for k in range(len(graph.params))]
    bufs = []
    for leaf in leaves(graph.out_tree):
        if isinstance(leaf, ArrayOut):
            bufs.append(f"_np.empty({tuple(leaf.shape)!r})")
    defaults = "".join(f"{p}=None, " for p in params)
    items = params + bufs
    call = "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    lines = [
        f"# Generated by gradc: native LLVM body (lowering {LOWERING_VERSION}) of {func_name},",
        f"# the emitted source with sha256 {digest}; the body is written by gradc/native.py.",
        "import numpy as _np",
        "",
        "",
        f"def {entry}({defaults}*extra):",
        "    # Entry point for numba: defaults and *extra let gradc report wrong arguments.",
        f"    return {_INTRINSIC_NAME}({call})",
        "",
    ]
    return "\n".join(lines), entry


def compile_graph(graph, func_name, source, shapes, min_nodes=None):
    """The numba dispatcher of ``graph`` with its body lowered here, and its cache file;
    None when this module does not lower the graph, or it has fewer than ``min_nodes``
    nodes (default :data:`MIN_NODES`): then use :func:`gradc.jit.load_numba`.

    ``func_name`` and ``source`` are :func:`gradc.emit.emit_module`'s (the source's hash
    keys the cache); ``shapes`` has one entry per parameter (None: a float), as for
    ``load_numba``. The dispatcher is compiled for ``(float64 | array(float64, k, "A"),
    ..., StarArgTuple(()))``, the ordinary entry point's signature.
    """
    if len(graph.nodes) < (MIN_NODES if min_nodes is None else min_nodes):
        return None
    if not func_name.isidentifier() or not supports(graph):
        return None
    wrapper, entry = _wrapper_source(graph, func_name, source)
    body, holder = _make_intrinsic(graph)

    def build(module):
        from numba import float64, njit, types

        module.__dict__[_INTRINSIC_NAME] = body
        signature = tuple(float64 if s is None else types.Array(float64, len(s), "A")
                          for s in shapes) + (types.StarArgTuple(()),)
        return njit(signature, cache=True, error_model="numpy")(getattr(module, entry))

    try:
        dispatcher, path = jit.load_numba(wrapper, entry, None, None, build=build)
    except Exception as exc:  # a case supports() let through: the ordinary path takes it
        if not _caused_by_unsupported(exc):
            raise
        return None
    finally:
        holder["graph"] = None  # numba's registries keep the intrinsic: not the graph
    return dispatcher, path


def _caused_by_unsupported(exc):
    while exc is not None:
        if isinstance(exc, _Unsupported):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
