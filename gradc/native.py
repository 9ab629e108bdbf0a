"""The native backend for large straight-line programs: Graph -> LLVM IR, outside numba's front end.

numba's cost for gradc's emitted source is its per-statement front end (bytecode
analysis, type inference and lowering of every line: ~1 ms per node), not LLVM. For
a scalar program (every node a float or bool operation) this module writes the
body's LLVM IR itself, straight from the graph. Three routes:

- **Route 3, object code behind a C entry** (every op with a *helper*, see below, and
  ``compile_graph(..., c_entry=True)``; no numba import at all). The body is one LLVM
  function written as text, run through a few IR passes and compiled by this module's
  own target machine (numba's host CPU and features, computed with llvmlite; codegen
  level 1, 0 past :data:`FAST_CODEGEN_NODES` nodes), its object code kept in gradc's
  verified cache, linked into the process, and called by a CPython builtin that
  :mod:`gradc.shim` writes in LLVM IR (it checks the arguments, allocates the results,
  calls the body, builds the result tree; the calls it does not take go to the
  fallback the caller sets). numba's import and target refresh (~0.9 s) are what
  made a 500-node program's first result take 0.7 s.
- **Route 2, object code behind numba's wrapper** (the same body; where route 3 is not
  asked for or the shim cannot build an entry). A numba wrapper allocates the results
  and calls the body's symbol::

      def f__value_and_grad__native(p0=None, *extra):
          _s = _np.empty(1)
          _a0 = _np.empty((24,))
          _gradc_native_call((p0, _s, _a0))
          return (_s[0], _a0)

- **Route 1, in numba** (graphs using hypot or softplus, whose numba implementations are
  not self-contained): the body is lowered inside one numba ``@intrinsic``, with numba's
  LLVM pipeline, and the wrapper returns what it computes.

Routes 1 and 2 leave numba in charge of the dispatcher (the same entry signature and
hooks as the ordinary path, so :mod:`gradc.api` treats the result as it treats
:func:`gradc.jit.load_numba`'s) and of the wrapper's on-disk cache (the wrapper is a
real cache file whose text names the emitted source's key hash); a second process
loads the body's object code (and numba's wrapper) without lowering anything.

Exactness by construction: every op is lowered by **numba's own implementation** of
the expression the op's template prints (``np.exp(x)``, ``x ** 2``, ``np.sign(x) +
0.0``...), looked up through numba's typing and target contexts exactly as numba's
lowering of the emitted source looks it up (routes 2 and 3 wrap each in a helper
function that is inlined). The helpers' text comes from gradc/native_helpers.py, a
table generated with numba (:func:`write_helper_table`) and used only where its stamp
names the installed numba and llvmlite; other versions, and keys the table lacks,
build helpers with numba. Only the conditional templates (``where``,
``and``/``or``/``not``) are written here as ``select``s and logic, which give the same
values as numba's branches. No fast-math flag is ever set. An op outside the scalar
table (arrays traced whole, loops) makes :func:`compile_graph` return None: the caller
uses the ordinary path, never a guess.

Object code is code: it is read only from gradc's verified cache directory (see
:mod:`gradc.jit`), only as a regular file, and only when its header names this
machine, this lowering, numba's version and the body's symbol and its sha256 matches.

>>> import gradc, gradc.native as native
>>> J = gradc.value_and_grad(lambda a, b, c: 3 * (a + b * c), backend="python")
>>> graph, source, func_name, _ = J.lower((None, None, None))
>>> native.supports(graph)
True
>>> entry, path = native.compile_graph(graph, func_name, source, (None, None, None),
...                                    min_nodes=0, c_entry=True)
>>> entry.function(5.0, 3.0, 2.0)
(33.0, (3.0, 6.0, 9.0))
>>> dispatcher, path = native.compile_graph(graph, func_name, source, (None, None, None),
...                                         min_nodes=0)
>>> dispatcher(5.0, 3.0, 2.0)
(33.0, (3.0, 6.0, 9.0))
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import operator
import os
import re
import threading

import numpy as np

from . import jit
from .emit import literal
from .ir import ArrayOut, gc_paused, leaves

#: Programs with at least this many nodes take the native path (see compile_graph): every
#: scalar program. Measured with route 3 (the C entry, no numba imported; 2 shared cores,
#: cold cache, first call / per call, against numba compiling the emitted source): J = 3(a+bc)
#: (12 nodes) 0.10 s / 137 ns against 0.93 s / 269 ns; 113 nodes 0.017 s / 213 ns against
#: 0.50 s / 669 ns; least squares 8x4 unrolled 0.017 s / 1.05 us against 1.07 s / 2.01 us;
#: the Hessian of a 6-element Rosenbrock 0.017 s / 663 ns against 0.49 s / 1.34 us. (Before
#: route 3 the native path still imported numba, and below ~200 nodes it did not win.)
#: Tests of numba's own cache raise it to keep their small programs on numba.
MIN_NODES = 1

#: Part of every wrapper's text (and so of its cache key): bump it whenever the IR this
#: module writes for a graph changes, so that no cached machine code outlives it.
LOWERING_VERSION = 4

_INTRINSIC_NAME = "_gradc_native_body"
_CALL_NAME = "_gradc_native_call"
_log = logging.getLogger("gradc")

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


# --- the lowering: numba's implementation of each op ------------------------------------

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


# --- route 2: the body as LLVM IR text, compiled here, kept as object code -------------------
#
# The body is one LLVM function written as text (string formatting: microseconds a node,
# where llvmlite's IR builder takes ~0.1 ms), optimised by a short pass list and compiled by
# this module's own target machine, and kept as object code in gradc's verified cache. numba
# compiles (and caches) only a wrapper that calls it by symbol (_make_call_intrinsic).
#
# Exactness: every op is one call of a small *helper* whose body is numba's own lowering of
# the op (the _Lowering recipes above: the implementations numba's lowering of the emitted
# source uses). Helpers are inlined, so the body is the IR route 1 writes. An op whose numba
# implementation is not self-contained (it links numba-compiled Python or raises through
# numba's calling convention: hypot, softplus) has no helper, and its graphs take route 1.

#: LLVM codegen optimisation level of the body (numba's is 3): 1 up to
#: :data:`FAST_CODEGEN_NODES` nodes, 0 above. Measured on the W3 chain (shared 2-core
#: machine; per call the minimum of 30 interleaved rounds, compile in CPU seconds), with
#: the body in parts of CHUNK_NODES: per call the two levels are the same (427 nodes
#: 2.21 / 2.21 us, 1,677 nodes 6.55 / 6.53 us, 3,337 nodes 11.51 / 11.50 us; numba's code
#: of the emitted source 11.25 us), while level 1 compiles slower and faster than linearly
#: (427 nodes 0.02 s against 0.01 s, 3,337 nodes 0.67 s against 0.08 s, 16,677 nodes 7.1 s
#: against 0.5 s). Level 1 stays where it costs next to nothing.
CODEGEN_OPT = 1
FAST_CODEGEN_NODES = 1000

#: Object files in the cache start with this line; the next line is the JSON header.
_OBJECT_MAGIC = b"gradc native object 1\n"

_helper_cache = {}  # helper key -> (definition, declarations), or None: no helper
_loaded = {}        # symbol -> address of a body loaded into this process
_BODY_LOCK = threading.RLock()  # held while a body is read or compiled and loaded
_engines = []       # MCJIT engines holding loaded bodies (kept: their code must stay)
_context = None
_target_machines = {}  # codegen level -> target machine


def _llvm_type(result):
    return "i1" if result == "bool" else "double"


def _helper_key(node):
    """What determines a node's helper: its op and its arguments' kinds ("f" float, "b" bool),
    and for ``x ** k`` with a constant non-negative integral ``k`` (which the emitted source
    writes as an int literal, so numba multiplies) that ``k``."""
    kinds = "".join("b" if a.result == "bool" else "f" for a in node.args)
    if node.op == "pow":
        exponent = node.args[1]
        if exponent.op == "const" and literal(exponent.attrs[0], as_int=True).isdigit():
            return ("pow", kinds[:1], int(exponent.attrs[0]))
    return (node.op, kinds, None)


def _helper_name(key):
    op, kinds, k = key
    return f"gradc.{op}.{kinds}" + ("" if k is None else f".{k}")


class _RecipeNode:
    """What _Lowering.node reads of a node: its op, and for pow an exponent that is not an
    int constant (int exponents have helpers of their own: _helper_key)."""

    def __init__(self, op):
        self.op = op
        self.args = (None, _NotAnIntConstant) if op == "pow" else ()


class _NotAnIntConstant:
    op = "pow-exponent"


def _helper_context():
    """numba's CPU target context under the numpy error model (gradc compiles every function
    with ``error_model="numpy"``), its registries loaded."""
    global _context
    if _context is None:
        from numba.core import callconv
        from numba.core.registry import cpu_target

        base = cpu_target.target_context
        base.refresh()
        cpu_target.typing_context.refresh()
        _context = base.subtarget(error_model=callconv.create_error_model("numpy", base))
    return _context


def _build_helper(key):
    """``(definition, declarations)``: the text of one helper (internal, always inlined) and
    of the functions it declares; None where numba's implementation is not self-contained."""
    import llvmlite.ir as lir
    from numba.core import types

    from .ops import OPS

    op, kinds, k = key
    ctx = _helper_context()
    argtys = [types.boolean if c == "b" else types.float64 for c in kinds]
    want = types.boolean if op == "truth" or OPS[op].result == "bool" else types.float64
    module = lir.Module()
    fnty = lir.FunctionType(ctx.get_value_type(want), [ctx.get_value_type(t) for t in argtys])
    fn = lir.Function(module, fnty, _helper_name(key))
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    builder = lir.IRBuilder(fn.append_basic_block("entry"))
    low = _Lowering(ctx, builder)
    typed = list(zip(argtys, fn.args))
    lib = ctx.codegen().create_library("gradc_native_helper")
    try:
        with ctx.push_code_library(lib):
            if op == "truth":
                rty, value = types.boolean, low.truth(typed[0])
            elif k is not None:
                rty, value = low.int_power(typed[0], k)
            else:
                rty, value = low.node(_RecipeNode(op), typed)
    except Exception:  # an implementation that needs a numba function around it: no helper
        return None
    if rty != want or lib._linking_libraries:
        return None
    builder.ret(value)
    return _split_helper_text(str(module))


