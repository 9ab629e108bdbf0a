"""Loop lowering: a Graph of whole arrays -> one function of fused loop nests, for numba.

This is the code a careful human writes by hand for numba. Elementwise chains
over one iteration space become the body of one loop nest; a slice read is
index arithmetic (``x[i + 1]``) and broadcasting is index mapping (a size-1 or
missing axis reads index 0 or nothing); a reduction is an accumulator in the
loop that computes its operand; the adjoint of a slice (a ``scatter``) and sums
of such adjoints are accumulate loops (``dx[i + 1] += ...``) into one zeroed
buffer. Matrix products are ``np.dot`` calls (BLAS inside numba) on arrays the
nests have materialised. Values that do not depend on the loop index are
computed once, before the loop. A loop that reads an array at its own index joins
the loop that writes it and reads the element's local (an array no line then reads
from memory has no buffer), and an elementwise result takes the buffer of an
argument nothing else reads (``X @ W + b`` is one buffer). Transcendentals NumPy
computes with SIMD loops (exp, log, log1p, tanh, ...: ``_VECTOR``) are, for an
array of ``_VECTOR_MIN`` elements or more, one call of NumPy's loop through numba's
object mode, where numba would call libm once per element. A float32 program's
loops compute in float32 (literals ``np.float32(c)``, float arguments converted on
entry).

NumPy's wider surface lowers the same way (``RULES`` says how for every op of the
table, ``NOT_LOWERED`` why for the few that are not): ``cumsum``/``cumprod`` are
running accumulators (``acc += x[i]; out[i] = acc``), ``prod`` a reduction; item
assignment, ``concatenate``, ``stack`` and the adjoint of a sort are one buffer that
loops write piece by piece (item assignment into an array nothing else reads writes
it in place, without a copy); a sorted read is ``x[int(order[i])]``; ops that no
loop expresses better (argsort, ``np.linalg``) are one NumPy call numba compiles
(``_CALLS``), a statement between the nests on arrays in memory, whose result later
nests read as any array. Constant masks the rules build (``np.eye``, ``np.tri``)
are read as comparisons of the indices.

Loop bounds are read from the argument shapes at run time (``n = x.shape[0]``),
so the same source serves every length of the same rank. The rule that makes
this safe: every bound and offset written symbolically evaluates, at the traced
shapes, to what the graph needs there; a dimension whose origin is unknown is
written as its number. The source is therefore correct for the shapes it was
traced at, and two shapes that lower to the *same text* can share one compiled
function (the backends key compiled code by source). Shapes the trace depends on
in another way (a Python loop over ``range(len(x))``) give different text, and so
their own function.

>>> import numpy as np
>>> from gradc.trace import trace
>>> from gradc import ad
>>> from gradc.optimize import optimize
>>> def rosen(x):
...     return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
>>> g = optimize(ad.value_and_grad(trace(rosen, [("x", (5,), True)], "rosen"), (0,), bare=True))
>>> print(lower_function(g, "rosen__value_and_grad"), end="")
def rosen__value_and_grad(x):
    n = x.shape[0]
    rosen = 0.0
    dx = np.zeros((n,))
    for i in range(n - 1):
        t0 = x[i] ** 2
        t1 = x[i + 1] - t0
        t2 = t1 ** 2
        t3 = 100.0 * t2
        t4 = 1.0 - x[i]
        t5 = t4 ** 2
        t6 = t3 + t5
        rosen += t6
        t7 = 2.0 * t4
        t8 = -t7
        t9 = 200.0 * t1
        t10 = -t9
        t11 = t10 * 2.0
        t12 = t11 * x[i]
        t13 = t8 + t12
        dx[i] += t13
        dx[i + 1] += t9
    return rosen, dx
"""
from __future__ import annotations

import collections
import re

import numpy as np

from .emit import _Namer, assign_names, literal, module_header
from .ir import resolve
from .ops import OPS, attr_text


class LoweringError(Exception):
    """The graph uses something the loop lowering does not handle (the caller falls back)."""


# --- integer affine forms: loop bounds, dimensions and indices ------------------------------
class Lin:
    """``const + sum(coeff * symbol)``: a dimension or an index as source text can say it."""

    __slots__ = ("const", "terms")

    def __init__(self, const=0, terms=()):
        self.const = int(const)
        self.terms = tuple(sorted((s, c) for s, c in dict(terms).items() if c))

    @staticmethod
    def sym(name):
        return Lin(0, {name: 1})

    def _combine(self, other, sign):
        other = other if isinstance(other, Lin) else Lin(other)
        terms = dict(self.terms)
        for s, c in other.terms:
            terms[s] = terms.get(s, 0) + sign * c
        return Lin(self.const + sign * other.const, terms)

    def __add__(self, other):
        return self._combine(other, 1)

    def __sub__(self, other):
        return self._combine(other, -1)

    def scale(self, k):
        return Lin(self.const * k, {s: c * k for s, c in self.terms})

    def value(self, env):
        return self.const + sum(c * env[s] for s, c in self.terms)

    def substitute(self, subst):
        if not any(s in subst for s, _ in self.terms):
            return self
        out = Lin(self.const)
        for s, c in self.terms:
            out = out + (subst[s].scale(c) if s in subst else Lin(0, {s: c}))
        return out

    def rename(self, names):
        return Lin(self.const, {names.get(s, s): c for s, c in self.terms})

    def bare_symbol(self):
        """The symbol when this form is exactly one symbol, else None."""
        if self.const == 0 and len(self.terms) == 1 and self.terms[0][1] == 1:
            return self.terms[0][0]
        return None

    @property
    def is_const(self):
        return not self.terms

    def symbols(self):
        return [s for s, _ in self.terms]

    def __eq__(self, other):
        return isinstance(other, Lin) and (self.const, self.terms) == (other.const, other.terms)

    def __hash__(self):
        return hash((self.const, self.terms))

    def text(self):
        parts = []
        for s, c in self.terms:
            if c == 1:
                parts.append(("+", s))
            elif c == -1:
                parts.append(("-", s))
            else:
                parts.append(("+" if c > 0 else "-", f"{abs(c)} * {s}"))
        if self.const or not parts:
            parts.append(("+" if self.const >= 0 else "-", str(abs(self.const))))
        sign, first = parts[0]
        out = first if sign == "+" else f"-{first}"
        for sign, item in parts[1:]:
            out += f" {sign} {item}"
        return out

    __repr__ = text


def _paren(text):
    return text if text.replace("_", "").isalnum() else f"({text})"


# --- symbolic shapes ---------------------------------------------------------------------------
_ELEMENTWISE = {name for name, op in OPS.items()
                if op.shape is None and op.arity and name != "alias" and op.result != "tuple"}
_VIEWS = {"getitem", "broadcast_to", "fill", "transpose", "reshape"}
_WORD = re.compile(r"\w+")
#: The deepest chain of array nodes inlined into one expression (see _cap_inline_depth).
MAX_INLINE_DEPTH = 40
# Ops whose result has the shape of one argument (its position): the result's axes are its.
_SAME_SHAPE = {"cumsum": 0, "cumprod": 0, "setitem": 0, "sort_order": 0, "inv": 0,
               "cholesky": 0, "eigh_vectors": 0, "take_along": 1, "solve": 1}
# What recomputing an op costs, in additions: libm calls are worth keeping in memory when a
# value is needed in several loops (see _Lowering._decide).
_WEIGHT = {name: 8 for name in ("exp", "log", "log1p", "expm1", "sin", "cos", "tan", "arcsin",
                                "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "hypot",
                                "pow", "sigmoid", "softplus", "sqrt", "div")}

# Unary ops whose NumPy loops are SIMD (AVX-512 on the machine measured) and 2-13x faster per
# element than the scalar libm call numba makes for them, in a loop or for np.tanh(array)
# alike (`python -m benchmarks.profile_kernels --ufuncs`; at 4,096 float64 elements: exp 3.7x,
# tanh 5.3x, log1p 3.7x; float32 tanh 13x). An array of one of them is one call of NumPy's
# loop on its argument in memory, reached through numba's object mode under np.errstate: that
# costs ~2-3 us a call, so below _VECTOR_MIN elements the helper runs the scalar loop instead
# (measured, under load 4 on 2 cores: NumPy's loop even with the scalar one at 512 elements
# for exp, ahead at 1,024 for exp, log, log1p and tanh by 1.4-2.6x). Not here: sin and cos
# (NumPy's float64 loops call libm too: 0.3-0.9x), sqrt (one instruction, LLVM vectorises it).
_VECTOR = ("exp", "log", "log1p", "expm1", "tanh", "sinh", "cosh", "tan", "arcsin", "arctan",
           "arctanh", "arcsinh", "log2", "log10", "exp2", "cbrt")
_VECTOR_MIN = 1024
assert all(OPS[name].template == "{np}.%s({0})" % name for name in _VECTOR)

