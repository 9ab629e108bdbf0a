"""The SymPy front end: ``from_sympy(expr, symbols)`` compiles a SymPy expression's value and gradient.

For models derived in SymPy (``sympy.physics.mechanics`` Lagrangians, energies,
cost functions): the expression tree is converted once into a straight-line
*plan* of gradc ops, and the plan is traced like any Python function, so the
result is an ordinary :class:`~gradc.api.GradcFunction` (``.source``,
``.graph``, numba backend, disk cache). gradc differentiates the converted
graph; ``sympy.diff`` is never called on the user's expression.

The conversion is an iterative post-order walk with memoisation by object
identity, so shared subexpressions are converted once and expressions
thousands of levels deep convert without a ``RecursionError`` (SymPy's own
printing, ``free_symbols`` and ``diff`` recurse; nothing here calls them).

Symbol names are arbitrary strings in SymPy (``x[0]``, ``lambda``, ``q'``);
they become parameter names only when they are safe identifiers, and are
renamed otherwise. No text from the expression ever reaches the emitted source
except those checked identifiers.

>>> import sympy
>>> x, y = sympy.symbols("x y")
>>> f = from_sympy(x * sympy.sin(y) - x / 2, [x, y], backend="python")
>>> f(2.0, 0.0)
(-1.0, (-0.5, 2.0))
"""
from __future__ import annotations

import functools
import inspect
import keyword
import math
import re
import unicodedata

import numpy as np

from . import errors
from .ops import OPS
from .trace import identifier_or_none

__all__ = ["from_sympy", "to_sympy"]

_KINDS = ("value_and_grad", "grad", "compile")


def _sympy():
    try:
        import sympy
    except ImportError as exc:  # pragma: no cover - sympy is a test dependency
        raise errors.GradcError("gradc.from_sympy needs SymPy: pip install sympy.") from exc
    return sympy


# --------------------------------------------------------------------------------------
# The plan: a straight-line program over gradc ops
# --------------------------------------------------------------------------------------
# A reference ``r`` is an ``int`` (exactly: ``type(r) is int``) naming an earlier value
# (inputs first, then steps), or a constant: a ``float`` or a ``bool``.


def _key(ref):
    return (type(ref), repr(ref)) if type(ref) is float else (type(ref), ref)


class _Plan:
    def __init__(self, n_inputs):
        self.n_inputs = n_inputs
        self.steps: list[tuple[str, tuple]] = []
        self._memo: dict[tuple, object] = {}
        self.out = None

    def op(self, name, *args):
        """The reference of ``name(*args)``; constant arguments are folded at once."""
        if name == "where" and type(args[0]) is bool:  # a constant condition picks its branch
            return args[1] if args[0] else args[2]
        if all(type(a) is not int for a in args):
            with np.errstate(all="ignore"):
                value = OPS[name].impl(*args)
            return bool(value) if OPS[name].result == "bool" and name != "where" else float(value)
        key = (name,) + tuple(_key(a) for a in args)
        ref = self._memo.get(key)
        if ref is None:
            ref = self._memo[key] = self.n_inputs + len(self.steps)
            self.steps.append((name, args))
        return ref

    def replay(self, args):
        """Run the plan on ``args`` (gradc tracers while tracing, or plain floats)."""
        from .trace import apply

        values = list(args)
        for name, refs in self.steps:
            values.append(apply(name, *[values[r] if type(r) is int else r for r in refs]))
        out = self.out
        return values[out] if type(out) is int else out


class _V:
    """A converted float value: ``sign * ref``, or ``sign / ref`` when ``recip``.

    Keeping the sign and the reciprocal aside lets ``Add`` write ``a - b`` and ``Mul``
    write ``a / b`` instead of ``a + (-1.0 * b)`` and ``a * b ** (-1)``.
    """

    __slots__ = ("sign", "ref", "recip")

    def __init__(self, sign, ref, recip=False):
        self.sign, self.ref, self.recip = sign, ref, recip