def _split_helper_text(text):
    """The one definition and the declarations in a helper module's text; None when it holds
    anything else this module does not copy (metadata other than branch weights, calls of
    numba's own functions)."""
    definition, declarations, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("define "):
            inside = True
        if inside:
            definition.append(re.sub(r", !prof ![0-9]+", "", line))
            inside = line != "}"
        elif line.startswith("declare "):
            callee = re.search(r'@"?([A-Za-z0-9_.$]+)"?\(', line)
            if callee is None or "numba" in callee.group(1):
                return None
            declarations.append(line)
    body = "\n".join(definition)
    if "!" in body.replace("!=", "") or not body.endswith("}"):
        return None
    return body, tuple(declarations)


def _helper(key):
    """The helper of ``key`` (see _build_helper): from the generated table where it is valid
    for the installed numba and llvmlite and holds the key, else built with numba now."""
    if key not in _helper_cache:
        table = _helper_table()
        if table is not None and key in table:
            _helper_cache[key] = table[key]
        else:
            _helper_cache[key] = _build_helper(key)
    return _helper_cache[key]


# --- the generated helper table ------------------------------------------------------------
# Building a helper needs numba's target context: ``import numba`` and its refresh cost ~0.9 s,
# more than the whole compile of a 5,000-node body. Helpers depend only on their key and on
# what produced them, so gradc/native_helpers.py holds every helper a graph can need, generated
# by write_helper_table() with numba, and stamped with what produced it. A table whose stamp
# differs from the installed packages is never used (numba builds the helpers, as before); a
# key it lacks (an int exponent past MAX_TABLE_EXPONENT) is built with numba.

#: The largest constant int exponent ``x ** k`` whose helper the table holds (powers up to
#: 32 cover polynomials and the Hessians of their terms; one beyond needs numba, once).
MAX_TABLE_EXPONENT = 32

_table = None  # [the table's helpers, or None where its stamp does not match]