# --- what each op of the table lowers to (tests/test_loops_surface.py checks every op is here) --
# Reductions: an accumulator in the loop over their operand (initial value, update).
_REDUCTIONS = {"sum": "0.0", "prod": "1.0", "max": "-{np}.inf", "min": "{np}.inf"}
# Running values along an axis: an accumulator written out at every step. A cumulative sum
# starts at -0.0, the one number x + (-0.0) leaves bitwise unchanged (np.cumsum(-0.0) is -0.0).
_RUNNING = {"cumsum": ("-0.0", "+"), "cumprod": ("1.0", "*")}
# Arrays written piece by piece into one buffer by loops: setitem (a copy of x, then the
# writes), concatenate, stack and pack (each piece at its offset), put_along (writes at computed
# indices). scatter (the adjoint of a slice) is an accumulate loop, see _accumulations.
_ASSEMBLED = ("setitem", "concatenate", "stack", "pack", "put_along")


class _Call:
    """An op numba runs as one NumPy call on arrays in memory, a statement between the nests.

    ``template`` formats like the op table's (None: the table's own); ``lane``: numba takes
    the call on 1-D arrays only, so an N-D argument is called once per 1-D lane along the op's
    axis; ``dtype``: the result's element type where it is not the program's float.
    """

    def __init__(self, template=None, lane=False, dtype=None):
        self.template, self.lane, self.dtype = template, lane, dtype


# Checked against numba 0.68.1 (SciPy's LAPACK): each call compiled in nopython mode on the
# shapes gradc gives it (2-D square matrices, solve's b 1-D and 2-D, transposed views) and
# compared with NumPy; tests/test_loops_surface.py compiles every one of them again against
# the NumPy-level code. Not here, because numba's differs: argsort's axis= and N-D arrays
# (hence ``lane``), np.put_along_axis (absent: put_along is a loop), np.prod's axis= (prod is
# a reduction), np.partition (see NOT_LOWERED).
_CALLS = {
    "sort_order": _Call("{np}.argsort({0}, kind='stable')", lane=True, dtype="intp"),
    "inv": _Call(), "solve": _Call(), "det": _Call(), "logabsdet": _Call(), "signdet": _Call(),
    "cholesky": _Call(), "eigh_values": _Call(), "eigh_vectors": _Call(),
}

#: Ops the loop lowering has no rule for, and why; a graph using one is refused with
#: LoweringError (``arrays="auto"`` then runs NumPy-level code, ``arrays="loops"`` says so).
NOT_LOWERED = {
    "partition": "numba's np.partition arranges the elements around kth differently from "
                 "NumPy's introselect (both are valid partitions; gradc's value is NumPy's)",
    "scan": "gradc.scan's loop runs a graph of its own, which the NumPy-level emitter writes",
    "scan_bwd": "the reverse of gradc.scan's loop (see scan)",
    "part": "a component of gradc.scan's value (see scan)",
    **dict.fromkeys(("svd_u", "svd_values", "svd_vh", "qr_q", "qr_r", "lstsq"),
                    "new in the op table; numba 0.68.1 computes NumPy's values bitwise (checked "
                    "at 1x1 to 60x60, tall and wide), to move to _CALLS with its tests"),
}

#: Op name -> how the loop lowering computes it: every op of the table is here or in NOT_LOWERED.
RULES = {
    "input": "an argument", "const": "a number, an index comparison or an array literal",
    "alias": "the name of its argument",
    **dict.fromkeys(_ELEMENTWISE, "elementwise: one statement in the body of a loop nest"),
    **dict.fromkeys(_VECTOR, f"elementwise; an array is NumPy's SIMD loop on its argument in "
                             f"memory from {_VECTOR_MIN} elements, a loop of scalar calls below"),
    "getitem": "index arithmetic", "broadcast_to": "index mapping", "fill": "index mapping",
    "transpose": "index permutation",
    "reshape": "index mapping (unit axes), else a view of an array in memory",
    **dict.fromkeys(_REDUCTIONS, "an accumulator in the loop nest of its operand"),
    **dict.fromkeys(_RUNNING, "a running accumulator along its axis, written at every step"),
    "matmul": "np.dot (BLAS) on arrays in memory",
    **dict.fromkeys(_CALLS, "one NumPy call numba compiles, on arrays in memory (_CALLS)"),
    "take_along": "a read at the index its order holds: x[i, int(order[i, j])]",
    "scatter": "an accumulate loop into a zeroed buffer",
    "setitem": "a copy loop (none where x has no other use), then a loop of writes",
    "concatenate": "a loop per piece writing it at its offset", "stack": "a loop per piece",
    "pack": "one write per scalar, at its position",
    "put_along": "a loop of writes at the indices its order holds",
    "zeros": "a zeroed buffer", "count": "a product of the argument dimensions",
    "custom": "replaced by its value before lowering (gradc.custom.strip)",
}


def _slice_parts(item, length, form, offsets=None):
    """``(start form, step, length form)`` of a slice of an axis of ``length`` (form ``form``),
    exact at the traced length: clamped bounds are written as the numbers they clamp to.
    ``offsets``: number -> form for the bounds where concatenated pieces meet (the slices
    a concatenate's adjoint cuts), so they are written from the shapes, not as numbers."""
    offsets = offsets or {}
    start, stop, step = slice(*item[1:]).indices(length)
    count = len(range(start, stop, step))
    step_ok = item[3] in (None, 1)
    s0 = item[1]
    if s0 is None:
        start_form = Lin(0) if step > 0 else form - 1
    elif 0 <= s0 <= length:
        start_form = offsets.get(s0, Lin(s0))
    elif -length <= s0 < 0:
        start_form = form + s0
    else:
        start_form = Lin(start)
    if step == -1 and item[1] is None and item[2] is None:
        return start_form, step, form  # a whole axis reversed (a flip): its own length
    if not step_ok:
        return start_form, step, Lin(count)  # a stepped length is written as its number
    s1 = item[2]
    if s1 is None:
        stop_form = form
    elif 0 <= s1 <= length:
        stop_form = offsets.get(s1, Lin(s1))
    elif s1 > length:
        stop_form = form
    elif -length <= s1 < 0:
        stop_form = form + s1
    else:
        stop_form = Lin(0)
    count_form = stop_form - start_form if stop - start >= 0 else Lin(0)
    return start_form, step, count_form