class _Converter:
    """SymPy tree -> :class:`_Plan`, one handler per supported node type."""

    def __init__(self, sp, inputs):
        self.sp = sp
        self.inputs = inputs              # SymPy input object -> input position
        self.plan = _Plan(len(inputs))
        from sympy.core.function import AppliedUndef
        from sympy.tensor.indexed import Indexed

        self.input_types = (sp.Symbol, AppliedUndef, sp.Derivative, Indexed)
        self.functions = {
            sp.exp: "exp", sp.log: "log", sp.sin: "sin", sp.cos: "cos", sp.tan: "tan",
            sp.asin: "arcsin", sp.acos: "arccos", sp.atan: "arctan", sp.sinh: "sinh",
            sp.cosh: "cosh", sp.tanh: "tanh", sp.Abs: "abs", sp.sign: "sign",
            sp.atan2: "arctan2",
        }
        self.reciprocals = {sp.sec: "cos", sp.csc: "sin", sp.cot: "tan"}
        try:  # SymPy's C-style functions, where available
            from sympy.codegen import cfunctions as cf

            self.functions.update({cf.log1p: "log1p", cf.expm1: "expm1", cf.hypot: "hypot",
                                   cf.Sqrt: "sqrt"})
        except ImportError:  # pragma: no cover
            pass
        self.relations = {
            sp.StrictLessThan: "lt", sp.LessThan: "le", sp.StrictGreaterThan: "gt",
            sp.GreaterThan: "ge", sp.Equality: "eq", sp.Unequality: "ne",
        }

    # --- the walk ---------------------------------------------------------------------
    def convert(self, expr):
        """The plan computing ``expr``: an iterative post-order walk, memoised by identity."""
        memo: dict[int, tuple] = {}     # id(node) -> (node, value); the node keeps the id alive
        stack = [(expr, None, None)]
        while stack:
            node, handler, kids = stack.pop()
            if id(node) in memo:
                continue
            if handler is None:
                leaf = self.leaf(node)
                if leaf is not None:
                    memo[id(node)] = (node, leaf)
                    continue
                handler, kids = self.handler(node)
                stack.append((node, handler, kids))
                stack.extend((k, None, None) for k in reversed(kids) if id(k) not in memo)
            else:
                memo[id(node)] = (node, handler(node, [memo[id(k)][1] for k in kids]))
        result = memo[id(expr)][1]
        if not isinstance(result, _V):
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.from_sympy needs a real-valued expression, but this "
                f"one is a condition ({type(expr).__name__}); wrap it in a Piecewise to make it "
                "a number.")
        self.plan.out = self.value(result)
        return self.plan

    def leaf(self, node):
        """The value of an input, number or boolean constant; None for inner nodes."""
        sp = self.sp
        if isinstance(node, self.input_types):
            position = self.inputs.get(node)
            if position is not None:
                return _V(1, position)
            if isinstance(node, sp.Symbol):
                self.unknown(node)
            return None  # reported by handler()
        if node.is_Number or node.is_NumberSymbol:
            try:
                value = float(node)
            except TypeError:
                self.unsupported(node, "it is not a real number")
            except OverflowError:  # an Integer beyond the float range
                value = math.inf if node > 0 else -math.inf
            return _V(-1, -value) if value < 0 else _V(1, value)
        if node is sp.true or node is sp.false:
            return bool(node)
        return None

    def handler(self, node):
        """``(handler, children)`` for an inner node, or a gradc error naming its type."""
        sp = self.sp
        cls = type(node)
        if cls in self.functions:
            name = self.functions[cls]
            if len(node.args) != OPS[name].arity:
                self.unsupported(node, f"it has {len(node.args)} arguments")
            return functools.partial(self.function, name), node.args
        if cls in self.reciprocals:
            return functools.partial(self.reciprocal, self.reciprocals[cls]), node.args
        if cls is sp.Add:
            return self.add, node.args
        if cls is sp.Mul:
            return self.mul, node.args
        if cls is sp.Pow:
            return self.pow, node.args
        if cls in (sp.Max, sp.Min):
            return functools.partial(self.chain, "maximum" if cls is sp.Max else "minimum"), node.args
        if cls is sp.Piecewise:
            return self.piecewise, [part for pair in node.args for part in (pair.expr, pair.cond)]
        if cls in self.relations:
            return functools.partial(self.condition, self.relations[cls]), node.args
        if cls in (sp.And, sp.Or):
            return functools.partial(self.condition, "and" if cls is sp.And else "or"), node.args
        if cls is sp.Not:
            return functools.partial(self.condition, "not"), node.args
        if isinstance(node, self.input_types) and not (
                isinstance(node, sp.Derivative) and not isinstance(node.expr, self.input_types)):
            self.unknown(node)
        self.unsupported(node)

    # --- values -------------------------------------------------------------------------
    def number(self, v):
        """``v``, checked to be a number rather than a condition."""
        if not isinstance(v, _V):
            raise errors.ArgumentError(
                f"{errors.where()}: a condition (a comparison, And/Or/Not) is used as a number "
                "in the SymPy expression; use Piecewise((a, condition), (b, True)).")
        return v

    def value(self, v):
        """The reference computing ``v`` (applying its reciprocal and sign)."""
        ref = self.number(v).ref
        if v.recip:
            ref = self.plan.op("div", 1.0, ref)
        if v.sign < 0:
            ref = self.plan.op("neg", ref)
        return ref

    def cond(self, v):
        if not isinstance(v, bool) and not (isinstance(v, tuple) and v[0] == "cond"):
            raise errors.ArgumentError(
                f"{errors.where()}: a number is used as a condition in the SymPy expression "
                "(a Piecewise condition or And/Or/Not argument must be a comparison).")
        return v if isinstance(v, bool) else v[1]

    def _product(self, refs):
        total = refs[0]
        for r in refs[1:]:
            total = self.plan.op("mul", total, r)
        return total

    # --- handlers: (node, converted children) -> value ------------------------------------
    def function(self, name, node, args):
        return _V(1, self.plan.op(name, *map(self.value, args)))

    def reciprocal(self, name, node, args):
        return _V(1, self.plan.op(name, self.value(args[0])), recip=True)

    def chain(self, name, node, args):
        refs = [self.value(a) for a in args]
        total = refs[0]
        for r in refs[1:]:
            total = self.plan.op(name, total, r)
        return _V(1, total)

    def add(self, node, args):
        args = [self.number(a) for a in args]
        terms = [(a.sign, self.value(_V(1, a.ref, a.recip))) for a in args]
        # Constants last (SymPy puts them first: ``x - 1`` is Add(-1, x)), then start
        # with a positive term so that ``-x + y`` is written ``y - x``.
        terms = ([t for t in terms if type(t[1]) is int] + [t for t in terms if type(t[1]) is not int])
        first = next((i for i, t in enumerate(terms) if t[0] > 0), 0)
        sign, total = terms.pop(first)
        for s, ref in terms:
            total = self.plan.op("add" if s == sign else "sub", total, ref)
        return _V(sign, total)

    def mul(self, node, args):
        sign, numerator, denominator = 1, [], []
        for factor, a in zip(node.args, map(self.number, args)):
            sign *= a.sign
            if factor.is_Rational and not factor.is_Integer:  # 3*x/2: a Rational coefficient
                p, q = abs(int(factor.p)), int(factor.q)
                if p != 1:
                    numerator.append(float(p))
                denominator.append(float(q))
            elif a.recip:
                denominator.append(a.ref)
            elif not (type(a.ref) is float and a.ref == 1.0):
                numerator.append(a.ref)
        if not denominator:
            return _V(sign, self._product(numerator or [1.0]))
        den = self._product(denominator)
        if not numerator:
            return _V(sign, den, recip=True)
        return _V(sign, self.plan.op("div", self._product(numerator), den))

    def pow(self, node, args):
        base, exponent = node.args
        b = self.value(args[0])
        if exponent.is_Number:
            e = float(exponent)
            if math.isfinite(e):
                magnitude = abs(e)
                if magnitude == 0.5:
                    ref = self.plan.op("sqrt", b)
                elif magnitude == 1.0:
                    ref = b
                else:
                    ref = self.plan.op("pow", b, magnitude)
                return _V(1, ref, recip=e < 0)
        return _V(1, self.plan.op("pow", b, self.value(args[1])))

    def piecewise(self, node, args):
        pairs = [(args[i], self.cond(args[i + 1])) for i in range(0, len(args), 2)]
        expr, cond = pairs[-1]
        # A Piecewise without a final ``True`` branch is undefined (NaN) elsewhere.
        total = self.value(expr) if cond is True else self.plan.op(
            "where", cond, self.value(expr), math.nan)
        for expr, cond in reversed(pairs[:-1]):
            total = self.plan.op("where", cond, self.value(expr), total)
        return _V(1, total)

    def condition(self, name, node, args):
        if name in ("and", "or", "not"):
            refs = [self.cond(a) for a in args]
        else:
            refs = [self.value(a) for a in args]
        total = self.plan.op(name, *refs[:OPS[name].arity])
        for r in refs[OPS[name].arity:]:
            total = self.plan.op(name, total, r)
        return total if isinstance(total, bool) else ("cond", total)

    # --- errors -------------------------------------------------------------------------
    def unknown(self, node):
        known = ", ".join(_describe(s) for s in self.inputs) or "none"
        raise errors.ArgumentError(
            f"{errors.where()}: the SymPy expression uses {_describe(node)}, which is not one "
            f"of the symbols given to gradc.from_sympy (given: {known}). Add it to the symbols, "
            f"or substitute a number for it first (expr.subs(...)).")

    def unsupported(self, node, why=None):
        sp = self.sp
        name = type(node).__name__
        hints = {
            "Derivative": " Evaluate it first with expr.doit(), or pass it in `symbols` if it is "
                          "a variable of its own (a generalized speed).",
            "Integral": " Evaluate it first with expr.doit().",
            "ImaginaryUnit": " gradc works with real numbers only.",
        }
        hint = hints.get(name, "")
        from sympy.core.function import AppliedUndef

        if isinstance(node, AppliedUndef):
            hint = (" It is an undefined function; pass it in `symbols` or replace it with a "
                    "symbol (expr.xreplace({f(t): f_sym})).")
        what = f"SymPy {name}" + (f" ({why})" if why else "")
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: gradc.from_sympy cannot convert {what}.{hint} Supported: "
            f"{SUPPORTED}.")