@functools.cache
def _installed_stamp():
    """What determines the helpers' text besides their keys: numba's and llvmlite's versions
    (read from their metadata, which does not import them), the platform, this lowering.
    Read once: a process does not change its packages under its own feet."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"numba": installed("numba"), "llvmlite": installed("llvmlite"),
            "platform": f"{sys.platform}-{platform.machine()}", "lowering": LOWERING_VERSION}


def _helper_table():
    """The generated table's helpers (key -> helper or None) when its stamp matches the
    installed packages; None otherwise (or when the table is missing)."""
    global _table
    if _table is None:
        try:
            from . import native_helpers
        except ImportError:  # a tree without the generated file: numba builds every helper
            native_helpers = None
        valid = native_helpers is not None and native_helpers.STAMP == _installed_stamp()
        _table = [native_helpers.HELPERS if valid else None]
    return _table[0]


def _table_keys():
    """Every helper key _helper_keys can produce, sorted: each op that needs a helper with
    every combination of argument kinds, the truth of a float, and ``x ** k`` for the int
    exponents 0..MAX_TABLE_EXPONENT of a float or bool base."""
    from .ops import OPS

    keys = [("truth", "f", None)]
    for op in sorted(SUPPORTED_OPS - set(_DIRECT)):
        for kinds in itertools.product("fb", repeat=OPS[op].arity):
            keys.append((op, "".join(kinds), None))
    keys += [("pow", kind, k) for kind in "fb" for k in range(MAX_TABLE_EXPONENT + 1)]
    return sorted(keys, key=repr)


def helper_table_text():
    """The text of gradc/native_helpers.py as the installed numba generates it now (this
    imports numba and builds every helper: seconds). Deterministic: sorted keys, repr()."""
    stamp = _installed_stamp()
    lines = [
        "# Generated by gradc.native.write_helper_table(): do not edit by hand.",
        "# Regenerate after upgrading numba or llvmlite, or after changing the recipes in",
        "# gradc/native.py (then bump LOWERING_VERSION), with:",
        '#     python -c "from gradc import native; native.write_helper_table()"',
        '"""The LLVM IR of the helpers gradc/native.py inlines for each scalar op, as numba\'s',
        "own lowering writes them (gradc.native._build_helper), so that a scalar program",
        "compiles without importing numba. Used only where STAMP equals what is installed.",
        '"""',
        "",
        f"STAMP = {stamp!r}",
        "",
        f"MAX_TABLE_EXPONENT = {MAX_TABLE_EXPONENT!r}",
        "",
        "HELPERS = {",
    ]
    for key in _table_keys():
        lines.append(f"    {key!r}: {_build_helper(key)!r},")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_helper_table(path=None):
    """Write the generated table (:func:`helper_table_text`) to ``path``, by default
    gradc/native_helpers.py next to this module; returns the path."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "native_helpers.py")
    text = helper_table_text()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


_DIRECT = ("input", "const", "alias", "where", "and", "or", "not")


def _helper_keys(graph):
    """The helper keys of the graph's nodes, in first-use order (float truths of where/not
    included); None when an op has no helper."""
    keys = {}
    for node in graph.nodes:
        if node.op in ("where", "not") and node.args[0].result != "bool":
            keys[("truth", "f", None)] = None
        if node.op not in _DIRECT:
            keys[_helper_key(node)] = None
    for key in keys:
        if _helper(key) is None:
            return None
    return list(keys)


def _float_text(value):
    """An LLVM double constant with exactly ``value``'s bits (hex form: NaN payloads and
    signed zeros included)."""
    return "0x%016X" % np.float64(value).view(np.uint64)


#: The body is split into functions of this many nodes, called one after another: LLVM's
#: code generation of one huge basic block grows faster than linearly (level 0 at 3,337
#: nodes 0.03 s, at 16,677 nodes 1.7 s), of many blocks of this size linearly. Values one
#: part defines and a later part uses pass through a stack buffer (exact: stored and loaded
#: as they are).
CHUNK_NODES = 1000

_PARAMS = "i8** noalias %data, i64* noalias %strides, double* noalias %sout, double** noalias %aout"


def _body_text(graph, symbol):
    """The body as LLVM IR text: ``void symbol(i8** data, i64* strides, double* sout,
    double** aout)``. ``data[p]`` points at parameter ``p`` (a double, or an array's first
    element), ``strides`` holds the arrays' strides in bytes one after another; scalar results
    go to ``sout`` in out_tree order, array results to the C-order buffers ``aout[k]``.
    The nodes are computed by part functions of :data:`CHUNK_NODES` nodes each (see there),
    which ``symbol`` calls in order with the buffers of the values that cross parts (one of
    doubles, one of bools: typed, so that a crossing value is one getelementptr and one load
    or store)."""
    parts = _parts(graph)
    slots = _crossing_slots(graph, parts)
    texts = [_part_text(graph, f"{symbol}.part{k}", part, slots, k == len(parts) - 1)
             for k, part in enumerate(parts)]
    sizes = {ty: max(sum(1 for t, _ in slots.values() if t == ty), 1) for ty in _SPILL}
    body = [f'define void @"{symbol}"({_PARAMS}) {{', "entry:"]
    body += [f"  %{name} = alloca {ty}, i64 {sizes[ty]}, align 8" for ty, name in _SPILL.items()]
    spills = ", ".join(f"{ty}* %{name}" for ty, name in _SPILL.items())
    for k in range(len(parts)):
        body.append(f'  call void @"{symbol}.part{k}"(i8** %data, i64* %strides, double* %sout, '
                    f"double** %aout, {spills})")
    body += ["  ret void", "}"]
    return "\n\n".join(texts + ["\n".join(body)])


def _parts(graph):
    """The graph's nodes cut into lists of at most CHUNK_NODES computed nodes, in order
    (constants and aliases compute nothing: they go with any part)."""
    parts, current, counted = [], [], 0
    for node in graph.nodes:
        current.append(node)
        if node.op not in ("const", "alias"):
            counted += 1
            if counted == CHUNK_NODES:
                parts.append(current)
                current, counted = [], 0
    if current or not parts:
        parts.append(current)
    return parts


def _source(node):
    """The node whose instruction defines ``node``'s value (aliases are their argument)."""
    while node.op == "alias":
        node = node.args[0]
    return node


#: The buffers of the values that cross parts, by LLVM type: the parts' parameter names.
_SPILL = {"double": "spill", "i1": "spillb"}