class Shapes:
    """Node id -> tuple of Lin, one per axis, each exact at the traced shapes.

    An argument's axis of length n > 1 is a symbol; the trace's own shape relations
    (two axes an elementwise op or a product pairs up are one length) are applied as
    substitutions, so ``y`` beside ``x[1:]`` is read over ``n - 1`` and ``Y`` beside
    ``X @ W`` shares its batch axis. ``name(param, axis)`` names the symbols that remain.
    """

    def __init__(self, graph, name):
        self.subst = {}
        self.bindings = []  # (symbol, parameter number, axis)
        for _ in range(8):  # each pass may find relations; a few passes settle them
            before = dict(self.subst)
            self._pass(graph)
            if self.subst == before:
                break
        # give the symbols that remain their final names, in parameter order
        rename = {}
        for symbol, p, axis in self.bindings:
            if symbol not in self.subst:
                rename[symbol] = name(p, axis)
        self.bindings = [(rename[s], p, axis) for s, p, axis in self.bindings if s in rename]
        self.env = {rename[s]: v for s, v in self.env.items() if s in rename}
        self.forms = {k: tuple(f.rename(rename) for f in fs) for k, fs in self.forms.items()}
        self.offsets = {n: f.rename(rename) for n, f in self.offsets.items()}
        self.by_value = {}

    def _pass(self, graph):
        self.env, self.forms, self.by_value, self.bindings = {}, {}, {}, []
        self.offsets = {}  # where concatenated pieces meet: number -> form
        for node in graph.inputs:  # every symbol has its value before any form is checked
            _, _, p, _ = node.attrs
            for axis, n in enumerate(node.shape):
                if n != 1:
                    self.env[f"#{p}.{axis}"] = n
                    self.bindings.append((f"#{p}.{axis}", p, axis))
        for node in graph.nodes:
            resolved = tuple(f.substitute(self.subst) for f in self._forms(node))
            for form, n in zip(resolved, node.shape):
                assert form.value(self.env) == n, (node, form, n)
                if not form.is_const:
                    self.by_value.setdefault(n, form)
            self.forms[node.id] = resolved

    def relate(self, a, b):
        """Two forms the trace requires to be one length: solve ``a - b = 0`` for a symbol of
        unit coefficient (the later argument's axis, so earlier names stay) and substitute it
        away, so ``m - 1 == n - 1`` reads every ``m`` as ``n``."""
        a, b = a.substitute(self.subst), b.substitute(self.subst)
        diff = a - b
        units = [s for s, c in diff.terms if c in (1, -1)]
        if not units:
            return
        symbol = max(units, key=_symbol_order)
        coeff = dict(diff.terms)[symbol]
        # diff = coeff * symbol + rest = 0  ->  symbol = -rest / coeff = -coeff * rest
        rest = diff - Lin.sym(symbol).scale(coeff)
        self.subst[symbol] = rest.scale(-coeff)
        self.subst = {s: f.substitute(self.subst) for s, f in self.subst.items()}

    def _broadcast_forms(self, node, args):
        """An elementwise result's forms: each axis is the axis of the arguments that have it
        (related: they are one length). A constant array's axes are numbers, and would pin a
        symbol to the traced length; they are used only where no argument has a symbol."""
        shape = node.shape
        out = []
        for axis in range(len(shape)):
            symbolic = []
            for a, f in zip(node.args, args):
                k = axis - (len(shape) - len(a.shape))
                if k >= 0 and a.shape[k] == shape[axis] != 1 and not f[k].is_const:
                    symbolic.append(f[k])
            for other in symbolic[1:]:
                self.relate(symbolic[0], other)
            # a length no argument has a symbol for (np.eye's, a stepped slice's): any form
            # of that value (every form is checked at the traced shapes), else the number
            out.append(symbolic[0] if symbolic else self._match(shape[axis]))
        return tuple(out)

    def _joined_forms(self, node, args):
        """concatenate: the pieces' lengths added along the axis; stack: a new axis of the
        number of pieces. The other axes are one length in every piece (constants aside)."""
        axis = node.attrs[0]
        cut = node.op == "concatenate"
        rest = [f[:axis] + f[axis + 1:] if cut else f for f in args]
        symbolic = [r for r, a in zip(rest, node.args) if resolve(a).op != "const"] or rest
        shared = symbolic[0]
        for r in symbolic[1:]:
            for a, b in zip(shared, r):
                self.relate(a, b)
        if not cut:
            return shared[:axis] + (Lin(len(args)),) + shared[axis:]
        total = Lin(0)
        for f in args:
            total = total + f[axis]
            if not total.is_const:  # the adjoint cuts the pieces apart here
                self.offsets.setdefault(total.value(self.env), total)
        return shared[:axis] + (total,) + shared[axis:]

    def _match(self, n, preferred=()):
        for form in preferred:
            if form.value(self.env) == n and not form.is_const:
                return form
        if n == 1:
            return Lin(1)
        return self.by_value.get(n, Lin(n))

    def _target(self, shape, source_forms):
        return tuple(self._match(n, source_forms) for n in shape)

    def _forms(self, node):
        shape, op = node.shape, node.op
        if op == "input":
            if not shape:
                return ()
            _, name, p, _ = node.attrs
            forms = []
            for axis, n in enumerate(shape):
                if n == 1:
                    forms.append(Lin(1))
                    continue
                forms.append(Lin.sym(f"#{p}.{axis}").substitute(self.subst))
            return tuple(forms)
        if not shape:
            return ()
        if op == "const":
            return tuple(Lin(n) for n in shape)
        args = [self.forms[a.id] for a in node.args]
        if op in _ELEMENTWISE or op == "alias":
            return self._broadcast_forms(node, args)
        if op == "getitem":
            return tuple(f for f, _ in _index_axes(node.args[0].shape, args[0], node.attrs[0],
                                                   self.offsets))
        if op in _SAME_SHAPE:
            return args[_SAME_SHAPE[op]]
        if op == "eigh_values":
            return args[0][:1]
        if op == "put_along" and node.args[0].shape == shape:
            return args[0]
        if op in ("concatenate", "stack"):
            return self._joined_forms(node, args)
        if op == "pack":  # as many elements as scalars, whatever the argument shapes
            return (Lin(len(args)),)
        if op in _REDUCTIONS:
            axis, keepdims = node.attrs
            axes = range(len(node.args[0].shape)) if axis is None else axis
            src = args[0]
            return tuple(Lin(1) if i in axes else f for i, f in enumerate(src)
                         if keepdims or i not in axes)
        if op == "transpose":
            return tuple(args[0][i] for i in node.attrs[0])
        if op == "matmul":
            a, b = args
            self.relate(a[-1], b[0])
            return tuple(a[:-1]) + tuple(b[1:])
        flat = [f for fs in args for f in fs]
        return self._target(shape, flat)


def _weight(node):
    if node.op == "pow":
        k = resolve(node.args[1]).value
        if isinstance(k, float) and k.is_integer() and 0 <= k <= 3:
            return 1  # x ** 2 is a multiplication
    return _WEIGHT.get(node.op, 1)


def _symbol_order(symbol):
    p, axis = symbol[1:].split(".")
    return int(p), int(axis)


def _index_axes(shape, forms, canon, offsets=None):
    """For a getitem of an array of ``shape``: per result axis ``(length form, source)`` where
    source is ``(source axis, start form, step)`` or None for a new unit axis; plus the ints."""
    items = list(canon)
    if ("e",) in items:
        at = items.index(("e",))
        used = sum(1 for it in items if it[0] in ("i", "s"))
        items[at:at + 1] = [("s", None, None, None)] * (len(shape) - used)
    used = sum(1 for it in items if it[0] in ("i", "s"))
    items += [("s", None, None, None)] * (len(shape) - used)
    out, axis = [], 0
    for item in items:
        if item[0] == "n":
            out.append((Lin(1), None))
        elif item[0] == "i":
            axis += 1
        else:
            start, step, count = _slice_parts(item, shape[axis], forms[axis], offsets)
            out.append((count, (axis, start, step)))
            axis += 1
    return out


def _indexed(shape, forms, canon, idx, offsets=None):
    """The index into an array of ``shape`` that ``array[canon]`` reads (or a scatter writes)
    at the element ``idx`` of the indexed result: ints fixed, slices as start + step * i."""
    inner = [None] * len(shape)
    for axis, f in _int_indices(shape, forms, canon).items():
        inner[axis] = f
    for (_, source), index in zip(_index_axes(shape, forms, canon, offsets), idx):
        if source is not None:
            axis, start, step = source
            inner[axis] = start + index.scale(step)
    return tuple(inner)


def _int_indices(shape, forms, canon):
    """Source axis -> index form for the integer items of a getitem."""
    items = list(canon)
    if ("e",) in items:
        at = items.index(("e",))
        used = sum(1 for it in items if it[0] in ("i", "s"))
        items[at:at + 1] = [("s", None, None, None)] * (len(shape) - used)
    fixed, axis = {}, 0
    for item in items:
        if item[0] == "i":
            k = item[1]
            fixed[axis] = Lin(k) if k >= 0 else forms[axis] + k
            axis += 1
        elif item[0] == "s":
            axis += 1
    return fixed


# --- the plan: what is materialised, and the loop nests -------------------------------------
class _Nest:
    def __init__(self, space, loop_vars):
        self.space = space          # tuple of Lin
        self.vars = loop_vars       # loop variable names
        self.prelude = []           # statements before the loop (allocations, accumulators)
        self.hoisted = []           # loop-invariant statements, also before the loop
        self.lane = []              # statements before the innermost loop, in the outer ones
        self.body = []              # statements inside the innermost loop
        self.locals = {}            # (node id, index texts) -> local name


