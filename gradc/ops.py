"""THE op table: every operation gradc knows, each defined in exactly one entry.

An entry says how the op prints in emitted source (``template``), how it computes
on concrete numbers (``impl``, NumPy semantics, used by constant folding and the
interpreter), its derivative as a rule that *builds graph* (``vjp``), and its
SymPy meaning (``sympy``, the oracle in the tests and the bridge for
``gradc.from_sympy``).

A ``vjp`` rule receives the output's adjoint ``g``, the op's output ``out`` and
its inputs as traced values, and returns one cotangent per input (``None`` where
the input gets no gradient).  Because the rules build graph with ordinary
operators, gradients go through the same optimizer and printer as everything
else, and can be differentiated again.

>>> OPS["mul"].template
'{0} * {1}'
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import errors


def _sp():
    import sympy

    return sympy


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    template: str                       # "{0} * {1}"; "{np}" is the NumPy module alias
    impl: Callable                      # numbers -> number, NumPy semantics
    vjp: Optional[Callable] = None      # (g, out, *args) -> cotangent per arg
    sympy: Optional[Callable] = None    # sympy args -> sympy expression
    domain: tuple = (-2.0, 2.0)         # where the tests check the derivative
    result: str = "float"               # "float" or "bool"
    ufuncs: tuple = ()                  # NumPy ufunc names that dispatch here
    int_args: tuple = field(default=())  # positions where an integral constant prints as an int
    attrs: tuple = ()                   # names of the op's attributes, in Node.attrs order
    shape: Optional[Callable] = None    # (attrs, arg shapes) -> shape; None: elementwise broadcast
    array_template: Optional[str] = None  # used instead of ``template`` when the result is an array
    statement: bool = False             # template is whole statements assigning ``{out}``
    # Forward rule: (tangents, out, *args) -> the output's tangent (None: zero), a tangent None
    # where it is zero. None: derived from ``vjp`` (see gradc/forward.py), for elementwise ops.
    jvp: Optional[Callable] = None

    def shape_of(self, attrs, shapes):
        """The result's shape, or a ShapeError naming the shapes that do not fit."""
        try:
            if self.shape is None:
                return np.broadcast_shapes(*shapes) if shapes else ()
            return tuple(self.shape(attrs, *shapes))
        except (ValueError, IndexError) as exc:  # an axis or an index out of range: IndexError
            from .errors import ShapeError, where

            raise ShapeError(
                f"{where()}: {self.name} cannot combine shapes "
                f"{', '.join(map(str, shapes))} ({exc}).") from None

    def compute(self, values, attrs):
        """The op on concrete values (NumPy semantics), attributes appended."""
        return self.impl(*values, *attrs) if self.attrs else self.impl(*values)

    def render(self, args, attrs, np_alias, is_array=False, out=None, dtype="float64"):
        """This op applied to ``args`` (source text) as Python source; ``{dt}`` is the
        program's float dtype (``np.float64``)."""
        template = self.array_template if is_array and self.array_template else self.template
        named = {name: attr_text(name, value) for name, value in zip(self.attrs, attrs)}
        if template is _REDUCE and len(attrs[0] or ()) == 1 and not attrs[1]:
            # one axis, no keepdims: the form that reads best and that numba compiles
            template, named["axis"] = _REDUCE_ONE, str(attrs[0][0])
        return template.format(*args, np=np_alias, args=", ".join(args), out=out,
                               dt=f"{np_alias}.{dtype}", name=self.name, **named)


def attr_text(name, value):
    """An attribute as source text (indices print as ``1:3, None``)."""
    if name == "index":
        return index_text(value)
    if name == "dtype":
        return value  # printed after the NumPy alias: np.float32
    return repr(value)


# Constant indices are stored hashable: ("i", k), ("s", start, stop, step), ("n",), ("e",).
def canonical_index(index):
    """A hashable form of a basic NumPy index (ints, slices, None, Ellipsis), or None."""
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            out.append(("i", int(item)))
        elif isinstance(item, slice) and all(
                v is None or isinstance(v, (int, np.integer)) for v in (item.start, item.stop, item.step)):
            out.append(("s",) + tuple(None if v is None else int(v)
                                      for v in (item.start, item.stop, item.step)))
        elif item is None:
            out.append(("n",))
        elif item is Ellipsis:
            out.append(("e",))
        else:
            return None
    return tuple(out)


def python_index(canon):
    """The NumPy index a canonical index stands for."""
    items = []
    for item in canon:
        kind = item[0]
        items.append(item[1] if kind == "i" else slice(*item[1:]) if kind == "s"
                     else None if kind == "n" else Ellipsis)
    return tuple(items)


def index_text(canon):
    parts = []
    for item in canon:
        if item[0] == "i":
            parts.append(str(item[1]))
        elif item[0] == "s":
            start, stop, step = ("" if v is None else str(v) for v in item[1:])
            parts.append(f"{start}:{stop}" + (f":{step}" if step else ""))
        else:
            parts.append("None" if item[0] == "n" else "...")
    return ", ".join(parts) if parts else "()"


# Graph-building helpers used by the rules: each finds the traced argument and
# asks it to apply the named op, so rules read like the maths.
def call(name, args, attrs=()):
    """``name`` applied to ``args`` (attributes ``attrs``), built by the traced argument."""
    for a in args:
        if hasattr(a, "_apply"):
            return a._apply(name, args, attrs)
    raise TypeError(f"{name}: no traced argument")


def _builder(name):
    def build(*args):
        return call(name, args)

    build.__name__ = name
    return build


sin, cos, exp, log, sqrt, sign = map(_builder, ("sin", "cos", "exp", "log", "sqrt", "sign"))
cosh, sinh, sigmoid, where = map(_builder, ("cosh", "sinh", "sigmoid", "where"))
gt, ge, eq = map(_builder, ("gt", "ge", "eq"))
lt, ne, logical_and, logical_or = map(_builder, ("lt", "ne", "and", "or"))
absolute, hypot, copysign, floordiv, rint = map(_builder, ("abs", "hypot", "copysign",
                                                          "floordiv", "rint"))


def _power(x, y):
    """``x ** y`` as the emitted source computes it: on scalars NumPy's scalar ``**``
    (the C library's pow, as numba's), on arrays the ``power`` ufunc.

    The two differ at a few special points: on AVX-512 machines the ufunc gives
    ``power(-0.0, 0.5) = -0.0`` and ``power(-inf, 0.5) = nan``, C's pow +0.0 and inf.
    Constant folding uses this, so a folded ``x ** y`` is what the running code gives.
    """
    if np.ndim(x) == 0 and np.ndim(y) == 0:
        return np.asarray(x)[()] ** np.asarray(y)[()]  # NumPy scalars of their own dtype
    return np.power(x, y)


def _maximum(x, y):
    """NumPy's maximum, ties and NaNs decided as the scalar template spells it out."""
    if np.ndim(x) == 0 and np.ndim(y) == 0:
        return x if x > y or np.isnan(x) else y
    return np.maximum(x, y)


def _minimum(x, y):
    """NumPy's minimum, ties and NaNs decided as the scalar template spells it out."""
    if np.ndim(x) == 0 and np.ndim(y) == 0:
        return x if x < y or np.isnan(x) else y
    return np.minimum(x, y)


def _relu(x):
    return np.maximum(x, 0.0) + 0.0 if np.ndim(x) == 0 else np.maximum(x, 0.0)


def _pow_vjp(g, out, x, y):
    """``d(x**y) = y * x**(y-1) dx + log(x) * x**y dy``, exact where x is 0.

    At x = 0 both terms read 0 * inf = NaN although the derivatives exist: x**0 is 1
    for every x (its derivative is 0), and 0**y is 0 for every y > 0 (its derivative
    in y is 0). ``where`` selects those zeros; it is graph, so Hessians differentiate
    the rule again (and a constant exponent folds the selection away: ``x ** 2``
    still gives ``2.0 * x``).
    """
    dx = where(eq(y, 0.0), 0.0, g * y * x ** (y - 1.0))
    dy = where(eq(x, 0.0), 0.0, g * log(x) * out)
    return dx, dy


def _div_vjp(g, out, x, y):
    gy = g / y
    return gy, -(gy * out)


def _logaddexp0(x):
    return np.logaddexp(0.0, x)


# --- the rest of NumPy's real ufuncs (the ones HIPS autograd differentiates) ----------------
_LN2, _LN10 = math.log(2.0), math.log(10.0)


def _no_gradient(g, out, *args):
    """A step function (floor, x // y, ...): its derivative is zero wherever it exists."""
    return (None,) * len(args)


def _fmax(x, y):
    """NumPy's fmax (a NaN loses to a number), ties as in ``_maximum``: the second argument.

    NumPy itself is not consistent here: its array loop gives ``fmax(-0.0, 0.0) = 0.0``,
    its scalar fmax (C's) ``-0.0``; the scalar template spells out the array loop's choice,
    so unrolled, whole-array and loop code agree, and agree with ``maximum``.
    """
    if np.ndim(x) == 0 and np.ndim(y) == 0:
        return x if x > y or np.isnan(y) else y
    return np.fmax(x, y)


def _fmin(x, y):
    """NumPy's fmin (a NaN loses to a number), ties as in ``_minimum``: the second argument."""
    if np.ndim(x) == 0 and np.ndim(y) == 0:
        return x if x < y or np.isnan(y) else y
    return np.fmin(x, y)


def _nan_losing_vjp(first):
    """The rule of fmax/fmin: the gradient goes to the argument the result is.

    ``first(x, y)`` is the condition for the first argument: it wins when it is the larger
    (fmax) or smaller (fmin), on a tie (a subgradient, as for maximum/minimum), and when
    the second is NaN (``y != y``), which fmax and fmin ignore.
    """
    def vjp(g, out, x, y):
        wins = logical_or(first(x, y), ne(y, y))
        return where(wins, g, 0.0), where(wins, 0.0, g)

    return vjp