def _crossing_slots(graph, parts):
    """node id -> (LLVM type, index in that type's buffer), for the values a later part (or
    the results, stored by the last part) reads from an earlier one."""
    part_of = {node.id: k for k, part in enumerate(parts) for node in part}
    slots = {}
    counts = dict.fromkeys(_SPILL, 0)

    def need(value, in_part):
        value = _source(value)
        if value.op != "const" and part_of[value.id] < in_part and value.id not in slots:
            ty = _llvm_type(value.result)
            slots[value.id] = (ty, counts[ty])
            counts[ty] += 1

    for k, part in enumerate(parts):
        for node in part:
            for arg in node.args:
                need(arg, k)
    for out in graph.outputs:
        need(out, len(parts) - 1)
    return slots


def _part_text(graph, name, part, slots, last):
    """One part function: reads the crossing values it needs, computes its nodes, saves the
    ones later parts need; the last part also stores the results."""
    spills = ", ".join(f"{ty}* noalias %{spill}" for ty, spill in _SPILL.items())
    out = [f'define internal void @"{name}"({_PARAMS}, {spills}) noinline {{', "entry:"]
    emit = out.append
    offset = 0
    for p, (_, shape) in enumerate(graph.params):
        emit(f"  %dp{p} = getelementptr i8*, i8** %data, i64 {p}")
        emit(f"  %d{p} = load i8*, i8** %dp{p}")
        if shape is not None:
            for d in range(len(shape)):
                emit(f"  %sp{p}.{d} = getelementptr i64, i64* %strides, i64 {offset + d}")
                emit(f"  %s{p}.{d} = load i64, i64* %sp{p}.{d}")
            offset += len(shape)
    here = {node.id for node in part}
    values = {}

    def value(node):
        """The LLVM value of ``node`` in this part: computed here, a constant, or loaded from
        the buffer (once)."""
        node = _source(node)
        if node.op == "const":
            v = node.attrs[0]
            return ("true" if v else "false") if isinstance(v, bool) else _float_text(v)
        if node.id not in values:
            if node.id in here:
                raise AssertionError("a node used before it is computed")
            ty, at = slots[node.id]
            emit(f"  %x{node.id}.p = getelementptr {ty}, {ty}* %{_SPILL[ty]}, i64 {at}")
            emit(f"  %x{node.id} = load {ty}, {ty}* %x{node.id}.p")
            values[node.id] = f"%x{node.id}"
        return values[node.id]

    for node in part:
        op, i = node.op, node.id
        if op in ("const", "alias"):
            continue
        if op == "input":
            _, _, p, index = node.attrs
            ptr = f"%d{p}"
            if index is not None:
                terms = []
                for d, at in enumerate(index):
                    emit(f"  %o{i}.{d} = mul i64 %s{p}.{d}, {at}")
                    terms.append(f"%o{i}.{d}")
                total = terms[0]
                for d, term in enumerate(terms[1:], 1):
                    emit(f"  %o{i}.s{d} = add i64 {total}, {term}")
                    total = f"%o{i}.s{d}"
                emit(f"  %q{i} = getelementptr i8, i8* %d{p}, i64 {total}")
                ptr = f"%q{i}"
            emit(f"  %r{i} = bitcast i8* {ptr} to double*")
            emit(f"  %v{i} = load double, double* %r{i}")
        else:
            args = [value(a) for a in node.args]
            if op in ("where", "not"):
                cond = args[0]
                if node.args[0].result != "bool":  # Python's truth of a float, as numba has it
                    template = _in_place(_TRUTH)
                    emit(f"  %t{i} = " + (template.format(cond) if template is not None else
                                          f'call i1 @"gradc.truth.f"(double {cond})'))
                    cond = f"%t{i}"
                if op == "not":
                    emit(f"  %v{i} = xor i1 {cond}, true")
                else:
                    ty = _llvm_type(node.args[1].result)
                    emit(f"  %v{i} = select i1 {cond}, {ty} {args[1]}, {ty} {args[2]}")
            elif op in ("and", "or"):  # of two bools (supports): their logical and (or)
                emit(f"  %v{i} = {op} i1 {args[0]}, {args[1]}")
            else:
                key = _helper_key(node)
                used = node.args[:1] if key[2] is not None else node.args
                template = _in_place(key)
                if template is not None:  # the helper's one instruction, as inlining leaves it
                    emit(f"  %v{i} = " + template.format(*[value(a) for a in used]))
                else:
                    params = ", ".join(f"{_llvm_type(a.result)} {value(a)}" for a in used)
                    emit(f'  %v{i} = call {_llvm_type(node.result)} @"{_helper_name(key)}"'
                         f"({params})")
        values[i] = f"%v{i}"
        if i in slots:  # a later part reads it
            ty, at = slots[i]
            emit(f"  %y{i}.p = getelementptr {ty}, {ty}* %{_SPILL[ty]}, i64 {at}")
            emit(f"  store {ty} %v{i}, {ty}* %y{i}.p")
    if last:
        _store_results(graph, emit, value)
    emit("  ret void")
    emit("}")
    return "\n".join(out)


def _store_results(graph, emit, value):
    """The results: scalars to ``sout`` in out_tree order, arrays to their buffers."""
    slot = 0
    for k, leaf in enumerate(leaves(graph.out_tree)):
        if isinstance(leaf, ArrayOut):
            emit(f"  %ap{k} = getelementptr double*, double** %aout, i64 {_array_index(graph, leaf)}")
            emit(f"  %a{k} = load double*, double** %ap{k}")
            for flat, j in enumerate(leaf.indices):
                emit(f"  %w{k}.{flat} = getelementptr double, double* %a{k}, i64 {flat}")
                emit(f"  store double {value(graph.outputs[j])}, double* %w{k}.{flat}")
        else:
            emit(f"  %w{k} = getelementptr double, double* %sout, i64 {slot}")
            emit(f"  store double {value(graph.outputs[leaf])}, double* %w{k}")
            slot += 1


def _array_index(graph, leaf):
    return [a for a in leaves(graph.out_tree) if isinstance(a, ArrayOut)].index(leaf)