class _Lowering:
    def __init__(self, graph, func_name, out_params=False):
        from .custom import strip

        graph = strip(graph)  # a user-defined rule's node is its value once differentiated
        self.g = graph
        self.func_name = func_name
        self.out_params = out_params
        for node in graph.nodes:
            if node.op not in RULES:
                why = NOT_LOWERED.get(node.op, "no entry in gradc.lower.RULES")
                raise LoweringError(f"the loop lowering has no rule for {node.op} ({why})")
        names, self.absorbed, _ = assign_names(graph, graph.name)
        self.alias_targets = {graph.nodes[a].args[0].id for a in self.absorbed}
        # Keep the names that mean something (parameters, the user's, adjoints, the result);
        # loop locals and unnamed arrays get fresh counters in the order they are written.
        named = {n.id for n in graph.nodes if n.op in ("input", "alias")} | set(graph.names) \
            | self.alias_targets | {resolve(graph.outputs[0]).id if graph.outputs else -1}
        self.names = {k: v for k, v in names.items() if not isinstance(k, int) or k in named}
        self.namer = _Namer()
        self.namer.taken.update(v for k, v in self.names.items() if isinstance(k, int))
        self.namer.taken.update(names["params"])
        self.np = self.namer.fresh("np")
        self.numba = self.namer.fresh("numba")
        self._consts = self._spread_constants()
        self._dim_names = {}
        self.shapes = Shapes(graph, self._dim_symbol)
        self.uses = self._uses()
        self.outputs = {resolve(o).id for o in graph.outputs}
        self.lines = []             # (kind, payload): ("stmt", text) or ("nest", _Nest)
        self.constants = []         # constant arrays, bound before everything else
        self.where = {}             # node id -> unit index where its value is complete
        self.loop_names = {}
        self.used_symbols = set()
        self.vectors = set()        # node ids computed by NumPy's SIMD loop (see _vector)
        self.written = {}           # node id -> _Written, for arrays _materialise writes
        self.helpers = {}           # op -> name of the helper that calls its loop (_helpers)
        self.materialised = self._decide()
        self.buffers = {}           # accumulation root id -> buffer name
        self.leaf_root = self._accumulations()

    # names ----------------------------------------------------------------------------------
    def _dim_symbol(self, p, axis):
        key = (p, axis)
        if key not in self._dim_names:
            order = len(self._dim_names)
            wanted = "nmkpqrsuvw"[order] if order < 10 else f"n{order}"
            self._dim_names[key] = self.namer.fresh(wanted)
        return self._dim_names[key]

    def _loop_var(self, depth):
        if depth not in self.loop_names:
            wanted = "ijklabcdef"[depth] if depth < 10 else f"i{depth}"
            self.loop_names[depth] = self.namer.fresh(wanted)
        return self.loop_names[depth]

    def name(self, node):
        if node.id not in self.names:
            self.names[node.id] = self.namer.fresh()
        return self.names[node.id]

    def const_value(self, node):
        """The number an array node holds at every index (a spread constant), or None."""
        return self._consts[resolve(node).id]

    def _spread_constants(self):
        """Node id -> :meth:`const_value`, for every node, in one pass in graph order
        (arguments first; no recursion down a deep graph)."""
        consts = {}
        for node in self.g.nodes:
            value = None
            if node.op == "alias":
                value = consts[resolve(node).id]
            elif node.op == "const" and not node.shape:
                value = node.attrs[0]
            elif node.op == "const" and _uniform(node.attrs[0]):
                value = float(node.attrs[0].flat[0])  # np.ones((m, 1)) in a rule: 1.0
            elif node.op in ("fill", "broadcast_to", "reshape", "transpose", "getitem"):
                value = consts[resolve(node.args[0]).id]
            elif node.op in _ELEMENTWISE and OPS[node.op].result == "float":
                values = [consts[resolve(a).id] for a in node.args]
                if all(v is not None for v in values):
                    with np.errstate(all="ignore"):
                        value = float(OPS[node.op].compute(values, node.attrs))
            consts[node.id] = value
        return consts

    # analysis -------------------------------------------------------------------------------
    def _uses(self):
        count = {n.id: 0 for n in self.g.nodes}
        for n in self.g.nodes:
            for a in n.args:
                count[resolve(a).id] += 1
        for o in self.g.outputs:
            count[resolve(o).id] += 1
        return count

    def _cost(self, node, memo):
        """How many elementwise nodes recomputing ``node`` inline would evaluate: its weight
        and its arguments' costs (a subtree reached twice counts twice, as it is recomputed
        twice), through views; an array in memory (a vectorised call, anything that is not
        elementwise) costs nothing to read. ``memo`` (node id -> cost) may be shared between
        calls: a node's cost depends only on the graph. A loop over an explicit stack, not
        recursion: a 300-step array loop is 600 nested elementwise nodes."""
        root = resolve(node)
        stack = [root]
        while stack:
            n = stack[-1]
            if n.id in memo:
                stack.pop()
                continue
            if _vectorised(n) or not (n.op in _ELEMENTWISE or n.op in _VIEWS):
                memo[n.id] = 0
                stack.pop()
                continue
            args = [resolve(a) for a in n.args]
            pending = [a for a in args if a.id not in memo]
            if pending:
                stack.extend(pending)
                continue
            memo[n.id] = sum(memo[a.id] for a in args) + (
                _weight(n) if n.op in _ELEMENTWISE else 0)
            stack.pop()
        return memo[root.id]

    def _decide(self):
        """Array nodes kept in memory: outputs, arguments of products and reshapes, and
        expensive elementwise values used more than once or read under a broadcast."""
        keep = set()
        for node in self.g.nodes:
            for a in _memory_args(node):
                keep.add(a.id)
        for o in self.g.outputs:
            keep.add(resolve(o).id)
        for node in self.g.nodes:  # computed by statements or their own loops: in memory
            if node.shape and (node.op in ("matmul", "zeros") or node.op in _REDUCTIONS
                               or node.op in _CALLS or node.op in _RUNNING
                               or node.op in _ASSEMBLED):
                keep.add(node.id)
            if _vectorised(node) and self.const_value(node) is None:
                self.vectors.add(node.id)  # one call of NumPy's loop on its argument (_vector)
                keep.add(node.id)
                keep.add(_view_base(node.args[0]).id)
        costs = {}  # shared by every _cost call below (a node's cost is the graph's)
        for node in self.g.nodes:
            if node.op in _ELEMENTWISE and node.shape:
                cost = self._cost(node, costs)
                if cost > 8 and self.uses[node.id] > 1:
                    keep.add(node.id)
            if node.op in _ELEMENTWISE or node.op in _REDUCTIONS:
                for a in node.args:
                    a = resolve(a)
                    if a.op in _ELEMENTWISE and a.shape and a.shape != node.shape and \
                            self._cost(a, costs) > 1 and int(np.prod(a.shape)) < int(np.prod(node.shape)):
                        keep.add(a.id)  # read under a broadcast: compute it once
            if node.op == "reshape" and not _unit_reshape(node):
                keep.add(resolve(node.args[0]).id)  # a view of an array in memory
                keep.add(node.id)
        self._cap_inline_depth(keep)
        keep = {k for k in keep if self._node(k).op not in ("input", "const")}
        return keep

    def _cap_inline_depth(self, keep):
        """Keep in memory every MAX_INLINE_DEPTH-th level of a chain of inlined array nodes
        (``x = x * a + b`` three hundred times), so that no expression nests deeper: the
        emitted text stays within Python's parser (200 nested parentheses) and the passes
        over an expression (read, scheduling) stay shallow. Readers of a kept node read it
        from memory, in the loop that writes it."""
        depth = {}
        for node in self.g.nodes:
            # (an alias is never read as itself: readers resolve it to the node it names)
            if not node.shape or node.id in keep or node.op in ("input", "const") or not (
                    node.op in _ELEMENTWISE or node.op in _VIEWS):
                continue
            d = 1 + max((depth.get(resolve(a).id, 0) for a in node.args), default=0)
            if d > MAX_INLINE_DEPTH:
                keep.add(node.id)
                d = 0
            depth[node.id] = d

    def _node(self, nid):
        return self.g.nodes[nid]

    def _accumulations(self):
        """Leaf id -> root id for sums of scatters: ``scatter(a) + scatter(b)`` is one zeroed
        buffer that each leaf's loop adds into."""
        leaf_root, claimed = {}, set()
        for node in reversed(self.g.nodes):  # the outermost sum first: it takes the inner ones
            if node.op != "add" or not node.shape or node.id in claimed:
                continue
            leaves, inner, stack, ok = [], [], [node], True
            while stack:
                item = stack.pop()
                for a in reversed(item.args):
                    a = resolve(a)
                    if a.shape != node.shape:
                        ok = False
                    elif a.op == "add" and self.uses[a.id] == 1 and a.id not in self.outputs:
                        stack.append(a)
                        inner.append(a.id)
                    else:
                        leaves.append(a)
            if not ok or not any(l.op == "scatter" for l in leaves):
                continue
            if any(l.op != "scatter" and not _inline_op(l) for l in leaves):
                continue  # a leaf computed by a statement (a product, a reshape): plain adds
            if any(self.uses[l.id] != 1 or l.id in self.outputs for l in leaves):
                continue
            for l in leaves:
                leaf_root[l.id] = node.id
            claimed.update(inner)
            claimed.update(l.id for l in leaves)
            self.materialised.add(node.id)
        for node in self.g.nodes:
            if node.op == "scatter" and node.id not in leaf_root:
                leaf_root[node.id] = node.id  # a lone scatter: its own zeroed buffer
                self.materialised.add(node.id)
        return leaf_root

    # reading values -------------------------------------------------------------------------
    def read(self, node, idx, nest):
        """Source text of ``node``'s element at index ``idx`` (a tuple of Lin over loop
        variables) inside ``nest``; returns ``(text, invariant)``."""
        node = resolve(node)
        if not node.shape:
            return self.scalar(node), True
        value = self.const_value(node) if node.id not in self.materialised else None
        if value is not None:
            return self._literal(value), True
        if node.op == "const":
            mask = _index_mask(node.attrs[0])
            if mask is not None:  # np.eye, np.tri in a rule: a comparison of the indices
                return _mask_text(mask, idx, self._literal(1.0), self._literal(0.0)), False
            return self._element(self.const_name(node), idx), False
        if node.op == "input" or node.id in self.materialised:
            found = self.written.get(node.id)
            if found is not None and found.nest is nest and idx == self._identity(nest):
                return found.local, False  # written in this loop at this index (_deps_unit)
            return self._element(self.name(node), idx), False
        op = node.op
        if op == "take_along":
            return self._gather(node, idx, nest), False
        if op == "getitem":
            src = node.args[0]
            inner = _indexed(src.shape, self.shapes.forms[resolve(src).id], node.attrs[0], idx,
                             self.shapes.offsets)
            return self.read(src, inner, nest)
        if op in ("broadcast_to", "fill", "alias") or op in _ELEMENTWISE:
            return self._broadcast_read(node, idx, nest)
        if op == "transpose":
            axes = node.attrs[0]
            inner = [None] * len(axes)
            for k, a in enumerate(axes):
                inner[a] = idx[k]
            return self.read(node.args[0], tuple(inner), nest)
        if op == "reshape" and _unit_reshape(node):
            src = node.args[0]
            kept = [ix for ix, n in zip(idx, node.shape) if n != 1]
            inner, it = [], iter(kept)
            for n in src.shape:
                inner.append(Lin(0) if n == 1 else next(it))
            return self.read(src, tuple(inner), nest)
        raise LoweringError(f"cannot read {node.op} inline")

    def _gather(self, node, idx, nest):
        """``take_along(x, order)`` at ``idx``: x read where the order says along the axis
        (``x[i, int(order[i, j])]``); other axes of length 1 in x are broadcast."""
        x, order = node.args
        axis = node.attrs[0]
        where, _ = self.read(order, idx, nest)
        parts = []
        for k, n in enumerate(resolve(x).shape):
            if k == axis:
                parts.append(f"int({where})")
            else:
                parts.append(Lin(0) if n == 1 and node.shape[k] != 1 else idx[k])
        return self._element(self._array_arg(x), parts)

    def _broadcast_read(self, node, idx, nest):
        """An elementwise node (or broadcast) at ``idx``: its arguments read at their
        broadcast indices, one local statement per (node, index) in the nest."""
        if node.op in ("broadcast_to", "fill"):
            src = node.args[0]
            return self.read(src, _broadcast_index(src.shape, node.shape, idx), nest)
        texts, invariant = [], True
        spec = OPS[node.op]
        for i, a in enumerate(node.args):
            text, inv = self.read(a, _broadcast_index(resolve(a).shape, node.shape, idx), nest)
            value = self.const_value(a)
            if value is not None:
                text = self._literal(value, i in spec.int_args)
            texts.append(text)
            invariant = invariant and inv
        key = (node.id, tuple(i.text() for i in idx) if not invariant else ())
        found = nest.locals.get(key)
        if found is not None:
            return found, invariant
        text = spec.render(texts, node.attrs, self.np)
        local = self.namer.fresh(self.names.get(node.id))
        (nest.hoisted if invariant else nest.body).append(f"{local} = {text}")
        nest.locals[key] = local
        return local, invariant

    def _identity(self, nest):
        """The loop nest's own index; an axis of length 1 has no loop and reads index 0."""
        return tuple(Lin(0) if bound == Lin(1) else Lin.sym(v)
                     for v, bound in zip(nest.vars, nest.space))

    def _element(self, name, idx):
        """``name[...]`` at ``idx``: Lin forms, or source text (a computed index, ``:``)."""
        if not idx:
            return name
        parts = []
        for ix in idx:
            if isinstance(ix, str):
                parts.append(ix)
                continue
            self.used_symbols.update(s for s in ix.symbols() if s not in self.loop_names.values())
            parts.append(ix.text())
        return f"{name}[{', '.join(parts)}]"

    def scalar(self, node):
        node = resolve(node)
        if node.op == "const":
            return self._literal(node.attrs[0])
        return self.name(node)

    def _literal(self, value, as_int=False):
        """A number as source. In a float32 program a float is ``np.float32(c)``: numba types
        a bare ``c`` as float64, and ``c * x[i]`` would compute in float64 what NumPy computes
        in float32 (a Python float is a weak scalar there); the integral exponent of ``**``
        stays an int (numba multiplies)."""
        text = literal(value, self.np, as_int)
        whole = as_int and float(value).is_integer() and 0 <= value < 2**31
        if self.g.dtype == "float32" and isinstance(value, float) and not whole:
            inner = text[1:-1] if text.startswith("(") else text  # (-c): no second parentheses
            return f"{self.np}.float32({inner})"
        return text

    def const_name(self, node):
        return self.name(node) if node.id in self.names else self._const_array(node)

    def _const_array(self, node):
        """A constant array as a literal, bound at the top of the function: it may first be
        read inside a nest that is already in ``lines``."""
        name = self.namer.fresh("c")
        self.names[node.id] = name
        self.constants.append(f"{name} = {_array_literal(node.attrs[0], self.np, self.g.dtype)}")
        return name

    # scheduling -------------------------------------------------------------------------------
    def _deps_unit(self, node, space=None):
        """The latest unit that ``node``'s inline closure depends on (-1: only arguments).

        ``space``: the reader loops over ``space`` and reads ``node`` at the loop's own
        index. An array that a nest over that space writes at its own index (_materialise)
        is then readable inside that nest, after its write: it counts as the unit before, so
        the reader joins that loop (``r[i] = ...; acc += r[i] ** 2`` is one loop, not two).
        Views and broadcasts read other indices, so below them the units count in full."""
        node = resolve(node)
        if node.op in ("input", "const"):
            return -1
        if node.id in self.materialised or not node.shape:
            unit = self.where.get(node.id, -1)
            if space is not None and node.id in self.written and \
                    self.shapes.forms[node.id] == space:
                return unit - 1
            return unit
        return max((self._deps_unit(a, self._same_index(node, a, space)) for a in node.args),
                   default=-1)

    def _same_index(self, node, arg, space):
        """``space`` where elementwise ``node`` reads ``arg`` at its own index, else None."""
        if space is None or node.op not in _ELEMENTWISE and node.op != "alias":
            return None
        return space if resolve(arg).shape == node.shape else None

    def _nest_for(self, space, after):
        """The first nest over ``space`` that starts after unit ``after``, or a new one."""
        for k, (kind, item) in enumerate(self.lines):
            if k > after and kind == "nest" and item.space == space:
                return k, item
        nest = _Nest(space, [self._loop_var(d) for d in range(len(space))])
        self.lines.append(("nest", nest))
        return len(self.lines) - 1, nest

    def _shape_text(self, forms):
        dims = [f.text() for f in forms]
        for f in forms:
            self.used_symbols.update(f.symbols())
        return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"

    def _alloc(self, shape_forms, zero=True):
        shape = self._shape_text(shape_forms)
        fn = "zeros" if zero else "empty"
        dt = "" if self.g.dtype == "float64" else f", {self.np}.{self.g.dtype}"
        return f"{self.np}.{fn}({shape}{dt})"

    def _is_out(self, node):
        return self.out_params and node.id in self.out_names

    def run(self):
        self.out_names = {}
        if self.out_params:
            for k, o in enumerate(self.g.outputs):
                o = resolve(o)
                if o.shape and o.id not in self.out_names and o.op not in ("input", "const"):
                    self.out_names[o.id] = self.names[o.id]
        for node in self.g.nodes:
            if node.op in ("input", "const") or node.op == "alias":
                if node.op == "alias" and not node.shape and node.id not in self.absorbed \
                        and resolve(node).op != "const":
                    self._scalar_stmt(node)
                continue
            if node.id in self.leaf_root:
                self._leaf(node)
                continue
            if node.op in _REDUCTIONS:
                self._reduce(node)
            elif node.op == "matmul":
                self._matmul(node)
            elif node.op in _CALLS:
                self._call(node)
            elif node.id in self.vectors:
                self._vector(node)
            elif node.op in _RUNNING:
                self._running(node)
            elif node.op in _ASSEMBLED:
                self._assemble(node)
            elif not node.shape and node.op == "getitem":
                self._scalar_read(node)
            elif not node.shape:
                self._scalar_stmt(node)
            elif node.op == "zeros":
                self._array_stmt(node, self._alloc(self.shapes.forms[node.id]))
            elif node.op == "reshape" and not _unit_reshape(node):
                self._reshape(node)
            elif node.id in self.buffers:
                continue  # a sum of scatters: its leaves (earlier nodes) wrote it
            elif node.id in self.materialised:
                self._materialise(node)
        return self._source()

    def _stmt(self, node, text):
        self.lines.append(("stmt", text))
        self.where[node.id] = len(self.lines) - 1

    def _array_stmt(self, node, text):
        """``node = text`` for a statement's value; a caller's out buffer is written into
        (binding its name to a new array would leave the buffer as it was)."""
        name = self.name(node)
        if node.shape and self._is_out(node):
            self._stmt(node, f"{name}[...] = {text}")
        else:
            self._stmt(node, f"{name} = {text}")

    def _scalar_stmt(self, node):
        """A scalar node as one statement, as the scalar emitter writes it (``dv = dJ * 3.0``)."""
        if node.op == "alias":  # an adjoint's name for a value computed under another name
            arg = node.args[0]
            text = self.names[arg.id] if arg.id in self.names else self.scalar(arg)
            self._stmt(node, f"{self.name(node)} = {text}")
            return
        if node.op == "count":  # from the argument shapes, so every length shares the source
            self._stmt(node, f"{self.name(node)} = float({self._count_text(node)})")
            return
        spec = OPS[node.op]
        args = []
        for i, a in enumerate(node.args):
            a = resolve(a) if resolve(a).op == "const" else a
            if a.op == "const":
                args.append(self._literal(a.attrs[0], i in spec.int_args))
            elif a.op == "alias" and a.id in self.absorbed:
                args.append(self.name(resolve(a)))
            else:
                args.append(self.names[a.id])
        self._stmt(node, f"{self.name(node)} = {spec.render(args, node.attrs, self.np)}")

    def _scalar_read(self, node):
        """One element of an array (``x[0]``, ``y[-1]``), read as a loop reads it: the array
        may be computed inline (an expression, not an array in memory)."""
        src = resolve(node.args[0])
        k, nest = self._nest_for((), self._deps_unit(src))
        index = _indexed(src.shape, self.shapes.forms[src.id], node.attrs[0], (),
                         self.shapes.offsets)
        text, _ = self.read(src, index, nest)
        nest.body.append(f"{self.name(node)} = {text}")
        self.where[node.id] = k

    def _count_text(self, node):
        """The number of elements of a count's reduced axes, as source over the shapes."""
        forms = self.shapes.forms[node.args[0].id]
        axis = node.attrs[0]
        picked = [forms[a] for a in (range(len(forms)) if axis is None else axis)]
        for f in picked:
            self.used_symbols.update(f.symbols())
        texts = [f.text() for f in picked if f != Lin(1)]
        return " * ".join(f"({t})" if len(texts) > 1 and not t.isidentifier() else t
                          for t in texts) or "1"

    def _materialise(self, node):
        space = self.shapes.forms[node.id]
        after = max((self._deps_unit(a, self._same_index(node, a, space)) for a in node.args),
                    default=-1)
        k, nest = self._nest_for(space, after)
        name = self.name(node)
        alloc = None
        if not self._is_out(node):
            reused = self._reused(node, space)
            # an argument's buffer, read at this index only, takes the result in its place
            # (t1 = X @ W + b is one buffer, not two); else a new one
            alloc = f"{name} = " + (self.name(reused) if reused is not None
                                    else self._alloc(space, zero=False))
            nest.prelude.append(alloc)
        idx = self._identity(nest)
        text, _ = self._compute(node, idx, nest)
        store = f"{self._element(name, idx)} = {text}"
        nest.body.append(store)
        self.where[node.id] = k
        if text.isidentifier():  # later readers in this loop, at this index, read the local
            self.written[node.id] = _Written(nest, text, alloc, store)

    def _reused(self, node, space):
        """The argument of elementwise ``node`` whose buffer its loop may overwrite: one it
        reads at the loop's own index (its shape), with no other reader (_float_buffer)."""
        if node.op not in _ELEMENTWISE:
            return None
        for a in node.args:
            a = resolve(a)
            if a.shape == node.shape and self.shapes.forms[a.id] == space and \
                    self._float_buffer(a):
                return a
        return None

    def _compute(self, node, idx, nest):
        """``node``'s element computed from its arguments, even if the node is kept in memory."""
        saved = node.id in self.materialised
        self.materialised.discard(node.id)
        try:
            return self.read(node, idx, nest)
        finally:
            if saved:
                self.materialised.add(node.id)

    def _reduce(self, node):
        src = node.args[0]
        src_r = resolve(src)
        axis, keepdims = node.attrs
        axes = range(len(src_r.shape)) if axis is None else axis
        space = self.shapes.forms[src_r.id]
        after = self._deps_unit(src, space)
        k, nest = self._nest_for(space, after)
        name = self.name(node)
        op = node.op
        init = _REDUCTIONS[op].format(np=self.np)
        if node.shape:
            forms = self.shapes.forms[node.id]
            if self._is_out(node):
                nest.prelude.append(f"{name}[...] = {init}")
            else:
                nest.prelude.append(f"{name} = {self._alloc(forms, zero=False)}")
                nest.prelude.append(f"{name}[...] = {init}")
        else:
            nest.prelude.append(f"{name} = {init}")
        idx = self._identity(nest)
        value, _ = self.read(src, idx, nest)
        out_idx = tuple(Lin(0) if i in axes else ix for i, ix in enumerate(idx)
                        if keepdims or i not in axes)
        target = self._element(name, out_idx) if node.shape else name
        if op in ("sum", "prod"):
            nest.body.append(f"{target} {'+' if op == 'sum' else '*'}= {value}")
        else:
            better = ">" if op == "max" else "<"
            # NumPy's max/min propagate NaN: once the accumulator is NaN it stays NaN
            nest.body.append(f"if {value} {better} {target} or {value} != {value}:")
            nest.body.append(f"    {target} = {value}")
        self.where[node.id] = k

    def _leaf(self, node):
        """One term of an accumulation buffer (or a lone scatter): added in its own loop."""
        root = self._node(self.leaf_root[node.id])
        buf = self.buffers.get(root.id)
        if node.op == "scatter":
            value_node, index, _ = node.args[0], node.attrs[0], node.attrs[1]
            space = self.shapes.forms[resolve(value_node).id]
        else:
            value_node, index = node, None
            space = self.shapes.forms[node.id]
        after = self._deps_unit(value_node, space)
        if buf is not None:
            after = max(after, self.where[root.id] - 1)
        k, nest = self._nest_for(space, after)
        if buf is None:
            buf = self.buffers[root.id] = self.name(root)
            if self._is_out(root):
                nest.prelude.append(f"{buf}[...] = 0.0")
            else:
                nest.prelude.append(f"{buf} = {self._alloc(self.shapes.forms[root.id])}")
            self.where[root.id] = k
        idx = self._identity(nest)
        if node.op == "scatter":
            value, _ = self.read(value_node, idx, nest)
            target = _indexed(root.shape, self.shapes.forms[root.id], index, idx,
                              self.shapes.offsets)
            nest.body.append(f"{self._element(buf, target)} += {value}")
        else:
            value, _ = self._compute(value_node, idx, nest)
            nest.body.append(f"{self._element(buf, idx)} += {value}")
        self.where[root.id] = max(self.where[root.id], k)

    def _array_arg(self, node):
        """An argument of np.dot / reshape: a name numba can take as an array."""
        node = resolve(node)
        if node.op in ("input",) or node.id in self.materialised:
            return self.name(node)
        if node.op == "const":
            return self.const_name(node)
        if node.op == "transpose" and len(node.shape) == 2:
            return f"{self._array_arg(node.args[0])}.T"
        if node.op == "reshape" and _unit_reshape(node):
            inner = self._array_arg(node.args[0])
            return f"{inner}.reshape({self._shape_text(self.shapes.forms[node.id])})"
        raise LoweringError(f"{node.op} is not an array numba's np.dot can take")

    def _matmul(self, node):
        a, b = (self._array_arg(x) for x in node.args)
        self._array_stmt(node, f"{self.np}.dot({a}, {b})")

    def _call(self, node):
        """A NumPy call numba compiles (_CALLS), on arrays in memory: one statement, or one
        per lane along the op's axis where numba takes 1-D arrays only."""
        call = _CALLS[node.op]
        args = [self._array_arg(a) if a.shape else self.scalar(a) for a in node.args]
        spec = OPS[node.op]
        if call.lane and len(node.shape) > 1:
            self._lane_call(node, call, args)
            return
        template = call.template or spec.template
        text = template.format(*args, np=self.np, **_attr_texts(spec, node))
        self._array_stmt(node, text)

    def _vector(self, node):
        """An array of a _VECTOR op: one call of a helper that runs NumPy's SIMD loop on the
        argument, which is in memory (see _helpers), into the node's own buffer, or into the
        argument's where nothing else reads the argument (no second buffer)."""
        arg = resolve(node.args[0])
        source = self._array_arg(arg)
        name = self.name(node)
        if self._is_out(node):
            pass  # the caller's buffer
        elif self._float_buffer(arg):
            self._stmt(node, f"{name} = {source}")
            source = name  # computed in place
        else:
            self._stmt(node, f"{name} = {self._alloc(self.shapes.forms[node.id], zero=False)}")
        if node.op not in self.helpers:
            self.helpers[node.op] = self.namer.fresh(f"vector_{node.op}")
        self._stmt(node, f"{self.helpers[node.op]}({source}, {name})")

    def _helpers(self):
        """The helpers _vector calls, one per op, as source before the function. numba
        compiles each into its caller (register_jitable); object mode is entered in a
        function of its own because numba 0.68 miscompiles two object-mode blocks under
        branches of one function ("Instruction does not dominate all uses"). In object mode
        a plain function runs NumPy's loop under np.errstate(all="ignore"): silent, as the
        loops around it are (numba's error_model="numpy"), with no warning and no
        FloatingPointError where the caller set np.seterr(all="raise")."""
        if not self.helpers:
            return []
        nb, np_ = self.numba, self.np
        loop = self.namer.fresh("numpy_loop")
        lines = [f"def {loop}(ufunc, a, out):",
                 "    # silent, as numba's loops are (error_model=\"numpy\")",
                 f"    with {np_}.errstate(all=\"ignore\"):",
                 "        ufunc(a, out=out)",
                 "",
                 ""]
        for op, name in self.helpers.items():
            lines += [
                f"@{nb}.extending.register_jitable",
                f"def {name}(a, out):",
                f"    # out = {np_}.{op}(a): a libm call per element below {_VECTOR_MIN} "
                "elements, NumPy's SIMD loop from there",
                f"    if a.size < {_VECTOR_MIN}:",
                "        for i in range(a.size):",
                f"            out.flat[i] = {np_}.{op}(a.flat[i])",
                "    else:",
                f"        with {nb}.objmode():",
                f"            {loop}({np_}.{op}, a, out)",
                "",
                "",
            ]
        return lines

    def _lane_call(self, node, call, args):
        """``out[i, :] = CALL(x[i, :])``: a loop nest over the axes but the op's own."""
        axis = node.attrs[0]
        forms = self.shapes.forms[node.id]
        space = tuple(Lin(1) if k == axis else f for k, f in enumerate(forms))
        nest = _Nest(space, [self._loop_var(d) for d in range(len(space))])
        self.lines.append(("nest", nest))
        name = self.name(node)
        if not self._is_out(node):
            dtype = f"{self.np}.{call.dtype or self.g.dtype}"
            nest.prelude.append(f"{name} = {self.np}.empty({self._shape_text(forms)}, {dtype})")
        lane = tuple(":" if k == axis else ix for k, ix in enumerate(self._identity(nest)))
        inner = [self._element(a, lane) for a in args]
        spec = OPS[node.op]
        text = call.template.format(*inner, np=self.np, **_attr_texts(spec, node))
        nest.body.append(f"{self._element(name, lane)} = {text}")
        self.where[node.id] = len(self.lines) - 1

    def _running(self, node):
        """cumsum / cumprod: the operand read in the loop nest, its running value written at
        every step. Along the innermost loop the running value is a local, reset before the
        loop for every lane (``acc += x[i, j]; out[i, j] = acc``); along an outer loop it is
        the element the previous step along the axis wrote (``out[i - 1, j]``)."""
        x, axis = node.args[0], node.attrs[0]
        space = self.shapes.forms[node.id]
        k, nest = self._nest_for(space, self._deps_unit(x, space))
        name = self.name(node)
        if not self._is_out(node):
            nest.prelude.append(f"{name} = {self._alloc(space, zero=False)}")
        idx = self._identity(nest)
        value, _ = self.read(x, idx, nest)
        target = self._element(name, idx)
        init, op = _RUNNING[node.op]
        if self.g.dtype == "float32":  # a float64 running value would make cumsum's sums float64
            init = f"{self.np}.float32({init})"
        looped = [d for d, bound in enumerate(space) if bound != Lin(1)]
        acc = self.namer.fresh("acc")
        if axis not in looped:  # an axis of length 1: the running value is the value
            nest.body.append(f"{target} = {value}")
        elif axis == looped[-1]:
            nest.lane.append(f"{acc} = {init}")
            nest.body.append(f"{acc} {op}= {value}")
            nest.body.append(f"{target} = {acc}")
        else:
            previous = tuple(ix - 1 if d == axis else ix for d, ix in enumerate(idx))
            nest.body.append(f"{acc} = {value}")
            nest.body.append(f"if {idx[axis].text()} > 0:")
            nest.body.append(f"    {acc} = {self._element(name, previous)} {op} {acc}")
            nest.body.append(f"{target} = {acc}")
        self.where[node.id] = k

    # arrays written piece by piece -----------------------------------------------------------
    def _assemble(self, node):
        """setitem, concatenate, stack, put_along: one buffer, then a loop per piece writing
        its elements where they go (see _pieces). A piece's loop may be one that other values
        share (the pieces of ``concatenate([x, x ** 2])`` are one loop); an ordered piece's
        loop comes after the loop of the piece before it (setitem's writes after the copy)."""
        name = self.name(node)
        forms = self.shapes.forms[node.id]
        start, pieces = self._pieces(node)
        allocate, floor, previous = start, -1, -1
        if not isinstance(start, str):  # the buffer of an array nothing else reads, taken over
            self._stmt(node, f"{name} = {self.name(start)}")
            allocate = floor = self.where[node.id]
        for piece in pieces:
            low = max(floor, previous) if piece.ordered else floor
            # the loop comes after what it reads: the value and what its target indexes with
            after = max([self._deps_unit(piece.value), low]
                        + [self._deps_unit(r) for r in piece.reads])
            k, nest = self._nest_for(piece.space, after)
            if isinstance(allocate, str):  # "zeros" or "empty", in the first piece's prelude
                if not self._is_out(node):
                    nest.prelude.append(f"{name} = {self._alloc(forms, allocate == 'zeros')}")
                elif allocate == "zeros":
                    nest.prelude.append(f"{name}[...] = 0.0")
                allocate, floor = None, k - 1
            idx = self._identity(nest)
            value = piece.value
            source = _broadcast_index(resolve(value).shape, piece.shape, idx)
            text, _ = self.read(value, source, nest)
            nest.body.append(f"{self._element(name, piece.target(idx, nest))} = {text}")
            previous = k
            self.where[node.id] = max(self.where.get(node.id, -1), k)

    def _pieces(self, node):
        """How ``node``'s buffer starts ("zeros", "empty", or a node whose buffer it takes
        over) and its pieces, in the order they are written."""
        op, args = node.op, [resolve(a) for a in node.args]
        # a piece's other axes are the result's (a constant piece's own are numbers)
        forms = self.shapes.forms[node.id]
        if op == "concatenate":
            axis, pieces, offset = node.attrs[0], [], Lin(0)
            for a in args:
                length = self.shapes.forms[a.id][axis]
                space = forms[:axis] + (length,) + forms[axis + 1:]
                pieces.append(_Piece(a, space, a.shape, _shifted(axis, offset)))
                offset = offset + length
            return "empty", pieces
        if op == "pack":  # each scalar written at its position
            return "empty", [_Piece(a, (), (), _inserted(0, Lin(k))) for k, a in enumerate(args)]
        if op == "stack":
            axis = node.attrs[0]
            space = forms[:axis] + forms[axis + 1:]
            return "empty", [_Piece(a, space, a.shape, _inserted(axis, Lin(k)))
                             for k, a in enumerate(args)]
        if op == "put_along":
            g, order = args
            axis = node.attrs[0]

            def target(idx, nest):  # out[i, int(order[i, j])] = g[i, j]
                at = f"int({self.read(order, idx, nest)[0]})"
                return tuple(at if k == axis else ix for k, ix in enumerate(idx))

            # the order argsort gives, over the whole shape, writes every element once
            full = order.op == "sort_order" and order.shape == node.shape
            return ("empty" if full else "zeros"), [
                _Piece(g, self.shapes.forms[g.id], g.shape, target, reads=(order,))]
        # setitem(x, v): x's elements, then v's (broadcast to the indexed part) where they go
        x, v = args
        index = node.attrs[0]
        x_forms = self.shapes.forms[x.id]
        offsets = self.shapes.offsets
        space = tuple(f for f, _ in _index_axes(x.shape, x_forms, index, offsets))
        part = OPS["getitem"].shape_of((index,), [x.shape])

        def target(idx, nest):
            return _indexed(x.shape, x_forms, index, idx, offsets)

        writes = _Piece(v, space, part, target, ordered=True)
        if self._owns_buffer(x) and not self._is_out(node):
            return x, [writes]
        return "empty", [_Piece(x, x_forms, x.shape, lambda idx, nest: idx), writes]

    def _owns_buffer(self, node):
        """True for an array this function allocated (not an argument, a constant or a view)
        that nothing but its one user reads: the user may write into it instead of a copy."""
        return (node.id in self.materialised and node.op != "reshape"
                and self.uses[node.id] == 1 and node.id not in self.outputs)

    def _float_buffer(self, node):
        """True where ``node``'s buffer may take an elementwise result in its place: an array
        of the program's float that this function allocated (a product, a loop's array,
        NumPy's loop's result) and that nothing but its one user reads. Not an argsort's
        integer order, whose elements would be truncated."""
        return self._owns_buffer(node) and (node.op == "matmul" or node.id in self.vectors
                                            or node.id in self.written)

    def _reshape(self, node):
        """A reshape that moves elements between axes: a view of its argument, which is in
        memory (an argument, a constant, or a value _decide keeps for it)."""
        src = resolve(node.args[0])
        if src.op == "const":
            arg = self.const_name(src)
        elif src.op == "input":
            arg = self.name(src)
        elif src.id in self.materialised:
            # numba's LAPACK calls return Fortran-ordered arrays, and numba 0.6x miscompiles
            # reads of a reshape of one (the elements come out in another order, while the
            # same array handed back to Python is right): reshape a C-ordered copy
            # (no copy for the C-ordered arrays the loops write)
            arg = f"{self.np}.ascontiguousarray({self.name(src)})"
        else:
            raise LoweringError("reshape of a value that is not in memory")
        self._array_stmt(node, f"{arg}.reshape({self._shape_text(self.shapes.forms[node.id])})")

    # source -------------------------------------------------------------------------------------
    def _return(self):
        def text(tree):
            if isinstance(tree, tuple):
                inner = ", ".join(text(t) for t in tree)
                return f"({inner},)" if len(tree) == 1 else f"({inner})"
            node = self.g.outputs[tree]
            target = resolve(node)
            if target.op == "const" and not target.shape:
                return literal(target.attrs[0], self.np)
            if target.op in ("input", "const") and target.shape:
                return f"{self.np}.copy({self.name(target) if target.op == 'input' else self.const_name(target)})"
            if not target.shape:
                return self.names[node.id] if node.op == "alias" and node.id in self.names \
                    and node.id not in self.absorbed else self.name(target)
            return self.name(target)

        ret = text(self.g.out_tree)
        if isinstance(self.g.out_tree, tuple):
            ret = ret[1:-1].rstrip(",") if len(self.g.out_tree) > 1 else ret
        return ret

    def _single_scalars(self):
        """In a float32 program, float arguments as float32 (``lr = np.float32(lr)``), as the
        NumPy-level code takes them: ``lr * dW[i, j]`` then computes in float32, not float64."""
        if self.g.dtype != "float32":
            return []
        names = self.names["params"]
        return [f"{names[node.attrs[2]]} = {self.np}.float32({names[node.attrs[2]]})"
                for node in self.g.inputs if not node.shape]

    def _drop_unread(self, params, ret):
        """Arrays _materialise wrote whose every reader joined the loop that writes them and
        read the element's local (see _deps_unit): their allocation and stores go, since no
        line reads them from memory."""
        candidates = [(nid, w) for nid, w in self.written.items()
                      if w.alloc is not None and nid not in self.outputs]
        if not candidates:
            return
        texts = [*params, ret, *self.constants]
        for kind, item in self.lines:
            texts += [item] if kind == "stmt" else \
                [*item.prelude, *item.hoisted, *item.lane, *item.body]
        # every word of every line counted once (not one scan of all lines per array: a
        # 300-step loop wrote 600 arrays into 2,700 lines)
        words = collections.Counter(w for t in texts for w in _WORD.findall(t))
        for nid, w in candidates:
            if words[self.name(self._node(nid))] == 2:  # the allocation and the store
                w.nest.prelude.remove(w.alloc)
                w.nest.body.remove(w.store)

    def _source(self):
        params = list(self.names["params"])
        if self.out_params:
            params += [self.out_names[k] for k in self.out_names]
        ret = self._return()
        self._drop_unread(params, ret)
        body = list(self.constants)
        for kind, item in self.lines:
            if kind == "stmt":
                body.append(item)
                continue
            body.extend(item.prelude)
            body.extend(item.hoisted)
            for s in item.space:
                self.used_symbols.update(s.symbols())
            looped = [(var, bound) for var, bound in zip(item.vars, item.space) if bound != Lin(1)]
            indent = ""
            for depth, (var, bound) in enumerate(looped):
                if depth == len(looped) - 1:  # a lane's statements, before its innermost loop
                    body.extend(indent + line for line in item.lane)
                body.append(f"{indent}for {var} in range({bound.text()}):")
                indent += "    "
            if not looped:
                body.extend(item.lane)
            body.extend(indent + line for line in item.body)
        binds = self._single_scalars()
        for symbol, p, axis in self.shapes.bindings:
            if symbol in self.used_symbols:
                binds.append(f"{symbol} = {self.names['params'][p]}.shape[{axis}]")
        lines = self._helpers() + [f"def {self.func_name}({', '.join(params)}):"]
        lines += ["    " + b for b in binds + body]
        lines.append(f"    return {ret}")
        return "\n".join(lines) + "\n"