def _logaddexp_vjp(scale):
    """``d logaddexp(x, y)/dx = e^x / (e^x + e^y) = sigmoid(x - y)`` (for logaddexp2, with
    ``(x - y) * log 2``), and ``sigmoid(y - x)`` for y.

    The same numbers as autograd's ``exp(x - out)``, except where both arguments are the
    same infinity: there ``x - y`` is NaN, but the derivatives are 1/2 each (the limit along
    ``x = y``, where ``logaddexp(x, x) = x + log 2``). Finite ties are left to sigmoid, which
    gives 1/2 there too, so second derivatives stay right on the diagonal.
    """
    def vjp(g, out, x, y):
        same_infinity = logical_and(eq(x, y), eq(absolute(x), np.inf))
        dx, dy = x - y, y - x
        if scale != 1.0:
            dx, dy = dx * scale, dy * scale
        return (g * where(same_infinity, 0.5, sigmoid(dx)),
                g * where(same_infinity, 0.5, sigmoid(dy)))

    return vjp


# d sinc(x)/dx = sum over k >= 1 of (-1)**k 2k pi**2k x**(2k-1) / (2k+1)!, the odd powers'
# coefficients from x to x**11; used where |x| < _SINC_SERIES (see _sinc_vjp).
_SINC_SERIES = 0.1
_SINC_COEFFS = tuple((-1) ** k * 2 * k * math.pi ** (2 * k) / math.factorial(2 * k + 1)
                     for k in range(1, 7))


def _sinc_vjp(g, out, x):
    """``d sinc(x)/dx = (cos(pi x) - sinc(x)) / x``, and its Taylor series near 0.

    The quotient is 0/0 at x = 0 (where the derivative is 0) and loses digits close to it:
    ``cos(pi x)`` and ``sinc(x)`` agree in their leading ``1 - O(x**2)``, so its relative error
    is about ``1e-16 / (3.3 x**2)``. Below |x| = 0.1 the series (six terms, truncation error
    below 1e-16 relative) is used instead: exact to the last digits, and graph, so the
    Hessian differentiates it again.
    """
    x2 = x * x
    series = _SINC_COEFFS[-1]
    for c in reversed(_SINC_COEFFS[:-1]):
        series = series * x2 + c
    near = lt(absolute(x), _SINC_SERIES)
    return (g * where(near, x * series, (cos(x * math.pi) - out) / x),)


def _copysign_vjp(g, out, x, y):
    """``copysign(x, y) = |x|`` with y's sign: ``d/dx = sign(x) * copysign(1, y)``, which is 0
    at x = 0 as abs's is; flat in y (a jump at y = 0)."""
    return g * sign(x) * copysign(1.0, y), None


def _mod_vjp(g, out, x, y):
    """``x % y = x - y * (x // y)`` with ``x // y`` locally constant: ``d/dy = -(x // y)``.

    The quotient is NumPy's ``floor_divide``, the one its remainder is computed with, not
    ``floor(x / y)`` (autograd's): the rounded ``x / y`` can be an integer the true quotient
    is just below (``1.0 % 0.1`` is 0.0999..., ``1.0 // 0.1`` is 9, ``floor(1.0 / 0.1)`` 10).
    """
    return g, -(g * floordiv(x, y))


def _fmod_vjp(g, out, x, y):
    """``fmod(x, y) = x - n * y`` with the integer ``n = trunc(x / y)`` computed exactly:
    ``d/dy = -n``. ``n`` is recovered from the result, ``rint((x - out) / y)`` (exact for
    ``|n| < 2**51``), because ``trunc(x / y)`` rounds like ``floor(x / y)`` does (see _mod_vjp)."""
    return g, -(g * rint((x - out) / y))


@functools.lru_cache(maxsize=None)
def sympy_step(name):
    """SymPy's ``floor``/``ceiling``, or a ``trunc`` or half-to-even ``rint``, with derivative
    zero.

    SymPy leaves ``diff(floor(x), x)`` unevaluated (it is a sum of Dirac deltas); the ops'
    derivative is 0 wherever it exists, and the SymPy meaning has to say so for the tests
    and ``gradc.to_sympy`` users to differentiate it.
    """
    sp = _sp()
    zero = {"fdiff": lambda self, argindex=1: sp.S.Zero}
    if name in ("floor", "ceiling"):
        return type(name, (getattr(sp, name),), zero)

    def number(x):  # the integer a finite SymPy number rounds to
        if name == "trunc":
            return sp.Integer(int(x))
        below = sp.floor(x)
        rest = x - below
        return below + (1 if rest > sp.S.Half or rest == sp.S.Half and below % 2 else 0)

    def evaluate(cls, x):
        return number(x) if x.is_Number and x.is_finite else None

    return type(name, (sp.Function,), dict(zero, eval=classmethod(evaluate)))