@gc_paused
def _module_text(graph, symbol, keys):
    """The whole module: the helpers the body calls, their declarations (once), the body."""
    declarations, definitions = {}, []
    for key in keys:
        if _in_place(key) is not None:
            continue  # written in place of each call: the body does not call it
        definition, declared = _helper(key)
        definitions.append(definition)
        for line in declared:
            declarations.setdefault(line, None)
    return "\n\n".join(list(declarations) + definitions + [_body_text(graph, symbol)]) + "\n"


_TRUTH = ("truth", "f", None)
_in_place_cache = {}  # helper key -> its one instruction as a template, or None
_ONE_INSTRUCTION = re.compile(r'define internal \S+ @"[^"]+"\((?P<params>[^)]*)\) alwaysinline\n'
                              r'\{\nentry:\n  %"\.(?P<n>[0-9]+)" = (?P<instruction>[^\n]+)\n'
                              r'  ret \S+ %"\.(?P=n)"\n\}')
_ARGUMENT = re.compile(r'%"\.([0-9]+)"')


def _in_place(key):
    """For a helper whose body is one instruction and its ``ret`` (fadd, fmul, fcmp...; most
    of a program's nodes), that instruction as a ``str.format`` template of its arguments'
    values: the body writes it where it would call the helper, which is the IR inlining
    leaves (the same instruction on the same values), without the call for LLVM to parse
    and inline. Measured (CPU, medians of 3, shared cores): LLVM's time on the pendulum
    n = 15 0.12 -> 0.07 s, on the 20,000-node chain (mostly tanh calls, which stay calls)
    0.52 -> 0.46 s. None for other helpers, which are called (and inlined by LLVM)."""
    if key not in _in_place_cache:
        _in_place_cache[key] = _template_of(_helper(key))
    return _in_place_cache[key]


def _template_of(helper):
    if helper is None or helper[1]:  # no helper, or one that declares a function
        return None
    found = _ONE_INSTRUCTION.fullmatch(helper[0])
    if found is None:
        return None
    arity = found["params"].count(",") + 1 if found["params"] else 0
    instruction = found["instruction"].replace("{", "{{").replace("}", "}}")
    used = [int(k) for k in _ARGUMENT.findall(instruction)]
    if not used or any(not 1 <= k <= arity for k in used):
        return None  # a value other than the arguments: not an instruction of them alone
    return _ARGUMENT.sub(lambda m: "{%d}" % (int(m.group(1)) - 1), instruction)


def _codegen_opt(graph):
    return codegen_level(len(graph.nodes))  # one rule: the index (load_entry) keys on it too


def _machine(opt=CODEGEN_OPT):
    """This module's LLVM target machine at codegen level ``opt``, which compiles every body
    (kept: never given to an execution engine, see _new_machine)."""
    if opt not in _target_machines:
        _target_machines[opt] = _new_machine(opt)
    return _target_machines[opt]


def _new_machine(opt):
    """A new target machine with numba's JIT settings (host CPU and features, its relocation
    model, JIT code model), made with llvmlite alone. An execution engine owns the machine it
    is given and deletes it with itself: each engine gets a new one, never a shared one."""
    import llvmlite.binding as llvm

    host = _host_target()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=host["cpu"], features=host["features"], opt=opt,
                                        reloc=host["reloc"], codemodel="jitdefault", jit=True)


def _machine_identity(opt):
    """What object code was compiled for and by: it is reused only by the same. numba's
    version is part of it: the helpers inlined into the body are its lowering."""
    import llvmlite.binding as llvm

    tm, host, stamp = _machine(opt), _host_target(), _installed_stamp()
    return {"llvmlite": stamp["llvmlite"], "numba": stamp["numba"],
            "llvm": ".".join(map(str, llvm.llvm_version_info)), "triple": tm.triple,
            "cpu": host["cpu"], "features": host["features"], "opt": opt,
            "lowering": LOWERING_VERSION}


# --- the host target, as numba's JIT codegen chooses it, without numba ------------------------
# numba's JITCPUCodegen (numba/core/codegen.py) makes its target machine for
# ``config.CPU_NAME or ll.get_host_cpu_name()`` with ``config.CPU_FEATURES``, else LLVM's
# host features with every "avx*" feature turned off unless ``config.ENABLE_AVX``, whose
# default (numba/core/config.py, avx_default) is: the OS supports AVX (/proc/cpuinfo on
# x86 Linux) and the CPU is not one of a few names where AVX is slow or misreported. With
# numba's default configuration this module computes the same with llvmlite (no numba
# import: ~0.9 s); where numba is loaded already, or its settings are given (NUMBA_*
# variables, a .numba_config.yaml in the working directory), numba's own config decides.

_NUMBA_TARGET_SETTINGS = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX")
_AVX_DISABLED_CPUS = frozenset({"corei7-avx", "core-avx-i", "sandybridge", "ivybridge",
                                "nocona"})
_host = None


def _host_target():
    """``{"cpu", "features", "reloc"}`` of numba's JIT target machine on this host."""
    global _host
    if _host is None:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        config = _numba_config()
        if config is not None:
            cpu = config.CPU_NAME or llvm.get_host_cpu_name()
            features = (config.CPU_FEATURES if config.CPU_FEATURES is not None
                        else _host_features(config.ENABLE_AVX))
        else:
            cpu = llvm.get_host_cpu_name()
            features = _host_features(_os_supports_avx() and cpu not in _AVX_DISABLED_CPUS)
        _host = {"cpu": cpu, "features": features, "reloc": _reloc_model()}
    return _host


def _numba_config():
    """numba's config module where it, not the defaults, decides the target: numba is loaded
    already, or a setting is given that numba would read; None otherwise."""
    import sys

    config = sys.modules.get("numba.core.config")
    if config is None and (any(name in os.environ for name in _NUMBA_TARGET_SETTINGS)
                           or os.path.isfile(".numba_config.yaml")):
        from numba.core import config
    return config


def _host_features(avx):
    """LLVM's host CPU features as numba's get_host_cpu_features flattens them."""
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:
        return ""
    if not avx:
        for name in features:
            if name.startswith("avx"):
                features[name] = False
    return features.flatten()