def _attr_texts(spec, node):
    """The op's attributes as source text, as the op table prints them."""
    return {name: attr_text(name, value) for name, value in zip(spec.attrs, node.attrs)}


class _Written:
    """An array a loop writes at its own index: the loop, the local holding the element, and
    the allocation and store lines (dropped where nothing reads the array from memory)."""

    def __init__(self, nest, local, alloc, store):
        self.nest, self.local, self.alloc, self.store = nest, local, alloc, store


class _Piece:
    """A part of an assembled array: ``value`` (broadcast to ``shape``) written over ``space``
    (Lin forms) at ``target(idx, nest)``; ``ordered``: after the piece before it; ``reads``:
    the nodes ``target`` indexes with (put_along's order), whose statements the loop follows."""

    def __init__(self, value, space, shape, target, ordered=False, reads=()):
        self.value, self.space, self.shape = value, space, shape
        self.target, self.ordered, self.reads = target, ordered, reads


def _shifted(axis, offset):
    """The target of a concatenated piece: its index moved by ``offset`` along ``axis``."""
    return lambda idx, nest: tuple(ix + offset if k == axis else ix for k, ix in enumerate(idx))


def _inserted(axis, k):
    """The target of a stacked piece: ``k`` at ``axis``, the piece's index around it."""
    return lambda idx, nest: tuple(idx[:axis]) + (k,) + tuple(idx[axis:])