_TABLE = [
    # --- arithmetic -------------------------------------------------------------------
    Op("add", 2, "{0} + {1}", np.add, lambda g, out, x, y: (g, g),
       lambda x, y: x + y, ufuncs=("add",)),
    Op("sub", 2, "{0} - {1}", np.subtract, lambda g, out, x, y: (g, -g),
       lambda x, y: x - y, ufuncs=("subtract",)),
    Op("mul", 2, "{0} * {1}", np.multiply, lambda g, out, x, y: (g * y, g * x),
       lambda x, y: x * y, ufuncs=("multiply",)),
    Op("div", 2, "{0} / {1}", np.divide, _div_vjp,
       lambda x, y: x / y, domain=(0.3, 2.0), ufuncs=("divide", "true_divide")),
    Op("pow", 2, "{0} ** {1}", _power, _pow_vjp,
       lambda x, y: x ** y, domain=(0.3, 2.0), ufuncs=("power", "float_power"), int_args=(1,)),
    Op("neg", 1, "-{0}", np.negative, lambda g, out, x: (-g,),
       lambda x: -x, ufuncs=("negative",)),
    Op("abs", 1, "{np}.abs({0})", np.abs, lambda g, out, x: (g * sign(x),),
       lambda x: _sp().Abs(x), ufuncs=("absolute", "fabs")),
    # NumPy's sign(-0.0) is +0.0, numba's -0.0: adding 0.0 makes both +0.0 (and changes
    # nothing else), so the two backends agree (and abs's derivative at -0.0 is +0.0).
    Op("sign", 1, "{np}.sign({0}) + 0.0", np.sign, lambda g, out, x: (None,),
       lambda x: _sp().sign(x), ufuncs=("sign",), array_template="{np}.sign({0})"),
    # --- elementary functions ----------------------------------------------------------
    Op("exp", 1, "{np}.exp({0})", np.exp, lambda g, out, x: (g * out,),
       lambda x: _sp().exp(x), ufuncs=("exp",)),
    Op("log", 1, "{np}.log({0})", np.log, lambda g, out, x: (g / x,),
       lambda x: _sp().log(x), domain=(0.2, 3.0), ufuncs=("log",)),
    Op("log1p", 1, "{np}.log1p({0})", np.log1p, lambda g, out, x: (g / (1.0 + x),),
       lambda x: _sp().log(1 + x), domain=(-0.5, 2.0), ufuncs=("log1p",)),
    Op("expm1", 1, "{np}.expm1({0})", np.expm1, lambda g, out, x: (g * (out + 1.0),),
       lambda x: _sp().exp(x) - 1, ufuncs=("expm1",)),
    Op("sqrt", 1, "{np}.sqrt({0})", np.sqrt, lambda g, out, x: (g * 0.5 / out,),
       lambda x: _sp().sqrt(x), domain=(0.2, 3.0), ufuncs=("sqrt",)),
    Op("sin", 1, "{np}.sin({0})", np.sin, lambda g, out, x: (g * cos(x),),
       lambda x: _sp().sin(x), ufuncs=("sin",)),
    Op("cos", 1, "{np}.cos({0})", np.cos, lambda g, out, x: (-(g * sin(x)),),
       lambda x: _sp().cos(x), ufuncs=("cos",)),
    Op("tan", 1, "{np}.tan({0})", np.tan, lambda g, out, x: (g * (1.0 + out * out),),
       lambda x: _sp().tan(x), domain=(-1.2, 1.2), ufuncs=("tan",)),
    Op("arcsin", 1, "{np}.arcsin({0})", np.arcsin, lambda g, out, x: (g / sqrt(1.0 - x * x),),
       lambda x: _sp().asin(x), domain=(-0.9, 0.9), ufuncs=("arcsin",)),
    Op("arccos", 1, "{np}.arccos({0})", np.arccos, lambda g, out, x: (-(g / sqrt(1.0 - x * x)),),
       lambda x: _sp().acos(x), domain=(-0.9, 0.9), ufuncs=("arccos",)),
    Op("arctan", 1, "{np}.arctan({0})", np.arctan, lambda g, out, x: (g / (1.0 + x * x),),
       lambda x: _sp().atan(x), ufuncs=("arctan",)),
    Op("arctan2", 2, "{np}.arctan2({0}, {1})", np.arctan2,
       lambda g, out, y, x: (g * x / (x * x + y * y), -(g * y / (x * x + y * y))),
       lambda y, x: _sp().atan2(y, x), domain=(0.2, 2.0), ufuncs=("arctan2",)),
    Op("sinh", 1, "{np}.sinh({0})", np.sinh, lambda g, out, x: (g * cosh(x),),
       lambda x: _sp().sinh(x), ufuncs=("sinh",)),
    Op("cosh", 1, "{np}.cosh({0})", np.cosh, lambda g, out, x: (g * sinh(x),),
       lambda x: _sp().cosh(x), ufuncs=("cosh",)),
    Op("tanh", 1, "{np}.tanh({0})", np.tanh, lambda g, out, x: (g * (1.0 - out * out),),
       lambda x: _sp().tanh(x), ufuncs=("tanh",)),
    Op("hypot", 2, "{np}.hypot({0}, {1})", np.hypot,
       lambda g, out, x, y: (g * x / out, g * y / out),
       lambda x, y: _sp().sqrt(x * x + y * y), domain=(0.2, 2.0), ufuncs=("hypot",)),
    # Ties send the whole gradient to the first argument (a subgradient). The scalar forms
    # spell out NumPy's choice (NaN wins; on a tie the second argument, so maximum(-0.0,
    # 0.0) is 0.0), which numba's np.maximum makes differently (the first).
    Op("maximum", 2, "({0} if {0} > {1} or {np}.isnan({0}) else {1})", _maximum,
       lambda g, out, x, y: (where(ge(x, y), g, 0.0), where(ge(x, y), 0.0, g)),
       lambda x, y: _sp().Max(x, y), ufuncs=("maximum",),
       array_template="{np}.maximum({0}, {1})"),
    Op("minimum", 2, "({0} if {0} < {1} or {np}.isnan({0}) else {1})", _minimum,
       lambda g, out, x, y: (where(ge(y, x), g, 0.0), where(ge(y, x), 0.0, g)),
       lambda x, y: _sp().Min(x, y), ufuncs=("minimum",),
       array_template="{np}.minimum({0}, {1})"),
    # --- the rest of NumPy's real ufuncs (HIPS autograd's list) ---------------------------
    Op("log2", 1, "{np}.log2({0})", np.log2, lambda g, out, x: (g / (x * _LN2),),
       lambda x: _sp().log(x) / _sp().log(2), domain=(0.2, 3.0), ufuncs=("log2",)),
    Op("log10", 1, "{np}.log10({0})", np.log10, lambda g, out, x: (g / (x * _LN10),),
       lambda x: _sp().log(x) / _sp().log(10), domain=(0.2, 3.0), ufuncs=("log10",)),
    Op("exp2", 1, "{np}.exp2({0})", np.exp2, lambda g, out, x: (g * out * _LN2,),
       lambda x: 2 ** x, ufuncs=("exp2",)),
    # 1 / (3 cbrt(x)**2): +inf at +-0.0, as the true derivative; 0 at +-inf.
    Op("cbrt", 1, "{np}.cbrt({0})", np.cbrt, lambda g, out, x: (g / (3.0 * (out * out)),),
       lambda x: _sp().sign(x) * _sp().Abs(x) ** _sp().Rational(1, 3), domain=(0.2, 3.0),
       ufuncs=("cbrt",)),
    Op("deg2rad", 1, "{np}.deg2rad({0})", np.deg2rad, lambda g, out, x: (g * (math.pi / 180.0),),
       lambda x: x * _sp().pi / 180, ufuncs=("deg2rad", "radians")),
    Op("rad2deg", 1, "{np}.rad2deg({0})", np.rad2deg, lambda g, out, x: (g * (180.0 / math.pi),),
       lambda x: x * 180 / _sp().pi, ufuncs=("rad2deg", "degrees")),
    # The square roots of x*x + 1, x*x - 1 and 1 - x*x are written so they neither overflow
    # for large x (hypot) nor lose digits next to +-1 (the factored forms).
    Op("arcsinh", 1, "{np}.arcsinh({0})", np.arcsinh, lambda g, out, x: (g / hypot(x, 1.0),),
       lambda x: _sp().asinh(x), ufuncs=("arcsinh",)),
    Op("arccosh", 1, "{np}.arccosh({0})", np.arccosh,
       lambda g, out, x: (g / (sqrt(x - 1.0) * sqrt(x + 1.0)),),
       lambda x: _sp().acosh(x), domain=(1.2, 3.0), ufuncs=("arccosh",)),
    Op("arctanh", 1, "{np}.arctanh({0})", np.arctanh,
       lambda g, out, x: (g / ((1.0 - x) * (1.0 + x)),),
       lambda x: _sp().atanh(x), domain=(-0.9, 0.9), ufuncs=("arctanh",)),
    Op("sinc", 1, "{np}.sinc({0})", np.sinc, _sinc_vjp,
       lambda x: _sp().sinc(_sp().pi * x)),  # np.sinc is a function, not a ufunc
    Op("logaddexp", 2, "{np}.logaddexp({0}, {1})", np.logaddexp, _logaddexp_vjp(1.0),
       lambda x, y: _sp().log(_sp().exp(x) + _sp().exp(y)), ufuncs=("logaddexp",)),
    Op("logaddexp2", 2, "{np}.logaddexp2({0}, {1})", np.logaddexp2, _logaddexp_vjp(_LN2),
       lambda x, y: _sp().log(2 ** x + 2 ** y) / _sp().log(2), ufuncs=("logaddexp2",)),
    # NaN-ignoring maximum and minimum (fmax(x, NaN) is x); ties as maximum/minimum.
    Op("fmax", 2, "({0} if {0} > {1} or {np}.isnan({1}) else {1})", _fmax,
       _nan_losing_vjp(ge), lambda x, y: _sp().Max(x, y), ufuncs=("fmax",),
       array_template="{np}.fmax({0}, {1})"),
    Op("fmin", 2, "({0} if {0} < {1} or {np}.isnan({1}) else {1})", _fmin,
       _nan_losing_vjp(lambda x, y: ge(y, x)), lambda x, y: _sp().Min(x, y), ufuncs=("fmin",),
       array_template="{np}.fmin({0}, {1})"),
    Op("copysign", 2, "{np}.copysign({0}, {1})", np.copysign, _copysign_vjp,
       lambda x, y: _sp().Abs(x) * _sp().sign(y), ufuncs=("copysign",)),
    # x % y and x // y as Python and NumPy define them for floats (the sign of the divisor,
    # the floor of the quotient); numba's % and // agree with NumPy's scalars bitwise, its
    # np.remainder and np.floor_divide do not (the sign of a zero result, inf // 1).
    Op("mod", 2, "{0} % {1}", np.remainder, _mod_vjp,
       lambda x, y: x - y * sympy_step("floor")(x / y), domain=(0.3, 2.0),
       ufuncs=("remainder",)),
    Op("fmod", 2, "{np}.fmod({0}, {1})", np.fmod, _fmod_vjp,
       lambda x, y: x - y * sympy_step("trunc")(x / y), domain=(0.3, 2.0), ufuncs=("fmod",)),
    # --- step functions: derivative zero wherever it exists ------------------------------
    Op("floordiv", 2, "{0} // {1}", np.floor_divide, _no_gradient,
       lambda x, y: sympy_step("floor")(x / y), domain=(0.3, 2.0), ufuncs=("floor_divide",)),
    Op("floor", 1, "{np}.floor({0})", np.floor, _no_gradient,
       lambda x: sympy_step("floor")(x), ufuncs=("floor",)),
    Op("ceil", 1, "{np}.ceil({0})", np.ceil, _no_gradient,
       lambda x: sympy_step("ceiling")(x), ufuncs=("ceil",)),
    # Round half to even, as np.round with decimals=0 (gradc.math.round builds the others).
    Op("rint", 1, "{np}.rint({0})", np.rint, _no_gradient,
       lambda x: sympy_step("rint")(x), ufuncs=("rint",)),
    # Toward zero; also np.fix, which equals it on floats (numba has no np.fix).
    Op("trunc", 1, "{np}.trunc({0})", np.trunc, _no_gradient,
       lambda x: sympy_step("trunc")(x), ufuncs=("trunc",)),
    # --- neural-network activations (gradc.math) ---------------------------------------
    Op("sigmoid", 1, "1.0 / (1.0 + {np}.exp(-{0}))", lambda x: 1.0 / (1.0 + np.exp(-x)),
       lambda g, out, x: (g * out * (1.0 - out),),
       lambda x: 1 / (1 + _sp().exp(-x))),
    Op("softplus", 1, "{np}.logaddexp(0.0, {0})", _logaddexp0,
       lambda g, out, x: (g * sigmoid(x),),
       lambda x: _sp().log(1 + _sp().exp(x))),
    # + 0.0: relu(-0.0) is +0.0 in NumPy, -0.0 in numba's np.maximum (see maximum).
    Op("relu", 1, "{np}.maximum({0}, 0.0) + 0.0", _relu,
       lambda g, out, x: (where(gt(x, 0.0), g, 0.0),),
       lambda x: _sp().Max(x, 0), array_template="{np}.maximum({0}, 0.0)"),
    # --- conditions and selection ------------------------------------------------------
    Op("where", 3, "({1} if {0} else {2})", lambda c, a, b: np.where(c, a, b)[()],
       lambda g, out, c, a, b: (None, where(c, g, 0.0), where(c, 0.0, g)),
       lambda c, a, b: _sp().Piecewise((a, c), (b, True)),
       array_template="{np}.where({0}, {1}, {2})"),
    Op("lt", 2, "{0} < {1}", np.less, sympy=lambda x, y: x < y, result="bool", ufuncs=("less",)),
    Op("le", 2, "{0} <= {1}", np.less_equal, sympy=lambda x, y: x <= y, result="bool",
       ufuncs=("less_equal",)),
    Op("gt", 2, "{0} > {1}", np.greater, sympy=lambda x, y: x > y, result="bool",
       ufuncs=("greater",)),
    Op("ge", 2, "{0} >= {1}", np.greater_equal, sympy=lambda x, y: x >= y, result="bool",
       ufuncs=("greater_equal",)),
    Op("eq", 2, "{0} == {1}", np.equal, sympy=lambda x, y: _sp().Eq(x, y), result="bool",
       ufuncs=("equal",)),
    Op("ne", 2, "{0} != {1}", np.not_equal, sympy=lambda x, y: _sp().Ne(x, y), result="bool",
       ufuncs=("not_equal",)),
    Op("and", 2, "({0} and {1})", np.logical_and, sympy=lambda x, y: _sp().And(x, y),
       result="bool", ufuncs=("logical_and",), array_template="{np}.logical_and({0}, {1})"),
    Op("or", 2, "({0} or {1})", np.logical_or, sympy=lambda x, y: _sp().Or(x, y),
       result="bool", ufuncs=("logical_or",), array_template="{np}.logical_or({0}, {1})"),
    Op("not", 1, "(not {0})", np.logical_not, sympy=lambda x: _sp().Not(x),
       result="bool", ufuncs=("logical_not",), array_template="{np}.logical_not({0})"),
    # --- naming: an identity that carries a variable's name (adjoints ``dv``) ----------
    Op("alias", 1, "{0}", lambda x: x, lambda g, out, x: (g,), lambda x: x),
]