SUPPORTED = (
    "Symbol (one of the given symbols), numbers (Integer, Rational, Float, pi, E, oo, nan, ...), "
    "Add, Mul, Pow (integer, rational and symbolic exponents; sqrt), exp, log, sin, cos, tan, "
    "sec, csc, cot, asin, acos, atan, atan2, sinh, cosh, tanh, Abs, sign, Max, Min, Piecewise, "
    "Lt, Le, Gt, Ge, Eq, Ne, And, Or, Not, true, false, and sympy.codegen's log1p, expm1, hypot, "
    "Sqrt")


def _describe(node):
    """A short, safe description of a symbol-like node (never prints a deep tree)."""
    sp = _sympy()
    if isinstance(node, sp.Symbol):
        return f"symbol {node.name!r}"
    try:
        return repr(str(node)[:60])
    except RecursionError:  # pragma: no cover
        return type(node).__name__


# --------------------------------------------------------------------------------------
# Parameter names
# --------------------------------------------------------------------------------------
def _wanted_name(sym):
    """The name a symbol-like input asks for (before sanitizing)."""
    sp = _sympy()
    from sympy.core.function import AppliedUndef
    from sympy.tensor.indexed import Indexed

    if isinstance(sym, sp.Symbol):
        return sym.name
    if isinstance(sym, AppliedUndef):
        return type(sym).__name__                      # q(t) -> q
    if isinstance(sym, sp.Derivative) and isinstance(sym.expr, AppliedUndef):
        return type(sym.expr).__name__ + "d" * int(sym.derivative_count)  # q'(t) -> qd
    if isinstance(sym, Indexed):
        return "_".join([str(sym.base.label)] + [str(i) for i in sym.indices])
    return str(sym)


