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

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


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


# Graph-building helpers used by the rules: each finds the traced argument and
# asks it to apply the named op, so rules read like the maths.
def _builder(name):
    def build(*args):
        for a in args:
            if hasattr(a, "_apply"):
                return a._apply(name, args)
        raise TypeError(f"{name}: no traced argument")

    build.__name__ = name
    return build


sin, cos, exp, log, sqrt, sign = map(_builder, ("sin", "cos", "exp", "log", "sqrt", "sign"))
cosh, sinh, sigmoid, where = map(_builder, ("cosh", "sinh", "sigmoid", "where"))
gt, ge = map(_builder, ("gt", "ge"))


def _div_vjp(g, out, x, y):
    gy = g / y
    return gy, -(gy * out)


def _logaddexp0(x):
    return np.logaddexp(0.0, x)


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
    Op("pow", 2, "{0} ** {1}", np.power,
       lambda g, out, x, y: (g * y * x ** (y - 1.0), g * log(x) * out),
       lambda x, y: x ** y, domain=(0.3, 2.0), ufuncs=("power", "float_power"), int_args=(1,)),
    Op("neg", 1, "-{0}", np.negative, lambda g, out, x: (-g,),
       lambda x: -x, ufuncs=("negative",)),
    Op("abs", 1, "{np}.abs({0})", np.abs, lambda g, out, x: (g * sign(x),),
       lambda x: _sp().Abs(x), ufuncs=("absolute", "fabs")),
    Op("sign", 1, "{np}.sign({0})", np.sign, lambda g, out, x: (None,),
       lambda x: _sp().sign(x), ufuncs=("sign",)),
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
    # Ties send the whole gradient to the first argument (a subgradient).
    Op("maximum", 2, "{np}.maximum({0}, {1})", np.maximum,
       lambda g, out, x, y: (where(ge(x, y), g, 0.0), where(ge(x, y), 0.0, g)),
       lambda x, y: _sp().Max(x, y), ufuncs=("maximum", "fmax")),
    Op("minimum", 2, "{np}.minimum({0}, {1})", np.minimum,
       lambda g, out, x, y: (where(ge(y, x), g, 0.0), where(ge(y, x), 0.0, g)),
       lambda x, y: _sp().Min(x, y), ufuncs=("minimum", "fmin")),
    # --- neural-network activations (gradc.math) ---------------------------------------
    Op("sigmoid", 1, "1.0 / (1.0 + {np}.exp(-{0}))", lambda x: 1.0 / (1.0 + np.exp(-x)),
       lambda g, out, x: (g * out * (1.0 - out),),
       lambda x: 1 / (1 + _sp().exp(-x))),
    Op("softplus", 1, "{np}.logaddexp(0.0, {0})", _logaddexp0,
       lambda g, out, x: (g * sigmoid(x),),
       lambda x: _sp().log(1 + _sp().exp(x))),
    Op("relu", 1, "{np}.maximum({0}, 0.0)", lambda x: np.maximum(x, 0.0),
       lambda g, out, x: (where(gt(x, 0.0), g, 0.0),),
       lambda x: _sp().Max(x, 0)),
    # --- conditions and selection ------------------------------------------------------
    Op("where", 3, "({1} if {0} else {2})", lambda c, a, b: a if c else b,
       lambda g, out, c, a, b: (None, where(c, g, 0.0), where(c, 0.0, g)),
       lambda c, a, b: _sp().Piecewise((a, c), (b, True))),
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
       result="bool", ufuncs=("logical_and",)),
    Op("or", 2, "({0} or {1})", np.logical_or, sympy=lambda x, y: _sp().Or(x, y),
       result="bool", ufuncs=("logical_or",)),
    Op("not", 1, "(not {0})", np.logical_not, sympy=lambda x: _sp().Not(x),
       result="bool", ufuncs=("logical_not",)),
    # --- naming: an identity that carries a variable's name (adjoints ``dv``) ----------
    Op("alias", 1, "{0}", lambda x: x, lambda g, out, x: (g,), lambda x: x),
]

OPS: dict[str, Op] = {op.name: op for op in _TABLE}

#: NumPy ufunc name -> op name, for ``Tracer.__array_ufunc__``.
UFUNCS: dict[str, str] = {u: op.name for op in _TABLE for u in op.ufuncs}

#: The ops every traced program may use through ``gradc.math`` and NumPy, by public name.
MATH_FUNCTIONS = (
    "exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "arcsin", "arccos", "arctan",
    "arctan2", "sinh", "cosh", "tanh", "maximum", "minimum", "abs", "hypot", "power", "sign",
    "sigmoid", "softplus", "relu",
)

#: Public names that differ from the op name.
ALIASES = {"power": "pow", "absolute": "abs"}


def op_for(public_name):
    """The op behind a public function name (``"power"`` -> ``OPS["pow"]``)."""
    return OPS[ALIASES.get(public_name, public_name)]