# --- arrays traced whole: shapes, reductions, products, views -----------------------------
# Their rules read attributes from ``out.node.attrs``; ``call`` builds any op with attributes.
def reshape(x, shape):
    if x.shape == tuple(shape):
        return x
    if not x.shape:  # a scalar into a one-element array
        return call("fill", (x,), (tuple(shape),))
    return call("reshape", (x,), (tuple(shape),))


def broadcast_to(x, shape):
    if x.shape == tuple(shape):
        return x
    if not x.shape:
        return call("fill", (x,), (tuple(shape),))
    return call("broadcast_to", (x,), (tuple(shape),))


def reduce_sum(x, axis=None, keepdims=False):
    return call("sum", (x,), (axis, keepdims))


def sum_to(g, shape):
    """Sum ``g`` down to ``shape``: the adjoint of broadcasting ``shape`` up to ``g.shape``."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = len(g.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and g.shape[lead + i] != 1)
    return reshape(reduce_sum(g, axes, True) if axes else g, shape)


def fit(ct, shape):
    """A cotangent brought to its input's shape (broadcast up, or summed down)."""
    if ct.shape == tuple(shape):
        return ct
    if np.broadcast_shapes(ct.shape, shape) == tuple(shape):
        return broadcast_to(ct, shape)
    return sum_to(ct, shape)


def _reduced(attrs, shape):
    axis, keepdims = attrs
    axes = range(len(shape)) if axis is None else axis
    for a in axes:
        if not 0 <= a < len(shape):
            raise ValueError(f"axis {a} is out of range")
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def _sum_vjp(g, out, x):
    kept = _reduced((out.node.attrs[0], True), x.shape)
    return (broadcast_to(reshape(g, kept), x.shape),)


def _extreme_vjp(g, out, x):
    """The gradient of max/min goes to the extreme elements, shared equally among ties."""
    axis = out.node.attrs[0]
    kept = _reduced((axis, True), x.shape)
    hit = where(call("eq", (x, broadcast_to(reshape(out, kept), x.shape))), 1.0, 0.0)
    share = reshape(g, kept) / reduce_sum(hit, axis, True)
    return (hit * broadcast_to(share, x.shape),)


def _matmul_shape(attrs, a, b):
    if len(a) not in (1, 2) or len(b) not in (1, 2):
        raise ValueError("gradc's @ takes 1-D and 2-D arrays")
    if a[-1] != b[0]:
        raise ValueError(f"inner dimensions {a[-1]} and {b[0]} differ")
    return a[:-1] + b[1:]


def _matmul_vjp(g, out, x, y):
    if len(x.shape) == 2 and len(y.shape) == 1:  # A @ v: dA = g v^T, dv = g @ A (no transpose)
        return (call("matmul", (reshape(g, (x.shape[0], 1)), reshape(y, (1,) + y.shape))),
                call("matmul", (g, x)))
    if len(x.shape) == 1 and len(y.shape) == 2:  # v @ B: dv = B @ g, dB = v g^T
        return (call("matmul", (y, g)),
                call("matmul", (reshape(x, x.shape + (1,)), reshape(g, (1,) + g.shape))))
    x2 = x if len(x.shape) == 2 else reshape(x, (1,) + x.shape)
    y2 = y if len(y.shape) == 2 else reshape(y, y.shape + (1,))
    g2 = reshape(g, (x2.shape[0], y2.shape[1]))
    return (reshape(call("matmul", (g2, transpose(y2))), x.shape),
            reshape(call("matmul", (transpose(x2), g2)), y.shape))


def transpose(x, axes=None):
    axes = tuple(reversed(range(len(x.shape)))) if axes is None else tuple(axes)
    return x if axes == tuple(range(len(x.shape))) else call("transpose", (x,), (axes,))


def _index_shape(attrs, shape):
    return np.broadcast_to(np.empty(()), shape)[python_index(attrs[0])].shape


def _piece(axis, start, stop, ndim):
    return tuple(("s", None, None, None) for _ in range(axis)) + (("s", start, stop, None),) + \
        tuple(("s", None, None, None) for _ in range(ndim - axis - 1))


def _concatenate_shape(attrs, *shapes):
    axis = attrs[0]
    first = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != axis):
            raise ValueError("all dimensions but the concatenation axis must match")
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]


def _concatenate_vjp(g, out, *xs):
    axis, start, cts = out.node.attrs[0], 0, []
    for x in xs:
        stop = start + x.shape[axis]
        cts.append(call("getitem", (g,), (_piece(axis, start, stop, len(g.shape)),)))
        start = stop
    return tuple(cts)


def _stack_shape(attrs, *shapes):
    if any(s != shapes[0] for s in shapes):
        raise ValueError("stacked arrays must have one shape")
    axis = attrs[0]
    return shapes[0][:axis] + (len(shapes),) + shapes[0][axis:]


def _stack_vjp(g, out, *xs):
    axis = out.node.attrs[0]
    head = tuple(("s", None, None, None) for _ in range(axis))
    return tuple(call("getitem", (g,), (head + (("i", k),),)) for k in range(len(xs)))


def _pack_shape(attrs, *shapes):
    if any(s != () for s in shapes):
        raise ValueError("pack takes scalars (numpy.stack joins arrays)")
    return (len(shapes),)


def _pack_vjp(g, out, *xs):
    return tuple(call("getitem", (g,), ((("i", k),),)) for k in range(len(xs)))


def _check_reshape(attrs, shape):
    if int(np.prod(attrs[0])) != int(np.prod(shape)):
        raise ValueError(f"cannot reshape {shape} to {attrs[0]}")
    return attrs[0]


def _check_broadcast(attrs, shape):
    if np.broadcast_shapes(shape, attrs[0]) != attrs[0]:
        raise ValueError(f"cannot broadcast {shape} to {attrs[0]}")
    return attrs[0]


def _linear_jvp(ts, out, *args):
    """A linear op's tangent: the op itself applied to its inputs' tangents (zeros where None)."""
    ts = [t if t is not None else out._apply("zeros", (), (a.shape, "float64"))
          for t, a in zip(ts, args)]
    return call(out.node.op, ts, out.node.attrs)


def _extreme_jvp(ts, out, x):
    """The tangent of max/min: the mean of the extreme elements' tangents (the vjp's tie rule)."""
    axis, keepdims = out.node.attrs
    kept = _reduced((axis, True), x.shape)
    hit = where(call("eq", (x, broadcast_to(reshape(out, kept), x.shape))), 1.0, 0.0)
    return (call("sum", (ts[0] * hit,), (axis, keepdims))
            / call("sum", (hit,), (axis, keepdims)))


def _matmul_jvp(ts, out, x, y):
    tx, ty = ts
    parts = ([call("matmul", (tx, y))] if tx is not None else []) + \
        ([call("matmul", (x, ty))] if ty is not None else [])
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _loop_jvp(ts, out, *args):
    from .errors import UnsupportedFunctionError, where as _where

    raise UnsupportedFunctionError(
        f"{_where()}: forward mode (jvp, hvp, hessian) through gradc.scan is not supported; "
        "use gradc.grad of the scan, or a Python loop (unrolled) for higher orders.")


# A reduction to a scalar prints as np.sum(x) (which numba compiles too); others name axis.
_REDUCE = "{np}.{name}({0}, axis={axis}, keepdims={keepdims})"
_REDUCE_ONE = "{np}.{name}({0}, axis={axis})"