def _sanitize(name):
    """An ASCII identifier made from ``name``: unsafe characters become ``_``."""
    text = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "s"
    if text[0].isdigit():
        text = "s_" + text
    if keyword.iskeyword(text) or text == "__debug__":
        text += "_"
    return text


def parameter_names(symbols):
    """Unique identifiers for ``symbols``: a symbol's own name when it is a safe identifier
    (these win collisions), else a sanitized one.

    >>> import sympy
    >>> parameter_names([sympy.Symbol(n) for n in ("x", "lambda", "x[0]", "x_0", "a\\nb")])
    ['x', 'lambda_', 'x_0_1', 'x_0', 'a_b']
    """
    wanted = [unicodedata.normalize("NFKC", _wanted_name(s)) for s in symbols]
    # identifier_or_none also bounds long names, so the signature shows the emitted names.
    names: list = [identifier_or_none(w) for w in wanted]
    taken = set()
    for i, n in enumerate(names):  # safe names first, in order; a repeat is renamed below
        if n is not None and n not in taken:
            taken.add(n)
        else:
            names[i] = None
    for i, n in enumerate(names):
        if n is None:
            base = identifier_or_none(wanted[i]) or identifier_or_none(_sanitize(wanted[i]))
            n, k = base, 0
            while n in taken:
                k += 1
                n = f"{base}_{k}"
            taken.add(n)
            names[i] = n
    return names


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
def _as_symbols(sp, symbols):
    from sympy.core.function import AppliedUndef
    from sympy.tensor.indexed import Indexed

    if isinstance(symbols, sp.Basic):
        symbols = [symbols]
    try:
        symbols = list(symbols)
    except TypeError:
        raise errors.ArgumentError(
            f"{errors.where()}: gradc.from_sympy needs a list of SymPy symbols, not "
            f"{type(symbols).__name__}.") from None
    positions = {}
    for i, s in enumerate(symbols):
        ok = isinstance(s, (sp.Symbol, AppliedUndef, Indexed)) or (
            isinstance(s, sp.Derivative) and isinstance(s.expr, AppliedUndef))
        if not ok:
            raise errors.ArgumentError(
                f"{errors.where()}: symbols[{i}] is a {type(s).__name__}; gradc.from_sympy "
                "differentiates with respect to SymPy Symbols (or undefined functions such as "
                "dynamicsymbols q(t) and their derivatives, or Indexed x[i]).")
        if s in positions:
            raise errors.ArgumentError(
                f"{errors.where()}: {_describe(s)} appears twice in the symbols given to "
                "gradc.from_sympy.")
        positions[s] = i
    return symbols, positions