def _uniform(value):
    """True for a float array whose elements are one number, bitwise (signs of zero too)."""
    if value.dtype.kind != "f" or not value.size:
        return False
    first = value.flat[0]
    return bool(np.all(value == first) and np.all(np.signbit(value) == np.signbit(first)))


def _index_mask(value):
    """``(relation, k, kind)`` when the 2-D constant ``value`` of 0s and 1s compares its
    indices: ``j == i + k`` (np.eye), ``j <= i + k`` (np.tri, tril's mask) or ``j > i + k``
    (triu's); kind is "b" (bool) or "f" (float). Else None. Read as the comparison it costs
    no memory, and its source is the same at every size (cumprod's and linalg's rules build
    such masks; as literals they would be n * n numbers in the source)."""
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.size == 0 or \
            value.dtype.kind not in "bf" or not np.isin(value, (0, 1)).all():
        return None
    ones = value.astype(bool)
    i, j = np.indices(ones.shape)
    for relation, mask in (("==", ones), ("<=", ones), (">", ~ones)):
        row, col = mask[0], mask[:, 0]
        if not (row.any() or col.any()):
            continue
        # k from the first row (a k >= 0 puts the diagonal or the edge there) or column
        if row.any():
            k = int(np.argmax(row)) if relation == "==" else int(row.sum()) - 1
        else:
            k = -int(np.argmax(col))
        pattern = (j == i + k) if relation == "==" else (j <= i + k)
        if np.array_equal(pattern, mask):
            return relation, k, value.dtype.kind
    return None