_ARRAY_TABLE = [
    Op("sum", 1, "{np}.sum({0})",
       lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims), _sum_vjp,
       attrs=("axis", "keepdims"), shape=lambda a, s: _reduced(a, s), array_template=_REDUCE,
       jvp=_linear_jvp),
    Op("max", 1, "{np}.max({0})",
       lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims), _extreme_vjp,
       attrs=("axis", "keepdims"), shape=lambda a, s: _reduced(a, s), array_template=_REDUCE,
       jvp=_extreme_jvp),
    Op("min", 1, "{np}.min({0})",
       lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims), _extreme_vjp,
       attrs=("axis", "keepdims"), shape=lambda a, s: _reduced(a, s), array_template=_REDUCE,
       jvp=_extreme_jvp),
    Op("matmul", 2, "{0} @ {1}", np.matmul, _matmul_vjp, shape=_matmul_shape, ufuncs=("matmul",),
       jvp=_matmul_jvp),
    Op("transpose", 1, "{np}.transpose({0}, {axes})", lambda x, axes: np.transpose(x, axes),
       lambda g, out, x: (transpose(g, tuple(np.argsort(out.node.attrs[0]))),),
       attrs=("axes",), shape=lambda a, s: tuple(s[i] for i in a[0]), jvp=_linear_jvp),
    Op("reshape", 1, "{np}.reshape({0}, {shape})", lambda x, shape: np.reshape(x, shape),
       lambda g, out, x: (reshape(g, x.shape),), attrs=("shape",), shape=_check_reshape,
       jvp=_linear_jvp),
    Op("broadcast_to", 1, "{np}.broadcast_to({0}, {shape})",
       lambda x, shape: np.broadcast_to(x, shape), lambda g, out, x: (sum_to(g, x.shape),),
       attrs=("shape",), shape=_check_broadcast, jvp=_linear_jvp),
    Op("fill", 1, "{np}.full({shape}, {0})", lambda x, shape: np.full(shape, x),
       lambda g, out, x: (reduce_sum(g),), attrs=("shape",),
       shape=lambda a, s: _check_broadcast(a, s), jvp=_linear_jvp),
    Op("getitem", 1, "{0}[{index}]", lambda x, index: x[python_index(index)],
       lambda g, out, x: (call("scatter", (g,), (out.node.attrs[0], x.shape)),),
       attrs=("index",), shape=_index_shape, jvp=_linear_jvp),
    # The adjoint of indexing: zeros with the cotangent written into the indexed part.
    Op("scatter", 1, "{out} = {np}.zeros({shape}, {dt})\n{out}[{index}] = {0}",
       lambda g, index, shape: _scatter(g, index, shape),
       lambda g, out, x: (call("getitem", (g,), (out.node.attrs[0],)),),
       attrs=("index", "shape"), shape=lambda a, s: a[1], statement=True, jvp=_linear_jvp),
    Op("concatenate", None, "{np}.concatenate(({args},), axis={axis})",
       lambda *a: np.concatenate(a[:-1], axis=a[-1]), _concatenate_vjp,
       attrs=("axis",), shape=_concatenate_shape, jvp=_linear_jvp),
    Op("stack", None, "{np}.stack(({args},), axis={axis})",
       lambda *a: np.stack(a[:-1], axis=a[-1]), _stack_vjp, attrs=("axis",), shape=_stack_shape,
       jvp=_linear_jvp),
    # The vector of its scalar arguments: numpy.array([x, y * 2]) of traced floats (see
    # gradc.trace.pack; nested lists stack such vectors). Its own op, not a stack of 0-d
    # pieces, because it prints as numba compiles it (numba's np.stack takes arrays only).
    Op("pack", None, "{np}.array([{args}])", lambda *a: np.array(a), _pack_vjp,
       shape=_pack_shape, jvp=_linear_jvp),
    Op("zeros", 0, "{np}.zeros({shape}, {np}.{dtype})", lambda shape, dtype: np.zeros(shape, dtype),
       attrs=("shape", "dtype"), shape=lambda a: a[0]),
    # How many elements the reduced axes of x hold (a mean's divisor): it reads x's shape only,
    # so its derivative is zero. Code for one shape prints the number (``value``); the loop
    # lowering prints it from the argument shapes, so one compiled loop serves every length.
    Op("count", 1, "{value}", lambda x, axis, value: float(_count(np.shape(x), axis)),
       lambda g, out, x: (None,), attrs=("axis", "value"), shape=lambda a, s: (),
       jvp=lambda ts, out, x: None),
]


def _count(shape, axis):
    return int(np.prod([shape[a] for a in (range(len(shape)) if axis is None else axis)]))


# --- more arrays traced whole: scans, products of elements, permutations, updates, linalg ----
# Each op here is one that composing the ops above cannot express; everything else NumPy offers
# (var, flip, outer, einsum, tril, norm, ...) is composed from table ops in gradc/numpy_api.py.
def _axis_item(axis, ndim, item):
    """A canonical index that applies ``item`` along ``axis`` and keeps every other axis."""
    full = ("s", None, None, None)
    return tuple(full for _ in range(axis)) + (item,) + tuple(full for _ in range(ndim - axis - 1))


def flip(x, axis):
    """``x`` reversed along ``axis`` (a getitem with step -1)."""
    return call("getitem", (x,), (_axis_item(axis, len(x.shape), ("s", None, None, -1)),))


def moveaxis(x, source, destination):
    """``numpy.moveaxis`` for one axis, as a transpose."""
    order = [k for k in range(len(x.shape)) if k != source]
    order.insert(destination, source)
    return transpose(x, tuple(order))


def _along_last(x, axis):
    return x if axis == len(x.shape) - 1 else moveaxis(x, axis, len(x.shape) - 1)


def _from_last(x, axis):
    return x if axis == len(x.shape) - 1 else moveaxis(x, len(x.shape) - 1, axis)


def _check_axis(attrs, shape):
    if not 0 <= attrs[0] < len(shape):
        raise ValueError(f"axis {attrs[0]} is out of range")
    return shape


def _cumsum_vjp(g, out, x):
    """The adjoint of a running sum is the running sum from the other end."""
    axis = out.node.attrs[0]
    return (flip(call("cumsum", (flip(g, axis),), (axis,)), axis),)


#: The most partials the cumprod rule builds (8-byte floats: 32 MiB, a 2048-long axis); past it,
#: a clear error instead of a graph that runs out of memory (10^4 elements would need 800 MB).
CUMPROD_PARTIALS_MAX = 1 << 22


def _cumprod_partials(x, axis):
    """``M[..., i, j] = d cumprod(x)[i] / d x[j]`` along ``axis`` (moved last): the product of
    ``x[k]`` for ``k <= i, k != j`` where ``j <= i``, else 0.

    Computed without dividing by ``x[j]`` (autograd's ``out / x`` is NaN where x is 0): the
    running product of ``x`` with ``x[j]`` replaced by 1 in column ``j``, masked to ``j <= i``.
    Exact at zeros, at the price of ``L**2`` elements per row of length ``L``.
    """
    xt = _along_last(x, axis)
    length = xt.shape[-1]
    square = xt.shape + (length,)
    if int(np.prod(square)) > CUMPROD_PARTIALS_MAX:
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: the derivative of numpy.cumprod along an axis of {length} "
            f"elements would hold {int(np.prod(square)):,} partials (gradc's rule is exact at "
            f"zeros at the price of length**2 per row; at most {CUMPROD_PARTIALS_MAX:,}). For "
            "positive x write numpy.exp(numpy.cumsum(numpy.log(x))); otherwise use "
            "gradc.scan for the running product.")
    column = broadcast_to(reshape(xt, xt.shape + (1,)), square)  # [..., k, j] = x[k]
    ones_on_diagonal = where(np.eye(length, dtype=bool), 1.0, column)
    running = call("cumprod", (ones_on_diagonal,), (len(square) - 2,))
    return where(np.tril(np.ones((length, length), dtype=bool)), running, 0.0)


def _cumprod_vjp(g, out, x):
    axis = out.node.attrs[0]
    m = _cumprod_partials(x, axis)
    gt = _along_last(g, axis)
    dx = reduce_sum(m * reshape(gt, gt.shape + (1,)), (len(m.shape) - 2,), False)
    return (_from_last(dx, axis),)


def _cumprod_jvp(ts, out, x):
    axis = out.node.attrs[0]
    m = _cumprod_partials(x, axis)
    tt = _along_last(ts[0], axis)
    return _from_last(reduce_sum(m * reshape(tt, tt.shape[:-1] + (1,) + tt.shape[-1:]),
                                 (len(m.shape) - 1,), False), axis)


def _prod_partials(x, axis):
    """``d prod(x)/d x[j]`` (the reduced axes of ``axis`` taken as one): the product of all
    other elements, as the running product from the left times the one from the right, each
    shifted by one. No division, so it is exact where elements are 0 (autograd's is NaN)."""
    ndim = len(x.shape)
    axes = tuple(range(ndim)) if axis is None else axis
    kept = tuple(k for k in range(ndim) if k not in axes)
    order = kept + tuple(axes)
    moved = transpose(x, order)
    lead = tuple(x.shape[k] for k in kept)
    flat = reshape(moved, lead + (int(np.prod([x.shape[k] for k in axes])),))
    last = len(flat.shape) - 1
    ones = np.ones(lead + (1,))
    drop_last = _axis_item(last, len(flat.shape), ("s", None, -1, None))

    def exclusive(v):  # [1, v0, v0*v1, ...]: the product of the elements before each one
        running = call("cumprod", (v,), (last,))
        return call("concatenate", (ones, call("getitem", (running,), (drop_last,))), (last,))

    partials = exclusive(flat) * flip(exclusive(flip(flat, last)), last)
    return transpose(reshape(partials, moved.shape), tuple(np.argsort(order)))


def _prod_vjp(g, out, x):
    axis = out.node.attrs[0]
    kept = _reduced((axis, True), x.shape)
    return (broadcast_to(reshape(g, kept), x.shape) * _prod_partials(x, axis),)


def _prod_jvp(ts, out, x):
    axis, keepdims = out.node.attrs
    return call("sum", (ts[0] * _prod_partials(x, axis),), (axis, keepdims))


# Permutations: ``take_along(x, order)`` reads x in a computed order (sort, partition), and its
# adjoint ``put_along`` writes a cotangent back to where each element came from. The order is
# an integer array (a node with no gradient); constant folding may turn it into a float array,
# so the impls and templates cast it back to indices.
def _zero_tangent(out):
    """A zero tangent of ``out``'s shape (forward rules return a node, never None)."""
    return out._apply("zeros", (), (out.shape, "float64")) if out.shape else 0.0


def _indices(order):
    return np.asarray(order).astype(np.intp)


def _put_along(g, order, axis, shape):
    out = np.zeros(shape, np.result_type(g))
    np.put_along_axis(out, _indices(order), g, axis)
    return out


def _take_along_jvp(ts, out, x, order):
    return _zero_tangent(out) if ts[0] is None else call("take_along", (ts[0], order),
                                                         out.node.attrs)


def _put_along_jvp(ts, out, g, order):
    return _zero_tangent(out) if ts[0] is None else call("put_along", (ts[0], order),
                                                         out.node.attrs)


# Item assignment as a functional update: ``setitem(x, v)`` is x with ``x[index] = v``.
def _setitem(x, v, index):
    out = np.array(x, dtype=np.result_type(x, v), copy=True)
    out[python_index(index)] = v
    return out


def _setitem_shape(attrs, x, v):
    target = _index_shape(attrs, x)
    if np.broadcast_shapes(v, target) != target:
        raise ValueError(f"a value of shape {v} cannot be stored into {target}")
    return x