def _os_supports_avx():
    """numba's config._os_supports_avx: on x86 Linux, whether /proc/cpuinfo lists avx."""
    import platform
    import sys

    if (not sys.platform.startswith("linux")
            or platform.machine() not in ("i386", "i586", "i686", "x86_64")):
        return True
    try:
        fh = open("/proc/cpuinfo")
    except OSError:
        return True
    with fh:
        for line in fh:
            head, _, body = line.partition(":")
            if head.strip() == "flags" and "avx" in body.split():
                return True
    return False


def _reloc_model():
    """numba's JIT relocation model for this architecture (static on x86: MCJIT needs it)."""
    import llvmlite.binding as llvm

    arch = llvm.Target.from_default_triple().name
    if arch.startswith("x86"):
        return "static"
    return "pic" if arch.startswith("ppc") else "default"


def _run_passes(module, tm):
    """The IR passes the body needs, and no more: inline the helpers, promote the one alloca
    a helper may hold (np.sign's), fold constants and libcalls (instcombine: numba's O3 runs
    it too, and its rewrites, such as pow(x, 0.5) into an exact sqrt form, keep results
    bit for bit), drop the dead branches numba's division check leaves (simplifycfg), and
    remove what became dead. No fast-math flags are ever set, so none of these may change a
    value."""
    import llvmlite.binding as llvm

    pto = llvm.create_pipeline_tuning_options(speed_level=1)
    pb = llvm.create_pass_builder(tm, pto)
    mpm = llvm.create_new_module_pass_manager()
    mpm.add_always_inliner_pass()
    mpm.add_sroa_pass()
    mpm.add_instruction_combine_pass()
    mpm.add_simplify_cfg_pass()
    mpm.add_dead_code_elimination_pass()
    mpm.add_global_dead_code_eliminate_pass()
    mpm.run(module, pb)


def _compile_object(text, opt):
    """Object code of the module ``text``, codegen at level ``opt``."""
    import llvmlite.binding as llvm

    tm = _machine(opt)
    module = llvm.parse_assembly(text)
    module.triple, module.data_layout = tm.triple, str(tm.target_data)
    module.verify()
    _run_passes(module, tm)
    return tm.emit_object(module)


def _load_object(data, symbol):
    """Link object code into this process and return the body's address. Its C library and
    numba helper symbols resolve as numba's own code's do (numba registered them)."""
    import llvmlite.binding as llvm

    if symbol in _loaded:
        return _loaded[symbol]
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _new_machine(CODEGEN_OPT))
    engine.add_object_file(llvm.ObjectFileRef.from_data(data))
    engine.finalize_object()
    address = engine.get_function_address(symbol)
    if not address:
        raise _Unsupported(f"the object code has no {symbol}")
    _engines.append(engine)
    llvm.add_symbol(symbol, address)  # numba's wrapper resolves its call through this
    _loaded[symbol] = address
    return address


# --- the object cache -------------------------------------------------------------------------
# Object code is code: it is read only from gradc's verified cache directory (jit.cache_dir:
# owned by this user, writable by nobody else, checked again before each read), through
# jit's reader (no symbolic links, regular files only), and only when its header names this
# machine, this lowering and the symbol asked for and its sha256 matches the bytes: a
# truncated or foreign file is deleted and rebuilt, never run.

def _object_path(directory, symbol):
    """Where the object code of the body ``symbol`` lives in the verified cache ``directory``
    (None: nowhere): in its __pycache__, named as gradc's cache files are, so that ``gradc
    cache clear`` removes it. Routes 2 and 3 share it: the same body, the same symbol."""
    if directory is None:
        return None
    digest = hashlib.sha256(symbol.encode("ascii")).hexdigest()[:24]
    return os.path.join(directory, "__pycache__", f"gradc_{digest}.body.o")


def _read_object(path, symbol, directory, opt):
    if path is None or jit._trust_problem(directory):
        return None
    data = jit._read_regular(path, 1 << 31)
    if not data or not data.startswith(_OBJECT_MAGIC):
        return None
    header_end = data.find(b"\n", len(_OBJECT_MAGIC))
    try:
        header = json.loads(data[len(_OBJECT_MAGIC):header_end])
    except ValueError:
        return None
    payload = data[header_end + 1:]
    expected = dict(_machine_identity(opt), symbol=symbol,
                    sha256=hashlib.sha256(payload).hexdigest())
    if header_end < 0 or header != expected:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a name in the verified directory: a link is removed, not followed
        return None
    return payload


def _write_object(path, symbol, payload, opt):
    header = dict(_machine_identity(opt), symbol=symbol, sha256=hashlib.sha256(payload).hexdigest())
    data = _OBJECT_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload
    try:
        jit._write_source(path, data)
    except OSError as exc:
        jit._warn_write_failed(os.path.dirname(os.path.dirname(path)), exc)


def _ensure_body(graph, symbol, keys, directory):
    """``(address, path)``: the body loaded into this process (from the cache in the
    verified ``directory``, else compiled now and saved there) and its object file's path
    (None without a cache directory)."""
    path = _object_path(directory, symbol)
    with _BODY_LOCK:  # two threads compiling one program load its body once
        if symbol not in _loaded:
            opt = _codegen_opt(graph)
            payload = _read_object(path, symbol, directory, opt)
            if payload is None:
                payload = _compile_object(_module_text(graph, symbol, keys), opt)
                if path is not None:
                    _write_object(path, symbol, payload, opt)
            else:
                jit._mark_used(path)  # its age is the time since a process last loaded it
            _load_object(payload, symbol)
        return _loaded[symbol], path