def _mask_text(mask, idx, one="1.0", zero="0.0"):
    """The comparison an index mask stands for, at ``idx`` (``one``/``zero``: a float mask's
    numbers as the program's literals)."""
    relation, k, kind = mask
    text = f"{idx[1].text()} {relation} {(idx[0] + k).text()}"
    return f"({text})" if kind == "b" else f"({one} if {text} else {zero})"


def _broadcast_index(src_shape, out_shape, idx):
    lead = len(out_shape) - len(src_shape)
    return tuple(Lin(0) if n == 1 and out_shape[lead + k] != 1 else idx[lead + k]
                 for k, n in enumerate(src_shape))


def _vectorised(node):
    """True for an array of a _VECTOR op: computed by NumPy's loop (_Lowering._vector)."""
    return node.op in _VECTOR and bool(node.shape)


def _inline_op(node):
    """True for ops the lowering computes at an index inside a loop (no statement of their own)."""
    return not _vectorised(node) and node.op in _ELEMENTWISE or node.op == "take_along" or node.op in _VIEWS and (
        node.op != "reshape" or _unit_reshape(node))


def _view_base(node):
    """The array under 2-D transposes and unit reshapes: what must be in memory for a call to
    take ``node`` (``base.T``, ``base.reshape(...)``, see _Lowering._array_arg)."""
    node = resolve(node)
    while node.op == "transpose" and len(node.shape) == 2 or \
            node.op == "reshape" and _unit_reshape(node):
        node = resolve(node.args[0])
    return node