def _setitem_vjp(g, out, x, v):
    index = out.node.attrs[0]
    return (call("setitem", (g, 0.0), (index,)), call("getitem", (g,), (index,)))


def _setitem_jvp(ts, out, x, v):
    tx, tv = ts
    tx = tx if tx is not None else out._apply("zeros", (), (x.shape, "float64"))
    return call("setitem", (tx, 0.0 if tv is None else tv), out.node.attrs)


# --- linear algebra: derivatives from the matrix identities (square 2-D matrices) -------------
def _matrix_t(x):
    return transpose(x, (1, 0))


def _square(name):
    def shape(attrs, s, *rest):
        if len(s) != 2 or s[0] != s[1]:
            raise ValueError(f"numpy.linalg.{name} takes one square 2-D matrix here")
        return s
    return shape


def _solve_shape(attrs, a, b):
    _square("solve")(attrs, a)
    if len(b) not in (1, 2) or b[0] != a[0]:
        raise ValueError("solve(a, b) needs b of shape (n,) or (n, k) for a of shape (n, n)")
    return b


def _inv_vjp(g, out, x):
    return (-call("matmul", (call("matmul", (_matrix_t(out), g)), _matrix_t(out))),)


def _inv_jvp(ts, out, x):
    return -call("matmul", (call("matmul", (out, ts[0])), out))


def _solve_vjp(g, out, a, b):
    gb = call("solve", (_matrix_t(a), g))
    if len(b.shape) == 1:
        ga = reshape(gb, gb.shape + (1,)) * reshape(out, (1,) + out.shape)
    else:
        ga = call("matmul", (gb, _matrix_t(out)))
    return (-ga, gb)


def _solve_jvp(ts, out, a, b):
    ta, tb = ts
    rhs = tb if tb is not None else None
    if ta is not None:
        change = call("matmul", (ta, out))
        rhs = -change if rhs is None else rhs - change
    return call("solve", (a, rhs))


def _det_vjp(g, out, x):
    return (g * out * _matrix_t(call("inv", (x,))),)


def _det_jvp(ts, out, x):
    return out * reduce_sum(_matrix_t(call("inv", (x,))) * ts[0])


def _logabsdet_vjp(g, out, x):
    return (g * _matrix_t(call("inv", (x,))),)


def _logabsdet_jvp(ts, out, x):
    return reduce_sum(_matrix_t(call("inv", (x,))) * ts[0])


def _lower_gradient(s):
    """The gradient with respect to the matrix as LAPACK reads it (its lower triangle only)
    from ``s``, a gradient for symmetric perturbations: an entry below the diagonal stands for
    itself and its mirror (``s_ij + s_ji``), the diagonal for itself, the upper triangle for
    nothing (numpy.linalg.cholesky and eigh never read it)."""
    n = s.shape[0]
    below = np.tril(np.ones((n, n), dtype=bool), -1)
    return where(below, s + _matrix_t(s), where(np.eye(n, dtype=bool), s, 0.0))


def _symmetric_from_lower(t):
    """The symmetric matrix LAPACK sees for ``t``: its lower triangle mirrored."""
    n = t.shape[0]
    below = np.tril(np.ones((n, n), dtype=bool), -1)
    return where(below, t, where(np.eye(n, dtype=bool), t, _matrix_t(t)))


def _phi(x):
    """The lower triangle of ``x`` with its diagonal halved (the Cholesky derivative's mask)."""
    n = x.shape[0]
    below = np.tril(np.ones((n, n), dtype=bool), -1)
    return where(below, x, where(np.eye(n, dtype=bool), 0.5 * x, 0.0))


def _cholesky_vjp(g, out, x):
    """``A = L L^T``: ``dA-bar = L^-T Phi(L^T L-bar) L^-1`` (Murray, 2016), read as LAPACK does."""
    linv = call("inv", (out,))
    inner = _phi(call("matmul", (_matrix_t(out), g)))
    s = call("matmul", (call("matmul", (_matrix_t(linv), inner)), linv))
    return (_lower_gradient(s),)


def _cholesky_jvp(ts, out, x):
    linv = call("inv", (out,))
    t = _symmetric_from_lower(ts[0])
    return call("matmul", (out, _phi(call("matmul", (call("matmul", (linv, t)), _matrix_t(linv))))))


def _eigh_value_vjp(g, out, x):
    v = call("eigh_vectors", (x,))
    return (_lower_gradient(call("matmul", (v * reshape(g, (1,) + g.shape), _matrix_t(v)))),)


def _eigh_value_jvp(ts, out, x):
    v = call("eigh_vectors", (x,))
    t = _symmetric_from_lower(ts[0])
    return reduce_sum(v * call("matmul", (t, v)), (0,), False)


def _eigen_gaps(x):
    """``F[i, j] = 1 / (w[j] - w[i])`` off the diagonal, 0 on it (distinct eigenvalues)."""
    w = call("eigh_values", (x,))
    n = w.shape[0]
    gaps = reshape(w, (1, n)) - reshape(w, (n, 1))
    diagonal = np.eye(n, dtype=bool)
    # 1 on the diagonal before dividing: no 1 / 0 there (nor NumPy's warning about it)
    return where(diagonal, 0.0, 1.0 / where(diagonal, 1.0, gaps))


def _eigh_vector_vjp(g, out, x):
    """``dV = V (F o (V^T dA V))``, so ``dA-bar = V (F o (V^T V-bar)) V^T`` (read as LAPACK does)."""
    inner = _eigen_gaps(x) * call("matmul", (_matrix_t(out), g))
    return (_lower_gradient(call("matmul", (call("matmul", (out, inner)), _matrix_t(out)))),)


def _eigh_vector_jvp(ts, out, x):
    t = _symmetric_from_lower(ts[0])
    inner = _eigen_gaps(x) * call("matmul", (call("matmul", (_matrix_t(out), t)), out))
    return call("matmul", (out, inner))


def _no_tangent(ts, out, *args):
    return _zero_tangent(out)


_ARRAY_TABLE += [
    Op("cumsum", 1, "{np}.cumsum({0}, axis={axis})", lambda x, axis: np.cumsum(x, axis=axis),
       _cumsum_vjp, attrs=("axis",), shape=_check_axis, jvp=_linear_jvp),
    Op("cumprod", 1, "{np}.cumprod({0}, axis={axis})", lambda x, axis: np.cumprod(x, axis=axis),
       _cumprod_vjp, attrs=("axis",), shape=_check_axis, jvp=_cumprod_jvp),
    Op("prod", 1, "{np}.prod({0})",
       lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims), _prod_vjp,
       attrs=("axis", "keepdims"), shape=lambda a, s: _reduced(a, s), array_template=_REDUCE,
       jvp=_prod_jvp),
    # The order that sorts x along axis (stable: ties keep their order): integers, no gradient.
    Op("sort_order", 1, "{np}.argsort({0}, axis={axis}, kind='stable')",
       lambda x, axis: np.argsort(x, axis=axis, kind="stable"), _no_gradient,
       attrs=("axis",), shape=_check_axis, jvp=_no_tangent),
    # numpy.partition's values, without gradient: gradc.numpy_api reads x in the order that
    # gives them (np.argpartition's order may be a different valid partition).
    Op("partition", 1, "{np}.partition({0}, {kth}, axis={axis})",
       lambda x, kth, axis: np.partition(x, kth, axis=axis), _no_gradient,
       attrs=("kth", "axis"), shape=lambda a, s: _check_axis(a[1:], s), jvp=_no_tangent),
    Op("take_along", 2, "{np}.take_along_axis({0}, {1}.astype({np}.intp), axis={axis})",
       lambda x, order, axis: np.take_along_axis(x, _indices(order), axis),
       lambda g, out, x, order: (call("put_along", (g, order), (out.node.attrs[0], x.shape)), None),
       attrs=("axis",), shape=lambda a, x, order: order, jvp=_take_along_jvp),
    # The adjoint of reading in a permuted order: each element written back to where it was.
    Op("put_along", 2, "{out} = {np}.zeros({shape}, {dt})\n"
                       "{np}.put_along_axis({out}, {1}.astype({np}.intp), {0}, {axis})",
       _put_along,
       lambda g, out, x, order: (call("take_along", (g, order), (out.node.attrs[0],)), None),
       attrs=("axis", "shape"), shape=lambda a, g, order: a[1], statement=True,
       jvp=_put_along_jvp),
    Op("setitem", 2, "{out} = {0}.copy()\n{out}[{index}] = {1}", _setitem, _setitem_vjp,
       attrs=("index",), shape=_setitem_shape, statement=True, jvp=_setitem_jvp),
    Op("inv", 1, "{np}.linalg.inv({0})", np.linalg.inv, _inv_vjp, shape=_square("inv"),
       jvp=_inv_jvp),
    Op("solve", 2, "{np}.linalg.solve({0}, {1})", np.linalg.solve, _solve_vjp,
       shape=_solve_shape, jvp=_solve_jvp),
    Op("det", 1, "{np}.linalg.det({0})", np.linalg.det, _det_vjp,
       shape=lambda a, s: (_square("det")(a, s), ())[1], jvp=_det_jvp),
    Op("logabsdet", 1, "{np}.linalg.slogdet({0})[1]", lambda x: np.linalg.slogdet(x)[1],
       _logabsdet_vjp, shape=lambda a, s: (_square("slogdet")(a, s), ())[1], jvp=_logabsdet_jvp),
    Op("signdet", 1, "{np}.linalg.slogdet({0})[0]", lambda x: np.linalg.slogdet(x)[0],
       _no_gradient, shape=lambda a, s: (_square("slogdet")(a, s), ())[1], jvp=_no_tangent),
    Op("cholesky", 1, "{np}.linalg.cholesky({0})", np.linalg.cholesky, _cholesky_vjp,
       shape=_square("cholesky"), jvp=_cholesky_jvp),
    Op("eigh_values", 1, "{np}.linalg.eigh({0})[0]", lambda x: np.linalg.eigh(x)[0],
       _eigh_value_vjp, shape=lambda a, s: _square("eigh")(a, s)[:1], jvp=_eigh_value_jvp),
    Op("eigh_vectors", 1, "{np}.linalg.eigh({0})[1]", lambda x: np.linalg.eigh(x)[1],
       _eigh_vector_vjp, shape=_square("eigh"), jvp=_eigh_vector_jvp),
]