def _make_call_intrinsic(symbol, n_params):
    """A numba intrinsic ``call((params..., sout, arrays...))`` that calls the body: it lays
    the parameters' pointers and strides out on the stack as _body_text expects."""
    from numba.core import cgutils, types
    from numba.extending import intrinsic
    from llvmlite import ir as lir

    def call(typingctx, packed):
        if not isinstance(packed, types.BaseTuple):
            return None
        argtys = tuple(packed)

        def codegen(context, builder, signature, llargs):
            i8p, i64, f64p = lir.IntType(8).as_pointer(), lir.IntType(64), \
                lir.DoubleType().as_pointer()
            items = cgutils.unpack_tuple(builder, llargs[0], len(argtys))
            ndims = sum(t.ndim for t in argtys[:n_params] if isinstance(t, types.Array))
            data = cgutils.alloca_once(builder, i8p, size=max(n_params, 1))
            strides = cgutils.alloca_once(builder, i64, size=max(ndims, 1))
            n_arrays = len(argtys) - n_params - 1
            arrays = cgutils.alloca_once(builder, f64p, size=max(n_arrays, 1))
            at = 0
            for p, (ty, val) in enumerate(zip(argtys[:n_params], items)):
                if isinstance(ty, types.Array):
                    ary = context.make_array(ty)(context, builder, val)
                    ptr = builder.bitcast(ary.data, i8p)
                    for s in cgutils.unpack_tuple(builder, ary.strides, ty.ndim):
                        builder.store(s, builder.gep(strides, [context.get_constant(types.intp, at)]))
                        at += 1
                else:
                    slot = cgutils.alloca_once_value(builder, val)
                    ptr = builder.bitcast(slot, i8p)
                builder.store(ptr, builder.gep(data, [context.get_constant(types.intp, p)]))
            outs = [context.make_array(t)(context, builder, v).data
                    for t, v in zip(argtys[n_params:], items[n_params:])]
            for k, ptr in enumerate(outs[1:]):
                builder.store(ptr, builder.gep(arrays, [context.get_constant(types.intp, k)]))
            fnty = lir.FunctionType(lir.VoidType(), [i8p.as_pointer(), i64.as_pointer(), f64p,
                                                     f64p.as_pointer()])
            body = cgutils.get_or_insert_function(builder.module, fnty, symbol)
            builder.call(body, [data, strides, outs[0], arrays])
            return context.get_dummy_value()

        return types.none(packed), codegen

    call.__name__ = _CALL_NAME
    return intrinsic(call)


# --- the wrapper modules -------------------------------------------------------------------

def _entry_text(graph, func_name, header, call, body):
    """A wrapper module: the header comment, and the entry point (no user text: every name in
    it is gradc's own); ``call(params, buffers)`` is the line that computes the body.

    ``body`` (the body's symbol: this lowering and the emitted source's key) is written as
    code, not only in the header: the cache key blanks leading comment lines (jit.key_text),
    and two programs whose wrappers read alike (a function edited, same name and shapes) must
    not share numba's compiled wrapper, which calls one body: the other one's crashed.
    """
    entry = f"{func_name}__native"
    params = [f"p{k}" for k in range(len(graph.params))]
    defaults = "".join(f"{p}=None, " for p in params)
    lines = header + [
        "import numpy as _np",
        "",
        f"_BODY = {body!r}  # the cache key's part that says what the body computes",
        "",
        "",
        f"def {entry}({defaults}*extra):",
        "    # Entry point for numba: defaults and *extra let gradc report wrong arguments.",
    ] + call(params)
    return "\n".join(lines) + "\n", entry


def _packed(items):
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _key_digest(source):
    """The emitted source's hash as the cache key sees it: its origin comments left out
    (jit.key_text), so a function moved in its file keeps its compiled body."""
    return hashlib.sha256(jit.key_text(source).encode("utf-8")).hexdigest()


def _intrinsic_wrapper(graph, func_name, source):
    """Route 1's module: the entry point returns what the intrinsic computes."""
    header = [f"# Generated by gradc: native LLVM body (lowering {LOWERING_VERSION}, in numba) "
              f"of {func_name},",
              f"# the emitted source with key sha256 {_key_digest(source)}; the body is "
              "written by gradc/native.py."]

    def call(params):
        bufs = [f"_np.empty({tuple(leaf.shape)!r})" for leaf in leaves(graph.out_tree)
                if isinstance(leaf, ArrayOut)]
        return [f"    return {_INTRINSIC_NAME}({_packed(params + bufs)})"]

    return _entry_text(graph, func_name, header, call, _symbol(source))


def _object_wrapper(graph, func_name, source, symbol):
    """Route 2's module: buffers for the results, one call of the body, the result tree."""
    header = [f"# Generated by gradc: native object body {symbol} (lowering {LOWERING_VERSION}) "
              f"of {func_name},",
              f"# the emitted source with key sha256 {_key_digest(source)}; the body is "
              "compiled by gradc/native.py."]
    out_leaves = list(leaves(graph.out_tree))
    n_scalars = sum(not isinstance(leaf, ArrayOut) for leaf in out_leaves)
    arrays = [leaf for leaf in out_leaves if isinstance(leaf, ArrayOut)]
    slots = iter(range(n_scalars))

    def tree(t):
        if isinstance(t, tuple):
            return _packed([tree(item) for item in t])
        if isinstance(t, ArrayOut):
            return f"_a{arrays.index(t)}"
        return f"_s[{next(slots)}]"

    def call(params):
        lines = [f"    _s = _np.empty({max(n_scalars, 1)})"]
        lines += [f"    _a{k} = _np.empty({tuple(leaf.shape)!r})" for k, leaf in enumerate(arrays)]
        lines.append(f"    {_CALL_NAME}({_packed(params + ['_s'] + [f'_a{k}' for k in range(len(arrays))])})")
        lines.append(f"    return {tree(graph.out_tree)}")
        return lines

    return _entry_text(graph, func_name, header, call, symbol)


def _signature(shapes):
    from numba import float64, types

    return tuple(float64 if s is None else types.Array(float64, len(s), "A")
                 for s in shapes) + (types.StarArgTuple(()),)


def compile_graph(graph, func_name, source, shapes, min_nodes=None, c_entry=False):
    """``(compiled, path)``: ``graph`` compiled with its body lowered here, and its cache
    file; None when this module does not lower the graph, or it has fewer than
    ``min_nodes`` nodes (default :data:`MIN_NODES`): then use :func:`gradc.jit.load_numba`.

    ``func_name`` and ``source`` are :func:`gradc.emit.emit_module`'s (the source's key text
    keys the cache); ``shapes`` has one entry per parameter (None: a float), as for
    ``load_numba``. Where every op has a helper the body is object code, and with
    ``c_entry`` it is called by route 3: ``compiled`` is a :class:`gradc.shim.Entry` (call
    its ``function``; numba is not imported), allowed at ``shapes``, without a fallback (the
    caller sets one: calls the entry does not take are refused until then), and ``path`` is
    the object file. Otherwise, and where the shim cannot build the entry, ``compiled`` is a
    numba dispatcher compiled for ``(float64 | array(float64, k, "A"), ...,
    StarArgTuple(()))``, the ordinary entry point's signature, and ``path`` its wrapper's
    source: route 2 (numba's wrapper calls the object code) or, where an op has no helper,
    route 1 (the body inside numba's compile).
    """
    if len(graph.nodes) < (MIN_NODES if min_nodes is None else min_nodes):
        return None
    if not func_name.isidentifier() or not supports(graph):
        return None
    keys = _helper_keys(graph)
    if keys is not None:
        try:
            found = c_entry and _compile_entry_route(graph, func_name, source, shapes, keys)
            return found or _compile_object_route(graph, func_name, source, shapes, keys)
        except RuntimeError as exc:  # LLVM refused the text: a bug here; route 1 still works
            _log.warning("gradc.native: object route failed for %s (%s); using numba's "
                         "lowering", func_name, exc)
    return _compile_intrinsic_route(graph, func_name, source, shapes)