def from_sympy(expr, symbols, backend="numba", *, kind="value_and_grad", name="sympy_expr"):
    """Compile a SymPy expression's value and gradient with respect to ``symbols``.

    Returns a :class:`~gradc.GradcFunction` taking one float per symbol, in order:
    ``f(*values) -> (value, (d/ds1, d/ds2, ...))`` (a bare gradient for one symbol),
    exactly like :func:`gradc.value_and_grad`. ``kind`` may also be ``"grad"`` or
    ``"compile"`` (the value only). ``name`` names the emitted function, as Python reads
    identifiers (NFKC-normalised, long names shortened); ``"sympy_expr"`` if it is no
    identifier. Symbols whose names are not Python identifiers
    (``x[0]``, ``lambda``) get sanitized parameter names; ``inspect.signature`` of the
    result shows them.

    Every symbol of ``expr`` must be in ``symbols``; ``dynamicsymbols`` such as
    ``q(t)`` and ``q(t).diff(t)`` may be listed directly.
    """
    sp = _sympy()
    if kind not in _KINDS:
        raise errors.ArgumentError(f"kind must be one of {_KINDS}, not {kind!r}.")
    if isinstance(expr, str):
        raise errors.ArgumentError(
            f"{errors.where()}: gradc.from_sympy needs a SymPy expression, not a string; "
            "parse it yourself with sympy.parse_expr if you trust it.")
    if not isinstance(expr, sp.Basic):
        try:
            expr = sp.sympify(expr, strict=True)
        except (sp.SympifyError, TypeError, ValueError):
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.from_sympy needs a scalar SymPy expression, not "
                f"{type(expr).__name__}.") from None
    if not isinstance(expr, (sp.Expr, sp.logic.boolalg.Boolean)) or isinstance(
            expr, sp.MatrixBase) or getattr(expr, "is_Matrix", False):
        raise errors.ArgumentError(
            f"{errors.where()}: gradc.from_sympy needs a scalar SymPy expression, not a "
            f"{type(expr).__name__}; convert each entry separately.")
    symbols, positions = _as_symbols(sp, symbols)
    plan = _Converter(sp, positions).convert(expr)
    params = parameter_names(symbols)
    # The name as emitted source defines it (NFKC-normalised, bounded): ``ℌ`` becomes ``H``.
    fn_name = identifier_or_none(name) or "sympy_expr"
    program = functools.partial(_run, plan)
    program.__signature__ = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params])
    program.__name__ = program.__qualname__ = fn_name
    program.__doc__ = (f"A SymPy expression of {len(params)} variable(s) "
                       f"({', '.join(params)}), converted by gradc.from_sympy.")
    from .api import GradcFunction

    return GradcFunction(program, kind, None, backend)