def _array_literal(value, np_alias, dtype="float64"):
    """A constant array as source numba types: ``np.array([...])``, except an array without
    elements (``np.diff`` of one element), whose empty list literal numba cannot type: that
    is ``np.zeros(shape)`` of its dtype."""
    if value.size:
        return literal(value, np_alias, dtype=dtype)
    kind = "bool_" if value.dtype == bool else dtype
    suffix = "" if kind == "float64" else f", dtype={np_alias}.{kind}"
    return f"{np_alias}.zeros({tuple(value.shape)!r}{suffix})"


def _memory_args(node):
    """The nodes that must be arrays in memory for ``node``'s rule: the arguments of np.dot
    and of NumPy calls (views of them are fine), the array a take_along reads and the order
    that take_along and put_along index with (their indices are computed)."""
    if node.op == "matmul" or node.op in _CALLS:
        return [_view_base(a) for a in node.args if a.shape]
    if node.op == "take_along":
        return [_view_base(node.args[0]), resolve(node.args[1])]
    if node.op == "put_along":
        return [resolve(node.args[1])]
    return []


def _unit_reshape(node):
    """A reshape that only adds or removes axes of length 1 (an index mapping)."""
    src = node.args[0].shape
    return [n for n in src if n != 1] == [n for n in node.shape if n != 1]


def _import_line(module, alias):
    return f"import {module}" if module == alias else f"import {module} as {alias}"


def lower_function(graph, func_name, out_params=False):
    """The ``def`` of ``graph`` as fused loop nests (see the module docstring)."""
    return _Lowering(graph, func_name, out_params).run()


def lower_module(graph, fn_name, kind, origin=None, out_params=False):
    """The module numba compiles for ``graph`` as loops: ``(source, function name)``.

    ``out_params``: array results are written into caller arrays, extra parameters
    after the arguments (one per distinct array output, in output order).
    """
    func_name = f"{fn_name}__{kind}__loops" + ("__out" if out_params else "")
    lowering = _Lowering(graph, func_name, out_params)
    body = lowering.run()
    src = [
        *module_header(kind, fn_name, origin, ", as loops"),
        _import_line("numpy", lowering.np),
        *([_import_line("numba", lowering.numba)] if lowering.helpers else []),
        "",
        "",
        body.rstrip("\n"),
        "",
    ]
    return "\n".join(src), func_name