# --- route 3: the object code behind a C entry (gradc/shim.py), without numba -------------------

def _entry_spec(graph, shapes):
    """The :class:`gradc.shim.EntrySpec` of the body's ABI for ``graph``, or None where the
    shim does not take it (parameters or results it has no place for). The body reads the
    arrays' strides, so any layout is taken; scalars go to ``sout`` in out_tree order and
    array results to ``aout`` in the order of their leaves (_store_results)."""
    from . import shim

    ranks = tuple(None if shape is None else len(shape) for _, shape in graph.params)
    if ranks != tuple(None if shape is None else len(shape) for shape in shapes):
        return None  # the caller's shapes are not the traced ones: not this module's to guess
    arrays = [leaf for leaf in leaves(graph.out_tree) if isinstance(leaf, ArrayOut)]
    slots = iter(range(len(graph.outputs)))

    def tree(t):
        if isinstance(t, tuple):
            return tuple(tree(item) for item in t)
        if isinstance(t, ArrayOut):
            return ("a", arrays.index(t))
        return ("s", next(slots))

    results = tree(graph.out_tree)
    n_scalars = sum(not isinstance(leaf, ArrayOut) for leaf in leaves(graph.out_tree))
    try:
        return shim.EntrySpec(params=ranks, results=results, n_scalars=n_scalars,
                              n_arrays=len(arrays))
    except ValueError as exc:  # e.g. an array of more dimensions than the shim lays out
        _log.debug("gradc.native: no C entry for this graph (%s)", exc)
        return None


def _compile_entry_route(graph, func_name, source, shapes, keys):
    """Route 3: ``(entry, object file path)``, or None where the shim does not take the graph
    or cannot build its entry here (logged: routes 2 and 1 still work)."""
    try:
        spec = _entry_spec(graph, shapes)
    except ImportError as exc:  # a tree without gradc/shim.py, or llvmlite without MCJIT
        _log.warning("gradc.native: no C entry (%s); numba's wrapper calls the body", exc)
        return None
    if spec is None:
        return None
    symbol = _symbol(source)
    address, path = _ensure_body(graph, symbol, keys, jit.cache_dir())
    try:
        from . import shim

        entry = shim.make_entry(spec, address, func_name)
        arrays = [leaf for leaf in leaves(graph.out_tree) if isinstance(leaf, ArrayOut)]
        entry.allow(tuple(shapes), tuple(tuple(leaf.shape) for leaf in arrays))
    except Exception as exc:  # the shim refused this process (ShimUnavailable) or the spec
        _log.warning("gradc.native: no C entry for %s (%s: %s); numba's wrapper calls the "
                     "body", func_name, type(exc).__name__, exc)
        return None
    return entry, path or f"<in memory: {symbol}.body.o>"


def _symbol(source):
    """The body's symbol: unique to the emitted source's key text and this lowering."""
    return "gradc_body_" + hashlib.sha256(
        f"{LOWERING_VERSION}\n{_key_digest(source)}".encode()).hexdigest()[:32]


def _compile_object_route(graph, func_name, source, shapes, keys):
    symbol = _symbol(source)
    wrapper, entry = _object_wrapper(graph, func_name, source, symbol)
    _ensure_body(graph, symbol, keys, jit.cache_dir())
    call = _make_call_intrinsic(symbol, len(graph.params))

    def build(module):
        from numba import njit

        module.__dict__[_CALL_NAME] = call
        return njit(_signature(shapes), cache=True, error_model="numpy")(getattr(module, entry))

    return jit.load_numba(wrapper, entry, None, None, build=build)


def _compile_intrinsic_route(graph, func_name, source, shapes):
    wrapper, entry = _intrinsic_wrapper(graph, func_name, source)
    body, holder = _make_intrinsic(graph)

    def build(module):
        from numba import njit

        module.__dict__[_INTRINSIC_NAME] = body
        return njit(_signature(shapes), cache=True, error_model="numpy")(getattr(module, entry))

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


# --- the warm-start index's side (gradc/index.py, gradc/api.py) --------------------------------

def symbol_of(source):
    """The symbol of the body compiled from the emitted ``source``."""
    return _symbol(source)


def codegen_level(nodes):
    """The codegen level of a body of ``nodes`` nodes (part of its object file's identity)."""
    return CODEGEN_OPT if nodes <= FAST_CODEGEN_NODES else 0


def load_entry(symbol, opt, name, spec, rows):
    """``(entry, object file path)``: route 3 for a body compiled before, straight from the
    verified cache, without its graph (a warm start found it in gradc/index.py's index); None
    where its object code is not there or fails its checks (the caller builds it again).

    ``spec``: the :class:`gradc.shim.EntrySpec` fields, ``rows``: the shapes it was allowed.
    The object file's own header (machine, lowering, symbol, sha256) decides whether it runs.
    """
    from . import shim

    directory = jit.cache_dir()
    path = _object_path(directory, symbol)
    with _BODY_LOCK:
        if symbol not in _loaded:
            payload = _read_object(path, symbol, directory, opt)
            if payload is None:
                return None
            jit._mark_used(path)
            _load_object(payload, symbol)
    try:
        entry = shim.make_entry(shim.EntrySpec(**spec), _loaded[symbol], name)
    except shim.ShimUnavailable:
        return None
    for params, results in rows:
        entry.allow(params, results)
    return entry, path