def _run(plan, *args):
    return plan.replay(args)


def to_sympy(graph, symbols=None):
    """The SymPy expression(s) a gradc Graph (or GradcFunction) computes, from each op's
    ``sympy`` meaning; the outputs nest like the graph's return value.

    ``symbols`` (optional) replaces the inputs, in order; by default each input becomes
    ``sympy.Symbol(<its name>)``. Useful as an oracle for small graphs (SymPy itself
    recurses on deep expressions).
    """
    sp = _sympy()
    graph = getattr(graph, "graph", graph)
    if symbols is not None:
        symbols = list(symbols)
        if len(symbols) != len(graph.inputs):
            raise errors.ArgumentError(
                f"to_sympy: the graph has {len(graph.inputs)} inputs, {len(symbols)} symbols given.")
    values = {}
    for node in graph.nodes:
        if node.op == "input":
            position, label = node.attrs[0], node.attrs[1]
            values[node.id] = symbols[position] if symbols is not None else sp.Symbol(label)
        elif node.op == "const":
            values[node.id] = _sympy_number(sp, node.attrs[0])
        else:
            rule = OPS[node.op].sympy
            if rule is None:  # pragma: no cover - every op has one
                raise errors.UnsupportedFunctionError(f"to_sympy: op {node.op!r} has no SymPy form.")
            values[node.id] = rule(*(values[a.id] for a in node.args))

    def build(tree):
        if isinstance(tree, tuple):
            return tuple(build(t) for t in tree)
        return values[graph.outputs[tree].id]

    return build(graph.out_tree)


def _sympy_number(sp, value):
    if isinstance(value, bool):
        return sp.true if value else sp.false
    if math.isnan(value):
        return sp.nan
    if math.isinf(value):
        return sp.oo if value > 0 else -sp.oo
    if value.is_integer():
        return sp.Integer(int(value))
    if (value * 1024).is_integer():  # 0.5, 0.25, 1.5: exact and readable
        return sp.Rational(value)
    return sp.Float(value)