# --- singular values, QR and least squares (2-D matrices; derivatives by the matrix identities) -
# ``A = U diag(s) Vh`` (reduced: U is m x k, Vh k x n, k = min(m, n)). Each factor is its own op
# computed by its own LAPACK call (deterministic, so the three agree), and each op's rule is the
# part of the SVD derivative (Townsend, 2016) that comes from its own cotangent; the parts add.
# The rules hold where the singular values are distinct and, for U and Vh of a non-square matrix,
# nonzero. At a tie ``s_i = s_j`` the values' derivative is a one-sided one (any orthonormal basis
# of the tied singular space is an answer; the rule uses LAPACK's); U's and Vh's derivatives do
# not exist there and come out inf or NaN (1 / (s_j**2 - s_i**2)), as in autograd and JAX.
def _svd_shape(part):
    def shape(attrs, s):
        if len(s) != 2:
            raise ValueError("numpy.linalg.svd takes one 2-D matrix here")
        m, n = s
        k = min(m, n)
        return {"values": (k,), "u": (m, k), "vh": (k, n)}[part]
    return shape


def _svd_factors(x):
    """U, s and V (not Vh) of ``x``'s reduced SVD, as graph."""
    return (call("svd_u", (x,)), call("svd_values", (x,)),
            _matrix_t(call("svd_vh", (x,))))


def _matmul(*factors):
    out = factors[0]
    for f in factors[1:]:
        out = call("matmul", (out, f))
    return out


def _row(v):
    return reshape(v, (1,) + v.shape)


def _column(v):
    return reshape(v, v.shape + (1,))


def _square_gaps(s):
    """``F[i, j] = 1 / (s[j]**2 - s[i]**2)`` off the diagonal, 0 on it."""
    k = s.shape[0]
    s2 = s * s
    diagonal = np.eye(k, dtype=bool)
    # 1 on the diagonal before dividing: no 1 / 0 there (nor NumPy's warning about it)
    return where(diagonal, 0.0, 1.0 / where(diagonal, 1.0, _row(s2) - _column(s2)))


def _svd_values_vjp(g, out, x):
    u, _, v = _svd_factors(x)
    return (_matmul(u * _row(g), _matrix_t(v)),)


def _svd_values_jvp(ts, out, x):
    u, _, v = _svd_factors(x)
    return reduce_sum(u * _matmul(ts[0], v), (0,), False)  # diag(U^T dA V)


def _skew(a):
    return a - _matrix_t(a)


def _svd_u_vjp(g, out, x):
    """``dA-bar = U (F o (U^T U-bar - U-bar^T U)) S V^T [+ (I - U U^T) U-bar S^-1 V^T, m > n]``."""
    u, s, v = _svd_factors(x)
    inner = _square_gaps(s) * _skew(_matmul(_matrix_t(u), g)) * _row(s)
    ga = _matmul(u, inner, _matrix_t(v))
    m, k = u.shape
    if m > k:
        across = g - _matmul(u, _matmul(_matrix_t(u), g))
        ga = ga + _matmul(across / _row(s), _matrix_t(v))
    return (ga,)


def _svd_vh_vjp(g, out, x):
    """``dA-bar = U S (F o (V^T V-bar - V-bar^T V)) V^T [+ U S^-1 V-bar^T (I - V V^T), m < n]``
    with ``V-bar = Vh-bar^T``."""
    u, s, v = _svd_factors(x)
    gv = _matrix_t(g)
    inner = _column(s) * (_square_gaps(s) * _skew(_matmul(_matrix_t(v), gv)))
    ga = _matmul(u, inner, _matrix_t(v))
    n, k = v.shape
    if n > k:
        across = gv - _matmul(v, _matmul(_matrix_t(v), gv))
        ga = ga + _matmul(u / _row(s), _matrix_t(across))
    return (ga,)


def _svd_u_jvp(ts, out, x):
    """``dU = U (F o (dP S + S dP^T)) [+ (I - U U^T) dA V S^-1, m > n]``, ``dP = U^T dA V``."""
    u, s, v = _svd_factors(x)
    da_v = _matmul(ts[0], v)
    dp = _matmul(_matrix_t(u), da_v)
    du = _matmul(u, _square_gaps(s) * (dp * _row(s) + _column(s) * _matrix_t(dp)))
    m, k = u.shape
    if m > k:
        du = du + (da_v - _matmul(u, dp)) / _row(s)
    return du


def _svd_vh_jvp(ts, out, x):
    """``dV = V (F o (S dP + dP^T S)) [+ (I - V V^T) dA^T U S^-1, m < n]``; ``dVh = dV^T``."""
    u, s, v = _svd_factors(x)
    dat_u = _matmul(_matrix_t(ts[0]), u)
    dp = _matrix_t(_matmul(_matrix_t(v), dat_u))  # U^T dA V
    dv = _matmul(v, _square_gaps(s) * (_column(s) * dp + _matrix_t(dp) * _row(s)))
    n, k = v.shape
    if n > k:
        dv = dv + (dat_u - _matmul(v, _matrix_t(dp))) / _row(s)
    return _matrix_t(dv)


# ``A = Q R`` (reduced, m >= n, R upper triangular and invertible: A of full column rank). R's
# diagonal signs are LAPACK's, locally constant, so the factors are differentiable functions.
def _qr_shape(part):
    def shape(attrs, s):
        if len(s) != 2 or s[0] < s[1]:
            raise ValueError("numpy.linalg.qr takes one 2-D matrix with at least as many rows "
                             "as columns here")
        return s if part == "q" else (s[1], s[1])
    return shape


def _right_solve_rt(b, r):
    """``b R^-T`` (solving with R^T from the right)."""
    return _matrix_t(call("solve", (r, _matrix_t(b))))


def _copy_upper_to_lower(t):
    """``T + T^T - diag(T)`` of the upper triangle of ``t``: the symmetric matrix it stands for."""
    n = t.shape[0]
    upper = where(np.triu(np.ones((n, n), dtype=bool)), t, 0.0)
    return upper + _matrix_t(where(np.triu(np.ones((n, n), dtype=bool), 1), t, 0.0))


def _qr_q_vjp(g, out, x):
    """``dA-bar = (Q-bar - Q sym(triu(Q^T Q-bar))) R^-T`` (the Q part of PyTorch's qr rule)."""
    q, r = out, call("qr_r", (x,))
    inner = _copy_upper_to_lower(_matmul(_matrix_t(q), g))
    return (_right_solve_rt(g - _matmul(q, inner), r),)


def _qr_r_vjp(g, out, x):
    """``dA-bar = Q sym(triu(R-bar R^T)) R^-T`` (the R part)."""
    q = call("qr_q", (x,))
    inner = _copy_upper_to_lower(_matmul(g, _matrix_t(out)))
    return (_right_solve_rt(_matmul(q, inner), out),)


def _qr_tangents(dx, x):
    """``(dQ, dR)`` for the tangent ``dx`` of ``x`` (JAX's qr_jvp_rule)."""
    q, r = call("qr_q", (x,)), call("qr_r", (x,))
    dx_rinv = _matrix_t(call("solve", (_matrix_t(r), _matrix_t(dx))))  # dA R^-1
    qt_dx_rinv = _matmul(_matrix_t(q), dx_rinv)
    n = r.shape[0]
    lower = where(np.tril(np.ones((n, n), dtype=bool), -1), qt_dx_rinv, 0.0)
    do = lower - _matrix_t(lower)
    dq = _matmul(q, do) + (dx_rinv - _matmul(q, qt_dx_rinv))
    dr = _matmul(qt_dx_rinv - do, r)
    return dq, dr


# ``lstsq(A, b)``: NumPy's solution (LAPACK gelsd, so the value is NumPy's for every A), whose
# derivative is that of ``x = A^+ b`` where A has full rank (Golub and Pereyra, 1973):
# ``dx = A^+ (db - dA x) + (A^T A)^-1 dA^T r + (I - A^+ A) dA^T (A A^T)^-1 b``, ``r = b - A x``.
# A tall or square A of full column rank (A^+ A = I) keeps the first two terms; a wide one of
# full row rank (r = 0) the first and the last. The inverses come from the QR of A (tall) or
# of A^T (wide), never the normal equations (their condition number is squared):
# - tall, ``A = Q R``: ``z = (A^T A)^-1 x-bar = R^-1 R^-T x-bar``, ``b-bar = Q R^-T x-bar``,
#   ``A-bar = r z^T - b-bar x^T``;
# - wide, ``A^T = Q R``: ``b-bar = A^+T x-bar = R^-1 Q^T x-bar``, ``w = (A A^T)^-1 b =
#   R^-1 R^-T b``, ``A-bar = w (x-bar - Q Q^T x-bar)^T - b-bar x^T``.
# Where A loses rank (as LAPACK counts it: the smallest singular value at most rcond times the
# largest) lstsq jumps and has no derivative: the derivatives are NaN there, never a number.
# The triangular solves are least-squares solves too, which answer (and are then masked) where
# R is exactly singular, instead of raising.
def _lstsq_shape(attrs, a, b):
    if len(a) != 2:
        raise ValueError("numpy.linalg.lstsq takes a 2-D matrix here")
    if len(b) not in (1, 2) or b[0] != a[0]:
        raise ValueError(f"b of shape {b} does not fit a of shape {a}")
    return a[1:] + b[1:]


def _outer_or_product(u, w):
    """``u w^T`` for vectors, ``u @ w^T`` for matrices (a column per right-hand side)."""
    if len(u.shape) == 1:
        return _column(u) * _row(w)
    return _matmul(u, _matrix_t(w))


def lapack_rcond(rcond):
    """The rcond LAPACK's gelsd uses for ``rcond``: its own (DLALSD), except that one outside
    (0, 1) means the machine precision, 2**-53."""
    return rcond if 0.0 < rcond < 1.0 else 2.0 ** -53


def _full_rank(a, rcond):
    """Whether ``a`` has full rank as LAPACK's gelsd counts it (a traced condition)."""
    s = call("svd_values", (a,))
    return gt(call("min", (s,), (None, False)),
              call("max", (s,), (None, False)) * lapack_rcond(rcond))


def _where_full_rank(a, rcond, *values):
    full = _full_rank(a, rcond)
    return tuple(where(full, v, np.nan) for v in values)


def _is_wide(a):
    return a.shape[0] < a.shape[1]


def _triangular_solves(r, v, rcond):
    """``R^-1 R^-T v``."""
    return call("lstsq", (r, call("lstsq", (_matrix_t(r), v), rcond)), rcond)


def _lstsq_vjp(g, out, a, b):
    rcond = out.node.attrs
    if _is_wide(a):
        at = _matrix_t(a)
        q, r = call("qr_q", (at,)), call("qr_r", (at,))
        gb = call("lstsq", (r, _matmul(_matrix_t(q), g)), rcond)
        w = _triangular_solves(r, b, rcond)
        across = g - _matmul(q, _matmul(_matrix_t(q), g))  # (I - A^+ A) x-bar
        ga = _outer_or_product(w, across) - _outer_or_product(gb, out)
    else:
        q, r = call("qr_q", (a,)), call("qr_r", (a,))
        y = call("lstsq", (_matrix_t(r), g), rcond)  # R^-T x-bar
        gb = _matmul(q, y)
        z = call("lstsq", (r, y), rcond)
        residual = b - _matmul(a, out)
        ga = _outer_or_product(residual, z) - _outer_or_product(gb, out)
    return _where_full_rank(a, rcond[0], ga, gb)


def _lstsq_jvp(ts, out, a, b):
    ta, tb = ts
    rhs = tb
    if ta is not None:
        change = -_matmul(ta, out)
        rhs = change if rhs is None else rhs + change
    rcond = out.node.attrs
    dx = call("lstsq", (a, rhs), rcond)
    if ta is not None and _is_wide(a):
        at = _matrix_t(a)
        q, r = call("qr_q", (at,)), call("qr_r", (at,))
        v = _matmul(_matrix_t(ta), _triangular_solves(r, b, rcond))  # dA^T w
        dx = dx + v - _matmul(q, _matmul(_matrix_t(q), v))
    elif ta is not None:
        r = call("qr_r", (a,))
        residual = b - _matmul(a, out)
        dx = dx + _triangular_solves(r, _matmul(_matrix_t(ta), residual), rcond)
    return _where_full_rank(a, rcond[0], dx)[0]


# The templates use only what numba's np.linalg takes too (svd's first two arguments, qr's
# first, lstsq's rcond a number), and the impls compute what the templates print: the values
# come from the same LAPACK call as the vectors, so folded and running code agree.
_ARRAY_TABLE += [
    Op("svd_values", 1, "{np}.linalg.svd({0}, False)[1]",
       lambda x: np.linalg.svd(x, False)[1], _svd_values_vjp,
       shape=_svd_shape("values"), jvp=_svd_values_jvp),
    Op("svd_u", 1, "{np}.linalg.svd({0}, False)[0]",
       lambda x: np.linalg.svd(x, False)[0], _svd_u_vjp,
       shape=_svd_shape("u"), jvp=_svd_u_jvp),
    Op("svd_vh", 1, "{np}.linalg.svd({0}, False)[2]",
       lambda x: np.linalg.svd(x, False)[2], _svd_vh_vjp,
       shape=_svd_shape("vh"), jvp=_svd_vh_jvp),
    Op("qr_q", 1, "{np}.linalg.qr({0})[0]", lambda x: np.linalg.qr(x)[0], _qr_q_vjp,
       shape=_qr_shape("q"), jvp=lambda ts, out, x: _qr_tangents(ts[0], x)[0]),
    Op("qr_r", 1, "{np}.linalg.qr({0})[1]", lambda x: np.linalg.qr(x)[1], _qr_r_vjp,
       shape=_qr_shape("r"), jvp=lambda ts, out, x: _qr_tangents(ts[0], x)[1]),
    # rcond: a float, singular values at most rcond * max(s) count as zero
    Op("lstsq", 2, "{np}.linalg.lstsq({0}, {1}, {rcond})[0]",
       lambda a, b, rcond: np.linalg.lstsq(a, b, rcond)[0], _lstsq_vjp,
       attrs=("rcond",), shape=_lstsq_shape, jvp=_lstsq_jvp),
]


# --- loops: gradc.scan keeps repeated structure a loop (see trace.scan) -----------------------
# A scan node runs its body ``length`` times over a carry; its value is a pair (final carry,
# stacked carries), taken apart by ``part`` nodes whose attributes carry their shapes.
def _scan_impl(init, *rest):
    *arrays, body, length = rest
    xs, caps = arrays[:body.n_xs], arrays[body.n_xs:]
    carry, states = init, []
    for t in range(length):
        states.append(carry)
        carry = body.run([carry, *(x[t] for x in xs), *caps])[0]
    return carry, np.array(states)


def _scan_vjp(g, out, init, *rest):
    body, length = out.node.attrs
    states = call("part", (out,), (1, (length,) + init.shape))
    result = call("scan_bwd", (g, init, *rest, states), (body.reverse, length))
    return tuple(call("part", (result,), (k, a.shape)) for k, a in enumerate((init, *rest)))


def _scan_bwd_impl(g, init, *rest):
    *arrays, states, body, length = rest
    n_xs = body.n_xs
    xs, caps = arrays[:n_xs], arrays[n_xs:]
    dxs = [np.zeros(np.shape(x)) for x in xs]
    dcaps = [np.zeros(np.shape(c)) for c in caps]
    for t in reversed(range(length)):
        outs = body.run([states[t], *(x[t] for x in xs), *caps, g])
        g = outs[0]
        for k in range(n_xs):
            dxs[k][t] = outs[1 + k]
        for k in range(len(caps)):
            dcaps[k] = dcaps[k] + outs[1 + n_xs + k]
    return (g, *dxs, *dcaps)


_LOOP_TABLE = [
    Op("scan", None, "<loop>", _scan_impl, _scan_vjp, attrs=("body", "length"),
       shape=lambda a, init, *rest: init, result="tuple", statement=True, jvp=_loop_jvp),
    Op("scan_bwd", None, "<loop>", _scan_bwd_impl, attrs=("body", "length"),
       shape=lambda a, g, *rest: g, result="tuple", statement=True, jvp=_loop_jvp),
    # Component k of a loop's tuple value; the part of a scan's final carry passes the
    # cotangent through to the scan (the stored states feed only the reverse loop).
    Op("part", 1, "{0}[{k}]", lambda v, k, shape: v[k],
       lambda g, out, x: (g if out.node.attrs[0] == 0 and x.node.op == "scan" else None,),
       attrs=("k", "shape"), shape=lambda a, s: a[1], jvp=_loop_jvp),
]


def _scatter(g, index, shape):
    out = np.zeros(shape, np.result_type(g))
    out[python_index(index)] = g
    return out


# --- user-defined derivative rules: gradc.custom_vjp / gradc.custom_jvp (gradc/custom.py) -----
# ``custom(value, *xs)`` is ``value`` (the function's own code, traced inline); its attribute
# is the function's rule at this signature (gradc.custom.Rule, hashed by identity), which
# builds the derivatives: the value gets no cotangent, so nothing differentiates through it.
def _custom_vjp(g, out, value, *xs):
    return (None, *out.node.attrs[0].cotangents(g, xs))


def _custom_jvp(ts, out, value, *xs):
    return out.node.attrs[0].tangent(ts[1:], xs, out)


_CUSTOM_TABLE = [
    Op("custom", None, "{0}", lambda value, *xs_and_rule: value, _custom_vjp,
       attrs=("rule",), shape=lambda a, value, *xs: value, jvp=_custom_jvp),
]

_TABLE += _ARRAY_TABLE + _LOOP_TABLE + _CUSTOM_TABLE

OPS: dict[str, Op] = {op.name: op for op in _TABLE}

#: NumPy ufunc name -> op name, for ``Tracer.__array_ufunc__``.
UFUNCS: dict[str, str] = {u: op.name for op in _TABLE for u in op.ufuncs}

#: The ops every traced program may use through ``gradc.math`` and NumPy, by public name.
MATH_FUNCTIONS = (
    "exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "arcsin", "arccos", "arctan",
    "arctan2", "sinh", "cosh", "tanh", "maximum", "minimum", "abs", "hypot", "power", "sign",
    "sigmoid", "softplus", "relu",
    "log2", "log10", "exp2", "cbrt", "deg2rad", "radians", "rad2deg", "degrees", "arcsinh",
    "arccosh", "arctanh", "sinc", "logaddexp", "logaddexp2", "fmax", "fmin", "copysign",
    "mod", "remainder", "fmod", "floor_divide", "floor", "ceil", "rint", "trunc", "fix",
)

#: Public names that differ from the op name.
ALIASES = {"power": "pow", "absolute": "abs", "radians": "deg2rad", "degrees": "rad2deg",
           "remainder": "mod", "floor_divide": "floordiv", "fix": "trunc"}


def op_for(public_name):
    """The op behind a public function name (``"power"`` -> ``OPS["pow"]``)."""
    return OPS[ALIASES.get(public_name, public_name)]
